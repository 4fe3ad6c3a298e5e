"""Tiered (advanced) backup policies, the retention lock and `ddsvault retention --dry-run`, through the official
SDKs against real FerretDB."""
from __future__ import annotations

import datetime
import json
import sqlite3
import subprocess
import time

import pytest
from alibabacloud_dds20151201 import models as dds
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_openapi.exceptions import ClientException
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.request import CommonRequest
from aliyunsdkdds.request.v20151201.DescribeAdvancedBackupPolicyRequest import DescribeAdvancedBackupPolicyRequest
from aliyunsdkdds.request.v20151201.ModifyAdvancedBackupPolicyRequest import ModifyAdvancedBackupPolicyRequest
from darabonba.runtime import RuntimeOptions

import stack
from conftest import DDSVAULT_BIN, OPERATOR_AK, Ddsvault, acs_call, config_text, tea_client, wait_backup

LIVE = "dds-lock1"
# Policies need no connection to the instance.
PID = "dds-adv1"
PID2 = "dds-adv2"
DEAD_URI = "mongodb://127.0.0.1:9"
COOLING_OFF = 3


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("retention-adv")
    f = stack.FerretDB(base / "rs", repl_set_name="rs0")
    f.client().shop.orders.insert_many([{"_id": i, "v": "x" * 100} for i in range(200)])
    data = base / "svc" / "data"
    s = Ddsvault(base / "svc", config_text(
        data, {LIVE: (f.uri, "local_ssd"), PID: (DEAD_URI, "local_ssd"), PID2: (DEAD_URI, "local_ssd")},
        extra=f"[retention]\ngc_interval_secs = 1\nlock_cooling_off_secs = {COOLING_OFF}\n"
              "[scheduler]\nenabled = false"))
    yield {"server": s, "data": data}
    s.stop()
    f.stop()


def tea_code(fn):
    with pytest.raises(ClientException) as ei:
        fn()
    return ei.value.status_code, ei.value.code


def modify_adv(server, iid, data=None, log=None, **kw):
    req = dds.ModifyAdvancedBackupPolicyRequest(dbinstance_id=iid, backup_retention_policy_on_cluster_deletion=0, **kw)
    if data is not None:
        req.advanced_backup_data_policies = [
            dds.ModifyAdvancedBackupPolicyRequestAdvancedBackupDataPolicies(**d) for d in data]
    if log is not None:
        req.advanced_backup_log_policies = [
            dds.ModifyAdvancedBackupPolicyRequestAdvancedBackupLogPolicies(**d) for d in log]
    return tea_client(server).modify_advanced_backup_policy(req)


def describe_adv(server, iid):
    return tea_client(server).describe_advanced_backup_policy(
        dds.DescribeAdvancedBackupPolicyRequest(dbinstance_id=iid)).body


def test_tiered_policies_create_update_delete_through_the_sdk(env):
    s = env["server"]
    assert tea_client(s).describe_advanced_backup_status(
        dds.DescribeAdvancedBackupStatusRequest(dbinstance_id=PID)).body.status == "Disabled"
    resp = modify_adv(s, PID, preferred_backup_time="02:00Z-03:00Z", snapshot_backup_type="Flash", data=[
        dict(action_type="CREATE", backup_policy="dayOfWeek", preferred_backup_period="1,2,3,4,5,6,7",
             retention_type="delay", retention_period=7),
        dict(action_type="CREATE", backup_policy="dayOfMonth", preferred_backup_period="1,-1",
             retention_type="delay", retention_period=365),
        dict(action_type="CREATE", backup_policy="dayOfYear", preferred_backup_period="01-07",
             retention_type="never"),
        dict(action_type="CREATE", backup_policy="backupInterval", preferred_backup_period="30",
             retention_type="delay", retention_period=7, preserve_one_each_hour=True),
    ], log=[dict(action_type="CREATE", enable_log_backup=1, retention_type="delay", retention_period=30)])
    assert resp.status_code == 200 and resp.body.request_id
    b = describe_adv(s, PID)
    assert (b.dbinstance_id, b.preferred_backup_time, b.snapshot_backup_type) == (PID, "02:00Z-03:00Z", "Flash")
    assert b.backup_retention_policy_on_cluster_deletion == 0
    got = [(p.policy_id, p.backup_policy, p.preferred_backup_period, p.retention_type, p.retention_period,
            p.preserve_one_each_hour, p.src_type, p.dest_type) for p in b.advanced_backup_data_policies]
    assert got == [
        ("1", "dayOfWeek", "1,2,3,4,5,6,7", "delay", 7, False, "db", "level1"),
        ("2", "dayOfMonth", "1,-1", "delay", 365, False, "db", "level1"),
        ("3", "dayOfYear", "01-07", "never", 0, False, "db", "level1"),
        ("4", "backupInterval", "30", "delay", 7, True, "db", "level1"),
    ]
    [log] = b.advanced_backup_log_policies
    assert (log.enable_log_backup, log.retention_type, log.retention_period) == (1, "delay", "30")
    assert tea_client(s).describe_advanced_backup_status(
        dds.DescribeAdvancedBackupStatusRequest(dbinstance_id=PID)).body.status == "Enabled"
    # The shared fields are the standard policy's too.
    std = tea_client(s).describe_backup_policy(dds.DescribeBackupPolicyRequest(dbinstance_id=PID)).body
    assert (std.preferred_backup_time, std.snapshot_backup_type) == ("02:00Z-03:00Z", "Flash")

    # UPDATE and DELETE by PolicyId; ids are not reused.
    modify_adv(s, PID, data=[
        dict(action_type="UPDATE", policy_id="2", retention_period=730),
        dict(action_type="DELETE", policy_id="4"),
        dict(action_type="CREATE", backup_policy="dayOfWeek", preferred_backup_period="6,7",
             retention_type="delay", retention_period=56),
    ])
    b = describe_adv(s, PID)
    assert [(p.policy_id, p.retention_period) for p in b.advanced_backup_data_policies] == [
        ("1", 7), ("2", 730), ("3", 0), ("5", 56)]

    # The old SDK sends the list as json.dumps output (with spaces) and reads the same answer.
    req = ModifyAdvancedBackupPolicyRequest()
    req.set_protocol_type("http")  # this request class defaults to HTTPS
    req.set_DBInstanceId(PID)
    req.set_BackupRetentionPolicyOnClusterDeletion(1)
    req.set_AdvancedBackupDataPolicies([{"ActionType": "DELETE", "PolicyId": "5"}])
    acs_call(s, req)
    req = DescribeAdvancedBackupPolicyRequest()
    req.set_protocol_type("http")
    req.set_DBInstanceId(PID)
    body = acs_call(s, req)
    assert [p["PolicyId"] for p in body["AdvancedBackupDataPolicies"]] == ["1", "2", "3"]
    assert body["BackupRetentionPolicyOnClusterDeletion"] == 1


@pytest.mark.parametrize("items, code", [
    ([dict(action_type="CREATE", backup_policy="dayOfWeek", preferred_backup_period="1",
           retention_type="delay", retention_period=30)], "InvalidParameter"),
    ([dict(action_type="CREATE", backup_policy="dayOfYear", preferred_backup_period="01-07,02-01",
           retention_type="never")], "InvalidParameter"),
    ([dict(action_type="CREATE", backup_policy="dayOfMonth", preferred_backup_period="1",
           retention_type="delay", retention_period=6)], "InvalidParameter"),
    ([dict(action_type="CREATE", backup_policy="dayOfMonth", preferred_backup_period="1",
           retention_type="delay", retention_period=7301)], "InvalidParameter"),
    ([dict(action_type="CREATE", backup_policy="backupInterval", preferred_backup_period="45",
           retention_type="never")], "InvalidParameter"),
    ([dict(action_type="CREATE", backup_policy="backupInterval", preferred_backup_period="30",
           retention_type="never"),
      dict(action_type="CREATE", backup_policy="backupInterval", preferred_backup_period="60",
           retention_type="never")], "InvalidParameter"),
    ([dict(action_type="UPDATE", policy_id="99", retention_period=30)], "InvalidParameter"),
    ([dict(action_type="DELETE")], "InvalidParameter"),
    ([dict(action_type="CREATE", backup_policy="dayOfWeek", preferred_backup_period="1,2",
           retention_type="delay", retention_period=30, src_type="db", dest_type="level2Cross",
           dest_region="cn-beijing")], "UnsupportedOperation"),
])
def test_invalid_tiered_policies_are_refused_and_nothing_is_stored(env, items, code):
    s = env["server"]
    before = describe_adv(s, PID2).to_map()
    before.pop("RequestId")
    status, got = tea_code(lambda: modify_adv(s, PID2, snapshot_backup_type="Flash", data=items))
    assert (status, got) == (400, code)
    after = describe_adv(s, PID2).to_map()
    after.pop("RequestId")
    assert after == before


def test_advanced_status_and_missing_required_parameter(env):
    s = env["server"]
    tea_client(s).modify_advanced_backup_status(dds.ModifyAdvancedBackupStatusRequest(dbinstance_id=PID2))
    assert tea_client(s).describe_advanced_backup_status(
        dds.DescribeAdvancedBackupStatusRequest(dbinstance_id=PID2)).body.status == "Enabled"
    assert tea_code(lambda: tea_client(s).modify_advanced_backup_policy(
        dds.ModifyAdvancedBackupPolicyRequest(dbinstance_id=PID2))) == (400, "MissingParameter")
    assert tea_code(lambda: describe_adv(s, "dds-nope"))[1] == "InvalidDBInstanceId.NotFound"


# ---------------------------------------------------------------------------------------------- retention lock

def lock_call(server, action, ak=None, **params):
    """The extension actions through the tea client's generic call path (the official SDK has no model)."""
    c = tea_client(server, **({"ak": ak} if ak else {}))
    p = open_api_models.Params(action=action, version="2015-12-01", protocol="HTTP", pathname="/", method="POST",
                               auth_type="AK", style="RPC", req_body_type="formData", body_type="json")
    return c.call_api(p, open_api_models.OpenApiRequest(query={"DBInstanceId": LIVE, **params}), RuntimeOptions())


def lock_state(server):
    return lock_call(server, "DescribeBackupRetentionLock")["body"]


def take_backup(server):
    tea = tea_client(server)
    job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id=LIVE, backup_method="Logical",
                                                    backup_retention_period=7)).body
    return wait_backup(tea, LIVE, job.backup_job_id)


def listed(server, backup_id):
    body = tea_client(server).describe_backups(
        dds.DescribeBackupsRequest(dbinstance_id=LIVE, backup_id=backup_id)).body
    return bool(body.backups and body.backups.backup)


def wait_until(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def expire_now(data, backup_id):
    with sqlite3.connect(data / "catalog.db") as c:
        c.execute("UPDATE backups SET expire_time = ? WHERE id = ?", (int((time.time() - 60) * 1000), int(backup_id)))


def test_retention_lock_refuses_deletion_for_everyone_until_the_cooling_off_ends(env):
    s, data = env["server"], env["data"]
    b = take_backup(s)
    assert lock_state(s)["RetentionLock"] == "Disabled"
    on = lock_call(s, "ModifyBackupRetentionLock", Enable="true")["body"]
    assert (on["RetentionLock"], on["UnlockTime"], on["CoolingOffSeconds"]) == ("Enabled", "", COOLING_OFF)
    assert on["LockEnabledTime"]

    # Root, through both SDKs: refused with the documented code.
    assert tea_code(lambda: tea_client(s).delete_backup(
        dds.DeleteBackupRequest(dbinstance_id=LIVE, backup_id=b.backup_id))) == (403, "OperationDenied.RetentionLocked")
    req = CommonRequest(domain="127.0.0.1", version="2015-12-01", action_name="DeleteBackup")
    req.add_query_param("DBInstanceId", LIVE)
    req.add_query_param("BackupId", b.backup_id)
    with pytest.raises(ServerException) as ei:
        acs_call(s, req)
    assert (ei.value.get_http_status(), ei.value.get_error_code()) == (403, "OperationDenied.RetentionLocked")
    # Shortening the expiry stays refused; extending is allowed.
    expire = datetime.datetime.strptime(b.backup_expire_time, "%Y-%m-%dT%H:%M:%SZ")
    assert tea_code(lambda: tea_client(s).modify_backup_expire_time(dds.ModifyBackupExpireTimeRequest(
        dbinstance_id=LIVE, backup_id=b.backup_id,
        backup_expire_time=(expire - datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))))[0] == 400
    tea_client(s).modify_backup_expire_time(dds.ModifyBackupExpireTimeRequest(
        dbinstance_id=LIVE, backup_id=b.backup_id,
        backup_expire_time=(expire + datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")))

    # An expired backup is still collected while the lock is on: the lock prevents only early deletion.
    old = take_backup(s)
    expire_now(data, old.backup_id)
    assert wait_until(lambda: not listed(s, old.backup_id))

    # Disabling starts the cooling-off; the lock holds until it ends.
    off = lock_call(s, "ModifyBackupRetentionLock", Enable="false")["body"]
    assert off["RetentionLock"] == "Unlocking" and off["UnlockTime"]
    assert tea_code(lambda: tea_client(s).delete_backup(
        dds.DeleteBackupRequest(dbinstance_id=LIVE, backup_id=b.backup_id)))[1] == "OperationDenied.RetentionLocked"
    # A second disable does not bring the unlock closer.
    assert lock_call(s, "ModifyBackupRetentionLock", Enable="false")["body"]["UnlockTime"] == off["UnlockTime"]
    assert wait_until(lambda: lock_state(s)["RetentionLock"] == "Disabled", timeout=COOLING_OFF + 10)
    tea_client(s).delete_backup(dds.DeleteBackupRequest(dbinstance_id=LIVE, backup_id=b.backup_id))
    assert not listed(s, b.backup_id)


def test_lock_actions_go_through_ram_and_validate(env):
    s = env["server"]
    # The operator may only create and describe backups of another instance: both lock actions are denied.
    for action, params in [("ModifyBackupRetentionLock", {"Enable": "true"}), ("DescribeBackupRetentionLock", {})]:
        with pytest.raises(ClientException) as ei:
            lock_call(s, action, ak=OPERATOR_AK, **params)
        assert (ei.value.status_code, ei.value.code) == (403, "Forbidden.RAM")
    with pytest.raises(ClientException) as ei:
        lock_call(s, "ModifyBackupRetentionLock")
    assert (ei.value.status_code, ei.value.code) == (400, "MissingParameter")
    with pytest.raises(ClientException) as ei:
        lock_call(s, "ModifyBackupRetentionLock", Enable="maybe")
    assert (ei.value.status_code, ei.value.code) == (400, "InvalidParameter")
    assert lock_state(s)["RetentionLock"] == "Disabled"


# ---------------------------------------------------------------------------------------------- dry run

def test_cli_retention_dry_run_shows_decisions_and_changes_nothing(env):
    s, data = env["server"], env["data"]
    b = take_backup(s)
    s.stop()
    try:
        expire_now(data, b.backup_id)
        run = lambda *a: subprocess.run([DDSVAULT_BIN, "retention", "--config", str(s.config_path), *a],  # noqa: E731
                                        capture_output=True, text=True, timeout=60)
        out = run("--dry-run", "--instance", LIVE)
        assert out.returncode == 0, out.stderr
        assert f"delete backup {b.backup_id} of {LIVE}: expired " in out.stdout, out.stdout
        assert "1 backup(s) would be deleted" in out.stdout
        other = run("--dry-run", "--instance", PID)
        assert "0 backup(s) would be deleted" in other.stdout, other.stdout
        with sqlite3.connect(data / "catalog.db") as c:
            assert c.execute("SELECT status FROM backups WHERE id = ?", (int(b.backup_id),)).fetchone() == ("Success",)
        bad = run("--instance", LIVE)
        assert bad.returncode != 0 and "--dry-run" in bad.stderr
        applied = run()
        assert applied.returncode == 0, applied.stderr
        assert f"1 backup(s) deleted [{b.backup_id}]" in applied.stdout, applied.stdout
    finally:
        s.start()
    assert not listed(s, b.backup_id)


def test_a_tier_keeps_an_expired_automatic_backup_longer(env):
    s, data = env["server"], env["data"]
    modify_adv(s, LIVE, data=[dict(action_type="CREATE", backup_policy="dayOfWeek",
                                   preferred_backup_period="1,2,3,4,5,6,7", retention_type="delay",
                                   retention_period=30)])
    b = take_backup(s)
    s.stop()
    try:
        # Make it the backup of today's window slot (what the scheduler records), then let its 7 days pass.
        start = datetime.datetime.strptime(b.backup_start_time, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc)
        with sqlite3.connect(data / "catalog.db") as c:
            c.execute("INSERT INTO schedule_runs (instance_id, schedule, slot_start, owner, claimed_at, outcome, "
                      "job_id) VALUES (?, 'standard', ?, 'test', ?, 'Created', ?)",
                      (LIVE, int(start.timestamp() * 1000), int(start.timestamp() * 1000), int(b.backup_job_id)))
        expire_now(data, b.backup_id)
        run = lambda *a: subprocess.run([DDSVAULT_BIN, "retention", "--config", str(s.config_path), *a],  # noqa: E731
                                        capture_output=True, text=True, timeout=60)
        out = run("--dry-run", "--instance", LIVE)
        assert out.returncode == 0, out.stderr
        until = (start + datetime.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert f"keep   backup {b.backup_id} of {LIVE} until {until}: daily policy 1" in out.stdout, out.stdout
        assert "0 backup(s) would be deleted, 1 expired backup(s) kept longer by a policy" in out.stdout
        applied = run()
        assert applied.returncode == 0, applied.stderr
        assert f"1 kept longer by a policy [{b.backup_id}]" in applied.stdout, applied.stdout
    finally:
        s.start()
    got = tea_client(s).describe_backups(
        dds.DescribeBackupsRequest(dbinstance_id=LIVE, backup_id=b.backup_id)).body.backups.backup[0]
    assert got.backup_expire_time == until
