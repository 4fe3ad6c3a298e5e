"""The collector sweeps snapshot chunks no snapshot references any more (`ddsvault gc`), reports them in
`ddsvault retention --dry-run` first, and leaves every chunk a remaining snapshot needs: it still verifies and
restores into a fresh FerretDB."""
from __future__ import annotations

import random
import re
import subprocess

import pytest
from alibabacloud_dds20151201 import models as dds

import stack
from conftest import DDSVAULT_BIN, Ddsvault, config_text, snapshot, tea_client, wait_backup

IID = "dds-gc"


def cli(server, *args, ok=True):
    r = subprocess.run([DDSVAULT_BIN, *args, "--config", str(server.config_path)], capture_output=True,
                       text=True, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def chunk_files(base):
    return {p.name for p in (base / "data" / "repository" / "chunks" / IID).rglob("*") if p.is_file()}


def full_storage(tea):
    return tea.describe_backup_storage(dds.DescribeBackupStorageRequest(dbinstance_id=IID)).body.full_storage_size


def take_snapshot(tea):
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id=IID, backup_method="Snapshot")).body
    b = wait_backup(tea, IID, r.backup_job_id)
    assert (b.backup_status, b.backup_method) == ("Success", "Snapshot"), b
    return b


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("chunkgc")
    ferret = stack.FerretDB(base / "ferret")
    rnd = random.Random(7)
    ferret.client().big.docs.insert_many(
        [{"_id": i, "pad": rnd.randbytes(400).hex()} for i in range(4000)])
    # No grace period (the chunks of this test are seconds old), and no collector pass of the server's own
    # during the test: the CLI's passes are the ones observed.
    extra = "[retention]\ngc_interval_secs = 86400\nchunk_grace_secs = 0\n"
    text = config_text(base / "data", {}, extra) + "\n".join(
        ["[[instances]]", f'id = "{IID}"', f'uri = "{ferret.uri}"', 'storage_type = "local_ssd"',
         f'data_path = "{ferret.data_dir}"']) + "\n"
    server = Ddsvault(base / "svc", text)
    yield {"server": server, "ferret": ferret, "base": base}
    server.stop()
    ferret.stop()


def test_gc_sweeps_the_chunks_only_a_deleted_snapshot_used(env):
    server, ferret, base = env["server"], env["ferret"], env["base"]
    tea = tea_client(server)
    first = take_snapshot(tea)
    only_first_candidates = chunk_files(base)

    # Rewrite part of the data: the first snapshot's versions of those pages are used by it alone.
    c = ferret.client()
    rnd = random.Random(8)
    c.big.docs.delete_many({"_id": {"$lt": 1000}})
    c.big.docs.insert_many([{"_id": 10000 + i, "pad": rnd.randbytes(400).hex()} for i in range(1000)])
    expected = snapshot(c, ["big"])
    second = take_snapshot(tea)
    both = chunk_files(base)
    assert both > only_first_candidates

    # Nothing is orphaned while both snapshots exist.
    out = cli(server, "gc").stdout
    assert "chunk sweep: 0 orphan chunk(s) deleted" in out, out
    assert chunk_files(base) == both

    tea.delete_backup(dds.DeleteBackupRequest(dbinstance_id=IID, backup_id=first.backup_id))
    before = full_storage(tea)

    # The dry run counts the orphans and deletes nothing.
    out = cli(server, "retention", "--dry-run").stdout
    m = re.search(r"(\d+) orphan chunk\(s\) \((\d+) byte\(s\)\) would be swept", out)
    assert m, out
    would, would_bytes = int(m.group(1)), int(m.group(2))
    assert would > 0 and would_bytes > 0, out
    assert chunk_files(base) == both

    out = cli(server, "gc").stdout
    m = re.search(r"chunk sweep: (\d+) orphan chunk\(s\) deleted, (\d+) byte\(s\) freed", out)
    assert m, out
    assert (int(m.group(1)), int(m.group(2))) == (would, would_bytes), out
    left = chunk_files(base)
    # Only chunks the first snapshot had (and the second does not use) went.
    assert len(left) == len(both) - would
    assert both - left <= only_first_candidates
    assert full_storage(tea) == before - would_bytes

    # A second pass finds nothing more.
    assert "chunk sweep: 0 orphan chunk(s) deleted" in cli(server, "gc").stdout

    # The second snapshot still has every chunk: it verifies and restores into a fresh FerretDB.
    v = cli(server, "verify", "--backup-id", second.backup_id).stdout
    assert "snapshot chunk(s) checked" in v, v
    target = base / "restored" / "data"
    cli(server, "restore", "--backup-id", second.backup_id, "--to-dir", str(target))
    with stack.FerretDB(base / "restored") as fresh:
        assert snapshot(fresh.client(), ["big"]) == expected
