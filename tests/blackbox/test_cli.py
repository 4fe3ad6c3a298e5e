"""The CLI for people (`ddsvault backup|status|schedule|restore --to-instance`): the real binary, signing its
calls with an AccessKey, against a running ddsvault serve and real FerretDB; compared with what the API answers
the SDK, RAM included. Exit codes: 0 ok, 1 refused or failed, 2 usage/credentials, 3 unreachable, 4 timeout."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from aliyunsdkcore.request import CommonRequest

import stack
from conftest import (DDSVAULT_BIN, DENIED_AK, OPERATOR_AK, ROOT_AK, Ddsvault, acs_client, config_text, seed_data,
                      snapshot)
from test_physical import instance_lines

DBS = ("shop", "crm")
# Download URLs carry a fresh expiry/signature on each answer: compared for presence, not equality.
VOLATILE = ("BackupDownloadURL", "BackupIntranetDownloadURL")


def call(server, action, ak=ROOT_AK, **params):
    req = CommonRequest(domain="127.0.0.1", version="2015-12-01", action_name=action, product="Dds")
    req.set_method("POST")
    for k, v in params.items():
        req.add_query_param(k, v)
    return json.loads(acs_client(server, ak).do_action_with_exception(req))


def clean_env(home):
    """The process environment without any credential, endpoint or profile the developer may have set."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DDSVAULT_", "ALIBABA_CLOUD_"))}
    env["HOME"] = str(home)
    return env


def cli(env, *args, ak=ROOT_AK, server=None, timeout=300):
    """Runs the CLI; the key (if any) and the endpoint (if a server) go through the environment."""
    env = dict(env)
    if ak is not None:
        env["DDSVAULT_ACCESS_KEY_ID"], env["DDSVAULT_ACCESS_KEY_SECRET"] = ak
    if server is not None:
        env["DDSVAULT_ENDPOINT"] = f"http://{server.endpoint}"
    return subprocess.run([DDSVAULT_BIN, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def ok_json(r):
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout)


def strip(b):
    return {k: v for k, v in b.items() if k not in VOLATILE}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    src = stack.FerretDB(base / "src", repl_set_name="rs0")
    expected = seed_data(src.client(), DBS)
    dst = stack.FerretDB(base / "dst", repl_set_name="rs0")
    missing = base / "no-such-dir"
    text = config_text(base / "data", {"dds-src": (src.uri, "local_ssd"), "dds-dst": (dst.uri, "local_ssd")}) \
        + instance_lines("dds-typo", src.uri, data_path=missing)
    server = Ddsvault(base / "svc", text)
    home = base / "home"
    home.mkdir()
    yield {"server": server, "src": src, "dst": dst, "expected": expected, "env": clean_env(home),
           "base": base, "home": home}
    server.stop()
    src.stop()
    dst.stop()


@pytest.fixture(scope="module")
def backup(env):
    """A Logical backup of dds-src made with `backup create --wait --json`."""
    r = cli(env["env"], "backup", "create", "--instance", "dds-src", "--method", "Logical", "--wait", "--json",
            server=env["server"])
    out = ok_json(r)
    assert out["Backup"]["BackupStatus"] == "Success", out
    assert out["Backup"]["BackupId"] == out["BackupId"]
    assert out["Backup"]["BackupMethod"] == "Logical"
    return out


def test_backup_create_wait_lists_a_success_backup_like_describe_backups(env, backup):
    server = env["server"]
    api = call(server, "DescribeBackups", DBInstanceId="dds-src", PageSize=100)["Backups"]["Backup"]
    listed = ok_json(cli(env["env"], "backup", "list", "--instance", "dds-src", "--json", server=server))
    assert listed["DBInstanceId"] == "dds-src"
    assert listed["TotalCount"] == len(api) >= 1
    assert [strip(b) for b in listed["Backups"]] == [strip(b) for b in api]
    assert all(b["BackupDownloadURL"] for b in listed["Backups"] if b["BackupStatus"] == "Success")

    shown = ok_json(cli(env["env"], "backup", "show", "--instance", "dds-src", "--backup-id", backup["BackupId"],
                        "--json", server=server))
    one = call(server, "DescribeBackups", DBInstanceId="dds-src", BackupId=backup["BackupId"])["Backups"]["Backup"]
    assert strip(shown) == strip(one[0]) == strip(backup["Backup"])

    # For people: an aligned table with the backup and its age.
    table = cli(env["env"], "backup", "list", "--instance", "dds-src", server=server)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["ID", "STATUS", "METHOD"]
    row = next(r for r in rows if r.split()[0] == backup["BackupId"])
    assert row.split()[1:3] == ["Success", "Logical"]
    assert " ago" in row
    # A backup that does not exist: exit 1.
    missing = cli(env["env"], "backup", "show", "--instance", "dds-src", "--backup-id", "999999", server=server)
    assert missing.returncode == 1, missing
    assert "999999" in missing.stderr


def test_backup_wait_follows_a_job_started_without_wait(env, backup):
    server = env["server"]
    started = ok_json(cli(env["env"], "backup", "create", "--instance", "dds-src", "--method", "Logical", "--json",
                          server=server))
    r = cli(env["env"], "backup", "wait", "--instance", "dds-src", "--job-id", started["BackupJobId"], "--json",
            server=server)
    done = ok_json(r)
    assert done["BackupId"] == started["BackupId"] and done["BackupStatus"] == "Success"
    # Off a terminal the progress goes to stderr, a line per change, ending at 100%.
    lines = [line for line in r.stderr.splitlines() if line.startswith(f"backup job {started['BackupJobId']}:")]
    assert lines and lines[-1].endswith("100%"), r.stderr
    # A job that does not exist: exit 1 with a message naming it.
    r = cli(env["env"], "backup", "wait", "--instance", "dds-src", "--job-id", "987654", server=server)
    assert r.returncode == 1 and "987654" in r.stderr, r


@pytest.fixture(scope="module")
def failed(env):
    """A Snapshot backup of dds-typo, whose data_path does not exist, made with `backup create --wait`."""
    return cli(env["env"], "backup", "create", "--instance", "dds-typo", "--method", "Snapshot", "--wait",
               server=env["server"], timeout=120)


def test_a_failed_backup_exits_1_with_its_error_code_and_status_shows_it(env, failed):
    server = env["server"]
    r = failed
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Filesystem.Error" in r.stderr, r.stderr
    assert "no-such-dir" in r.stderr, r.stderr
    st = ok_json(cli(env["env"], "status", "--json", "--instance", "dds-typo", server=server))
    [typo] = st["Instances"]
    assert typo["LastBackup"] is None and typo["LastBackupAgeSeconds"] is None
    fails = typo["FailuresLast24h"]
    assert fails and fails[0]["Kind"] == "backup" and fails[0]["ErrorCode"] == "Filesystem.Error", fails
    api = call(server, "DescribeBackups", DBInstanceId="dds-typo")["Backups"]["Backup"]
    assert {f["BackupId"] for f in fails} == {b["BackupId"] for b in api if b["BackupStatus"] == "Failed"}


def test_status_and_schedule_match_the_api(env, backup, failed):
    server = env["server"]
    call(server, "ModifyBackupPolicy", DBInstanceId="dds-dst", PreferredBackupTime="02:00Z-03:00Z",
         PreferredBackupPeriod="Monday,Thursday", BackupRetentionPeriod="30")
    st = ok_json(cli(env["env"], "status", "--json", server=server))
    by_id = {i["DBInstanceId"]: i for i in st["Instances"]}
    assert sorted(by_id) == ["dds-dst", "dds-src", "dds-typo"]
    src = by_id["dds-src"]
    newest_ok = next(b for b in call(server, "DescribeBackups", DBInstanceId="dds-src")["Backups"]["Backup"]
                     if b["BackupStatus"] == "Success")
    assert strip(src["LastBackup"]) == strip(newest_ok)
    assert 0 <= src["LastBackupAgeSeconds"] < 600
    assert src["DBInstanceStatus"] == "Running"
    assert src["RunningJobs"] == [] and src["Errors"] == []
    assert by_id["dds-dst"]["AutomaticBackup"] == "Enabled"
    assert by_id["dds-src"]["AutomaticBackup"] == "Disabled"
    # The scheduler is off in this configuration: no next slot, said so.
    assert by_id["dds-dst"]["NextBackupTime"] == ""

    sched = ok_json(cli(env["env"], "schedule", "--json", server=server))
    assert [p["DBInstanceId"] for p in sched["Instances"]] == ["dds-dst", "dds-src", "dds-typo"]
    for p in sched["Instances"]:
        api = call(server, "DescribeBackupPolicy", DBInstanceId=p["DBInstanceId"])
        api.pop("RequestId")
        assert {k: v for k, v in p.items() if k != "DBInstanceId"} == api
    dst = sched["Instances"][0]
    assert (dst["PreferredBackupTime"], dst["PreferredBackupPeriod"]) == ("02:00Z-03:00Z", "Monday,Thursday")

    table = cli(env["env"], "status", server=server)
    assert table.returncode == 0, table.stderr
    src_row = next(line for line in table.stdout.splitlines() if line.startswith("dds-src "))
    assert f"{newest_ok['BackupId']} Logical" in src_row and " ago" in src_row
    assert "Filesystem.Error" in table.stdout  # the failure of the test above, with its code
    table = cli(env["env"], "schedule", server=server)
    dst_row = next(line for line in table.stdout.splitlines() if line.startswith("dds-dst "))
    assert "Enabled" in dst_row and "02:00Z-03:00Z" in dst_row and "30d" in dst_row


def test_restore_to_instance_through_the_api(env, backup):
    server = env["server"]
    r = cli(env["env"], "restore", "--to-instance", "dds-dst", "--backup-id", backup["BackupId"], "--wait",
            "--json", server=server)
    out = ok_json(r)
    assert out["SourceDBInstanceId"] == "dds-src"  # found by the CLI: no --from-instance given
    assert out["RestoreJob"]["Status"] == "Success", out
    assert snapshot(env["dst"].client(), DBS) == env["expected"]
    jobs = call(server, "DescribeRestoreTasks", DBInstanceId="dds-dst", RestoreJobId=out["RestoreJobId"])
    assert jobs["RestoreJobs"][0]["Status"] == "Success"
    # Again without --drop: the collections exist now, and the server refuses (exit 1, its code).
    again = cli(env["env"], "restore", "--to-instance", "dds-dst", "--from-instance", "dds-src", "--backup-id",
                backup["BackupId"], "--db", "crm", server=server)
    assert again.returncode == 1, again
    assert "OperationDenied.NamespaceExists" in again.stderr, again.stderr
    # With --drop and one collection.
    env["dst"].client().crm.contacts.delete_many({})
    one = cli(env["env"], "restore", "--to-instance", "dds-dst", "--backup-id", backup["BackupId"], "--db", "crm",
              "--collection", "contacts", "--drop", "--wait", server=server)
    assert one.returncode == 0, one.stderr
    assert snapshot(env["dst"].client(), ["crm"]) == {k: v for k, v in env["expected"].items()
                                                      if k.startswith("crm.")}


def test_ram_applies_to_the_cli(env):
    server = env["server"]
    r = cli(env["env"], "status", "--json", ak=DENIED_AK, server=server)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Forbidden.RAM" in r.stderr, r.stderr
    # The operator may back up dds-rs1 only.
    r = cli(env["env"], "backup", "create", "--instance", "dds-src", ak=OPERATOR_AK, server=server)
    assert r.returncode == 1 and "Forbidden.RAM" in r.stderr, r.stderr
    # A wrong secret is refused by the signature check, and never printed.
    r = cli(env["env"], "backup", "list", "--instance", "dds-src", ak=(ROOT_AK[0], "not-the-secret"), server=server)
    assert r.returncode == 1 and "SignatureDoesNotMatch" in r.stderr, r.stderr
    assert "not-the-secret" not in r.stderr + r.stdout


def test_exit_codes_for_unreachable_and_missing_credentials(env):
    e = env["env"]
    port = stack.free_port()
    r = cli(e, "status", "--endpoint", f"http://127.0.0.1:{port}")
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert f"127.0.0.1:{port}" in r.stderr
    r = cli(e, "backup", "wait", "--instance", "dds-src", "--job-id", "1", "--endpoint", f"127.0.0.1:{port}",
            "--timeout", "30")
    assert r.returncode == 3, (r.stdout, r.stderr)
    r = cli(e, "status", ak=None, server=env["server"])
    assert r.returncode == 2, (r.stdout, r.stderr)
    for way in ("--access-key-id", "DDSVAULT_ACCESS_KEY_ID", "profile file"):
        assert way in r.stderr, r.stderr
    # Usage errors exit 2 too.
    for other in (["--to-dir", "/tmp/x"], ["--to", "mongodb://127.0.0.1:1/"]):
        r = cli(e, "restore", "--backup-id", "1", "--to-instance", "x", *other)
        assert r.returncode == 2 and "cannot be used with" in r.stderr, r
    r = cli(e, "restore", "--archive", "/tmp/x.archive", "--to-instance", "x")
    assert r.returncode == 2, r


def test_credentials_from_a_profile_file_and_alibaba_variables(env):
    server = env["server"]
    profile = env["base"] / "profiles.json"
    profile.write_text(json.dumps({
        "current": "ops",
        "profiles": [
            {"name": "ops", "mode": "AK", "access_key_id": ROOT_AK[0], "access_key_secret": ROOT_AK[1],
             "region_id": "cn-hangzhou", "endpoint": f"http://{server.endpoint}"},
            {"name": "locked", "mode": "AK", "access_key_id": DENIED_AK[0], "access_key_secret": DENIED_AK[1],
             "region_id": "cn-hangzhou", "endpoint": f"http://{server.endpoint}"},
        ]}))
    e = dict(env["env"], DDSVAULT_PROFILE_FILE=str(profile))
    st = ok_json(cli(e, "schedule", "--json", ak=None))
    assert len(st["Instances"]) == 3
    r = cli(e, "schedule", "--profile", "locked", ak=None)
    assert r.returncode == 1 and "Forbidden.RAM" in r.stderr, r.stderr
    # The environment comes before the file's current profile.
    r = cli(e, "schedule", ak=DENIED_AK)
    assert r.returncode == 1 and "Forbidden.RAM" in r.stderr, r.stderr
    # ~/.ddsvault/config.json is the default place.
    (env["home"] / ".ddsvault").mkdir(exist_ok=True)
    (env["home"] / ".ddsvault" / "config.json").write_text(profile.read_text())
    try:
        assert cli(env["env"], "schedule", "--json", ak=None).returncode == 0
    finally:
        (env["home"] / ".ddsvault" / "config.json").unlink()
    ali = dict(env["env"], ALIBABA_CLOUD_ACCESS_KEY_ID=ROOT_AK[0], ALIBABA_CLOUD_ACCESS_KEY_SECRET=ROOT_AK[1],
               DDSVAULT_ENDPOINT=f"http://{server.endpoint}")
    assert cli(ali, "schedule", "--json", ak=None).returncode == 0


def test_wait_timeout_exits_4_and_the_job_goes_on(env, tmp_path):
    """A job stuck on a frozen instance (SIGSTOP): `backup wait --timeout` gives up with exit 4; the backup
    carries on once the instance runs again."""
    big = stack.FerretDB(tmp_path / "big", repl_set_name="rs0")
    server = None
    try:
        # ~1 s of dump in a debug build: far longer than the moment between CreateBackup's answer and SIGSTOP.
        big.client().shop.bulk.insert_many([{"_id": i, "pad": "p" * 1000} for i in range(30000)])
        server = Ddsvault(tmp_path / "svc", config_text(tmp_path / "data", {"dds-big": (big.uri, "local_ssd")}))
        started = ok_json(cli(env["env"], "backup", "create", "--instance", "dds-big", "--method", "Logical",
                              "--json", server=server))
        big.proc.send_signal(signal.SIGSTOP)
        try:
            r = cli(env["env"], "backup", "wait", "--instance", "dds-big", "--job-id", started["BackupJobId"],
                    "--timeout", "2", server=server)
            assert r.returncode == 4, (r.stdout, r.stderr)
            assert "after 2s" in r.stderr, r.stderr
        finally:
            big.proc.send_signal(signal.SIGCONT)
        done = ok_json(cli(env["env"], "backup", "wait", "--instance", "dds-big", "--job-id",
                           started["BackupJobId"], "--json", server=server))
        assert done["BackupStatus"] == "Success"
    finally:
        if server is not None:
            server.stop()
        big.stop()
