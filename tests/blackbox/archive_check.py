"""An independent reader of the mongodump archive format, written from the mongo-tools spec (mongo-internals.md
§1.1), not from ddsvault's code: it checks what mongorestore's demultiplexer checks, including the CRC-64 of every
namespace, and returns the documents.

It double-checks our archives beside real mongorestore (which cannot insert into FerretDB from 100.12.0 on, see
docs/mongodump-interop.md), and reads the archives real mongodump writes.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import bson

MAGIC = 0x8199E26D
MAX_BSON = 16 * 1024 * 1024
TERMINATOR = -1


def _crc64_xz_table():
    poly = 0xC96C5795D7870F42
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc64_xz_table()


def crc64_xz(data: bytes, crc: int = 0) -> int:
    """CRC-64/XZ (Go's crc64.ECMA with pre/post inversion), incremental."""
    c = crc ^ 0xFFFFFFFFFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFFFFFFFFFF


assert crc64_xz(b"123456789") == 0x995DC9BBDF1939FA


class ArchiveError(Exception):
    pass


@dataclass
class Namespace:
    db: str
    collection: str
    metadata: str
    type: str
    docs: list = field(default_factory=list)
    crc: int = 0
    closed: bool = False
    opened: bool = False


@dataclass
class Archive:
    header: dict
    namespaces: dict  # "db.collection" -> Namespace


def read_archive(data: bytes) -> Archive:
    pos = 0

    def read_block_item():
        nonlocal pos
        if pos + 4 > len(data):
            raise ArchiveError(f"truncated at offset {pos}")
        (n,) = struct.unpack_from("<i", data, pos)
        if n == TERMINATOR:
            pos += 4
            return None
        if n < 5 or n > MAX_BSON:
            raise ArchiveError(f"bad BSON length {n} at offset {pos}")
        if pos + n > len(data) or data[pos + n - 1] != 0:
            raise ArchiveError(f"truncated or unterminated document at offset {pos}")
        raw = data[pos:pos + n]
        pos += n
        return raw

    if len(data) < 4 or struct.unpack_from("<I", data, 0)[0] != MAGIC:
        raise ArchiveError("bad magic")
    pos = 4
    header_raw = read_block_item()
    if header_raw is None:
        raise ArchiveError("missing header")
    header = bson.decode(header_raw)
    namespaces = {}
    while True:
        raw = read_block_item()
        if raw is None:
            break
        meta = bson.decode(raw)
        key = f"{meta['db']}.{meta['collection']}"
        namespaces[key] = Namespace(meta["db"], meta["collection"], meta["metadata"], meta.get("type", ""))
    current = None
    while pos < len(data):
        raw = read_block_item()
        if raw is None:
            raise ArchiveError(f"terminator where a namespace header was expected at offset {pos - 4}")
        hdr = bson.decode(raw)
        key = f"{hdr['db']}.{hdr['collection']}"
        ns = namespaces.get(key)
        if ns is None:
            raise ArchiveError(f"namespace {key} not in the prelude")
        if ns.closed:
            raise ArchiveError(f"namespace {key} reopened after EOF")
        if hdr["EOF"]:
            got = struct.unpack("<q", struct.pack("<Q", ns.crc))[0]
            if got != hdr["CRC"]:
                raise ArchiveError(f"CRC mismatch for {key}: computed {got}, archive says {hdr['CRC']}")
            ns.closed = True
            if read_block_item() is not None:
                raise ArchiveError(f"document after EOF header of {key}")
            continue
        ns.opened = True
        current = ns
        while True:
            doc = read_block_item()
            if doc is None:
                break
            current.docs.append(doc)
            current.crc = crc64_xz(doc, current.crc)
    for key, ns in namespaces.items():
        if ns.type != "timeseries" and not ns.closed:
            raise ArchiveError(f"namespace {key} never reached EOF")
    return Archive(header, namespaces)
