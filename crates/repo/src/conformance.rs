//! A conformance suite for [`Repository`] backends.
//!
//! Run [`conformance`] against every backend: it is run on memory and on a local directory in
//! this crate's tests, and is meant to be run against S3/MinIO/OSS (enable the
//! `conformance` feature) when such a store is configured.
//!
//! Everything happens under a fresh `conformance/<uuid>` prefix, deleted at the end, so the
//! suite can run against a shared bucket. Needs a Tokio runtime (the producers of the
//! upload checks run on `spawn_blocking` threads).

use std::fmt;
use std::io::Write;

use bytes::Bytes;
use ddsvault_catalog::BackupMethod;
use sha2::{Digest, Sha256};

use crate::{
    sha256_hex, Manifest, ManifestFile, RepoError, RepoPath, Repository, UploadOptions,
    UploadedObject,
};

/// Size of the streamed upload check (several parts with the default part size).
pub const STREAM_SIZE: usize = 30 * 1024 * 1024 + 12_345;

/// A failed check: which one and why.
#[derive(Debug)]
pub struct ConformanceFailure {
    /// The check that failed.
    pub check: String,
    /// What went wrong.
    pub detail: String,
}

impl fmt::Display for ConformanceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.detail)
    }
}

impl std::error::Error for ConformanceFailure {}

type Outcome<T = ()> = Result<T, ConformanceFailure>;

fn fail(check: impl Into<String>, detail: impl Into<String>) -> ConformanceFailure {
    ConformanceFailure {
        check: check.into(),
        detail: detail.into(),
    }
}

/// Attaches the check name to an error.
trait Ctx<T> {
    fn ctx(self, check: &str) -> Outcome<T>;
}

impl<T, E: fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, check: &str) -> Outcome<T> {
        self.map_err(|e| fail(check, format!("unexpected error: {e}")))
    }
}

macro_rules! ensure {
    ($cond:expr, $check:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(fail($check, format!($($fmt)+)));
        }
    };
}

/// Runs the whole suite; panics with the name of the first failing check.
pub async fn conformance(repo: &Repository) {
    if let Err(e) = try_conformance(repo).await {
        panic!("repository conformance failed: {e}");
    }
}

/// Runs the whole suite; returns the first failing check.
///
/// # Errors
/// The first failing check.
pub async fn try_conformance(repo: &Repository) -> Outcome {
    let root = RepoPath::new(format!("conformance/{}", uuid::Uuid::new_v4())).ctx("root")?;
    let result = run_all(repo, &root).await;
    // Clean up even after a failure; report the first problem.
    let cleanup = repo.delete_prefix(&root).await.ctx("cleanup");
    result?;
    cleanup?;
    let left = repo.list(&root).await.ctx("cleanup list")?;
    ensure!(left.is_empty(), "cleanup", "objects left: {left:?}");
    Ok(())
}

async fn run_all(repo: &Repository, root: &RepoPath) -> Outcome {
    put_get_head(repo, &root.join("basic").ctx("path")?).await?;
    ranges(repo, &root.join("range").ctx("path")?).await?;
    list_and_delete(repo, &root.join("list").ctx("path")?).await?;
    rename(repo, &root.join("rename").ctx("path")?).await?;
    awkward_names(repo, &root.join("names").ctx("path")?).await?;
    upload_stream(repo, &root.join("upload").ctx("path")?).await?;
    upload_empty(repo, &root.join("upload-empty").ctx("path")?).await?;
    upload_dropped_writer(repo, &root.join("upload-dropped").ctx("path")?).await?;
    upload_aborted_by_handle(repo, &root.join("upload-abort").ctx("path")?).await?;
    manifest_and_verify(repo, &root.join("backup").ctx("path")?).await?;
    chunk_store(repo).await?;
    Ok(())
}

/// The snapshot chunk store lives at fixed top-level prefixes (`chunks/<instance>`, `backups/<instance>`): the
/// check uses a fresh instance id and removes both prefixes itself.
async fn chunk_store(repo: &Repository) -> Outcome {
    let instance = format!("conformance-{}", uuid::Uuid::new_v4());
    let result = chunk_store_checks(repo, &instance).await;
    let c1 = repo
        .delete_prefix(&crate::chunks::chunks_prefix(&instance))
        .await
        .ctx("chunks cleanup");
    let c2 = repo
        .delete_prefix(&Repository::instance_prefix(&instance))
        .await
        .ctx("chunks cleanup");
    result?;
    c1?;
    c2?;
    Ok(())
}

async fn chunk_store_checks(repo: &Repository, instance: &str) -> Outcome {
    use crate::{ChunkRef, SnapshotFile, SnapshotIndex};
    const C: &str = "chunk store";
    let raw = Bytes::from(pseudo_random(7, 100_000));
    let digest = sha256_hex(&raw);
    let chunk = ChunkRef::new(digest.clone(), raw.len() as u64);
    let first = repo
        .put_chunk(instance, &digest, raw.clone(), 3)
        .await
        .ctx(C)?;
    ensure!(first.is_some(), C, "a new chunk was not written");
    let again = repo
        .put_chunk(instance, &digest, raw.clone(), 3)
        .await
        .ctx(C)?;
    ensure!(again.is_none(), C, "an existing chunk was written again");
    ensure!(
        repo.get_chunk(instance, &chunk).await.ctx(C)? == raw,
        C,
        "get_chunk returned other bytes"
    );
    // The listing a snapshot reuses chunks from (a local repository reads its directories itself): every chunk
    // with its stored size, nothing of another instance, nothing that is not named as a chunk, and an instance
    // without a store is empty.
    let raw2 = Bytes::from(pseudo_random(8, 5_000));
    let digest2 = sha256_hex(&raw2);
    let second = repo.put_chunk(instance, &digest2, raw2, 3).await.ctx(C)?;
    let stray = crate::chunks::chunks_prefix(instance)
        .join(&format!("{}/not-a-chunk", &digest[..2]))
        .ctx(C)?;
    repo.put(&stray, Bytes::from_static(b"x")).await.ctx(C)?;
    let other = format!("{instance}-other");
    let sizes = repo.stored_chunk_sizes(instance).await.ctx(C)?;
    let want: std::collections::HashMap<String, u64> = [
        (digest.clone(), first.unwrap_or_default()),
        (digest2.clone(), second.unwrap_or_default()),
    ]
    .into_iter()
    .collect();
    ensure!(
        sizes == want,
        C,
        "stored chunk sizes {sizes:?}, expected {want:?}"
    );
    ensure!(
        repo.stored_chunk_sizes(&other).await.ctx(C)?.is_empty(),
        C,
        "an instance without a chunk store lists chunks"
    );
    repo.delete(&stray).await.ctx(C)?;
    repo.delete(&crate::chunks::chunk_path(instance, &digest2).ctx(C)?)
        .await
        .ctx(C)?;
    let (count, bytes) = repo.chunk_store_usage(instance).await.ctx(C)?;
    ensure!(
        count == 1 && Some(bytes) == first,
        C,
        "usage {count} chunks / {bytes} bytes, expected 1 / {first:?}"
    );
    // A chunk whose bytes do not match its name is refused on write and on read.
    let wrong = repo
        .put_chunk(instance, &digest.replace(&digest[..1], "0"), raw.clone(), 3)
        .await;
    ensure!(
        matches!(wrong, Err(RepoError::Integrity { .. })) || digest.starts_with('0'),
        C,
        "mismatched chunk accepted: {wrong:?}"
    );
    let path = crate::chunks::chunk_path(instance, &digest).ctx(C)?;
    let other = zstd::bulk::compress(b"tampered", 3).ctx(C)?;
    repo.put(&path, Bytes::from(other)).await.ctx(C)?;
    let read = repo.get_chunk(instance, &chunk).await;
    ensure!(
        matches!(read, Err(RepoError::Integrity { .. })),
        C,
        "tampered chunk read back: {read:?}"
    );
    ensure!(
        crate::chunks::chunk_path(instance, "../x").is_err(),
        C,
        "malformed digest accepted as a chunk name"
    );
    // Referenced chunks come from committed snapshot manifests only.
    let prefix1 = Repository::backup_prefix(instance, 1);
    let index = SnapshotIndex {
        files: vec![SnapshotFile {
            name: "a.sqlite".into(),
            size: chunk.size,
            sha256: digest.clone(),
            chunks: vec![chunk.clone()],
        }],
    };
    let entry = repo
        .write_snapshot_index(&prefix1, &index, 3)
        .await
        .ctx(C)?;
    let mut m = Manifest::new(1, instance, BackupMethod::Snapshot.as_str());
    m.files.push(entry);
    repo.write_manifest(&prefix1, &m).await.ctx(C)?;
    ensure!(
        repo.read_snapshot_index(&prefix1, &m).await.ctx(C)? == Some(index),
        C,
        "snapshot index did not round-trip"
    );
    repo.verify(&prefix1).await.ctx(C)?;
    let mut logical = Manifest::new(2, instance, BackupMethod::Logical.as_str());
    logical.extra = serde_json::json!({ "details": {} });
    repo.write_manifest(&Repository::backup_prefix(instance, 2), &logical)
        .await
        .ctx(C)?;
    let refs = repo.referenced_chunks(instance).await.ctx(C)?;
    ensure!(
        refs.len() == 1 && refs.contains(&digest),
        C,
        "referenced chunks {refs:?}"
    );
    // Deleting the snapshot's backup prefix leaves the shared chunks alone.
    repo.delete_prefix(&Repository::backup_prefix(instance, 1))
        .await
        .ctx(C)?;
    ensure!(
        repo.referenced_chunks(instance).await.ctx(C)?.is_empty(),
        C,
        "a deleted snapshot still references chunks"
    );
    let (count, _) = repo.chunk_store_usage(instance).await.ctx(C)?;
    ensure!(count == 1, C, "deleting a backup removed chunks");
    Ok(())
}

fn p(base: &RepoPath, rel: &str) -> Outcome<RepoPath> {
    base.join(rel).ctx(&format!("join {rel}"))
}

async fn put_get_head(repo: &Repository, base: &RepoPath) -> Outcome {
    const C: &str = "put/get/head";
    let path = p(base, "object.bin")?;
    let data = Bytes::from(pseudo_random(1, 10_000));
    repo.put(&path, data.clone()).await.ctx(C)?;
    ensure!(
        repo.get(&path).await.ctx(C)? == data,
        C,
        "get returned other bytes"
    );
    let info = repo.head(&path).await.ctx(C)?;
    ensure!(info.size == 10_000, C, "head size {}", info.size);
    ensure!(info.path == path, C, "head path {}", info.path);

    let (size, stream) = repo.get_stream(&path).await.ctx(C)?;
    ensure!(size == 10_000, C, "get_stream size {size}");
    let streamed = collect(stream).await.ctx(C)?;
    ensure!(streamed == data, C, "get_stream returned other bytes");

    // Overwrite replaces.
    repo.put(&path, Bytes::from_static(b"second"))
        .await
        .ctx(C)?;
    ensure!(
        repo.get(&path).await.ctx(C)?.as_ref() == b"second",
        C,
        "overwrite not visible"
    );

    // Empty object.
    let empty = p(base, "empty")?;
    repo.put(&empty, Bytes::new()).await.ctx(C)?;
    ensure!(
        repo.get(&empty).await.ctx(C)?.is_empty(),
        C,
        "empty object has bytes"
    );
    ensure!(
        repo.head(&empty).await.ctx(C)?.size == 0,
        C,
        "empty object size"
    );

    // Missing objects.
    let missing = p(base, "missing")?;
    for (what, r) in [
        ("get", repo.get(&missing).await.map(|_| ())),
        ("head", repo.head(&missing).await.map(|_| ())),
        ("get_stream", repo.get_stream(&missing).await.map(|_| ())),
        (
            "get_range",
            repo.get_range(&missing, 0..1).await.map(|_| ()),
        ),
    ] {
        match r {
            Err(RepoError::NotFound { path }) => {
                ensure!(path == missing.as_str(), C, "{what}: NotFound names {path}")
            }
            other => return Err(fail(C, format!("{what} of missing object: {other:?}"))),
        }
    }
    repo.delete(&missing)
        .await
        .ctx("delete missing is idempotent")?;
    repo.delete(&empty).await.ctx(C)?;
    ensure!(
        matches!(repo.head(&empty).await, Err(RepoError::NotFound { .. })),
        C,
        "deleted object still there"
    );
    Ok(())
}

async fn ranges(repo: &Repository, base: &RepoPath) -> Outcome {
    const C: &str = "get_range";
    let path = p(base, "data")?;
    let data = Bytes::from(pseudo_random(2, 1000));
    repo.put(&path, data.clone()).await.ctx(C)?;
    for r in [0..1000u64, 0..1, 10..20, 999..1000, 500..500] {
        let got = repo.get_range(&path, r.clone()).await.ctx(C)?;
        let want = data.slice(r.start as usize..r.end as usize);
        ensure!(got == want, C, "range {r:?} returned other bytes");
    }
    for r in [990..1001u64, 1000..1001, 2000..3000] {
        match repo.get_range(&path, r.clone()).await {
            Err(e @ RepoError::RangeNotSatisfiable { size: 1000, .. }) => {
                ensure!(e.is_permanent(), C, "RangeNotSatisfiable must be permanent")
            }
            other => return Err(fail(C, format!("range {r:?} past the end: {other:?}"))),
        }
    }
    #[allow(clippy::reversed_empty_ranges)]
    let inverted = repo.get_range(&path, 20..10).await;
    ensure!(
        matches!(inverted, Err(RepoError::RangeNotSatisfiable { .. })),
        C,
        "inverted range: {inverted:?}"
    );
    Ok(())
}

async fn list_and_delete(repo: &Repository, base: &RepoPath) -> Outcome {
    const C: &str = "list/delete_prefix";
    let files = ["dir/x", "dir/sub/y", "dir/sub/deeper/z", "dir2/w", "dirx"];
    for (i, f) in files.iter().enumerate() {
        repo.put(&p(base, f)?, Bytes::from(vec![b'a'; i + 1]))
            .await
            .ctx(C)?;
    }
    let dir = p(base, "dir")?;
    let listed = repo.list(&dir).await.ctx(C)?;
    let names: Vec<_> = listed
        .iter()
        .map(|o| o.path.strip_prefix(base).unwrap_or("?"))
        .collect();
    ensure!(
        names == ["dir/sub/deeper/z", "dir/sub/y", "dir/x"],
        C,
        "list(dir) = {names:?}"
    );
    let sizes: Vec<_> = listed.iter().map(|o| o.size).collect();
    ensure!(sizes == [3, 2, 1], C, "sizes {sizes:?}");
    let all = repo.list(base).await.ctx(C)?;
    ensure!(
        all.len() == files.len(),
        C,
        "list(base) has {} objects",
        all.len()
    );
    ensure!(
        repo.list(&p(base, "nothing/here")?)
            .await
            .ctx(C)?
            .is_empty(),
        C,
        "missing prefix lists objects"
    );
    // A prefix that is an object lists nothing, and does not match "dirx" by string prefix.
    ensure!(
        repo.list(&p(base, "dirx")?).await.ctx(C)?.is_empty(),
        C,
        "list of an object path is not empty"
    );

    let deleted = repo.delete_prefix(&dir).await.ctx(C)?;
    ensure!(deleted == 3, C, "delete_prefix(dir) deleted {deleted}");
    ensure!(
        repo.list(&dir).await.ctx(C)?.is_empty(),
        C,
        "dir not empty after delete"
    );
    let rest: Vec<_> = repo
        .list(base)
        .await
        .ctx(C)?
        .into_iter()
        .map(|o| o.path)
        .collect();
    ensure!(
        rest == [p(base, "dir2/w")?, p(base, "dirx")?],
        C,
        "siblings affected: {rest:?}"
    );
    ensure!(
        repo.delete_prefix(&dir).await.ctx(C)? == 0,
        C,
        "second delete_prefix not idempotent"
    );
    ensure!(
        repo.delete_prefix(&p(base, "never/existed")?)
            .await
            .ctx(C)?
            == 0,
        C,
        "delete_prefix of missing prefix"
    );
    // The directory can be reused after deletion.
    repo.put(&p(base, "dir/again")?, Bytes::from_static(b"1"))
        .await
        .ctx(C)?;
    ensure!(
        repo.list(&dir).await.ctx(C)?.len() == 1,
        C,
        "dir not reusable"
    );
    Ok(())
}

async fn rename(repo: &Repository, base: &RepoPath) -> Outcome {
    const C: &str = "rename";
    let from = p(base, "staging/tok/file")?;
    let to = p(base, "final/i/1/file")?;
    repo.put(&from, Bytes::from_static(b"payload"))
        .await
        .ctx(C)?;
    repo.rename(&from, &to).await.ctx(C)?;
    ensure!(
        repo.get(&to).await.ctx(C)?.as_ref() == b"payload",
        C,
        "target content"
    );
    ensure!(
        matches!(repo.head(&from).await, Err(RepoError::NotFound { .. })),
        C,
        "source still exists"
    );
    // Replaces an existing target.
    repo.put(&from, Bytes::from_static(b"newer")).await.ctx(C)?;
    repo.rename(&from, &to).await.ctx(C)?;
    ensure!(
        repo.get(&to).await.ctx(C)?.as_ref() == b"newer",
        C,
        "target not replaced"
    );
    match repo.rename(&from, &to).await {
        Err(RepoError::NotFound { path }) => {
            ensure!(path == from.as_str(), C, "NotFound names {path}")
        }
        other => return Err(fail(C, format!("rename of missing source: {other:?}"))),
    }
    ensure!(
        repo.get(&to).await.ctx(C)?.as_ref() == b"newer",
        C,
        "failed rename damaged target"
    );
    Ok(())
}

/// Names that trip up URL encoding, shells and filesystems.
pub const AWKWARD_NAMES: &[&str] = &[
    "with space/file name.bin",
    "unicode/日本語/ファイル.txt",
    "emoji/😀.bson",
    "percent/100%.txt",
    "percent/a%20b",
    "percent/%2F%2e%2e",
    "plus+and&amp=eq",
    "hash#tag/x#y",
    "quote'and\"double",
    "brackets[1]{2}<3>",
    "colon:semi;comma,",
    "tilde~caret^pipe|star*q?",
    "...",
    ".hidden/-dash",
];

async fn awkward_names(repo: &Repository, base: &RepoPath) -> Outcome {
    const C: &str = "awkward names";
    let mut expected = Vec::new();
    for (i, name) in AWKWARD_NAMES.iter().enumerate() {
        let path = p(base, name)?;
        let data = Bytes::from(format!("content {i} of {name}"));
        repo.put(&path, data.clone())
            .await
            .ctx(&format!("{C}: put {name:?}"))?;
        let got = repo.get(&path).await.ctx(&format!("{C}: get {name:?}"))?;
        ensure!(got == data, C, "{name:?} returned other bytes");
        let info = repo.head(&path).await.ctx(&format!("{C}: head {name:?}"))?;
        ensure!(info.size == data.len() as u64, C, "{name:?} head size");
        expected.push(path);
    }
    expected.sort();
    let listed: Vec<_> = repo
        .list(base)
        .await
        .ctx(C)?
        .into_iter()
        .map(|o| o.path)
        .collect();
    ensure!(
        listed == expected,
        C,
        "list returned {listed:?}, expected {expected:?}"
    );
    // Prefixes with awkward segments list exactly their own objects.
    let percent = repo.list(&p(base, "percent")?).await.ctx(C)?;
    ensure!(percent.len() == 3, C, "list(percent) = {percent:?}");
    let spaced = repo.list(&p(base, "with space")?).await.ctx(C)?;
    ensure!(spaced.len() == 1, C, "list(with space) = {spaced:?}");
    // Rename between awkward names.
    let from = p(base, "percent/100%.txt")?;
    let to = p(base, "unicode/日本語/renamed 100%.txt")?;
    repo.rename(&from, &to).await.ctx(C)?;
    ensure!(
        repo.head(&to).await.is_ok(),
        C,
        "awkward rename target missing"
    );
    let deleted = repo.delete_prefix(base).await.ctx(C)?;
    ensure!(
        deleted == AWKWARD_NAMES.len() as u64,
        C,
        "delete_prefix deleted {deleted}"
    );
    Ok(())
}

/// Writes `total` pseudo-random bytes in writes of varying (small, odd) sizes from a blocking
/// thread, closes, and returns the SHA-256 the producer computed independently.
async fn produce(
    repo: &Repository,
    path: &RepoPath,
    opts: UploadOptions,
    total: usize,
    seed: u64,
) -> Outcome<(String, UploadedObject)> {
    const C: &str = "upload";
    let (mut writer, handle) = repo.upload(path, opts);
    let producer = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        const SIZES: [usize; 7] = [1, 7, 4093, 8192, 65_537, 100, 131_072];
        let mut rng = XorShift::new(seed);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 131_072];
        let mut remaining = total;
        let mut i = 0;
        while remaining > 0 {
            let n = SIZES[i % SIZES.len()].min(remaining);
            i += 1;
            rng.fill(&mut buf[..n]);
            hasher.update(&buf[..n]);
            writer.write_all(&buf[..n])?;
            remaining -= n;
        }
        writer.close()?;
        Ok(hex::encode(hasher.finalize()))
    });
    let uploaded = handle.finish().await.ctx(C)?;
    let expected = producer.await.ctx(C)?.ctx(C)?;
    Ok((expected, uploaded))
}

async fn upload_stream(repo: &Repository, base: &RepoPath) -> Outcome {
    const C: &str = "upload stream";
    let path = p(base, "dump.archive")?;
    let (expected, uploaded) =
        produce(repo, &path, UploadOptions::default(), STREAM_SIZE, 3).await?;
    ensure!(
        uploaded.size == STREAM_SIZE as u64,
        C,
        "size {}",
        uploaded.size
    );
    ensure!(
        uploaded.sha256 == expected,
        C,
        "sha256 {} != {expected}",
        uploaded.sha256
    );
    ensure!(uploaded.path == path, C, "path {}", uploaded.path);
    let info = repo.head(&path).await.ctx(C)?;
    ensure!(
        info.size == STREAM_SIZE as u64,
        C,
        "stored size {}",
        info.size
    );
    let stored = repo.get(&path).await.ctx(C)?;
    ensure!(sha256_hex(&stored) == expected, C, "stored content differs");
    // Only the object itself is visible (no staging leftovers).
    let listed = repo.list(base).await.ctx(C)?;
    ensure!(listed.len() == 1, C, "listing after upload: {listed:?}");

    // A second upload with a non-default shape replaces the first.
    let opts = UploadOptions::default()
        .with_part_size(crate::upload::MIN_PART_SIZE)
        .with_chunk_size(64 * 1024)
        .with_channel_capacity(2)
        .with_max_in_flight_parts(3);
    let size = 11 * 1024 * 1024 + 1;
    let (expected, uploaded) = produce(repo, &path, opts, size, 4).await?;
    ensure!(uploaded.sha256 == expected, C, "second upload sha256");
    let stored = repo.get(&path).await.ctx(C)?;
    ensure!(stored.len() == size, C, "replaced size {}", stored.len());
    ensure!(
        sha256_hex(&stored) == expected,
        C,
        "replaced content differs"
    );
    Ok(())
}

async fn upload_empty(repo: &Repository, base: &RepoPath) -> Outcome {
    const C: &str = "upload empty";
    let path = p(base, "empty")?;
    let (expected, uploaded) = produce(repo, &path, UploadOptions::default(), 0, 5).await?;
    ensure!(uploaded.size == 0, C, "size {}", uploaded.size);
    ensure!(uploaded.sha256 == expected, C, "sha256");
    ensure!(uploaded.sha256 == sha256_hex(b""), C, "sha256 of nothing");
    ensure!(repo.get(&path).await.ctx(C)?.is_empty(), C, "stored bytes");
    Ok(())
}

async fn upload_dropped_writer(repo: &Repository, base: &RepoPath) -> Outcome {
    const C: &str = "upload dropped writer";
    let path = p(base, "partial.archive")?;
    let opts = UploadOptions::default().with_part_size(crate::upload::MIN_PART_SIZE);
    let (mut writer, handle) = repo.upload(&path, opts);
    // Enough for at least one complete part to reach the store before the producer "crashes".
    let producer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let chunk = pseudo_random(6, 64 * 1024);
        for _ in 0..(7 * 16) {
            writer.write_all(&chunk)?;
        }
        writer.flush()?;
        drop(writer); // no close(): simulates a failed producer
        Ok(())
    });
    let finished = handle.finish().await;
    producer.await.ctx(C)?.ctx(C)?;
    match finished {
        Err(RepoError::WriterDropped { path: p }) => {
            ensure!(p == path.as_str(), C, "error names {p}")
        }
        other => return Err(fail(C, format!("finish returned {other:?}"))),
    }
    ensure!(
        matches!(repo.head(&path).await, Err(RepoError::NotFound { .. })),
        C,
        "aborted upload published an object"
    );
    ensure!(
        repo.list(base).await.ctx(C)?.is_empty(),
        C,
        "aborted upload left objects"
    );

    // An aborted upload over an existing object leaves it unchanged.
    repo.put(&path, Bytes::from_static(b"previous"))
        .await
        .ctx(C)?;
    let (mut writer, handle) = repo.upload(&path, UploadOptions::default());
    let producer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        writer.write_all(&pseudo_random(7, 100_000))?;
        Ok(()) // dropped unclosed
    });
    let finished = handle.finish().await;
    producer.await.ctx(C)?.ctx(C)?;
    ensure!(
        matches!(finished, Err(RepoError::WriterDropped { .. })),
        C,
        "finish over existing: {finished:?}"
    );
    ensure!(
        repo.get(&path).await.ctx(C)?.as_ref() == b"previous",
        C,
        "aborted upload changed the existing object"
    );
    repo.delete(&path).await.ctx(C)?;
    Ok(())
}

async fn upload_aborted_by_handle(repo: &Repository, base: &RepoPath) -> Outcome {
    const C: &str = "upload aborted by handle";
    let path = p(base, "cancelled.archive")?;
    let (mut writer, handle) = repo.upload(&path, UploadOptions::default());
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let producer = tokio::task::spawn_blocking(move || -> Result<u64, u64> {
        let chunk = pseudo_random(8, 64 * 1024);
        let mut started = Some(started_tx);
        // Writes until the abort makes a write fail; bounded so a broken abort cannot hang.
        for _ in 0..(256 * 16) {
            if writer.write_all(&chunk).is_err() {
                return Ok(writer.bytes_written());
            }
            if let Some(tx) = started.take() {
                let _ = tx.send(());
            }
        }
        Err(writer.bytes_written())
    });
    let _ = started_rx.await;
    handle.abort().await;
    match producer.await.ctx(C)? {
        Ok(_) => {}
        Err(n) => return Err(fail(C, format!("writer accepted {n} bytes after abort"))),
    }
    ensure!(
        matches!(repo.head(&path).await, Err(RepoError::NotFound { .. })),
        C,
        "aborted upload published an object"
    );
    ensure!(
        repo.list(base).await.ctx(C)?.is_empty(),
        C,
        "aborted upload left objects"
    );
    Ok(())
}

async fn manifest_and_verify(repo: &Repository, prefix: &RepoPath) -> Outcome {
    const C: &str = "manifest/verify";
    ensure!(
        repo.read_manifest(prefix).await.ctx(C)?.is_none(),
        C,
        "manifest before writing"
    );
    match repo.verify(prefix).await {
        Err(RepoError::NotFound { .. }) => {}
        other => return Err(fail(C, format!("verify without manifest: {other:?}"))),
    }

    let mut m = Manifest::new(42, "dds-test", "logical");
    m.extra = serde_json::json!({ "oplog": { "start": 1, "end": 2 } });
    let files: [(&str, Vec<u8>); 3] = [
        ("db1/coll.bson.zst", pseudo_random(9, 200_000)),
        ("db 2/ünïcode%.bson", pseudo_random(10, 1234)),
        ("empty", Vec::new()),
    ];
    for (name, data) in &files {
        repo.put(&p(prefix, name)?, Bytes::from(data.clone()))
            .await
            .ctx(C)?;
        m.files.push(ManifestFile {
            name: (*name).to_string(),
            size: data.len() as u64,
            sha256: sha256_hex(data),
        });
    }
    repo.write_manifest(prefix, &m).await.ctx(C)?;
    let read = repo.read_manifest(prefix).await.ctx(C)?;
    ensure!(
        read.as_ref() == Some(&m),
        C,
        "read_manifest returned {read:?}"
    );
    ensure!(
        repo.head(&Repository::manifest_path(prefix)).await.is_ok(),
        C,
        "manifest.json not at the documented path"
    );
    let verified = repo.verify(prefix).await.ctx(C)?;
    ensure!(verified == m, C, "verify returned another manifest");

    // A flipped byte is a sha256 mismatch naming the file.
    let target = p(prefix, files[0].0)?;
    let mut flipped = files[0].1.clone();
    flipped[123_456] ^= 0x01;
    repo.put(&target, Bytes::from(flipped)).await.ctx(C)?;
    match repo.verify(prefix).await {
        Err(RepoError::Integrity {
            path,
            what: "sha256",
            ..
        }) => ensure!(path == target.as_str(), C, "flip: error names {path}"),
        other => return Err(fail(C, format!("verify after bit flip: {other:?}"))),
    }

    // A truncated file is a size mismatch naming the file.
    let truncated = files[0].1[..150_000].to_vec();
    repo.put(&target, Bytes::from(truncated)).await.ctx(C)?;
    match repo.verify(prefix).await {
        Err(RepoError::Integrity {
            path,
            what: "size",
            expected,
            actual,
        }) => {
            ensure!(path == target.as_str(), C, "truncation: error names {path}");
            ensure!(
                expected == "200000" && actual == "150000",
                C,
                "truncation: expected {expected}, actual {actual}"
            );
        }
        other => return Err(fail(C, format!("verify after truncation: {other:?}"))),
    }

    // A missing file is NotFound naming it.
    repo.delete(&target).await.ctx(C)?;
    match repo.verify(prefix).await {
        Err(RepoError::NotFound { path }) => {
            ensure!(path == target.as_str(), C, "missing: error names {path}")
        }
        other => return Err(fail(C, format!("verify with a missing file: {other:?}"))),
    }

    // Invalid manifests are refused on write and on read.
    let mut bad = m.clone();
    bad.files.push(ManifestFile {
        name: "../escape".into(),
        size: 0,
        sha256: sha256_hex(b""),
    });
    ensure!(
        matches!(
            repo.write_manifest(prefix, &bad).await,
            Err(RepoError::Manifest { .. })
        ),
        C,
        "manifest with '../' accepted"
    );
    repo.put(
        &Repository::manifest_path(prefix),
        Bytes::from_static(b"{ torn"),
    )
    .await
    .ctx(C)?;
    ensure!(
        matches!(
            repo.read_manifest(prefix).await,
            Err(RepoError::Manifest { .. })
        ),
        C,
        "torn manifest not reported"
    );
    Ok(())
}

async fn collect(
    mut stream: futures::stream::BoxStream<'static, Result<Bytes, RepoError>>,
) -> Result<Bytes, RepoError> {
    use futures::StreamExt;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(Bytes::from(out))
}

/// Deterministic, incompressible test data.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    XorShift::new(seed).fill(&mut v);
    v
}

struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}
