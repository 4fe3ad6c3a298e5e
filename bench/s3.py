#!/usr/bin/env python3
"""S3 repository benchmark (issue 23's speed targets; run on demand, not in CI).

On a FerretDB holding --mb MB of incompressible documents (random bytes, so the archive that goes to S3 is about as
large as the data read: the upload is not hidden by compression), with a MinIO on loopback (tests/blackbox/stack.py
starts it as the black-box tests do: $STACK_DIR/bin/minio, temporary data directory, free port), measures with the
release binary, every round on a fresh ddsvault process:
  - a Logical backup into the S3 repository (CreateBackup through the official SDK until the job is recorded
    Success: run.JobClock) and the same backup into a local repository;
  - a bare multipart upload of the same bytes (the backup's archive, fetched back from MinIO) with boto3's low-level
    calls: CreateMultipartUpload, UploadPart with ddsvault's part size and parts in flight, CompleteMultipartUpload,
    checksums off (botocore's default CRC32 would be Python work ddsvault does not do);
  - the raw read of the same data (crates/mongo/examples/raw_read.rs), the other half of a streaming backup's floor;
  - peak RSS (VmHWM) of the ddsvault process that backed up to S3;
  - RestoreDBInstance from the S3 backup and from the local one into an emptied FerretDB.
Targets: logical backup upload throughput >= 0.8x the bare multipart upload's; peak RSS <= 100 MB while backing up
(the issue says 4 GB: `--mb 4096`); restore from S3 <= 1.1x restore from local.

  nice -n -10 .stack/venv/bin/python bench/s3.py --mb 256 --repeat 3
  nice -n -10 .stack/venv/bin/python bench/s3.py --mb 1024 --repeat 1 --no-restore    # the RSS figure

Writes bench/results/<UTC time>-s3.json (machine, load average at start and end, every round) and prints a table.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import shutil
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

BUCKET = "bench"


def gen_dataset(client, mb: int, seed: int = 23) -> int:
    """--mb MB of random-byte documents (1-64 KiB) in 4 collections of db `bench_s3`; returns the document count."""
    import bson

    rng = random.Random(seed)
    db = client.bench_s3
    written, i, batch = 0, 0, []
    while written < mb << 20:
        size = rng.choice((1024, 4096, 16384, 65536))
        batch.append({"_id": i, "n": i, "blob": bson.Binary(rng.randbytes(size))})
        written += size + 40
        i += 1
        if len(batch) == 200:
            db[f"c{i // 200 % 4}"].insert_many(batch)
            batch = []
    if batch:
        db["c0"].insert_many(batch)
    return i


def s3_client(minio):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=minio.endpoint, region_name="us-east-1",
                        aws_access_key_id=minio.USER, aws_secret_access_key=minio.PASSWORD,
                        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required", max_pool_connections=64))


def backup_objects(s3, prefix: str, backup_id: str) -> dict:
    """{key: size} of a backup's objects (archive, manifest...)."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/backups/src/{backup_id}/"):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["Size"]
    return out


def bare_multipart(s3, path: Path, key: str, part_size: int, in_flight: int) -> float:
    """Seconds to upload the file with CreateMultipartUpload / UploadPart (in_flight at once) / Complete. The file is
    read inside the timer, part by part, as ddsvault reads its archive stream."""
    t0 = time.monotonic()
    up = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    size = path.stat().st_size
    n = max(1, -(-size // part_size))

    def part(k: int) -> dict:
        with open(path, "rb") as f:
            f.seek(k * part_size)
            body = f.read(part_size)
        r = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=k + 1, Body=body)
        return {"PartNumber": k + 1, "ETag": r["ETag"]}

    with concurrent.futures.ThreadPoolExecutor(max_workers=in_flight) as pool:
        parts = list(pool.map(part, range(n)))
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up, MultipartUpload={"Parts": parts})
    return time.monotonic() - t0


def s3_repository(minio, prefix: str, part_mib: int, in_flight: int) -> str:
    return minio.repository_config(BUCKET, prefix, part_size_mib=part_mib, parts_in_flight=in_flight)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256, help="dataset size in MB (the issue's RSS target names 4096)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--part-mib", type=int, default=8, help="part_size_mib for ddsvault and the bare upload")
    ap.add_argument("--parts-in-flight", type=int, default=1, help="parts_in_flight for both (ddsvault's default 1)")
    ap.add_argument("--no-restore", action="store_true", help="backups and the bare upload only")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out", default=None, help="default: bench/results/<UTC time>-s3.json")
    a = ap.parse_args()
    if not stack.has_bin("minio"):
        sys.exit(f"{stack.bin('minio')} not found: run scripts/setup-stack.sh (scripts/setup-minio.sh)")
    if not a.no_build:
        run.build()
    results = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": run.machine(),
               "command": sys.argv[1:], "binary": str(run.BIN), "part_size_mib": a.part_mib,
               "parts_in_flight": a.parts_in_flight}
    base = Path(tempfile.mkdtemp(prefix="ddsvault-bench-s3-"))
    minio = stack.MinIO(base / "minio").start()
    # No object lock: the bare upload and ddsvault write the same kind of bucket, without lock headers.
    minio.bucket(BUCKET, object_lock=False)
    s3 = s3_client(minio)
    src = stack.FerretDB(base / "src", repl_set_name="rs0")
    dst = stack.FerretDB(base / "dst", repl_set_name="rs0")
    r = {k: [] for k in ("raw_read", "backup_s3", "backup_local", "bare_multipart", "archive_bytes",
                         "backup_s3_peak_rss_mb", "backup_local_peak_rss_mb", "restore_s3", "restore_local",
                         "backup_s3_cpu_own", "backup_local_cpu_own")}
    try:
        t0 = time.monotonic()
        docs = gen_dataset(src.client(), a.mb)
        results["generate_seconds"] = time.monotonic() - t0
        results["documents"] = docs
        results["data_file_bytes"] = sum(p.stat().st_size for p in src.data_dir.glob("*.sqlite"))
        for i in range(a.repeat):
            out = subprocess.run([str(run.RAW_READ), src.uri], capture_output=True, text=True, check=True)
            r["raw_read"].append(json.loads(out.stdout)["seconds"])

            prefix = f"round{i}"
            srv = run.Server(base / f"s3-{i}", {"src": src.uri, "dst": dst.uri},
                             extra=s3_repository(minio, prefix, a.part_mib, a.parts_in_flight))
            own = run.cpu_seconds(srv.proc.pid)
            secs, bid, _ = run.timed_backup(srv, "src")
            r["backup_s3_cpu_own"].append(run.cpu_seconds(srv.proc.pid) - own)
            r["backup_s3"].append(secs)
            r["backup_s3_peak_rss_mb"].append(srv.peak_rss_mb())
            objects = backup_objects(s3, prefix, bid)
            archive_key = max(objects, key=objects.get)
            r["archive_bytes"].append(objects[archive_key])
            if not a.no_restore:
                dst.client().drop_database("bench_s3")
                secs, _ = run.timed_restore(srv, "src", "dst", bid)
                r["restore_s3"].append(secs)
            srv.stop()

            # The same bytes, uploaded bare: the archive fetched back to a local file first (page cache warm).
            archive = base / "archive"
            s3.download_file(BUCKET, archive_key, str(archive))
            r["bare_multipart"].append(bare_multipart(s3, archive, f"bare/{i}", a.part_mib << 20, a.parts_in_flight))
            archive.unlink()

            loc = run.Server(base / f"local-{i}", {"src": src.uri, "dst": dst.uri})
            own = run.cpu_seconds(loc.proc.pid)
            secs, bid, _ = run.timed_backup(loc, "src")
            r["backup_local_cpu_own"].append(run.cpu_seconds(loc.proc.pid) - own)
            r["backup_local"].append(secs)
            r["backup_local_peak_rss_mb"].append(loc.peak_rss_mb())
            if not a.no_restore:
                dst.client().drop_database("bench_s3")
                secs, _ = run.timed_restore(loc, "src", "dst", bid)
                r["restore_local"].append(secs)
            loc.stop()
            shutil.rmtree(base / f"local-{i}", ignore_errors=True)
            print(f"round {i + 1}/{a.repeat}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in r.items() if v),
                  flush=True)
    finally:
        src.stop()
        dst.stop()
        minio.stop()
        shutil.rmtree(base, ignore_errors=True)

    med = lambda k: statistics.median(r[k]) if r[k] else None  # noqa: E731
    mib = med("archive_bytes") / 2**20
    ratios = {
        # Throughput over the same bytes: the bare upload's time over the backup's (>= 0.8 is the target).
        "backup_s3_vs_bare_multipart_throughput": med("bare_multipart") / med("backup_s3"),
        # A streaming backup cannot beat the slower of reading the data and uploading it: its floor here.
        "backup_s3_vs_floor_throughput": max(med("raw_read"), med("bare_multipart")) / med("backup_s3"),
        "backup_s3_vs_local_time": med("backup_s3") / med("backup_local"),
        "backup_s3_vs_raw_read_time": med("backup_s3") / med("raw_read"),
        "restore_s3_vs_local_time": (med("restore_s3") / med("restore_local")) if r["restore_s3"] else None,
    }
    results.update({"rounds": a.repeat, "seconds_and_bytes": {k: run.summary(v) for k, v in r.items()},
                    "ratios": ratios, "archive_mib_median": mib})
    rss = max(r["backup_s3_peak_rss_mb"])
    targets = {
        "upload_throughput_ge_0.8x_bare": ratios["backup_s3_vs_bare_multipart_throughput"] >= 0.8,
        "peak_rss_le_100mb": rss <= 100,
        "restore_s3_le_1.1x_local": (ratios["restore_s3_vs_local_time"] <= 1.1) if r["restore_s3"] else None,
    }
    results["targets_met"] = targets
    print(f"\n== S3 repository on MinIO (loopback), {a.mb} MB of random-byte documents ({docs} documents, data files "
          f"{results['data_file_bytes'] / 2**20:.0f} MiB), archive {mib:.0f} MiB, part {a.part_mib} MiB x "
          f"{a.parts_in_flight} in flight; {a.repeat} round(s), medians")
    rows = [("raw read (crates/mongo/examples/raw_read)", "raw_read"), ("Logical backup -> S3", "backup_s3"),
            ("Logical backup -> local repository", "backup_local"), ("bare multipart upload, same bytes",
                                                                     "bare_multipart"),
            ("restore from S3", "restore_s3"), ("restore from local", "restore_local")]
    print(f"  {'measure':44s} {'seconds':>9s} {'MiB/s of archive':>17s}")
    for label, k in rows:
        if r[k]:
            print(f"  {label:44s} {med(k):9.2f} {mib / med(k):17.1f}")
    print(f"  peak RSS backing up to S3: {rss:.0f} MB (local: {max(r['backup_local_peak_rss_mb']):.0f} MB)")
    for k, v in ratios.items():
        print(f"  {k:42s} {'n/a' if v is None else f'{v:.2f}'}")
    for k, v in targets.items():
        print(f"  target {k:35s} {'not measured' if v is None else ('met' if v else 'NOT met')}")
    print(f"load average: start {results['machine']['loadavg_start']}, end {list(os.getloadavg())}")
    print(f"wrote {run.write_result('s3', results, a.out)}")


if __name__ == "__main__":
    main()
