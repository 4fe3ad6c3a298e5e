//! Whole-stream compression of archives, and a hashing/counting writer.

use std::io::{self, BufReader, Read, Write};

use sha2::{Digest, Sha256};

/// How the whole archive byte stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain archive (`mongodump --archive`).
    #[default]
    None,
    /// One zstd stream (decompress with `zstd -d` before handing to mongorestore).
    Zstd {
        /// zstd level (1..=22; 3 is zstd's default).
        level: i32,
    },
    /// One gzip stream over the whole archive, as `mongodump --archive --gzip` writes
    /// (restore with `mongorestore --archive --gzip`).
    Gzip,
}

impl Compression {
    /// Usual file name suffix for this compression (`""`, `".zst"`, `".gz"`).
    pub fn extension(&self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Zstd { .. } => ".zst",
            Compression::Gzip => ".gz",
        }
    }

    /// Wraps `w` in the compressor. Call [`CompressWriter::finish`] to end the
    /// compressed stream (dropping it without `finish` leaves a truncated stream).
    pub fn wrap_writer<W: Write>(&self, w: W) -> io::Result<CompressWriter<W>> {
        Ok(match *self {
            Compression::None => CompressWriter::Plain(w),
            Compression::Zstd { level } => {
                let mut enc = zstd::stream::write::Encoder::new(w, level)?;
                enc.include_checksum(true)?;
                CompressWriter::Zstd(enc)
            }
            Compression::Gzip => CompressWriter::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::default(),
            )),
        })
    }

    /// Recognises how an archive file is stored from its first bytes: the mongodump archive
    /// magic number (plain), a gzip member header (`mongodump --archive --gzip`) or a zstd frame
    /// (ddsvault's default). `None` for anything else, or fewer than 4 bytes.
    pub fn detect(head: &[u8]) -> Option<Compression> {
        match head {
            [0x1f, 0x8b, ..] => Some(Compression::Gzip),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Some(Compression::Zstd { level: 3 }),
            [a, b, c, d, ..] if u32::from_le_bytes([*a, *b, *c, *d]) == super::MAGIC => {
                Some(Compression::None)
            }
            _ => None,
        }
    }

    /// Wraps `r` in the matching decompressor.
    pub fn wrap_reader<R: Read>(&self, r: R) -> io::Result<DecompressReader<R>> {
        Ok(match self {
            Compression::None => DecompressReader::Plain(r),
            Compression::Zstd { .. } => {
                DecompressReader::Zstd(zstd::stream::read::Decoder::new(r)?)
            }
            // Multi-member aware, so concatenated gzip streams also read fully.
            Compression::Gzip => DecompressReader::Gzip(flate2::read::MultiGzDecoder::new(r)),
        })
    }
}

/// A writer that compresses according to a [`Compression`].
pub enum CompressWriter<W: Write> {
    /// No compression.
    Plain(W),
    /// zstd stream.
    Zstd(zstd::stream::write::Encoder<'static, W>),
    /// gzip stream.
    Gzip(flate2::write::GzEncoder<W>),
}

impl<W: Write> std::fmt::Debug for CompressWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CompressWriter::Plain(_) => "CompressWriter::Plain",
            CompressWriter::Zstd(_) => "CompressWriter::Zstd",
            CompressWriter::Gzip(_) => "CompressWriter::Gzip",
        })
    }
}

impl<W: Write> CompressWriter<W> {
    /// Ends the compressed stream, flushes, and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        let mut w = match self {
            CompressWriter::Plain(w) => w,
            CompressWriter::Zstd(e) => e.finish()?,
            CompressWriter::Gzip(e) => e.finish()?,
        };
        w.flush()?;
        Ok(w)
    }
}

impl<W: Write> Write for CompressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            CompressWriter::Plain(w) => w.write(buf),
            CompressWriter::Zstd(e) => e.write(buf),
            CompressWriter::Gzip(e) => e.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            CompressWriter::Plain(w) => w.write_all(buf),
            CompressWriter::Zstd(e) => e.write_all(buf),
            CompressWriter::Gzip(e) => e.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            CompressWriter::Plain(w) => w.flush(),
            CompressWriter::Zstd(e) => e.flush(),
            CompressWriter::Gzip(e) => e.flush(),
        }
    }
}

/// A reader that decompresses according to a [`Compression`].
pub enum DecompressReader<R: Read> {
    /// No compression.
    Plain(R),
    /// zstd stream.
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
    /// gzip stream(s).
    Gzip(flate2::read::MultiGzDecoder<R>),
}

impl<R: Read> std::fmt::Debug for DecompressReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DecompressReader::Plain(_) => "DecompressReader::Plain",
            DecompressReader::Zstd(_) => "DecompressReader::Zstd",
            DecompressReader::Gzip(_) => "DecompressReader::Gzip",
        })
    }
}

impl<R: Read> Read for DecompressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            DecompressReader::Plain(r) => r.read(buf),
            DecompressReader::Zstd(d) => d.read(buf),
            DecompressReader::Gzip(d) => d.read(buf),
        }
    }
}

/// Passes writes through while counting bytes and computing their SHA-256.
pub struct HashingWriter<W> {
    inner: W,
    bytes: u64,
    sha: Sha256,
}

impl<W> std::fmt::Debug for HashingWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashingWriter")
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            bytes: 0,
            sha: Sha256::new(),
        }
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Returns the inner writer, the byte count and the lowercase hex SHA-256.
    pub fn into_parts(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.sha.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod detect_tests {
    use super::Compression;

    #[test]
    fn detects_each_format_from_real_headers_and_nothing_else() {
        let mut plain = Vec::new();
        plain.extend_from_slice(&super::super::MAGIC.to_le_bytes());
        plain.extend_from_slice(b"rest");
        assert_eq!(Compression::detect(&plain), Some(Compression::None));
        for c in [Compression::Gzip, Compression::Zstd { level: 3 }] {
            let mut w = c.wrap_writer(Vec::new()).expect("writer");
            std::io::Write::write_all(&mut w, &plain).expect("write");
            let bytes = w.finish().expect("finish");
            assert_eq!(Compression::detect(&bytes), Some(c), "{c:?}");
        }
        for other in [
            &b""[..],
            b"\x1f",
            b"PK\x03\x04",
            b"{\"a\": 1}",
            &[0x6d, 0xe2, 0x99],
        ] {
            assert_eq!(Compression::detect(other), None, "{other:?}");
        }
    }
}
