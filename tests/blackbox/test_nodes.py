"""Several ddsvault processes on one PostgreSQL catalog and one repository (issue 19 items 3-5), real processes:
two API nodes (`api-1`, `api-2`) and an agent (`ddsvault agent`, node `db-host-1`) with no API listener.

- A signed request replayed to the other API node is refused (`SignatureNonceUsed`, the nonce store is shared in
  the catalog); a catalog that cannot check the nonce answers 503 `ServiceUnavailable`, never accepts.
- Instances pinned to `db-host-1` (`node = "db-host-1"`) run only there, and wait (Scheduled) while it is down; an
  unpinned instance runs on any node.
- The agent answers no API but runs jobs.
- SIGUSR1 drains a node: its running job finishes, it takes no new one, `ddsvault nodes` shows it `draining`, then
  `down` once it stopped heartbeating.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from aliyunsdkcore.request import CommonRequest
from alibabacloud_tea_openapi.exceptions import ClientException, ServerException
from alibabacloud_tea_openapi.utils import Utils as TeaUtils
from alibabacloud_dds20151201 import models as dds

import stack
from conftest import DDSVAULT_BIN, Ddsvault, acs_client, config_text, seed_data, tea_client

DBS = ("shop", "crm")
AGENT = "db-host-1"


def call(server, action, **params):
    req = CommonRequest(domain="127.0.0.1", version="2015-12-01", action_name=action, product="Dds")
    req.set_method("POST")
    for k, v in params.items():
        req.add_query_param(k, v)
    return json.loads(acs_client(server).do_action_with_exception(req))


class Agent(Ddsvault):
    """`ddsvault agent`: ready when it prints its start line (it never prints "listening on")."""

    def start(self) -> "Agent":
        env = dict(os.environ)
        env.setdefault("DDSVAULT_LOG", "info")
        self.stdout_lines = []
        err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([DDSVAULT_BIN, "agent", "--config", str(self.config_path)], cwd=self.dir,
                                     stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                     text=True)
        err.close()
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.stdout_lines.append(line.rstrip("\n"))
                if re.search(r"ddsvault agent \S+ running jobs", line):
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + self.START_TIMEOUT
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"agent did not start; stdout={self.stdout_lines}\nstderr:\n{self.stderr()}")
        return self


def node_config(base: Path, name: str, node_id: str, url: str, instances: dict, listen: str = "127.0.0.1:0") -> str:
    text = config_text(base / name, instances, extra="\n".join([
        f'node_id = "{node_id}"',
        f'catalog_url = "{url}"',
        f'secret_key_file = "{base / "master.key"}"',
        "[repository]", f'local_path = "{base / "repo"}"',
        "[backup]", "stall_timeout_secs = 300",
    ]))
    text = text.replace('listen = "127.0.0.1:0"', f'listen = "{listen}"', 1)
    for pinned in ("dds-a", "dds-c"):
        text = text.replace(f'id = "{pinned}"\n', f'id = "{pinned}"\nnode = "{AGENT}"\n', 1)
    return text


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("nodes")
    key = base / "master.key"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o600)
    pg = stack.PostgreSQL(base / "pg")
    started = []
    try:
        url = pg.create_database("ddsvault")
        src = stack.FerretDB(base / "src", repl_set_name="rs0")
        started.append(src)
        seed_data(src.client(), DBS)
        big = stack.FerretDB(base / "big", repl_set_name="rs0")
        started.append(big)
        pad = "p" * 1500
        for start in range(0, 20000, 2000):
            big.client().big.docs.insert_many([{"_id": i, "pad": pad} for i in range(start, start + 2000)])
        instances = {"dds-a": (src.uri, "local_ssd"), "dds-b": (src.uri, "local_ssd"),
                     "dds-c": (big.uri, "local_ssd")}
        api1 = Ddsvault(base / "api1", node_config(base, "data1", "api-1", url, instances))
        started.append(api1)
        api2 = Ddsvault(base / "api2", node_config(base, "data2", "api-2", url, instances))
        started.append(api2)
        agent_port = stack.free_port()
        agent = Agent(base / "agent", node_config(base, "data3", AGENT, url, instances,
                                                  listen=f"127.0.0.1:{agent_port}"))
        started.append(agent)
    except BaseException:
        for p in reversed(started):
            p.stop()
        pg.stop()
        raise
    yield {"pg": pg, "api1": api1, "api2": api2, "agent": agent, "agent_port": agent_port, "big": big,
           "config": api1.config_path}
    for p in (agent, api2, api1, big, src):
        p.stop()
    pg.stop()


def task(server, iid, job_id):
    jobs = call(server, "DescribeBackupTasks", DBInstanceId=iid, BackupJobId=job_id)["BackupJobs"]
    assert len(jobs) == 1, jobs
    return jobs[0]


def create(server, iid) -> str:
    return call(server, "CreateBackup", DBInstanceId=iid, BackupMethod="Logical")["BackupJobId"]


def wait_done(server, iid, job_id, timeout=300.0):
    deadline = time.monotonic() + timeout
    while True:
        t = task(server, iid, job_id)
        if t["BackupSetStatus"] == "Finished":
            return t
        assert time.monotonic() < deadline, f"backup job {job_id} of {iid} not finished: {t}"
        time.sleep(0.2)


def stays_scheduled(server, iid, job_id, seconds):
    """The job is still waiting, claimed by nobody, for `seconds` (several runner polls of every live node)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t = task(server, iid, job_id)
        assert (t["BackupSetStatus"], t["Node"]) == ("Scheduled", ""), t
        time.sleep(0.5)


def nodes(cfg, stale_secs=30):
    out = subprocess.run([DDSVAULT_BIN, "nodes", "--config", str(cfg), "--json", "--stale-secs", str(stale_secs)],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return {n["Node"]: n for n in map(json.loads, out.stdout.splitlines())}


def wait_node(cfg, node, want, timeout=40.0, stale_secs=30):
    """Waits until `ddsvault nodes` shows `node` with the fields in `want` (heartbeats come every 10 s)."""
    deadline = time.monotonic() + timeout
    while True:
        n = nodes(cfg, stale_secs).get(node)
        if n is not None and all(n[k] == v for k, v in want.items()):
            return n
        assert time.monotonic() < deadline, f"{node}: wanted {want}, got {n}"
        time.sleep(0.5)


def test_replayed_request_to_another_node_is_refused(cluster, monkeypatch):
    api1, api2 = cluster["api1"], cluster["api2"]
    for v1 in (False, True):
        nonce = f"replay-nonce-{'v1' if v1 else 'v3'}-{os.getpid()}"
        monkeypatch.setattr(TeaUtils, "get_nonce", staticmethod(lambda n=nonce: n))
        ok = tea_client(api1, v1=v1).describe_dbinstances(dds.DescribeDBInstancesRequest())
        assert ok.status_code == 200
        with pytest.raises(ClientException) as e:
            tea_client(api2, v1=v1).describe_dbinstances(dds.DescribeDBInstancesRequest())
        assert (e.value.status_code, e.value.code) == (400, "SignatureNonceUsed")
    monkeypatch.undo()
    # The catalog cannot check nonces (their table is gone for a moment): refused with 503, never accepted.
    pg = cluster["pg"]
    pg.sql("ddsvault", "ALTER TABLE request_nonces RENAME TO request_nonces_away")
    try:
        with pytest.raises(ServerException) as e:
            tea_client(api2).describe_dbinstances(dds.DescribeDBInstancesRequest())
        assert (e.value.status_code, e.value.code) == (503, "ServiceUnavailable")
    finally:
        pg.sql("ddsvault", "ALTER TABLE request_nonces_away RENAME TO request_nonces")
    assert tea_client(api2).describe_dbinstances(dds.DescribeDBInstancesRequest()).status_code == 200


def test_agent_has_no_api_listener_but_runs_pinned_jobs(cluster):
    agent = cluster["agent"]
    assert not any("listening on" in line for line in agent.stdout_lines), agent.stdout_lines
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", cluster["agent_port"]), timeout=5).close()
    # A pinned instance's backup, asked of either API node, runs on the agent.
    job = create(cluster["api2"], "dds-a")
    t = wait_done(cluster["api1"], "dds-a", job)
    assert (t["JobStatus"], t["Node"]) == ("Success", AGENT), t
    # The unpinned instance runs on any node.
    job = create(cluster["api1"], "dds-b")
    t = wait_done(cluster["api1"], "dds-b", job)
    assert t["JobStatus"] == "Success" and t["Node"] in ("api-1", "api-2", AGENT), t
    listed = nodes(cluster["config"])
    assert listed[AGENT]["Api"] == "agent" and listed[AGENT]["State"] == "up", listed
    for api in ("api-1", "api-2"):
        assert re.fullmatch(r"127\.0\.0\.1:\d+", listed[api]["Api"]) and listed[api]["State"] == "up", listed


def test_pinned_job_waits_while_its_node_is_down(cluster):
    api1, agent = cluster["api1"], cluster["agent"]
    agent.stop()
    try:
        job = create(api1, "dds-a")
        stays_scheduled(api1, "dds-a", job, 8)
        # Meanwhile the API nodes run what is theirs to run.
        other = create(cluster["api2"], "dds-b")
        t = wait_done(api1, "dds-b", other)
        assert t["JobStatus"] == "Success" and t["Node"] in ("api-1", "api-2"), t
        stays_scheduled(api1, "dds-a", job, 2)
    finally:
        agent.start()
    t = wait_done(api1, "dds-a", job)
    assert (t["JobStatus"], t["Node"]) == ("Success", AGENT), t


def test_drain_finishes_the_running_job_and_takes_no_more(cluster):
    api1, agent, big, cfg = cluster["api1"], cluster["agent"], cluster["big"], cluster["config"]
    long_job = create(api1, "dds-c")
    deadline = time.monotonic() + 120
    while True:
        t = task(api1, "dds-c", long_job)
        if t["BackupSetStatus"] == "Backuping":
            break
        assert t["BackupSetStatus"] == "Scheduled" and time.monotonic() < deadline, t
        time.sleep(0.02)
    assert t["Node"] == AGENT, t
    # Hold the job (its source stops answering) while the drain starts, so it is surely running then. The hold
    # must end well before the driver's 30 s server selection timeout fails the job; the drain is written to the
    # node row at once (not at the next 10 s beat), so a few seconds suffice.
    os.kill(big.proc.pid, signal.SIGSTOP)
    try:
        os.kill(agent.proc.pid, signal.SIGUSR1)
        try:
            n = wait_node(cfg, AGENT, {"State": "draining", "RunningJobs": 1}, timeout=15)
        except AssertionError as e:
            raise AssertionError(f"{e}; the job: {task(api1, 'dds-c', long_job)}") from None
        assert n["Draining"] is True, n
    finally:
        os.kill(big.proc.pid, signal.SIGCONT)
    # A new job of a pinned instance is not taken while the node drains...
    waiting = create(api1, "dds-a")
    # ...and the running one finishes.
    t = wait_done(api1, "dds-c", long_job)
    assert (t["JobStatus"], t["Node"]) == ("Success", AGENT), t
    stays_scheduled(api1, "dds-a", waiting, 6)
    wait_node(cfg, AGENT, {"State": "draining", "RunningJobs": 0})
    assert nodes(cfg)["api-1"]["State"] == "up"
    # Stopped, it shows down once its last heartbeat is older than the stale bound.
    agent.stop()
    wait_node(cfg, AGENT, {"State": "down"}, timeout=40, stale_secs=12)
    stays_scheduled(api1, "dds-a", waiting, 1)
    # Its next life is not draining and takes the job that waited.
    agent.start()
    t = wait_done(api1, "dds-a", waiting)
    assert (t["JobStatus"], t["Node"]) == ("Success", AGENT), t
    n = wait_node(cfg, AGENT, {"State": "up"})
    assert n["Draining"] is False, n


def test_automatic_backups_run_once_per_slot_across_nodes(cluster):
    """All three nodes run the scheduler: each slot makes one backup, the pinned instance's on its node."""
    import datetime

    api1, pg = cluster["api1"], cluster["pg"]
    now = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
    window = f"{now:%H:%M}Z-{now + datetime.timedelta(hours=1):%H:%M}Z"
    day = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"][now.weekday()]
    for iid in ("dds-a", "dds-b"):
        call(api1, "ModifyBackupPolicy", DBInstanceId=iid, PreferredBackupTime=window,
             PreferredBackupPeriod=day, BackupRetentionPeriod="7")
    procs = (cluster["api1"], cluster["api2"], cluster["agent"])
    for p in procs:
        p.stop()
    for p in procs:
        text = p.config_path.read_text()
        assert "[scheduler]\nenabled = false" in text
        p.config_path.write_text(text.replace("[scheduler]\nenabled = false", "[scheduler]\nenabled = true\ntick_secs = 1"))
    for p in procs:
        p.start()
    deadline = time.monotonic() + 300
    auto = {}
    while True:
        for iid in ("dds-a", "dds-b"):
            backups = call(api1, "DescribeBackups", DBInstanceId=iid, PageSize="100")["Backups"]["Backup"]
            auto[iid] = [b for b in backups if b["BackupMode"] == "Automated"]
        if all(auto[i] and auto[i][0]["BackupStatus"] == "Success" for i in auto):
            break
        assert time.monotonic() < deadline, auto
        time.sleep(0.5)
    # Several ticks of three schedulers later, still one backup and one slot row per instance.
    time.sleep(5)
    for iid in ("dds-a", "dds-b"):
        backups = call(api1, "DescribeBackups", DBInstanceId=iid, PageSize="100")["Backups"]["Backup"]
        assert len([b for b in backups if b["BackupMode"] == "Automated"]) == 1, backups
        assert pg.sql("ddsvault", f"SELECT count(*) FROM schedule_runs WHERE instance_id = '{iid}'") == "1"
    t = task(api1, "dds-a", auto["dds-a"][0]["BackupJobId"])
    assert (t["JobStatus"], t["Node"]) == ("Success", AGENT), t
