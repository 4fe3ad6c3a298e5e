#!/usr/bin/env python3
"""Point-in-time recovery benchmark (issue 20's speed targets; run on demand, not in CI).

A FerretDB started with `--repl-set-name` and a capped `local.oplog.rs` (as tests/blackbox/test_pitr.py does), a
release ddsvault following it (`ModifyBackupPolicy EnableBackupLog=1`, `[log_backup] slice_secs` / `poll_ms` /
`settle_ms` from the flags), a Logical base backup, then:
  1. Follower lag: a writer at --rate ops/s for --seconds s (inserts, updates, deletes, a second collection, as the
     test's writer) records when each operation started and ended; a monitor reads the catalog's `log_slices` index
     (read-only SQLite, every 50 ms). An operation's lag is the time from its end to the `created_at` of the first
     indexed slice that covers its second (the slice is stored in the repository before it is indexed). Its second
     is that of its start when start and end fall in the same second, else the second of its end (later, so the
     lag can only be overstated). Target: p99 <= 2 s.
  2. RPO: at each monitor sample, the span of writes not yet in an indexed slice (now minus the end of the last
     slice's second); its maximum is the data a loss of the source would lose at worst at this rate and settings.
  3. Replay rate: --replay-docs more documents inserted in batches; a RestoreDBInstance with RestoreTime at the
     last second (base restore + replay of every oplog entry since the base backup) is timed against a restore of
     the base backup alone; replay seconds = the difference. The limit is the server's insert floor, the same
     harness as bench/run.py's restore limit (crates/mongo/examples/raw_write.rs: the final documents, held in
     memory, inserted with the restore's batches and parallelism): replay seconds per entry against raw_write's
     seconds per document. The restored data is compared with the source (counts and documents of every
     collection) so a fast wrong replay cannot pass.

  nice -n -10 .stack/venv/bin/python bench/pitr.py --seconds 60 --rate 100 --slice-secs 1 --poll-ms 200
  .stack/venv/bin/python bench/pitr.py --slice-secs 60 --poll-ms 1000 --seconds 180    # the default settings

Writes bench/results/<UTC time>-pitr.json and prints a table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "blackbox"))
sys.path.insert(0, str(REPO / "bench"))

import run  # noqa: E402
import stack  # noqa: E402


def fmt(secs: int) -> str:
    return datetime.datetime.fromtimestamp(secs, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, -(-len(s) * p // 100) - 1))] if s else None


class Monitor(threading.Thread):
    """Reads the catalog's slice index every 50 ms: for each slice, the second its `end_incl` reaches and when it
    was indexed; for each sample, the wall time and the last stored second."""

    def __init__(self, catalog: Path, instance: str):
        super().__init__(daemon=True)
        self.catalog, self.instance = catalog, instance
        self.slices = {}  # end second -> created_at (s)
        self.samples = []  # (wall time, last stored second)
        self.stop_flag = threading.Event()

    def run(self):
        con = None
        while not self.stop_flag.is_set():
            try:
                if con is None:
                    con = sqlite3.connect(f"file:{self.catalog}?mode=ro", uri=True)
                rows = con.execute("SELECT end_incl, created_at FROM log_slices WHERE instance_id = ?",
                                   (self.instance,)).fetchall()
                now = time.time()
                for end, created in rows:
                    self.slices.setdefault(end >> 32, created / 1000)
                if rows:
                    self.samples.append((now, max(e >> 32 for e, _ in rows)))
            except sqlite3.Error:
                con = None
            time.sleep(0.05)

    def covered_at(self, second: int):
        """When the first slice covering `second` was indexed (None: not yet)."""
        ends = [e for e in self.slices if e >= second]
        return self.slices[min(ends)] if ends else None


class Writer(threading.Thread):
    """Inserts (40%), updates (35%), deletes (15%) in app.items and inserts into app.later (10%) at `rate` ops/s,
    paced by a schedule (not a fixed sleep), recording (start, end) of each operation."""

    def __init__(self, client, rate: float, seconds: float, first_id: int):
        super().__init__(daemon=True)
        self.db = client.app
        self.rate, self.seconds = rate, seconds
        self.ids = list(range(first_id))
        self.next_id, self.later = first_id, 0
        self.ops = []
        self.error = None
        self.rng = random.Random(20)

    def op(self):
        r = self.rng.random()
        if r < 0.4 or len(self.ids) < 5:
            self.db.items.insert_one({"_id": self.next_id, "v": 0})
            self.ids.append(self.next_id)
            self.next_id += 1
        elif r < 0.75:
            self.db.items.update_one({"_id": self.rng.choice(self.ids)}, {"$set": {"v": self.rng.randrange(1000)}})
        elif r < 0.9:
            k = self.ids.pop(self.rng.randrange(len(self.ids)))
            self.db.items.delete_one({"_id": k})
        else:
            self.db.later.insert_one({"_id": self.later, "w": self.rng.randrange(1000)})
            self.later += 1

    def run(self):
        try:
            t0 = time.time()
            k = 0
            while time.time() < t0 + self.seconds:
                due = t0 + k / self.rate
                if due > time.time():
                    time.sleep(due - time.time())
                start = time.time()
                self.op()
                self.ops.append((start, time.time()))
                k += 1
        except Exception as e:  # noqa: BLE001 - reported by main
            self.error = e


def v1_call(server, action, **params):
    from aliyunsdkcore.client import AcsClient
    from aliyunsdkcore.request import CommonRequest

    acs = AcsClient(run.AK[0], run.AK[1], "cn-hangzhou", port=server.port, timeout=600)
    req = CommonRequest(domain="127.0.0.1", version="2015-12-01", action_name=action, product="Dds")
    req.set_method("POST")
    for k, v in params.items():
        req.add_query_param(k, v)
    return json.loads(acs.do_action_with_exception(req))


def timed_restore(server, dst_client, **params) -> float:
    """RestoreDBInstance into an emptied `dst`, timed like run.timed_restore (JobClock: to the job's finished_at)."""
    dst_client.drop_database("app")
    clock = run.JobClock(server)
    job = v1_call(server, "RestoreDBInstance", DBInstanceId="src", TargetDBInstanceId="dst", DropExisting="true",
                  **params)["RestoreJobId"]
    while True:
        j = v1_call(server, "DescribeRestoreTasks", DBInstanceId="dst", RestoreJobId=job)["RestoreJobs"][0]
        if j["Status"] in ("Success", "Failed"):
            assert j["Status"] == "Success", j
            return clock.seconds(job)
        clock.pause()


def state_of(client):
    db = client.app
    return {c: sorted(((d["_id"], json.dumps(d, sort_keys=True, default=str)) for d in db[c].find()))
            for c in db.list_collection_names()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60, help="how long the writer runs")
    ap.add_argument("--rate", type=float, default=100, help="writer operations per second")
    ap.add_argument("--slice-secs", type=int, default=1, help="[log_backup] slice_secs (ddsvault's default: 60)")
    ap.add_argument("--poll-ms", type=int, default=200, help="[log_backup] poll_ms (ddsvault's default: 1000)")
    ap.add_argument("--settle-ms", type=int, default=None,
                    help="[log_backup] settle_ms (default: ddsvault's own, 750; see bench/oplog_visibility.py)")
    ap.add_argument("--replay-docs", type=int, default=20000, help="documents inserted for the replay measure")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--lag-only", action="store_true",
                    help="measure the follower lag and the RPO only (no replay, no insert floor: e.g. with a debug "
                         "build through DDSVAULT_BENCH_BIN, where replay figures would mean nothing)")
    ap.add_argument("--prefill", type=int, default=0,
                    help="oplog entries written before log backup starts (FerretDB 1.24 scans the whole oplog on every read)")
    ap.add_argument("--out", default=None, help="default: bench/results/<UTC time>-pitr.json")
    a = ap.parse_args()
    if not a.no_build:
        run.build()
    results = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": run.machine(),
               "command": sys.argv[1:], "binary": str(run.BIN), "lag_only": a.lag_only,
               "settings": {"slice_secs": a.slice_secs, "poll_ms": a.poll_ms, "settle_ms": a.settle_ms or "default",
                            "rate": a.rate, "seconds": a.seconds,
                            "replay_docs": a.replay_docs, "prefill": a.prefill}}
    base = Path(tempfile.mkdtemp(prefix="ddsvault-bench-pitr-"))
    src = stack.FerretDB(base / "src", repl_set_name="rs0", create_oplog=True)
    dst = stack.FerretDB(base / "dst", repl_set_name="rs0")
    floor_dst = stack.FerretDB(base / "floor", repl_set_name="rs0")
    src.client().app.items.insert_many([{"_id": i, "v": 0} for i in range(100)])
    for start in range(0, a.prefill, 1000):
        src.client().app.prefill.insert_many([{"_id": i} for i in range(start, min(a.prefill, start + 1000))])
    srv = run.Server(base / "svc", {"src": src.uri, "dst": dst.uri},
                     extra=f"[log_backup]\nslice_secs = {a.slice_secs}\npoll_ms = {a.poll_ms}"
                           + (f"\nsettle_ms = {a.settle_ms}" if a.settle_ms else ""))
    try:
        from alibabacloud_dds20151201 import models as dds

        srv.tea.modify_backup_policy(dds.ModifyBackupPolicyRequest(dbinstance_id="src", enable_backup_log=1,
                                                                   log_backup_retention_period=7))
        time.sleep(3)
        _, base_id, _ = run.timed_backup(srv, "src")
        mon = Monitor(srv.dir / "data" / "catalog.db", "src")
        mon.start()
        time.sleep(2)

        # 1 + 2: lag and RPO at the writer's rate.
        writer = Writer(src.client(), a.rate, a.seconds, 100)
        t_writer = time.time()
        writer.start()
        writer.join(a.seconds + 120)
        if writer.error:
            raise writer.error
        last = int(writer.ops[-1][1])
        deadline = time.time() + a.slice_secs + 120
        while mon.covered_at(last) is None and time.time() < deadline:
            time.sleep(0.1)
        lags, uncovered = [], 0
        for start, end in writer.ops:
            second = int(start) if int(start) == int(end) else int(end)
            at = mon.covered_at(second)
            if at is None:
                uncovered += 1
            else:
                lags.append(at - end)
        rpo = [t - (s + 1) for t, s in mon.samples if t_writer <= t <= writer.ops[-1][1]]
        achieved = len(writer.ops) / (writer.ops[-1][1] - writer.ops[0][0])

        slices = len(mon.slices)
        if a.lag_only:
            mon.stop_flag.set()
        else:
            # 3: replay rate. Bulk inserts after the writer, then restore to the last second.
            db = src.client().app
            for k in range(0, a.replay_docs, 1000):
                db.bulk.insert_many([{"_id": i, "pad": "p" * 200, "n": i}
                                     for i in range(k, min(a.replay_docs, k + 1000))])
            end_second = int(time.time())
            time.sleep(1.1)  # the restore second must be over
            deadline = time.time() + a.slice_secs + 120
            while mon.covered_at(end_second) is None and time.time() < deadline:
                time.sleep(0.1)
            mon.stop_flag.set()
            from bson import Timestamp

            entries = src.client().local["oplog.rs"].count_documents(
                {"ts": {"$gte": Timestamp(int(t_writer), 0), "$lte": Timestamp(end_second, 2**32 - 1)}})
            ok = v1_call(srv, "CheckRecoveryCondition", SourceDBInstance="src", RestoreTime=fmt(end_second),
                         RestoreType="1")
            assert ok["IsValid"] is True, ok
            t_base = timed_restore(srv, dst.client(), BackupId=base_id)
            t_pitr = timed_restore(srv, dst.client(), RestoreTime=fmt(end_second))
            exact = state_of(dst.client()) == state_of(src.client())
            assert exact, "the point-in-time restore differs from the source"
            out = subprocess.run([str(run.RAW_WRITE), src.uri, floor_dst.uri], capture_output=True, text=True,
                                 check=True)
            floor = json.loads(out.stdout)
            replay = t_pitr - t_base
        peak = srv.peak_rss_mb()
    finally:
        srv.stop()
        for f in (src, dst, floor_dst):
            f.stop()
    results.update({
        "writer": {"ops": len(writer.ops), "achieved_ops_per_s": achieved, "uncovered_ops": uncovered},
        "lag_seconds": {"p50": pct(lags, 50), "p90": pct(lags, 90), "p99": pct(lags, 99), "max": max(lags),
                        "min": min(lags), "mean": statistics.mean(lags)},
        "rpo_seconds": {"max": max(rpo), "p99": pct(rpo, 99), "median": pct(rpo, 50), "samples": len(rpo)},
        "slices_indexed": slices,
        "peak_rss_mb": peak,
        "targets_met": {"lag_p99_le_2s": pct(lags, 99) <= 2.0},
    })
    if not a.lag_only:
        per_entry, per_doc = replay / entries, floor["seconds"] / floor["documents"]
        results.update({
            "replay": {"entries": entries, "restore_pitr_seconds": t_pitr, "restore_base_only_seconds": t_base,
                       "replay_seconds": replay, "entries_per_second": entries / replay,
                       "restored_equals_source": exact},
            "insert_floor": {"documents": floor["documents"], "seconds": floor["seconds"],
                             "documents_per_second": floor["documents"] / floor["seconds"]},
            "ratios": {"replay_vs_insert_floor_time_per_item": per_entry / per_doc}})
    lag = results["lag_seconds"]
    print(f"\n== PITR: writer {len(writer.ops)} ops at {achieved:.0f} ops/s for {a.seconds:.0f} s; slice_secs "
          f"{a.slice_secs}, poll_ms {a.poll_ms}, settle_ms {a.settle_ms or 'default'}; {slices} slices indexed; "
          f"{a.prefill} oplog entries prefilled")
    print(f"  follower lag (write end -> slice indexed)  p50 {lag['p50']:.2f} s  p90 {lag['p90']:.2f} s  "
          f"p99 {lag['p99']:.2f} s  max {lag['max']:.2f} s  (target p99 <= 2 s: "
          f"{'met' if results['targets_met']['lag_p99_le_2s'] else 'NOT met'}); {uncovered} ops never covered")
    print(f"  RPO (writes not yet in an indexed slice, sampled every 50 ms)  max {max(rpo):.2f} s  "
          f"p99 {pct(rpo, 99):.2f} s  median {pct(rpo, 50):.2f} s")
    if not a.lag_only:
        print(f"  PITR restore {t_pitr:.2f} s = base restore {t_base:.2f} s + replay {replay:.2f} s of {entries} "
              f"entries ({entries / replay:.0f}/s); restored data equals the source: {exact}")
        print(f"  insert floor (raw_write) {floor['documents']} documents in {floor['seconds']:.2f} s "
              f"({floor['documents'] / floor['seconds']:.0f}/s); replay / floor per item "
              f"{results['ratios']['replay_vs_insert_floor_time_per_item']:.2f}x")
    print(f"  ddsvault peak RSS {peak:.0f} MB")
    print(f"load average: start {results['machine']['loadavg_start']}, end {list(os.getloadavg())}")
    print(f"wrote {run.write_result('pitr', results, a.out)}")


if __name__ == "__main__":
    main()
