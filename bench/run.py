#!/usr/bin/env python3
"""ddsvault benchmark harness (run on demand, not in CI).

Builds the release binary, generates reproducible datasets in FerretDB, and measures in one run on this machine:
  - ddsvault logical backup (CreateBackup through the official SDK, until the job is recorded Success: see JobClock)
  - the raw read rate of the server (crates/mongo/examples/raw_read.rs: every document read raw and discarded)
  - mongodump --archive (plain and --gzip) when mongo-tools are in $STACK_DIR/bin (scripts/setup-stack.sh cannot
    install them here: the Go module proxy refuses github.com/mongodb/mongo-tools; the harness then says so
    instead of inventing a number)
  - ddsvault logical restore (RestoreDBInstance into an empty FerretDB) and mongorestore --archive when available
  - the raw insert rate of the target server (crates/mongo/examples/raw_write.rs: the same documents, held in
    memory, inserted with the restore's batches and parallelism) as the limit for restore
  - peak RSS of the ddsvault process (VmHWM, one fresh process per measured run)
It prints min/median with repeat counts and the ratios ddsvault/peer and ddsvault/limit, and writes a JSON file
under bench/results/ (committed: the log of every run), with the machine, the load average before and after, the
nice value it ran at and the peers' versions. The machine is shared: run it as `nice -n -10 ...` (root) and say so.

  .stack/venv/bin/python bench/run.py --datasets small,medium --repeat 3
  .stack/venv/bin/python bench/run.py --datasets large --large-mb 4096 --repeat 1 [--no-peers | --backup-only]
It also reports the CPU seconds FerretDB and the reader (raw_read, or ddsvault) spent during each read: on a small
machine the server's CPU is the limit, and whatever the backup needs beyond reading comes out of it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "blackbox"))

import stack  # noqa: E402

TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
# DDSVAULT_BENCH_BIN: another build to measure (e.g. a copy of the binary before a change, for a before/after).
BIN = Path(os.environ.get("DDSVAULT_BENCH_BIN") or TARGET / "release" / "ddsvault")
RAW_READ = TARGET / "release" / "examples" / "raw_read"
RAW_WRITE = TARGET / "release" / "examples" / "raw_write"
AK = ("LTAI5tBenchRootKey0001", "bench-root-secret-0001")


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def build():
    sh("cargo", "build", "--release", "-p", "ddsvault", cwd=REPO)
    sh("cargo", "build", "--release", "-p", "ddsvault-mongo", "--example", "raw_read", "--example", "raw_write",
       cwd=REPO)


def gen_dataset(client, name: str, large_mb: int, seed: int = 7):
    """Reproducible datasets: small = many collections, medium = ~200 MB mixed sizes, large = large_mb MB."""
    rng = random.Random(seed)

    def doc(i, size):
        return {"_id": i, "n": i, "f": rng.random(), "s": "x" * size, "tags": [rng.randrange(100) for _ in range(5)],
                "sub": {"a": i % 13, "b": str(i)}}

    if name == "small":
        db = client.bench_small
        for c in range(1000):
            db[f"c{c:04d}"].insert_many([doc(i, 100) for i in range(50)])
        return
    total_mb = 200 if name == "medium" else large_mb
    db = client[f"bench_{name}"]
    written, i, batch = 0, 0, []
    sizes = [64, 256, 1024, 4096, 16384]
    while written < total_mb * 1024 * 1024:
        size = rng.choice(sizes)
        batch.append(doc(i, size))
        written += size + 80
        i += 1
        if len(batch) == 1000:
            # Batches go round the 4 collections (i is a multiple of 1000 here, so i % 4 alone would always be 0).
            db[f"c{i // 1000 % 4}"].insert_many(batch)
            batch = []
    if batch:
        db["c0"].insert_many(batch)


class Server:
    """A release ddsvault on a free port. `instances` maps an id to its URI, or to (URI, data_path) for file backups."""

    def __init__(self, workdir: Path, instances: dict, extra: str = "", top=(), server=()):
        """`extra`: more configuration text appended as is (e.g. a `[repository]` or `[log_backup]` section);
        `top`: top-level keys (e.g. `catalog_url = "postgres://…"`; a string or a sequence of lines), which must come
        before any table; `server`: extra `[server]` keys (e.g. shared_nonces)."""
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        top = ([top] if top else []) if isinstance(top, str) else list(top)
        lines = ['listen = "127.0.0.1:0"', f'data_dir = "{workdir / "data"}"', *top,
                 "[[access_keys]]", f'id = "{AK[0]}"', f'secret = "{AK[1]}"', 'user = "root"']
        # Measure the server, not the default flow control (100 calls/s per AccessKey) or automatic backups.
        lines += ["[throttling]", "enabled = false", "[scheduler]", "enabled = false"]
        if server:
            lines += ["[server]", *server]
        # e.g. DDSVAULT_BENCH_BACKUP='zstd_level = 1' to see what compression costs on a shared machine.
        if os.environ.get("DDSVAULT_BENCH_BACKUP"):
            lines += ["[backup]", *os.environ["DDSVAULT_BENCH_BACKUP"].split(";")]
        for iid, target in instances.items():
            uri, data_path = target if isinstance(target, tuple) else (target, None)
            lines += ["[[instances]]", f'id = "{iid}"', f'uri = "{uri}"']
            if data_path is not None:
                lines.append(f'data_path = "{data_path}"')
        if extra:
            lines.append(extra)
        (self.dir / "c.toml").write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([str(BIN), "serve", "--config", str(self.dir / "c.toml")], stdout=subprocess.PIPE,
                                     stderr=open(self.dir / "stderr.log", "ab"), text=True)
        for line in self.proc.stdout:
            if "listening on http://" in line:
                self.port = int(line.rsplit(":", 1)[1])
                break
        else:
            self.proc.wait(30)
            tail = (self.dir / "stderr.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"ddsvault serve exited with {self.proc.returncode} before listening:\n{tail}")
        from alibabacloud_dds20151201.client import Client
        from alibabacloud_tea_openapi import models as m
        self.tea = Client(m.Config(access_key_id=AK[0], access_key_secret=AK[1], endpoint=f"127.0.0.1:{self.port}",
                                   protocol="http", region_id="cn-hangzhou", read_timeout=600000))

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


class JobClock:
    """Times a job from the call that starts it to the moment the service records it finished.

    The end comes from the job's `finished_at` in the catalog (milliseconds), read once the API has said the job is
    finished. A backup takes it once its archive is in place, before writing the manifest and committing Success
    (13 ms later in the log of a small backup); a restore at the commit. So the API can be polled rarely: every
    signed call costs the SDK and the service ~2 ms of CPU, and polling every 50 ms made the small dataset's backup
    slower on this 2-core machine (9.87 / 9.98 / 10.61 s against 8.77 / 9.23 / 9.23 s polled rarely, alternating,
    both timed this way), a cost the bare reader does not pay. Pauses grow with the time so far (5% of it, at least
    250 ms): ~30 calls for a 10-second job, ~90 for a 200-second one.
    """

    def __init__(self, server: Server):
        self.server = server
        self.t0 = time.time()
        self.polls = 0

    def pause(self) -> None:
        self.polls += 1
        time.sleep(max(0.25, (time.time() - self.t0) / 20))

    def seconds(self, job_id) -> float:
        """The job's duration: from this clock's start to its `finished_at`, which must lie before now. Sets
        `seen` to the time until a call saw it finished (an upper bound, late by up to one pause)."""
        import sqlite3

        seen_done = time.time()
        self.seen = seen_done - self.t0
        db = self.server.dir / "data" / "catalog.db"
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT finished_at FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        finally:
            con.close()
        finished = row[0] / 1000
        assert self.t0 < finished <= seen_done + 0.001, (self.t0, finished, seen_done)
        self.committed = self.committed_seconds(job_id)
        return finished - self.t0

    def committed_seconds(self, job_id):
        """From this clock's start to the service's `job succeeded` log line for the job (microseconds): after the
        manifest and the catalog's Success commit. A file backup's `finished_at` is its image's end, before the
        snapshot index, the check of reused chunks and the manifest, which take ~0.4 s for a 100 MiB snapshot of
        6,500 chunks, so Physical and Snapshot are timed with this. None if the line is not found."""
        import datetime as _dt
        import re

        pat = re.compile(r"^(\S+Z)\s+INFO job\{job_id=" + str(int(job_id)) + r" [^}]*\}: .*job succeeded")
        log = self.server.dir / "stderr.log"
        for line in reversed(log.read_text(errors="replace").splitlines()):
            m = pat.match(line)
            if m:
                at = _dt.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
                return at - self.t0
        return None


def timed_backup(server: Server, iid: str, method: str = "Logical"):
    """Seconds from CreateBackup until the backup is recorded Success, the backup id, and the clock."""
    from alibabacloud_dds20151201 import models as dds

    clock = JobClock(server)
    r = server.tea.create_backup(dds.CreateBackupRequest(dbinstance_id=iid, backup_method=method)).body
    while True:
        b = server.tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id=iid, backup_job_id=r.backup_job_id)).body
        if b.backups.backup:
            assert b.backups.backup[0].backup_status == "Success", b
            return clock.seconds(r.backup_job_id), b.backups.backup[0].backup_id, clock
        clock.pause()


def timed_restore(server: Server, src: str, dst: str, backup_id: str):
    """Seconds from RestoreDBInstance until the restore is recorded Success, and the clock."""
    import json as _j

    from aliyunsdkcore.client import AcsClient
    from aliyunsdkcore.request import CommonRequest

    acs = AcsClient(AK[0], AK[1], "cn-hangzhou", port=server.port, timeout=600)

    def call(action, **p):
        req = CommonRequest(domain="127.0.0.1", version="2015-12-01", action_name=action, product="Dds")
        req.set_method("POST")
        for k, v in p.items():
            req.add_query_param(k, v)
        return _j.loads(acs.do_action_with_exception(req))

    clock = JobClock(server)
    job = call("RestoreDBInstance", DBInstanceId=src, BackupId=backup_id, TargetDBInstanceId=dst,
               DropExisting="true")["RestoreJobId"]
    while True:
        j = call("DescribeRestoreTasks", DBInstanceId=dst, RestoreJobId=job)["RestoreJobs"][0]
        if j["Status"] in ("Success", "Failed"):
            assert j["Status"] == "Success", j
            return clock.seconds(job), clock
        clock.pause()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of this harness's finished (waited-for) children, e.g. one raw_read run."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


RESULTS = REPO / "bench" / "results"


def machine() -> dict:
    """What a result must say about where it was taken: CPU, memory, kernel, load (1/5/15-minute averages, taken
    now: call again at the end), the nice value of this harness, the commit measured."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), None)
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip()
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(), "mem_mib": mem,
            "python": platform.python_version(), "nice": os.nice(0), "loadavg_start": list(os.getloadavg()),
            "commit": commit}


def tool_versions() -> dict:
    """The peers' versions, as the binaries report them (or why they are missing)."""
    out = {}
    for key, path in (("mongodump", stack.bin("mongodump")), ("mongorestore", stack.mongorestore_for_ferretdb())):
        try:
            out[key] = stack.tool_version(path)
        except (OSError, subprocess.SubprocessError) as e:
            out[key] = f"unavailable: {e}"
    return out


def write_result(kind: str, results: dict, out: str | None = None) -> Path:
    """Writes one run's JSON to `out`, or bench/results/<UTC time>-<kind>.json, after recording the end load."""
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = Path(out) if out else RESULTS / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{kind}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def summary(xs):
    return {"runs": len(xs), "min": min(xs), "median": statistics.median(xs), "values": xs} if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="small,medium")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--large-mb", type=int, default=4096)
    ap.add_argument("--backup-only", action="store_true",
                    help="measure backup against the raw read only (no restore, no peers)")
    ap.add_argument("--no-peers", action="store_true", help="leave out mongodump/mongorestore even if installed")
    ap.add_argument("--out", default=None, help="default: bench/results/<UTC time>-run.json")
    ap.add_argument("--no-setup", action="store_true", help="use the stack in $STACK_DIR as it is (no setup-stack.sh)")
    args = ap.parse_args()
    if not args.no_setup:
        sh(str(REPO / "scripts" / "setup-stack.sh"))
    build()
    tools = stack.mongo_tools_unavailable_reason()
    if tools:
        tools = tools.splitlines()[0]
    if args.backup_only or args.no_peers:
        tools = "not measured (--backup-only or --no-peers)"
    results = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
               "command": sys.argv[1:], "peers": tools or tool_versions(), "datasets": {}}
    for name in args.datasets.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            src = stack.FerretDB(tmp / "src", repl_set_name="rs0")
            dst = stack.FerretDB(tmp / "dst", repl_set_name="rs0")
            t0 = time.monotonic()
            gen_dataset(src.client(), name, args.large_mb)
            gen_s = time.monotonic() - t0
            r = {"generate_seconds": gen_s, "raw_read": [], "raw_read_find_only": [], "ddsvault_backup": [], "ddsvault_restore": [],
                 "raw_write": [], "ddsvault_backup_peak_rss_mb": [],
                 "raw_read_cpu_ferretdb": [], "raw_read_cpu_own": [], "ddsvault_backup_cpu_ferretdb": [],
                 "ddsvault_backup_cpu_own": [], "ddsvault_backup_polls": [], "ddsvault_backup_seen": [],
                 "ddsvault_restore_polls": [], "ddsvault_restore_seen": [], "mongodump_plain": [], "mongodump_gzip": [], "mongorestore": []}
            for _ in range(args.repeat):
                # CPU seconds tell whose work fills the 2 cores: the server's (FerretDB), the reader's own.
                server_cpu, own_cpu = cpu_seconds(src.proc.pid), children_cpu_seconds()
                out = subprocess.run([str(RAW_READ), src.uri], capture_output=True, text=True, check=True)
                r["raw_read_cpu_ferretdb"].append(cpu_seconds(src.proc.pid) - server_cpu)
                r["raw_read_cpu_own"].append(children_cpu_seconds() - own_cpu)
                raw = json.loads(out.stdout)
                r["raw_read"].append(raw["seconds"])
                r["raw_read_find_only"].append(raw["find_seconds"])
                srv = Server(tmp / f"svc{len(r['ddsvault_backup'])}", {"src": src.uri, "dst": dst.uri})
                server_cpu, own_cpu = cpu_seconds(src.proc.pid), cpu_seconds(srv.proc.pid)
                secs, backup_id, clock = timed_backup(srv, "src")
                r["ddsvault_backup_polls"].append(clock.polls)
                r["ddsvault_backup_seen"].append(clock.seen)
                r["ddsvault_backup_cpu_ferretdb"].append(cpu_seconds(src.proc.pid) - server_cpu)
                r["ddsvault_backup_cpu_own"].append(cpu_seconds(srv.proc.pid) - own_cpu)
                r["ddsvault_backup"].append(secs)
                r["ddsvault_backup_peak_rss_mb"].append(srv.peak_rss_mb())
                if not args.backup_only:
                    # Into an empty instance, like mongorestore below: the previous round left its restore there.
                    dst.client().drop_database(f"bench_{name}")
                    secs, clock = timed_restore(srv, "src", "dst", backup_id)
                    r["ddsvault_restore"].append(secs)
                    r["ddsvault_restore_polls"].append(clock.polls)
                    r["ddsvault_restore_seen"].append(clock.seen)
                srv.stop()
                shutil.rmtree(srv.dir, ignore_errors=True)
                if args.backup_only:
                    continue
                out = subprocess.run([str(RAW_WRITE), src.uri, dst.uri], capture_output=True, text=True, check=True)
                r["raw_write"].append(json.loads(out.stdout)["seconds"])
                if tools is None:
                    for key, extra in (("mongodump_plain", []), ("mongodump_gzip", ["--gzip"])):
                        t = time.monotonic()
                        sh(stack.bin("mongodump"), f"--uri={src.uri}", f"--archive={tmp / 'a'}", *extra,
                           capture_output=True)
                        r[key].append(time.monotonic() - t)
                    dst.client().drop_database(f"bench_{name}")
                    t = time.monotonic()
                    # 100.11.0: later mongorestore releases cannot insert into FerretDB 1.24 (stack.py).
                    sh(stack.mongorestore_for_ferretdb(), f"--uri={dst.uri}", f"--archive={tmp / 'a'}", "--gzip",
                       "--noIndexRestore", capture_output=True)
                    r["mongorestore"].append(time.monotonic() - t)
            src.stop()
            dst.stop()
        s = {k: (summary(v) if isinstance(v, list) else v) for k, v in r.items()}
        med = lambda k: s[k]["median"] if s.get(k) else None  # noqa: E731
        s["ratios"] = {
            "backup_vs_raw_read_time": med("ddsvault_backup") / med("raw_read"),
            "backup_vs_raw_find_only_time": med("ddsvault_backup") / med("raw_read_find_only"),
            # All CPU (FerretDB + reader) a backup costs against a bare read of the same data.
            "backup_vs_raw_read_cpu": (med("ddsvault_backup_cpu_ferretdb") + med("ddsvault_backup_cpu_own"))
            / (med("raw_read_cpu_ferretdb") + med("raw_read_cpu_own")),
            "restore_vs_raw_write_time": (med("ddsvault_restore") / med("raw_write")) if med("raw_write")
            else "not measured",
            "mongorestore_vs_raw_write_time": (med("mongorestore") / med("raw_write")) if med("mongorestore")
            else f"unavailable: {tools}",
            "backup_vs_mongodump_plain": (med("ddsvault_backup") / med("mongodump_plain")) if med("mongodump_plain")
            else f"unavailable: {tools}",
            "backup_vs_mongodump_gzip": (med("ddsvault_backup") / med("mongodump_gzip")) if med("mongodump_gzip") else
            f"unavailable: {tools}",
            "restore_vs_mongorestore": (med("ddsvault_restore") / med("mongorestore")) if med("mongorestore") else
            f"unavailable: {tools}",
        }
        results["datasets"][name] = s
        print(f"\n== {name} (repeat {args.repeat}, generated in {gen_s:.1f}s)")
        for k in ("raw_read", "raw_read_find_only", "ddsvault_backup", "ddsvault_backup_seen", "ddsvault_restore",
                  "ddsvault_restore_seen", "raw_write", "mongodump_plain", "mongodump_gzip",
                  "mongorestore", "ddsvault_backup_peak_rss_mb", "raw_read_cpu_ferretdb", "raw_read_cpu_own",
                  "ddsvault_backup_cpu_ferretdb", "ddsvault_backup_cpu_own", "ddsvault_backup_polls",
                  "ddsvault_restore_polls"):
            v = s[k]
            print(f"  {k:30s} " + (f"min {v['min']:.2f}  median {v['median']:.2f}" if v else "n/a"))
        for k, v in s["ratios"].items():
            print(f"  {k:30s} {v if isinstance(v, str) else f'{v:.2f}'}")
    print(f"\nload average: start {results['machine']['loadavg_start']}, end {list(os.getloadavg())}")
    print(f"wrote {write_result('run', results, args.out)}")


if __name__ == "__main__":
    main()
