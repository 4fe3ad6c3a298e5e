//! Streaming archive writer (the mongo-tools multiplexer's output, in Rust).

use std::io::Write;

use super::{
    count_framed_documents, ArchiveError, ArchiveHeader, CollectionMetadata, Crc64,
    NamespaceHeader, NamespaceStats, Violation, MAGIC, TERMINATOR,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unopened,
    Open,
    Closed,
}

struct Namespace {
    meta: CollectionMetadata,
    digest: Crc64,
    state: State,
    documents: u64,
    bytes: u64,
}

/// Writes a `mongodump --archive` stream.
///
/// Order of calls: [`new`](Self::new) (magic + header), [`add_namespace`](Self::add_namespace)
/// for every namespace, [`finish_prelude`](Self::finish_prelude), then any interleaving of
/// [`write_segment`](Self::write_segment) and [`close_namespace`](Self::close_namespace), and
/// finally [`finish`](Self::finish), which fails unless every namespace was closed once.
///
/// Like mongodump's multiplexer, consecutive segments of the same namespace share one
/// namespace header, and a segment is terminated only when another namespace takes over or
/// the namespace is closed. Closing always goes through an (possibly empty) segment of the
/// namespace, so an empty collection comes out as `hdr(EOF=false) FFFFFFFF hdr(EOF=true) FFFFFFFF`,
/// exactly as mongodump writes it.
pub struct ArchiveWriter<W: Write> {
    w: W,
    offset: u64,
    namespaces: Vec<Namespace>,
    prelude_done: bool,
    current: Option<usize>,
}

impl<W: Write> std::fmt::Debug for ArchiveWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveWriter")
            .field("offset", &self.offset)
            .field("namespaces", &self.namespaces.len())
            .field("prelude_done", &self.prelude_done)
            .field("current", &self.current)
            .finish()
    }
}

impl<W: Write> ArchiveWriter<W> {
    /// Starts an archive: writes the magic number and the header document.
    pub fn new(w: W, header: &ArchiveHeader) -> Result<Self, ArchiveError> {
        let mut this = ArchiveWriter {
            w,
            offset: 0,
            namespaces: Vec::new(),
            prelude_done: false,
            current: None,
        };
        this.put(&MAGIC.to_le_bytes())?;
        this.put(header.to_raw().as_bytes())?;
        Ok(this)
    }

    /// Adds a namespace to the prelude; returns its index for the data calls.
    pub fn add_namespace(&mut self, meta: CollectionMetadata) -> Result<usize, ArchiveError> {
        if self.prelude_done {
            return Err(self.misuse(Some(meta.namespace()), "add_namespace after finish_prelude"));
        }
        if meta.collection.is_empty() {
            return Err(self.invalid(Some(meta.namespace()), Violation::EmptyCollectionName));
        }
        if self
            .namespaces
            .iter()
            .any(|n| n.meta.db == meta.db && n.meta.collection == meta.collection)
        {
            return Err(self.invalid(Some(meta.namespace()), Violation::DuplicateNamespace));
        }
        self.put(meta.to_raw().as_bytes())?;
        self.namespaces.push(Namespace {
            meta,
            digest: Crc64::new(),
            state: State::Unopened,
            documents: 0,
            bytes: 0,
        });
        Ok(self.namespaces.len() - 1)
    }

    /// Ends the prelude block (writes its terminator).
    pub fn finish_prelude(&mut self) -> Result<(), ArchiveError> {
        if self.prelude_done {
            return Err(self.misuse(None, "finish_prelude called twice"));
        }
        self.put(&TERMINATOR)?;
        self.prelude_done = true;
        Ok(())
    }

    /// Appends documents (`docs` = concatenated raw BSON documents) to a namespace.
    ///
    /// The framing of every document is checked (length 5..=16 MiB, inside the
    /// buffer, trailing 0x00) so the archive stays readable. An empty `docs` is a no-op.
    pub fn write_segment(&mut self, ns_index: usize, docs: &[u8]) -> Result<(), ArchiveError> {
        self.check_data_call(ns_index)?;
        if docs.is_empty() {
            return Ok(());
        }
        let n = count_framed_documents(docs)
            .map_err(|e| self.invalid(Some(self.ns_name(ns_index)), Violation::BadSegment(e)))?;
        self.switch_to(ns_index)?;
        self.put(docs)?;
        let ns = &mut self.namespaces[ns_index];
        ns.digest.update(docs);
        ns.documents += n;
        ns.bytes += docs.len() as u64;
        Ok(())
    }

    /// Writes the namespace's EOF header with its CRC. Each namespace is closed exactly once.
    pub fn close_namespace(&mut self, ns_index: usize) -> Result<NamespaceStats, ArchiveError> {
        self.check_data_call(ns_index)?;
        // mongodump flushes the (possibly empty) buffer first, which opens a segment
        // for the namespace if another one is current.
        self.switch_to(ns_index)?;
        let stats = self.stats_of(ns_index);
        let (db, coll) = {
            let m = &self.namespaces[ns_index].meta;
            (m.db.clone(), m.collection.clone())
        };
        self.put(&TERMINATOR)?;
        let hdr = NamespaceHeader::encode(&db, &coll, true, stats.crc as i64);
        self.put(hdr.as_bytes())?;
        self.put(&TERMINATOR)?;
        self.current = None;
        self.namespaces[ns_index].state = State::Closed;
        Ok(stats)
    }

    /// Totals of a namespace so far (CRC as it would be written now).
    pub fn namespace_stats(&self, ns_index: usize) -> Option<NamespaceStats> {
        (ns_index < self.namespaces.len()).then(|| self.stats_of(ns_index))
    }

    /// The prelude entries in index order.
    pub fn namespaces(&self) -> impl Iterator<Item = &CollectionMetadata> {
        self.namespaces.iter().map(|n| &n.meta)
    }

    /// Uncompressed bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// Checks that every namespace was closed, flushes and returns the inner writer.
    pub fn finish(mut self) -> Result<W, ArchiveError> {
        if !self.prelude_done {
            return Err(self.misuse(None, "finish before finish_prelude"));
        }
        if let Some(i) = self
            .namespaces
            .iter()
            .position(|n| n.state != State::Closed)
        {
            return Err(self.invalid(Some(self.ns_name(i)), Violation::UnclosedNamespace));
        }
        let offset = self.offset;
        self.w
            .flush()
            .map_err(|source| ArchiveError::Io { offset, source })?;
        Ok(self.w)
    }

    fn stats_of(&self, i: usize) -> NamespaceStats {
        let ns = &self.namespaces[i];
        NamespaceStats {
            documents: ns.documents,
            bytes: ns.bytes,
            crc: ns.digest.finalize(),
        }
    }

    fn check_data_call(&self, ns_index: usize) -> Result<(), ArchiveError> {
        if !self.prelude_done {
            return Err(self.misuse(None, "data written before finish_prelude"));
        }
        let Some(ns) = self.namespaces.get(ns_index) else {
            return Err(self.misuse(None, &format!("unknown namespace index {ns_index}")));
        };
        if ns.state == State::Closed {
            return Err(self.invalid(Some(ns.meta.namespace()), Violation::Reopened));
        }
        Ok(())
    }

    /// Makes `ns_index` the current namespace, terminating the previous segment and
    /// writing a namespace header if needed.
    fn switch_to(&mut self, ns_index: usize) -> Result<(), ArchiveError> {
        if self.current == Some(ns_index) {
            return Ok(());
        }
        if self.current.is_some() {
            self.put(&TERMINATOR)?;
        }
        let hdr = {
            let m = &self.namespaces[ns_index].meta;
            NamespaceHeader::encode(&m.db, &m.collection, false, 0)
        };
        self.put(hdr.as_bytes())?;
        self.current = Some(ns_index);
        self.namespaces[ns_index].state = State::Open;
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        let offset = self.offset;
        self.w
            .write_all(bytes)
            .map_err(|source| ArchiveError::Io { offset, source })?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn ns_name(&self, i: usize) -> String {
        self.namespaces
            .get(i)
            .map(|n| n.meta.namespace())
            .unwrap_or_default()
    }

    fn invalid(&self, namespace: Option<String>, violation: Violation) -> ArchiveError {
        ArchiveError::Invalid {
            offset: self.offset,
            namespace,
            violation,
        }
    }

    fn misuse(&self, namespace: Option<String>, what: &str) -> ArchiveError {
        self.invalid(namespace, Violation::Misuse(what.to_string()))
    }
}
