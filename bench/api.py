#!/usr/bin/env python3
"""ddsvault API latency benchmark (run on demand, not in CI).

Measures, with V3-signed calls from a Rust load generator (crates/server/examples/api_load.rs, one keep-alive
connection per client, a fresh nonce and signature per call):
  - DescribeBackups (PageSize 30, one instance) against a catalog holding --backups successful backups
    (seeded through the catalog trait by crates/catalog/examples/seed_backups.rs), with 1 and with --clients clients;
  - CreateBackup with --clients concurrent clients, each on its own instance (all pointing at one FerretDB holding a
    tiny database): the answers are a mix of accepted calls (a job is created) and BackupJobExists refusals while
    that instance's job runs; both are reported separately;
  - CreateBackup with --clients clients on instances that each hold a Running job of another node (seeded):
    BackupJobExists refusals only.
Targets (issue 7): DescribeBackups p99 <= 5 ms over 100,000 backups; CreateBackup p99 <= 10 ms with 64 clients.

  .stack/venv/bin/python bench/api.py                      # 100,000 backups, 64 clients, 10 s per run
  .stack/venv/bin/python bench/api.py --backups 20000 --seconds 5
  .stack/venv/bin/python bench/api.py --catalog postgres --shared-nonces on   # PostgreSQL catalog (throw-away
                                                                              # cluster), nonces in the catalog
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "blackbox"))
sys.path.insert(0, str(REPO / "bench"))

import stack  # noqa: E402
from run import AK, BIN, TARGET, Server, sh  # noqa: E402

SEED = TARGET / "release" / "examples" / "seed_backups"
LOAD = TARGET / "release" / "examples" / "api_load"


def build():
    sh("cargo", "build", "--release", "-p", "ddsvault", cwd=REPO)
    sh("cargo", "build", "--release", "-p", "ddsvault-catalog", "--example", "seed_backups", cwd=REPO)
    sh("cargo", "build", "--release", "-p", "ddsvault-server", "--example", "api_load", cwd=REPO)


def load(port: int, action: str, params: dict, clients: int, seconds: int) -> dict:
    args = [str(LOAD), "--addr", f"127.0.0.1:{port}", "--key", AK[0], "--secret", AK[1], "--action", action,
            "--clients", str(clients), "--seconds", str(seconds)]
    for k, v in params.items():
        args += ["--param", f"{k}={v}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def show(label: str, r: dict):
    o = r["overall"]
    print(f"  {label:44s} {o['calls']:7d} calls {r['calls_per_second']:8.0f}/s  p50 {o['p50_ms']:6.2f}  "
          f"p99 {o['p99_ms']:6.2f}  max {o['max_ms']:7.2f} ms")
    for code, s in r["by_code"].items():
        print(f"    {code:42s} {s['calls']:7d} calls            p50 {s['p50_ms']:6.2f}  p99 {s['p99_ms']:6.2f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backups", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--catalog", choices=("sqlite", "postgres"), default="sqlite",
                    help="postgres: a throw-away cluster started for the run (stack.PostgreSQL)")
    ap.add_argument("--shared-nonces", choices=("on", "off"), default=None,
                    help="[server] shared_nonces (default: the server's, on for postgres, off for sqlite)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / f"api-{int(time.time())}.json"))
    args = ap.parse_args()
    sh(str(REPO / "scripts" / "setup-stack.sh"))
    build()
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "loadavg_at_start": os.getloadavg()},
               "backups": args.backups, "clients": args.clients, "catalog": args.catalog,
               "shared_nonces": args.shared_nonces}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fdb = stack.FerretDB(tmp / "fdb", repl_set_name="rs0")
        fdb.client().app.c.insert_many([{"_id": i, "v": "x" * 100} for i in range(20)])
        data = tmp / "svc" / "data"
        data.mkdir(parents=True)
        pg = None
        url = f"sqlite://{data / 'catalog.db'}"
        top, server = [], []
        if args.catalog == "postgres":
            pg = stack.PostgreSQL(tmp / "pg")
            url = pg.create_database("bench")
            top.append(f'catalog_url = "{url}"')
        if args.shared_nonces is not None:
            server.append(f"shared_nonces = {'true' if args.shared_nonces == 'on' else 'false'}")
        t0 = time.monotonic()
        sh(str(SEED), url, "dds-bench", str(args.backups), "dds-busy-", str(args.clients))
        results["seed_seconds"] = time.monotonic() - t0
        instances = {"dds-bench": fdb.uri}
        instances.update({f"dds-load-{i}": fdb.uri for i in range(args.clients)})
        instances.update({f"dds-busy-{i}": fdb.uri for i in range(args.clients)})
        srv = Server(tmp / "svc", instances, top=top, server=server)
        try:
            print(f"\n== API latency ({args.backups} backups in the {args.catalog} catalog, shared nonces "
                  f"{args.shared_nonces or 'default'}, {os.cpu_count()} CPUs, load average "
                  f"{os.getloadavg()[0]:.1f}, load generator on the same machine)")
            page = {"DBInstanceId": "dds-bench", "PageSize": "30"}
            for clients in (1, args.clients):
                r = load(srv.port, "DescribeBackups", page, clients, args.seconds)
                results[f"describe_backups_{clients}_clients"] = r
                show(f"DescribeBackups, {clients} client(s)", r)
            r = load(srv.port, "DescribeBackups", dict(page, PageNumber="3000"), 1, args.seconds)
            results["describe_backups_deep_page"] = r
            show("DescribeBackups PageNumber=3000, 1 client", r)
            r = load(srv.port, "CreateBackup", {"DBInstanceId": "dds-load-{i}", "BackupMethod": "Logical"},
                     args.clients, args.seconds)
            results["create_backup"] = r
            show(f"CreateBackup, {args.clients} clients", r)
            # Each busy instance holds a Running job of another node: every call is a BackupJobExists refusal.
            r = load(srv.port, "CreateBackup", {"DBInstanceId": "dds-busy-{i}", "BackupMethod": "Logical"},
                     args.clients, args.seconds)
            results["create_backup_refusals"] = r
            show(f"CreateBackup refusals only, {args.clients} clients", r)
            results["peak_rss_mb"] = srv.peak_rss_mb()
            print(f"  ddsvault peak RSS {results['peak_rss_mb']:.0f} MB")
        finally:
            srv.stop()
            fdb.stop()
            if pg is not None:
                pg.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
