//! The `mongodump --archive` format, byte-compatible with mongo-tools.
//!
//! ```text
//! archive           = magic, header, *collection-metadata, terminator,
//!                     *(namespace-segment | namespace-eof)
//! magic             = 6D E2 99 81            (u32 0x8199e26d, little-endian)
//! terminator        = FF FF FF FF            (i32 -1)
//! namespace-segment = ns-header(EOF=false), 1*BSON-document, terminator
//! namespace-eof     = ns-header(EOF=true, CRC), terminator
//! ```
//!
//! After the magic the stream is a sequence of *blocks*: one header
//! document, zero or more body documents, one terminator. The prelude (the
//! archive [`ArchiveHeader`] plus one [`CollectionMetadata`] per namespace) is
//! the first block. Every namespace of the prelude is closed exactly once by
//! an EOF header carrying the CRC-64/XZ (Go's `crc64.ECMA`) of all its
//! document bytes, stored as a two's-complement `i64`.
//!
//! * [`ArchiveWriter`] produces archives `mongorestore --archive` accepts.
//! * [`ArchiveReader`] enforces the rules of the mongo-tools demultiplexer
//!   (document size, trailing zero, no data after EOF, no reopen, CRC match,
//!   clean end only at a block boundary, every namespace closed), so an
//!   archive it accepts is one `mongorestore` accepts too.
//! * [`Compression`] wraps the whole byte stream (gzip exactly like
//!   `mongodump --archive --gzip`).

mod compression;
mod reader;
mod window;
mod writer;

#[cfg(test)]
mod tests;

pub use compression::{CompressWriter, Compression, DecompressReader, HashingWriter};
pub use reader::{ArchiveEvent, ArchiveReader};
pub use window::{oplog_window, OplogWindow};
pub use writer::ArchiveWriter;

use bson::{RawDocument, RawDocumentBuf};

/// Magic number at the start of every archive (written little-endian).
pub const MAGIC: u32 = 0x8199_e26d;
/// The archive format version mongo-tools writes and expects.
pub const ARCHIVE_VERSION: &str = "0.1";
/// Block terminator, an `i32` of -1.
pub const TERMINATOR: [u8; 4] = [0xff; 4];
/// Smallest valid BSON document (`05 00 00 00 00`).
pub const MIN_BSON_SIZE: usize = 5;
/// Largest document the archive parser accepts (`db.MaxBSONSize`, 16 MiB).
pub const MAX_BSON_SIZE: usize = 16 * 1024 * 1024;

/// CRC-64/XZ, which equals Go's `crc64.MakeTable(crc64.ECMA)` as used by mongodump.
///
/// Every document byte of a dump and of a restore goes through it, so it uses carry-less multiplication where the
/// CPU has it (crc64fast): the table-driven version took 12% of ddsvault's CPU time during a backup.
#[derive(Clone, Default)]
pub struct Crc64(crc64fast::Digest);

impl Crc64 {
    /// An empty digest (CPU features are detected here).
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    /// The CRC of everything fed so far; feeding may go on.
    pub fn finalize(&self) -> u64 {
        self.0.sum64()
    }

    /// The CRC of `bytes` in one call.
    pub fn checksum(bytes: &[u8]) -> u64 {
        let mut d = Self::new();
        d.update(bytes);
        d.finalize()
    }
}

/// Namespace key as the mongo-tools demultiplexer builds it (`db + "." + collection`).
pub fn namespace_key(db: &str, collection: &str) -> String {
    format!("{db}.{collection}")
}

/// The archive header (the first document after the magic number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveHeader {
    /// `--numParallelCollections` of the dump; mongorestore uses at least this.
    pub concurrent_collections: i32,
    /// Always [`ARCHIVE_VERSION`] for archives we write.
    pub version: String,
    /// Version of the server that was dumped (`"unknown"` if not known).
    pub server_version: String,
    /// Name and version of the tool that wrote the archive.
    pub tool_version: String,
}

impl ArchiveHeader {
    /// A header with the current format version.
    pub fn new(
        concurrent_collections: i32,
        server_version: impl Into<String>,
        tool_version: impl Into<String>,
    ) -> Self {
        ArchiveHeader {
            concurrent_collections,
            version: ARCHIVE_VERSION.to_string(),
            server_version: server_version.into(),
            tool_version: tool_version.into(),
        }
    }

    pub(crate) fn to_raw(&self) -> RawDocumentBuf {
        // Field order is the Go struct order; all fields are always present.
        let mut d = RawDocumentBuf::new();
        d.append("concurrent_collections", self.concurrent_collections);
        d.append("version", self.version.as_str());
        d.append("server_version", self.server_version.as_str());
        d.append("tool_version", self.tool_version.as_str());
        d
    }

    pub(crate) fn from_raw(d: &RawDocument) -> Result<Self, String> {
        Ok(ArchiveHeader {
            concurrent_collections: opt_int(d, "concurrent_collections")?.unwrap_or(0) as i32,
            version: opt_str(d, "version")?.unwrap_or_default(),
            server_version: opt_str(d, "server_version")?.unwrap_or_default(),
            tool_version: opt_str(d, "tool_version")?.unwrap_or_default(),
        })
    }
}

/// One prelude entry: a namespace the archive contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionMetadata {
    /// Database name (`""` for the oplog).
    pub db: String,
    /// Collection name (`"oplog"` for the oplog).
    pub collection: String,
    /// The `metadata.json` text (canonical Extended JSON), `""` for the oplog.
    pub metadata: String,
    /// "Total uncompressed size"; mongodump always writes 0 and readers only use it for progress.
    pub size: i64,
    /// `listCollections.type`: `collection`, `view`, `timeseries`, or `""` for the oplog.
    pub collection_type: String,
}

impl CollectionMetadata {
    /// An entry for a regular collection.
    pub fn collection(
        db: impl Into<String>,
        collection: impl Into<String>,
        metadata: impl Into<String>,
    ) -> Self {
        CollectionMetadata {
            db: db.into(),
            collection: collection.into(),
            metadata: metadata.into(),
            size: 0,
            collection_type: "collection".to_string(),
        }
    }

    /// The entry mongodump writes for `--oplog` (`db: ""`, `collection: "oplog"`).
    pub fn oplog() -> Self {
        CollectionMetadata {
            db: String::new(),
            collection: "oplog".to_string(),
            metadata: String::new(),
            size: 0,
            collection_type: String::new(),
        }
    }

    /// `db.collection`, the demultiplexer's key.
    pub fn namespace(&self) -> String {
        namespace_key(&self.db, &self.collection)
    }

    pub(crate) fn to_raw(&self) -> RawDocumentBuf {
        let mut d = RawDocumentBuf::new();
        d.append("db", self.db.as_str());
        d.append("collection", self.collection.as_str());
        d.append("metadata", self.metadata.as_str());
        // Go's `int` encodes as int32 when it fits; mirror that.
        match i32::try_from(self.size) {
            Ok(s) => d.append("size", s),
            Err(_) => d.append("size", self.size),
        }
        d.append("type", self.collection_type.as_str());
        d
    }

    pub(crate) fn from_raw(d: &RawDocument) -> Result<Self, String> {
        Ok(CollectionMetadata {
            db: opt_str(d, "db")?.unwrap_or_default(),
            collection: opt_str(d, "collection")?.unwrap_or_default(),
            metadata: opt_str(d, "metadata")?.unwrap_or_default(),
            size: opt_int(d, "size")?.unwrap_or(0),
            collection_type: opt_str(d, "type")?.unwrap_or_default(),
        })
    }
}

/// Per-namespace totals kept by the writer and the reader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespaceStats {
    /// Number of documents.
    pub documents: u64,
    /// Sum of the documents' BSON sizes.
    pub bytes: u64,
    /// CRC-64/XZ over all document bytes in archive order (the value of the EOF header, as `u64`).
    pub crc: u64,
}

/// What is wrong with an archive (or with how a writer was used).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// The first four bytes are not the archive magic number.
    #[error("bad magic number {0:#010x} (expected 0x8199e26d)")]
    BadMagic(u32),
    /// The stream ended inside a block (or before the prelude was complete).
    #[error("archive truncated: stream ended inside a block")]
    Truncated,
    /// A document length outside 5..=16 MiB.
    #[error("invalid BSON document length {0} (must be 5..=16777216)")]
    BadDocumentLength(i64),
    /// The last byte of a document is not 0x00.
    #[error("BSON document does not end with 0x00")]
    MissingTrailingZero,
    /// A terminator where a block header was expected.
    #[error("consecutive terminators / headerless blocks are not allowed")]
    HeaderlessBlock,
    /// A header or prelude document that does not have the expected shape.
    #[error("malformed {what}: {detail}")]
    MalformedHeader {
        /// Which document (archive header, collection metadata, namespace header).
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A namespace header with an empty collection name.
    #[error("namespace header with empty collection name")]
    EmptyCollectionName,
    /// The same namespace appears twice in the prelude.
    #[error("namespace listed twice in the prelude")]
    DuplicateNamespace,
    /// Data for a namespace the prelude does not list.
    #[error("namespace not listed in the prelude")]
    UnknownNamespace,
    /// A body document after an EOF header, before the terminator.
    #[error("document found after the namespace's EOF header")]
    DocumentAfterEof,
    /// A header for a namespace that already reached EOF.
    #[error("namespace header for already closed namespace")]
    Reopened,
    /// The EOF header's CRC differs from the CRC of the documents read.
    #[error("CRC mismatch: EOF header says {expected:#018x}, documents hash to {actual:#018x}")]
    CrcMismatch {
        /// Value in the EOF header (as u64).
        expected: u64,
        /// CRC of the documents read.
        actual: u64,
    },
    /// The archive ended while a namespace was open (no EOF header).
    #[error("archive finished but namespace was never closed")]
    UnclosedNamespace,
    /// A prelude namespace never appeared at all.
    #[error("archive finished before all collections were seen")]
    MissingNamespace,
    /// A segment passed to the writer is not a sequence of well-framed documents.
    #[error("segment is not a sequence of BSON documents: {0}")]
    BadSegment(String),
    /// Writer API used out of order (e.g. data before `finish_prelude`).
    #[error("writer misuse: {0}")]
    Misuse(String),
}

/// Archive read/write errors; they say what is wrong and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// Reading or writing the underlying stream failed.
    #[error("archive I/O error at byte {offset}: {source}")]
    Io {
        /// Byte offset (in the uncompressed archive) where it happened.
        offset: u64,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The archive breaks a format rule.
    #[error("invalid archive at byte {offset}{}: {violation}", ns_suffix(.namespace))]
    Invalid {
        /// Byte offset (in the uncompressed archive) of the offending block or document.
        offset: u64,
        /// The namespace concerned, when known.
        namespace: Option<String>,
        /// What is wrong.
        violation: Violation,
    },
}

fn ns_suffix(ns: &Option<String>) -> String {
    match ns {
        Some(ns) => format!(" (namespace {ns:?})"),
        None => String::new(),
    }
}

impl ArchiveError {
    /// The rule broken, if this is a format error.
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            ArchiveError::Invalid { violation, .. } => Some(violation),
            ArchiveError::Io { .. } => None,
        }
    }

    /// Corrupt archives stay corrupt; I/O may be transient.
    pub fn is_permanent(&self) -> bool {
        match self {
            ArchiveError::Invalid { .. } => true,
            ArchiveError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ),
        }
    }
}

/// Checks that `docs` is a concatenation of well-framed BSON documents the
/// archive parser will accept; returns how many there are.
pub(crate) fn count_framed_documents(docs: &[u8]) -> Result<u64, String> {
    let mut pos = 0usize;
    let mut n = 0u64;
    while pos < docs.len() {
        let Some(len_bytes) = docs.get(pos..pos + 4) else {
            return Err(format!("{} trailing bytes at {pos}", docs.len() - pos));
        };
        let len = i32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        let len = usize::try_from(len).map_err(|_| format!("negative length at {pos}"))?;
        if !(MIN_BSON_SIZE..=MAX_BSON_SIZE).contains(&len) {
            return Err(format!("document at {pos} has invalid length {len}"));
        }
        let end = pos + len;
        if end > docs.len() {
            return Err(format!(
                "document at {pos} (length {len}) overruns the segment"
            ));
        }
        if docs[end - 1] != 0 {
            return Err(format!("document at {pos} does not end with 0x00"));
        }
        pos = end;
        n += 1;
    }
    Ok(n)
}

fn opt_str(d: &RawDocument, key: &str) -> Result<Option<String>, String> {
    match d.get(key) {
        Ok(None) => Ok(None),
        Ok(Some(bson::RawBsonRef::String(s))) => Ok(Some(s.to_string())),
        Ok(Some(other)) => Err(format!(
            "field {key:?} has type {:?}, expected string",
            other.element_type()
        )),
        Err(e) => Err(format!("field {key:?}: {e}")),
    }
}

fn opt_int(d: &RawDocument, key: &str) -> Result<Option<i64>, String> {
    match d.get(key) {
        Ok(None) => Ok(None),
        Ok(Some(bson::RawBsonRef::Int32(v))) => Ok(Some(i64::from(v))),
        Ok(Some(bson::RawBsonRef::Int64(v))) => Ok(Some(v)),
        Ok(Some(other)) => Err(format!(
            "field {key:?} has type {:?}, expected integer",
            other.element_type()
        )),
        Err(e) => Err(format!("field {key:?}: {e}")),
    }
}

fn opt_bool(d: &RawDocument, key: &str) -> Result<Option<bool>, String> {
    match d.get(key) {
        Ok(None) => Ok(None),
        Ok(Some(bson::RawBsonRef::Boolean(v))) => Ok(Some(v)),
        Ok(Some(other)) => Err(format!(
            "field {key:?} has type {:?}, expected bool",
            other.element_type()
        )),
        Err(e) => Err(format!("field {key:?}: {e}")),
    }
}

/// A namespace header (`{db, collection, EOF, CRC}`) as written before each segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamespaceHeader {
    pub db: String,
    pub collection: String,
    pub eof: bool,
    pub crc: i64,
}

impl NamespaceHeader {
    pub(crate) fn encode(db: &str, collection: &str, eof: bool, crc: i64) -> RawDocumentBuf {
        let mut d = RawDocumentBuf::new();
        d.append("db", db);
        d.append("collection", collection);
        d.append("EOF", eof);
        d.append("CRC", crc);
        d
    }

    pub(crate) fn from_raw(d: &RawDocument) -> Result<Self, String> {
        Ok(NamespaceHeader {
            db: opt_str(d, "db")?.unwrap_or_default(),
            collection: opt_str(d, "collection")?.unwrap_or_default(),
            eof: opt_bool(d, "EOF")?.unwrap_or(false),
            crc: opt_int(d, "CRC")?.unwrap_or(0),
        })
    }
}
