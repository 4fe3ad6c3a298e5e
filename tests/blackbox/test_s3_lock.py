"""The retention lock enforced by the bucket: S3 Object Lock COMPLIANCE retention on every object of a locked
instance's backups (real ddsvault, real MinIO with object lock, real FerretDB, the official SDKs; the bucket is
inspected and attacked directly with boto3). Without object lock, DescribeBackupRetentionLock says so."""
from __future__ import annotations

import datetime
import time

import pytest
from alibabacloud_dds20151201 import models as dds
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_util.models import RuntimeOptions
from botocore.exceptions import ClientError

import stack
from conftest import Ddsvault, config_text, seed_data, tea_client, wait_backup
from test_physical import instance_lines
from test_s3 import _require_minio

LOCKED, PLAIN = "locked", "plain"
PREFIX = "lock"
COOLING_OFF = 3


def lock_call(server, instance, action, **params):
    p = open_api_models.Params(action=action, version="2015-12-01", protocol="HTTP", pathname="/", method="POST",
                               auth_type="AK", style="RPC", req_body_type="formData", body_type="json")
    return tea_client(server).call_api(
        p, open_api_models.OpenApiRequest(query={"DBInstanceId": instance, **params}), RuntimeOptions())["body"]


def tea_code(fn):
    with pytest.raises(Exception) as ei:
        fn()
    e = ei.value
    return getattr(e, "statusCode", None), getattr(e, "code", None), str(getattr(e, "message", e))


def backup(server, instance, days, method=None):
    tea = tea_client(server)
    req = dds.CreateBackupRequest(dbinstance_id=instance, backup_retention_period=days)
    if method:
        req.backup_method = method
    b = wait_backup(tea, instance, tea.create_backup(req).body.backup_job_id)
    assert b.backup_status == "Success"
    return b


def dds_time(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def retention(s3, bucket, key):
    try:
        r = s3.get_object_retention(Bucket=bucket, Key=key)["Retention"]
    except ClientError as e:
        if e.response["Error"]["Code"] == "NoSuchObjectLockConfiguration":
            return None
        raise
    return r["Mode"], r["RetainUntilDate"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    _require_minio()
    base = tmp_path_factory.mktemp("s3lock")
    minio = stack.MinIO(base / "minio").start()
    minio.bucket(LOCKED)
    minio.bucket(PLAIN, object_lock=False)
    src = stack.FerretDB(base / "src", repl_set_name="rs0")
    seed_data(src.client(), ("shop", "crm"))
    single = stack.FerretDB(base / "single")
    single.client().big.docs.insert_many([{"_id": i, "pad": "x" * 300 + str(i)} for i in range(3000)])
    retention_cfg = f"[retention]\ngc_interval_secs = 2\nlock_cooling_off_secs = {COOLING_OFF}\n"
    text = config_text(base / "data", {"dds-src": (src.uri, "local_ssd")},
                       extra=minio.repository_config(LOCKED, PREFIX) + retention_cfg) \
        + instance_lines("dds-single", single.uri, data_path=single.data_dir)
    server = Ddsvault(base / "svc", text)
    yield {"server": server, "minio": minio, "src": src, "single": single, "base": base,
           "retention_cfg": retention_cfg}
    server.stop()
    for f in (src, single):
        f.stop()
    minio.stop()


def test_object_lock_retains_every_object_and_refuses_early_deletes(env):
    server, minio = env["server"], env["minio"]
    s3 = minio.client()
    desc = lock_call(server, "dds-src", "DescribeBackupRetentionLock")
    assert desc["RepositoryObjectLock"] == "Enabled", desc

    logical = backup(server, "dds-src", 7, "Logical")
    snap1 = backup(server, "dds-single", 7)
    snap2 = backup(server, "dds-single", 9)
    assert (snap1.backup_method, snap2.backup_method) == ("Snapshot", "Snapshot")
    # Before the lock nothing is retained.
    manifest = f"{PREFIX}/backups/dds-src/{logical.backup_id}/manifest.json"
    assert retention(s3, LOCKED, manifest) is None

    for inst in ("dds-src", "dds-single"):
        on = lock_call(server, inst, "ModifyBackupRetentionLock", Enable="true")
        assert on["RetentionLock"] == "Enabled" and on["RepositoryObjectLock"] == "Enabled", on
        assert on["ObjectLockPendingBackups"] == 0, on
    # Every object of the logical backup: COMPLIANCE until the backup's expiry.
    keys = minio.keys(LOCKED, f"{PREFIX}/backups/dds-src/{logical.backup_id}/")
    assert len(keys) == 2, keys
    for k in keys:
        mode, until = retention(s3, LOCKED, k)
        assert mode == "COMPLIANCE" and until == dds_time(logical.backup_expire_time), (k, mode, until)
    # Snapshot objects, and every chunk: a chunk shared by both snapshots carries the later expiry.
    for snap in (snap1, snap2):
        for k in minio.keys(LOCKED, f"{PREFIX}/backups/dds-single/{snap.backup_id}/"):
            assert retention(s3, LOCKED, k) == ("COMPLIANCE", dds_time(snap.backup_expire_time)), k
    chunks = minio.keys(LOCKED, f"{PREFIX}/chunks/dds-single/")
    assert chunks
    untils = {retention(s3, LOCKED, k) for k in chunks}
    # 3000 documents unchanged between the snapshots: the chunks are shared, so all carry snap2's (later) date.
    assert untils == {("COMPLIANCE", dds_time(snap2.backup_expire_time))}, untils

    # Deleting a locked object version straight through S3 is refused by MinIO, for the bucket owner too.
    archive = next(k for k in keys if not k.endswith("manifest.json"))
    version = s3.head_object(Bucket=LOCKED, Key=archive)["VersionId"]
    with pytest.raises(ClientError) as ei:
        s3.delete_object(Bucket=LOCKED, Key=archive, VersionId=version)
    # AWS answers AccessDenied; MinIO InvalidRequest "Object is WORM protected and cannot be overwritten".
    err = ei.value.response["Error"]
    assert err["Code"] == "AccessDenied" or "WORM" in err.get("Message", ""), err
    assert s3.head_object(Bucket=LOCKED, Key=archive, VersionId=version)["ContentLength"] == keys[archive]
    chunk = next(iter(chunks))
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=LOCKED, Key=chunk, VersionId=s3.head_object(Bucket=LOCKED, Key=chunk)["VersionId"])
    # …and by ddsvault.
    code = tea_code(lambda: tea_client(server).delete_backup(
        dds.DeleteBackupRequest(dbinstance_id="dds-src", backup_id=logical.backup_id)))
    assert code[:2] == (403, "OperationDenied.RetentionLocked"), code

    # A backup taken while the lock is on is retained by the periodic pass.
    later = backup(server, "dds-src", 8, "Logical")
    later_manifest = f"{PREFIX}/backups/dds-src/{later.backup_id}/manifest.json"
    deadline = time.monotonic() + 30
    while retention(s3, LOCKED, later_manifest) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert retention(s3, LOCKED, later_manifest) == ("COMPLIANCE", dds_time(later.backup_expire_time))

    # The retention lock turned off: the cooling-off passes, but the objects stay retained (compliance mode),
    # so ddsvault still refuses the deletion instead of hiding the backup behind delete markers.
    off = lock_call(server, "dds-src", "ModifyBackupRetentionLock", Enable="false")
    assert off["RetentionLock"] == "Unlocking"
    time.sleep(COOLING_OFF + 1)
    assert lock_call(server, "dds-src", "DescribeBackupRetentionLock")["RetentionLock"] == "Disabled"
    code = tea_code(lambda: tea_client(server).delete_backup(
        dds.DeleteBackupRequest(dbinstance_id="dds-src", backup_id=logical.backup_id)))
    assert code[:2] == (403, "OperationDenied.RetentionLocked") and "S3 Object Lock" in code[2], code
    assert set(minio.keys(LOCKED, f"{PREFIX}/backups/dds-src/{logical.backup_id}/")) == set(keys)
    # Still listed, still restorable.
    body = tea_client(server).describe_backups(dds.DescribeBackupsRequest(
        dbinstance_id="dds-src", backup_id=logical.backup_id)).body
    assert body.backups.backup[0].backup_status == "Success"


def test_without_object_lock_the_answer_says_so(env, tmp_path):
    minio = env["minio"]
    text = config_text(tmp_path / "data", {"dds-src": (env["src"].uri, "local_ssd")},
                       extra=minio.repository_config(PLAIN, PREFIX) + env["retention_cfg"])
    server = Ddsvault(tmp_path / "svc", text)
    try:
        b = backup(server, "dds-src", 7, "Logical")
        on = lock_call(server, "dds-src", "ModifyBackupRetentionLock", Enable="true")
        assert on["RetentionLock"] == "Enabled" and on["RepositoryObjectLock"] == "Unsupported", on
        assert "no S3 Object Lock" in on["RepositoryObjectLockNote"], on
        assert "ObjectLockPendingBackups" not in on
        desc = lock_call(server, "dds-src", "DescribeBackupRetentionLock")
        assert desc["RepositoryObjectLock"] == "Unsupported"
        # ddsvault alone refuses; the bucket would not.
        code = tea_code(lambda: tea_client(server).delete_backup(
            dds.DeleteBackupRequest(dbinstance_id="dds-src", backup_id=b.backup_id)))
        assert code[:2] == (403, "OperationDenied.RetentionLocked"), code
    finally:
        server.stop()
    # A local repository says so as well.
    local = Ddsvault(tmp_path / "svc-local", config_text(tmp_path / "data-local",
                                                         {"dds-src": (env["src"].uri, "local_ssd")}))
    try:
        desc = lock_call(local, "dds-src", "DescribeBackupRetentionLock")
        assert desc["RepositoryObjectLock"] == "Unsupported" and "local directory" in desc["RepositoryObjectLockNote"]
    finally:
        local.stop()
