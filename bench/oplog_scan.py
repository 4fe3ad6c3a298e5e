#!/usr/bin/env python3
"""What one read of FerretDB's oplog costs as it grows (why the log backup's lag grows with the oplog; docs/pitr.md).

FerretDB v1.24 (SQLite backend) answers a `find` on `local.oplog.rs` by reading every entry: neither the follower's
filter on `ts` nor a `$natural` sort with a limit is pushed down. This fills the oplog to 1,000 / 5,000 / 20,000
entries and times the three reads the follower does: entries after a `ts` (sorted by `$natural`), the newest 200
by `$natural: -1`, the oldest one (`$natural: 1`, limit 1).

  .stack/venv/bin/python bench/oplog_scan.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "blackbox"))

import stack  # noqa: E402
from bson import Timestamp  # noqa: E402


def main():
    base = Path(tempfile.mkdtemp(prefix="ddsvault-bench-oplogscan-"))
    src = stack.FerretDB(base / "src", repl_set_name="rs0", create_oplog=True)
    try:
        c = src.client()
        oplog = c.local["oplog.rs"]
        for n in (1000, 5000, 20000):
            for _ in range(oplog.estimated_document_count(), n, 500):
                c.app.x.insert_many([{"p": i} for i in range(500)])
            newest = next(iter(oplog.find().sort("$natural", -1).limit(1)))["ts"]
            t = time.time()
            got = list(oplog.find({"ts": {"$gt": Timestamp(newest.time, 0)}}).sort("$natural", 1))
            by_ts = time.time() - t
            t = time.time()
            list(oplog.find({}).sort("$natural", -1).limit(200))
            newest200 = time.time() - t
            t = time.time()
            list(oplog.find({}).sort("$natural", 1).limit(1))
            oldest = time.time() - t
            print(f"{n:>6} entries: ts filter {by_ts:.3f} s ({len(got)} returned) | $natural -1 limit 200 "
                  f"{newest200:.3f} s | $natural 1 limit 1 {oldest:.3f} s")
    finally:
        src.stop()


if __name__ == "__main__":
    main()
