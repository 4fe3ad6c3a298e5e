"""Restore through the API (RestoreDBInstance + ddsvault extensions), DescribeBackupDBs, and the CLI's restore
and verify, against real FerretDB."""
from __future__ import annotations

import json
import random
import subprocess
import time

import pytest
from alibabacloud_dds20151201 import models as dds
from alibabacloud_tea_openapi.exceptions import ClientException
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.request import CommonRequest
from bson import encode

import stack
from conftest import DDSVAULT_BIN, Ddsvault, acs_client, config_text, seed_data, snapshot, tea_client, wait_backup

DBS = ("shop", "crm")


def call(server, action, **params):
    req = CommonRequest(domain="127.0.0.1", version="2015-12-01", action_name=action, product="Dds")
    req.set_method("POST")
    for k, v in params.items():
        req.add_query_param(k, v)
    return json.loads(acs_client(server).do_action_with_exception(req))


def refused(fn) -> ServerException:
    with pytest.raises(ServerException) as ei:
        fn()
    return ei.value


def indexes(client, dbs):
    return {f"{db}.{c}": sorted((i["name"], tuple(i["key"].items()), bool(i.get("unique")))
                                for i in client[db][c].list_indexes())
            for db in dbs for c in client[db].list_collection_names()}


def wait_restore(server, target, job_id, timeout=300, statuses=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = call(server, "DescribeRestoreTasks", DBInstanceId=target, RestoreJobId=job_id)["RestoreJobs"]
        if statuses is not None:
            attr = tea_client(server).describe_dbinstance_attribute(
                dds.DescribeDBInstanceAttributeRequest(dbinstance_id=target)).body
            statuses.append(attr.dbinstances.dbinstance[0].dbinstance_status)
        if jobs and jobs[0]["Status"] in ("Success", "Failed"):
            return jobs[0]
        time.sleep(0.05)
    raise AssertionError(f"restore job {job_id} did not finish in {timeout}s")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("restore")
    src = stack.FerretDB(base / "src", repl_set_name="rs0")
    expected = seed_data(src.client(), DBS)
    # Enough documents that the restore is observable while it runs.
    pad = "r" * 1500
    src.client().shop.bulk.insert_many([{"_id": i, "pad": pad, "n": i} for i in range(30000)])
    expected = snapshot(src.client(), DBS)
    expected_indexes = indexes(src.client(), DBS)
    dst = stack.FerretDB(base / "dst", repl_set_name="rs0")
    dst2 = stack.FerretDB(base / "dst2", repl_set_name="rs0")
    data = base / "data"
    server = Ddsvault(base / "svc", config_text(data, {
        "dds-src": (src.uri, "local_ssd"), "dds-dst": (dst.uri, "local_ssd"), "dds-dst2": (dst2.uri, "local_ssd")}))
    tea = tea_client(server)
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-src", backup_method="Logical")).body
    b = wait_backup(tea, "dds-src", r.backup_job_id, timeout=300)
    assert b.backup_status == "Success"
    yield {"server": server, "src": src, "dst": dst, "dst2": dst2, "expected": expected,
           "expected_indexes": expected_indexes, "backup_id": b.backup_id, "data": data, "base": base}
    server.stop()
    for f in (src, dst, dst2):
        f.stop()


def test_describe_backup_dbs(env):
    tea = tea_client(env["server"])
    body = tea.describe_backup_dbs(dds.DescribeBackupDBsRequest(source_dbinstance="dds-src",
                                                                 backup_id=env["backup_id"])).body
    assert [d.dbname for d in body.databases.database] == ["crm", "shop"]
    assert body.total_count == 2
    with pytest.raises(ClientException) as ei:
        tea.describe_backup_dbs(dds.DescribeBackupDBsRequest(source_dbinstance="dds-src", backup_id="999999"))
    assert (ei.value.status_code, ei.value.code) == (404, "InvalidBackupId.NotFound")


def test_restore_into_another_instance_then_refuse_then_drop(env):
    server = env["server"]
    out = call(server, "RestoreDBInstance", DBInstanceId="dds-src", BackupId=env["backup_id"],
               TargetDBInstanceId="dds-dst")
    job_id = out["RestoreJobId"]
    # While it runs, a backup of the target is refused: a restore and a backup never run at once.
    with pytest.raises(ClientException) as ei:
        tea_client(server).create_backup(dds.CreateBackupRequest(dbinstance_id="dds-dst", backup_method="Logical"))
    assert (ei.value.status_code, ei.value.code) in ((403, "OperationDenied.DBInstanceStatus"),
                                                     (403, "OperationDenied.NoDatabase"))
    statuses = []
    job = wait_restore(server, "dds-dst", job_id, statuses=statuses)
    assert job["Status"] == "Success", job["ErrorMessage"]
    assert job["SourceDBInstanceId"] == "dds-src" and job["BackupId"] == env["backup_id"]
    assert job["RestoredDocuments"] == sum(len(v) for v in env["expected"].values())
    assert "Restoring" in statuses, statuses
    assert statuses[-1] == "Running"
    c = env["dst"].client()
    got = snapshot(c, DBS)
    assert sorted(got) == sorted(env["expected"])
    for ns, docs in env["expected"].items():
        assert [encode(d) for d in got[ns]] == [encode(d) for d in docs], ns
    assert indexes(c, DBS) == env["expected_indexes"]

    # Again: the collections exist now, so the restore is refused up front and nothing changes.
    e = refused(lambda: call(server, "RestoreDBInstance", DBInstanceId="dds-src", BackupId=env["backup_id"],
                             TargetDBInstanceId="dds-dst"))
    assert (e.get_http_status(), e.get_error_code()) == (403, "OperationDenied.NamespaceExists")
    assert "DropExisting" in e.get_error_msg()
    # DropExisting replaces them: a document added meanwhile disappears.
    c.shop.orders.insert_one({"_id": "extra"})
    out = call(server, "RestoreDBInstance", DBInstanceId="dds-src", BackupId=env["backup_id"],
               TargetDBInstanceId="dds-dst", DropExisting="true")
    job = wait_restore(server, "dds-dst", out["RestoreJobId"])
    assert job["Status"] == "Success", job["ErrorMessage"]
    assert c.shop.orders.count_documents({"_id": "extra"}) == 0
    assert c.shop.orders.count_documents({}) == len(env["expected"]["shop.orders"])


def test_restore_selection_and_parameter_errors(env):
    server = env["server"]
    out = call(server, "RestoreDBInstance", DBInstanceId="dds-src", BackupId=env["backup_id"],
               TargetDBInstanceId="dds-dst2", DatabaseNames='["crm"]', CollectionNames="shop.customers")
    job = wait_restore(server, "dds-dst2", out["RestoreJobId"])
    assert job["Status"] == "Success", job["ErrorMessage"]
    c = env["dst2"].client()
    assert sorted(c.list_database_names()) == ["crm", "shop"]
    assert c.shop.list_collection_names() == ["customers"]
    assert c.crm.contacts.count_documents({}) == len(env["expected"]["crm.contacts"])

    for params, status, code in [
        (dict(BackupId=env["backup_id"], TargetDBInstanceId="dds-dst2", DatabaseNames="nope"), 400,
         "InvalidParameter"),
        (dict(BackupId=env["backup_id"], TargetDBInstanceId="dds-dst2", CollectionNames="shop"), 400,
         "InvalidParameter"),
        (dict(BackupId="999999"), 404, "InvalidBackupId.NotFound"),
        (dict(BackupId="abc"), 400, "InvalidParameter"),
        (dict(), 400, "MissingParameter"),
        (dict(BackupId=env["backup_id"], TargetDBInstanceId="dds-nope"), 404, "InvalidDBInstanceId.NotFound"),
        (dict(BackupId=env["backup_id"], TargetDBInstanceId="dds-dst2", DropExisting="maybe"), 400,
         "InvalidParameter"),
    ]:
        e = refused(lambda: call(server, "RestoreDBInstance", DBInstanceId="dds-src", **params))
        assert (e.get_http_status(), e.get_error_code()) == (status, code), (params, e.get_error_msg())


def cli(*args, timeout=300):
    return subprocess.run([DDSVAULT_BIN, *args], capture_output=True, text=True, timeout=timeout)


def test_cli_verify_catches_every_flipped_byte(env):
    cfg = str(env["server"].config_path)
    ok = cli("verify", "--config", cfg, "--backup-id", env["backup_id"])
    assert ok.returncode == 0, ok.stderr
    assert "every CRC matches" in ok.stdout
    archive = env["data"] / "repository" / "backups" / "dds-src" / env["backup_id"] / "archive.zst"
    original = archive.read_bytes()
    rng = random.Random(20261127)
    try:
        for _ in range(12):
            pos = rng.randrange(len(original))
            flipped = bytearray(original)
            flipped[pos] ^= 1 << rng.randrange(8)
            archive.write_bytes(bytes(flipped))
            bad = cli("verify", "--config", cfg, "--backup-id", env["backup_id"])
            assert bad.returncode != 0, f"flip at {pos} not caught"
            assert "archive.zst" in bad.stderr and "sha256" in bad.stderr, bad.stderr
        archive.write_bytes(original[:-100])
        bad = cli("verify", "--config", cfg, "--backup-id", env["backup_id"])
        assert bad.returncode != 0 and "size" in bad.stderr, bad.stderr
    finally:
        archive.write_bytes(original)
    assert cli("verify", "--config", cfg, "--backup-id", env["backup_id"]).returncode == 0


def test_restore_of_a_corrupted_backup_fails_visibly_and_writes_nothing(env, tmp_path):
    server = env["server"]
    archive = env["data"] / "repository" / "backups" / "dds-src" / env["backup_id"] / "archive.zst"
    original = archive.read_bytes()
    target = stack.FerretDB(tmp_path / "t", repl_set_name="rs0")
    try:
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x40
        archive.write_bytes(bytes(flipped))
        # Through the CLI: refused, nothing written.
        bad = cli("restore", "--config", str(server.config_path), "--backup-id", env["backup_id"], "--to", target.uri)
        assert bad.returncode != 0 and "sha256" in bad.stderr, bad.stderr
        assert target.client().list_database_names() == [] or set(target.client().list_database_names()) <= {"admin", "local"}
        # Through the API: the job fails with its reason, the target stays untouched.
        out = call(server, "RestoreDBInstance", DBInstanceId="dds-src", BackupId=env["backup_id"],
                   TargetDBInstanceId="dds-dst2", DropExisting="true")
        job = wait_restore(server, "dds-dst2", out["RestoreJobId"])
        assert job["Status"] == "Failed" and "sha256" in job["ErrorMessage"], job
    finally:
        archive.write_bytes(original)
        target.stop()


def test_cli_restore_one_collection(env, tmp_path):
    target = stack.FerretDB(tmp_path / "one", repl_set_name="rs0")
    try:
        done = cli("restore", "--config", str(env["server"].config_path), "--backup-id", env["backup_id"],
                   "--to", target.uri, "--db", "shop", "--collection", "orders")
        assert done.returncode == 0, done.stderr
        c = target.client()
        assert c.list_database_names() == ["shop"] or set(c.list_database_names()) - {"admin", "local"} == {"shop"}
        assert c.shop.list_collection_names() == ["orders"]
        got = list(c.shop.orders.find({}, sort=[("_id", 1)]))
        assert [encode(d) for d in got] == [encode(d) for d in env["expected"]["shop.orders"]]
        # Once more without --drop: refused, naming the collection.
        again = cli("restore", "--config", str(env["server"].config_path), "--backup-id", env["backup_id"],
                    "--to", target.uri, "--db", "shop", "--collection", "orders")
        assert again.returncode != 0 and "shop.orders" in again.stderr, again.stderr
    finally:
        target.stop()
