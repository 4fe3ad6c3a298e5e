"""Physical and Snapshot backups of FerretDB (SQLite backend) through both SDKs, `ddsvault restore --to-dir`,
and a fresh FerretDB started on the restored directory serving the same documents."""
from __future__ import annotations

import random
import subprocess
import threading
import time

import pytest
from alibabacloud_dds20151201 import models as dds
from alibabacloud_tea_openapi.exceptions import ClientException

import stack
from conftest import (DDSVAULT_BIN, Ddsvault, config_text, schedule_now_and_start_scheduler, seed_data, snapshot,
                      tea_client, wait_backup)
from test_restore import call

DBS = ("shop", "crm")


def client_error(fn) -> ClientException:
    with pytest.raises(ClientException) as ei:
        fn()
    return ei.value


def instance_lines(iid, uri, storage="local_ssd", data_path=None):
    lines = ["[[instances]]", f'id = "{iid}"', f'uri = "{uri}"', f'storage_type = "{storage}"']
    if data_path is not None:
        lines.append(f'data_path = "{data_path}"')
    return "\n".join(lines) + "\n"


def restore_to_dir(server, backup_id, target):
    r = subprocess.run([DDSVAULT_BIN, "restore", "--config", str(server.config_path), "--backup-id", str(backup_id),
                        "--to-dir", str(target)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def download_tar(url, target):
    """Downloads a file backup's BackupDownloadURL (a tar of its data files) and unpacks it into `target`."""
    import io
    import tarfile

    import requests

    r = requests.get(url, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/x-tar"
    assert int(r.headers["Content-Length"]) == len(r.content)
    target.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:") as t:
        names = sorted(m.name for m in t.getmembers())
        assert all(m.isfile() and "/" not in m.name for m in t.getmembers()), names
        t.extractall(target, filter="data")
    return names


def storage(tea, iid):
    return tea.describe_backup_storage(dds.DescribeBackupStorageRequest(dbinstance_id=iid)).body


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("physical")
    rs = stack.FerretDB(base / "rs", repl_set_name="rs0")
    expected = seed_data(rs.client(), DBS)
    single = stack.FerretDB(base / "single")
    rnd = random.Random(5)
    # ~10 MB of barely compressible documents, so that a 1% change is small next to the whole image.
    single.client().big.docs.insert_many(
        [{"_id": i, "pad": rnd.randbytes(400).hex()} for i in range(12000)])
    nopath = stack.FerretDB(base / "nopath", repl_set_name="rs0")
    nopath.client().x.y.insert_one({"a": 1})
    text = config_text(base / "data", {}) + instance_lines("dds-phys", rs.uri, data_path=rs.data_dir) \
        + instance_lines("dds-single", single.uri, data_path=single.data_dir) \
        + instance_lines("dds-nopath", nopath.uri)
    server = Ddsvault(base / "svc", text)
    yield {"server": server, "rs": rs, "single": single, "expected": expected, "base": base}
    server.stop()
    for f in (rs, single, nopath):
        f.stop()


def test_physical_is_the_default_and_restores_into_a_fresh_ferretdb(env):
    server, tea = env["server"], tea_client(env["server"])
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-phys")).body
    b = wait_backup(tea, "dds-phys", r.backup_job_id)
    assert b.backup_status == "Success", b
    assert (b.backup_method, b.backup_type, b.backup_mode) == ("Physical", "FullBackup", "Manual")
    assert int(b.backup_size) > 0
    assert set(b.backup_dbnames.split(",")) == set(DBS)
    # The download is a tar of the data files; a FerretDB started on them serves the backup's documents.
    assert "/files.tar?" in b.backup_download_url
    names = download_tar(b.backup_download_url, env["base"] / "downloaded-phys" / "data")
    assert names == sorted(f"{db}.sqlite" for db in DBS)
    # `ddsvault download` writes the same tar, after checking every file against the manifest.
    import requests

    cli_tar = env["base"] / "cli-phys.tar"
    d = subprocess.run([DDSVAULT_BIN, "download", "--config", str(server.config_path), "--backup-id", b.backup_id,
                        "-o", str(cli_tar)], capture_output=True, text=True, timeout=120)
    assert d.returncode == 0, d.stderr
    assert "files.tar" in d.stdout
    assert cli_tar.read_bytes() == requests.get(b.backup_download_url, timeout=120).content
    with stack.FerretDB(env["base"] / "downloaded-phys") as fresh:
        assert snapshot(fresh.client(), DBS) == env["expected"]
    # The V1 SDK sees the same backup.
    listed = call(server, "DescribeBackups", DBInstanceId="dds-phys", BackupId=b.backup_id)["Backups"]["Backup"]
    assert [x["BackupMethod"] for x in listed] == ["Physical"]

    target = env["base"] / "restored-phys" / "data"
    out = restore_to_dir(server, b.backup_id, target)
    assert "verified against the manifest" in out
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{db}.sqlite" for db in DBS)
    with stack.FerretDB(env["base"] / "restored-phys") as fresh:
        assert snapshot(fresh.client(), DBS) == env["expected"]

    # A second restore into the same (now non-empty) directory is refused and leaves it alone.
    r = subprocess.run([DDSVAULT_BIN, "restore", "--config", str(server.config_path), "--backup-id",
                        str(b.backup_id), "--to-dir", str(target)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "not empty" in r.stderr


def test_snapshot_is_incremental_in_stored_bytes_and_restores(env):
    server, tea, single = env["server"], tea_client(env["server"]), env["single"]
    before = storage(tea, "dds-single").full_storage_size
    # Standalone: Snapshot is the default (and only) method; through the V1 SDK here.
    r1 = call(server, "CreateBackup", DBInstanceId="dds-single")
    b1 = wait_backup(tea, "dds-single", r1["BackupJobId"])
    assert (b1.backup_status, b1.backup_method, b1.backup_type) == ("Success", "Snapshot", "FullBackup")
    full = storage(tea, "dds-single").full_storage_size - before
    assert full > 1_000_000, full
    expected1 = snapshot(single.client(), ["big"])

    # ~1% change: new documents plus a few updates.
    c = single.client()
    rnd = random.Random(6)
    c.big.docs.insert_many([{"_id": 100000 + i, "pad": rnd.randbytes(400).hex()} for i in range(120)])
    for i in range(0, 12000, 1200):
        c.big.docs.update_one({"_id": i}, {"$set": {"changed": True}})
    expected2 = snapshot(c, ["big"])

    r2 = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-single", backup_method="Snapshot")).body
    b2 = wait_backup(tea, "dds-single", r2.backup_job_id)
    assert b2.backup_status == "Success"
    after = storage(tea, "dds-single").full_storage_size
    increment = after - before - full
    # Every snapshot is logically full, but stores only what changed.
    assert int(b2.backup_size) >= int(b1.backup_size)
    print(f"snapshot increment after ~1% change: {increment} of {full} bytes ({100 * increment / full:.1f}%)")
    assert 0 < increment <= 0.05 * full, (increment, full)

    # Deleting the first snapshot keeps the chunks the second one shares; the second still verifies and restores.
    tea.delete_backup(dds.DeleteBackupRequest(dbinstance_id="dds-single", backup_id=b1.backup_id))
    v = subprocess.run([DDSVAULT_BIN, "verify", "--config", str(server.config_path), "--backup-id", b2.backup_id],
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0, v.stderr
    assert "Snapshot backup" in v.stdout and "snapshot chunk(s) checked" in v.stdout
    target = env["base"] / "restored-snap" / "data"
    restore_to_dir(server, b2.backup_id, target)
    with stack.FerretDB(env["base"] / "restored-snap") as fresh:
        assert snapshot(fresh.client(), ["big"]) == expected2
    assert expected1 != expected2
    # Downloaded as a tar assembled from the chunks, it is the same image.
    download_tar(b2.backup_download_url, env["base"] / "downloaded-snap" / "data")
    with stack.FerretDB(env["base"] / "downloaded-snap") as fresh:
        assert snapshot(fresh.client(), ["big"]) == expected2

    # A damaged chunk is caught by verify and by restore, which leaves no file behind.
    # (Every chunk of the store, since which ones the first, deleted snapshot alone used is not known here.)
    for chunk in (env["base"] / "data" / "repository" / "chunks" / "dds-single").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"\x00" * 64)
    v = subprocess.run([DDSVAULT_BIN, "verify", "--config", str(server.config_path), "--backup-id", b2.backup_id],
                       capture_output=True, text=True, timeout=120)
    assert v.returncode != 0 and "integrity" in v.stderr.lower(), v.stderr
    bad = env["base"] / "restored-bad"
    r = subprocess.run([DDSVAULT_BIN, "restore", "--config", str(server.config_path), "--backup-id", b2.backup_id,
                        "--to-dir", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "integrity" in r.stderr.lower(), r.stderr
    assert list(bad.iterdir()) == []
    bad_tar = env["base"] / "cli-bad.tar"
    d = subprocess.run([DDSVAULT_BIN, "download", "--config", str(server.config_path), "--backup-id", b2.backup_id,
                        "-o", str(bad_tar)], capture_output=True, text=True, timeout=120)
    assert d.returncode != 0 and "integrity" in d.stderr.lower(), d.stderr
    assert not bad_tar.exists() and not bad_tar.with_suffix(".partial").exists()
    # A download stops short instead of handing out a damaged file.
    import requests

    with pytest.raises(requests.exceptions.RequestException):
        requests.get(b2.backup_download_url, timeout=120).raise_for_status()

    # The next snapshot does not reuse the damaged chunks: their stored size is not the one the previous snapshot
    # recorded, so each is written again (repaired), and the new snapshot verifies and restores.
    r3 = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-single", backup_method="Snapshot")).body
    b3 = wait_backup(tea, "dds-single", r3.backup_job_id)
    assert b3.backup_status == "Success"
    v = subprocess.run([DDSVAULT_BIN, "verify", "--config", str(server.config_path), "--backup-id", b3.backup_id],
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0, v.stderr
    target = env["base"] / "restored-repaired" / "data"
    restore_to_dir(server, b3.backup_id, target)
    with stack.FerretDB(env["base"] / "restored-repaired") as fresh:
        assert snapshot(fresh.client(), ["big"]) == expected2


def test_file_backup_refusals(env):
    tea = tea_client(env["server"])
    # Retention is honoured as for Logical, and one job at a time per instance.
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-phys", backup_method="Physical",
                                                  backup_retention_period=-1)).body
    e = client_error(lambda: tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-phys",
                                                                       backup_method="Snapshot")))
    assert (e.status_code, e.code) == (403, "OperationDenied.BackupJobExists")
    b = wait_backup(tea, "dds-phys", r.backup_job_id)
    assert (b.backup_status, b.backup_expire_time) == ("Success", "9999-01-01T00:00:00Z")

    # Asked for explicitly, a file backup of an instance without data_path is refused (without BackupMethod it
    # takes Logical, as automatic backups do: test_checks.py).
    e = client_error(lambda: tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-nopath",
                                                                       backup_method="Physical")))
    assert (e.status_code, e.code) == (400, "InvalidBackupMethod.DataPathRequired")
    assert "data_path" in e.message
    e = client_error(lambda: tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-single",
                                                                       backup_method="Physical")))
    assert (e.status_code, e.code) == (400, "InvalidBackupMethod.ValueNotSupport")
    assert "standalone" in e.message
    # Logical still works on an instance without data_path.
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-nopath", backup_method="Logical")).body
    assert wait_backup(tea, "dds-nopath", r.backup_job_id).backup_status == "Success"


@pytest.mark.parametrize("method", ["Physical", "Snapshot"])
def test_backup_under_load_is_consistent_per_database(env, method):
    server, tea = env["server"], tea_client(env["server"])
    rs = env["rs"]
    c = rs.client()
    db = c[f"load_{method.lower()}"]
    db.pair.insert_one({"_id": "p", "a": 100000, "b": 0})
    db.meta.insert_one({"_id": "counter", "n": 0})
    stop = threading.Event()
    progress = {"writes": 0}

    def writer():
        d = rs.client()[db.name]
        i = 0
        while not stop.is_set():
            # One write moves one unit: a + b stays constant in every committed state.
            d.pair.update_one({"_id": "p"}, {"$inc": {"a": -1, "b": 1}})
            # The counter follows each insert: counter <= count(events) <= counter + 1.
            d.events.insert_one({"_id": i, "pad": "e" * 300})
            d.meta.update_one({"_id": "counter"}, {"$set": {"n": i + 1}})
            i += 1
            progress["writes"] = i

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        while progress["writes"] < 50:
            time.sleep(0.05)
        at_start = progress["writes"]
        r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-phys", backup_method=method)).body
        b = wait_backup(tea, "dds-phys", r.backup_job_id)
        during = progress["writes"] - at_start
    finally:
        stop.set()
        t.join(30)
    assert b.backup_status == "Success"
    assert during > 0, "the writer made no progress while the backup ran"

    base = env["base"] / f"restored-load-{method}"
    restore_to_dir(server, b.backup_id, base / "data")
    with stack.FerretDB(base) as fresh:
        d = fresh.client()[db.name]
        pair = d.pair.find_one({"_id": "p"})
        assert pair["a"] + pair["b"] == 100000
        counter = d.meta.find_one({"_id": "counter"})["n"]
        events = d.events.count_documents({})
        assert counter <= events <= counter + 1, (counter, events)
        assert events > 0
        # The other databases are intact too.
        assert snapshot(fresh.client(), DBS) == env["expected"]


def test_automatic_backups_take_the_default_file_method(tmp_path):
    """With data_path, the scheduler takes what CreateBackup without BackupMethod takes: Physical on a replica
    set, Snapshot on a standalone server (without data_path it stays Logical: test_policy.py)."""
    rs = stack.FerretDB(tmp_path / "rs", repl_set_name="rs0")
    single = stack.FerretDB(tmp_path / "single")
    try:
        for f in (rs, single):
            f.client().shop.orders.insert_many([{"_id": i} for i in range(50)])
        # Policies are set with the scheduler off, so no default window can take a slot first.
        text = config_text(tmp_path / "data", {}, extra="[scheduler]\nenabled = false\ntick_secs = 1") \
            + instance_lines("dds-auto-rs", rs.uri, data_path=rs.data_dir) \
            + instance_lines("dds-auto-single", single.uri, data_path=single.data_dir)
        s = Ddsvault(tmp_path / "svc", text)
        try:
            schedule_now_and_start_scheduler(s, ("dds-auto-rs", "dds-auto-single"))
            tea = tea_client(s)

            def automated(iid):
                body = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id=iid)).body
                return [b for b in (body.backups.backup if body.backups else []) if b.backup_mode == "Automated"]

            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (automated("dds-auto-rs") and automated("dds-auto-single")):
                time.sleep(0.5)
            got = {iid: [(b.backup_method, b.backup_status) for b in automated(iid)]
                   for iid in ("dds-auto-rs", "dds-auto-single")}
            assert got == {"dds-auto-rs": [("Physical", "Success")], "dds-auto-single": [("Snapshot", "Success")]}
        finally:
            s.stop()
    finally:
        rs.stop()
        single.stop()


def test_a_data_path_without_database_files_does_not_hide_the_databases(tmp_path):
    """CreateBackup takes a FerretDB's database names from data_path (listDatabases measures every database); a
    data_path with no database file (misconfigured) falls back to asking the server instead of refusing with
    NoDatabase."""
    f = stack.FerretDB(tmp_path / "f", repl_set_name="rs0")
    try:
        f.client().shop.orders.insert_one({"_id": 1})
        empty = tmp_path / "not-the-data-dir"
        empty.mkdir()
        text = config_text(tmp_path / "data", {}) + instance_lines("dds-wrongpath", f.uri, data_path=empty)
        s = Ddsvault(tmp_path / "svc", text)
        try:
            tea = tea_client(s)
            job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-wrongpath",
                                                            backup_method="Logical")).body
            b = wait_backup(tea, "dds-wrongpath", job.backup_job_id)
            assert b.backup_status == "Success"
            # Physical reads the files: its job fails, saying what is wrong with the directory.
            job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-wrongpath",
                                                            backup_method="Physical")).body
            b = wait_backup(tea, "dds-wrongpath", job.backup_job_id)
            assert b.backup_status == "Failed"
            assert "holds no <db>.sqlite file" in s.stderr()
        finally:
            s.stop()
    finally:
        f.stop()
