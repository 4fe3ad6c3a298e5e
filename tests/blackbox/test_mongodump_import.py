"""Existing mongodump archives brought into ddsvault, with archives really written by mongodump 100.18.0 from FerretDB:
`ddsvault restore --archive FILE --to URI` and `ddsvault import --instance ID --archive FILE`, and the bad inputs
(truncated, corrupt, not an archive, a selection that matches nothing): a clear error naming the file or namespace,
and nothing written to the target or the repository."""
from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import requests
from alibabacloud_dds20151201 import models as dds

import stack
from conftest import (DDSVAULT_BIN, Ddsvault, config_text, require_mongo_tools, seed_data, snapshot, tea_client)
from test_restore import call, wait_restore

DBS = ("shop", "crm")


def mongodump(src: stack.FerretDB, out: Path, *args: str) -> Path:
    r = subprocess.run([stack.bin("mongodump"), f"--uri={src.uri}", f"--archive={out}", *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def ddsvault(*args) -> subprocess.CompletedProcess:
    return subprocess.run([DDSVAULT_BIN, *map(str, args)], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def parse_time(s: str) -> datetime.datetime:
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def user_dbs(f: stack.FerretDB) -> list:
    return sorted(d for d in f.client().list_database_names() if d not in ("admin", "local", "config"))


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    require_mongo_tools()
    assert stack.tool_version(stack.bin("mongodump")) == stack.MONGO_TOOLS_CURRENT
    base = tmp_path_factory.mktemp("mongodump")
    src = stack.FerretDB(base / "src", repl_set_name="rs0", create_oplog=True)
    try:
        # The oplog exists before the writes, so FerretDB logs them and `mongodump --oplog` has entries to capture.
        expected = seed_data(src.client(), DBS)
        yield {
            "src": src, "base": base, "expected": expected,
            "plain": mongodump(src, base / "plain.archive"),
            "gzip": mongodump(src, base / "dump.archive.gz", "--gzip"),
            "oplog": mongodump(src, base / "oplog.archive", "--oplog"),
        }
    finally:
        src.stop()


# ------------------------------------------------------------------------------------------- restore --archive

@pytest.mark.parametrize("kind", ["plain", "gzip", "oplog"])
def test_restore_archive_restores_mongodump_archives_exactly(dumps, tmp_path, kind):
    with stack.FerretDB(tmp_path / "t", repl_set_name="rs0") as target:
        r = ddsvault("restore", "--archive", dumps[kind], "--to", target.uri)
        assert r.returncode == 0, r.stderr
        assert f"restored archive {dumps[kind]}: 4 collections, 2000 documents" in r.stdout, r.stdout
        if kind == "oplog":
            assert "0 oplog entries replayed" not in r.stdout, r.stdout
        assert snapshot(target.client(), DBS) == dumps["expected"]
        # The indexes come back too (mongorestore cannot build them on FerretDB; ddsvault's restore does).
        assert "name_1" in target.client().shop.customers.index_information()


def test_restore_archive_selection_gzip_flag_and_drop(dumps, tmp_path):
    exp = dumps["expected"]
    with stack.FerretDB(tmp_path / "t", repl_set_name="rs0") as target:
        r = ddsvault("restore", "--archive", dumps["gzip"], "--gzip", "--to", target.uri, "--nsInclude", "crm.*")
        assert r.returncode == 0, r.stderr
        assert user_dbs(target) == ["crm"]
        assert snapshot(target.client(), ["crm"]) == {k: v for k, v in exp.items() if k.startswith("crm.")}
        r = ddsvault("restore", "--archive", dumps["plain"], "--to", target.uri, "--db", "shop",
                     "--collection", "orders")
        assert r.returncode == 0, r.stderr
        assert target.client().shop.list_collection_names() == ["orders"]
        # An existing collection is refused without --drop (nothing written), replaced with it.
        target.client().shop.orders.insert_one({"_id": "extra"})
        r = ddsvault("restore", "--archive", dumps["plain"], "--to", target.uri, "--ns-include", "shop.orders")
        assert r.returncode != 0 and "shop.orders" in r.stderr, r.stderr
        assert target.client().shop.orders.count_documents({"_id": "extra"}) == 1
        r = ddsvault("restore", "--archive", dumps["plain"], "--to", target.uri, "--ns-include", "shop.orders",
                     "--drop")
        assert r.returncode == 0, r.stderr
        assert snapshot(target.client(), ["shop"])["shop.orders"] == exp["shop.orders"]


def _bad_inputs(dumps, tmp: Path) -> dict:
    plain = dumps["plain"].read_bytes()
    gz = dumps["gzip"].read_bytes()
    flipped = bytearray(plain)
    flipped[len(plain) // 2] ^= 0x01  # inside a document of the biggest collection: its CRC-64 no longer matches
    files = {
        "truncated.archive": plain[: len(plain) * 2 // 3],
        "truncated.archive.gz": gz[: len(gz) // 2],
        "crc.archive": bytes(flipped),
        "notes.txt": b"this is not an archive\n",
        "empty.archive": b"",
        "dump.tar": subprocess.run(["tar", "-cf", "-", "-C", str(dumps["base"]), "plain.archive"],
                                   capture_output=True, check=True).stdout,
        "data.bson": gzip.decompress(gz)[4:],  # the archive without its magic number
    }
    out = {}
    for name, data in files.items():
        (tmp / name).write_bytes(data)
        out[name] = tmp / name
    return out


# name -> what the error must say (besides the file name)
BAD = {
    "truncated.archive": "truncated",
    "truncated.archive.gz": "",
    "crc.archive": "CRC",
    "notes.txt": "is not a mongodump archive",
    "empty.archive": "empty file",
    "dump.tar": "is not a mongodump archive",
    "data.bson": "is not a mongodump archive",
}


def test_restore_archive_refuses_bad_input_and_writes_nothing(dumps, tmp_path):
    bad = _bad_inputs(dumps, tmp_path)
    with stack.FerretDB(tmp_path / "t", repl_set_name="rs0") as target:
        for name, path in bad.items():
            r = ddsvault("restore", "--archive", path, "--to", target.uri)
            assert r.returncode != 0, (name, r.stdout)
            assert str(path) in r.stderr and BAD[name] in r.stderr, (name, r.stderr)
            assert "panicked" not in r.stderr
            assert user_dbs(target) == [], (name, user_dbs(target))
        # --gzip on a plain archive.
        r = ddsvault("restore", "--archive", dumps["plain"], "--gzip", "--to", target.uri)
        assert r.returncode != 0 and "not gzip-compressed" in r.stderr and str(dumps["plain"]) in r.stderr
        # A selection that matches nothing names itself and what the archive holds.
        for sel in (["--ns-include", "nope.*"], ["--nsInclude", "shop.nope"], ["--db", "nope"]):
            r = ddsvault("restore", "--archive", dumps["gzip"], "--to", target.uri, *sel)
            assert r.returncode != 0, sel
            assert "matches nothing" in r.stderr and sel[1].replace(".*", "") in r.stderr, r.stderr
            assert "crm, shop" in r.stderr or "crm,shop" in r.stderr, r.stderr
        r = ddsvault("restore", "--archive", dumps["gzip"], "--to", target.uri, "--ns-include", "shop.ord*")
        assert r.returncode != 0 and "no other wildcards" in r.stderr, r.stderr
        assert user_dbs(target) == []


# ------------------------------------------------------------------------------------------------- import

@pytest.fixture(scope="module")
def svc(dumps, tmp_path_factory):
    base = tmp_path_factory.mktemp("import")
    dst = stack.FerretDB(base / "dst", repl_set_name="rs0")
    data = base / "data"
    server = Ddsvault(base / "svc", config_text(data, {"dds-src": (dumps["src"].uri, "local_ssd"),
                                                       "dds-dst": (dst.uri, "local_ssd")}))
    try:
        yield {"server": server, "dst": dst, "data": data, "config": server.config_path}
    finally:
        server.stop()
        dst.stop()


def backups(server, instance="dds-src") -> list:
    body = tea_client(server).describe_backups(dds.DescribeBackupsRequest(dbinstance_id=instance)).body
    return body.backups.backup if body.backups and body.backups.backup else []


def oplog_window(archive: Path) -> tuple:
    from archive_check import read_archive
    import bson

    entries = [bson.decode(d) for d in read_archive(archive.read_bytes()).namespaces[".oplog"].docs]
    ts = sorted(e["ts"].time for e in entries)
    return (datetime.datetime.fromtimestamp(ts[0], datetime.timezone.utc),
            datetime.datetime.fromtimestamp(ts[-1], datetime.timezone.utc))


def test_import_stores_a_logical_backup_like_ours(dumps, svc, tmp_path):
    server = svc["server"]
    archive = dumps["oplog"]
    r = ddsvault("import", "--config", svc["config"], "--instance", "dds-src", "--archive", archive)
    assert r.returncode == 0, r.stderr
    assert "from the archive's oplog" in r.stdout, r.stdout
    [b] = backups(server)
    assert (b.backup_status, b.backup_method, b.backup_mode) == ("Success", "Logical", "Manual")
    assert b.backup_dbnames == "crm,shop"
    assert b.backup_size == archive.stat().st_size
    # Start and end: the archive's oplog window (mongodump --oplog), to the second.
    start, end = oplog_window(archive)
    assert (parse_time(b.backup_start_time), parse_time(b.backup_end_time)) == (start, end)
    assert parse_time(b.backup_expire_time) - end == datetime.timedelta(days=30)
    # The repository layout and manifest of a logical backup, the archive byte for byte as mongodump wrote it.
    prefix = svc["data"] / "repository" / "backups" / "dds-src" / b.backup_id
    manifest = json.loads((prefix / "manifest.json").read_text())
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert manifest["method"] == "Logical" and manifest["instance_id"] == "dds-src"
    assert manifest["files"] == [{"name": "archive", "size": archive.stat().st_size, "sha256": sha}]
    assert sorted(f"{n['db']}.{n['collection']}" for n in manifest["extra"]["namespaces"]) == sorted(dumps["expected"])
    assert manifest["extra"]["details"]["times_from"] == "oplog"
    assert (prefix / "archive").read_bytes() == archive.read_bytes()
    assert not (svc["data"] / "repository" / "staging").exists() or \
        list((svc["data"] / "repository" / "staging").iterdir()) == []
    # Downloadable like ours (the URL DescribeBackups gives), verifiable, restorable through the API.
    whole = requests.get(b.backup_download_url, timeout=30)
    assert whole.status_code == 200 and hashlib.sha256(whole.content).hexdigest() == sha
    v = ddsvault("verify", "--config", svc["config"], "--backup-id", b.backup_id)
    assert v.returncode == 0 and "every CRC matches" in v.stdout, v.stderr
    dbs = tea_client(server).describe_backup_dbs(dds.DescribeBackupDBsRequest(source_dbinstance="dds-src",
                                                                              backup_id=b.backup_id)).body
    assert [d.dbname for d in dbs.databases.database] == ["crm", "shop"]
    out = call(server, "RestoreDBInstance", DBInstanceId="dds-src", BackupId=b.backup_id,
               TargetDBInstanceId="dds-dst")
    job = wait_restore(server, "dds-dst", out["RestoreJobId"])
    assert job["Status"] == "Success", job
    assert snapshot(svc["dst"].client(), DBS) == dumps["expected"]
    for d in DBS:
        svc["dst"].client().drop_database(d)


def test_import_times_from_the_file_or_given(dumps, svc, tmp_path):
    server = svc["server"]
    # No oplog in the archive: it records no time; the file's modification time is when mongodump finished.
    archive = tmp_path / "nightly.archive.gz"
    archive.write_bytes(dumps["gzip"].read_bytes())
    when = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) - datetime.timedelta(days=3)
    os.utime(archive, (when.timestamp(), when.timestamp()))
    before = {b.backup_id for b in backups(server)}
    r = ddsvault("import", "--config", svc["config"], "--instance", "dds-src", "--archive", archive,
                 "--retention-days", "-1")
    assert r.returncode == 0, r.stderr
    assert "from the file's times" in r.stdout, r.stdout
    [b] = [b for b in backups(server) if b.backup_id not in before]
    assert parse_time(b.backup_end_time) == when
    assert parse_time(b.backup_start_time) <= when
    assert b.backup_expire_time.startswith("9999-01-01")
    prefix = svc["data"] / "repository" / "backups" / "dds-src" / b.backup_id
    assert json.loads((prefix / "manifest.json").read_text())["files"][0]["name"] == "archive.gz"
    # Given times win; an import is restorable with the offline verb too.
    r = ddsvault("import", "--config", svc["config"], "--instance", "dds-src", "--archive", dumps["plain"],
                 "--start-time", "2026-11-01T01:00:00Z", "--end-time", "2026-11-01T01:05:00+00:00",
                 "--retention-days", "730")
    assert r.returncode == 0, r.stderr
    first = b.backup_id
    [b2] = [x for x in backups(server) if x.backup_id not in before | {first}]
    assert (b2.backup_start_time, b2.backup_end_time) == ("2026-11-01T01:00:00Z", "2026-11-01T01:05:00Z")
    with stack.FerretDB(tmp_path / "t", repl_set_name="rs0") as target:
        r = ddsvault("restore", "--config", svc["config"], "--backup-id", b2.backup_id, "--to", target.uri)
        assert r.returncode == 0, r.stderr
        assert snapshot(target.client(), DBS) == dumps["expected"]


def test_import_refuses_bad_input_and_stores_nothing(dumps, svc, tmp_path):
    server = svc["server"]
    repo = svc["data"] / "repository"

    def stored():
        return sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())

    before_backups = [b.backup_id for b in backups(server)]
    before_files = stored()
    bad = _bad_inputs(dumps, tmp_path)
    for name, path in bad.items():
        r = ddsvault("import", "--config", svc["config"], "--instance", "dds-src", "--archive", path)
        assert r.returncode != 0, (name, r.stdout)
        assert str(path) in r.stderr and BAD[name] in r.stderr, (name, r.stderr)
        assert "panicked" not in r.stderr
    r = ddsvault("import", "--config", svc["config"], "--instance", "dds-nope", "--archive", dumps["plain"])
    assert r.returncode != 0 and "dds-nope" in r.stderr and "not configured" in r.stderr, r.stderr
    r = ddsvault("import", "--config", svc["config"], "--instance", "dds-src", "--archive", dumps["plain"],
                 "--end-time", "2020-01-01T00:00:00Z", "--start-time", "2020-01-01T00:00:00Z")
    assert r.returncode != 0 and "expired" in r.stderr and "--retention-days" in r.stderr, r.stderr
    assert [b.backup_id for b in backups(server)] == before_backups
    assert stored() == before_files
    # Never a new catalog: a configuration whose data_dir has none is refused, naming the catalog's path.
    fresh = tmp_path / "fresh"
    cfg = tmp_path / "fresh.toml"
    cfg.write_text(svc["config"].read_text().replace(str(svc["data"]), str(fresh)))
    r = ddsvault("import", "--config", cfg, "--instance", "dds-src", "--archive", dumps["plain"])
    assert r.returncode != 0 and str(fresh / "catalog.db") in r.stderr and "does not exist" in r.stderr, r.stderr
    assert not (fresh / "catalog.db").exists()
