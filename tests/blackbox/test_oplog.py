"""Consistency to one point: a logical backup of a replica set with `local.oplog.rs` captures the oplog while the
dump runs, and a restore replays it. Real FerretDB (oplog emulation), the real ddsvault binary, the official SDKs.

The invariant a torn (non point-in-time) copy breaks: step i inserts {_id: i} into `app.log`, then sets
`app.state.counter.n = i`. At any instant the source holds log ids 0..max (contiguous) and n in {max - 1, max}.
`log`, `big` and `state` are dumped one after another (`parallel_collections = 1`), seconds apart, while the writer
runs.
"""
from __future__ import annotations

import datetime
import gzip
import json
import re
import sqlite3
import struct
import threading
import time

import bson
import pytest
from alibabacloud_dds20151201 import models as dds
from bson import Timestamp

import stack
from conftest import Ddsvault, config_text, tea_client, wait_backup
from test_restore import call, wait_restore

PREFILL = 30000


def archive_docs(data: bytes, wanted: set) -> dict:
    """Documents of the `wanted` namespaces ("db.coll"; ".oplog" for the oplog) of a mongodump archive, in archive
    order. Framing only (archive_check.read_archive checks CRCs too, but in pure Python: too slow for 30 MB)."""
    pos = 4
    assert struct.unpack_from("<I", data, 0)[0] == 0x8199E26D

    def item():
        nonlocal pos
        (n,) = struct.unpack_from("<i", data, pos)
        if n == -1:
            pos += 4
            return None
        raw = data[pos:pos + n]
        pos += n
        return raw

    item()  # header
    while item() is not None:  # prelude
        pass
    out = {ns: [] for ns in wanted}
    while pos < len(data):
        hdr = bson.decode(item())
        key = f"{hdr['db']}.{hdr['collection']}"
        if hdr["EOF"]:
            assert item() is None
            continue
        while (raw := item()) is not None:
            if key in wanted:
                out[key].append(bson.decode(raw))
    return out


def invariant_holds(log_ids, n) -> bool:
    return sorted(log_ids) == list(range(max(log_ids) + 1)) and n in (max(log_ids), max(log_ids) - 1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("oplog")
    src = stack.FerretDB(base / "src", repl_set_name="rs0")
    c = src.client()
    # Data loaded before the oplog exists (the window only needs what happens during the backup).
    pad = "o" * 3000
    c.app.big.insert_many([{"_id": i, "pad": pad} for i in range(8000)])
    c.app.log.insert_many([{"_id": i} for i in range(PREFILL)])
    c.app.state.insert_one({"_id": "counter", "n": PREFILL - 1})
    c.app.state.create_index([("n", 1)], name="n_1", unique=True)
    src.create_oplog()
    dst = stack.FerretDB(base / "dst", repl_set_name="rs0")
    plain = stack.FerretDB(base / "plain", repl_set_name="rs0")  # a replica set without local.oplog.rs
    plain.client().app.things.insert_many([{"_id": i} for i in range(100)])
    data = base / "data"
    server = Ddsvault(base / "svc", config_text(data, {
        "dds-src": (src.uri, "local_ssd"), "dds-dst": (dst.uri, "local_ssd"), "dds-plain": (plain.uri, "local_ssd")},
        extra='[backup]\ncompression = "gzip"\nparallel_collections = 1'))
    yield {"server": server, "src": src, "dst": dst, "plain": plain, "data": data}
    server.stop()
    for f in (src, dst, plain):
        f.stop()


class Writer(threading.Thread):
    def __init__(self, client):
        super().__init__(daemon=True)
        self.db = client.app
        self.stop = threading.Event()
        self.steps = 0
        self.error = None

    def run(self):
        i = PREFILL
        try:
            while not self.stop.is_set():
                self.db.log.insert_one({"_id": i})
                self.db.state.update_one({"_id": "counter"}, {"$set": {"n": i}})
                i += 1
                self.steps += 1
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e


def test_backup_under_writes_restores_one_point_in_time(env):
    server, src, dst = env["server"], env["src"], env["dst"]
    tea = tea_client(server)
    writer = Writer(src.client())
    writer.start()
    try:
        while writer.steps < 20:  # the oplog has entries before the backup starts
            time.sleep(0.05)
        r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-src", backup_method="Logical")).body
        b = wait_backup(tea, "dds-src", r.backup_job_id, timeout=300)
        steps_at_end = writer.steps
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.error is None, writer.error
    assert b.backup_status == "Success"

    # The consistency point: recorded in the details, shown by DescribeBackups (ddsvault extension field).
    prefix = env["data"] / "repository" / "backups" / "dds-src" / b.backup_id
    details = json.loads((prefix / "manifest.json").read_text())["extra"]["details"]
    end = Timestamp(details["consistent_ts"]["t"], details["consistent_ts"]["i"])
    start = Timestamp(details["oplog_start_ts"]["t"], details["oplog_start_ts"]["i"])
    assert details["oplog_entries"] > 0
    listed = call(server, "DescribeBackups", DBInstanceId="dds-src", BackupId=b.backup_id)["Backups"]["Backup"][0]
    want_time = datetime.datetime.fromtimestamp(end.time, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert listed["BackupConsistentTime"] == details["consistent_time"] == want_time
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", listed["BackupConsistentTime"])

    # The source's state at the consistency point, computed independently from the source's oplog.
    entries = list(src.client().local["oplog.rs"].find({}, sort=[("$natural", 1)]))
    max_log, n = PREFILL - 1, PREFILL - 1
    for e in entries:
        if e["ts"] > end:
            continue
        if e["ns"] == "app.log" and e["op"] == "i":
            max_log = max(max_log, e["o"]["_id"])
        elif e["ns"] == "app.state" and e["op"] == "u":
            n = e["o"]["$set"]["n"]
    assert max_log < PREFILL + steps_at_end + 1
    window = [e for e in entries if start <= e["ts"] <= end]
    assert len(window) == details["oplog_entries"]

    # The archive: the raw collections alone are torn (dumped seconds apart under writes); its oplog namespace holds
    # the writes made during the dump, and replaying them onto the raw copy gives the state at the consistency point.
    raw = archive_docs(gzip.decompress((prefix / "archive.gz").read_bytes()), {"app.log", "app.state", ".oplog"})
    raw_ids = {d["_id"] for d in raw["app.log"]}
    raw_n = raw["app.state"][0]["n"]
    print(f"\nwriter steps during the backup: {steps_at_end}; oplog window {start}..{end}: "
          f"{details['oplog_entries']} entries; raw dump: max log id {max(raw_ids)}, counter {raw_n}; "
          f"source at the consistency point: max log id {max_log}, counter {n}")
    assert not invariant_holds(raw_ids, raw_n), (max(raw_ids), raw_n)
    oplog = raw[".oplog"]
    assert len(oplog) == details["oplog_entries"]
    assert all(start <= e["ts"] <= end for e in oplog)
    assert {e["ns"] for e in oplog} <= {"app.log", "app.state"}
    for e in oplog:
        if e["ns"] == "app.log" and e["op"] == "i":
            raw_ids.add(e["o"]["_id"])
        elif e["ns"] == "app.state" and e["op"] == "u":
            assert e["o2"] == {"_id": "counter"} and e["o"]["$set"]["_id"] == "counter"
            raw_n = e["o"]["$set"]["n"]
    assert invariant_holds(raw_ids, raw_n) and (max(raw_ids), raw_n) == (max_log, n)

    # Restore through the API into another instance: the result is exactly the source at the consistency point.
    out = call(server, "RestoreDBInstance", DBInstanceId="dds-src", BackupId=b.backup_id,
               TargetDBInstanceId="dds-dst")
    job = wait_restore(server, "dds-dst", out["RestoreJobId"])
    assert job["Status"] == "Success", job["ErrorMessage"]
    # The job's recorded result counts the replayed entries (no Dds field shows it; read the catalog).
    with sqlite3.connect(env["data"] / "catalog.db") as db:
        (result,) = db.execute("SELECT result FROM jobs WHERE id = ?", (int(out["RestoreJobId"]),)).fetchone()
    assert 0 < json.loads(result)["oplog_replayed"] <= details["oplog_entries"]
    d = dst.client().app
    ids = [x["_id"] for x in d.log.find({}, sort=[("_id", 1)])]
    assert ids == list(range(max_log + 1))
    assert list(d.state.find()) == [{"_id": "counter", "n": n}]
    assert invariant_holds(ids, n)
    assert d.big.count_documents({}) == 8000
    # The unique index was built (after the replay).
    assert any(i["name"] == "n_1" and i.get("unique") for i in d.state.list_indexes())


def test_replica_set_without_oplog_collection_has_no_consistency_point(env):
    server = env["server"]
    tea = tea_client(server)
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-plain", backup_method="Logical")).body
    b = wait_backup(tea, "dds-plain", r.backup_job_id)
    assert b.backup_status == "Success"
    listed = call(server, "DescribeBackups", DBInstanceId="dds-plain", BackupId=b.backup_id)["Backups"]["Backup"][0]
    assert listed["BackupConsistentTime"] == ""
    prefix = env["data"] / "repository" / "backups" / "dds-plain" / b.backup_id
    details = json.loads((prefix / "manifest.json").read_text())["extra"]["details"]
    assert "consistent_ts" not in details
    raw = archive_docs(gzip.decompress((prefix / "archive.gz").read_bytes()), {"app.things", ".oplog"})
    assert len(raw["app.things"]) == 100 and raw[".oplog"] == []
