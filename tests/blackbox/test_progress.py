"""Real progress and the watchdog (issue 16, item 5; issue 17's "a watchdog fails a job whose progress stalls"),
through the real binary, real FerretDB servers and the official SDK (CommonRequest of aliyun-python-sdk-core: the
typed models drop ddsvault's extension fields `Phase`, `DocsDone`, `BytesDone`, `OplogEntries`, `ErrorCode`).

- A large logical backup of a replica set written to during the dump moves through Preparing, Dumping,
  CapturingOplog and Uploading in that order, never back, with DocsDone/BytesDone growing while it dumps and
  OplogEntries while it captures; its restore moves through Verifying, Restoring and ReplayingOplog.
- A backup whose server stops answering (SIGSTOP mid-dump) is failed by the watchdog with `Job.Stalled` within
  `[backup] stall_timeout_secs` plus one heartbeat, releases the instance, and leaves nothing that looks complete.
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest
from alibabacloud_dds20151201 import models as dds

import stack
from conftest import Ddsvault, config_text, tea_client
from test_restore import call

BACKUP_PHASES = ["Preparing", "Dumping", "CapturingOplog", "Uploading"]
RESTORE_PHASES = ["Verifying", "Restoring", "ReplayingOplog"]


def load(client, docs=20000, pad_bytes=1500):
    """~30 MB in one collection: a dump that lasts several heartbeats even in a debug build."""
    pad = "p" * pad_bytes
    for start in range(0, docs, 2000):
        client.big.docs.insert_many([{"_id": i, "pad": pad, "n": i} for i in range(start, min(start + 2000, docs))])


class Writer(threading.Thread):
    """Writes batches during the backup, so the dump has an oplog window worth capturing."""

    def __init__(self, client):
        super().__init__(daemon=True)
        self.coll = client.live.events
        self.stop = threading.Event()
        self.written = 0
        self.error = None

    def run(self):
        try:
            while not self.stop.is_set():
                self.coll.insert_many([{"_id": self.written + k, "v": "w" * 200} for k in range(100)])
                self.written += 100
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e


def poll(server, action, iid, key, job_id, timeout):
    """Samples the task API as fast as it answers until the job ends; returns every sample (the raw JSON)."""
    list_key, id_key = {"DescribeBackupTasks": ("BackupJobs", "BackupJobId"),
                        "DescribeRestoreTasks": ("RestoreJobs", "RestoreJobId")}[action]
    samples = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = call(server, action, DBInstanceId=iid, **{id_key: job_id})[list_key]
        assert len(jobs) == 1, jobs
        samples.append(jobs[0])
        if jobs[0][key] in ("Finished", "Success", "Failed"):
            return samples
        time.sleep(0.02)
    raise AssertionError(f"{action} {job_id} not finished in {timeout}s: {samples[-1:]}")


def phases_seen(samples):
    """The distinct phases in the order they were first seen (consecutive repeats collapsed)."""
    out = []
    for s in samples:
        if not out or out[-1] != s["Phase"]:
            out.append(s["Phase"])
    return out


def in_order(seen, order):
    """Every phase seen belongs to `order`, appears once, and they come in `order`'s order."""
    idx = [order.index(p) for p in seen]
    return idx == sorted(idx) and len(set(idx)) == len(idx)


def logged_phases(server, job_id):
    """The phase changes the server logged for the job (one `job phase` line each)."""
    out = []
    for line in server.stdout_lines + server.stderr().splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        if "job phase" in line and re.search(rf"job_id[=:]\s*{job_id}\b", line):
            m = re.search(r"phase[=:]\s*\"?(\w+)", line.split("job phase")[0] + line.split("job phase")[-1])
            if m:
                out.append(m.group(1))
    return out


def increasing(values):
    return all(b >= a for a, b in zip(values, values[1:])) and len(set(values)) >= 2


@pytest.fixture()
def ferrets(tmp_path):
    src = stack.FerretDB(tmp_path / "src", repl_set_name="rs0")
    dst = stack.FerretDB(tmp_path / "dst", repl_set_name="rs0")
    yield src, dst
    src.stop()
    dst.stop()


def test_progress_moves_through_every_phase_of_a_backup_and_its_restore(tmp_path, ferrets):
    src, dst = ferrets
    load(src.client())
    src.create_oplog()
    server = Ddsvault(tmp_path / "svc", config_text(tmp_path / "data", {
        "dds-src": (src.uri, "local_ssd"), "dds-dst": (dst.uri, "local_ssd")},
        extra="[backup]\nparallel_collections = 1"))
    try:
        writer = Writer(src.client())
        writer.start()
        try:
            while writer.written < 500:
                time.sleep(0.05)
            r = tea_client(server).create_backup(
                dds.CreateBackupRequest(dbinstance_id="dds-src", backup_method="Logical")).body
            samples = poll(server, "DescribeBackupTasks", "dds-src", "BackupSetStatus", r.backup_job_id, 600)
        finally:
            writer.stop.set()
            writer.join(30)
        assert writer.error is None, writer.error
        last = samples[-1]
        assert last["JobStatus"] == "Success", last
        assert last["Phase"] == "Finished" and last["Progress"] == "100", last
        running = [s for s in samples if s["BackupSetStatus"] != "Finished" and s["Phase"] != "Pending"]
        seen = phases_seen(running)
        print(f"\nbackup: {len(samples)} samples, phases seen through the API: {seen}; writer wrote "
              f"{writer.written} documents; {last['OplogEntries']} oplog entries captured")
        # Through the API: the phases come in order, never back; the long ones are always seen.
        assert in_order(seen, BACKUP_PHASES), seen
        assert {"Dumping", "CapturingOplog"} <= set(seen), seen
        # ... and the log names every change, in order (a phase shorter than one API call may be missed by polling).
        assert logged_phases(server, r.backup_job_id) == BACKUP_PHASES[1:], logged_phases(server, r.backup_job_id)
        dumping = [s for s in running if s["Phase"] == "Dumping"]
        assert increasing([s["DocsDone"] for s in dumping]), [s["DocsDone"] for s in dumping]
        assert increasing([s["BytesDone"] for s in dumping]), [s["BytesDone"] for s in dumping]
        assert all(0 < s["DocsTotal"] for s in dumping), dumping[:1]
        assert max(s["DocsDone"] for s in dumping) <= 20000 + writer.written
        percents = [int(s["Progress"]) for s in running]
        assert percents == sorted(percents) and max(percents) < 100 and len(set(percents)) >= 3, percents
        capturing = [s["OplogEntries"] for s in running if s["Phase"] == "CapturingOplog"]
        assert capturing == sorted(capturing) and capturing[-1] > 0, capturing
        assert last["OplogEntries"] >= capturing[-1] > 0

        # The restore of that backup: Verifying, Restoring, ReplayingOplog.
        b = call(server, "DescribeBackups", DBInstanceId="dds-src", BackupJobId=r.backup_job_id)["Backups"]["Backup"][0]
        out = call(server, "RestoreDBInstance", DBInstanceId="dds-src", BackupId=b["BackupId"],
                   TargetDBInstanceId="dds-dst")
        samples = poll(server, "DescribeRestoreTasks", "dds-dst", "Status", out["RestoreJobId"], 600)
        last = samples[-1]
        assert last["Status"] == "Success", last
        running = [s for s in samples if s["Status"] == "Restoring"]
        seen = phases_seen(running)
        print(f"restore: {len(samples)} samples, phases seen through the API: {seen}")
        assert in_order(seen, ["Preparing"] + RESTORE_PHASES), seen
        assert "Restoring" in seen, seen
        assert logged_phases(server, out["RestoreJobId"]) == RESTORE_PHASES, logged_phases(server, out["RestoreJobId"])
        # DocsDone grows from 0 to every document (inserts are quicker than the dump: the heartbeat may write
        # them only once or twice), OplogEntries grows while the oplog is replayed.
        docs = [s["DocsDone"] for s in running]
        assert increasing(docs) and docs[0] == 0, docs
        assert last["DocsDone"] == last["DocsTotal"] >= 20000, last
        assert all(s["DocsTotal"] == last["DocsTotal"] for s in running if s["Phase"] == "Restoring")
        replaying = [s["OplogEntries"] for s in running if s["Phase"] == "ReplayingOplog"]
        assert increasing(replaying) and replaying[-1] <= last["OplogEntries"], replaying
        percents = [int(s["Progress"]) for s in running]
        assert percents == sorted(percents) and max(percents) < 100, percents
        assert dst.client().big.docs.count_documents({}) == 20000
    finally:
        server.stop()


def test_the_watchdog_fails_a_backup_whose_server_stalls(tmp_path):
    stall = 3
    # A replica set (Logical backups need one), without oplog: a plain dump.
    src = stack.FerretDB(tmp_path / "src", repl_set_name="rs0")
    stopped = False
    try:
        load(src.client())
        data = tmp_path / "data"
        server = Ddsvault(tmp_path / "svc", config_text(data, {"dds-src": (src.uri, "local_ssd")},
                                                        extra=f"[backup]\nparallel_collections = 1\n"
                                                              f"stall_timeout_secs = {stall}"))
        try:
            tea = tea_client(server)
            r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-src", backup_method="Logical")).body
            deadline = time.monotonic() + 120
            while True:
                job = call(server, "DescribeBackupTasks", DBInstanceId="dds-src",
                           BackupJobId=r.backup_job_id)["BackupJobs"][0]
                if job["Phase"] == "Dumping" and job["DocsDone"] > 0:
                    break
                assert job["BackupSetStatus"] != "Finished", f"the dump ended before it could be stalled: {job}"
                assert time.monotonic() < deadline, job
                time.sleep(0.05)
            # The server stops answering mid-dump (its connections stay open: nothing fails, it just hangs).
            os.kill(src.proc.pid, signal.SIGSTOP)
            stopped = True
            t0 = time.monotonic()
            while True:
                job = call(server, "DescribeBackupTasks", DBInstanceId="dds-src",
                           BackupJobId=r.backup_job_id)["BackupJobs"][0]
                if job["BackupSetStatus"] == "Finished":
                    break
                # The bound: the stall limit, one heartbeat (2 s) to notice, and the job's cleanup.
                assert time.monotonic() - t0 < stall + 10, f"the watchdog did not fire: {job}"
                time.sleep(0.1)
            took = time.monotonic() - t0
            print(f"\nstalled backup failed {took:.1f}s after SIGSTOP (stall_timeout_secs = {stall})")
            assert job["JobStatus"] == "Failed", job
            assert job["ErrorCode"] == "Job.Stalled", job
            assert "stall_timeout_secs" in job["ErrorMessage"] and "Dumping" in job["ErrorMessage"], job
            assert took >= stall - 0.5, took
            listed = call(server, "DescribeBackups", DBInstanceId="dds-src",
                          BackupJobId=r.backup_job_id)["Backups"]["Backup"]
            assert [b["BackupStatus"] for b in listed] == ["Failed"], listed
            assert listed[0]["ErrorCode"] == "Job.Stalled", listed
            # Nothing looks complete: no manifest anywhere, no staging left behind.
            repo = data / "repository"
            assert not list(repo.rglob("manifest.json")), list(repo.rglob("manifest.json"))
            staging = repo / "staging"
            assert not staging.exists() or not any(staging.iterdir()), list(staging.iterdir())
            # The instance is released: once the server answers again, a backup is accepted and completes.
            os.kill(src.proc.pid, signal.SIGCONT)
            stopped = False
            again = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-src", backup_method="Logical")).body
            samples = poll(server, "DescribeBackupTasks", "dds-src", "BackupSetStatus", again.backup_job_id, 600)
            assert samples[-1]["JobStatus"] == "Success", samples[-1]
        finally:
            server.stop()
    finally:
        if stopped:
            os.kill(src.proc.pid, signal.SIGCONT)
        src.stop()
