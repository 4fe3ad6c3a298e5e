//! Stored logical archives: the compression a backup records under which name, and blocking readers over an
//! archive in the repository for the engines (restore, verify, import) that read on a blocking thread.

use std::io::Read;

use bytes::Bytes;
use ddsvault_mongo::archive::Compression;
use ddsvault_repo::{RepoError, RepoPath, Repository};
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::runtime::Handle;

/// The name a backup's details record for `c` (read back by [`compression_of`]).
pub(crate) fn compression_name(c: &Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::Zstd { .. } => "zstd",
        Compression::Gzip => "gzip",
    }
}

/// The compression a backup was written with, from its recorded details.
pub fn compression_of(details: &serde_json::Value) -> Compression {
    match details.get("compression").and_then(|v| v.as_str()) {
        Some("gzip") => Compression::Gzip,
        Some("none") => Compression::None,
        _ => Compression::Zstd { level: 3 },
    }
}

/// Opens decompressed readers over a repository object, for engines that read on a blocking thread.
pub fn archive_opener(
    repo: Repository,
    path: RepoPath,
    compression: Compression,
) -> Box<dyn Fn() -> std::io::Result<Box<dyn Read + Send>> + Send + Sync> {
    let handle = Handle::current();
    Box::new(move || {
        // Called on a blocking thread, where waiting on the runtime is allowed.
        let (_, stream) = handle
            .block_on(repo.get_stream(&path))
            .map_err(std::io::Error::other)?;
        let raw = StreamReader {
            handle: handle.clone(),
            stream,
            buf: Bytes::new(),
        };
        let reader = compression.wrap_reader(std::io::BufReader::with_capacity(256 * 1024, raw))?;
        Ok(Box::new(reader) as Box<dyn Read + Send>)
    })
}

/// A blocking `Read` over an async byte stream.
struct StreamReader {
    handle: Handle,
    stream: BoxStream<'static, Result<Bytes, RepoError>>,
    buf: Bytes,
}

impl Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}
