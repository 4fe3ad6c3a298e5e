"""Fidelity, proven both ways: every BSON type and storage feature (fidelity_data.py) is first probed against a real
FerretDB 1.24 (does it store it byte for byte?), and whatever it stores goes through

  (1) ddsvault backup (official SDK CreateBackup, Logical) -> ddsvault restore (RestoreDBInstance into a second
      FerretDB): documents byte-identical (canonical BSON), index specs and collection options identical;
  (2) the ddsvault archive -> the independent reader archive_check.read_archive: documents byte-identical, index specs
      and collection options in the metadata identical;
  (3) real mongo-tools: mongorestore 100.18.0 reads every namespace of the archive, mongorestore 100.11.0 restores it
      into FerretDB (the newest release FerretDB 1.24 accepts inserts from), mongodump 100.18.0 of the same source
      holds the same documents. Missing tools skip these tests, or fail them under CI=true.

What FerretDB refuses or alters is asserted by test_ferretdb_cannot_store[...], so the matrix in docs/fidelity.md stays
true. Everything runs against one module-scoped world (one source, one backup, one restore) to keep the runtime low.
"""
from __future__ import annotations

import json
import re
import subprocess
import time

import pymongo
import pytest
from alibabacloud_dds20151201 import models as dds
from bson import json_util
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

import fidelity_data as fd
import stack
from archive_check import read_archive
from conftest import Ddsvault, config_text, require_mongo_tools, tea_client, wait_backup
from test_restore import call, wait_restore

RAW = CodecOptions(document_class=RawBSONDocument)
VALUES = fd.value_cases()
INDEXES = fd.index_cases()
COLLECTIONS = fd.collection_cases()
FID_DBS = sorted({fd.DB_VALUES, fd.DB_NAMES, fd.DB_MANY, fd.DB_IDX, fd.DB_LONG})
TIMINGS: dict = {}

# ddsvault bugs found by this suite: case id -> reason (the affected round-trip cases are xfail(strict=True)).
DDSVAULT_BUGS: dict = {}
# Bugs found outside the parametrized matrix (their own xfail tests below), shown in the docs matrix.
MATRIX_BUGS = {**DDSVAULT_BUGS}


def _ids(cases, kinds):
    return [c.id for c in cases if c.ferretdb.kind in kinds]


def _params(cases, kinds, bugs=None):
    out = []
    for c in cases:
        if c.ferretdb.kind not in kinds:
            continue
        marks = []
        if bugs and c.id in bugs:
            marks.append(pytest.mark.xfail(strict=True, reason=bugs[c.id]))
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


# ------------------------------------------------------------------------------------------------ probing

def _log_since(f: stack.FerretDB, offset: int) -> str:
    with open(f.log_path, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode("utf-8", "replace")


def _probe_insert(f, client, db, coll, raw: bytes):
    """Insert one raw document; returns ("ok", None) or ("error", message). When FerretDB drops the connection
    instead of answering, the message is FerretDB's own log line about it."""
    off = f.log_path.stat().st_size
    try:
        client[db].get_collection(coll, codec_options=RAW).insert_one(RawBSONDocument(raw))
        return "ok", None
    except pymongo.errors.AutoReconnect as e:
        time.sleep(0.2)
        return "error", f"connection closed ({e}); FerretDB log: {_log_since(f, off)}"
    except pymongo.errors.PyMongoError as e:
        return "error", str(e)


def _index_specs(client, db, coll):
    return {i["name"]: {k: v for k, v in i.items() if k != "ns"}
            for i in client[db].get_collection(coll).list_indexes()}


def _collections(client, db):
    """{name: (type, options)}; the uuid in `info` differs between servers by design and is left out."""
    return {c["name"]: (c.get("type"), dict(c.get("options", {}))) for c in client[db].list_collections()}


def _snapshot(client):
    """Everything a restore must reproduce, in the fid_* databases: raw documents by _id, index specs, options."""
    out = {}
    for db in client.list_database_names():
        if db not in FID_DBS:
            continue
        colls = _collections(client, db)
        for name, (typ, opts) in colls.items():
            c = client[db].get_collection(name, codec_options=RAW)
            docs = [d.raw for d in c.find({}, sort=[("_id", 1)], batch_size=2)]
            out[f"{db}.{name}"] = {"docs": docs, "indexes": _index_specs(client, db, name), "type": typ,
                                   "options": opts}
    return out


def _build_source(f: stack.FerretDB) -> dict:
    """Probes every case against FerretDB, leaving exactly what it stores in place. Returns the probe results."""
    client = f.client(retryWrites=False, retryReads=False)
    results = {"values": {}, "indexes": {}, "collections": {}}

    for case in VALUES:
        status, err = _probe_insert(f, client, fd.DB_VALUES, case.id, case.raw)
        if status == "ok":
            got = client[fd.DB_VALUES].get_collection(case.id, codec_options=RAW).find_one({"_id": case.id})
            results["values"][case.id] = ("stored", got.raw if got is not None else None)
        else:
            results["values"][case.id] = ("refused", err)
            client[fd.DB_VALUES].drop_collection(case.id)

    idx = client[fd.DB_IDX].get_collection("t", codec_options=RAW)
    idx.insert_many([RawBSONDocument(d) for d in fd.index_seed_docs()])
    for case in INDEXES:
        before = set(_index_specs(client, fd.DB_IDX, "t"))
        try:
            name = idx.create_index(case.keys, **case.options)
            spec = _index_specs(client, fd.DB_IDX, "t")[name]
            results["indexes"][case.id] = ("stored", spec)
        except pymongo.errors.PyMongoError as e:
            assert set(_index_specs(client, fd.DB_IDX, "t")) == before
            results["indexes"][case.id] = ("refused", str(e))

    for case in COLLECTIONS:
        try:
            client[case.db].create_collection(case.name, **case.options)
            for i in range(case.docs):
                client[case.db].get_collection(case.name, codec_options=RAW).insert_one(
                    RawBSONDocument(fd.collection_doc(case, i)))
            typ, opts = _collections(client, case.db)[case.name]
            results["collections"][case.id] = ("stored", opts)
        except pymongo.errors.PyMongoError as e:
            results["collections"][case.id] = ("refused", str(e))

    many = client[fd.DB_MANY].get_collection("x", codec_options=RAW).database
    for i in range(fd.MANY_COLLECTIONS):
        many.get_collection(fd.many_name(i), codec_options=RAW).insert_one(RawBSONDocument(fd.many_doc(i)))
    return results


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("fidelity")
    t0 = time.monotonic()
    src = stack.FerretDB(base / "src", repl_set_name="rs0")
    dst = stack.FerretDB(base / "dst", repl_set_name="rs0")
    sel = stack.FerretDB(base / "sel", repl_set_name="rs0")
    batch = stack.FerretDB(base / "batch", repl_set_name="rs0")
    server = None
    try:
        probes = _build_source(src)
        TIMINGS["probe + load source"] = time.monotonic() - t0
        expected = _snapshot(src.client())
        data = base / "data"
        server = Ddsvault(base / "svc", config_text(data, {
            "dds-src": (src.uri, "local_ssd"), "dds-dst": (dst.uri, "local_ssd"), "dds-sel": (sel.uri, "local_ssd"),
            "dds-batch": (batch.uri, "local_ssd")}))
        tea = tea_client(server)
        t1 = time.monotonic()
        r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-src", backup_method="Logical")).body
        backup = wait_backup(tea, "dds-src", r.backup_job_id, timeout=600)
        TIMINGS["ddsvault backup"] = time.monotonic() - t1
        assert backup.backup_status == "Success", backup
        archive_path = data / "repository" / "backups" / "dds-src" / backup.backup_id / "archive.zst"

        t2 = time.monotonic()
        out = call(server, "RestoreDBInstance", DBInstanceId="dds-src", BackupId=backup.backup_id,
                   TargetDBInstanceId="dds-dst")
        restore_job = wait_restore(server, "dds-dst", out["RestoreJobId"], timeout=600)
        TIMINGS["ddsvault restore"] = time.monotonic() - t2

        t3 = time.monotonic()
        restored = _snapshot(dst.client())
        TIMINGS["read back target"] = time.monotonic() - t3

        t4 = time.monotonic()
        import zstandard

        with open(archive_path, "rb") as fh:
            plain = zstandard.ZstdDecompressor().stream_reader(fh).read()
        archive = read_archive(plain)
        TIMINGS["archive_check.read_archive"] = time.monotonic() - t4
        yield {"src": src, "dst": dst, "sel": sel, "batch": batch, "server": server, "backup_id": backup.backup_id, "probes": probes, "expected": expected,
               "restored": restored, "restore_job": restore_job, "archive": archive, "archive_path": archive_path,
               "base": base}
    finally:
        if server is not None:
            server.stop()
        for f in (src, dst, sel, batch):
            f.stop()
        print("\nfidelity timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items()))


# ------------------------------------------------------------------------------------------------ FerretDB matrix

@pytest.mark.parametrize("case", _params(VALUES, {"stores"}))
def test_ferretdb_stores_value(world, case):
    status, got = world["probes"]["values"][case.id]
    assert status == "stored", got
    assert got == case.raw, "FerretDB altered the document"


@pytest.mark.parametrize("case", _params(VALUES, {"refuses", "alters"}) + _params(INDEXES, {"refuses", "alters"})
                         + _params(COLLECTIONS, {"refuses", "alters"}))
def test_ferretdb_cannot_store(world, case):
    """The recorded refusal (exact error) or alteration is still what FerretDB 1.24 does."""
    kind = ("values" if isinstance(case, fd.ValueCase) else
            "indexes" if isinstance(case, fd.IndexCase) else "collections")
    status, got = world["probes"][kind][case.id]
    v = case.ferretdb
    if v.kind == "refuses":
        assert status == "refused", f"FerretDB now stores {case.id}: update fidelity_data.py and docs/fidelity.md"
        assert v.error in got, got
        if v.closes_connection:
            assert "connection closed" in got, got
        return
    assert status == "stored", got
    if isinstance(case, fd.ValueCase):
        assert got != case.raw
        assert got == v.altered, got.hex()
    elif isinstance(case, fd.IndexCase):
        assert not (set(case.options) - {"name"}) <= set(got), got  # an option was dropped
        assert got["key"] == dict(case.keys)
    else:
        assert got != case.options, got
        assert got == {}, got


@pytest.mark.parametrize("case", _params(INDEXES, {"stores"}))
def test_ferretdb_stores_index(world, case):
    status, spec = world["probes"]["indexes"][case.id]
    assert status == "stored", spec
    assert list(spec["key"].items()) == case.keys
    for k, v in case.options.items():
        assert spec[k] == v, (k, spec)


@pytest.mark.parametrize("case", _params(COLLECTIONS, {"stores"}))
def test_ferretdb_stores_collection(world, case):
    status, opts = world["probes"]["collections"][case.id]
    assert status == "stored", opts
    assert opts == case.options
    ns = f"{case.db}.{case.name}"
    assert sorted(world["expected"][ns]["docs"]) == sorted(fd.collection_doc(case, i) for i in range(case.docs))


def test_ferretdb_stores_1000_collections(world):
    many = {ns: v for ns, v in world["expected"].items() if ns.startswith(fd.DB_MANY + ".")}
    assert len(many) == fd.MANY_COLLECTIONS
    for i in range(fd.MANY_COLLECTIONS):
        assert many[f"{fd.DB_MANY}.{fd.many_name(i)}"]["docs"] == [fd.many_doc(i)]


# ------------------------------------------------------------------------------------------------ (1) ddsvault -> ddsvault

def _stored_value_ids():
    return _params(VALUES, {"stores", "alters"}, DDSVAULT_BUGS)


@pytest.mark.parametrize("case", _stored_value_ids())
def test_ddsvault_roundtrip_value(world, case):
    ns = f"{fd.DB_VALUES}.{case.id}"
    src = world["expected"][ns]
    if case.ferretdb.kind == "stores":
        assert src["docs"] == [case.raw]
    got = world["restored"].get(ns)
    assert got is not None, f"{ns} missing after restore"
    assert got["docs"] == src["docs"], "restored document differs (canonical BSON bytes)"
    assert got["indexes"] == src["indexes"]
    assert (got["type"], got["options"]) == (src["type"], src["options"])


@pytest.mark.parametrize("case", _params(INDEXES, {"stores", "alters"}, DDSVAULT_BUGS))
def test_ddsvault_roundtrip_index(world, case):
    ns = f"{fd.DB_IDX}.t"
    name = world["probes"]["indexes"][case.id][1]["name"]
    assert world["restored"][ns]["indexes"].get(name) == world["expected"][ns]["indexes"][name]


@pytest.mark.parametrize("case", _params(COLLECTIONS, {"stores", "alters"}, DDSVAULT_BUGS))
def test_ddsvault_roundtrip_collection(world, case):
    ns = f"{case.db}.{case.name}"
    src, got = world["expected"][ns], world["restored"].get(ns)
    assert got is not None, f"{ns} missing after restore"
    assert got["docs"] == src["docs"]
    assert got["indexes"] == src["indexes"]
    assert (got["type"], got["options"]) == (src["type"], src["options"])


def test_ddsvault_roundtrip_everything(world):
    """Every namespace of the fid_* databases (incl. 1000 collections), every document byte, index spec and option."""
    exp, got = world["expected"], world["restored"]
    assert sorted(got) == sorted(exp)
    diff = [ns for ns in exp if got[ns] != exp[ns]]
    assert not diff, diff[:20]
    assert world["restore_job"]["Status"] == "Success", world["restore_job"]
    assert world["restore_job"]["RestoredDocuments"] == sum(len(v["docs"]) for v in exp.values())


def test_selective_restore_by_awkward_names(world):
    """CollectionNames / DatabaseNames with dotted, unicode, comma, space and 63-character names (JSON arrays)."""
    by_id = {c.id: c for c in COLLECTIONS}
    picked = [by_id[i] for i in ("dotted_name", "unicode_name", "comma_name", "space_name", "long_name")]
    wanted = [f"{c.db}.{c.name}" for c in picked]
    out = call(world["server"], "RestoreDBInstance", DBInstanceId="dds-src", BackupId=world["backup_id"],
               TargetDBInstanceId="dds-sel", CollectionNames=json.dumps(wanted, ensure_ascii=False),
               DatabaseNames=json.dumps([fd.DB_LONG]))
    job = wait_restore(world["server"], "dds-sel", out["RestoreJobId"], timeout=300)
    assert job["Status"] == "Success", job
    got = _snapshot(world["sel"].client())
    exp = {ns: v for ns, v in world["expected"].items() if ns in wanted or ns.startswith(fd.DB_LONG + ".")}
    assert sorted(got) == sorted(exp)
    for ns in exp:
        assert got[ns] == exp[ns], ns


def test_drop_existing_restores_options_and_indexes(world):
    """DropExisting over a plain collection of the same name brings back the capped options, indexes and documents
    (the target collection is replaced, not emptied)."""
    ns_db, name = fd.DB_NAMES, "capped_max"
    c = world["dst"].client()
    c[ns_db].drop_collection(name)
    c[ns_db][name].insert_one({"_id": "stray"})
    c[ns_db][name].create_index([("stray", 1)])
    out = call(world["server"], "RestoreDBInstance", DBInstanceId="dds-src", BackupId=world["backup_id"],
               TargetDBInstanceId="dds-dst", CollectionNames=json.dumps([f"{ns_db}.{name}"]), DropExisting="true")
    job = wait_restore(world["server"], "dds-dst", out["RestoreJobId"], timeout=300)
    assert job["Status"] == "Success", job
    got = _snapshot(c)[f"{ns_db}.{name}"]
    assert got == world["expected"][f"{ns_db}.{name}"]


# Found by this suite and fixed: the dump asked FerretDB for 1000 documents per reply, and FerretDB 1.24 does not
# cap replies at 16 MiB as mongod does, so 1000 x 50 KiB documents came back as one 51 MB reply over the driver's
# 48 MB limit. The dump now sizes batches from the collection's average document size.
def test_backup_of_collection_larger_than_one_wire_message(world):
    case = fd.BIG_BATCH
    c = world["batch"].client()
    if case.name not in c[case.db].list_collection_names():
        coll = c[case.db].get_collection(case.name, codec_options=RAW)
        coll.insert_many([RawBSONDocument(fd.collection_doc(case, i)) for i in range(case.docs)])
    tea = tea_client(world["server"])
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-batch", backup_method="Logical")).body
    b = wait_backup(tea, "dds-batch", r.backup_job_id, timeout=300)
    assert b.backup_status == "Success", b.to_map()
    assert "over maximum" not in world["server"].stderr()


# ------------------------------------------------------------------------------------------------ (2) archive -> reader

def _archive_ns(world, ns):
    a = world["archive"].namespaces.get(ns)
    assert a is not None, f"{ns} not in the archive"
    return a


@pytest.mark.parametrize("case", _params(VALUES, {"stores", "alters"}))
def test_archive_roundtrip_value(world, case):
    ns = f"{fd.DB_VALUES}.{case.id}"
    assert sorted(_archive_ns(world, ns).docs) == sorted(world["expected"][ns]["docs"])


def _archive_metadata(a):
    meta = json_util.loads(a.metadata) if a.metadata else {}
    idx = {i["name"]: {k: v for k, v in i.items() if k != "ns"} for i in meta.get("indexes", [])}
    return idx, dict(meta.get("options", {}))


@pytest.mark.parametrize("case", _params(INDEXES, {"stores", "alters"}))
def test_archive_roundtrip_index(world, case):
    ns = f"{fd.DB_IDX}.t"
    name = world["probes"]["indexes"][case.id][1]["name"]
    idx, _ = _archive_metadata(_archive_ns(world, ns))
    exp = world["expected"][ns]["indexes"][name]
    assert idx.get(name) == exp


@pytest.mark.parametrize("case", _params(COLLECTIONS, {"stores", "alters"}))
def test_archive_roundtrip_collection(world, case):
    ns = f"{case.db}.{case.name}"
    a = _archive_ns(world, ns)
    assert sorted(a.docs) == sorted(world["expected"][ns]["docs"])  # natural order in the archive
    idx, opts = _archive_metadata(a)
    assert idx == world["expected"][ns]["indexes"]
    assert opts == world["expected"][ns]["options"]


def test_archive_roundtrip_everything(world):
    exp = world["expected"]
    namespaces = {ns: a for ns, a in world["archive"].namespaces.items() if ns.split(".", 1)[0] in FID_DBS}
    assert sorted(namespaces) == sorted(exp)
    for ns, a in namespaces.items():
        assert sorted(a.docs) == sorted(exp[ns]["docs"]), ns
        idx, opts = _archive_metadata(a)
        assert idx == exp[ns]["indexes"], ns
        assert opts == exp[ns]["options"], ns


# ------------------------------------------------------------------------------------------------ (3) mongo-tools

def _compare_fid(world, client):
    """Namespaces whose documents or collection type/options differ from the source (indexes: see below)."""
    got = _snapshot(client)
    exp = world["expected"]
    assert sorted(got) == sorted(exp)
    return [ns for ns in exp
            if (got[ns]["docs"], got[ns]["type"], got[ns]["options"]) != (exp[ns]["docs"], exp[ns]["type"],
                                                                         exp[ns]["options"])]


def test_mongorestore_roundtrip(world, tmp_path):
    """ddsvault archive (zstd, decompressed) -> mongorestore 100.18.0 reads every namespace (dry run + full read, see
    stack.current_mongorestore_reads_every_namespace) -> mongorestore 100.11.0 restores it into FerretDB: every
    document byte-identical, every collection's type and options identical. Indexes: mongorestore sends the legacy
    `ns` index option, which FerretDB 1.24 refuses (asserted below), hence --noIndexRestore."""
    require_mongo_tools()
    plain = tmp_path / "archive"
    subprocess.run(["zstd", "-d", "-q", "-f", str(world["archive_path"]), "-o", str(plain)], check=True)
    with stack.FerretDB(tmp_path / "t", repl_set_name="rs0") as target:
        fid_ns = [ns for ns in world["archive"].namespaces if ns.split(".", 1)[0] in FID_DBS]
        stack.current_mongorestore_reads_every_namespace(target.uri, plain, fid_ns)
        r = subprocess.run([stack.mongorestore_for_ferretdb(), f"--uri={target.uri}", f"--archive={plain}",
                            "--noIndexRestore", "--nsExclude=admin.*"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert _compare_fid(world, target.client()) == []
    with stack.FerretDB(tmp_path / "i", repl_set_name="rs0") as target:
        r = subprocess.run([stack.mongorestore_for_ferretdb(), f"--uri={target.uri}", f"--archive={plain}",
                            f"--nsInclude={fd.DB_IDX}.*"], capture_output=True, text=True, timeout=600)
        assert r.returncode != 0 and 'Index option "ns" is unknown' in r.stderr, r.stderr[-3000:]


def test_mongodump_archive_reads_like_ours(world, tmp_path):
    """Real mongodump 100.18.0 of the same source -> archive_check: the same documents as ddsvault's archive."""
    require_mongo_tools()
    out = tmp_path / "dump.archive"
    r = subprocess.run([stack.bin("mongodump"), f"--uri={world['src'].uri}", f"--archive={out}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    theirs = read_archive(out.read_bytes()).namespaces
    for ns, exp in world["expected"].items():
        assert sorted(theirs[ns].docs) == sorted(exp["docs"]), ns
        assert sorted(world["archive"].namespaces[ns].docs) == sorted(theirs[ns].docs), ns


def test_docs_matrix_is_current():
    """docs/fidelity.md holds exactly the matrix fidelity_data.py renders (regenerate: see the doc)."""
    doc = (stack.REPO_DIR / "docs" / "fidelity.md").read_text()
    assert fd.matrix_markdown(MATRIX_BUGS) in doc, "docs/fidelity.md is stale: python -c 'import test_fidelity as t; print(t.fd.matrix_markdown(t.MATRIX_BUGS))'"


def test_timings_are_recorded(world):
    print(json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))
    assert set(TIMINGS) >= {"ddsvault backup", "ddsvault restore"}
