#!/usr/bin/env python3
"""How late can a FerretDB oplog entry become visible? (measures the log backup's settle time, docs/pitr.md)

FerretDB (v1.24, internal/backends/decorators/oplog) performs the data write, then takes `time.Now()` for the
entry's `ts` and `wall`, then inserts the entry into `local.oplog.rs`. An entry with `ts` in second S can therefore
become visible after S is over; ddsvault's follower must not take second S before every entry of it is visible
(`[log_backup] settle_ms`). This measures that delay on a real FerretDB with its oplog:

* `--writers` synchronous clients write (inserts, `$set` updates, deletes) at `--rate` ops/s in total, for
  `--seconds` s;
* an observer reads the newest `--window` entries in insertion order (`$natural: -1`; an entry's insertion position
  is its commit order, so a late entry is among the newest when it appears) every `--poll-ms` ms and records, for
  each entry, the first read that returned it;
* an entry's delay = (end of the first read that returned it) - `wall` (an upper bound: it includes the read and up
  to one poll interval), and its lateness = that end - (`ts.time` + 1): how long after its second was over it
  became visible (negative: before). Also the lower bound (start of the previous read - `wall`).

The settle time must exceed the maximum lateness (and the follower's own clock reading, `hello.localTime`, is the
same clock). Every entry written must have been observed (a window too small for the rate is reported).

  .stack/venv/bin/python bench/oplog_visibility.py --seconds 60 --writers 1 --rate 100
  .stack/venv/bin/python bench/oplog_visibility.py --seconds 60 --writers 4 --rate 400

Writes bench/results/<UTC time>-oplog-visibility.json and prints a table.
"""
from __future__ import annotations

import argparse
import os
import random
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


def key_of(d) -> tuple:
    o, o2 = d.get("o") or {}, d.get("o2") or {}
    if d.get("op") == "u":
        return ("u", o2.get("_id"), (o.get("$set") or {}).get("v"))
    return (d.get("op"), o.get("_id"), None)


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(-(-len(s) * p // 100)) - 1))] if s else None


def writer(client, k: int, rate: float, until: float, counts: list, errors: list, ends: dict):
    db = client.app
    rng = random.Random(k)
    ids, nxt = [], k * 10_000_000
    start = time.time()
    n = 0
    try:
        while time.time() < until:
            r = rng.random()
            if r < 0.5 or len(ids) < 5:
                db.items.insert_one({"_id": nxt, "v": 0})
                ends[("i", nxt, None)] = time.time()
                ids.append(nxt)
                nxt += 1
            elif r < 0.8:
                i, v = rng.choice(ids), k * 10_000_000 + n
                db.items.update_one({"_id": i}, {"$set": {"v": v}})
                ends[("u", i, v)] = time.time()
            else:
                i = ids.pop(rng.randrange(len(ids)))
                db.items.delete_one({"_id": i})
                ends[("d", i, None)] = time.time()
            n += 1
            pause = start + n / rate - time.time()
            if pause > 0:
                time.sleep(pause)
    except Exception as e:  # noqa: BLE001 - reported
        errors.append(e)
    counts[k] = n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--writers", type=int, default=1)
    ap.add_argument("--rate", type=float, default=100, help="operations per second, all writers together")
    ap.add_argument("--poll-ms", type=float, default=10)
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    results = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": run.machine(),
               "command": sys.argv[1:],
               "settings": {"seconds": a.seconds, "writers": a.writers, "rate": a.rate, "poll_ms": a.poll_ms,
                            "window": a.window}}
    base = Path(tempfile.mkdtemp(prefix="ddsvault-bench-oplogvis-"))
    src = stack.FerretDB(base / "src", repl_set_name="rs0", create_oplog=True)
    try:
        obs = src.client().local["oplog.rs"]
        seen = {}  # _id -> (ts.time, wall seconds, previous read start, read end)
        until = time.time() + a.seconds
        counts, errors, ends = [0] * a.writers, [], {}
        threads = [threading.Thread(target=writer, args=(src.client(), k, a.rate / a.writers, until, counts, errors,
                                                         ends),
                                    daemon=True) for k in range(a.writers)]
        prev_start = time.time()
        for t in threads:
            t.start()
        reads, overflow = 0, 0
        while any(t.is_alive() for t in threads) or reads < 3:
            t0 = time.time()
            docs = list(obs.find({}).sort("$natural", -1).limit(a.window))
            t1 = time.time()
            reads += 1
            new = 0
            for d in docs:
                if d["_id"] not in seen:
                    new += 1
                    seen[d["_id"]] = (d["ts"].time, d["wall"].timestamp(), prev_start, t1, key_of(d))
            if new == len(docs) and reads > 1:
                overflow += 1  # every entry of the window was new: some may have been missed
            prev_start = t0
            if not any(t.is_alive() for t in threads):
                reads = max(reads, 3)
            time.sleep(a.poll_ms / 1000)
        for _ in range(3):  # the last entries
            for d in obs.find({}).sort("$natural", -1).limit(a.window):
                seen.setdefault(d["_id"], (d["ts"].time, d["wall"].timestamp(), prev_start, time.time(), key_of(d)))
        if errors:
            raise errors[0]
        total = obs.count_documents({})
    finally:
        src.stop()
    # The tightest upper bound of when an entry became visible: the end of the first read that returned it, or the
    # end of the client's call that wrote it (FerretDB inserts the entry before it answers).
    visible = [(ts, wall, ps, min(end, ends.get(key, end))) for ts, wall, ps, end, key in seen.values()]
    matched = sum(1 for *_, key in seen.values() if key in ends)
    delays = [end - wall for _, wall, _, end in visible]
    lower = [max(0.0, ps - wall) for _, wall, ps, _ in visible]
    late = [end - (ts + 1) for ts, _, _, end in visible]
    ops = sum(counts)
    results.update({
        "writer_ops": ops, "entries_observed": len(seen), "entries_matched_to_a_call": matched, "entries_in_oplog": total, "window_overflows": overflow,
        "delay_upper_seconds": {"p50": pct(delays, 50), "p99": pct(delays, 99), "p999": pct(delays, 99.9),
                                "max": max(delays)},
        "delay_lower_seconds": {"p99": pct(lower, 99), "max": max(lower)},
        "lateness_after_second_end_seconds": {"max": max(late), "entries_after_their_second": sum(x > 0 for x in late)},
    })
    d = results["delay_upper_seconds"]
    print(f"\n== oplog visibility: {a.writers} writer(s), {ops} ops in {a.seconds:.0f} s ({ops / a.seconds:.0f}/s); "
          f"{len(seen)} of {total} entries observed ({matched} matched to the call that wrote them); window "
          f"overflows {overflow}")
    print(f"  delay wall -> visible (upper bound)  p50 {d['p50'] * 1000:.0f} ms  p99 {d['p99'] * 1000:.0f} ms  "
          f"p99.9 {d['p999'] * 1000:.0f} ms  max {d['max'] * 1000:.0f} ms;  lower bound max "
          f"{results['delay_lower_seconds']['max'] * 1000:.0f} ms")
    print(f"  visible after its second was over: {results['lateness_after_second_end_seconds']['entries_after_their_second']}"
          f" entries, at most {max(late) * 1000:.0f} ms after")
    print(f"load average: start {results['machine']['loadavg_start']}, end {list(os.getloadavg())}")
    print(f"wrote {run.write_result('oplog-visibility', results, a.out)}")


if __name__ == "__main__":
    main()
