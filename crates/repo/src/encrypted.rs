//! Client-side encryption at rest (`[repository] encryption_key_file`): every object is sealed before it leaves
//! the process, so a leaked bucket or disk reveals nothing and a tampered object fails to open.
//!
//! Format of a stored object (all integers big-endian):
//!
//! ```text
//! "DVE1"                    magic
//! key nonce (12)            nonce of the wrapped data key
//! wrapped data key (48)     AES-256-GCM(master key, key nonce, data key, aad = "DVE1"): 32 bytes + 16-byte tag
//! stream nonce prefix (7)   random per object
//! segments                  AES-256-GCM(data key, prefix ‖ counter u32 ‖ last u8, 64 KiB of plaintext) + tag
//! ```
//!
//! Each object has its own random data key, wrapped by the master key. The plaintext is cut into 64 KiB
//! segments; every full segment is sealed as not-last and one final segment (the remainder, possibly empty) is
//! sealed as last. The counter and the last flag are in each nonce (the STREAM construction), so reordered,
//! dropped, repeated or truncated segments fail to open; any changed byte fails its segment's tag. The plaintext
//! size follows from the stored size alone ([`plain_size`]), so listing and `HEAD` need no extra read, and a
//! byte range is served by opening only the segments it touches.
//!
//! Object keys are not bound to the ciphertext, so the store's rename and copy keep working; an object moved to
//! another key opens, and the manifest's SHA-256 of every file (and the catalog's hash of the manifest) is what
//! catches a swap.
//!
//! Cost: AES-GCM runs where the bytes are (uploads seal each part as it is handed over, reads open segments as
//! they arrive); with AES-NI that is well over 1 GB/s, i.e. a few milliseconds per 8 MiB part.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use futures::FutureExt;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};
use rand::RngCore;

/// Plaintext bytes per segment.
pub const SEGMENT: usize = 64 * 1024;
const MAGIC: &[u8; 4] = b"DVE1";
const TAG: usize = 16;
const PREFIX: usize = 7;
/// Bytes before the first segment.
pub const HEADER: usize = 4 + 12 + 32 + TAG + PREFIX;

/// The master key (32 bytes). Never printed.
#[derive(Clone)]
pub struct MasterKey(Key<Aes256Gcm>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

impl MasterKey {
    /// Reads a key file: 64 hexadecimal digits (surrounding whitespace ignored) or exactly 32 raw bytes.
    ///
    /// # Errors
    /// A message naming the file (never its content) if it cannot be read or holds no key.
    pub fn from_file(path: &std::path::Path) -> std::result::Result<Self, String> {
        let raw = std::fs::read(path)
            .map_err(|e| format!("encryption key file {}: {e}", path.display()))?;
        let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or("");
        let bytes = if text.len() == 64 {
            hex::decode(text).map_err(|_| {
                format!(
                    "encryption key file {}: not 64 hexadecimal digits",
                    path.display()
                )
            })?
        } else if raw.len() == 32 {
            raw
        } else {
            return Err(format!(
                "encryption key file {}: expected 64 hexadecimal digits (e.g. `openssl rand -hex 32`) or 32 raw bytes",
                path.display()
            ));
        };
        Ok(Self::from_bytes(&bytes))
    }

    /// A key from 32 bytes (tests, key files).
    ///
    /// # Panics
    /// Never for 32 bytes; other lengths are a programming error.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(*Key::<Aes256Gcm>::from_slice(bytes))
    }
}

fn tampered(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "Encrypted",
        source: format!(
            "{what}: the object was tampered with, truncated, or sealed with another key"
        )
        .into(),
    }
}

/// The plaintext size of a stored object of `stored` bytes (0 for anything too short to be one).
pub fn plain_size(stored: u64) -> u64 {
    let header = HEADER as u64;
    let tag = TAG as u64;
    if stored < header + tag {
        return 0;
    }
    let rest = stored - header;
    let full = rest / (SEGMENT as u64 + tag);
    rest.saturating_sub(tag * (full + 1))
}

/// The stored size of `plain` bytes.
pub fn stored_size(plain: u64) -> u64 {
    HEADER as u64 + plain + TAG as u64 * (plain / SEGMENT as u64 + 1)
}

/// The data key and nonce prefix of one object.
struct ObjectKeys {
    cipher: Aes256Gcm,
    prefix: [u8; PREFIX],
}

impl ObjectKeys {
    fn create(master: &MasterKey) -> std::result::Result<(Vec<u8>, Self), object_store::Error> {
        let data_key = Aes256Gcm::generate_key(OsRng);
        let key_nonce = Aes256Gcm::generate_nonce(OsRng);
        let wrapped = Aes256Gcm::new(&master.0)
            .encrypt(
                &key_nonce,
                Payload {
                    msg: data_key.as_slice(),
                    aad: MAGIC,
                },
            )
            .map_err(|_| tampered("wrapping the data key"))?;
        let mut prefix = [0u8; PREFIX];
        OsRng.fill_bytes(&mut prefix);
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(key_nonce.as_slice());
        header.extend_from_slice(&wrapped);
        header.extend_from_slice(&prefix);
        Ok((
            header,
            Self {
                cipher: Aes256Gcm::new(&data_key),
                prefix,
            },
        ))
    }

    fn open(master: &MasterKey, header: &[u8]) -> Result<Self> {
        if header.len() < HEADER || &header[..4] != MAGIC {
            return Err(tampered("not an encrypted ddsvault object"));
        }
        let data_key = Aes256Gcm::new(&master.0)
            .decrypt(
                Nonce::from_slice(&header[4..16]),
                Payload {
                    msg: &header[16..16 + 32 + TAG],
                    aad: MAGIC,
                },
            )
            .map_err(|_| tampered("unwrapping the data key"))?;
        let mut prefix = [0u8; PREFIX];
        prefix.copy_from_slice(&header[HEADER - PREFIX..HEADER]);
        Ok(Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&data_key)),
            prefix,
        })
    }

    fn nonce(&self, index: u64, last: bool) -> Result<Nonce<aes_gcm::aead::consts::U12>> {
        let counter = u32::try_from(index).map_err(|_| tampered("segment counter"))?;
        let mut n = [0u8; 12];
        n[..PREFIX].copy_from_slice(&self.prefix);
        n[PREFIX..11].copy_from_slice(&counter.to_be_bytes());
        n[11] = u8::from(last);
        Ok(*Nonce::from_slice(&n))
    }

    fn seal(&self, index: u64, last: bool, plain: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let sealed = self
            .cipher
            .encrypt(&self.nonce(index, last)?, plain)
            .map_err(|_| tampered("sealing a segment"))?;
        out.extend_from_slice(&sealed);
        Ok(())
    }

    fn open_segment(&self, index: u64, last: bool, sealed: &[u8]) -> Result<Vec<u8>> {
        self.cipher
            .decrypt(&self.nonce(index, last)?, sealed)
            .map_err(|_| tampered(&format!("segment {index}")))
    }
}

/// Seals a whole plaintext.
fn seal_all(master: &MasterKey, plain: &[u8]) -> Result<Vec<u8>> {
    let (mut out, keys) = ObjectKeys::create(master)?;
    out.reserve(stored_size(plain.len() as u64) as usize);
    let full = plain.len() / SEGMENT;
    for i in 0..full {
        keys.seal(
            i as u64,
            false,
            &plain[i * SEGMENT..(i + 1) * SEGMENT],
            &mut out,
        )?;
    }
    keys.seal(full as u64, true, &plain[full * SEGMENT..], &mut out)?;
    Ok(out)
}

/// Opens the segments of a stored byte stream that starts at segment `first` (or at the header, when `keys` is
/// `None`), yielding plaintext from offset `skip` within the first segment, `take` bytes in all.
struct Opener {
    master: Arc<MasterKey>,
    keys: Option<ObjectKeys>,
    input: BoxStream<'static, Result<Bytes>>,
    buf: BytesMut,
    index: u64,
    /// Index of the object's final segment.
    last: u64,
    /// Plaintext size of the final segment.
    last_len: usize,
    /// The last segment to open (the final one for a whole read).
    end: u64,
    skip: usize,
    take: u64,
}

impl Opener {
    fn sealed_len(&self) -> usize {
        if self.index == self.last {
            self.last_len + TAG
        } else {
            SEGMENT + TAG
        }
    }

    async fn next_plain(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.index > self.end {
                return Ok(None);
            }
            if self.keys.is_none() && self.buf.len() >= HEADER {
                let header = self.buf.split_to(HEADER);
                self.keys = Some(ObjectKeys::open(&self.master, &header)?);
            }
            if let Some(keys) = &self.keys {
                let need = self.sealed_len();
                if self.buf.len() >= need {
                    let sealed = self.buf.split_to(need);
                    let mut plain =
                        keys.open_segment(self.index, self.index == self.last, &sealed)?;
                    self.index += 1;
                    let start = std::mem::take(&mut self.skip).min(plain.len());
                    plain.drain(..start);
                    let n = plain
                        .len()
                        .min(usize::try_from(self.take).unwrap_or(usize::MAX));
                    plain.truncate(n);
                    self.take -= n as u64;
                    if !plain.is_empty() {
                        return Ok(Some(Bytes::from(plain)));
                    }
                    continue;
                }
            }
            match self.input.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None => return Err(tampered("the object ended early")),
            }
        }
    }

    fn into_stream(self) -> BoxStream<'static, Result<Bytes>> {
        futures::stream::try_unfold(self, |mut o| async move {
            Ok(o.next_plain().await?.map(|b| (b, o)))
        })
        .boxed()
    }
}

/// An [`ObjectStore`] that seals everything it stores (see the module docs).
#[derive(Debug)]
pub struct EncryptedStore {
    inner: Arc<dyn ObjectStore>,
    master: Arc<MasterKey>,
}

impl EncryptedStore {
    /// Seals what goes into `inner` with `master`.
    pub fn new(inner: Arc<dyn ObjectStore>, master: Arc<MasterKey>) -> Self {
        Self { inner, master }
    }

    fn plain_meta(mut meta: ObjectMeta) -> ObjectMeta {
        meta.size = plain_size(meta.size);
        meta
    }
}

impl fmt::Display for EncryptedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The repository's name is the inner store's: logs and errors keep naming the bucket or directory.
        fmt::Display::fmt(&self.inner, f)
    }
}

/// A multipart upload whose parts are sealed as they are handed over: full segments are sealed with each part,
/// the remainder waits for the next part or for `complete`, which seals the final segment. Each sealed part is
/// held back until the next one arrives, so that `complete` can append the final segment to the last part
/// instead of sending a tiny extra one (S3 refuses parts under 5 MiB but the last). Memory: one more part per
/// upload.
struct SealingUpload {
    inner: Box<dyn MultipartUpload>,
    keys: ObjectKeys,
    header: Option<Vec<u8>>,
    pending: Vec<u8>,
    index: u64,
    held: Option<Vec<u8>>,
}

impl fmt::Debug for SealingUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingUpload")
            .field("inner", &self.inner)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl SealingUpload {
    /// Seals the full segments of `pending`, and with `finish` the rest as the final segment.
    fn drain(&mut self, finish: bool) -> Result<Vec<u8>> {
        let mut out = self.header.take().unwrap_or_default();
        let full = self.pending.len() / SEGMENT;
        for i in 0..full {
            self.keys.seal(
                self.index,
                false,
                &self.pending[i * SEGMENT..(i + 1) * SEGMENT],
                &mut out,
            )?;
            self.index += 1;
        }
        self.pending.drain(..full * SEGMENT);
        if finish {
            let rest = std::mem::take(&mut self.pending);
            self.keys.seal(self.index, true, &rest, &mut out)?;
            self.index += 1;
        }
        Ok(out)
    }
}

#[async_trait]
impl MultipartUpload for SealingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        for b in &data {
            self.pending.extend_from_slice(b);
        }
        let out = match self.drain(false) {
            Ok(out) => out,
            Err(e) => return async move { Err(e) }.boxed(),
        };
        if out.is_empty() {
            return async { Ok(()) }.boxed();
        }
        match self.held.replace(out) {
            Some(previous) => self.inner.put_part(PutPayload::from(previous)),
            None => async { Ok(()) }.boxed(),
        }
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let mut last = self.held.take().unwrap_or_default();
        last.extend_from_slice(&self.drain(true)?);
        self.inner.put_part(PutPayload::from(last)).await?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for EncryptedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let master = Arc::clone(&self.master);
        let sealed = tokio::task::spawn_blocking(move || {
            let mut plain = Vec::with_capacity(payload.content_length());
            for b in &payload {
                plain.extend_from_slice(b);
            }
            seal_all(&master, &plain)
        })
        .await
        .map_err(|e| object_store::Error::Generic {
            store: "Encrypted",
            source: Box::new(e),
        })??;
        self.inner
            .put_opts(location, PutPayload::from(sealed), opts)
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let (header, keys) = ObjectKeys::create(&self.master)?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(SealingUpload {
            inner,
            keys,
            header: Some(header),
            pending: Vec::new(),
            index: 0,
            held: None,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if options.head {
            let meta = self.head(location).await?;
            return Ok(GetResult {
                payload: GetResultPayload::Stream(futures::stream::empty().boxed()),
                range: 0..0,
                meta,
                attributes: Default::default(),
            });
        }
        let Some(range) = options.range.clone() else {
            let mut result = self.inner.get_opts(location, options).await?;
            let size = plain_size(result.meta.size);
            let last = size / SEGMENT as u64;
            let opener = Opener {
                master: Arc::clone(&self.master),
                keys: None,
                input: result.payload_stream(),
                buf: BytesMut::new(),
                index: 0,
                last,
                last_len: (size - last * SEGMENT as u64) as usize,
                end: last,
                skip: 0,
                take: size,
            };
            let mut meta = result.meta;
            meta.size = size;
            return Ok(GetResult {
                payload: GetResultPayload::Stream(if size == 0 {
                    // Still open the (empty) final segment: a truncated or foreign object is refused.
                    let mut o = opener;
                    match o.next_plain().await {
                        Ok(_) => futures::stream::empty().boxed(),
                        Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
                    }
                } else {
                    opener.into_stream()
                }),
                range: 0..size,
                meta,
                attributes: result.attributes,
            });
        };
        let meta = self.inner.head(location).await?;
        let size = plain_size(meta.size);
        let wanted: Range<u64> = match range {
            GetRange::Bounded(r) => r.start..r.end.min(size),
            GetRange::Offset(o) => o..size,
            GetRange::Suffix(n) => size.saturating_sub(n)..size,
        };
        if wanted.start >= wanted.end {
            return Err(object_store::Error::Generic {
                store: "Encrypted",
                source: format!(
                    "range {}..{} not satisfiable for {location} (size {size})",
                    wanted.start, wanted.end
                )
                .into(),
            });
        }
        let seg = SEGMENT as u64;
        let sealed = seg + TAG as u64;
        let (first, end_seg) = (wanted.start / seg, (wanted.end - 1) / seg);
        let last = size / seg;
        let header = self.inner.get_range(location, 0..HEADER as u64).await?;
        let keys = ObjectKeys::open(&self.master, &header)?;
        let from = HEADER as u64 + first * sealed;
        let to = (HEADER as u64 + (end_seg + 1) * sealed).min(meta.size);
        let mut data = self
            .inner
            .get_opts(
                location,
                GetOptions {
                    range: Some(GetRange::Bounded(from..to)),
                    ..options
                },
            )
            .await?;
        let opener = Opener {
            master: Arc::clone(&self.master),
            keys: Some(keys),
            input: data.payload_stream(),
            buf: BytesMut::new(),
            index: first,
            last,
            last_len: (size - last * seg) as usize,
            end: end_seg,
            skip: (wanted.start - first * seg) as usize,
            take: wanted.end - wanted.start,
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(opener.into_stream()),
            range: wanted,
            meta: Self::plain_meta(meta),
            attributes: data.attributes,
        })
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        Ok(Self::plain_meta(self.inner.head(location).await?))
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.inner.delete(location).await
    }

    fn delete_stream<'a>(
        &'a self,
        locations: BoxStream<'a, Result<Path>>,
    ) -> BoxStream<'a, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner
            .list(prefix)
            .map(|m| m.map(Self::plain_meta))
            .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner
            .list_with_offset(prefix, offset)
            .map(|m| m.map(Self::plain_meta))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut r = self.inner.list_with_delimiter(prefix).await?;
        r.objects = r.objects.into_iter().map(Self::plain_meta).collect();
        Ok(r)
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        // The inner store's own rename: atomic on a local directory.
        self.inner.rename(from, to).await
    }

    async fn rename_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.rename_if_not_exists(from, to).await
    }
}

/// `GetResult::into_stream` consumes the whole result; this keeps meta and attributes usable.
trait PayloadStream {
    fn payload_stream(&mut self) -> BoxStream<'static, Result<Bytes>>;
}

impl PayloadStream for GetResult {
    fn payload_stream(&mut self) -> BoxStream<'static, Result<Bytes>> {
        let payload = std::mem::replace(
            &mut self.payload,
            GetResultPayload::Stream(futures::stream::empty().boxed()),
        );
        GetResult {
            payload,
            meta: self.meta.clone(),
            range: self.range.clone(),
            attributes: Default::default(),
        }
        .into_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn store(key: u8) -> (Arc<InMemory>, EncryptedStore) {
        let inner = Arc::new(InMemory::new());
        let enc = EncryptedStore::new(
            Arc::clone(&inner) as Arc<dyn ObjectStore>,
            Arc::new(MasterKey::from_bytes(&[key; 32])),
        );
        (inner, enc)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    const SIZES: [usize; 7] = [
        0,
        1,
        SEGMENT - 1,
        SEGMENT,
        SEGMENT + 1,
        3 * SEGMENT + 5,
        5 * SEGMENT,
    ];

    #[tokio::test]
    async fn round_trips_sizes_and_ranges_through_put_and_multipart() {
        let (inner, enc) = store(1);
        for n in SIZES {
            let plain = data(n);
            let put = Path::from(format!("put/{n}"));
            enc.put(&put, PutPayload::from(plain.clone()))
                .await
                .expect("put");
            let multi = Path::from(format!("multi/{n}"));
            let mut up = enc.put_multipart(&multi).await.expect("multipart");
            // Parts of two segments and a bit: not aligned to segments.
            for part in plain.chunks(2 * SEGMENT + 3) {
                up.put_part(PutPayload::from(part.to_vec()))
                    .await
                    .expect("part");
            }
            up.complete().await.expect("complete");
            for p in [&put, &multi] {
                let stored = inner.head(p).await.expect("head").size;
                assert_eq!(stored, stored_size(n as u64), "{p}");
                assert_eq!(plain_size(stored), n as u64);
                assert_eq!(enc.head(p).await.expect("head").size, n as u64);
                let back = enc.get(p).await.expect("get").bytes().await.expect("bytes");
                assert_eq!(back.as_ref(), plain.as_slice(), "{p}");
                // The stored bytes do not contain the plaintext.
                let raw = inner.get(p).await.expect("raw").bytes().await.expect("raw");
                if n >= 64 {
                    assert!(!raw.windows(64).any(|w| w == &plain[..64]));
                }
                for r in [
                    0..1,
                    5..n.min(100),
                    SEGMENT - 2..SEGMENT + 2,
                    n.saturating_sub(3)..n,
                ] {
                    if r.start >= r.end || r.end > n {
                        continue;
                    }
                    let got = enc
                        .get_range(p, r.start as u64..r.end as u64)
                        .await
                        .expect("range");
                    assert_eq!(got.as_ref(), &plain[r.clone()], "{p} {r:?}");
                }
            }
            let listed = enc.list(Some(&Path::from("put"))).collect::<Vec<_>>().await;
            assert!(listed.iter().flatten().any(|m| m.size == n as u64));
        }
    }

    #[tokio::test]
    async fn tampering_truncation_and_a_wrong_key_are_refused() {
        let (inner, enc) = store(2);
        let plain = data(3 * SEGMENT + 10);
        let p = Path::from("x");
        enc.put(&p, PutPayload::from(plain.clone()))
            .await
            .expect("put");
        let raw = inner
            .get(&p)
            .await
            .expect("raw")
            .bytes()
            .await
            .expect("raw");
        async fn read(enc: &EncryptedStore, p: &Path) -> Result<Bytes> {
            enc.get(p).await?.bytes().await
        }
        // One flipped bit anywhere: header, wrapped key, any segment, any tag.
        for at in [
            0,
            5,
            20,
            HEADER - 1,
            HEADER + 3,
            HEADER + SEGMENT + 20,
            raw.len() - 1,
        ] {
            let mut bad = raw.to_vec();
            bad[at] ^= 0x10;
            inner.put(&p, PutPayload::from(bad)).await.expect("put");
            assert!(read(&enc, &p).await.is_err(), "flip at {at}");
        }
        // Truncated by a whole segment: the last segment is missing, so the object does not end properly.
        let cut = raw[..raw.len() - (SEGMENT + TAG)].to_vec();
        inner.put(&p, PutPayload::from(cut)).await.expect("put");
        assert!(read(&enc, &p).await.is_err(), "truncated");
        // Another master key.
        inner
            .put(&p, PutPayload::from(raw.clone()))
            .await
            .expect("put");
        assert_eq!(
            read(&enc, &p).await.expect("intact").as_ref(),
            plain.as_slice()
        );
        let other = EncryptedStore::new(
            Arc::clone(&inner) as Arc<dyn ObjectStore>,
            Arc::new(MasterKey::from_bytes(&[3; 32])),
        );
        assert!(read(&other, &p).await.is_err(), "wrong key");
        // An empty object too: its single (empty) segment is authenticated.
        let e = Path::from("empty");
        enc.put(&e, PutPayload::default()).await.expect("put");
        assert!(enc
            .get(&e)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("ok")
            .is_empty());
        let mut raw = inner
            .get(&e)
            .await
            .expect("raw")
            .bytes()
            .await
            .expect("raw")
            .to_vec();
        raw[HEADER] ^= 1;
        inner.put(&e, PutPayload::from(raw)).await.expect("put");
        assert!(enc.get(&e).await.expect("get").bytes().await.is_err());
    }

    #[test]
    fn sizes_invert() {
        for n in (0..4 * SEGMENT as u64 + 3)
            .step_by(4093)
            .chain(SIZES.iter().map(|&n| n as u64))
        {
            assert_eq!(plain_size(stored_size(n)), n, "{n}");
        }
        assert_eq!(plain_size(0), 0);
        assert_eq!(plain_size(HEADER as u64), 0);
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let hex_key = dir.path().join("hex");
        std::fs::write(&hex_key, format!("{}\n", "ab".repeat(32))).expect("write");
        assert!(MasterKey::from_file(&hex_key).is_ok());
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [7u8; 32]).expect("write");
        assert!(MasterKey::from_file(&raw).is_ok());
        let short = dir.path().join("short");
        std::fs::write(&short, "abcd").expect("write");
        let e = MasterKey::from_file(&short).expect_err("short");
        assert!(
            e.contains("64 hexadecimal digits") && !e.contains("abcd"),
            "{e}"
        );
        assert!(format!("{:?}", MasterKey::from_bytes(&[9; 32])).contains("***"));
    }
}
