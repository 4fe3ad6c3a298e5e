"""Instances at run time (docs/instances.md, issue 21.2): registered through the API extension actions (official core
SDK) and `ddsvault instance list|add|remove` (the CLI), live at once without a restart: backed up, restored,
scheduled by their policy, followed by the log backup, unregistered. Bad input (URI, duplicate id, a job running,
RAM, wrong credentials, no server) is refused with its documented code and leaves nothing registered; the
connection string never shows in answers, logs or the audit trail. And (issue 20) a provisioned server that dies
is restarted by ddsvault's supervisor."""
from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import time

import pytest
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.request import CommonRequest
from alibabacloud_dds20151201 import models as dds

import stack
from conftest import (DDSVAULT_BIN, OPERATOR_AK, ROOT_AK, Ddsvault, acs_client, config_text, seed_data, snapshot,
                      tea_client, wait_backup)

DBS = ("shop", "crm")
# A marker in every registered connection string: it must never come back in an answer, a log line or the audit.
MARK = "uriMarker7f3a"


def call(server, action, ak=ROOT_AK, **params):
    req = CommonRequest(domain="127.0.0.1", version="2015-12-01", action_name=action, product="Dds")
    req.set_method("POST")
    for k, v in params.items():
        req.add_query_param(k, v)
    return json.loads(acs_client(server, ak).do_action_with_exception(req))


def refused(server, action, ak=ROOT_AK, **params) -> ServerException:
    with pytest.raises(ServerException) as ei:
        call(server, action, ak=ak, **params)
    return ei.value


def uri_of(ferret) -> str:
    return f"{ferret.uri}?appName={MARK}"


def cli(server, *args, ak=ROOT_AK, endpoint=None, extra_env=None, timeout=60):
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("DDSVAULT_", "ALIBABA_CLOUD_")) and k != "DDSVAULT_BIN":
            env.pop(k)
    env.update({"DDSVAULT_ENDPOINT": endpoint or f"http://{server.endpoint}",
                "DDSVAULT_ACCESS_KEY_ID": ak[0], "DDSVAULT_ACCESS_KEY_SECRET": ak[1],
                # No profile file is read: HOME is the server's own directory (no ~/.ddsvault there).
                "HOME": str(server.dir)})
    env.update(extra_env or {})
    return subprocess.run([DDSVAULT_BIN, "instance", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def ids(server):
    return [i.dbinstance_id for i in tea_client(server).describe_dbinstances(
        dds.DescribeDBInstancesRequest(page_size=100)).body.dbinstances.dbinstance]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("instances")
    src = stack.FerretDB(base / "src", repl_set_name="rs0", create_oplog=True)
    data = seed_data(src.client(), DBS)
    other = stack.FerretDB(base / "other", repl_set_name="rs0", create_oplog=True)
    lo = stack.free_port()
    extra = (
        "[scheduler]\nenabled = true\ntick_secs = 1\n"
        "[log_backup]\nslice_secs = 1\npoll_ms = 200\n"
        "[provisioning]\n"
        f"command = \"{stack.bin('ferretdb')} --handler=sqlite --sqlite-url=file:{{data_dir}}/ "
        "--listen-addr=127.0.0.1:{port} --state-dir={dir} --repl-set-name=rs0 --telemetry=disable "
        "--debug-addr=- --log-level=warn\"\n"
        f"port_min = {lo}\nport_max = {lo + 20}\n"
    )
    text = config_text(base / "data", {"dds-conf": (src.uri, "local_ssd")}, extra=extra)
    server = Ddsvault(base / "svc", text)
    yield {"server": server, "src": src, "other": other, "data": data, "base": base}
    server.stop()
    src.stop()
    other.stop()


def assert_no_uri_leak(env):
    server = env["server"]
    assert MARK not in server.stderr(), "a registered connection string reached the log"
    listed = call(server, "DescribeDBInstances", PageSize="100")
    assert MARK not in json.dumps(listed)
    r = subprocess.run([DDSVAULT_BIN, "audit", "--config", str(server.config_path), "--json", "--limit", "1000"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "RegisterDBInstance" in r.stdout and MARK not in r.stdout


def test_add_backup_restore_remove_without_restart(env):
    server, src = env["server"], env["src"]
    pid = server.proc.pid
    r = cli(server, "add", "--id", "dds-rt1", "--description", "added at run time",
            extra_env={"DDSVAULT_INSTANCE_URI": uri_of(src)})
    assert r.returncode == 0, r.stderr
    assert "dds-rt1 registered" in r.stdout
    # Listed at once, by the SDK and by the CLI, with its origin; its connection string is not shown.
    assert "dds-rt1" in ids(server)
    listed = cli(server, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {i["DBInstanceId"]: i for i in json.loads(listed.stdout)["Instances"]}
    assert rows["dds-rt1"]["Origin"] == "registered" and rows["dds-conf"]["Origin"] == "configured"
    assert rows["dds-rt1"]["DBInstanceStatus"] == "Running"
    table = cli(server, "list")
    assert table.returncode == 0 and "dds-rt1" in table.stdout and "registered" in table.stdout
    attr = tea_client(server).describe_dbinstance_attribute(
        dds.DescribeDBInstanceAttributeRequest(dbinstance_id="dds-rt1")).body.dbinstances.dbinstance[0]
    assert attr.dbinstance_status == "Running" and attr.dbinstance_description == "added at run time"

    # Backed up through the official SDK.
    tea = tea_client(server)
    job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-rt1", backup_method="Logical")).body
    b = wait_backup(tea, "dds-rt1", job.backup_job_id)
    assert (b.backup_status, b.backup_method) == ("Success", "Logical"), b

    # Restored: a collection dropped after the backup comes back.
    src.client().shop.drop_collection("orders")
    out = call(server, "RestoreDBInstance", DBInstanceId="dds-rt1", BackupId=str(b.backup_id), DropExisting="true")
    job_id = out["RestoreJobId"]
    deadline = time.monotonic() + 180
    while True:
        jobs = call(server, "DescribeRestoreTasks", DBInstanceId="dds-rt1", RestoreJobId=job_id)["RestoreJobs"]
        st = jobs["RestoreJob"][0]["Status"] if isinstance(jobs, dict) else jobs[0]["Status"]
        if st in ("Success", "Failed"):
            break
        assert time.monotonic() < deadline, "restore did not finish"
        time.sleep(0.3)
    assert st == "Success", jobs
    assert snapshot(src.client(), DBS) == env["data"]

    # Removed: gone at once, its backups stay listed.
    r = cli(server, "remove", "--id", "dds-rt1")
    assert r.returncode == 0, r.stderr
    assert "dds-rt1" not in ids(server)
    e = refused(server, "CreateBackup", DBInstanceId="dds-rt1")
    assert (e.http_status, e.error_code) == (404, "InvalidDBInstanceId.NotFound")
    # The same process all along: nothing was restarted.
    assert server.proc.pid == pid and server.proc.poll() is None
    assert_no_uri_leak(env)


def test_bad_input_is_refused_and_nothing_is_registered(env):
    server, src = env["server"], env["src"]
    before = ids(server)
    cases = [
        (dict(DBInstanceId="dds-bad1", ConnectionString="http://127.0.0.1:1/"), 400, "InvalidConnectionString.Malformed"),
        (dict(DBInstanceId="dds-bad2", ConnectionString="mongodb://"), 400, "InvalidConnectionString.Malformed"),
        (dict(DBInstanceId="dds-bad3", ConnectionString=f"mongodb://127.0.0.1:{stack.free_port()}/?appName={MARK}"),
         400, "InvalidConnectionString.Unreachable"),
        (dict(DBInstanceId="dds-conf", ConnectionString=uri_of(src)), 409, "InvalidDBInstanceId.Duplicate"),
        (dict(DBInstanceId="../etc", ConnectionString=uri_of(src)), 400, "InvalidParameter"),
        (dict(DBInstanceId="dds-bad4", ConnectionString=uri_of(src), StorageType="floppy"), 400, "InvalidParameter"),
        (dict(DBInstanceId="dds-bad5", ConnectionString=uri_of(src), DataPath="/nonexistent/dir"), 400,
         "InvalidParameter"),
        (dict(DBInstanceId="dds-bad6", ConnectionString=uri_of(src), PreferredBackupTime="3am"), 400,
         "InvalidPreferredBackupTime.Malformed"),
    ]
    for params, status, code in cases:
        t0 = time.monotonic()
        e = refused(server, "RegisterDBInstance", **params)
        assert (e.http_status, e.error_code) == (status, code), (params, e)
        assert time.monotonic() - t0 < 10, "the reachability probe must answer within its short timeout"
        assert MARK not in e.message
    # A duplicate of a registered instance.
    call(server, "RegisterDBInstance", DBInstanceId="dds-dup", ConnectionString=uri_of(src))
    e = refused(server, "RegisterDBInstance", DBInstanceId="dds-dup", ConnectionString=uri_of(env["other"]))
    assert (e.http_status, e.error_code) == (409, "InvalidDBInstanceId.Duplicate")
    call(server, "UnregisterDBInstance", DBInstanceId="dds-dup")
    assert ids(server) == before
    # Removing what is not registered.
    e = refused(server, "UnregisterDBInstance", DBInstanceId="dds-nope")
    assert (e.http_status, e.error_code) == (404, "InvalidDBInstanceId.NotFound")
    e = refused(server, "UnregisterDBInstance", DBInstanceId="dds-conf")
    assert (e.http_status, e.error_code) == (403, "OperationDenied.NotRegistered")
    # The CLI says the same, with exit code 1.
    r = cli(server, "add", "--id", "dds-bad7", "--uri", "http://nowhere/")
    assert r.returncode == 1 and "InvalidConnectionString.Malformed" in r.stderr, r
    r = cli(server, "remove", "--id", "dds-nope")
    assert r.returncode == 1 and "InvalidDBInstanceId.NotFound" in r.stderr, r
    assert ids(server) == before
    assert_no_uri_leak(env)


def test_remove_with_a_running_job_is_refused(env):
    server, other = env["server"], env["other"]
    # Enough data that a backup runs for a while once its server is paused.
    other.client().big.docs.insert_many([{"_id": i, "pad": "x" * 200} for i in range(3000)])
    call(server, "RegisterDBInstance", DBInstanceId="dds-busy", ConnectionString=uri_of(other))
    tea = tea_client(server)
    for attempt in range(5):
        job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-busy", backup_method="Logical")).body
        os.kill(other.proc.pid, signal.SIGSTOP)
        try:
            tasks = call(server, "DescribeBackupTasks", DBInstanceId="dds-busy")["BackupJobs"]
            items = tasks.get("BackupJob", []) if isinstance(tasks, dict) else tasks
            if not items:
                continue  # the backup was over before the server paused: try again
            e = refused(server, "UnregisterDBInstance", DBInstanceId="dds-busy")
            assert (e.http_status, e.error_code) == (403, "OperationDenied.ActiveJobExists"), e
            assert str(job.backup_job_id) in e.message
            r = cli(server, "remove", "--id", "dds-busy")
            assert r.returncode == 1 and "OperationDenied.ActiveJobExists" in r.stderr, r
            assert "dds-busy" in ids(server)
            break
        finally:
            os.kill(other.proc.pid, signal.SIGCONT)
    else:
        pytest.fail("no backup stayed running long enough to try the removal")
    assert wait_backup(tea, "dds-busy", job.backup_job_id).backup_status == "Success"
    call(server, "UnregisterDBInstance", DBInstanceId="dds-busy")
    assert "dds-busy" not in ids(server)


def test_ram_denial_wrong_credentials_and_no_server(env):
    server, src = env["server"], env["src"]
    # The operator may back up dds-rs1 only: registering is not among its actions.
    e = refused(server, "RegisterDBInstance", ak=OPERATOR_AK, DBInstanceId="dds-ram", ConnectionString=uri_of(src))
    assert (e.http_status, e.error_code) == (403, "Forbidden.RAM"), e
    r = cli(server, "add", "--id", "dds-ram", ak=OPERATOR_AK, extra_env={"DDSVAULT_INSTANCE_URI": uri_of(src)})
    assert r.returncode == 1 and "Forbidden.RAM" in r.stderr, r
    assert "dds-ram" not in ids(server)
    # A wrong secret: the message names where the key came from.
    r = cli(server, "list", ak=(ROOT_AK[0], "wrong-secret"))
    assert r.returncode == 1, r
    assert "SignatureDoesNotMatch" in r.stderr and "DDSVAULT_ACCESS_KEY_ID" in r.stderr, r.stderr
    r = cli(server, "list", ak=("LTAI5tUnknownKey000001", "x"))
    assert r.returncode == 1 and "InvalidAccessKeyId.NotFound" in r.stderr, r.stderr
    # No server at the endpoint: exit 3, saying so.
    r = cli(server, "list", endpoint=f"http://127.0.0.1:{stack.free_port()}")
    assert r.returncode == 3 and "cannot reach the ddsvault API" in r.stderr, r.stderr


def test_the_policy_schedules_a_registered_instance_and_the_log_backup_follows_it(env):
    server, other = env["server"], env["other"]
    other.client().sched.docs.insert_one({"_id": "something to back up"})
    now = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
    window = f"{now:%H:%M}Z-{now + datetime.timedelta(hours=1):%H:%M}Z"
    day = now.strftime("%A")
    call(server, "RegisterDBInstance", DBInstanceId="dds-sched", ConnectionString=uri_of(other),
         PreferredBackupTime=window, PreferredBackupPeriod=day, BackupRetentionPeriod="7", EnableBackupLog="1",
         LogBackupRetentionPeriod="7")
    pol = call(server, "DescribeBackupPolicy", DBInstanceId="dds-sched")
    assert pol["PreferredBackupTime"] == window and str(pol["EnableBackupLog"]) == "1"
    tea = tea_client(server)
    deadline = time.monotonic() + 120
    automated = []
    while time.monotonic() < deadline and not automated:
        bs = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-sched")).body.backups.backup
        automated = [b for b in bs if b.backup_mode == "Automated" and b.backup_status == "Success"]
        time.sleep(0.5)
    assert automated, "the scheduler took no automatic backup of the registered instance"
    # The log follower started for it without a restart: the recoverable range reaches past a new write.
    other.client().big.after.insert_one({"_id": 1})
    written = int(time.time())
    deadline = time.monotonic() + 60
    while True:
        rs = call(server, "DescribeInstanceRecoverTime", DBInstanceId="dds-sched")["RestoreRanges"]
        ends = [datetime.datetime.strptime(r["RestoreEndTime"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp() for r in rs]
        if any(e >= written for e in ends):
            break
        assert time.monotonic() < deadline, f"no recoverable range of the registered instance: {rs}"
        time.sleep(0.5)
    # Unregistered: no more automatic backups, no follower.
    call(server, "ModifyBackupPolicy", DBInstanceId="dds-sched", EnableBackupLog="0")
    deadline = time.monotonic() + 60
    while call(server, "DescribeBackupTasks", DBInstanceId="dds-sched")["BackupJobs"] not in ({"BackupJob": []}, []):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    call(server, "UnregisterDBInstance", DBInstanceId="dds-sched")
    assert "dds-sched" not in ids(server)


def server_pid(d):
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            continue
        if str(d) in cmd and "ferretdb" in cmd and "zombie" not in status.lower():
            return int(pid)
    return None


def test_a_killed_provisioned_server_is_restarted(env):
    server, src = env["server"], env["src"]
    tea = tea_client(server)
    expected = snapshot(src.client(), DBS)
    job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-conf", backup_method="Logical")).body
    b = wait_backup(tea, "dds-conf", job.backup_job_id)
    out = tea.create_dbinstance(dds.CreateDBInstanceRequest(
        region_id="cn-hangzhou", src_dbinstance_id="dds-conf", backup_id=str(b.backup_id), restore_type="0")).body
    iid = out.dbinstance_id

    def attr():
        return call(server, "DescribeDBInstanceAttribute", DBInstanceId=iid)["DBInstances"]["DBInstance"][0]

    deadline = time.monotonic() + 180
    while attr()["DBInstanceStatus"] != "Running":
        assert attr()["DBInstanceStatus"] != "Failed"
        assert time.monotonic() < deadline
        time.sleep(0.3)
    d = env["base"] / "data" / "instances" / iid
    pid = server_pid(d)
    assert pid, f"no server runs on {d}"
    os.kill(pid, signal.SIGKILL)
    seen = []
    deadline = time.monotonic() + 60
    while True:
        a = attr()
        if not seen or seen[-1] != a["DBInstanceStatus"]:
            seen.append(a["DBInstanceStatus"])
        new = server_pid(d)
        if a["DBInstanceStatus"] == "Running" and new and new != pid and a.get("Restarts") == 1:
            break
        assert time.monotonic() < deadline, f"not restarted: {seen}"
        time.sleep(0.1)
    assert "signal: 9" in a["LastExit"], a
    assert "Rebooting" in seen or "Unavailable" in seen, seen
    rs = a["ReplicaSets"]["ReplicaSet"][0]
    import pymongo
    c = pymongo.MongoClient(f"mongodb://{rs['ConnectionDomain']}:{rs['ConnectionPort']}/", directConnection=True,
                            serverSelectionTimeoutMS=5000)
    assert snapshot(c, DBS) == expected
    c.close()
    tea.delete_dbinstance(dds.DeleteDBInstanceRequest(dbinstance_id=iid))
    assert server_pid(d) is None


def wait_for(pred, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_other_processes_on_the_catalog_follow_within_seconds(tmp_path, monkeypatch):
    """Two servers on one PostgreSQL catalog: what one registers, changes or removes, the other serves within its
    2 s sync, without a restart."""
    pg = stack.PostgreSQL(tmp_path / "pg")
    servers, ferrets = [], []
    try:
        url = pg.create_database("ddsvault")
        # The same master key for both, as docs/deployment.md requires: the sealed connection string opens on each.
        monkeypatch.setenv("DDSVAULT_MASTER_KEY", "ab" * 32)
        repo = tmp_path / "repository"
        a_src = stack.FerretDB(tmp_path / "fa", repl_set_name="rs0")
        ferrets.append(a_src)
        b_src = stack.FerretDB(tmp_path / "fb", repl_set_name="rs0")
        ferrets.append(b_src)
        seed_data(a_src.client(), DBS)
        seed_data(b_src.client(), DBS)
        for name in ("a", "b"):
            extra = f'catalog_url = "{url}"\n[repository]\nlocal_path = "{repo}"\n'
            servers.append(Ddsvault(tmp_path / f"svc-{name}", config_text(tmp_path / f"data-{name}", {}, extra=extra)))
        a, b = servers
        call(a, "RegisterDBInstance", DBInstanceId="dds-shared", ConnectionString=uri_of(a_src),
             DBInstanceDescription="from a")
        wait_for(lambda: "dds-shared" in ids(b), "the other process did not pick the registration up")
        tea_b = tea_client(b)
        job = tea_b.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-shared", backup_method="Logical")).body
        assert wait_backup(tea_b, "dds-shared", job.backup_job_id).backup_status == "Success"
        # A changed connection string reaches the other process too.
        call(a, "ModifyRegisteredDBInstance", DBInstanceId="dds-shared", ConnectionString=uri_of(b_src),
             DBInstanceDescription="moved")

        def moved():
            got = call(b, "DescribeDBInstanceAttribute", DBInstanceId="dds-shared")["DBInstances"]["DBInstance"][0]
            return got["DBInstanceDescription"] == "moved"

        wait_for(moved, "the change did not reach the other process")
        assert MARK not in json.dumps(call(b, "DescribeDBInstances", PageSize="100"))
        call(a, "UnregisterDBInstance", DBInstanceId="dds-shared")
        wait_for(lambda: "dds-shared" not in ids(b), "the other process still serves the removed instance")
        e = refused(b, "CreateBackup", DBInstanceId="dds-shared")
        assert (e.http_status, e.error_code) == (404, "InvalidDBInstanceId.NotFound")
        for s in servers:
            assert MARK not in s.stderr()
    finally:
        for s in servers:
            s.stop()
        for f in ferrets:
            f.stop()
        pg.stop()
