"""Faults an operator meets on a bad day, through the real binary and the official SDK: a repository that fills up
during a Snapshot backup must fail the job promptly with its reason (never hang it), release the database's read
transaction, and give the space back at once; a failed backup's reason is answered by the task APIs."""
from __future__ import annotations

import os
import random
import subprocess
import time

import pytest
from alibabacloud_dds20151201 import models as dds

import stack
from conftest import Ddsvault, config_text, tea_client, wait_backup
from test_physical import instance_lines
from test_restore import call

# Big enough that the compressed chunks of the image (random, so incompressible) overflow the repository.
REPO_MB = 3


def used_bytes(path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


@pytest.fixture()
def small_repository(tmp_path):
    """A REPO_MB tmpfs: a repository that really runs out of space (ENOSPC), as a full disk does."""
    mnt = tmp_path / "repo-tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("mounting a small tmpfs repository needs root, and CI must not skip this test")
        pytest.skip("mounting a small tmpfs repository needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={REPO_MB}m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs: {r.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def wait_job_end(server, iid, job_id, timeout):
    """Polls DescribeBackupTasks for the job until it is Finished; returns the job's entry as the raw JSON answer
    (CommonRequest of the V1 SDK: the typed models drop ddsvault's extension fields)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        jobs = call(server, "DescribeBackupTasks", DBInstanceId=iid, BackupJobId=job_id)["BackupJobs"]
        assert len(jobs) == 1, jobs
        last = jobs[0]
        if last["BackupSetStatus"] == "Finished":
            return last
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still not finished after {timeout}s: {last}")


def test_a_full_repository_fails_the_snapshot_promptly_and_gives_the_space_back(tmp_path, small_repository):
    big = stack.FerretDB(tmp_path / "big")
    small = stack.FerretDB(tmp_path / "small")
    try:
        rnd = random.Random(17)
        # ~8 MB of incompressible documents: more than the repository holds.
        big.client().big.docs.insert_many([{"_id": i, "pad": rnd.randbytes(800).hex()} for i in range(5000)])
        small.client().tiny.docs.insert_many([{"_id": i, "v": i} for i in range(50)])
        text = config_text(tmp_path / "data", {}) + "[repository]\n" + f'local_path = "{small_repository}"\n' \
            + instance_lines("dds-big", big.uri, data_path=big.data_dir) \
            + instance_lines("dds-small", small.uri, data_path=small.data_dir)
        # config_text ends with the [scheduler] table: the instance tables must come before it or after it
        # as whole tables, which they are.
        server = Ddsvault(tmp_path / "svc", text)
        try:
            tea = tea_client(server)
            started = time.monotonic()
            r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-big", backup_method="Snapshot")).body
            job = wait_job_end(server, "dds-big", r.backup_job_id, timeout=120)
            took = time.monotonic() - started
            # The job failed (it did not hang) and says why, labelled by its source.
            assert job["JobStatus"] == "Failed", job
            assert job["ErrorCode"] == "Repository.NoSpace", job
            assert "No space left" in job["ErrorMessage"] or "space" in job["ErrorMessage"].lower(), job
            b = wait_backup(tea, "dds-big", r.backup_job_id)
            assert b.backup_status == "Failed"
            listed = call(server, "DescribeBackups", DBInstanceId="dds-big", BackupId=b.backup_id)["Backups"]["Backup"][0]
            assert listed["ErrorCode"] == "Repository.NoSpace", listed
            assert listed["ErrorMessage"] == job["ErrorMessage"]
            # The failed job's own chunks are gone at once: the repository is (nearly) empty again.
            assert used_bytes(small_repository) < 256 * 1024, used_bytes(small_repository)
            # ... so the next backup fits, without waiting for a grace period or a collector pass.
            ok = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-small", backup_method="Snapshot")).body
            assert wait_backup(tea, "dds-small", ok.backup_job_id).backup_status == "Success"
            # The instance takes backups again (no job left holding it).
            again = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-big",
                                                              backup_method="Snapshot")).body
            assert wait_job_end(server, "dds-big", again.backup_job_id, timeout=120)["JobStatus"] == "Failed"
            # The read transaction on the source was released: FerretDB can checkpoint its WAL completely.
            import sqlite3
            con = sqlite3.connect(str(big.data_dir / "big.sqlite"), timeout=10)
            try:
                busy, _log, _ckpt = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                con.close()
            assert busy == 0, "a reader still holds the database's WAL"
            assert took < 120
        finally:
            server.stop()
    finally:
        big.stop()
        small.stop()


def test_a_failed_backup_says_why_through_both_sdks(tmp_path):
    ferret = stack.FerretDB(tmp_path / "f")
    try:
        ferret.client().shop.items.insert_one({"a": 1})
        # A typo in data_path: accepted at start (the instance may be mounted later), fatal to the job.
        missing = tmp_path / "no-such-dir"
        text = config_text(tmp_path / "data", {}) + instance_lines("dds-typo", ferret.uri, data_path=missing)
        server = Ddsvault(tmp_path / "svc", text)
        try:
            tea = tea_client(server)
            r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-typo", backup_method="Snapshot")).body
            job = wait_job_end(server, "dds-typo", r.backup_job_id, timeout=60)
            assert job["JobStatus"] == "Failed", job
            assert job["ErrorCode"] == "Filesystem.Error", job
            assert job["ErrorMessage"].startswith("filesystem: "), job
            assert str(missing) in job["ErrorMessage"], job
            got = call(server, "DescribeBackups", DBInstanceId="dds-typo",
                       BackupJobId=r.backup_job_id)["Backups"]["Backup"][0]
            assert (got["BackupStatus"], got["ErrorCode"]) == ("Failed", "Filesystem.Error"), got
            assert got["ErrorMessage"] == job["ErrorMessage"]
            # The typed models of the V3 SDK see the Dds fields (the extensions need the raw answer).
            assert wait_backup(tea, "dds-typo", r.backup_job_id).backup_status == "Failed"
        finally:
            server.stop()
    finally:
        ferret.stop()


def chunk_files(repo):
    root = repo / "chunks"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_the_chunks_of_a_snapshot_killed_mid_write_go_at_the_restart(tmp_path):
    """SIGKILL of ddsvault while a Snapshot backup stores its chunks: the job's own list of the chunks it wrote dies
    with it, and the collector's grace period (default one hour) would keep them. At the restart recovery fails the
    job and its chunks are swept at once (nothing references them and no job of the instance is at work)."""
    big = stack.FerretDB(tmp_path / "big")
    try:
        rnd = random.Random(23)
        for start in range(0, 24000, 4000):
            big.client().big.docs.insert_many([{"_id": i, "pad": rnd.randbytes(800).hex()}
                                               for i in range(start, start + 4000)])
        data = tmp_path / "data"
        repo = data / "repository"
        server = Ddsvault(tmp_path / "svc", config_text(data, {})
                          + instance_lines("dds-big", big.uri, data_path=big.data_dir))
        try:
            tea = tea_client(server)
            r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-big", backup_method="Snapshot")).body
            deadline = time.monotonic() + 120
            while len(chunk_files(repo)) < 20:
                assert time.monotonic() < deadline, "no chunk stored within 120 s"
                time.sleep(0.01)
            server.kill()
            left = len(chunk_files(repo))
            assert not list(repo.rglob("manifest.json")), "the killed snapshot must not look complete"
            server.start()
            # Recovery runs before the server answers: the job is failed and its chunks are gone.
            job = wait_job_end(server, "dds-big", r.backup_job_id, timeout=10)
            assert job["JobStatus"] == "Failed", job
            print(f"\n{left} chunks stored when killed; {len(chunk_files(repo))} left after the restart")
            assert left >= 20 and chunk_files(repo) == [], chunk_files(repo)[:3]
            staging = repo / "staging"
            assert not staging.exists() or not any(staging.iterdir())
            assert "orphan chunks of a crashed snapshot swept" in "\n".join(server.stdout_lines) + server.stderr()
            # A new snapshot stores every chunk again and completes.
            tea = tea_client(server)  # the restarted server listens on another port
            ok = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-big", backup_method="Snapshot")).body
            assert wait_backup(tea, "dds-big", ok.backup_job_id).backup_status == "Success"
            assert len(chunk_files(repo)) >= left
        finally:
            server.stop()
    finally:
        big.stop()
