"""CreateBackup / DescribeBackups / DescribeBackupTasks through both official SDKs, against real FerretDB, with the
archive restored by real mongorestore."""
from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest
import requests
from alibabacloud_dds20151201 import models as dds
from alibabacloud_tea_openapi.exceptions import ClientException
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkdds.request.v20151201.CreateBackupRequest import CreateBackupRequest
from aliyunsdkdds.request.v20151201.DescribeBackupsRequest import DescribeBackupsRequest
import bson
from bson import encode

import stack
from archive_check import read_archive
from conftest import (Ddsvault, acs_call, config_text, require_mongo_tools, seed_data, snapshot, tea_client,
                      wait_backup)

TIME_RE = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("backup")
    rs1 = stack.FerretDB(base / "rs1", repl_set_name="rs0")
    expected = seed_data(rs1.client())
    empty = stack.FerretDB(base / "empty", repl_set_name="rs0")
    # Big enough that one backup outlasts a burst of 200 CreateBackup calls.
    big = stack.FerretDB(base / "big", repl_set_name="rs0")
    pad = "p" * 2000
    for k in range(10):
        big.client().load.docs.insert_many([{"_id": k * 10000 + i, "pad": pad} for i in range(10000)])
    standalone = stack.FerretDB(base / "standalone")
    standalone.client().app.things.insert_one({"x": 1})
    down_port = stack.free_port()
    instances = {
        "dds-rs1": (rs1.uri, "local_ssd"),
        "dds-empty": (empty.uri, "local_ssd"),
        "dds-big": (big.uri, "local_ssd"),
        "dds-standalone": (standalone.uri, "local_ssd"),
        "dds-cloud": (rs1.uri, "cloud_essd1"),
        "dds-down": (f"mongodb://127.0.0.1:{down_port}/", "local_ssd"),
    }
    server = Ddsvault(base / "ddsvault", config_text(base / "ddsvault" / "data", instances))
    yield {"server": server, "rs1": rs1, "expected": expected, "base": base, "data": base / "ddsvault" / "data"}
    server.stop()
    for f in (rs1, empty, standalone, big):
        f.stop()


def client_error(fn):
    with pytest.raises(ClientException) as ei:
        fn()
    return ei.value


def parse_time(s: str) -> datetime.datetime:
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def restore_with_mongorestore(archive: Path, target: stack.FerretDB, tmp: Path, gzip: bool = False,
                              *, namespaces) -> None:
    """mongorestore 100.18.0 reads every namespace (`namespaces`) of the archive, then mongorestore 100.11.0 restores
    it into `target` (the newest release whose inserts FerretDB 1.24 accepts)."""
    require_mongo_tools()
    if archive.suffix == ".zst":
        import zstandard

        plain = tmp / "archive.plain"
        with open(archive, "rb") as src, open(plain, "wb") as dst:
            zstandard.ZstdDecompressor().copy_stream(src, dst)
        archive = plain
    stack.current_mongorestore_reads_every_namespace(target.uri, archive, namespaces, gzip=gzip)
    args = [stack.mongorestore_for_ferretdb(), f"--uri={target.uri}", f"--archive={archive}", "--noIndexRestore",
            "--nsExclude=admin.*"]
    if gzip:
        args.append("--gzip")
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def assert_same_documents(expected: dict, actual: dict) -> None:
    assert sorted(expected) == sorted(actual)
    for ns, docs in expected.items():
        got = actual[ns]
        assert len(got) == len(docs), ns
        for a, b in zip(docs, got):
            # Canonical BSON bytes: same fields, same order, same types, same values.
            assert encode(a) == encode(b), f"{ns}: {a!r} != {b!r}"


def test_logical_backup_v3_end_to_end(env, tmp_path):
    server = env["server"]
    tea = tea_client(server)
    started = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    resp = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-rs1", backup_method="Logical"))
    assert resp.status_code == 200
    body = resp.body
    assert isinstance(body.backup_id, str) and body.backup_id.isdigit()
    assert isinstance(body.backup_job_id, str) and body.backup_job_id.isdigit()
    assert body.request_id

    # The job is visible while it runs (or, if already done, by its id).
    tasks = tea.describe_backup_tasks(dds.DescribeBackupTasksRequest(
        dbinstance_id="dds-rs1", backup_job_id=body.backup_job_id)).body.backup_jobs
    assert len(tasks) == 1 and tasks[0].backupjob_id == body.backup_job_id
    assert tasks[0].backup_set_status in ("Scheduled", "Backuping", "Finished")
    assert tasks[0].job_mode == "Manual"

    b = wait_backup(tea, "dds-rs1", body.backup_job_id)
    assert b.backup_id == body.backup_id
    assert b.backup_job_id == body.backup_job_id
    assert b.backup_status == "Success"
    assert b.backup_method == "Logical"
    assert b.backup_mode == "Manual"
    assert b.backup_type == "FullBackup"
    assert b.backup_dbnames == "crm,shop"
    assert b.is_avail is True
    assert b.engine_version and "." in b.engine_version
    assert isinstance(b.backup_size, int) and b.backup_size > 0
    import re

    for t in (b.backup_start_time, b.backup_end_time, b.backup_expire_time):
        assert re.match(TIME_RE, t), t
    assert parse_time(b.backup_start_time) >= started - datetime.timedelta(seconds=2)
    assert parse_time(b.backup_end_time) >= parse_time(b.backup_start_time)
    assert parse_time(b.backup_expire_time) - parse_time(b.backup_end_time) == datetime.timedelta(days=30)

    finished = tea.describe_backup_tasks(dds.DescribeBackupTasksRequest(
        dbinstance_id="dds-rs1", backup_job_id=body.backup_job_id)).body.backup_jobs
    assert finished[0].backup_set_status == "Finished" and finished[0].progress == "100"
    # No active job is left for the instance.
    assert tea.describe_backup_tasks(dds.DescribeBackupTasksRequest(dbinstance_id="dds-rs1")).body.backup_jobs == []

    # The repository holds the archive and a manifest that matches it byte for byte.
    prefix = env["data"] / "repository" / "backups" / "dds-rs1" / b.backup_id
    manifest = json.loads((prefix / "manifest.json").read_text())
    assert [f["name"] for f in manifest["files"]] == ["archive.zst"]
    archive = prefix / "archive.zst"
    data = archive.read_bytes()
    assert len(data) == manifest["files"][0]["size"] == b.backup_size
    assert hashlib.sha256(data).hexdigest() == manifest["files"][0]["sha256"]
    assert not list((env["data"] / "repository").glob("staging/*/*")), "staging must be empty after success"

    # An independent reader of the archive format (mongorestore's checks, CRC-64 included) sees every document
    # byte for byte as the server returns it, and the collection metadata mongorestore would use.
    arch = read_archive(decompress(archive))
    assert arch.header["version"] == "0.1"
    assert sorted(arch.namespaces) == sorted(env["expected"])
    for ns, docs in env["expected"].items():
        got = sorted((bson.decode(d) for d in arch.namespaces[ns].docs), key=lambda d: d["_id"])
        assert [encode(d) for d in got] == [encode(d) for d in docs], ns
    meta = json.loads(arch.namespaces["shop.customers"].metadata)
    assert meta["collectionName"] == "customers"
    assert {"name": "name_1", "unique": True} == {k: meta["indexes"][1][k] for k in ("name", "unique")}
    assert json.loads(arch.namespaces["shop.empty"].metadata)["collectionName"] == "empty"
    assert arch.namespaces["shop.empty"].docs == []

    # Loaded into a fresh FerretDB, the archive gives back the same data.
    target = stack.FerretDB(tmp_path / "target", repl_set_name="rs0")
    try:
        load_archive(arch, target.client())
        assert_same_documents(env["expected"], snapshot(target.client(), ("shop", "crm")))
    finally:
        target.stop()
    env["archive"] = archive


def decompress(archive: Path) -> bytes:
    import zstandard

    with open(archive, "rb") as f:
        return zstandard.ZstdDecompressor().stream_reader(f).read()


def load_archive(arch, client) -> None:
    """What mongorestore does with an archive on FerretDB: create, insert, then build the indexes."""
    from bson.raw_bson import RawBSONDocument

    for ns in arch.namespaces.values():
        meta = json.loads(ns.metadata) if ns.metadata else {}
        db = client[ns.db]
        db.create_collection(ns.collection)
        if ns.docs:
            db[ns.collection].insert_many([RawBSONDocument(d) for d in ns.docs], ordered=True)
        for idx in meta.get("indexes", []):
            if idx["name"] == "_id_":
                continue
            keys = [(k, v["$numberInt"] if isinstance(v, dict) else v) for k, v in idx["key"].items()]
            keys = [(k, int(v)) for k, v in keys]
            db[ns.collection].create_index(keys, name=idx["name"], unique=idx.get("unique", False))


def test_real_mongorestore_reads_our_archive(env, tmp_path):
    require_mongo_tools()
    archive = env.get("archive")
    assert archive is not None, "run after test_logical_backup_v3_end_to_end"
    target = stack.FerretDB(tmp_path / "target", repl_set_name="rs0")
    try:
        restore_with_mongorestore(archive, target, tmp_path, namespaces=sorted(env["expected"]))
        assert_same_documents(env["expected"], snapshot(target.client(), ("shop", "crm")))
    finally:
        target.stop()


def test_logical_backup_with_v1_sdks(env):
    server = env["server"]
    req = CreateBackupRequest()
    req.set_DBInstanceId("dds-rs1")
    req.set_BackupMethod("Logical")
    req.set_BackupRetentionPeriod(7)
    out = acs_call(server, req)
    assert set(out) >= {"BackupId", "BackupJobId", "RequestId"}
    assert isinstance(out["BackupJobId"], str)
    tea = tea_client(server)
    b = wait_backup(tea, "dds-rs1", out["BackupJobId"])
    assert b.backup_status == "Success"
    assert parse_time(b.backup_expire_time) - parse_time(b.backup_end_time) == datetime.timedelta(days=7)

    # DescribeBackups through the V1 SDK: raw JSON with the documented types.
    dreq = DescribeBackupsRequest()
    dreq.set_DBInstanceId("dds-rs1")
    dreq.set_BackupId(out["BackupId"])
    listed = acs_call(server, dreq)
    assert listed["TotalCount"] == 1 and listed["PageNumber"] == 1 and listed["PageSize"] == 30
    item = listed["Backups"]["Backup"][0]
    assert item["BackupId"] == out["BackupId"] and isinstance(item["BackupSize"], int)
    assert item["IsAvail"] is True and item["BackupDownloadURL"].startswith("http://")

    # The tea client in V1 mode (signature_algorithm='v2'), permanent retention.
    tea_v1 = tea_client(server, v1=True)
    r = tea_v1.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-rs1", backup_method="Logical",
                                                      backup_retention_period=-1)).body
    b = wait_backup(tea_v1, "dds-rs1", r.backup_job_id)
    assert b.backup_status == "Success" and b.backup_expire_time == "9999-01-01T00:00:00Z"


@pytest.mark.parametrize("kwargs,status,code,needle", [
    (dict(dbinstance_id="dds-nope", backup_method="Logical"), 404, "InvalidDBInstanceId.NotFound", "dds-nope"),
    (dict(dbinstance_id="dds-rs1", backup_method="Incremental"), 400, "InvalidBackupMethod.ValueNotSupport",
     "Valid values"),
    (dict(dbinstance_id="dds-rs1", backup_method="logical"), 400, "InvalidBackupMethod.ValueNotSupport",
     "Valid values"),
    # Physical is the default method; it and Snapshot copy data files, so they need data_path (dds-rs1 has none).
    (dict(dbinstance_id="dds-rs1"), 400, "InvalidBackupMethod.DataPathRequired", "set data_path"),
    (dict(dbinstance_id="dds-rs1", backup_method="Snapshot"), 400, "InvalidBackupMethod.DataPathRequired",
     "set data_path"),
    (dict(dbinstance_id="dds-standalone", backup_method="Logical"), 400, "InvalidBackupMethod.ValueNotSupport",
     "standalone"),
    # A standalone takes Snapshot by default, which needs data_path.
    (dict(dbinstance_id="dds-standalone"), 400, "InvalidBackupMethod.DataPathRequired", "Snapshot backups copy"),
    (dict(dbinstance_id="dds-cloud", backup_method="Logical"), 400, "InvalidBackupMethod.ValueNotSupport",
     "cloud disks"),
    (dict(dbinstance_id="dds-rs1", backup_method="Logical", backup_retention_period=6), 400,
     "InvalidBackupRetentionPeriod.Malformed", "7 to 730"),
    (dict(dbinstance_id="dds-rs1", backup_method="Logical", backup_retention_period=731), 400,
     "InvalidBackupRetentionPeriod.Malformed", "7 to 730"),
    (dict(dbinstance_id="dds-rs1", backup_method="Logical", backup_retention_period=0), 400,
     "InvalidBackupRetentionPeriod.Malformed", "7 to 730"),
    (dict(dbinstance_id="dds-empty", backup_method="Logical"), 403, "OperationDenied.NoDatabase", "no database"),
])
def test_create_backup_errors(env, kwargs, status, code, needle):
    tea = tea_client(env["server"])
    e = client_error(lambda: tea.create_backup(dds.CreateBackupRequest(**kwargs)))
    assert (e.status_code, e.code) == (status, code), e.message
    assert needle in e.message
    assert e.request_id
    # A refused request never leaves a job behind.
    if kwargs["dbinstance_id"] != "dds-nope":
        tasks = tea.describe_backup_tasks(dds.DescribeBackupTasksRequest(
            dbinstance_id=kwargs["dbinstance_id"])).body.backup_jobs
        assert tasks == []


def test_create_backup_errors_through_v1(env):
    req = CreateBackupRequest()
    req.set_DBInstanceId("dds-rs1")
    req.set_BackupMethod("Bogus")
    with pytest.raises(ServerException) as ei:
        acs_call(env["server"], req)
    assert ei.value.get_http_status() == 400
    assert ei.value.get_error_code() == "InvalidBackupMethod.ValueNotSupport"
    assert ei.value.get_request_id()


def test_unreachable_instance_fails_fast(env):
    tea = tea_client(env["server"])
    t0 = time.monotonic()
    e = client_error(lambda: tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-down",
                                                                       backup_method="Logical")))
    elapsed = time.monotonic() - t0
    assert (e.status_code, e.code) == (403, "OperationDenied.DBInstanceStatus")
    assert "cannot be reached" in e.message
    assert elapsed < 30, f"took {elapsed:.1f}s"


def test_only_one_job_under_200_parallel_calls(env):
    server = env["server"]
    clients = [tea_client(server) for _ in range(16)]

    def call(i):
        try:
            r = clients[i % len(clients)].create_backup(
                dds.CreateBackupRequest(dbinstance_id="dds-big", backup_method="Logical"))
            return ("ok", r.body.backup_job_id)
        except ClientException as e:
            return (e.code, e.status_code, e.message[:300])

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(call, range(200)))
    burst = time.monotonic() - t0
    ok = [r for r in results if r[0] == "ok"]
    refused = [r for r in results if r[0] == "OperationDenied.BackupJobExists"]
    tea = tea_client(server)
    b = wait_backup(tea, "dds-big", ok[0][1], timeout=300)
    took = (parse_time(b.backup_end_time) - parse_time(b.backup_start_time)).total_seconds()
    # Meaningful only if the first job was still running when the burst ended.
    assert took > burst + 1, f"backup took {took}s, burst {burst:.1f}s: enlarge dds-big"
    assert len(ok) == 1, results
    assert len(refused) == 199 and all(r[1] == 403 for r in refused), [r for r in results if r[0] != "OperationDenied.BackupJobExists"][:2]
    assert b.backup_status == "Success"
    # And the instance is free again afterwards.
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-big", backup_method="Logical")).body
    assert wait_backup(tea, "dds-big", r.backup_job_id, timeout=300).backup_status == "Success"


def test_describe_backups_filters_and_paging(env):
    tea = tea_client(env["server"])
    all_ = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-rs1")).body
    assert all_.total_count >= 1 and all_.page_size == 30 and all_.page_number == 1
    ids = [b.backup_id for b in all_.backups.backup]
    assert ids == sorted(ids, key=int, reverse=True), "newest first"

    future = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%MZ")
    later = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)).strftime("%Y-%m-%dT%H:%MZ")
    none = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-rs1", start_time=future,
                                                           end_time=later)).body
    assert none.total_count == 0 and none.backups.backup == []
    past = "2020-01-01T00:00Z"
    some = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-rs1", start_time=past,
                                                           end_time=later)).body
    assert some.total_count == all_.total_count

    one = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-rs1", backup_id=ids[0])).body
    assert [b.backup_id for b in one.backups.backup] == [ids[0]]
    # Another instance's backups are not visible through this one.
    other = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-empty", backup_id=ids[0])).body
    assert other.total_count == 0

    for kwargs, name in [(dict(page_size=7), "PageSize"), (dict(page_number=0), "PageNumber"),
                         (dict(start_time="yesterday"), "StartTime"),
                         (dict(start_time=later, end_time=future), "EndTime")]:
        e = client_error(lambda: tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-rs1", **kwargs)))
        assert (e.status_code, e.code) == (400, "InvalidParameter") and name in e.message
    e = client_error(lambda: tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-nope")))
    assert (e.status_code, e.code) == (404, "InvalidDBInstanceId.NotFound")


def test_describe_instances_and_policy(env):
    tea = tea_client(env["server"])
    body = tea.describe_dbinstances(dds.DescribeDBInstancesRequest()).body
    rows = {i.dbinstance_id: i for i in body.dbinstances.dbinstance}
    assert body.total_count == len(rows) == 6
    assert rows["dds-rs1"].dbinstance_status == "Running"
    assert rows["dds-rs1"].dbinstance_type == "replicate"
    assert rows["dds-rs1"].engine == "MongoDB" and rows["dds-rs1"].engine_version
    assert rows["dds-cloud"].storage_type == "cloud_essd1"
    assert rows["dds-down"].dbinstance_status == "Unavailable"
    assert rows["dds-standalone"].dbinstance_type == "replicate"

    attr = tea.describe_dbinstance_attribute(dds.DescribeDBInstanceAttributeRequest(dbinstance_id="dds-rs1")).body
    inst = attr.dbinstances.dbinstance[0]
    assert inst.dbinstance_id == "dds-rs1" and inst.replica_set_name == "rs0"
    assert inst.dbinstance_status == "Running" and inst.storage_type == "local_ssd"
    sa = tea.describe_dbinstance_attribute(
        dds.DescribeDBInstanceAttributeRequest(dbinstance_id="dds-standalone")).body.dbinstances.dbinstance[0]
    assert sa.replica_set_name == ""
    e = client_error(lambda: tea.describe_dbinstance_attribute(
        dds.DescribeDBInstanceAttributeRequest(dbinstance_id="dds-nope")))
    assert (e.status_code, e.code) == (404, "InvalidDBInstanceId.NotFound")

    pol = tea.describe_backup_policy(dds.DescribeBackupPolicyRequest(dbinstance_id="dds-rs1")).body
    assert pol.backup_retention_period == "30"
    assert pol.preferred_backup_time == "03:00Z-04:00Z"
    assert pol.preferred_backup_period.split(",")[0] == "Monday"
    assert pol.enable_backup_log == 0 and pol.snapshot_backup_type == "Standard"


def test_no_secret_in_logs(env):
    from conftest import AUDITOR_AK, DENIED_AK, OPERATOR_AK, ROOT_AK

    log = env["server"].stderr()
    assert "request refused" in log, "refusals are in the access log"
    for _, secret in (ROOT_AK, OPERATOR_AK, AUDITOR_AK, DENIED_AK):
        assert secret not in log
    assert "Signature=" not in log


@pytest.fixture(scope="module")
def gzip_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("gzip")
    f = stack.FerretDB(base / "src", repl_set_name="rs0")
    expected = seed_data(f.client(), dbs=("g1", "g2"))
    s = Ddsvault(base / "svc", config_text(base / "data", {"dds-gz": (f.uri, "local_ssd")},
                                          extra='[backup]\ncompression = "gzip"\nparallel_collections = 2'))
    yield {"server": s, "expected": expected, "data": base / "data"}
    s.stop()
    f.stop()


def test_gzip_archives_like_mongodump_gzip(gzip_env, tmp_path):
    import gzip

    tea = tea_client(gzip_env["server"])
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-gz", backup_method="Logical")).body
    b = wait_backup(tea, "dds-gz", r.backup_job_id)
    assert b.backup_status == "Success" and b.backup_dbnames == "g1,g2"
    archive = gzip_env["data"] / "repository" / "backups" / "dds-gz" / b.backup_id / "archive.gz"
    assert archive.stat().st_size == b.backup_size
    # One gzip stream over the whole archive, as `mongodump --archive --gzip` writes it.
    arch = read_archive(gzip.decompress(archive.read_bytes()))
    for ns, docs in gzip_env["expected"].items():
        got = sorted((bson.decode(d) for d in arch.namespaces[ns].docs), key=lambda d: d["_id"])
        assert [encode(d) for d in got] == [encode(d) for d in docs], ns
    require_mongo_tools()
    target = stack.FerretDB(tmp_path / "target", repl_set_name="rs0")
    try:
        restore_with_mongorestore(archive, target, tmp_path, gzip=True, namespaces=sorted(gzip_env["expected"]))
        assert_same_documents(gzip_env["expected"], snapshot(target.client(), ("g1", "g2")))
    finally:
        target.stop()


def test_download_url_and_cli(env, tmp_path):
    import subprocess as sp

    from conftest import DDSVAULT_BIN

    tea = tea_client(env["server"])
    b = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-rs1")).body.backups.backup[0]
    assert b.backup_status == "Success"
    url = b.backup_download_url
    assert url.startswith(f"http://{env['server'].endpoint}/download/{b.backup_id}/archive.zst?Expires=")
    assert b.backup_intranet_download_url == url
    prefix = env["data"] / "repository" / "backups" / "dds-rs1" / b.backup_id
    manifest = json.loads((prefix / "manifest.json").read_text())
    whole = requests.get(url, timeout=30)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    assert hashlib.sha256(whole.content).hexdigest() == manifest["files"][0]["sha256"]
    assert len(whole.content) == b.backup_size
    # The download is a mongodump archive as it is: decompress, read, all namespaces there.
    import zstandard

    arch = read_archive(zstandard.ZstdDecompressor().stream_reader(__import__("io").BytesIO(whole.content)).read())
    assert sorted(arch.namespaces) == sorted(env["expected"])
    # Range requests (resume, parallel download).
    part = requests.get(url, headers={"Range": "bytes=10-109"}, timeout=30)
    assert part.status_code == 206 and part.content == whole.content[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{len(whole.content)}"
    tail = requests.get(url, headers={"Range": "bytes=-7"}, timeout=30)
    assert tail.status_code == 206 and tail.content == whole.content[-7:]
    bad = requests.get(url, headers={"Range": f"bytes={len(whole.content)}-"}, timeout=30)
    assert bad.status_code == 416
    # Tampering with the URL is refused with an Alibaba-style error.
    for tampered in (url.replace("Signature=", "Signature=00"), url.replace("Expires=", "Expires=9"),
                     url.replace(f"/download/{b.backup_id}/", "/download/999999/"),
                     url.replace("archive.zst", "manifest.json")):
        r = requests.get(tampered, timeout=30)
        assert r.status_code == 403 and r.json()["Code"] == "InvalidDownloadURL.Signature", tampered
    # Every download, served or refused, is in the audit trail (written in batches: wait for it).
    deadline = time.time() + 30
    while True:
        out = sp.run([DDSVAULT_BIN, "audit", "--config", str(env["server"].config_path), "--json", "--action",
                      "DownloadBackup", "--limit", "1000"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        records = [json.loads(line) for line in out.stdout.splitlines()]
        mine = [r for r in records if r["Resources"][0].endswith(f"dbinstance/dds-rs1/backup/{b.backup_id}/archive.zst")]
        refused = [r for r in records if r["Code"] == "InvalidDownloadURL.Signature"]
        if len(mine) >= 4 and len(refused) >= 4 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert sorted(r["HttpStatus"] for r in mine)[:4] == [200, 206, 206, 416], mine
    assert {r["Code"] for r in mine} == {None, "InvalidRange"}
    assert all(r["Action"] == "DownloadBackup" and r["AccessKeyId"] is None and r["SourceIp"] == "127.0.0.1"
               and r["Resources"][0].startswith("acs:dds:") for r in mine), mine
    assert len(refused) >= 4 and all(r["HttpStatus"] == 403 for r in refused)
    assert "backup/999999/archive.zst" in {r["Resources"][0] for r in refused}
    assert "Signature=" not in out.stdout and "Expires=" not in out.stdout
    # CLI: the same file out of the repository, verified against the manifest.
    out = tmp_path / "dl.zst"
    done = sp.run([DDSVAULT_BIN, "download", "--config", str(env["server"].config_path), "--backup-id",
                   b.backup_id, "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == whole.content
    missing = sp.run([DDSVAULT_BIN, "download", "--config", str(env["server"].config_path), "--backup-id",
                      "999999", "-o", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "does not exist" in missing.stderr
