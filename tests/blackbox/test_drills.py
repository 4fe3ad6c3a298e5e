"""Restore drills (issue 21.4, docs/drills.md) through the real binary and real FerretDB servers: a drill started by
the scheduler restores the newest Logical backup into a scratch FerretDB and passes on counts and checksums; a drill
of a backup whose archive was damaged in the repository fails loudly (Failed, backup unverified, a signed
`drill_failed` webhook to a local receiver, the metric at 0, `ddsvault status`); a drill of a backup whose recorded
figures disagree with its data (manifest re-sealed and re-registered, as a dump that recorded wrong figures would
leave it) fails on the comparison itself, naming the collection. With `RestoreDrillTarget=provision` (a temporary
FerretDB started from [provisioning] for the drill and removed after it), Physical, Snapshot and Logical backups are
drilled, a damaged Physical file fails the drill, and no process or directory is left behind either way."""
from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import sqlite3
import subprocess
import time
from hashlib import sha256

import os
from pathlib import Path

import pytest
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.request import CommonRequest

import stack
from conftest import DDSVAULT_BIN, ROOT_AK, Ddsvault, acs_client, config_text
from test_physical import instance_lines
from test_metrics import Receiver, scrape, value

HOOK_SECRET = "drill-hook-secret-0001"
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def call(server, action, **params):
    """A raw API call (CommonRequest, V1 signature): the typed SDK models drop ddsvault's extension fields."""
    req = CommonRequest(domain="127.0.0.1", version="2015-12-01", action_name=action, product="Dds")
    req.set_method("POST")
    for k, v in params.items():
        req.add_query_param(k, str(v))
    return json.loads(acs_client(server).do_action_with_exception(req))


def refused(server, action, **params) -> tuple[int, str, str]:
    with pytest.raises(ServerException) as ei:
        call(server, action, **params)
    return ei.value.get_http_status(), ei.value.get_error_code(), ei.value.get_error_msg()


def take_backup(server, iid="dds-src") -> str:
    job = call(server, "CreateBackup", DBInstanceId=iid, BackupMethod="Logical")["BackupJobId"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        got = call(server, "DescribeBackups", DBInstanceId=iid, BackupJobId=job)["Backups"]["Backup"]
        if got and got[0]["BackupStatus"] in ("Success", "Failed"):
            assert got[0]["BackupStatus"] == "Success", got
            return str(got[0]["BackupId"])
        time.sleep(0.3)
    raise AssertionError(f"backup job {job} did not finish")


def drills(server, iid="dds-src", **params) -> list[dict]:
    return call(server, "DescribeRestoreDrills", DBInstanceId=iid, **params)["RestoreDrills"]["RestoreDrill"]


def wait_drill(server, backup_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = drills(server, BackupId=backup_id)
        if got:
            return got[0]
        time.sleep(0.3)
    raise AssertionError(f"no drill of backup {backup_id} recorded within {timeout}s; server log:\n"
                         + server.stderr()[-4000:])


def drill_status(server, backup_id: str) -> str:
    got = call(server, "DescribeBackups", DBInstanceId="dds-src", BackupId=backup_id)["Backups"]["Backup"]
    assert len(got) == 1, got
    return got[0]["RestoreDrillStatus"]


def status_cli(server) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "DDSVAULT_ACCESS_KEY_ID": ROOT_AK[0],
           "DDSVAULT_ACCESS_KEY_SECRET": ROOT_AK[1], "DDSVAULT_ENDPOINT": f"http://{server.endpoint}"}
    return subprocess.run([DDSVAULT_BIN, "status", "--instance", "dds-src"], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("drills")
    src = stack.FerretDB(base / "src", repl_set_name="rs0")
    scratch = stack.FerretDB(base / "scratch")
    c = src.client()
    c.shop.orders.insert_many([{"_id": i, "item": f"item-{i}", "qty": i % 7, "price": i * 1.25,
                                "tags": ["a", "b"][: i % 3], "at": datetime.datetime(2026, 1, 1 + i % 28)}
                               for i in range(1000)])
    c.shop.customers.insert_many([{"_id": f"c{i}", "name": f"Customer {i}", "vip": i % 5 == 0}
                                  for i in range(200)])
    c.crm.notes.insert_many([{"text": "note " * (i + 1), "n": i} for i in range(50)])
    receiver = Receiver()
    data = base / "data"
    extra = ("[scheduler]\nenabled = true\ntick_secs = 1\n"
             f'[[alerts.webhooks]]\nurl = "{receiver.url}"\nsecret = "{HOOK_SECRET}"\nevents = ["drill_failed"]\n')
    server = Ddsvault(base / "svc", config_text(data, {"dds-src": (src.uri, "local_ssd"),
                                                      "dds-scratch": (scratch.uri, "local_ssd")}, extra=extra))
    yield {"server": server, "src": src, "scratch": scratch, "receiver": receiver, "data": data,
           "repo": data / "repository"}
    server.stop()
    receiver.close()
    src.stop()
    scratch.stop()


def test_a_scheduled_drill_of_a_good_backup_passes_on_counts_and_checksums(env):
    server, scratch = env["server"], env["scratch"]
    backup = take_backup(server)
    assert drill_status(server, backup) == "NotDrilled"
    # A drill window open now, today: the scheduler (1 s ticks) takes the slot and starts the drill itself.
    now = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
    window = f"{now:%H:%M}Z-{now + datetime.timedelta(hours=1):%H:%M}Z"
    call(server, "ModifyBackupPolicy", DBInstanceId="dds-src", RestoreDrillTarget="dds-scratch",
         RestoreDrillPeriod=DAYS[now.weekday()], RestoreDrillTime=window)
    pol = call(server, "DescribeBackupPolicy", DBInstanceId="dds-src")
    assert (pol["RestoreDrillTarget"], pol["RestoreDrillPeriod"], pol["RestoreDrillTime"]) == \
        ("dds-scratch", DAYS[now.weekday()], window)
    # Drill settings alone do not switch automatic backups on.
    assert pol["AutomaticBackup"] == "Disabled"

    d = wait_drill(server, backup)
    assert d["Result"] == "Passed", d
    assert d["Compared"] == "CountsAndChecksums", d
    assert (d["TargetDBInstanceId"], d["BackupId"], d["DBInstanceId"]) == ("dds-scratch", backup, "dds-src")
    detail = d["Detail"]
    assert (detail["collections"], detail["documents"], detail["mismatch_count"]) == (3, 1250, 0), detail
    assert d["DurationMs"] >= 0 and d["EndTime"] >= d["StartTime"]
    # The scratch instance holds the restored copy.
    sc = scratch.client()
    assert sc.shop.orders.count_documents({}) == 1000
    assert sc.shop.orders.find_one({"_id": 7})["item"] == "item-7"
    assert sc.crm.notes.count_documents({}) == 50
    assert drill_status(server, backup) == "Verified"

    # One drill per slot: later ticks see the slot taken.
    time.sleep(3)
    assert len(drills(server)) == 1
    samples, text = scrape(f"http://{server.endpoint}")
    assert value(samples, "ddsvault_restore_drill_last_result", instance="dds-src") == 1, text
    assert value(samples, "ddsvault_restore_drills_total", instance="dds-src", result="Passed") == 1, text
    assert value(samples, "ddsvault_restore_drill_last_duration_seconds", instance="dds-src") >= 0
    assert value(samples, "ddsvault_jobs", kind="drill", method="", state="Success") == 1, text
    r = status_cli(server)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert f"restore drill of backup {backup} passed" in r.stdout, r.stdout
    assert "counts and checksums" in r.stdout
    # No more scheduled drills for the rest of the module: the next ones are started by hand.
    call(server, "ModifyBackupPolicy", DBInstanceId="dds-src", RestoreDrillPeriod="Disabled")
    assert call(server, "DescribeBackupPolicy", DBInstanceId="dds-src")["RestoreDrillPeriod"] == "Disabled"


def wait_hook(receiver, n: int, timeout: float = 30.0) -> list:
    deadline = time.monotonic() + timeout
    while len(receiver.requests) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(receiver.requests) >= n, receiver.requests
    return receiver.requests


def test_a_drill_of_a_damaged_backup_fails_loudly(env):
    server, repo, receiver = env["server"], env["repo"], env["receiver"]
    backup = take_backup(server)
    archive = next((repo / "backups" / "dds-src" / backup).glob("archive*"))
    original = archive.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    archive.write_bytes(bytes(damaged))
    sent_before = len(receiver.requests)
    try:
        started = call(server, "StartRestoreDrill", DBInstanceId="dds-src", BackupId=backup)
        assert (started["BackupId"], started["TargetDBInstanceId"]) == (backup, "dds-scratch")
        d = wait_drill(server, backup)
    finally:
        archive.write_bytes(original)
    assert d["Result"] == "Failed", d
    assert d["Detail"]["stage"] == "restore", d
    assert "sha256" in d["Detail"]["error"], d
    assert d["DrillJobId"] == started["DrillJobId"]
    assert drill_status(server, backup) == "Unverified"

    # The webhook: signed, naming the instance, the backup and why.
    (h, body), = wait_hook(receiver, sent_before + 1)[sent_before:]
    assert h["x-ddsvault-event"] == "drill_failed"
    want = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(h["x-ddsvault-signature"], want)
    event = json.loads(body)
    assert (event["event"], event["instance_id"], str(event["backup_id"]), event["target_instance_id"]) == \
        ("drill_failed", "dds-src", backup, "dds-scratch"), event
    assert "restore" in event["message"] and "mongodb://" not in body.decode()

    time.sleep(1.1)  # the catalog gauges are re-read at most once a second
    samples, text = scrape(f"http://{server.endpoint}")
    assert value(samples, "ddsvault_restore_drill_last_result", instance="dds-src") == 0, text
    assert value(samples, "ddsvault_restore_drills_total", instance="dds-src", result="Failed") == 1, text
    assert value(samples, "ddsvault_alerts_total", event="drill_failed", result="delivered") == 1, text
    assert value(samples, "ddsvault_jobs", kind="drill", method="", state="Failed") == 1, text
    r = status_cli(server)
    assert f"restore drill of backup {backup} FAILED, backup unverified" in r.stdout, r.stdout


def test_a_drill_finds_data_that_differs_from_what_the_backup_recorded(env):
    """The archive is intact, but the backup's record says something else than the data it holds: the manifest's
    figure for one collection is changed, the manifest re-sealed (trailer) and its hash re-registered in the
    catalog, so every integrity check passes and only the drill's comparison can notice."""
    server, repo, receiver = env["server"], env["repo"], env["receiver"]
    backup = take_backup(server)
    path = repo / "backups" / "dds-src" / backup / "manifest.json"
    m = json.loads(path.read_bytes())
    m.pop("manifest_sha256")
    ns = next(n for n in m["extra"]["namespaces"] if (n["db"], n["collection"]) == ("shop", "customers"))
    recorded = ns["checksum"]
    assert len(recorded) == 32 and m["extra"]["checksum_algorithm"] == "xxh3-128-sum128"
    ns["checksum"] = format((int(recorded, 16) + 1) % (1 << 128), "032x")
    body = json.dumps(m, indent=2, ensure_ascii=False).encode()
    forged = body[:-2] + b',\n  "manifest_sha256": "' + sha256(body).hexdigest().encode() + b'"\n}\n'
    path.write_bytes(forged)
    db = sqlite3.connect(env["data"] / "catalog.db")
    try:
        details = json.loads(db.execute("SELECT details FROM backups WHERE id = ?", (int(backup),)).fetchone()[0])
        details["manifest_sha256"] = sha256(forged).hexdigest()
        with db:
            db.execute("UPDATE backups SET details = ? WHERE id = ?", (json.dumps(details), int(backup)))
    finally:
        db.close()
    sent_before = len(receiver.requests)

    call(server, "StartRestoreDrill", DBInstanceId="dds-src", BackupId=backup)
    d = wait_drill(server, backup)
    assert d["Result"] == "Failed", d
    detail = d["Detail"]
    assert detail["stage"] == "compare" and detail["mismatch_count"] == 1, detail
    (mm,) = detail["mismatches"]
    assert (mm["db"], mm["collection"]) == ("shop", "customers")
    assert (mm["expected_documents"], mm["restored_documents"]) == (200, 200)
    assert mm["expected_checksum"] == ns["checksum"] and mm["restored_checksum"] == recorded
    assert drill_status(server, backup) == "Unverified"
    (h, body), = wait_hook(receiver, sent_before + 1)[sent_before:]
    assert "shop.customers" in json.loads(body)["message"]


def test_bad_drill_requests_are_refused_with_documented_codes(env):
    server = env["server"]
    assert refused(server, "StartRestoreDrill", DBInstanceId="dds-src", TargetDBInstanceId="dds-src")[:2] == \
        (400, "InvalidParameter")
    assert refused(server, "StartRestoreDrill", DBInstanceId="dds-src", TargetDBInstanceId="dds-nope")[:2] == \
        (400, "InvalidParameter")
    assert refused(server, "ModifyBackupPolicy", DBInstanceId="dds-src", RestoreDrillTime="25:00Z-26:00Z")[:2] == \
        (400, "InvalidParameter")
    assert refused(server, "ModifyBackupPolicy", DBInstanceId="dds-src", RestoreDrillPeriod="Someday")[:2] == \
        (400, "InvalidParameter")
    # The scratch instance has no backup of its own to drill.
    status, code, msg = refused(server, "StartRestoreDrill", DBInstanceId="dds-scratch", TargetDBInstanceId="dds-src")
    assert (status, code) == (403, "OperationDenied.NoBackup"), msg
    assert refused(server, "StartRestoreDrill", DBInstanceId="dds-src", BackupId="999999")[:2] == \
        (404, "InvalidBackupId.NotFound")
    assert refused(server, "DescribeRestoreDrills", DBInstanceId="dds-src", MaxRecords="0")[:2] == \
        (400, "InvalidParameter")
    # A drill settings call without a target, on an instance that has none yet.
    assert refused(server, "ModifyBackupPolicy", DBInstanceId="dds-scratch", RestoreDrillPeriod="Monday")[:2] == \
        (400, "MissingParameter")
    # Physical and Snapshot backups are drilled only in a provisioned scratch; this node has no [provisioning].
    status, code, msg = refused(server, "StartRestoreDrill", DBInstanceId="dds-src", TargetDBInstanceId="provision")
    assert (status, code) == (400, "UnsupportedOperation") and "[provisioning]" in msg, msg
    assert refused(server, "ModifyBackupPolicy", DBInstanceId="dds-src", RestoreDrillTarget="provision")[:2] == \
        (400, "UnsupportedOperation")
    assert refused(server, "DescribeRestoreDrills", DBInstanceId="dds-src", DrillJobId="999999")[:2] == \
        (400, "InvalidParameter")


# ------------------------------------------------------------------------ drills into a provisioned scratch

@pytest.fixture(scope="module")
def penv(tmp_path_factory):
    base = tmp_path_factory.mktemp("pdrills")
    src = stack.FerretDB(base / "src", repl_set_name="rs0")
    scratch = stack.FerretDB(base / "scratch")
    c = src.client()
    c.shop.orders.insert_many([{"_id": i, "item": f"item-{i}", "qty": i % 7} for i in range(700)])
    c.shop.create_collection("empty")
    c.crm.notes.insert_many([{"text": "note " * (i + 1), "n": i} for i in range(40)])
    lo = stack.free_port()
    extra = (
        "[provisioning]\n"
        f"command = \"{stack.bin('ferretdb')} --handler=sqlite --sqlite-url=file:{{data_dir}}/ "
        "--listen-addr=127.0.0.1:{port} --state-dir={dir} --repl-set-name=rs0 --telemetry=disable "
        "--debug-addr=- --log-level=warn\"\n"
        f"port_min = {lo}\nport_max = {lo + 20}\n"
    )
    data = base / "data"
    text = config_text(data, {"dds-scratch": (scratch.uri, "local_ssd")}, extra=extra) \
        + instance_lines("dds-psrc", src.uri, data_path=src.data_dir)
    server = Ddsvault(base / "svc", text)
    yield {"server": server, "src": src, "data": data, "repo": data / "repository", "instances": data / "instances"}
    server.stop()
    src.stop()
    scratch.stop()


def take(server, method, iid="dds-psrc") -> str:
    job = call(server, "CreateBackup", DBInstanceId=iid, BackupMethod=method)["BackupJobId"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        got = call(server, "DescribeBackups", DBInstanceId=iid, BackupJobId=job)["Backups"]["Backup"]
        if got and got[0]["BackupStatus"] in ("Success", "Failed"):
            assert got[0]["BackupStatus"] == "Success", got
            return str(got[0]["BackupId"])
        time.sleep(0.3)
    raise AssertionError(f"backup job {job} did not finish")


def wait_job(server, iid, job_id, timeout=180.0) -> dict:
    """The drill job through DescribeRestoreDrills' DrillJobId, once it ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = call(server, "DescribeRestoreDrills", DBInstanceId=iid, DrillJobId=job_id)["DrillJob"]
        if j["JobStatus"] in ("Success", "Failed"):
            return j
        time.sleep(0.3)
    raise AssertionError(f"drill job {job_id} did not end; server log:\n" + server.stderr()[-4000:])


def ferretdb_processes_in(path: Path) -> list[str]:
    """Command lines of running processes that mention `path` (a drill's server would name its directory)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmd:
            out.append(cmd)
    return out


def assert_nothing_left(penv):
    inst = penv["instances"]
    left = [p.name for p in inst.iterdir()] if inst.exists() else []
    assert not [n for n in left if n.startswith("drill-")], left
    assert not ferretdb_processes_in(inst), ferretdb_processes_in(inst)


@pytest.mark.parametrize("method", ["Physical", "Snapshot", "Logical"])
def test_a_backup_of_any_method_is_drilled_in_a_provisioned_instance_and_nothing_is_left(penv, method):
    server = penv["server"]
    backup = take(server, method)
    # A registered scratch restores Logical backups only: the file methods name the provisioned target.
    if method != "Logical":
        status, code, msg = refused(server, "StartRestoreDrill", DBInstanceId="dds-psrc", BackupId=backup,
                                    TargetDBInstanceId="dds-scratch")
        assert (status, code) == (400, "InvalidBackupMethod.ValueNotSupport") and "provision" in msg, msg
    started = call(server, "StartRestoreDrill", DBInstanceId="dds-psrc", BackupId=backup,
                   TargetDBInstanceId="provision")
    assert (started["BackupId"], started["TargetDBInstanceId"]) == (backup, "provision")
    job = wait_job(server, "dds-psrc", started["DrillJobId"])
    assert job["JobStatus"] == "Success", job
    (d,) = drills(server, "dds-psrc", BackupId=backup)
    assert d["Result"] == "Passed", d
    assert d["TargetDBInstanceId"] == f"provision:drill-{started['DrillJobId']}", d
    detail = d["Detail"]
    assert detail["mismatch_count"] == 0, detail
    if method == "Logical":
        assert d["Compared"] == "CountsAndChecksums", d
        assert (detail["collections"], detail["documents"]) == (3, 740), detail
    else:
        # File backups: counts read from the backup's own files against what the server started on them serves.
        assert d["Compared"] == "CountsOnly", d
        served = {(s["db"], s["collection"]): s["documents"] for s in detail["served"]}
        assert served[("shop", "orders")] == 700 and served[("crm", "notes")] == 40, served
        assert served[("shop", "empty")] == 0, served
        assert all(len(s["checksum"]) == 32 for s in detail["served"]), detail
        assert detail["files"] >= 2, detail
    assert drill_status_of(server, "dds-psrc", backup) == "Verified"
    assert_nothing_left(penv)


def drill_status_of(server, iid, backup_id):
    got = call(server, "DescribeBackups", DBInstanceId=iid, BackupId=backup_id)["Backups"]["Backup"]
    return got[0]["RestoreDrillStatus"]


def test_a_damaged_physical_file_fails_the_provisioned_drill_and_is_cleaned_up(penv):
    server, repo = penv["server"], penv["repo"]
    backup = take(server, "Physical")
    f = next((repo / "backups" / "dds-psrc" / backup / "files").glob("shop*.sqlite"))
    original = f.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    f.write_bytes(bytes(damaged))
    try:
        started = call(server, "StartRestoreDrill", DBInstanceId="dds-psrc", BackupId=backup,
                       TargetDBInstanceId="provision")
        job = wait_job(server, "dds-psrc", started["DrillJobId"])
    finally:
        f.write_bytes(original)
    assert (job["JobStatus"], job["ErrorCode"]) == ("Failed", "Drill.Failed"), job
    (d,) = drills(server, "dds-psrc", BackupId=backup)
    assert d["Result"] == "Failed" and d["Detail"]["stage"] == "restore", d
    assert "sha256" in d["Detail"]["error"].lower(), d
    assert drill_status_of(server, "dds-psrc", backup) == "Unverified"
    assert_nothing_left(penv)


def test_a_scheduled_drill_policy_may_name_the_provisioned_target(penv):
    server = penv["server"]
    call(server, "ModifyBackupPolicy", DBInstanceId="dds-psrc", RestoreDrillTarget="provision",
         RestoreDrillPeriod="Disabled")
    pol = call(server, "DescribeBackupPolicy", DBInstanceId="dds-psrc")
    assert (pol["RestoreDrillTarget"], pol["RestoreDrillPeriod"]) == ("provision", "Disabled")
    # Without TargetDBInstanceId the policy's provisioned target is used, and the newest backup of any method.
    newest = take(server, "Snapshot")
    started = call(server, "StartRestoreDrill", DBInstanceId="dds-psrc")
    assert (started["BackupId"], started["TargetDBInstanceId"]) == (newest, "provision")
    assert wait_job(server, "dds-psrc", started["DrillJobId"])["JobStatus"] == "Success"
    assert_nothing_left(penv)
