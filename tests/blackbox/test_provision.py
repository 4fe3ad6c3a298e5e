"""CreateDBInstance (docs/provisioning.md): through the official tea SDK, a restore into a new instance that ddsvault
starts itself from the [provisioning] command template (a real FerretDB), from Snapshot and Logical backups and to
a second of the log backup; DeleteDBInstance stops it and removes its data; configured instances are not ddsvault's
to delete; a bad BackupId is refused before anything exists."""
from __future__ import annotations

import math
import os
import random
import time

import pymongo
import pytest
from alibabacloud_dds20151201 import models as dds
from Tea.exceptions import TeaException

import stack
from conftest import Ddsvault, config_text, seed_data, snapshot, tea_client, wait_backup
from test_physical import instance_lines
from test_pitr import Writer, fmt, parse, random_seconds, resolve, seed_from_env, state_at, state_of, wait_following
from test_restore import call

DBS = ("shop", "crm")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("provision")
    src = stack.FerretDB(base / "src", repl_set_name="rs0", create_oplog=True)
    data = seed_data(src.client(), DBS)
    lo = stack.free_port()
    provisioning = (
        "[provisioning]\n"
        f"command = \"{stack.bin('ferretdb')} --handler=sqlite --sqlite-url=file:{{data_dir}}/ "
        "--listen-addr=127.0.0.1:{port} --state-dir={dir} --repl-set-name=rs0 --telemetry=disable "
        "--debug-addr=- --log-level=warn\"\n"
        f"port_min = {lo}\nport_max = {lo + 20}\n"
    )
    text = config_text(base / "data", {}, extra="[log_backup]\nslice_secs = 1\npoll_ms = 200\n" + provisioning) \
        + instance_lines("dds-psrc", src.uri, data_path=src.data_dir)
    server = Ddsvault(base / "svc", text)
    yield {"server": server, "src": src, "data": data, "base": base, "tea": tea_client(server)}
    server.stop()
    src.stop()


def backup(env, method):
    tea = env["tea"]
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-psrc", backup_method=method)).body
    b = wait_backup(tea, "dds-psrc", r.backup_job_id)
    assert (b.backup_status, b.backup_method) == ("Success", method), b
    return b.backup_id


def create(env, **kw):
    req = dds.CreateDBInstanceRequest(region_id="cn-hangzhou", engine_version="4.0", dbinstance_class="dds.mongo.mid",
                                      dbinstance_storage=10, src_dbinstance_id="dds-psrc", **kw)
    return env["tea"].create_dbinstance(req).body


def attribute(env, iid):
    body = env["tea"].describe_dbinstance_attribute(dds.DescribeDBInstanceAttributeRequest(dbinstance_id=iid)).body
    return body.dbinstances.dbinstance[0]


def wait_running(env, iid, timeout=180.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        a = attribute(env, iid)
        if not seen or seen[-1] != a.dbinstance_status:
            seen.append(a.dbinstance_status)
        if a.dbinstance_status in ("Running", "Failed"):
            return a, seen
        time.sleep(0.3)
    raise AssertionError(f"{iid} not running within {timeout}s: {seen}")


def client_of(a):
    rs = a.replica_sets.replica_set[0]
    return pymongo.MongoClient(f"mongodb://{rs.connection_domain}:{rs.connection_port}/", directConnection=True,
                               serverSelectionTimeoutMS=5000)


def instance_dir(env, iid):
    return env["base"] / "data" / "instances" / iid


def delete(env, iid):
    d = instance_dir(env, iid)
    pid_before = server_pids(d)
    assert pid_before, f"no server process runs on {d}"
    env["tea"].delete_dbinstance(dds.DeleteDBInstanceRequest(dbinstance_id=iid))
    assert not d.exists()
    for pid in pid_before:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
    with pytest.raises(TeaException) as ei:
        attribute(env, iid)
    assert (ei.value.statusCode, ei.value.code) == (404, "InvalidDBInstanceId.NotFound")


def server_pids(d):
    """Processes whose command line names the instance directory (the FerretDB ddsvault started)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if str(d) in cmd and "ferretdb" in cmd:
            out.append(pid)
    return out


def test_from_a_snapshot_backup_runs_with_the_backups_data_and_delete_removes_it(env):
    bid = backup(env, "Snapshot")
    # Written after the backup: must not be in the new instance.
    env["src"].client().shop.orders.insert_one({"_id": "after"})
    out = create(env, backup_id=str(bid), restore_type="0")
    iid = out.dbinstance_id
    assert iid.startswith("dds-") and iid != "dds-psrc" and out.order_id
    a, seen = wait_running(env, iid)
    assert a.dbinstance_status == "Running", seen
    assert seen[0] in ("Creating", "Running")
    got = snapshot(client_of(a), DBS)
    assert got == env["data"]
    # Listed beside the configured one, and with its restore origin.
    ids = [i.dbinstance_id for i in env["tea"].describe_dbinstances(
        dds.DescribeDBInstancesRequest()).body.dbinstances.dbinstance]
    assert set(ids) >= {"dds-psrc", iid}
    listed = env["tea"].describe_restore_dbinstance_list(dds.DescribeRestoreDBInstanceListRequest(
        dbinstance_id="dds-psrc", creation_time_after=fmt(int(time.time()) - 3600))).body
    assert iid in [i.dbinstance_id for i in listed.dbinstances.dbinstance]
    # Backups work on it like on any instance.
    tea = env["tea"]
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id=iid, backup_method="Logical")).body
    assert wait_backup(tea, iid, r.backup_job_id).backup_status == "Success"
    delete(env, iid)


def test_from_a_logical_backup_with_database_names(env):
    bid = backup(env, "Logical")
    out = create(env, backup_id=str(bid), restore_type="0", database_names="crm")
    a, seen = wait_running(env, out.dbinstance_id)
    assert a.dbinstance_status == "Running", seen
    c = client_of(a)
    assert "shop" not in c.list_database_names()
    assert snapshot(c, ("crm",)) == {k: v for k, v in env["data"].items() if k.startswith("crm.")}
    delete(env, out.dbinstance_id)


def wait_covered(server, second: int, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rs = call(server, "DescribeInstanceRecoverTime", DBInstanceId="dds-psrc")["RestoreRanges"]
        if any(parse(r["RestoreBeginTime"]) <= second <= parse(r["RestoreEndTime"]) for r in rs):
            return rs
        time.sleep(0.2)
    raise AssertionError(f"second {fmt(second)} not recoverable within {timeout}s")


def test_point_in_time_equals_the_writers_state(env):
    """Two random seconds of a writer's run (test_pitr.py's method: the writer's record, straddling operations
    resolved by the source's own oplog `ts`); test_pitr.py checks five, and RestoreDBInstance as well."""
    tea = env["tea"]
    src = env["src"]
    initial = {"items": {i: {"_id": i, "v": 0} for i in range(50)}}
    src.client().app["items"].insert_many([dict(d) for d in initial["items"].values()])
    tea.modify_backup_policy(dds.ModifyBackupPolicyRequest(dbinstance_id="dds-psrc", enable_backup_log=1,
                                                           log_backup_retention_period=7))
    wait_following(env["server"], "dds-psrc")
    backup(env, "Logical")
    seed = seed_from_env()
    writer = Writer(src.client(), initial, seed, seconds=6, min_ops=300, create="later")
    writer.start()
    writer.join(180)
    assert not writer.is_alive() and writer.error is None, writer.error
    first, last = math.floor(writer.log[0].before), math.floor(writer.log[-1].after)
    seconds = random_seconds(random.Random(seed), first, last, 2)
    resolved = resolve(src.client(), writer.log, seconds)
    wait_covered(env["server"], last)
    wanted = {s: state_at(initial, writer.log, s, resolved) for s in seconds}
    assert len(seconds) == 2 and wanted[seconds[0]] != wanted[seconds[1]], seconds
    for second in seconds:
        out = create(env, restore_type="1", restore_time=fmt(second), database_names='["app"]')
        a, seen = wait_running(env, out.dbinstance_id)
        assert a.dbinstance_status == "Running", seen
        assert state_of(client_of(a)) == wanted[second], f"restore to {fmt(second)} differs (seed {seed})"
        delete(env, out.dbinstance_id)


def test_refusals_create_nothing(env):
    tea = env["tea"]
    before = tea.describe_dbinstances(dds.DescribeDBInstancesRequest()).body.total_count
    dirs_before = sorted(os.listdir(env["base"] / "data" / "instances")) \
        if (env["base"] / "data" / "instances").exists() else []
    for kw, status, code in [
        (dict(backup_id="999999", restore_type="0"), 404, "InvalidBackupId.NotFound"),
        (dict(restore_type="1", restore_time=fmt(int(time.time()) + 3600)), 400, "InvalidRestoreTime.OutOfRange"),
        (dict(restore_type="1", restore_time="yesterday"), 400, "InvalidParameter"),
        (dict(restore_type="2", backup_id="1"), 400, "UnsupportedOperation"),
    ]:
        with pytest.raises(TeaException) as ei:
            create(env, **kw)
        assert (ei.value.statusCode, ei.value.code) == (status, code), kw
    assert tea.describe_dbinstances(dds.DescribeDBInstancesRequest()).body.total_count == before
    dirs_after = sorted(os.listdir(env["base"] / "data" / "instances")) \
        if (env["base"] / "data" / "instances").exists() else []
    assert dirs_after == dirs_before
    # A configured instance is not ddsvault's to delete.
    with pytest.raises(TeaException) as ei:
        tea.delete_dbinstance(dds.DeleteDBInstanceRequest(dbinstance_id="dds-psrc"))
    assert (ei.value.statusCode, ei.value.code) == (403, "OperationDenied.NotProvisioned")
    assert env["src"].client().admin.command("ping")["ok"] == 1


def test_without_provisioning_create_is_a_documented_error(tmp_path):
    server = Ddsvault(tmp_path / "svc", config_text(tmp_path / "data", {"dds-x": ("mongodb://127.0.0.1:1/",
                                                                                    "local_ssd")}))
    try:
        with pytest.raises(TeaException) as ei:
            tea_client(server).create_dbinstance(dds.CreateDBInstanceRequest(
                region_id="cn-hangzhou", src_dbinstance_id="dds-x", backup_id="1"))
        assert (ei.value.statusCode, ei.value.code) == (400, "UnsupportedOperation")
        assert "[provisioning]" in ei.value.message
    finally:
        server.stop()
