#!/usr/bin/env python3
"""Physical and Snapshot backup benchmark (run on demand, not in CI).

On a FerretDB (SQLite backend) holding --mb MB of documents, measures with the release binary:
  - `cat` of the database files to /dev/null (the limit: the same bytes read once, page cache warm as for ddsvault);
  - a durable copy of the same files into the repository's filesystem (read, write, fsync): what storing them costs at
    the least, since a backup is only Success once its bytes are on disk;
  - a Physical backup (CreateBackup through the official SDK until the job is recorded Success: run.JobClock);
  - a full Snapshot, then ~1% of the documents changed (new documents + scattered updates), then a second Snapshot:
    time and stored bytes (DescribeBackupStorage) of the increment against the full one.

  .stack/venv/bin/python bench/physical.py --mb 200 --repeat 2
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
    def __init__(self, workdir: Path, iid: str, uri: str, data_path: Path):
        super().__init__(workdir, {iid: (uri, data_path)})

    def backup(self, iid: str, method: str):
        secs, self.last_id, _ = run.timed_backup(self, iid, method)
        return secs

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "ddsvault"], cwd=REPO, check=True)
    base = Path(tempfile.mkdtemp(prefix="ddsvault-bench-physical-"))
    f = stack.FerretDB(base / "src", repl_set_name="rs0")
    rng = random.Random(11)
    n = a.mb * 1024 // 2  # ~2 KiB documents
    coll = f.client().bench.docs
    for start in range(0, n, 5000):
        coll.insert_many([{"_id": i, "pad": rng.randbytes(700).hex(), "n": i} for i in range(start, min(n, start + 5000))])
    files = sorted(str(p) for p in f.data_dir.glob("*.sqlite"))
    size = sum(os.path.getsize(p) for p in files)
    server = Server(base / "svc", "dds-bench", f.uri, f.data_dir)
    try:
        cat, copy, phys = [], [], []
        copy_dir = base / "svc" / "copy"
        for _ in range(a.repeat):
            t0 = time.monotonic()
            subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
            cat.append(time.monotonic() - t0)
            copy_dir.mkdir(parents=True, exist_ok=True)
            t0 = time.monotonic()
            for p in files:
                # read + write, not `cp`: cp may clone the extents (reflink) and copy nothing.
                with open(p, "rb") as src, open(copy_dir / Path(p).name, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
                    dst.flush()
                    os.fsync(dst.fileno())
            copy.append(time.monotonic() - t0)
            for p in copy_dir.iterdir():
                p.unlink()
            phys.append(server.backup("dds-bench", "Physical"))
        phys_id = server.last_id
        before = server.stored("dds-bench")
        full_t = server.backup("dds-bench", "Snapshot")
        full_b = server.stored("dds-bench") - before
        c = f.client().bench.docs
        k = n // 100
        c.insert_many([{"_id": n + i, "pad": rng.randbytes(700).hex(), "n": i} for i in range(k * 9 // 10)])
        for i in range(0, n, max(1, n // (k // 10 or 1))):
            c.update_one({"_id": i}, {"$set": {"changed": True}})
        mid = server.stored("dds-bench")
        inc_t = server.backup("dds-bench", "Snapshot")
        inc_b = server.stored("dds-bench") - mid
        restore_phys = server.restore_to_dir(phys_id, base / "restored-physical")
        restore_snap = server.restore_to_dir(server.last_id, base / "restored-snapshot")
    finally:
        server.stop()
        f.stop()
    med = statistics.median
    print(f"data files: {size / 2**20:.0f} MiB in {len(files)} file(s)")
    print(f"cat: min {min(cat):.2f}s median {med(cat):.2f}s; Physical: min {min(phys):.2f}s median {med(phys):.2f}s; "
          f"cat/Physical throughput ratio {min(cat) / min(phys):.2f} (>= 0.9 is the target)")
    print(f"durable copy (read + write + fsync): min {min(copy):.2f}s median {med(copy):.2f}s; "
          f"copy/Physical throughput ratio {min(copy) / min(phys):.2f}")
    print(f"Snapshot full: {full_t:.2f}s, {full_b / 2**20:.1f} MiB stored; after ~1% change: {inc_t:.2f}s "
          f"({100 * inc_t / full_t:.0f}%), {inc_b / 2**20:.2f} MiB stored ({100 * inc_b / full_b:.1f}%)")
    print(f"restore --to-dir: Physical {restore_phys:.2f}s, Snapshot {restore_snap:.2f}s "
          f"(durable copy of the same files: {min(copy):.2f}s)")


if __name__ == "__main__":
    main()
