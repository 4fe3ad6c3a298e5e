"""Every stored byte of a backup is authenticated (issue 17.5): single-bit flips anywhere in a Logical and a
Snapshot backup — archive, manifest.json, snapshot index, chunks — are all reported by `ddsvault verify`; a forged
manifest with a valid self-checksum is refused because the catalog holds its hash; `ddsvault scrub` quarantines a
damaged chunk and the next snapshot writes it again.

The flips run the real CLI binary, one `ddsvault verify` process per flip, each on the original files with one bit
changed (restored after the check). FLIPS (default 1000) sets how many."""
from __future__ import annotations

import json
import os
import random
import subprocess
import time
from hashlib import sha256

import pytest
from alibabacloud_dds20151201 import models as dds

import stack
from conftest import DDSVAULT_BIN, Ddsvault, config_text, tea_client, wait_backup

FLIPS = int(os.environ.get("FLIPS", "1000"))


def instance_lines(iid, uri, data_path=None):
    lines = ["[[instances]]", f'id = "{iid}"', f'uri = "{uri}"', 'storage_type = "local_ssd"']
    if data_path is not None:
        lines.append(f'data_path = "{data_path}"')
    return "\n".join(lines) + "\n"


def ddsvault(server, *args, timeout=120):
    return subprocess.run([DDSVAULT_BIN, *args, "--config", str(server.config_path)], capture_output=True,
                          text=True, timeout=timeout)


def verify(server, backup_id):
    return ddsvault(server, "verify", "--backup-id", str(backup_id))


def take(tea, iid, method):
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id=iid, backup_method=method)).body
    b = wait_backup(tea, iid, r.backup_job_id)
    assert (b.backup_status, b.backup_method) == ("Success", method)
    return b.backup_id


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("integrity")
    rs = stack.FerretDB(base / "rs", repl_set_name="rs0")
    rs.client().shop.orders.insert_many([{"_id": i, "item": f"item-{i}", "qty": i % 7} for i in range(300)])
    single = stack.FerretDB(base / "single")
    rnd = random.Random(17)
    single.client().big.docs.insert_many([{"_id": i, "pad": rnd.randbytes(200).hex()} for i in range(500)])
    text = config_text(base / "data", {}) + instance_lines("dds-log", rs.uri) \
        + instance_lines("dds-snap", single.uri, data_path=single.data_dir)
    server = Ddsvault(base / "svc", text)
    tea = tea_client(server)
    logical = take(tea, "dds-log", "Logical")
    snap = take(tea, "dds-snap", "Snapshot")
    yield {"server": server, "tea": tea, "rs": rs, "single": single, "base": base, "logical": logical,
           "snap": snap, "repo": base / "data" / "repository"}
    server.stop()
    for f in (rs, single):
        f.stop()


def backup_files(repo, instance, backup_id):
    """Every stored file a backup consists of, in groups a flip picks alike: its manifest, its other files (the
    archive, or the snapshot index), and for a snapshot every chunk of its instance's store (this instance has
    only this snapshot). Grouping gives the small manifest a third of the flips instead of 1/len(files)."""
    prefix = sorted(p for p in (repo / "backups" / instance / str(backup_id)).rglob("*") if p.is_file())
    chunks = sorted(p for p in (repo / "chunks" / instance).rglob("*") if p.is_file())
    groups = [[p for p in prefix if p.name == "manifest.json"], [p for p in prefix if p.name != "manifest.json"],
              chunks]
    return [g for g in groups if g]


def test_every_single_bit_flip_of_a_logical_or_snapshot_backup_is_detected(env):
    server, repo = env["server"], env["repo"]
    # verify works beside a server, but a collector pass reading a flipped manifest would only add noise.
    server.stop()
    try:
        targets = [(env["logical"], backup_files(repo, "dds-log", env["logical"])),
                   (env["snap"], backup_files(repo, "dds-snap", env["snap"]))]
        names = {p.name for _, groups in targets for g in groups for p in g}
        assert {"manifest.json", "snapshot-index.json.zst", "archive.zst"} <= names, names
        assert len(targets[1][1]) == 3, "no chunk found"
        for backup_id, _ in targets:
            r = verify(server, backup_id)
            assert r.returncode == 0, r.stderr
            assert "manifest authenticated by the catalog" in r.stdout, r.stdout

        rnd = random.Random(1705)
        missed, per_file, started = [], {}, time.monotonic()
        for n in range(FLIPS):
            backup_id, groups = targets[n % 2]
            path = rnd.choice(rnd.choice(groups))
            original = path.read_bytes()
            bit = rnd.randrange(len(original) * 8)
            flipped = bytearray(original)
            flipped[bit // 8] ^= 1 << (bit % 8)
            path.write_bytes(bytes(flipped))
            try:
                r = verify(server, backup_id)
            finally:
                path.write_bytes(original)
            key = str(path.relative_to(repo))
            per_file[key] = per_file.get(key, 0) + 1
            if r.returncode == 0:
                missed.append((key, bit // 8, bit % 8, r.stdout.strip()))
        elapsed = time.monotonic() - started
        print(f"{FLIPS} single-bit flips over {len(per_file)} files in {elapsed:.1f}s "
              f"({1000 * elapsed / FLIPS:.0f} ms per verify); missed {len(missed)}")
        for k in sorted(per_file):
            if not k.startswith("chunks/"):
                print(f"  {per_file[k]:4d} flips  {k}")
        chunk_flips = [v for k, v in per_file.items() if k.startswith("chunks/")]
        print(f"  {sum(chunk_flips):4d} flips  over {len(chunk_flips)} chunks")
        assert not missed, missed
        # The originals are back: both backups verify again.
        for backup_id, _ in targets:
            assert verify(server, backup_id).returncode == 0
    finally:
        server.start()


def test_a_forged_manifest_with_a_valid_trailer_is_refused_by_the_catalog_hash(env):
    """What the self-checksum cannot catch (a manifest rewritten with its trailer recomputed), the catalog does:
    the row holds the hash of the bytes written at completion."""
    server, repo = env["server"], env["repo"]
    path = repo / "backups" / "dds-log" / str(env["logical"]) / "manifest.json"
    original = path.read_bytes()
    m = json.loads(original)
    assert m["format"] == 2 and len(m.pop("manifest_sha256")) == 64
    m["extra"]["details"]["consistent_time"] = "2000-01-01T00:00:00Z"
    body = json.dumps(m, indent=2, ensure_ascii=False).encode()
    assert body.endswith(b"\n}")
    forged = body[:-2] + b',\n  "manifest_sha256": "' + sha256(body).hexdigest().encode() + b'"\n}\n'
    path.write_bytes(forged)
    try:
        r = verify(server, env["logical"])
        assert r.returncode != 0, r.stdout
        assert "recorded in the catalog" in r.stderr, r.stderr
        # Restore reads the manifest the same way and refuses before writing anything.
        r = ddsvault(server, "restore", "--backup-id", str(env["logical"]), "--to", env["rs"].uri)
        assert r.returncode != 0 and "recorded in the catalog" in r.stderr, r.stderr
    finally:
        path.write_bytes(original)
    assert verify(server, env["logical"]).returncode == 0


def test_scrub_quarantines_a_damaged_chunk_and_the_next_snapshot_rewrites_it(env):
    server, repo = env["server"], env["repo"]
    tea = tea_client(server)  # the server may have restarted on another port
    clean = ddsvault(server, "scrub")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 quarantined" in clean.stdout and "(0 damaged)" in clean.stdout, clean.stdout

    chunks = sorted(p for p in (repo / "chunks" / "dds-snap").rglob("*") if p.is_file())
    victim = chunks[len(chunks) // 2]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))

    r = ddsvault(server, "scrub")
    assert r.returncode != 0, r.stdout
    assert f"DAMAGED chunk {victim.name} of instance dds-snap" in r.stdout, r.stdout
    assert f"DAMAGED backup {env['snap']}" in r.stdout, r.stdout
    assert not victim.exists()
    quarantined = list((repo / "quarantine" / "chunks" / "dds-snap").rglob(f"{victim.name}.*"))
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == bytes(data), quarantined
    assert verify(server, env["snap"]).returncode != 0

    # The next snapshot finds the chunk absent and writes it again: both snapshots verify.
    again = take(tea, "dds-snap", "Snapshot")
    assert victim.exists()
    for b in (again, env["snap"]):
        v = verify(server, b)
        assert v.returncode == 0, v.stderr
    r = ddsvault(server, "scrub")
    assert r.returncode == 0, r.stdout + r.stderr
