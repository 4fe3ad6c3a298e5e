"""Copies to a second repository ([[repository.copies]], Dds' cross-region backup): the real ddsvault copies
every new backup into a second MinIO bucket and into a local directory, verifies the copies, lists them in
DescribeBackups with DestRegion; ModifyBackupPolicy's cross-region settings drive the copies; `ddsvault repo
copy` copies older backups on demand."""
from __future__ import annotations

import datetime
import subprocess
import time

import pytest
from alibabacloud_dds20151201 import models as dds

import stack
from conftest import DDSVAULT_BIN, REGION, Ddsvault, config_text, seed_data, tea_client, wait_backup
from test_restore import call
from test_s3 import _require_minio

PRIMARY, SECOND = "primary", "second"
SHANGHAI, BEIJING = "cn-shanghai", "cn-beijing"
# A region whose bucket disappears for a while: its copies fail and are retried.
FLAKY, FLAKY_BUCKET = "cn-flaky", "flaky"


def copies_config(minio, local_dir):
    return (minio.repository_config(PRIMARY, "main")
            + "[[repository.copies]]\n" + f'dest_region = "{SHANGHAI}"\n'
            + minio.repository_config(SECOND, "copy").split("\n", 1)[1]
            + "[[repository.copies]]\n" + f'dest_region = "{BEIJING}"\n' + f'url = "file://{local_dir}"\n'
            + "[[repository.copies]]\n" + f'dest_region = "{FLAKY}"\n'
            + minio.repository_config(FLAKY_BUCKET, "copy").split("\n", 1)[1]
            + "[retention]\ngc_interval_secs = 2\n")


def cli(server, *args, timeout=300):
    return subprocess.run([DDSVAULT_BIN, *args[:2], "--config", str(server.config_path), *args[2:]],
                          capture_output=True, text=True, timeout=timeout)


def copies(server, region, **kw):
    # Through the generic call: the SDK's models drop the ddsvault extension fields (CopyTime, …).
    body = call(server, "DescribeBackups", DBInstanceId="dds-src", DestRegion=region, **kw)
    return {b["BackupId"]: b for b in body.get("Backups", {}).get("Backup", [])}


def wait_copied(server, region, backup_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = copies(server, region).get(backup_id)
        if c and c["BackupStatus"] == "Success":
            return c
        time.sleep(0.5)
    raise AssertionError(f"backup {backup_id} not copied to {region}: {copies(server, region)}")


def backup(server):
    tea = tea_client(server)
    b = wait_backup(tea, "dds-src", tea.create_backup(dds.CreateBackupRequest(
        dbinstance_id="dds-src", backup_method="Logical")).body.backup_job_id)
    assert b.backup_status == "Success"
    return b


def same_objects(minio, src_prefix, dst_prefix):
    s3 = minio.client()
    src = minio.keys(PRIMARY, src_prefix)
    dst = minio.keys(SECOND, dst_prefix)
    assert {k[len(src_prefix):]: v for k, v in src.items()} == {k[len(dst_prefix):]: v for k, v in dst.items()}
    for k in src:
        a = s3.get_object(Bucket=PRIMARY, Key=k)["Body"].read()
        b = s3.get_object(Bucket=SECOND, Key=dst_prefix + k[len(src_prefix):])["Body"].read()
        assert a == b, k


def test_new_backups_are_copied_verified_and_listed(tmp_path):
    _require_minio()
    minio = stack.MinIO(tmp_path / "minio").start()
    src = stack.FerretDB(tmp_path / "src", repl_set_name="rs0")
    try:
        minio.bucket(PRIMARY, object_lock=False)
        minio.bucket(SECOND, object_lock=False)
        minio.bucket(FLAKY_BUCKET, object_lock=False)
        seed_data(src.client())
        local = tmp_path / "copies-beijing"
        instances = {"dds-src": (src.uri, "local_ssd")}
        # A backup taken before any copy repository was configured.
        first = Ddsvault(tmp_path / "svc1", config_text(tmp_path / "data", instances,
                                                        extra=minio.repository_config(PRIMARY, "main")))
        old = backup(first)
        e = pytest.raises(Exception, lambda: tea_client(first).modify_backup_policy(dds.ModifyBackupPolicyRequest(
            dbinstance_id="dds-src", cross_backup_type="update", dest_region=SHANGHAI,
            cross_retention_type="delay", cross_retention_value=30)))
        assert (e.value.status_code, e.value.code) == (400, "UnsupportedOperation")
        first.stop()

        server = Ddsvault(tmp_path / "svc2", config_text(tmp_path / "data", instances,
                                                          extra=copies_config(minio, local)))
        try:
            tea = tea_client(server)
            # Cross-region settings for Shanghai: Monday..Sunday, copies kept 30 days.
            tea.modify_backup_policy(dds.ModifyBackupPolicyRequest(
                dbinstance_id="dds-src", cross_backup_type="update", src_region=REGION, dest_region=SHANGHAI,
                cross_backup_period="Monday,Tuesday,Wednesday,Thursday,Friday,Saturday,Sunday",
                cross_retention_type="delay", cross_retention_value=30))
            pol = call(server, "DescribeBackupPolicy", DBInstanceId="dds-src")
            sdk = tea.describe_backup_policy(dds.DescribeBackupPolicyRequest(dbinstance_id="dds-src")).body
            assert (sdk.cross_retention_type, sdk.cross_retention_value, sdk.dest_region) == ("delay", 30, SHANGHAI)
            assert (pol["CrossBackupType"], pol["CrossRetentionType"], pol["CrossRetentionValue"],
                    pol["DestRegion"], pol["SrcRegion"]) == ("update", "delay", 30, SHANGHAI, REGION), pol
            # Cross-region settings only: automatic backups stay off.
            assert pol["AutomaticBackup"] == "Disabled"
            for bad, code in [(dict(dest_region="cn-nowhere", cross_retention_type="never"), "InvalidParameter"),
                              (dict(dest_region=SHANGHAI, cross_retention_type="delay",
                                    cross_retention_value=2), "InvalidParameter"),
                              (dict(dest_region=SHANGHAI, enable_cross_log_backup=1), "UnsupportedOperation")]:
                with pytest.raises(Exception) as ei:
                    tea.modify_backup_policy(dds.ModifyBackupPolicyRequest(dbinstance_id="dds-src", **bad))
                assert (ei.value.status_code, ei.value.code) == (400, code), (bad, ei.value)

            # The flaky region's bucket goes away (it passed the start-up check).
            minio.client().delete_bucket(Bucket=FLAKY_BUCKET)
            new = backup(server)
            sh = wait_copied(server, SHANGHAI, new.backup_id)
            end = datetime.datetime.strptime(new.backup_end_time, "%Y-%m-%dT%H:%M:%SZ")
            assert sh["BackupExpireTime"] == (end + datetime.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
            assert (sh["DestRegion"], sh["SrcRegion"], sh["BackupMethod"]) == (SHANGHAI, REGION, "Logical")
            assert sh["BackupSize"] > 0 and sh["CopyTime"]
            same_objects(minio, f"main/backups/dds-src/{new.backup_id}/", f"copy/backups/dds-src/{new.backup_id}/")
            # No settings for Beijing: copied with the backup's own expiry, into the local directory.
            bj = wait_copied(server, BEIJING, new.backup_id)
            assert bj["BackupExpireTime"] == new.backup_expire_time
            manifest = local / "backups" / "dds-src" / new.backup_id / "manifest.json"
            primary = minio.client().get_object(
                Bucket=PRIMARY, Key=f"main/backups/dds-src/{new.backup_id}/manifest.json")["Body"].read()
            assert manifest.read_bytes() == primary

            # The copy to the missing bucket failed, is recorded as pending with its error, and is retried.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                flaky = copies(server, FLAKY).get(new.backup_id)
                if flaky and flaky["CopyAttempts"] >= 1:
                    break
                time.sleep(0.5)
            assert flaky["BackupStatus"] == "Pending" and "NoSuchBucket" in flaky["ErrorMessage"], flaky
            assert not flaky["IsAvail"]
            minio.bucket(FLAKY_BUCKET, object_lock=False)
            retried = wait_copied(server, FLAKY, new.backup_id, timeout=90)
            assert retried["CopyAttempts"] >= 2 and retried["ErrorMessage"] == "", retried
            assert minio.keys(FLAKY_BUCKET, f"copy/backups/dds-src/{new.backup_id}/")

            # The backup from before the copies were configured is not copied by itself…
            assert old.backup_id not in copies(server, SHANGHAI)
            # …but on demand, verified, and then listed.
            r = cli(server, "repo", "copy", "--to", SHANGHAI, "--backup-id", old.backup_id)
            assert r.returncode == 0, r.stderr
            assert f"backup {old.backup_id} copied to {SHANGHAI} and verified" in r.stdout, r.stdout
            assert copies(server, SHANGHAI)[old.backup_id]["BackupStatus"] == "Success"
            same_objects(minio, f"main/backups/dds-src/{old.backup_id}/", f"copy/backups/dds-src/{old.backup_id}/")
            again = cli(server, "repo", "copy", "--to", SHANGHAI)
            assert again.returncode == 0 and "already in" in again.stdout, again
            # Any other URL: an unrecorded, verified copy.
            other = cli(server, "repo", "copy", "--to", f"s3://{SECOND}/adhoc")
            assert other.returncode == 0, other.stderr
            assert minio.keys(SECOND, f"adhoc/backups/dds-src/{old.backup_id}/")
            assert minio.keys(SECOND, f"adhoc/backups/dds-src/{new.backup_id}/")

            # CrossBackupType=delete: no more copies to Shanghai; Beijing continues.
            tea.modify_backup_policy(dds.ModifyBackupPolicyRequest(
                dbinstance_id="dds-src", cross_backup_type="delete", dest_region=SHANGHAI))
            third = backup(server)
            wait_copied(server, BEIJING, third.backup_id)
            time.sleep(3)
            assert third.backup_id not in copies(server, SHANGHAI)
        finally:
            server.stop()
    finally:
        src.stop()
        minio.stop()
