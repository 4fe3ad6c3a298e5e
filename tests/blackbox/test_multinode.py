"""Three `ddsvault serve` processes on one PostgreSQL catalog and one repository (issue 19 item 2, docs/deployment.md):
job leases and fencing tokens.

- SIGKILL the process running a backup: another one takes the job over and fails it (files removed) within the
  lease bound; CreateBackup on that instance is accepted again and succeeds.
- SIGSTOP the process holding a job's lease past its expiry: another takes the job over; after SIGCONT the paused one
  commits nothing (the job's record stays the new owner's), and says so.
- Restarting a process while another runs a job leaves that job alone (start-up recovery only takes expired leases
  and the restarted node's own jobs).
- Throughout: no job is started on two nodes, every Success verifies, and nothing is left Running.

A job is held mid-dump by freezing its source FerretDB (SIGSTOP) once the dump has started, so the timings do not
depend on the dump's speed.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
from aliyunsdkcore.request import CommonRequest

import stack
from conftest import DDSVAULT_BIN, Ddsvault, acs_client, config_text, seed_data

LEASE = 3
# Lease expiry, one recovery interval (half the lease), the clean-up, and slack for a loaded CI machine.
BOUND = 2 * LEASE + 6
NODES = ("node-1", "node-2", "node-3")


def call(server, action, **params):
    req = CommonRequest(domain="127.0.0.1", version="2015-12-01", action_name=action, product="Dds")
    req.set_method("POST")
    for k, v in params.items():
        req.add_query_param(k, v)
    return json.loads(acs_client(server).do_action_with_exception(req))


def task(server, instance, job_id):
    return call(server, "DescribeBackupTasks", DBInstanceId=instance, BackupJobId=job_id)["BackupJobs"][0]


def create_backup(server, instance):
    return str(call(server, "CreateBackup", DBInstanceId=instance, BackupMethod="Logical")["BackupJobId"])


def wait_finished(server, instance, job_id, timeout=180.0):
    deadline = time.monotonic() + timeout
    while True:
        job = task(server, instance, job_id)
        if job["JobStatus"] in ("Success", "Failed"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} not finished within {timeout}s: {job}"
        time.sleep(0.2)


def wait_dumping(server, instance, job_id, timeout=120.0):
    """Until the job is dumping (connected to its source: freezing the source holds it mid-job). A phase change
    reaches the catalog at once, not at the next heartbeat."""
    deadline = time.monotonic() + timeout
    while True:
        job = task(server, instance, job_id)
        if job["Phase"] == "Dumping":
            return job
        assert job["BackupSetStatus"] != "Finished", f"the dump ended before it could be held: {job}"
        assert time.monotonic() < deadline, job
        time.sleep(0.02)


class Cluster:
    def __init__(self, base):
        self.base = base
        self.pg = stack.PostgreSQL(base / "pg")
        self.nodes: dict[str, Ddsvault] = {}
        self.ferrets: dict[str, stack.FerretDB] = {}
        self.frozen: list = []

    def start(self):
        url = self.pg.create_database("ddsvault")
        big = stack.FerretDB(self.base / "big", repl_set_name="rs0")
        # A dump of a few seconds in a debug build: long enough to freeze its source once it has started.
        for start in range(0, 20000, 2000):
            big.client().shop.bulk.insert_many([{"_id": i, "pad": "p" * 1000} for i in range(start, start + 2000)])
        self.ferrets["dds-big"] = big
        for iid in ("dds-b", "dds-c"):
            f = stack.FerretDB(self.base / iid, repl_set_name="rs0")
            seed_data(f.client())
            self.ferrets[iid] = f
        key = self.base / "master.key"
        key.write_text(os.urandom(32).hex())
        repo = self.base / "repository"
        instances = {iid: (f.uri, "local_ssd") for iid, f in self.ferrets.items()}
        for n in NODES:
            extra = (f'catalog_url = "{url}"\nnode_id = "{n}"\nsecret_key_file = "{key}"\n'
                     f'[repository]\nlocal_path = "{repo}"\n[jobs]\nlease_secs = {LEASE}\n')
            self.nodes[n] = Ddsvault(self.base / n, config_text(self.base / f"data-{n}", instances, extra=extra))
        self.repo = repo

    def sql(self, statement):
        return self.pg.sql("ddsvault", statement)

    def owner(self, job_id):
        return self.sql(f"SELECT owner FROM jobs WHERE id = {int(job_id)}")

    def others(self, *names):
        return [self.nodes[n] for n in NODES if n not in names]

    def freeze(self, proc):
        os.kill(proc.pid, signal.SIGSTOP)
        self.frozen.append(proc)

    def thaw(self, proc):
        os.kill(proc.pid, signal.SIGCONT)
        self.frozen.remove(proc)

    def logs(self, name):
        node = self.nodes[name]
        return "\n".join(node.stdout_lines) + "\n" + node.stderr()

    def stop(self):
        for p in list(self.frozen):
            try:
                os.kill(p.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        for n in self.nodes.values():
            try:
                n.stop()
            except Exception:  # noqa: BLE001 - teardown goes on
                n.kill()
        for f in self.ferrets.values():
            f.stop()
        self.pg.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("multinode"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def hold_mid_dump(c, via, instance="dds-big"):
    """A backup of `instance` created through `via`, held mid-dump (its source frozen); returns (job id, owner)."""
    job_id = create_backup(via, instance)
    wait_dumping(via, instance, job_id)
    c.freeze(c.ferrets[instance].proc)
    owner = c.owner(job_id)
    assert owner in NODES, owner
    return job_id, owner


def test_a_killed_nodes_job_is_recovered_within_the_bound(cluster):
    c = cluster
    job_id, owner = hold_mid_dump(c, c.nodes["node-1"])
    backup_id = c.sql(f"SELECT backup_id FROM jobs WHERE id = {int(job_id)}")
    survivor = c.others(owner)[0]
    c.nodes[owner].kill()
    t0 = time.monotonic()
    job = wait_finished(survivor, "dds-big", job_id, timeout=BOUND + 30)
    took = time.monotonic() - t0
    print(f"\nthe job of the killed {owner} was failed {took:.1f}s after SIGKILL (lease_secs = {LEASE})")
    assert took <= BOUND, took
    assert job["JobStatus"] == "Failed", job
    assert job["ErrorCode"] == "Job.Interrupted", job
    assert owner in job["ErrorMessage"] and "lease" in job["ErrorMessage"], job
    recoverer = c.owner(job_id)
    assert recoverer in NODES and recoverer != owner, recoverer
    # Its files went with it: no staging area, no backup directory.
    assert not (c.repo / "staging" / f"job-{job_id}").exists()
    assert not (c.repo / "backups" / "dds-big" / backup_id).exists()

    # The instance takes a backup again at once, through any node, and it succeeds.
    c.thaw(c.ferrets["dds-big"].proc)
    again = create_backup(survivor, "dds-big")
    assert wait_finished(survivor, "dds-big", again)["JobStatus"] == "Success"
    # The killed node comes back without touching anything of the others.
    c.nodes[owner].start()


def test_a_paused_lease_holder_commits_nothing_after_a_takeover(cluster):
    c = cluster
    job_id, owner = hold_mid_dump(c, c.nodes["node-2"])
    holder = c.nodes[owner]
    c.freeze(holder.proc)
    watcher = c.others(owner)[0]
    t0 = time.monotonic()
    job = wait_finished(watcher, "dds-big", job_id, timeout=BOUND + 30)
    assert time.monotonic() - t0 <= BOUND
    assert job["JobStatus"] == "Failed" and owner in job["ErrorMessage"], job
    before = c.sql(f"SELECT state, owner, lease_token, error, finished_at FROM jobs WHERE id = {int(job_id)}")
    new_owner = c.owner(job_id)
    assert new_owner != owner
    # Both come back: the source first (the paused holder's dump can go on), then the holder.
    c.thaw(c.ferrets["dds-big"].proc)
    c.thaw(holder.proc)
    deadline = time.monotonic() + 60
    while "lease was lost" not in c.logs(owner):
        assert time.monotonic() < deadline, c.logs(owner)[-4000:]
        time.sleep(0.2)
    # Give it time to try anything it still would.
    time.sleep(LEASE)
    after = c.sql(f"SELECT state, owner, lease_token, error, finished_at FROM jobs WHERE id = {int(job_id)}")
    assert after == before, (before, after)
    listed = call(watcher, "DescribeBackups", DBInstanceId="dds-big", BackupJobId=job_id)["Backups"]["Backup"]
    assert [b["BackupStatus"] for b in listed] == ["Failed"], listed
    # The resumed process is healthy and serves.
    again = create_backup(holder, "dds-big")
    assert wait_finished(holder, "dds-big", again)["JobStatus"] == "Success"


def test_restarting_a_node_leaves_the_others_jobs_alone(cluster):
    c = cluster
    job_id, owner = hold_mid_dump(c, c.nodes["node-3"])
    for other in c.others(owner):
        other.stop()
        other.start()
    # Meanwhile other backups run, on any node.
    side = create_backup(c.others(owner)[0], "dds-b")
    # Well past a lease: the held job's lease is renewed by its live holder, nobody took it.
    time.sleep(LEASE * 2)
    row = c.sql(f"SELECT state, owner FROM jobs WHERE id = {int(job_id)}")
    assert row == f"Running|{owner}", row
    c.thaw(c.ferrets["dds-big"].proc)
    assert wait_finished(c.nodes[owner], "dds-big", job_id)["JobStatus"] == "Success"
    assert wait_finished(c.nodes[owner], "dds-b", side)["JobStatus"] == "Success"


def test_concurrent_backups_on_every_node_all_verify(cluster):
    c = cluster
    started = []
    for round_ in range(2):
        for i, iid in enumerate(("dds-b", "dds-c", "dds-big")):
            via = c.nodes[NODES[(i + round_) % 3]]
            started.append((via, iid, create_backup(via, iid)))
        for via, iid, job_id in started[-3:]:
            assert wait_finished(via, iid, job_id)["JobStatus"] == "Success"
    # No job was ever started by two nodes.
    started_on: dict[str, list[str]] = {}
    for n in NODES:
        for jid in set(re.findall(r"job_id=(\d+)[^\n]*job started", c.logs(n))):
            started_on.setdefault(jid, []).append(n)
    assert started_on, "no job start was logged"
    twice = {j: ns for j, ns in started_on.items() if len(ns) > 1}
    assert not twice, twice
    assert c.sql("SELECT count(*) FROM jobs WHERE state IN ('Pending', 'Running')") == "0"
    # Every Success verifies end to end from the repository.
    ids = c.sql("SELECT id FROM backups WHERE status = 'Success' ORDER BY id").split()
    assert len(ids) >= 9, ids
    cfg = c.nodes["node-1"].config_path
    for bid in ids:
        v = subprocess.run([DDSVAULT_BIN, "verify", "--config", str(cfg), "--backup-id", bid],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert v.returncode == 0, (bid, v.stdout, v.stderr)
