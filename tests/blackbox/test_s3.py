"""Backups on an S3 repository: the real ddsvault against a real MinIO (built by scripts/setup-minio.sh) and real
FerretDB, through the official Dds SDKs; the bucket is inspected with boto3.

Covers Logical and Snapshot backups, restore, download (URL and CLI), verify, DescribeBackupStorage, deletion and
GC, and the faults: wrong credentials and a missing bucket (serve refuses to start), an object deleted behind
ddsvault's back (verify names the backup), MinIO killed mid-upload and restarted, ddsvault killed mid-upload.
In every case no backup is listed Success that does not verify, and no multipart upload is left."""
from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import subprocess
import time

import pytest
import requests
from alibabacloud_dds20151201 import models as dds
from aliyunsdkcore.acs_exception.exceptions import ServerException

import stack
from conftest import DDSVAULT_BIN, Ddsvault, config_text, seed_data, snapshot, tea_client, wait_backup
from test_physical import download_tar, instance_lines, restore_to_dir
from test_restore import call, wait_restore

DBS = ("shop", "crm")
BUCKET = "backups"
PREFIX = "team/ddsvault"


def _require_minio():
    if not stack.has_bin("minio"):
        why = f"{stack.bin('minio')} not found: run scripts/setup-stack.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {why}")
        pytest.skip(why)


def cli(server, *args, timeout=300):
    return subprocess.run([DDSVAULT_BIN, args[0], "--config", str(server.config_path), *args[1:]],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    _require_minio()
    base = tmp_path_factory.mktemp("s3")
    minio = stack.MinIO(base / "minio").start()
    minio.bucket(BUCKET)
    src = stack.FerretDB(base / "src", repl_set_name="rs0")
    expected = seed_data(src.client(), DBS)
    dst = stack.FerretDB(base / "dst", repl_set_name="rs0")
    single = stack.FerretDB(base / "single")
    rnd = random.Random(7)
    single.client().big.docs.insert_many([{"_id": i, "pad": rnd.randbytes(400).hex()} for i in range(6000)])
    # dds-src has its data path, so Physical backups of it work too (the tests ask for Logical by name).
    text = config_text(base / "data", {"dds-dst": (dst.uri, "local_ssd")},
                       extra=minio.repository_config(BUCKET, PREFIX, part_size_mib=5, parts_in_flight=2)) \
        + instance_lines("dds-src", src.uri, data_path=src.data_dir) \
        + instance_lines("dds-single", single.uri, data_path=single.data_dir)
    server = Ddsvault(base / "svc", text)
    yield {"server": server, "minio": minio, "src": src, "dst": dst, "single": single, "expected": expected,
           "base": base}
    server.stop()
    for f in (src, dst, single):
        f.stop()
    minio.stop()


def manifest_of(minio, instance, backup_id):
    body = minio.client().get_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{instance}/{backup_id}/manifest.json")
    return json.loads(body["Body"].read())


def assert_nothing_half_done(minio):
    """No multipart upload left, no journal marker, no staging object, no backup prefix without a manifest."""
    assert minio.multipart_uploads(BUCKET) == []
    keys = minio.keys(BUCKET, PREFIX + "/")
    assert not [k for k in keys if k.startswith(f"{PREFIX}/uploads/")], keys
    assert not [k for k in keys if k.startswith(f"{PREFIX}/staging/")], keys
    # A backup's prefix is <PREFIX>/backups/<instance>/<backup id>; Physical files sit one level deeper.
    depth = PREFIX.count("/") + 4
    prefixes = {"/".join(k.split("/")[:depth]) for k in keys if k.startswith(f"{PREFIX}/backups/")}
    for p in prefixes:
        assert f"{p}/manifest.json" in keys, f"{p} has files but no manifest: {keys}"


def test_logical_backup_restore_download_verify_on_s3(env, tmp_path):
    server, minio, tea = env["server"], env["minio"], tea_client(env["server"])
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-src", backup_method="Logical")).body
    b = wait_backup(tea, "dds-src", r.backup_job_id)
    assert b.backup_status == "Success"
    # The archive and its manifest are in the bucket, under the configured prefix, and nothing else.
    keys = minio.keys(BUCKET, f"{PREFIX}/backups/dds-src/{b.backup_id}/")
    assert sorted(keys) == [f"{PREFIX}/backups/dds-src/{b.backup_id}/archive.zst",
                            f"{PREFIX}/backups/dds-src/{b.backup_id}/manifest.json"], keys
    m = manifest_of(minio, "dds-src", b.backup_id)
    assert m["files"][0]["size"] == keys[f"{PREFIX}/backups/dds-src/{b.backup_id}/archive.zst"] == b.backup_size
    assert_nothing_half_done(minio)
    # Nothing went to the local default directory.
    assert not (env["base"] / "data" / "repository" / "backups").exists()

    # Download URL (streamed from S3, ranges) and CLI download.
    whole = requests.get(b.backup_download_url, timeout=60)
    assert whole.status_code == 200
    assert hashlib.sha256(whole.content).hexdigest() == m["files"][0]["sha256"]
    part = requests.get(b.backup_download_url, headers={"Range": "bytes=5-104"}, timeout=60)
    assert part.status_code == 206 and part.content == whole.content[5:105]
    out = tmp_path / "dl.zst"
    d = cli(server, "download", "--backup-id", b.backup_id, "-o", str(out))
    assert d.returncode == 0, d.stderr
    assert out.read_bytes() == whole.content

    v = cli(server, "verify", "--backup-id", b.backup_id)
    assert v.returncode == 0, v.stderr

    # DescribeBackupStorage counts it.
    st = tea.describe_backup_storage(dds.DescribeBackupStorageRequest(dbinstance_id="dds-src")).body
    assert int(st.full_storage_size) >= b.backup_size

    # Restore into another instance: the same documents.
    out = call(server, "RestoreDBInstance", DBInstanceId="dds-src", BackupId=b.backup_id,
               TargetDBInstanceId="dds-dst")
    job = wait_restore(server, "dds-dst", out["RestoreJobId"])
    assert job["Status"] == "Success", job
    assert snapshot(env["dst"].client(), DBS) == env["expected"]


def test_snapshot_backup_restore_download_gc_on_s3(env):
    server, minio, tea, single = env["server"], env["minio"], tea_client(env["server"]), env["single"]
    b1 = wait_backup(tea, "dds-single", call(server, "CreateBackup", DBInstanceId="dds-single")["BackupJobId"])
    assert (b1.backup_status, b1.backup_method) == ("Success", "Snapshot")
    chunks = minio.keys(BUCKET, f"{PREFIX}/chunks/dds-single/")
    assert chunks, "chunks are in the bucket"
    expected = snapshot(single.client(), ["big"])
    single.client().big.docs.insert_many([{"_id": 100000 + i, "x": i} for i in range(50)])
    b2 = wait_backup(tea, "dds-single", call(server, "CreateBackup", DBInstanceId="dds-single")["BackupJobId"])
    assert b2.backup_status == "Success"
    expected2 = snapshot(single.client(), ["big"])
    assert_nothing_half_done(minio)

    target = env["base"] / "restored-snap" / "data"
    restore_to_dir(server, b1.backup_id, target)
    with stack.FerretDB(env["base"] / "restored-snap") as fresh:
        assert snapshot(fresh.client(), ["big"]) == expected
    download_tar(b2.backup_download_url, env["base"] / "downloaded-snap" / "data")
    with stack.FerretDB(env["base"] / "downloaded-snap") as fresh:
        assert snapshot(fresh.client(), ["big"]) == expected2
    v = cli(server, "verify", "--backup-id", b2.backup_id)
    assert v.returncode == 0 and "snapshot chunk(s) checked" in v.stdout, v.stderr

    # Delete the first snapshot: its prefix goes; the chunks the second uses stay; GC keeps b2 restorable.
    tea.delete_backup(dds.DeleteBackupRequest(dbinstance_id="dds-single", backup_id=b1.backup_id))
    deadline = time.monotonic() + 60
    while minio.keys(BUCKET, f"{PREFIX}/backups/dds-single/{b1.backup_id}/") and time.monotonic() < deadline:
        time.sleep(0.3)
    assert minio.keys(BUCKET, f"{PREFIX}/backups/dds-single/{b1.backup_id}/") == {}
    g = cli(server, "gc")
    assert g.returncode == 0, g.stderr
    v = cli(server, "verify", "--backup-id", b2.backup_id)
    assert v.returncode == 0, v.stderr
    assert_nothing_half_done(minio)


def test_physical_backup_restore_download_verify_retention_on_s3(env, tmp_path):
    server, minio, tea, src = env["server"], env["minio"], tea_client(env["server"]), env["src"]
    expected = snapshot(src.client(), DBS)
    assert expected == env["expected"]
    before = tea.describe_backup_storage(dds.DescribeBackupStorageRequest(dbinstance_id="dds-src")).body
    b = wait_backup(tea, "dds-src", call(server, "CreateBackup", DBInstanceId="dds-src",
                                         BackupMethod="Physical")["BackupJobId"])
    assert (b.backup_status, b.backup_method) == ("Success", "Physical")
    # The data files and the manifest are in the bucket under their final keys, with the manifest's sizes.
    keys = minio.keys(BUCKET, f"{PREFIX}/backups/dds-src/{b.backup_id}/")
    m = manifest_of(minio, "dds-src", b.backup_id)
    assert sorted(keys) == sorted([f"{PREFIX}/backups/dds-src/{b.backup_id}/{f['name']}" for f in m["files"]]
                                  + [f"{PREFIX}/backups/dds-src/{b.backup_id}/manifest.json"]), keys
    for f in m["files"]:
        assert keys[f"{PREFIX}/backups/dds-src/{b.backup_id}/{f['name']}"] == f["size"], f
    assert sorted(f["name"] for f in m["files"]) == sorted(f"files/{db}.sqlite" for db in DBS), m["files"]
    assert_nothing_half_done(minio)

    # Download URL (a tar streamed from S3) and `ddsvault download`: the same bytes, a FerretDB serves them.
    names = download_tar(b.backup_download_url, env["base"] / "downloaded-phys" / "data")
    assert names == sorted(f"{db}.sqlite" for db in DBS), names
    with stack.FerretDB(env["base"] / "downloaded-phys") as fresh:
        assert snapshot(fresh.client(), DBS) == expected
    out = tmp_path / "phys.tar"
    d = cli(server, "download", "--backup-id", b.backup_id, "-o", str(out))
    assert d.returncode == 0, d.stderr
    assert out.read_bytes() == requests.get(b.backup_download_url, timeout=120).content
    # Restore into an empty directory, verified against the manifest on the way.
    target = env["base"] / "restored-phys" / "data"
    assert "verified against the manifest" in restore_to_dir(server, b.backup_id, target)
    with stack.FerretDB(env["base"] / "restored-phys") as fresh:
        assert snapshot(fresh.client(), DBS) == expected
    v = cli(server, "verify", "--backup-id", b.backup_id)
    assert v.returncode == 0, v.stderr

    # DescribeBackupStorage counts it; retention of the expired backup removes it from the bucket and the count.
    during = tea.describe_backup_storage(dds.DescribeBackupStorageRequest(dbinstance_id="dds-src")).body
    assert int(during.full_storage_size) >= int(before.full_storage_size) + b.backup_size, \
        (before.to_map(), during.to_map())
    with sqlite3.connect(env["base"] / "data" / "catalog.db") as c:
        c.execute("UPDATE backups SET expire_time = ? WHERE id = ?", (int((time.time() - 60) * 1000),
                                                                     int(b.backup_id)))
    r = cli(server, "retention")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{b.backup_id}" in r.stdout, r.stdout
    assert minio.keys(BUCKET, f"{PREFIX}/backups/dds-src/{b.backup_id}/") == {}
    after = tea.describe_backup_storage(dds.DescribeBackupStorageRequest(dbinstance_id="dds-src")).body
    # Everything the backup stored (its files and its manifest) is no longer counted.
    assert int(after.full_storage_size) == int(during.full_storage_size) - sum(keys.values()), \
        (during.to_map(), after.to_map(), keys)
    listed = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-src", backup_id=b.backup_id))
    assert not (listed.body.backups and listed.body.backups.backup), "the expired backup is no longer listed"
    assert_nothing_half_done(minio)


def test_an_object_deleted_behind_our_back_is_named_by_verify(env):
    server, minio, tea = env["server"], env["minio"], tea_client(env["server"])
    b = wait_backup(tea, "dds-src", tea.create_backup(dds.CreateBackupRequest(
        dbinstance_id="dds-src", backup_method="Logical")).body.backup_job_id)
    assert b.backup_status == "Success"
    minio.client().delete_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/dds-src/{b.backup_id}/archive.zst")
    v = cli(server, "verify", "--backup-id", b.backup_id)
    assert v.returncode != 0
    assert b.backup_id in v.stderr + v.stdout and "archive.zst" in v.stderr + v.stdout, v.stderr
    # A restore from it fails (refused, or its job Failed) saying the archive is missing; the target is left
    # as it was.
    before = snapshot(env["dst"].client(), DBS)
    try:
        out = call(server, "RestoreDBInstance", DBInstanceId="dds-src", BackupId=b.backup_id,
                   TargetDBInstanceId="dds-dst", DropExisting="true")
    except ServerException as e:
        why = str(e)
    else:
        job = wait_restore(server, "dds-dst", out["RestoreJobId"])
        assert job["Status"] == "Failed", job
        why = job["ErrorMessage"]
    print(f"restore of the damaged backup: {why}")
    assert "archive.zst" in why, why
    assert snapshot(env["dst"].client(), DBS) == before


@pytest.mark.parametrize("fault", ["wrong-secret", "missing-bucket", "unreachable"])
def test_serve_refuses_an_unusable_s3_repository(tmp_path, fault):
    _require_minio()
    with stack.MinIO(tmp_path / "minio") as minio:
        minio.bucket("present", object_lock=False)
        repo = minio.repository_config("absent" if fault == "missing-bucket" else "present", "x",
                                       retry_timeout_secs=3, max_retries=1)
        if fault == "wrong-secret":
            repo = repo.replace(minio.PASSWORD, "wrong-secret-value")
        if fault == "unreachable":
            repo = repo.replace(minio.endpoint, f"http://127.0.0.1:{stack.free_port()}")
        with pytest.raises(RuntimeError) as ei:
            Ddsvault(tmp_path / "svc", config_text(tmp_path / "data", {}, extra=repo))
        text = str(ei.value)
        assert "is not usable" in text, text
        needle = {"wrong-secret": "SignatureDoesNotMatch", "missing-bucket": "NoSuchBucket",
                  "unreachable": "writing a probe object"}[fault]
        assert needle in text, text
        assert "wrong-secret-value" not in text and minio.PASSWORD not in text
        # The catalog was never created: the start stopped before anything was touched.
        assert not (tmp_path / "data" / "catalog.db").exists()


def _big_stack(tmp_path, **repository):
    """MinIO with the test bucket, a FerretDB with ~24 MB to back up, and ddsvault on the bucket."""
    minio = stack.MinIO(tmp_path / "minio").start()
    minio.bucket(BUCKET)
    big = _big_source(tmp_path / "big")
    server = Ddsvault(tmp_path / "svc", config_text(tmp_path / "data", {"dds-big": (big.uri, "local_ssd")},
                                                     extra=minio.repository_config(BUCKET, PREFIX, **repository)))
    return minio, big, server


def _big_source(base):
    big = stack.FerretDB(base, repl_set_name="rs0")
    rnd = random.Random(11)
    # ~24 MB of incompressible data: a logical archive of several 5 MiB parts.
    for k in range(4):
        big.client().load.docs.insert_many([{"_id": k * 10000 + i, "pad": rnd.randbytes(600)} for i in range(10000)])
    return big


def _wait_uploading(minio, timeout=120):
    """A multipart upload is under way and journaled. The marker is written right after CreateMultipartUpload
    (it records the upload id); a crash between the two leaves an upload no marker names: a known window of one
    request, left to the bucket's AbortIncompleteMultipartUpload lifecycle rule (docs/s3-repository.md)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if minio.multipart_uploads(BUCKET) and minio.keys(BUCKET, f"{PREFIX}/uploads/"):
            return True
        time.sleep(0.05)
    return False


def _final(tea, iid, job_id, timeout=300):
    """The job's final state: its Success backup, or None once it failed (listed Failed or its task says so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id=iid, backup_job_id=job_id)).body
        if body.backups and body.backups.backup:
            b = body.backups.backup[0]
            return b if b.backup_status == "Success" else None
        tasks = tea.describe_backup_tasks(dds.DescribeBackupTasksRequest(
            dbinstance_id=iid, backup_job_id=job_id)).body.backup_jobs
        if tasks and tasks[0].backup_set_status in ("Failed", "Cancelled"):
            return None
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not end in {timeout}s")


def test_minio_killed_mid_upload_and_restarted(tmp_path):
    _require_minio()
    minio, big, server = _big_stack(tmp_path, retry_timeout_secs=20, request_timeout_secs=10)
    try:
        tea = tea_client(server)
        job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-big", backup_method="Logical")).body
        assert _wait_uploading(minio), "the upload started"
        minio.kill()
        time.sleep(2)
        minio.start()
        b = _final(tea, "dds-big", job.backup_job_id)
        if b is not None:
            # Retried through the outage: then it must verify.
            assert b.backup_status == "Success"
            v = cli(server, "verify", "--backup-id", b.backup_id)
            assert v.returncode == 0, v.stderr
        else:
            assert minio.keys(BUCKET, f"{PREFIX}/backups/dds-big/") == {}
        print(f"outcome after the MinIO restart: {'Success, verified' if b else 'Failed, cleaned'}")
        assert_nothing_half_done(minio)
        # And the repository works again for the next backup.
        b2 = _final(tea, "dds-big", tea.create_backup(dds.CreateBackupRequest(
            dbinstance_id="dds-big", backup_method="Logical")).body.backup_job_id)
        assert b2 is not None and b2.backup_status == "Success"
        assert cli(server, "verify", "--backup-id", b2.backup_id).returncode == 0
        assert_nothing_half_done(minio)
    finally:
        server.stop()
        big.stop()
        minio.stop()


def test_ddsvault_killed_mid_upload_leaves_nothing_after_restart(tmp_path):
    _require_minio()
    minio, big, server = _big_stack(tmp_path)
    try:
        tea = tea_client(server)
        job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-big", backup_method="Logical")).body
        assert _wait_uploading(minio), "the upload started"
        server.kill()
        assert minio.multipart_uploads(BUCKET), "the crash left an unfinished upload"
        server.start()
        tea = tea_client(server)
        assert _final(tea, "dds-big", job.backup_job_id) is None
        deadline = time.monotonic() + 30
        while minio.multipart_uploads(BUCKET) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert_nothing_half_done(minio)
        assert minio.keys(BUCKET, f"{PREFIX}/backups/dds-big/") == {}
    finally:
        server.stop()
        big.stop()
        minio.stop()


def test_an_upload_no_journal_marker_names_is_swept_after_its_grace_period(tmp_path):
    """A process killed between CreateMultipartUpload and its journal marker leaves an upload nothing names. The
    sweep (start-up and every GC pass) lists the uploads under the repository prefix (ListMultipartUploads) and
    aborts those older than `lost_upload_grace_secs`; uploads outside the prefix are not ddsvault's."""
    _require_minio()
    grace = 12
    with stack.MinIO(tmp_path / "minio") as minio:
        minio.bucket(BUCKET)
        s3 = minio.client()

        def start_upload(key):
            u = s3.create_multipart_upload(Bucket=BUCKET, Key=key)
            s3.upload_part(Bucket=BUCKET, Key=key, UploadId=u["UploadId"], PartNumber=1, Body=b"x" * 1024)
            return (key, u["UploadId"])

        created = time.monotonic()
        lost = start_upload(f"{PREFIX}/backups/dds-x/1234/archive.zst")
        other = start_upload("elsewhere/archive.zst")
        server = Ddsvault(tmp_path / "svc", config_text(tmp_path / "data", {}, extra=minio.repository_config(
            BUCKET, PREFIX, lost_upload_grace_secs=grace)))
        try:
            # Younger than the grace period: the start-up sweep leaves it (it may belong to a running job).
            assert time.monotonic() - created < grace, "the start took longer than the grace period"
            assert sorted(minio.multipart_uploads(BUCKET)) == sorted([lost, other])
            time.sleep(max(0.0, grace + 1.5 - (time.monotonic() - created)))
            g = cli(server, "gc")
            assert g.returncode == 0, g.stdout + g.stderr
            assert minio.multipart_uploads(BUCKET) == [other]
            # And the server, started again, sweeps at start too: a second lost upload, backdated by a 0 s grace.
            server.stop()
            lost2 = start_upload(f"{PREFIX}/backups/dds-x/1235/files/a.sqlite")
            server.config_path.write_text(server.config_path.read_text().replace(
                f"lost_upload_grace_secs = {grace}", "lost_upload_grace_secs = 0"))
            time.sleep(1.1)  # S3 dates have a resolution of a second or a millisecond, never finer
            server.start()
            deadline = time.monotonic() + 20
            while lost2 in minio.multipart_uploads(BUCKET) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert minio.multipart_uploads(BUCKET) == [other]
        finally:
            server.stop()
