"""DescribeBackupStorage answers from sizes the catalog records at commit and the collector updates (issue 17.7),
and its `FullStorageSize` equals the bytes really in the repository: the files of the instance's listed backups
plus the snapshot chunks their indexes name, never an orphan. Checked against the files on disk after Logical,
Physical and Snapshot backups, a DeleteBackup, a collector pass, and for backups the catalog has no record of
(as committed before migration 0015): measured once when the server starts."""
from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import subprocess

import pytest
import zstandard
from alibabacloud_dds20151201 import models as dds

import stack
from conftest import DDSVAULT_BIN, Ddsvault, config_text, tea_client, wait_backup

IID = "dds-usage"


def cli(server, *args):
    r = subprocess.run([DDSVAULT_BIN, *args, "--config", str(server.config_path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def full_storage(tea) -> int:
    return int(tea.describe_backup_storage(
        dds.DescribeBackupStorageRequest(dbinstance_id=IID)).body.full_storage_size)


def listed_backup_ids(tea) -> list[str]:
    body = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id=IID, page_size=100)).body
    return [b.backup_id for b in (body.backups.backup if body.backups else [])]


def on_disk(repo, tea):
    """(bytes of the listed backups' files, bytes of the chunks their snapshot indexes name, bytes of every chunk
    file), all read from the repository directory, not from ddsvault."""
    backups, named = 0, set()
    for bid in listed_backup_ids(tea):
        d = repo / "backups" / IID / bid
        files = [p for p in d.rglob("*") if p.is_file()]
        assert files, f"listed backup {bid} has no files"
        backups += sum(p.stat().st_size for p in files)
        index = d / "snapshot-index.json.zst"
        if index.exists():
            raw = zstandard.ZstdDecompressor().stream_reader(index.read_bytes()).read()
            for f in json.loads(raw)["files"]:
                named.update(c["sha256"] for c in f["chunks"])
    chunk_dir = repo / "chunks" / IID
    chunks = {p.name: p.stat().st_size for p in chunk_dir.rglob("*") if p.is_file()} if chunk_dir.exists() else {}
    assert named <= set(chunks), "a listed snapshot names a chunk the store lacks"
    return backups, sum(chunks[d] for d in named), sum(chunks.values())


def take(tea, method):
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id=IID, backup_method=method)).body
    b = wait_backup(tea, IID, r.backup_job_id)
    assert (b.backup_status, b.backup_method) == ("Success", method), b
    return b


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("storage")
    ferret = stack.FerretDB(base / "ferret", repl_set_name="rs0", create_oplog=True)
    rnd = random.Random(17)
    ferret.client().big.docs.insert_many([{"_id": i, "pad": rnd.randbytes(300).hex()} for i in range(3000)])
    # The CLI's collector passes are the ones observed (none of the server's own), with no grace period.
    extra = "[retention]\ngc_interval_secs = 86400\nchunk_grace_secs = 0\n"
    text = config_text(base / "data", {}, extra) + "\n".join(
        ["[[instances]]", f'id = "{IID}"', f'uri = "{ferret.uri}"', 'storage_type = "local_ssd"',
         f'data_path = "{ferret.data_dir}"']) + "\n"
    server = Ddsvault(base / "svc", text)
    yield {"server": server, "ferret": ferret, "repo": base / "data" / "repository", "base": base}
    server.stop()
    ferret.stop()


def test_full_storage_size_is_the_bytes_of_listed_backups_and_their_chunks(env):
    server, repo = env["server"], env["repo"]
    tea = tea_client(server)
    assert full_storage(tea) == 0

    logical = take(tea, "Logical")
    take(tea, "Physical")
    first_snap = take(tea, "Snapshot")
    backups, named, all_chunks = on_disk(repo, tea)
    assert backups > 0 and named > 0 and named == all_chunks
    assert full_storage(tea) == backups + named

    # Change part of the data: the second snapshot reuses most chunks (counted once) and writes a few new ones.
    c = env["ferret"].client()
    rnd = random.Random(18)
    c.big.docs.delete_many({"_id": {"$lt": 800}})
    c.big.docs.insert_many([{"_id": 10000 + i, "pad": rnd.randbytes(300).hex()} for i in range(800)])
    take(tea, "Snapshot")
    backups, named, all_chunks = on_disk(repo, tea)
    assert full_storage(tea) == backups + named

    # An orphan chunk (what a crashed job could leave) is in the store but never counted.
    orphan = b"orphan chunk no snapshot names " * 40
    digest = hashlib.sha256(orphan).hexdigest()
    (repo / "chunks" / IID / digest[:2]).mkdir(parents=True, exist_ok=True)
    (repo / "chunks" / IID / digest[:2] / digest).write_bytes(orphan)
    assert full_storage(tea) == backups + named

    # A deleted backup stops counting at once; the chunks only it named count until the collector deletes them.
    tea.delete_backup(dds.DeleteBackupRequest(dbinstance_id=IID, backup_id=logical.backup_id))
    tea.delete_backup(dds.DeleteBackupRequest(dbinstance_id=IID, backup_id=first_snap.backup_id))
    backups, named, all_chunks = on_disk(repo, tea)
    assert named < all_chunks - len(orphan), "the first snapshot had chunks of its own"
    assert full_storage(tea) == backups + all_chunks - len(orphan)

    out = cli(server, "gc")
    assert "chunk sweep:" in out, out
    backups, named, all_chunks = on_disk(repo, tea)
    assert named == all_chunks, "the collector left unreferenced chunks"
    assert full_storage(tea) == backups + named
    assert len(listed_backup_ids(tea)) == 2


def test_backups_without_a_record_are_measured_at_start(env):
    """Backups committed before migration 0015 have no recorded size: drop the records (what an older catalog
    looks like) and restart; the server measures them from the repository before answering."""
    server, repo = env["server"], env["repo"]
    tea = tea_client(server)
    before = full_storage(tea)
    assert before > 0
    server.stop()
    db = sqlite3.connect(env["base"] / "data" / "catalog.db")
    with db:
        db.execute("DELETE FROM backup_storage")
        db.execute("DELETE FROM instance_chunks")
    db.close()
    server.start()
    tea = tea_client(server)
    backups, named, _ = on_disk(repo, tea)
    assert full_storage(tea) == backups + named == before
    assert "recorded the stored size of older backups" in server.stderr()
