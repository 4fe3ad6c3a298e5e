"""Start-up on embedded defaults, restarts, graceful shutdown, and a crash in the middle of a backup."""
from __future__ import annotations

import re
import time

import pytest
from alibabacloud_dds20151201 import models as dds

import stack
from conftest import ROOT_AK, Ddsvault, config_text, tea_client


def test_default_start_creates_and_keeps_root_key(tmp_path):
    # No configuration at all: SQLite catalog and local repository under ./ddsvault-data.
    s = Ddsvault(tmp_path, None, extra_args=["--listen", "127.0.0.1:0"])
    try:
        out = "\n".join(s.stdout_lines)
        key_id = re.search(r"Created the root AccessKey (LTAI\w+)", out).group(1)
        # The secret is in a file only the owner can read, never on stdout (a service's stdout is its journal).
        key_file = tmp_path / "ddsvault-data" / "root-accesskey.txt"
        assert str(key_file) in out or "ddsvault-data/root-accesskey.txt" in out, out
        assert key_file.stat().st_mode & 0o777 == 0o600
        text = key_file.read_text()
        assert re.search(r"AccessKeyId:\s+(LTAI\w+)", text).group(1) == key_id
        secret = re.search(r"AccessKeySecret:\s+(\w+)", text).group(1)
        assert secret not in out
        assert (tmp_path / "ddsvault-data" / "catalog.db").is_file()
        assert (tmp_path / "ddsvault-data" / "repository").is_dir()
        body = tea_client(s, (key_id, secret)).describe_dbinstances(dds.DescribeDBInstancesRequest()).body
        assert body.total_count == 0
    finally:
        assert s.stop() == 0
    # The secret is printed once; it never reaches the logs.
    assert secret not in s.stderr()

    s.start()
    try:
        out = "\n".join(s.stdout_lines)
        assert f"Root AccessKeyId: {key_id}" in out
        assert secret not in out, "the secret is shown only when created"
        assert tea_client(s, (key_id, secret)).describe_dbinstances(
            dds.DescribeDBInstancesRequest()).status_code == 200
    finally:
        s.stop()


def test_graceful_shutdown_is_ordered_and_logged(tmp_path):
    s = Ddsvault(tmp_path, config_text(tmp_path / "data", {}))
    assert s.stop() == 0
    log = s.stderr()
    assert "shutdown signal received" in log
    assert log.index("HTTP server stopped") < log.index("background tasks stopped") < log.index("shutdown complete")
    assert ROOT_AK[1] not in log


def test_crash_mid_backup_leaves_no_backup_that_looks_complete(tmp_path):
    f = stack.FerretDB(tmp_path / "src", repl_set_name="rs0")
    try:
        c = f.client()
        # Enough data that the dump is still running a moment after the job is claimed.
        pad = "x" * 2000
        for coll in ("a", "b", "c"):
            c.big[coll].insert_many([{"_id": i, "pad": pad} for i in range(20000)])
        data = tmp_path / "data"
        s = Ddsvault(tmp_path / "svc", config_text(data, {"dds-crash": (f.uri, "local_ssd")},
                                                   extra="[backup]\nparallel_collections = 1"))
        tea = tea_client(s)
        r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-crash", backup_method="Logical")).body
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            jobs = tea.describe_backup_tasks(dds.DescribeBackupTasksRequest(dbinstance_id="dds-crash")).body.backup_jobs
            if jobs and jobs[0].backup_set_status == "Backuping":
                break
            time.sleep(0.05)
        else:
            pytest.fail("the job never started running")
        time.sleep(0.5)
        s.kill()
        repo = data / "repository"

        s.start()
        tea = tea_client(s)
        listed = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-crash")).body
        assert listed.total_count == 1
        b = listed.backups.backup[0]
        assert b.backup_id == r.backup_id
        assert b.backup_status == "Failed", "a crash mid-backup must never be listed as Success"
        assert b.is_avail is False
        tasks = tea.describe_backup_tasks(dds.DescribeBackupTasksRequest(
            dbinstance_id="dds-crash", backup_job_id=r.backup_job_id)).body.backup_jobs
        assert tasks[0].backup_set_status == "Finished"
        # Its partial files are gone: nothing under its backup prefix, nothing in staging.
        leftovers = [p for p in repo.rglob("*") if p.is_file()]
        assert leftovers == [], leftovers
        # And the instance takes a new backup that succeeds.
        r2 = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-crash", backup_method="Logical")).body
        from conftest import wait_backup

        assert wait_backup(tea, "dds-crash", r2.backup_job_id, timeout=300).backup_status == "Success"
        s.stop()
    finally:
        f.stop()
