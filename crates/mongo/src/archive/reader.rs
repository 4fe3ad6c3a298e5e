//! Validating archive reader (the mongo-tools parser + demultiplexer rules).

use std::collections::HashMap;
use std::io::{BufReader, Read};

use bson::RawDocument;

use super::{
    namespace_key, ArchiveError, ArchiveHeader, CollectionMetadata, Crc64, NamespaceHeader,
    NamespaceStats, Violation, MAGIC, MAX_BSON_SIZE, MIN_BSON_SIZE,
};

/// What the reader found next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveEvent {
    /// Always the first event: the archive header and the prelude's namespaces (in order;
    /// `ns_index` in later events indexes this list).
    Prelude {
        /// The archive header.
        header: ArchiveHeader,
        /// One entry per namespace.
        namespaces: Vec<CollectionMetadata>,
    },
    /// One body document of a namespace.
    Document {
        /// Index into the prelude's namespaces.
        ns_index: usize,
        /// The raw BSON bytes (framing checked, content not parsed).
        raw: Vec<u8>,
    },
    /// The namespace's EOF header was read and its CRC matched.
    NamespaceEnd {
        /// Index into the prelude's namespaces.
        ns_index: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NsState {
    Unopened,
    Open,
    Closed,
}

struct Namespace {
    meta: CollectionMetadata,
    state: NsState,
    digest: Crc64,
    documents: u64,
    bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Nothing read yet.
    Start,
    /// Between blocks: a header document or a clean end of stream may come.
    Boundary,
    /// Inside a data block: body documents or a terminator may come.
    InBlock,
    /// End of stream reached or an error returned; nothing more will be yielded.
    Done,
}

/// Reads and validates a `mongodump --archive` stream, yielding [`ArchiveEvent`]s.
///
/// Every rule mongorestore's demultiplexer enforces is checked: document lengths
/// (5..=16 MiB) and trailing 0x00, no headerless blocks, no document after an EOF header,
/// no namespace header after that namespace's EOF, CRC-64 match on EOF, a clean end of
/// stream only at a block boundary, and at the end every prelude namespace (timeseries
/// excepted) closed. Errors carry the byte offset and the namespace.
///
/// The reader also iterates: `for ev in reader { let ev = ev?; … }`.
pub struct ArchiveReader<R: Read> {
    r: BufReader<R>,
    offset: u64,
    pos: Position,
    namespaces: Vec<Namespace>,
    by_key: HashMap<String, usize>,
    current: Option<usize>,
    /// Namespace of the last EOF header, for error messages.
    last_eof: Option<usize>,
}

impl<R: Read> std::fmt::Debug for ArchiveReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveReader")
            .field("offset", &self.offset)
            .field("pos", &self.pos)
            .field("namespaces", &self.namespaces.len())
            .finish()
    }
}

enum Frame {
    Terminator,
    Document(Vec<u8>),
}

impl<R: Read> ArchiveReader<R> {
    /// Wraps a (decompressed) archive stream. Nothing is read until the first event.
    pub fn new(r: R) -> Self {
        ArchiveReader {
            r: BufReader::with_capacity(256 * 1024, r),
            offset: 0,
            pos: Position::Start,
            namespaces: Vec::new(),
            by_key: HashMap::new(),
            current: None,
            last_eof: None,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Prelude entries (empty before the first event).
    pub fn namespaces(&self) -> impl Iterator<Item = &CollectionMetadata> {
        self.namespaces.iter().map(|n| &n.meta)
    }

    /// Documents, bytes and CRC read so far for a namespace.
    pub fn namespace_stats(&self, ns_index: usize) -> Option<NamespaceStats> {
        self.namespaces.get(ns_index).map(|n| NamespaceStats {
            documents: n.documents,
            bytes: n.bytes,
            crc: n.digest.finalize(),
        })
    }

    /// The next event, or `None` after a valid end of archive. After an error the
    /// reader yields nothing more.
    pub fn next_event(&mut self) -> Result<Option<ArchiveEvent>, ArchiveError> {
        let res = self.step();
        if res.is_err() {
            self.pos = Position::Done;
        }
        res
    }

    fn step(&mut self) -> Result<Option<ArchiveEvent>, ArchiveError> {
        loop {
            match self.pos {
                Position::Done => return Ok(None),
                Position::Start => return self.read_prelude().map(Some),
                Position::Boundary => {
                    let start = self.offset;
                    match self.read_frame(true)? {
                        None => {
                            self.check_end()?;
                            self.pos = Position::Done;
                            return Ok(None);
                        }
                        Some(Frame::Terminator) => {
                            return Err(self.invalid(start, None, Violation::HeaderlessBlock))
                        }
                        Some(Frame::Document(doc)) => {
                            self.pos = Position::InBlock;
                            if let Some(ev) = self.on_namespace_header(start, &doc)? {
                                return Ok(Some(ev));
                            }
                        }
                    }
                }
                Position::InBlock => {
                    let start = self.offset;
                    match self.read_frame(false)? {
                        Some(Frame::Terminator) => self.pos = Position::Boundary,
                        // `read_frame(false)` reports a stream end as `Truncated`.
                        None => {
                            return Err(self.invalid(
                                start,
                                self.current_name(),
                                Violation::Truncated,
                            ))
                        }
                        Some(Frame::Document(raw)) => {
                            let Some(i) = self.current else {
                                return Err(self.invalid(
                                    start,
                                    self.last_closed_name(),
                                    Violation::DocumentAfterEof,
                                ));
                            };
                            let ns = &mut self.namespaces[i];
                            ns.digest.update(&raw);
                            ns.documents += 1;
                            ns.bytes += raw.len() as u64;
                            return Ok(Some(ArchiveEvent::Document { ns_index: i, raw }));
                        }
                    }
                }
            }
        }
    }

    fn read_prelude(&mut self) -> Result<ArchiveEvent, ArchiveError> {
        let mut magic = [0u8; 4];
        match self.read_full(&mut magic)? {
            4 => {}
            _ => return Err(self.invalid(0, None, Violation::Truncated)),
        }
        let m = u32::from_le_bytes(magic);
        if m != MAGIC {
            return Err(self.invalid(0, None, Violation::BadMagic(m)));
        }
        let start = self.offset;
        let header = match self.read_frame(false)? {
            Some(Frame::Document(doc)) => {
                let raw = self.parse_doc(start, None, &doc, "archive header")?;
                ArchiveHeader::from_raw(raw).map_err(|detail| {
                    self.invalid(start, None, malformed("archive header", detail))
                })?
            }
            _ => return Err(self.invalid(start, None, Violation::HeaderlessBlock)),
        };
        loop {
            let start = self.offset;
            match self.read_frame(false)? {
                Some(Frame::Terminator) | None => break,
                Some(Frame::Document(doc)) => {
                    let raw = self.parse_doc(start, None, &doc, "collection metadata")?;
                    let meta = CollectionMetadata::from_raw(raw).map_err(|detail| {
                        self.invalid(start, None, malformed("collection metadata", detail))
                    })?;
                    let key = meta.namespace();
                    if self.by_key.contains_key(&key) {
                        return Err(self.invalid(start, Some(key), Violation::DuplicateNamespace));
                    }
                    self.by_key.insert(key, self.namespaces.len());
                    self.namespaces.push(Namespace {
                        meta,
                        state: NsState::Unopened,
                        digest: Crc64::new(),
                        documents: 0,
                        bytes: 0,
                    });
                }
            }
        }
        self.pos = Position::Boundary;
        Ok(ArchiveEvent::Prelude {
            header,
            namespaces: self.namespaces.iter().map(|n| n.meta.clone()).collect(),
        })
    }

    /// Applies a namespace header; returns `NamespaceEnd` for an EOF header.
    fn on_namespace_header(
        &mut self,
        start: u64,
        doc: &[u8],
    ) -> Result<Option<ArchiveEvent>, ArchiveError> {
        let raw = self.parse_doc(start, None, doc, "namespace header")?;
        let hdr = NamespaceHeader::from_raw(raw)
            .map_err(|detail| self.invalid(start, None, malformed("namespace header", detail)))?;
        let key = namespace_key(&hdr.db, &hdr.collection);
        if hdr.collection.is_empty() {
            return Err(self.invalid(start, Some(key), Violation::EmptyCollectionName));
        }
        let Some(i) = self.lookup(&hdr.db, &hdr.collection) else {
            return Err(self.invalid(start, Some(key), Violation::UnknownNamespace));
        };
        if self.namespaces[i].state == NsState::Closed {
            return Err(self.invalid(start, Some(key), Violation::Reopened));
        }
        if hdr.eof {
            let actual = self.namespaces[i].digest.finalize();
            let expected = hdr.crc as u64;
            if actual != expected {
                return Err(self.invalid(
                    start,
                    Some(key),
                    Violation::CrcMismatch { expected, actual },
                ));
            }
            self.namespaces[i].state = NsState::Closed;
            self.current = None;
            self.last_eof = Some(i);
            Ok(Some(ArchiveEvent::NamespaceEnd { ns_index: i }))
        } else {
            self.namespaces[i].state = NsState::Open;
            self.current = Some(i);
            Ok(None)
        }
    }

    /// Finds the prelude entry for a data namespace. Timeseries data lives in
    /// `system.buckets.<name>` while the prelude names the view `<name>`.
    fn lookup(&self, db: &str, collection: &str) -> Option<usize> {
        if let Some(&i) = self.by_key.get(&namespace_key(db, collection)) {
            return Some(i);
        }
        let view = collection.strip_prefix("system.buckets.")?;
        let &i = self.by_key.get(&namespace_key(db, view))?;
        (self.namespaces[i].meta.collection_type == "timeseries").then_some(i)
    }

    fn check_end(&self) -> Result<(), ArchiveError> {
        for n in &self.namespaces {
            match n.state {
                NsState::Closed => {}
                NsState::Open => {
                    return Err(self.invalid(
                        self.offset,
                        Some(n.meta.namespace()),
                        Violation::UnclosedNamespace,
                    ))
                }
                NsState::Unopened if n.meta.collection_type == "timeseries" => {}
                NsState::Unopened => {
                    return Err(self.invalid(
                        self.offset,
                        Some(n.meta.namespace()),
                        Violation::MissingNamespace,
                    ))
                }
            }
        }
        Ok(())
    }

    /// Reads a terminator or one length-checked document. `None` only for a clean
    /// end of stream when `eof_ok` (block boundary).
    fn read_frame(&mut self, eof_ok: bool) -> Result<Option<Frame>, ArchiveError> {
        let start = self.offset;
        let mut len_bytes = [0u8; 4];
        match self.read_full(&mut len_bytes)? {
            0 if eof_ok => return Ok(None),
            4 => {}
            _ => return Err(self.invalid(start, self.current_name(), Violation::Truncated)),
        }
        let len = i32::from_le_bytes(len_bytes);
        if len == -1 {
            return Ok(Some(Frame::Terminator));
        }
        let ulen = match usize::try_from(len) {
            Ok(l) if (MIN_BSON_SIZE..=MAX_BSON_SIZE).contains(&l) => l,
            _ => {
                return Err(self.invalid(
                    start,
                    self.current_name(),
                    Violation::BadDocumentLength(i64::from(len)),
                ))
            }
        };
        let mut doc = vec![0u8; ulen];
        doc[..4].copy_from_slice(&len_bytes);
        if self.read_full(&mut doc[4..])? != ulen - 4 {
            return Err(self.invalid(start, self.current_name(), Violation::Truncated));
        }
        if doc[ulen - 1] != 0 {
            return Err(self.invalid(start, self.current_name(), Violation::MissingTrailingZero));
        }
        Ok(Some(Frame::Document(doc)))
    }

    /// Reads until `buf` is full or the stream ends; returns the byte count.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, ArchiveError> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ArchiveError::Io {
                        offset: self.offset + got as u64,
                        source,
                    })
                }
            }
        }
        self.offset += got as u64;
        Ok(got)
    }

    fn parse_doc<'a>(
        &self,
        start: u64,
        ns: Option<String>,
        doc: &'a [u8],
        what: &'static str,
    ) -> Result<&'a RawDocument, ArchiveError> {
        RawDocument::from_bytes(doc)
            .map_err(|e| self.invalid(start, ns, malformed(what, e.to_string())))
    }

    fn current_name(&self) -> Option<String> {
        self.current.map(|i| self.namespaces[i].meta.namespace())
    }

    fn last_closed_name(&self) -> Option<String> {
        self.last_eof.map(|i| self.namespaces[i].meta.namespace())
    }

    fn invalid(
        &self,
        offset: u64,
        namespace: Option<String>,
        violation: Violation,
    ) -> ArchiveError {
        ArchiveError::Invalid {
            offset,
            namespace,
            violation,
        }
    }
}

fn malformed(what: &'static str, detail: String) -> Violation {
    Violation::MalformedHeader { what, detail }
}

impl<R: Read> Iterator for ArchiveReader<R> {
    type Item = Result<ArchiveEvent, ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_event().transpose()
    }
}
