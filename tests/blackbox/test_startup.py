"""Start-up safety: a start that fails (another server on the same data directory, a port already taken) has no
side effect at all; in particular it never fails the running jobs of the live server."""
from __future__ import annotations

import random
import subprocess
import time

from alibabacloud_dds20151201 import models as dds

import stack
from conftest import DDSVAULT_BIN, Ddsvault, config_text, tea_client, wait_backup
from test_restore import call


def job_state(server, iid, job_id):
    jobs = call(server, "DescribeBackupTasks", DBInstanceId=iid, BackupJobId=job_id)["BackupJobs"]
    assert len(jobs) == 1, jobs
    return jobs[0]


def failed_start(config_path, cwd):
    """Runs `ddsvault serve` that must fail; returns its stderr."""
    p = subprocess.run([DDSVAULT_BIN, "serve", "--config", str(config_path)], cwd=cwd, capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode != 0, (p.stdout, p.stderr)
    return p.stderr


def test_a_failed_second_start_leaves_the_running_backup_untouched(tmp_path):
    ferret = stack.FerretDB(tmp_path / "f", repl_set_name="rs0", create_oplog=True)
    try:
        rnd = random.Random(3)
        coll = ferret.client().big.docs
        for start in range(0, 60000, 10000):
            coll.insert_many([{"_id": i, "pad": rnd.randbytes(200).hex()} for i in range(start, start + 10000)])
        data = tmp_path / "data"
        server = Ddsvault(tmp_path / "svc", config_text(data, {"dds-live": (ferret.uri, "local_ssd")}))
        try:
            tea = tea_client(server)
            r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-live", backup_method="Logical")).body
            deadline = time.monotonic() + 60
            while job_state(server, "dds-live", r.backup_job_id)["BackupSetStatus"] != "Backuping":
                assert time.monotonic() < deadline, "the backup never started"
                time.sleep(0.05)
            files_before = sorted(p.name for p in data.iterdir())

            # 1. The same configuration again: the data directory is taken.
            err = failed_start(server.config_path, tmp_path / "svc")
            assert "another ddsvault process is serving the data directory" in err, err
            # 2. Its own data directory but the live server's port: refused before it creates anything.
            other = tmp_path / "other"
            other.mkdir()
            cfg2 = other / "ddsvault.toml"
            cfg2.write_text(server.config_path.read_text()
                            .replace('listen = "127.0.0.1:0"', f'listen = "{server.endpoint}"')
                            .replace(f'data_dir = "{data}"', f'data_dir = "{other / "data"}"'))
            err = failed_start(cfg2, other)
            assert "listen on" in err and "in use" in err.lower(), err
            assert not (other / "data").exists(), "a start that could not listen created its data directory"

            # The live job was not touched by either: still running, then a success.
            state = job_state(server, "dds-live", r.backup_job_id)
            assert state["BackupSetStatus"] == "Backuping", \
                f"the backup ended while the failed starts ran, the test proves nothing: {state}"
            b = wait_backup(tea, "dds-live", r.backup_job_id, timeout=300)
            assert b.backup_status == "Success", call(server, "DescribeBackups", DBInstanceId="dds-live")
            assert sorted(p.name for p in data.iterdir()) == files_before
            assert "interrupted" not in server.stderr()
        finally:
            server.stop()
    finally:
        ferret.stop()


def test_the_node_id_is_kept_in_the_data_directory(tmp_path):
    data = tmp_path / "data"
    server = Ddsvault(tmp_path / "svc", config_text(data, {}))
    try:
        node_id = (data / "node_id").read_text().strip()
        assert node_id.startswith("node-"), node_id
    finally:
        server.stop()
    # A restart keeps it; the lock is released with the process.
    server.start()
    try:
        assert (data / "node_id").read_text().strip() == node_id
    finally:
        server.stop()


def run_cli(*args, cwd):
    return subprocess.run([DDSVAULT_BIN, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_relative_paths_follow_the_config_file_and_offline_verbs_never_invent_a_catalog(tmp_path):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    text = config_text(tmp_path / "placeholder", {}).replace(f'data_dir = "{tmp_path / "placeholder"}"',
                                                              'data_dir = "state"')
    assert 'data_dir = "state"' in text
    server = Ddsvault(conf_dir, text)
    try:
        call(server, "DescribeDBInstances")
    finally:
        server.stop()
    # The server ran in conf_dir: its state is beside the file.
    assert (conf_dir / "state" / "catalog.db").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # From another directory, the same catalog (its audit trail holds the call above), nothing new created.
    r = run_cli("audit", "--config", str(conf_dir / "ddsvault.toml"), "--json", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert "DescribeDBInstances" in r.stdout
    r = run_cli("audit", "--config", "../etc/ddsvault.toml", cwd=elsewhere)
    assert r.returncode == 0 and "DescribeDBInstances" in r.stdout, r.stderr
    assert list(elsewhere.iterdir()) == []

    # A configuration whose data directory does not exist: every offline verb refuses, naming the path, and
    # creates no catalog, no master key, no directory.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ddsvault.toml").write_text(text.replace('data_dir = "state"', 'data_dir = "typo"'))
    for verb in (["audit"], ["gc"], ["retention", "--dry-run"], ["verify", "--backup-id", "1"],
                 ["download", "--backup-id", "1", "-o", str(tmp_path / "out.bin")],
                 ["ram", "user", "list"]):
        r = run_cli(verb[0], "--config", str(bad / "ddsvault.toml"), *verb[1:], cwd=elsewhere)
        assert r.returncode != 0, (verb, r.stdout)
        assert str(bad / "typo") in r.stderr, (verb, r.stderr)
        assert not (bad / "typo").exists(), verb
        assert list(elsewhere.iterdir()) == [], verb
