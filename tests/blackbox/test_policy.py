"""Backup policy (ModifyBackupPolicy / DescribeBackupPolicy) through the official SDKs."""
from __future__ import annotations

import re

import pytest
from alibabacloud_dds20151201 import models as dds
from alibabacloud_tea_openapi.exceptions import ClientException
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkdds.request.v20151201.DescribeBackupPolicyRequest import DescribeBackupPolicyRequest
from aliyunsdkdds.request.v20151201.ModifyBackupPolicyRequest import ModifyBackupPolicyRequest

from conftest import Ddsvault, acs_call, config_text, tea_client

IID = "dds-pol1"
# Policies need no connection to the instance: an unreachable address is enough.
DEAD_URI = "mongodb://127.0.0.1:9"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("policy")
    s = Ddsvault(d, config_text(d / "data", {IID: (DEAD_URI, "local_ssd")}, extra="[scheduler]\nenabled = true"))
    yield s
    s.stop()


def describe(server):
    return tea_client(server).describe_backup_policy(dds.DescribeBackupPolicyRequest(dbinstance_id=IID)).body


def test_defaults_then_modify_and_persist_across_restart(server):
    b = describe(server)
    assert b.preferred_backup_time == "03:00Z-04:00Z"
    # Automatic backups are opt-in: the defaults are shown, but no backup is promised until a policy is set.
    assert b.preferred_next_backup_time == ""
    assert b.preferred_backup_period == "Monday,Tuesday,Wednesday,Thursday,Friday,Saturday,Sunday"
    assert b.backup_retention_period == "30"

    tea = tea_client(server)
    tea.modify_backup_policy(dds.ModifyBackupPolicyRequest(dbinstance_id=IID, backup_retention_period=30))
    # The scheduler runs, so the next window start is now promised: daily at 03:00Z.
    b = describe(server)
    assert re.match(r"^\d{4}-\d\d-\d\dT03:00Z$", b.preferred_next_backup_time), b.preferred_next_backup_time

    resp = tea.modify_backup_policy(dds.ModifyBackupPolicyRequest(
        dbinstance_id=IID, preferred_backup_time="22:00Z-23:00Z", preferred_backup_period="Sunday,Tuesday",
        backup_retention_period=90, enable_backup_log=1, log_backup_retention_period=30,
        snapshot_backup_type="Flash", backup_interval="60", high_frequency_backup_retention=2,
        preserve_one_each_hour=True, backup_retention_policy_on_cluster_deletion=1))
    assert resp.status_code == 200 and resp.body.request_id
    b = describe(server)
    assert b.preferred_backup_time == "22:00Z-23:00Z"
    assert b.preferred_backup_period == "Tuesday,Sunday"
    assert b.backup_retention_period == "90"
    assert b.enable_backup_log == 1
    assert b.log_backup_retention_period == 30
    assert b.snapshot_backup_type == "Flash"
    assert b.backup_interval == 60
    assert b.high_frequency_backup_retention == "2"
    assert b.preserve_one_each_hour is True
    assert b.backup_retention_policy_on_cluster_deletion == 1

    # A partial change keeps the other fields.
    tea.modify_backup_policy(dds.ModifyBackupPolicyRequest(dbinstance_id=IID, backup_retention_period=7))
    b = describe(server)
    assert b.backup_retention_period == "7" and b.preferred_backup_time == "22:00Z-23:00Z"

    server.stop()
    server.start()
    b = describe(server)
    assert b.backup_retention_period == "7" and b.preferred_backup_period == "Tuesday,Sunday"


def test_v1_sdk_modify_and_describe(server):
    req = ModifyBackupPolicyRequest()
    req.set_DBInstanceId(IID)
    req.set_PreferredBackupTime("05:00Z-06:00Z")
    req.set_PreferredBackupPeriod("Monday,Thursday")
    req.set_SnapshotBackupType("Standard")
    req.set_BackupInterval("-1")
    assert "RequestId" in acs_call(server, req)
    d = DescribeBackupPolicyRequest()
    d.set_DBInstanceId(IID)
    body = acs_call(server, d)
    assert body["PreferredBackupTime"] == "05:00Z-06:00Z"
    assert body["PreferredBackupPeriod"] == "Monday,Thursday"
    assert body["SnapshotBackupType"] == "Standard" and body["BackupInterval"] == -1


@pytest.mark.parametrize("field,value,code", [
    ("preferred_backup_time", "03:00Z-05:00Z", "InvalidPreferredBackupTime.Malformed"),
    ("preferred_backup_time", "3am", "InvalidPreferredBackupTime.Malformed"),
    ("preferred_backup_period", "Mon,Tue", "InvalidPreferredBackupPeriod.Malformed"),
    ("backup_retention_period", 6, "InvalidBackupRetentionPeriod.Malformed"),
    ("backup_retention_period", 731, "InvalidBackupRetentionPeriod.Malformed"),
    ("enable_backup_log", 2, "InvalidParameter"),
    ("log_backup_retention_period", 5, "InvalidParameter"),
    ("snapshot_backup_type", "Fast", "InvalidParameter"),
    ("backup_interval", "45", "InvalidParameter"),
    ("backup_retention_policy_on_cluster_deletion", 3, "InvalidParameter"),
    ("cross_backup_type", "update", "UnsupportedOperation"),
])
def test_invalid_values_are_refused_and_not_stored(server, field, value, code):
    before = describe(server).to_map()
    before.pop("RequestId")
    with pytest.raises(ClientException) as ei:
        tea_client(server).modify_backup_policy(dds.ModifyBackupPolicyRequest(dbinstance_id=IID, **{field: value}))
    assert ei.value.code == code
    assert ei.value.status_code == 400
    after = describe(server).to_map()
    after.pop("RequestId")
    assert after == before


def test_interval_needs_flash_and_v1_error_code(server):
    req = ModifyBackupPolicyRequest()
    req.set_DBInstanceId(IID)
    req.set_SnapshotBackupType("Standard")
    req.set_BackupInterval("30")
    with pytest.raises(ServerException) as ei:
        acs_call(server, req)
    assert ei.value.get_error_code() == "InvalidParameter"
    assert "BackupInterval" in ei.value.get_error_msg()


def test_unknown_instance(server):
    with pytest.raises(ClientException) as ei:
        tea_client(server).modify_backup_policy(
            dds.ModifyBackupPolicyRequest(dbinstance_id="dds-nope", backup_retention_period=30))
    assert ei.value.code == "InvalidDBInstanceId.NotFound"


# ---------------------------------------------------------------------------------------------- retention

import datetime  # noqa: E402
import sqlite3  # noqa: E402
import time  # noqa: E402

import requests  # noqa: E402
from aliyunsdkdds.request.v20151201.DeleteBackupRequest import DeleteBackupRequest  # noqa: E402

import stack  # noqa: E402
from conftest import schedule_now_and_start_scheduler, wait_backup  # noqa: E402

RID = "dds-ret1"


@pytest.fixture(scope="module")
def ret(tmp_path_factory):
    base = tmp_path_factory.mktemp("retention")
    f = stack.FerretDB(base / "rs", repl_set_name="rs0")
    f.client().shop.orders.insert_many([{"_id": i, "v": "x" * 100} for i in range(200)])
    data = base / "svc" / "data"
    # No automatic backups here: they would race the manual ones these tests take.
    s = Ddsvault(base / "svc", config_text(data, {RID: (f.uri, "local_ssd")},
                                           extra="[retention]\ngc_interval_secs = 1\n[scheduler]\nenabled = false"))
    yield {"server": s, "data": data, "ferret": f}
    s.stop()
    f.stop()


def take_backup(server, retention=None):
    tea = tea_client(server)
    req = dds.CreateBackupRequest(dbinstance_id=RID, backup_method="Logical")
    if retention is not None:
        req.backup_retention_period = retention
    job = tea.create_backup(req).body
    return wait_backup(tea, RID, job.backup_job_id)


def listed(server, backup_id):
    body = tea_client(server).describe_backups(
        dds.DescribeBackupsRequest(dbinstance_id=RID, backup_id=backup_id)).body
    return bool(body.backups and body.backups.backup)


def files_of(data, backup_id):
    d = data / "repository" / "backups" / RID / str(backup_id)
    return sorted(p.name for p in d.rglob("*") if p.is_file()) if d.exists() else []


def parse(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def fmt(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def tea_code(fn):
    with pytest.raises(ClientException) as ei:
        fn()
    return ei.value.status_code, ei.value.code


def test_delete_backup_removes_listing_files_and_download(ret):
    s, data = ret["server"], ret["data"]
    b = take_backup(s)
    assert "manifest.json" in files_of(data, b.backup_id)
    assert requests.get(b.backup_download_url, timeout=10).status_code == 200
    resp = tea_client(s).delete_backup(dds.DeleteBackupRequest(dbinstance_id=RID, backup_id=b.backup_id))
    assert resp.status_code == 200 and resp.body.request_id
    assert not listed(s, b.backup_id)
    assert files_of(data, b.backup_id) == []
    r = requests.get(b.backup_download_url, timeout=10)
    assert (r.status_code, r.json()["Code"]) == (404, "InvalidBackupId.NotFound")
    assert tea_code(lambda: tea_client(s).delete_backup(
        dds.DeleteBackupRequest(dbinstance_id=RID, backup_id=b.backup_id))) == (404, "InvalidBackupId.NotFound")
    # V1 SDK.
    b2 = take_backup(s)
    req = DeleteBackupRequest()
    req.set_protocol_type("http")  # this request class defaults to HTTPS
    req.set_DBInstanceId(RID)
    req.set_BackupId(b2.backup_id)
    assert "RequestId" in acs_call(s, req)
    assert not listed(s, b2.backup_id) and files_of(data, b2.backup_id) == []
    # Another instance's id or a malformed id.
    assert tea_code(lambda: tea_client(s).delete_backup(
        dds.DeleteBackupRequest(dbinstance_id="dds-nope", backup_id="1")))[1] == "InvalidDBInstanceId.NotFound"
    assert tea_code(lambda: tea_client(s).delete_backup(
        dds.DeleteBackupRequest(dbinstance_id=RID, backup_id="abc"))) == (400, "InvalidParameter")


def test_modify_backup_expire_time_rules(ret):
    s = ret["server"]
    b = take_backup(s, retention=7)
    end, expire = parse(b.backup_end_time), parse(b.backup_expire_time)
    tea = tea_client(s)

    def modify(value):
        return tea.modify_backup_expire_time(dds.ModifyBackupExpireTimeRequest(
            dbinstance_id=RID, backup_id=b.backup_id, backup_expire_time=value))

    later = fmt(expire + datetime.timedelta(days=10))
    body = modify(later).body
    assert (body.backup_id, body.backup_expire_time) == (b.backup_id, later)
    desc = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id=RID, backup_id=b.backup_id)).body
    assert desc.backups.backup[0].backup_expire_time == later
    assert tea_code(lambda: modify(fmt(expire))) == (400, "InvalidBackupExpireTime.NotExtended")
    assert tea_code(lambda: modify(fmt(end + datetime.timedelta(days=731)))) == (
        400, "InvalidBackupExpireTime.OutOfRange")
    assert tea_code(lambda: modify("2030-01-01")) == (400, "InvalidBackupExpireTime.Malformed")
    limit = fmt(end + datetime.timedelta(days=730))
    assert modify(limit).body.backup_expire_time == limit
    assert modify("9999-01-01T00:00:00Z").body.backup_expire_time == "9999-01-01T00:00:00Z"
    assert tea_code(lambda: modify(limit)) == (400, "InvalidBackupExpireTime.NotExtended")
    assert tea_code(lambda: tea.modify_backup_expire_time(dds.ModifyBackupExpireTimeRequest(
        dbinstance_id=RID, backup_id="999999", backup_expire_time=limit))) == (404, "InvalidBackupId.NotFound")


def catalog(data):
    c = sqlite3.connect(data / "catalog.db", timeout=30)
    return c


def wait_until(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_gc_deletes_expired_backups_and_keeps_the_others(ret):
    s, data = ret["server"], ret["data"]
    old = take_backup(s, retention=7)
    keep = take_backup(s, retention=7)
    # Expire `old` by moving its expiry into the past (as if 7 days had passed); the collector runs every second.
    with catalog(data) as c:
        c.execute("UPDATE backups SET expire_time = ? WHERE id = ?",
                  (int((time.time() - 60) * 1000), int(old.backup_id)))
    assert wait_until(lambda: not listed(s, old.backup_id) and files_of(data, old.backup_id) == [])
    with catalog(data) as c:
        assert c.execute("SELECT COUNT(*) FROM backups WHERE id = ?", (int(old.backup_id),)).fetchone()[0] == 0
    assert listed(s, keep.backup_id) and "manifest.json" in files_of(data, keep.backup_id)


def test_deletion_interrupted_by_a_crash_is_finished_after_restart(ret):
    s, data = ret["server"], ret["data"]
    b = take_backup(s)
    s.stop()
    # The state a crash leaves in the middle of a deletion: row Deleting, manifest gone, archive still there.
    with catalog(data) as c:
        c.execute("UPDATE backups SET status = 'Deleting' WHERE id = ?", (int(b.backup_id),))
    d = data / "repository" / "backups" / RID / str(b.backup_id)
    (d / "manifest.json").unlink()
    assert files_of(data, b.backup_id) != []
    s.start()
    assert wait_until(lambda: files_of(data, b.backup_id) == [])
    with catalog(data) as c:
        assert wait_until(lambda: c.execute(
            "SELECT COUNT(*) FROM backups WHERE id = ?", (int(b.backup_id),)).fetchone()[0] == 0)
    assert not listed(s, b.backup_id)


def test_without_scheduler_no_next_backup_time_is_promised(ret):
    body = tea_client(ret["server"]).describe_backup_policy(dds.DescribeBackupPolicyRequest(dbinstance_id=RID)).body
    assert body.preferred_next_backup_time == ""


# ---------------------------------------------------------------------------------------------- scheduler

SID = "dds-sched1"


def automated_backups(server):
    body = tea_client(server).describe_backups(dds.DescribeBackupsRequest(dbinstance_id=SID)).body
    return [b for b in (body.backups.backup if body.backups else []) if b.backup_mode == "Automated"]


def test_scheduler_runs_one_automatic_backup_per_slot_across_restarts(tmp_path):
    f = stack.FerretDB(tmp_path / "rs", repl_set_name="rs0")
    try:
        f.client().shop.orders.insert_many([{"_id": i} for i in range(100)])
        data = tmp_path / "svc" / "data"
        # The policy is set while the scheduler is off: run between 03:00 and 04:00 UTC, the default window would
        # otherwise take its own slot (30 days retention) before the test's policy lands.
        s = Ddsvault(tmp_path / "svc", config_text(data, {SID: (f.uri, "local_ssd")},
                                                   extra="[scheduler]\nenabled = false\ntick_secs = 1"))
        try:
            # A window opening this minute, today only: the slot is due now and for the next hour.
            now = schedule_now_and_start_scheduler(s, [SID])
            tea = tea_client(s)  # the restarted process listens on a new port
            assert wait_until(lambda: len(automated_backups(s)) == 1, timeout=120)
            b = automated_backups(s)[0]
            assert (b.backup_method, b.backup_status) == ("Logical", "Success")
            assert parse(b.backup_expire_time) - parse(b.backup_end_time) == datetime.timedelta(days=7)
            # The slot of today is used: the next one is a week later.
            pol = tea.describe_backup_policy(dds.DescribeBackupPolicyRequest(dbinstance_id=SID)).body
            assert pol.preferred_next_backup_time == f"{now + datetime.timedelta(days=7):%Y-%m-%dT%H:%M}Z"
            # Restarts inside the same window never run the slot again.
            s.stop()
            s.start()
            time.sleep(3)  # several ticks of the restarted process
            assert len(automated_backups(s)) == 1
            with catalog(data) as c:
                runs = c.execute("SELECT outcome, job_id FROM schedule_runs WHERE instance_id = ?", (SID,)).fetchall()
            assert runs == [("Created", int(b.backup_job_id))]
            # A manual backup is still possible next to it and is listed as Manual.
            tea = tea_client(s)  # the restarted process listens on a new port
            job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id=SID, backup_method="Logical")).body
            assert wait_backup(tea, SID, job.backup_job_id).backup_mode == "Manual"
        finally:
            s.stop()
    finally:
        f.stop()


def test_cli_gc_runs_one_pass_while_the_server_is_down(ret):
    import subprocess

    from conftest import DDSVAULT_BIN

    s, data = ret["server"], ret["data"]
    b = take_backup(s, retention=7)
    s.stop()
    try:
        with catalog(data) as c:
            c.execute("UPDATE backups SET expire_time = ? WHERE id = ?",
                      (int((time.time() - 60) * 1000), int(b.backup_id)))
        out = subprocess.run([DDSVAULT_BIN, "gc", "--config", str(s.config_path)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"1 backup(s) deleted [{b.backup_id}]" in out.stdout
        assert files_of(data, b.backup_id) == []
    finally:
        s.start()
    assert not listed(s, b.backup_id)
