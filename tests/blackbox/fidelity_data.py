"""Deterministic (seeded) fidelity test data: every BSON type and every storage feature a MongoDB-wire server can
hold, with what FerretDB v1.24 (SQLite backend) does with each one.

Each case is raw BSON (bytes we build ourselves, so that deprecated types, duplicate keys and field order are exactly
what we mean) or a feature (indexes, collection options, names, sizes). `FERRETDB` is the recorded verdict for FerretDB
1.24; `test_fidelity.py` re-probes every case against a real FerretDB and asserts the verdict, so this table cannot
silently go stale. Cases FerretDB stores faithfully go through ddsvault's round trips.

Only the standard library and pymongo's `bson` are used.
"""
from __future__ import annotations

import datetime
import random
import struct
from dataclasses import dataclass, field
from typing import Optional

import bson
from bson.binary import Binary
from bson.code import Code
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

SEED = 20261127

# ------------------------------------------------------------------------------------------------ raw BSON helpers


def _cstr(s: str) -> bytes:
    b = s.encode("utf-8")
    assert b"\0" not in b
    return b + b"\0"


def _str(s: str) -> bytes:
    b = s.encode("utf-8") + b"\0"
    return struct.pack("<i", len(b)) + b


def el(type_byte: int, name: str, payload: bytes = b"") -> bytes:
    """One BSON element: type byte, key, payload."""
    return bytes([type_byte]) + _cstr(name) + payload


def doc(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return struct.pack("<i", len(body) + 5) + body + b"\0"


def id_el(value: str) -> bytes:
    return el(0x02, "_id", _str(value))


def value_doc(case_id: str, value) -> bytes:
    """{_id: case_id, v: value}, encoded by pymongo (which keeps field order)."""
    return bson.encode({"_id": case_id, "v": value})


def i32(n: int) -> bytes:
    return struct.pack("<i", n)


# ------------------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Verdict:
    """What FerretDB 1.24 does with a case.

    kind: "stores" (byte-identical read-back), "refuses" (the insert fails; `error` is a substring of the error the
    client gets, or of FerretDB's log line when FerretDB drops the connection instead of answering), or "alters"
    (stored, read back different; `altered` is the exact raw document read back, `error` describes the change).
    """

    kind: str
    error: str = ""
    closes_connection: bool = False
    altered: Optional[bytes] = None
    like_mongod: bool = False  # the alteration is what mongod itself does, so it is not a FerretDB limitation


STORES = Verdict("stores")


def refuses(error: str, closes_connection: bool = False) -> Verdict:
    return Verdict("refuses", error=error, closes_connection=closes_connection)


@dataclass(frozen=True)
class ValueCase:
    id: str
    label: str  # row label in the matrix
    raw: bytes  # the document inserted (always has a string _id equal to `id`)
    ferretdb: Verdict = STORES


def _big_doc(case_id: str, size: int) -> bytes:
    """A document of exactly `size` bytes: a seeded pseudo-random binary and a string, so compression cannot cheat."""
    rng = random.Random(SEED + size)
    head = bson.encode({"_id": case_id, "n": 1, "bin": Binary(b"", 0), "s": ""})
    free = size - len(head)
    nbin = free // 2
    nstr = free - nbin
    payload = rng.randbytes(nbin)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    s = "".join(rng.choices(letters, k=nstr))
    out = bson.encode({"_id": case_id, "n": 1, "bin": Binary(payload, 0), "s": s})
    assert len(out) == size, (len(out), size)
    return out


def _big_doc_bin(doc_id: int, size: int) -> bytes:
    """A document of exactly `size` bytes with an int _id and one seeded pseudo-random binary."""
    head = bson.encode({"_id": doc_id, "bin": Binary(b"", 0)})
    out = bson.encode({"_id": doc_id, "bin": Binary(random.Random(SEED * 7 + doc_id).randbytes(size - len(head)), 0)})
    assert len(out) == size
    return out


def _deep(levels: int):
    d = {"leaf": Int64(levels)}
    for i in range(levels - 1):
        d = {f"l{levels - 1 - i}": d, "i": i}
    return d


def value_cases() -> list[ValueCase]:
    rng = random.Random(SEED)
    oid = ObjectId(bytes(rng.randrange(256) for _ in range(12)))
    utc = datetime.timezone.utc
    c: list[ValueCase] = []

    def v(cid, label, value, verdict=STORES):
        c.append(ValueCase(cid, label, value_doc(cid, value), verdict))

    def raw(cid, label, data, verdict=STORES):
        c.append(ValueCase(cid, label, data, verdict))

    # 0x01 double
    v("double", "double", 3.141592653589793)
    v("double_neg_zero", "double -0.0", -0.0, Verdict(
        "alters", error="-0.0 is stored as +0.0 (sign bit lost)", altered=value_doc("double_neg_zero", 0.0)))
    v("double_nan", "double NaN", float("nan"), refuses("NaN is not supported", closes_connection=True))
    v("double_pos_inf", "double +Inf", float("inf"), refuses('invalid value: { "v": +Inf } (infinity values are not allowed)'))
    v("double_neg_inf", "double -Inf", float("-inf"), refuses('invalid value: { "v": -Inf } (infinity values are not allowed)'))
    v("double_subnormal", "double subnormals", [5e-324, -5e-324, 2.2250738585072009e-308, 1.7976931348623157e308])
    v("double_seeded", "double (seeded random)", [rng.uniform(-1e300, 1e300) for _ in range(16)])
    # 0x02 string
    v("string_unicode", "string unicode", "日本語 ünïcödé 🎉 \u200d\ufeff עברית")
    v("string_empty", "string empty", "")
    v("string_nul", "string with NUL", "a\x00b\x00")
    # 0x03 embedded document, field order, keys
    raw("field_order", "field order (z, a, m, …)", doc(id_el("field_order"), *(
        el(0x10, k, i32(i)) for i, k in enumerate(["z", "a", "m", "b", "y", "A", "_", "1", "0"]))))
    raw("field_order_id_last", "_id not first", doc(el(0x10, "z", i32(1)), id_el("field_order_id_last")), Verdict(
        "alters", error="_id is moved to the front of the document",
        altered=doc(id_el("field_order_id_last"), el(0x10, "z", i32(1))), like_mongod=True))
    v("duplicate_looking_keys", "duplicate-looking keys (a, A, ' a', 'a ', ä, a+U+0308, '')",
      {"a": 1, "A": 2, " a": 4, "a ": 5, "ä": 6, "a\u0308": 7, "": 8})
    v("dotted_key", "dotted field name (a.b)", {"a.b": 1}, refuses("invalid key: \"a.b\" (key must not contain '.' sign)"))
    v("dollar_key", "field name starting with $", {"$x": 1}, refuses("invalid key: \"$x\" (key must not start with '$' sign)"))
    raw("duplicate_keys", "true duplicate keys {a:1, a:2}", doc(id_el("duplicate_keys"), el(0x10, "a", i32(1)),
                                                                  el(0x10, "a", i32(2))),
        refuses('invalid key: "a" (duplicate keys are not allowed)'))
    v("embedded", "embedded document", {"x": {"y": {"z": "w"}}, "empty": {}})
    v("deep_90", "deep nesting (90 levels)", _deep(90))
    v("deep_100", "deep nesting (100 levels, mongod's limit)", _deep(99))
    # 0x04 array
    v("array", "array", [1, "two", 3.0, None, {"k": "v"}, {"": []}])
    v("array_empty", "empty array", [])
    v("array_nested", "nested arrays", [[1, [2, [3]]], []],
      refuses('invalid value: { "v": [ [ 1, [ 2, [ 3 ] ] ], [] ] } (nested arrays are not supported)'))
    # 0x05 binary, every subtype
    for sub, payload in [(0, b"\x00\x01\xfe\xff"), (1, b"fn"), (2, b"old binary"), (3, bytes(range(16))),
                         (4, bytes(range(16, 32))), (5, bytes(range(32, 48))), (6, b"encrypted"),
                         (7, b"\x01column"), (8, b"sensitive"), (0x80, b"user defined")]:
        v(f"binary_{sub:02x}", f"binary subtype 0x{sub:02x}", Binary(payload, sub))
    v("binary_empty", "binary empty", Binary(b"", 0))
    # 0x07 ObjectId, 0x08 bool
    v("objectid", "ObjectId", oid)
    v("bool", "bool", [True, False])
    # 0x09 date
    v("date", "date", datetime.datetime(2026, 11, 27, 12, 34, 56, 789000, tzinfo=utc))
    v("date_pre_1970", "date pre-1970", datetime.datetime(1601, 1, 1, tzinfo=utc))
    v("date_far_future", "date far future (9999-12-31)", datetime.datetime(9999, 12, 31, 23, 59, 59, 999000,
                                                                            tzinfo=utc))
    v("date_extremes", "date ±2^62 ms", [bson.DatetimeMS(-(2 ** 62)), bson.DatetimeMS(2 ** 62)])
    # 0x0A null
    v("null", "null", None)
    # 0x0B regex
    v("regex", "regex with flags", [Regex("^a.*b$", "imsx"), Regex("x", "ilmsux"), Regex("", "")])
    # 0x0D code, 0x0F code with scope
    v("javascript", "JavaScript code", Code("function () { return 1; }"),
      refuses("unsupported tag JavaScript: bsonproto: invalid input", closes_connection=True))
    v("javascript_scope", "code with scope", Code("function () { return x; }", {"x": 1}),
      refuses("unsupported tag JavaScriptScope: bsonproto: invalid input", closes_connection=True))
    # 0x10 int32, 0x11 timestamp, 0x12 int64
    v("int32", "int32 (min, max, 0)", [-(2 ** 31), 2 ** 31 - 1, 0])
    v("timestamp", "timestamp", Timestamp(1700000000, 7))
    v("int64", "int64 min/max", [Int64(-(2 ** 63)), Int64(2 ** 63 - 1), Int64(0)])
    # 0x13 decimal128
    v("decimal128", "decimal128", Decimal128("-1234.5678E-20"),
      refuses("invalid BSON type bsonproto.Decimal128", closes_connection=True))
    # 0xFF / 0x7F
    v("min_key", "min key", MinKey(), refuses("unsupported tag MinKey: bsonproto: invalid input", closes_connection=True))
    v("max_key", "max key", MaxKey(), refuses("unsupported tag MaxKey: bsonproto: invalid input", closes_connection=True))
    # deprecated: 0x06 undefined, 0x0C DBPointer, 0x0E symbol
    raw("undefined", "undefined (deprecated)", doc(id_el("undefined"), el(0x06, "v")),
        refuses("unsupported tag Undefined: bsonproto: invalid input", closes_connection=True))
    raw("dbpointer", "DBPointer (deprecated)", doc(id_el("dbpointer"), el(0x0C, "v", _str("db.c") + oid.binary)),
        refuses("unsupported tag DBPointer: bsonproto: invalid input", closes_connection=True))
    raw("symbol", "Symbol (deprecated)", doc(id_el("symbol"), el(0x0E, "v", _str("sym"))),
        refuses("unsupported tag Symbol: bsonproto: invalid input", closes_connection=True))
    v("dbref", "DBRef convention ($ref/$id)", bson.DBRef("c", 1),
      refuses('invalid key: "$ref" (key must not start with \'$\' sign)'))
    # size
    raw("big_15_5mb", "document of 15.5 MB", _big_doc("big_15_5mb", int(15.5 * 1024 * 1024)))
    raw("big_16mb", "document of exactly 16 MiB (the BSON maximum)", _big_doc("big_16mb", 16 * 1024 * 1024))
    return c


# ------------------------------------------------------------------------------------------------ features

DB_VALUES = "fid_values"  # one collection per value case (so a big document does not share a collection)
DB_NAMES = "fid_names"
DB_MANY = "fid_many"
DB_IDX = "fid_idx"
DB_LONG = "fid_" + "d" * 59  # 63 characters: FerretDB's longest database name
MANY_COLLECTIONS = 1000


@dataclass(frozen=True)
class IndexCase:
    id: str
    label: str
    keys: list
    options: dict = field(default_factory=dict)
    ferretdb: Verdict = STORES


def index_cases() -> list[IndexCase]:
    ni = "is not implemented yet"
    return [
        IndexCase("single", "single-field index", [("a", 1)]),
        IndexCase("compound", "compound index", [("a", 1), ("b", -1)]),
        IndexCase("descending", "descending index", [("b", -1)]),
        IndexCase("unique", "unique index", [("u", 1)], {"unique": True}),
        IndexCase("unique_compound", "unique compound index", [("c1", 1), ("c2", -1)], {"unique": True}),
        IndexCase("dotted_field", "index on a dotted path", [("x.y.z", 1)]),
        IndexCase("custom_long_name", "custom long index name (100 chars)", [("ln", 1)], {"name": "n" * 100}),
        IndexCase("sparse", "sparse index", [("s", 1)], {"sparse": True},
                  Verdict("alters", error="the index is created but `sparse: true` is dropped from its spec")),
        IndexCase("ttl", "TTL index", [("ts", 1)], {"expireAfterSeconds": 3600},
                  refuses(f'Index option "expireAfterSeconds" {ni}')),
        IndexCase("partial", "partial index", [("p", 1)], {"partialFilterExpression": {"a": {"$gt": 0}}},
                  refuses(f'Index option "partialFilterExpression" {ni}')),
        IndexCase("collation", "index with collation", [("cl", 1)], {"collation": {"locale": "en", "strength": 2}},
                  refuses(f'Index option "collation" {ni}')),
        IndexCase("hidden", "hidden index", [("hd", 1)], {"hidden": True}, refuses(f'Index option "hidden" {ni}')),
        IndexCase("text", "text index", [("txt", "text")], {}, refuses("can't find index with key: { txt: \"text\" }")),
        IndexCase("2dsphere", "2dsphere index", [("loc", "2dsphere")], {},
                  refuses("can't find index with key: { loc: \"2dsphere\" }")),
        IndexCase("2d", "2d index", [("loc2", "2d")], {}, refuses("can't find index with key: { loc2: \"2d\" }")),
        IndexCase("hashed", "hashed index", [("h", "hashed")], {}, refuses("can't find index with key: { h: \"hashed\" }")),
        IndexCase("wildcard", "wildcard index", [("$**", 1)], {}, refuses("bad JSON path: '$**'")),
    ]


@dataclass(frozen=True)
class CollectionCase:
    id: str
    label: str
    db: str
    name: str
    options: dict = field(default_factory=dict)
    docs: int = 1
    ferretdb: Verdict = STORES
    doc_size: int = 0  # 0: small documents; otherwise each document is exactly this many bytes


def collection_cases() -> list[CollectionCase]:
    ni = "is not implemented yet"
    return [
        CollectionCase("empty", "empty collection", DB_NAMES, "empty", docs=0),
        CollectionCase("unicode_name", "unicode collection name", DB_NAMES, "ünïcödé_名前_🎉"),
        CollectionCase("dotted_name", "dotted collection name (a.b.c)", DB_NAMES, "a.b.c"),
        CollectionCase("space_name", "collection name with spaces", DB_NAMES, "with space"),
        CollectionCase("long_name", "long collection name (235 chars)", DB_NAMES, "L" * 235),
        CollectionCase("comma_name", "collection name with a comma and a quote", DB_NAMES, "x,y'z"),
        CollectionCase("double_quote_name", "collection name with a double quote", DB_NAMES, 'q"z',
                       ferretdb=refuses('SQL logic error: near "z_')),
        CollectionCase("mixed_id_types", "_id of every indexable type (sorted by BSON order)", DB_NAMES, "mixed_ids",
                       docs=len(_MIXED_IDS)),
        CollectionCase("long_db_name", "database name of 63 chars", DB_LONG, "c"),
        CollectionCase("capped_size", "capped collection (size)", DB_NAMES, "capped_size",
                       {"capped": True, "size": 65536}, docs=5),
        CollectionCase("capped_max", "capped collection (size + max)", DB_NAMES, "capped_max",
                       {"capped": True, "size": 65536, "max": 10}, docs=5),
        CollectionCase("clustered", "clustered collection", DB_NAMES, "clustered",
                       {"clusteredIndex": {"key": {"_id": 1}, "unique": True}},
                       ferretdb=Verdict("alters", error="created, but `clusteredIndex` is dropped from its options")),
        CollectionCase("validator", "collection with validator", DB_NAMES, "validator",
                       {"validator": {"a": {"$type": "int"}}}, ferretdb=refuses('support for field "validator"')),
        CollectionCase("collation_coll", "collection with collation", DB_NAMES, "collation",
                       {"collation": {"locale": "en"}}, ferretdb=refuses('support for field "collation"')),
        CollectionCase("timeseries", "time-series collection", DB_NAMES, "ts", {"timeseries": {"timeField": "t"}},
                       ferretdb=refuses('support for field "timeseries"')),
        CollectionCase("view", "view", DB_NAMES, "view", {"viewOn": "empty", "pipeline": []},
                       ferretdb=refuses(f'support for field "viewOn" with value empty {ni}')),
        CollectionCase("dollar_name", "collection name with $", DB_NAMES, "dollar$x",
                       ferretdb=refuses("collection names must not contain '$'")),
        CollectionCase("unicode_db_name", "unicode database name", "fid_ünï", "c",
                       ferretdb=refuses("Invalid namespace specified")),
        CollectionCase("db_name_64", "database name of 64 chars", "fid_" + "d" * 60, "c",
                       ferretdb=refuses("Invalid namespace specified")),
    ]


# An ordinary collection (1000 documents of 50 KiB = 51 MB) that one find batch of 1000 documents cannot carry in a
# 48 MB wire message: mongod caps a reply batch at 16 MiB, FerretDB 1.24 does not. Kept out of the main world (its
# backup fails: see test_fidelity.test_backup_of_collection_larger_than_one_wire_message).
BIG_BATCH = CollectionCase("big_batch", "1000 documents of 50 KiB (51 MB)", "fid_batch", "big_batch",
                           docs=1000, doc_size=50 * 1024)


_MIXED_IDS = [None, 7, Int64(2 ** 40), 2.5, "s", {"a": 1, "b": "x"}, Binary(b"\x01\x02", 0), Binary(b"u" * 16, 4),
              ObjectId(b"fidelity-oid"), False, True, datetime.datetime(1969, 7, 20, tzinfo=datetime.timezone.utc),
              Timestamp(1, 1)]


def collection_doc(case: CollectionCase, i: int) -> bytes:
    if case.id == "mixed_id_types":
        return bson.encode({"_id": _MIXED_IDS[i], "i": i})
    if case.doc_size:
        return _big_doc_bin(i, case.doc_size)
    rng = random.Random(f"{SEED}/{case.id}/{i}")
    return bson.encode({"_id": i, "case": case.id, "r": Int64(rng.getrandbits(63)), "s": rng.randbytes(8).hex()})


def many_doc(i: int) -> bytes:
    return bson.encode({"_id": i, "name": f"c{i:04d}"})


def many_name(i: int) -> str:
    return f"c{i:04d}"


def index_seed_docs() -> list[bytes]:
    rng = random.Random(SEED + 1)
    return [bson.encode({"_id": i, "a": rng.randrange(100), "b": rng.randrange(100), "u": i, "c1": i % 7,
                         "c2": i, "x": {"y": {"z": i}}, "s": i if i % 2 else None, "ln": i})
            for i in range(50)]


# ------------------------------------------------------------------------------------------------ the matrix

def _verdict_cell(v: Verdict) -> str:
    if v.kind == "stores":
        return "yes"
    if v.kind == "alters":
        return f"alters: {v.error}" + (" (mongod does the same)" if v.like_mongod else "")
    how = " (FerretDB drops the connection; its log says)" if v.closes_connection else ""
    return f"**no**{how}: `{v.error}`"


def matrix_rows(bugs: dict) -> list[tuple]:
    """(kind, label, ferretdb, ddsvault->ddsvault, archive->reader, mongorestore) for every case."""
    rows = []
    # test_fidelity.test_mongorestore_roundtrip: documents and collection options compared; indexes are not restored.
    no_index = "index not restored: FerretDB refuses the `ns` index option mongorestore sends (`--noIndexRestore`)"

    def add(kind, case):
        v = case.ferretdb
        if v.kind == "refuses":
            rows.append((kind, case.label, _verdict_cell(v), "n/a", "n/a", "n/a"))
        elif case.id in bugs:
            rows.append((kind, case.label, _verdict_cell(v), f"**fails (ddsvault bug)**", "**fails (no archive)**",
                         "**fails (no archive)**"))
        else:
            same = "identical" if v.kind == "stores" else "identical to what FerretDB stored"
            tools = no_index if kind == "index" else same + (" (indexes not restored)" if kind == "collection" else "")
            rows.append((kind, case.label, _verdict_cell(v), same, same, tools))

    for c in value_cases():
        add("value", c)
    for c in index_cases():
        add("index", c)
    for c in collection_cases():
        add("collection", c)
    rows.append(("collection", f"database with {MANY_COLLECTIONS} collections", "yes", "identical", "identical",
                 "identical (indexes not restored)"))
    add("collection", BIG_BATCH)
    return rows


def matrix_markdown(bugs: dict) -> str:
    head = ("| Kind | Case | FerretDB 1.24 stores it? | ddsvault backup → ddsvault restore | archive → "
            "archive_check reader | mongorestore 100.11.0 into FerretDB (after 100.18.0 reads it) |\n|---|---|---|---|---|---|\n")
    return head + "".join("| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |\n" for r in matrix_rows(bugs))
