"""Client-side encryption ([repository] encryption_key_file) on MinIO: the bucket holds only sealed objects, while
backup, verify, download and restore work as without it; a tampered object is detected."""
from __future__ import annotations

import hashlib
import subprocess

import pytest
import requests
from alibabacloud_dds20151201 import models as dds

import stack
from conftest import DDSVAULT_BIN, Ddsvault, config_text, seed_data, snapshot, tea_client, wait_backup
from test_physical import instance_lines
from test_restore import call, wait_restore
from test_s3 import _require_minio

BUCKET, PREFIX = "sealed", "enc"
DBS = ("shop", "crm")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def cli(server, *args):
    return subprocess.run([DDSVAULT_BIN, args[0], "--config", str(server.config_path), *args[1:]],
                          capture_output=True, text=True, timeout=300)


def test_an_encrypted_bucket_reveals_nothing_and_everything_still_works(tmp_path):
    _require_minio()
    minio = stack.MinIO(tmp_path / "minio").start()
    src = stack.FerretDB(tmp_path / "src", repl_set_name="rs0")
    dst = stack.FerretDB(tmp_path / "dst", repl_set_name="rs0")
    single = stack.FerretDB(tmp_path / "single")
    server = None
    try:
        minio.bucket(BUCKET, object_lock=False)
        expected = seed_data(src.client(), DBS)
        single.client().big.docs.insert_many([{"_id": i, "pad": "y" * 200 + str(i)} for i in range(2000)])
        key = tmp_path / "master.key"
        key.write_text("5e" * 32 + "\n")
        key.chmod(0o600)
        repo = minio.repository_config(BUCKET, PREFIX, part_size_mib=5) + f'encryption_key_file = "{key}"\n'
        text = config_text(tmp_path / "data", {"dds-src": (src.uri, "local_ssd"), "dds-dst": (dst.uri, "local_ssd")},
                           extra=repo) + instance_lines("dds-single", single.uri, data_path=single.data_dir)
        server = Ddsvault(tmp_path / "svc", text)
        tea = tea_client(server)
        b = wait_backup(tea, "dds-src", tea.create_backup(dds.CreateBackupRequest(
            dbinstance_id="dds-src", backup_method="Logical")).body.backup_job_id)
        assert b.backup_status == "Success"
        snap = wait_backup(tea, "dds-single", call(server, "CreateBackup", DBInstanceId="dds-single")["BackupJobId"])
        assert (snap.backup_status, snap.backup_method) == ("Success", "Snapshot")

        # The bucket: every object sealed; no manifest JSON, no instance id, no zstd frame, no document in clear.
        s3 = minio.client()
        keys = minio.keys(BUCKET, PREFIX + "/")
        data_keys = [k for k in keys if "/backups/" in k or "/chunks/" in k]
        assert any(k.endswith("manifest.json") for k in data_keys) and any("/chunks/" in k for k in data_keys)
        for k in data_keys:
            raw = s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()
            assert raw.startswith(b"DVE1"), k
            assert b"dds-src" not in raw and b"dds-single" not in raw and ZSTD_MAGIC not in raw[:8], k
            assert b"SKU-" not in raw and b'"files"' not in raw, k

        # verify, download (URL and CLI), restore: as without encryption.
        for bid in (b.backup_id, snap.backup_id):
            v = cli(server, "verify", "--backup-id", bid)
            assert v.returncode == 0, v.stderr
        whole = requests.get(b.backup_download_url, timeout=60)
        assert whole.status_code == 200 and whole.content.startswith(ZSTD_MAGIC)
        part = requests.get(b.backup_download_url, headers={"Range": "bytes=70000-70099"}, timeout=60)
        if len(whole.content) > 70100:
            assert part.status_code == 206 and part.content == whole.content[70000:70100]
        out = tmp_path / "dl.zst"
        d = cli(server, "download", "--backup-id", b.backup_id, "-o", str(out))
        assert d.returncode == 0, d.stderr
        assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(whole.content).hexdigest()
        job = wait_restore(server, "dds-dst", call(server, "RestoreDBInstance", DBInstanceId="dds-src",
                                                   BackupId=b.backup_id, TargetDBInstanceId="dds-dst")["RestoreJobId"])
        assert job["Status"] == "Success", job
        assert snapshot(dst.client(), DBS) == expected

        # A tampered object: one byte of the stored archive changed → verify names the backup and refuses.
        archive = next(k for k in data_keys if f"/backups/dds-src/{b.backup_id}/" in k and "archive" in k)
        raw = bytearray(s3.get_object(Bucket=BUCKET, Key=archive)["Body"].read())
        raw[len(raw) // 2] ^= 0x01
        s3.put_object(Bucket=BUCKET, Key=archive, Body=bytes(raw))
        v = cli(server, "verify", "--backup-id", b.backup_id)
        assert v.returncode != 0
        assert "tampered" in v.stderr + v.stdout and b.backup_id in v.stderr + v.stdout, v.stderr
        # The other backup is unaffected.
        assert cli(server, "verify", "--backup-id", snap.backup_id).returncode == 0
    finally:
        if server is not None:
            server.stop()
        for f in (src, dst, single):
            f.stop()
        minio.stop()


def test_a_missing_key_file_stops_the_start(tmp_path):
    text = config_text(tmp_path / "data", {}, extra=f'[repository]\nencryption_key_file = "{tmp_path}/absent.key"\n')
    with pytest.raises(RuntimeError) as ei:
        Ddsvault(tmp_path / "svc", text)
    assert "encryption key file" in str(ei.value)
