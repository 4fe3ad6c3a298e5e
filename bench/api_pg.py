#!/usr/bin/env python3
"""API latency on a PostgreSQL catalog shared by two API processes (issue 19's speed targets; run on demand).

Starts a throw-away PostgreSQL cluster (tests/blackbox/stack.py: initdb + pg_ctl on a free port, fsync off as in the
tests), a FerretDB holding a tiny database, and two release ddsvault processes (`serve`) on one PostgreSQL catalog
and one local repository (`file://`), throttling, the scheduler and log backup off. Then:
  1. --backups successful backups of one instance, built in the catalog directly with SQL: two real rows written
     through the catalog trait (crates/catalog/examples/seed_backups.rs), then copied with `generate_series` (jobs,
     backups and their stored sizes, start times a minute apart; the per-instance count kept by migration 0009's
     trigger is set once at the end instead of by a million trigger calls), then ANALYZE;
  2. DescribeBackups of that instance (PageSize 30): 1 client on one process (--describe-calls calls), then
     --clients spread over both processes at once. Target: p99 <= 5 ms with 1,000,000 backups;
  3. CreateBackup, --clients spread over both processes, every call creating a job: each client has its own
     instances (--creates of them) and calls CreateBackup on the next one as soon as the previous call answered
     (the job is not waited for; the two processes run the jobs meanwhile, `max_concurrent_jobs` 2 each).
     Target: p99 <= 10 ms at 64 clients;
  4. only when crates/server/examples/api_load.rs is built in release: CreateBackup with the same clients on one
     instance each for --seconds: after each client's first (accepted) call, BackupJobExists refusals while its
     job runs (bench/api.py's "mixed" run); percentiles per process (api_load keeps no raw samples).
Calls of 2 and 3 are V3-signed in Python (ACS3-HMAC-SHA256, docs/protocol.md §4, as the SDKs sign; a fresh nonce
and signature each) before the clock starts, and sent over one keep-alive connection per client, closed loop, from
one asyncio process per API process; every answer's latency is kept, so the percentiles are exact. The generator's
own time (a Python event loop on the same 2 cores) is inside the figures: they are upper bounds of the server's.

  nice -n -10 .stack/venv/bin/python bench/api_pg.py --backups 1000000
  .stack/venv/bin/python bench/api_pg.py --backups 100000 --creates 10 --seconds 5

Writes bench/results/<UTC time>-api-pg.json and prints a table.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import hmac
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "blackbox"))
sys.path.insert(0, str(REPO / "bench"))

import api  # noqa: E402
import run  # noqa: E402
import stack  # noqa: E402

INSTANCE = "dds-bench"


def build():
    run.sh("cargo", "build", "--release", "-p", "ddsvault", cwd=REPO)
    run.sh("cargo", "build", "--release", "-p", "ddsvault-catalog", "--example", "seed_backups", cwd=REPO)
    run.sh("cargo", "build", "--release", "-p", "ddsvault-server", "--example", "api_load", cwd=REPO)


def seed(pg, db: str, url: str, total: int, seed_bin: Path) -> float:
    """`total` successful backups of INSTANCE: 2 through the catalog trait, the rest copied from them in SQL."""
    t0 = time.monotonic()
    run.sh(str(seed_bin), url, INSTANCE, "2", capture_output=True)
    cols = {}
    for table in ("jobs", "backups"):
        cols[table] = pg.sql(db, "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM "
                                 f"information_schema.columns WHERE table_name = '{table}'").split(",")
    base = int(pg.sql(db, "SELECT max(id) FROM backups"))
    tj, tb = int(pg.sql(db, f"SELECT job_id FROM backups WHERE id = {base}")), base
    # New ids after the template's; times one minute apart going forward from the template's.
    ident = {"id": "t.id + g", "backup_id": f"{tb} + g", "job_id": f"{tj} + g"}
    times = ("created_at", "started_at", "finished_at", "heartbeat_at", "start_time", "end_time")

    def select(table: str) -> str:
        return ", ".join(ident.get(c, f"t.{c} + g::bigint * 60000" if c in times else f"t.{c}") for c in cols[table])

    n = total - 2
    steps = [
        "ALTER TABLE backups DISABLE TRIGGER backups_count_insert",
        f"INSERT INTO jobs ({','.join(cols['jobs'])}) SELECT {select('jobs')} FROM jobs t, "
        f"generate_series(1, {n}) g WHERE t.id = {tj}",
        f"INSERT INTO backups ({','.join(cols['backups'])}) SELECT {select('backups')} FROM backups t, "
        f"generate_series(1, {n}) g WHERE t.id = {tb}",
        "ALTER TABLE backups ENABLE TRIGGER backups_count_insert",
        # What a finished backup also records (migration 0015); without it every start backfills a row per backup.
        "INSERT INTO backup_storage (backup_id, instance_id, stored_bytes) SELECT id, instance_id, size FROM backups "
        "ON CONFLICT (backup_id) DO NOTHING",
        "UPDATE backup_counts c SET n = x.n FROM (SELECT instance_id, status, COUNT(*) AS n FROM backups "
        "GROUP BY instance_id, status) x WHERE c.instance_id = x.instance_id AND c.status = x.status",
        "SELECT setval(pg_get_serial_sequence('jobs', 'id'), (SELECT max(id) FROM jobs))",
        "SELECT setval(pg_get_serial_sequence('backups', 'id'), (SELECT max(id) FROM backups))",
        "ANALYZE",
    ]
    for s in steps:
        pg.sql(db, s)
    got = int(pg.sql(db, f"SELECT n FROM backup_counts WHERE instance_id = '{INSTANCE}' AND status = 'Success'"))
    assert got == total, (got, total)
    return time.monotonic() - t0


# --- V3 signing (ACS3-HMAC-SHA256, docs/protocol.md §4), done before the clock starts -------------------------------

def enc(s: str) -> str:
    return urllib.parse.quote(s, safe="-_.~")


def signed_request(host: str, action: str, params: dict) -> bytes:
    """One raw HTTP/1.1 request, V3-signed with a fresh nonce, as the SDKs send it (parameters in the query)."""
    query = "&".join(f"{enc(k)}={enc(v)}" for k, v in sorted(params.items()))
    payload = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-acs-action": action, "x-acs-version": "2015-12-01",
               "x-acs-date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "x-acs-signature-nonce": uuid.uuid4().hex, "x-acs-content-sha256": payload}
    names = sorted(headers)
    canonical = "\n".join(["POST", "/", query, "".join(f"{k}:{headers[k]}\n" for k in names), ";".join(names),
                           payload])
    sts = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    sig = hmac.new(run.AK[1].encode(), sts.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = f"ACS3-HMAC-SHA256 Credential={run.AK[0]},SignedHeaders={';'.join(names)},Signature={sig}"
    head = f"POST /?{query} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "content-length: 0\r\n\r\n").encode()


async def _call(reader, writer, req: bytes):
    writer.write(req)
    line = await reader.readline()
    if not line:
        raise ConnectionError("the server closed the connection")
    status = int(line.split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode().partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    return status, await reader.readexactly(length)


async def _client(port: int, reqs: list, out: list):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for req in reqs:
        t0 = time.perf_counter()
        try:
            status, body = await asyncio.wait_for(_call(reader, writer, req), 60)
        except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            # Recorded, not retried (the call may have been served); the next call opens a new connection.
            out.append((f"client error: {type(e).__name__}", (time.perf_counter() - t0) * 1000))
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            continue
        ms = (time.perf_counter() - t0) * 1000
        code = "OK" if status == 200 else json.loads(body).get("Code", f"HTTP{status}")
        out.append((code, ms))
    writer.close()


def _load(port: int, action: str, params_per_client: list, q):
    """One generator process: one asyncio client per list of parameter sets, all against one API process."""
    host = f"127.0.0.1:{port}"
    reqs = [[signed_request(host, action, p) for p in ps] for ps in params_per_client]
    out: list = []

    async def run_all():
        t0 = time.perf_counter()
        await asyncio.gather(*(_client(port, r, out) for r in reqs))
        return time.perf_counter() - t0

    try:
        wall = asyncio.run(run_all())
    except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
        q.put(e)
        return
    q.put((wall, out))


def percentiles(ms: list) -> dict:
    s = sorted(ms)
    if not s:
        return {"calls": 0}
    at = lambda p: s[min(len(s) - 1, max(0, -(-len(s) * p // 100) - 1))]  # noqa: E731
    return {"calls": len(s), "p50_ms": at(50), "p90_ms": at(90), "p99_ms": at(99), "max_ms": s[-1]}


def py_load(ports: list, action: str, clients: int, calls: int, params) -> dict:
    """`clients` split over `ports` (one generator process per API process), `calls` calls each, closed loop;
    `params(client, k)` gives the k-th call's parameters. Every answer is kept: exact percentiles."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = []
    for p_i, port in enumerate(ports):
        mine = [c for c in range(clients) if c % len(ports) == p_i]
        per_client = [[params(c, k) for k in range(calls)] for c in mine]
        procs.append(ctx.Process(target=_load, args=(port, action, per_client, q)))
    for p in procs:
        p.start()
    got = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    for g in got:
        if isinstance(g, Exception):
            raise g
    samples = [s for _, out in got for s in out]
    by_code = {}
    for code, ms in samples:
        by_code.setdefault(code, []).append(ms)
    wall = max(w for w, _ in got)
    return {"clients": clients, "processes": len(ports), "wall_seconds": wall,
            "calls_per_second": len(samples) / wall, "overall": percentiles([ms for _, ms in samples]),
            "by_code": {k: percentiles(v) for k, v in by_code.items()}}


def merged(results: list) -> dict:
    """api_load runs against the two processes at once: calls/s summed; percentiles stay per process (api_load
    reports no raw samples), the worse of the two is shown."""
    return {"per_process": results, "calls_per_second": sum(r["calls_per_second"] for r in results),
            "overall": {"calls": sum(r["overall"]["calls"] for r in results),
                        **{k: max(r["overall"][k] for r in results) for k in ("p50_ms", "p99_ms", "max_ms")}},
            "by_code": {c: {"calls": sum(r["by_code"].get(c, {}).get("calls", 0) for r in results),
                            **{k: max(r["by_code"][c][k] for r in results if c in r["by_code"])
                               for k in ("p50_ms", "p99_ms")}}
                        for c in sorted({c for r in results for c in r["by_code"]})}}


def load_both(ports: list, action: str, params: dict, clients: int, seconds: int) -> dict:
    """api_load against each process at once, clients split between them (`{i}` gets a per-process prefix)."""
    procs = []
    for p_i, port in enumerate(ports):
        n = clients // len(ports) + (1 if p_i < clients % len(ports) else 0)
        args = [str(api.LOAD), "--addr", f"127.0.0.1:{port}", "--key", run.AK[0], "--secret", run.AK[1], "--action",
                action, "--clients", str(n), "--seconds", str(seconds)]
        for k, v in params.items():
            args += ["--param", f"{k}={v.replace('{i}', f'{p_i}-{{i}}')}"]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True))
    outs = [json.loads(p.communicate()[0]) for p in procs]
    return merged(outs)


def show(label: str, r: dict):
    o = r["overall"]
    print(f"  {label:52s} {o['calls']:7d} calls {r['calls_per_second']:8.0f}/s  p50 {o['p50_ms']:7.2f}  "
          f"p99 {o['p99_ms']:7.2f}  max {o['max_ms']:8.2f} ms")
    for code, s in r["by_code"].items():
        print(f"    {code:50s} {s['calls']:7d} calls            p50 {s['p50_ms']:7.2f}  p99 {s['p99_ms']:7.2f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backups", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--describe-calls", type=int, default=3000, help="DescribeBackups calls of the single client")
    ap.add_argument("--creates", type=int, default=20, help="CreateBackup calls per client, each on a new instance")
    ap.add_argument("--seconds", type=int, default=10, help="length of the api_load mixed run")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out", default=None, help="default: bench/results/<UTC time>-api-pg.json")
    a = ap.parse_args()
    if not a.no_build:
        build()
    # seed_backups only writes the two template rows: a debug build does as well when no release one is there.
    seed_bin = next((p for p in (api.SEED, run.TARGET / "debug" / "examples" / "seed_backups",
                                 REPO / "target" / "debug" / "examples" / "seed_backups") if p.exists()), api.SEED)
    results = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": run.machine(),
               "command": sys.argv[1:], "binary": str(run.BIN), "backups": a.backups, "clients": a.clients,
               "processes": 2, "generator": "python asyncio, pre-signed V3 requests, one process per API process"}
    base = Path(tempfile.mkdtemp(prefix="ddsvault-bench-apipg-"))
    pg = stack.PostgreSQL(base / "pg")
    fdb = stack.FerretDB(base / "fdb", repl_set_name="rs0")
    servers = []
    try:
        results["postgresql"] = pg.sql("postgres", "SHOW server_version")
        url = pg.create_database("ddsvault")
        fdb.client().app.c.insert_many([{"_id": i, "v": "x" * 100} for i in range(20)])
        instances = {INSTANCE: fdb.uri}
        instances.update({f"dds-load-{p}-{i}": fdb.uri for p in range(2) for i in range(a.clients)})
        instances.update({f"dds-new-{c}-{k}": fdb.uri for c in range(a.clients) for k in range(a.creates)})
        extra = f'[repository]\nurl = "file://{base / "repo"}"\n[log_backup]\nenabled = false'
        # Processes sharing a catalog share the master key that seals the AccessKey secrets in it.
        (base / "master.key").write_text(os.urandom(32).hex() + "\n")
        top = f'catalog_url = "{url}"\nsecret_key_file = "{base / "master.key"}"'
        # The first process creates the schema (migrations) before the catalog is seeded; the second joins after.
        servers.append(run.Server(base / "a", instances, extra=extra, top=top))
        results["seed_seconds"] = seed(pg, "ddsvault", url, a.backups, seed_bin)
        servers.append(run.Server(base / "b", instances, extra=extra, top=top))
        # What PostgreSQL itself spends on DescribeBackups' page (the statement of postgres.rs list_backups).
        plan = pg.sql("ddsvault", "EXPLAIN (ANALYZE) SELECT id FROM backups WHERE instance_id = 'dds-bench' AND "
                      "status <> 'Running' AND status <> 'Deleting' ORDER BY start_time DESC, id DESC LIMIT 30")
        results["page_query_plan"] = plan.splitlines()
        print("\n".join(plan.splitlines()[-3:]), flush=True)
        ports = [s.port for s in servers]
        print(f"\n== API on PostgreSQL {results['postgresql']}: {a.backups} backups of one instance (seeded in "
              f"{results['seed_seconds']:.0f} s), 2 API processes, {os.cpu_count()} CPUs shared with the load "
              f"generators")
        page = {"DBInstanceId": INSTANCE, "PageSize": "30"}
        r = py_load(ports[:1], "DescribeBackups", 1, a.describe_calls, lambda c, k: page)
        results["describe_backups_1_client"] = r
        show("DescribeBackups PageSize 30, 1 client", r)
        r = py_load(ports, "DescribeBackups", a.clients, max(20, a.describe_calls // a.clients), lambda c, k: page)
        results[f"describe_backups_{a.clients}_clients"] = r
        show(f"DescribeBackups PageSize 30, {a.clients} clients / 2 procs", r)
        r = py_load(ports, "CreateBackup", a.clients, a.creates,
                    lambda c, k: {"DBInstanceId": f"dds-new-{c}-{k}", "BackupMethod": "Logical"})
        results["create_backup_new_jobs"] = r
        show(f"CreateBackup, each a new job, {a.clients} clients / 2 procs", r)
        if api.LOAD.exists():
            r = load_both(ports, "CreateBackup", {"DBInstanceId": "dds-load-{i}", "BackupMethod": "Logical"},
                          a.clients, a.seconds)
            results["create_backup_mixed"] = r
            show(f"CreateBackup mixed (1 job, then refusals), {a.clients} cl.", r)
        else:
            results["create_backup_mixed"] = f"not measured: {api.LOAD} not built"
        results["peak_rss_mb"] = [s.peak_rss_mb() for s in servers]
        print(f"  ddsvault peak RSS {results['peak_rss_mb'][0]:.0f} / {results['peak_rss_mb'][1]:.0f} MB")
    finally:
        for s in servers:
            s.stop()
        fdb.stop()
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    accepted = results["create_backup_new_jobs"]["by_code"].get("OK", {})
    results["targets_met"] = {
        "describe_backups_p99_le_5ms_1_client": results["describe_backups_1_client"]["overall"]["p99_ms"] <= 5,
        "create_backup_new_job_p99_le_10ms": bool(accepted) and accepted["p99_ms"] <= 10,
    }
    for k, v in results["targets_met"].items():
        print(f"  target {k:40s} {'met' if v else 'NOT met'}")
    print(f"load average: start {results['machine']['loadavg_start']}, end {list(os.getloadavg())}")
    print(f"wrote {run.write_result('api-pg', results, a.out)}")


if __name__ == "__main__":
    main()
