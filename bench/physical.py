#!/usr/bin/env python3
"""Physical and Snapshot backup benchmark (run on demand, not in CI).

On a FerretDB (SQLite backend) holding --mb MB of documents, measures with the release binary:
  - `cat` of the database files to /dev/null (the limit: the same bytes read once, page cache warm as for ddsvault);
  - a durable copy of the same files into the repository's filesystem (read, write, fsync): what storing them costs at
    the least, since a backup is only Success once its bytes are on disk;
  - a Physical backup (CreateBackup through the official SDK until the job is recorded Success: run.JobClock);
  - a full Snapshot, then ~1% of the documents changed (new documents + scattered updates), then a second Snapshot:
    time and stored bytes (DescribeBackupStorage) of the increment against the full one.

  nice -n -10 .stack/venv/bin/python bench/physical.py --mb 100 --repeat 3 [--label before]
  (DDSVAULT_BENCH_BIN=/path/to/ddsvault measures another build, e.g. the one before a change.)

Each round uses a fresh instance id for its two snapshots (so the first one starts from an empty chunk store) and
changes ~1% of the documents between them; medians of the rounds are printed and written, with the load average
and the machine, to bench/results/<UTC time>-physical.json.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "blackbox"))

sys.path.insert(0, str(REPO / "bench"))

import run  # noqa: E402
import stack  # noqa: E402


class Server(run.Server):
    def __init__(self, workdir: Path, instances: dict):
        super().__init__(workdir, instances)

    def backup(self, iid: str, method: str):
        """Seconds from CreateBackup to the job's Success commit (`JobClock.committed_seconds`; before 2026-12-07
        this was to `finished_at`, the end of the image, which left out the index, checks and manifest)."""
        secs, self.last_id, clock = run.timed_backup(self, iid, method)
        assert clock.committed is not None, "no 'job succeeded' line in the service log"
        return clock.committed

    def details(self, backup_id) -> dict:
        """The catalog's details of a backup (chunks, chunks_new, chunks_unchanged, chunking…)."""
        import json
        import sqlite3

        con = sqlite3.connect(f"file:{self.dir / 'data' / 'catalog.db'}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT details FROM backups WHERE id = ?", (int(backup_id),)).fetchone()
        finally:
            con.close()
        return json.loads(row[0]) if row else {}

    def restore_to_dir(self, backup_id: str, target: Path) -> float:
        """`ddsvault restore --to-dir`: the files materialized and checked against the manifest, then synced."""
        t0 = time.monotonic()
        subprocess.run([str(run.BIN), "restore", "--config", str(self.dir / "c.toml"), "--backup-id", backup_id,
                        "--to-dir", str(target)], check=True, capture_output=True)
        return time.monotonic() - t0

    def stored(self, iid: str) -> int:
        from alibabacloud_dds20151201 import models as dds

        return self.tea.describe_backup_storage(dds.DescribeBackupStorageRequest(dbinstance_id=iid)).body \
            .full_storage_size

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


def change_one_percent(coll, rng, n: int, next_id: int) -> int:
    """~1% of the documents changed: 0.9% new documents, 0.1% scattered updates. Returns the next free _id."""
    k = n // 100
    coll.insert_many([{"_id": next_id + i, "pad": rng.randbytes(700).hex(), "n": i} for i in range(k * 9 // 10)])
    for i in range(0, n, max(1, n // (k // 10 or 1))):
        coll.update_one({"_id": i}, {"$set": {"changed": rng.random()}})
    return next_id + k * 9 // 10


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported (>= 3 on a shared machine)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--label", default="", help="recorded in the result, e.g. 'before' / 'after'")
    ap.add_argument("--out", default=None, help="default: bench/results/<UTC time>-physical.json")
    a = ap.parse_args()
    if not a.no_build and "DDSVAULT_BENCH_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--release", "-p", "ddsvault"], cwd=REPO, check=True)
    results = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": run.machine(),
               "command": sys.argv[1:], "label": a.label, "binary": str(run.BIN)}
    base = Path(tempfile.mkdtemp(prefix="ddsvault-bench-physical-"))
    f = stack.FerretDB(base / "src", repl_set_name="rs0")
    rng = random.Random(11)
    n = a.mb * 1024 // 2  # ~2 KiB documents
    coll = f.client().bench.docs
    for start in range(0, n, 5000):
        coll.insert_many([{"_id": i, "pad": rng.randbytes(700).hex(), "n": i} for i in range(start, min(n, start + 5000))])
    files = sorted(str(p) for p in f.data_dir.glob("*.sqlite"))
    size = sum(os.path.getsize(p) for p in files)
    # One instance per round for the snapshots, so every round's first snapshot starts from an empty chunk store.
    instances = {"dds-bench": (f.uri, f.data_dir)}
    instances.update({f"dds-snap{i}": (f.uri, f.data_dir) for i in range(a.repeat)})
    server = Server(base / "svc", instances)
    r = {k: [] for k in ("cat", "copy", "physical", "snapshot_full", "snapshot_full_bytes", "snapshot_inc",
                         "snapshot_inc_bytes", "restore_physical", "restore_snapshot")}
    inc_details = []
    next_id = n
    try:
        copy_dir = base / "svc" / "copy"
        for i in range(a.repeat):
            t0 = time.monotonic()
            subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
            r["cat"].append(time.monotonic() - t0)
            copy_dir.mkdir(parents=True, exist_ok=True)
            t0 = time.monotonic()
            for p in files:
                # read + write, not `cp`: cp may clone the extents (reflink) and copy nothing.
                with open(p, "rb") as src, open(copy_dir / Path(p).name, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
                    dst.flush()
                    os.fsync(dst.fileno())
            r["copy"].append(time.monotonic() - t0)
            for p in copy_dir.iterdir():
                p.unlink()
            r["physical"].append(server.backup("dds-bench", "Physical"))
            phys_id = server.last_id
            iid = f"dds-snap{i}"
            r["snapshot_full"].append(server.backup(iid, "Snapshot"))
            r["snapshot_full_bytes"].append(server.stored(iid))
            next_id = change_one_percent(f.client().bench.docs, rng, n, next_id)
            r["snapshot_inc"].append(server.backup(iid, "Snapshot"))
            r["snapshot_inc_bytes"].append(server.stored(iid) - r["snapshot_full_bytes"][-1])
            inc_details.append(server.details(server.last_id))
            r["restore_physical"].append(server.restore_to_dir(phys_id, base / f"restored-physical{i}"))
            r["restore_snapshot"].append(server.restore_to_dir(server.last_id, base / f"restored-snapshot{i}"))
    finally:
        server.stop()
        f.stop()
    med = statistics.median
    ratios = {
        # Throughput ratios (>= 0.9 is the target): the reference's time over the backup's.
        "cat_vs_physical_throughput": med(r["cat"]) / med(r["physical"]),
        "durable_copy_vs_physical_throughput": med(r["copy"]) / med(r["physical"]),
        # Per round, then the median (<= 0.05 is the target for both).
        "snapshot_inc_vs_full_time": med([x / y for x, y in zip(r["snapshot_inc"], r["snapshot_full"])]),
        "snapshot_inc_vs_full_bytes": med([x / y for x, y in zip(r["snapshot_inc_bytes"], r["snapshot_full_bytes"])]),
    }
    results.update({"data_file_bytes": size, "data_files": len(files), "rounds": a.repeat,
                    "seconds_and_bytes": {k: run.summary(v) for k, v in r.items()}, "ratios": ratios,
                    "snapshot_inc_details": inc_details})
    print(f"data files: {size / 2**20:.0f} MiB in {len(files)} file(s); {a.repeat} rounds, medians")
    print(f"cat {med(r['cat']):.2f}s; durable copy (read + write + fsync) {med(r['copy']):.2f}s; "
          f"Physical {med(r['physical']):.2f}s: throughput {ratios['cat_vs_physical_throughput']:.2f}x cat's, "
          f"{ratios['durable_copy_vs_physical_throughput']:.2f}x the durable copy's (>= 0.9 is the target)")
    print(f"Snapshot full {med(r['snapshot_full']):.2f}s, {med(r['snapshot_full_bytes']) / 2**20:.1f} MiB stored; "
          f"after ~1% change {med(r['snapshot_inc']):.2f}s ({100 * ratios['snapshot_inc_vs_full_time']:.1f}%), "
          f"{med(r['snapshot_inc_bytes']) / 2**20:.2f} MiB stored ({100 * ratios['snapshot_inc_vs_full_bytes']:.1f}%)")
    print(f"restore --to-dir: Physical {med(r['restore_physical']):.2f}s, Snapshot {med(r['restore_snapshot']):.2f}s")
    print(f"load average: start {results['machine']['loadavg_start']}, end {list(os.getloadavg())}")
    print(f"wrote {run.write_result('physical', results, a.out)}")


if __name__ == "__main__":
    main()
