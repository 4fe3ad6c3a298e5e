//! A Physical or Snapshot backup's data files out of the repository: as one tar stream (BackupDownloadURL, `ddsvault
//! download`) or written into a directory (file restores, `ddsvault restore --to-dir`, CreateDBInstance from a
//! backup). Every byte is checked against the manifest on the way: a snapshot's chunks one by one as they are
//! read, every written file as a whole (size and SHA-256) before it gets its final name.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::{ChunkRef, Manifest, RepoError, RepoPath, Repository};

/// The directory of a Physical backup's data files under its backup prefix (`files/<db>.sqlite`).
pub const FILES_DIR: &str = "files";

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the backup from the repository failed (a snapshot chunk that fails its hash is one).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The manifest does not describe data files that can be exported (none, one twice, a name with a
    /// directory part).
    #[error("{0}")]
    Manifest(String),
    /// A written file does not match the manifest.
    #[error("{0}")]
    Mismatch(String),
    /// Writing a local file failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The operation (`create`, `write`, `rename to`, `sync`).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// The cancellation token fired.
    #[error("restore cancelled")]
    Cancelled,
    /// The blocking writer task was lost.
    #[error("restore task: {0}")]
    Task(String),
}

fn io_err(what: &'static str, path: &Path, source: std::io::Error) -> ExportError {
    ExportError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What [`materialize`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Materialized {
    /// File names, in backup order.
    pub files: Vec<String>,
    /// Bytes written.
    pub bytes: u64,
}

/// A plain file name (no directory part), as every data file of a FerretDB SQLite directory is.
fn data_file_name(name: &str) -> Result<&str, ExportError> {
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(ExportError::Manifest(format!(
            "the manifest names an unexpected data file {name:?}"
        )));
    }
    Ok(name)
}

enum Source {
    /// A snapshot file: its chunks from the instance's chunk store.
    Chunks(Vec<ChunkRef>),
    /// A Physical file: one object under the backup prefix.
    Object(RepoPath),
}

struct Planned {
    name: String,
    size: u64,
    sha256: String,
    source: Source,
}

async fn plan(
    repo: &Repository,
    prefix: &RepoPath,
    manifest: &Manifest,
) -> Result<Vec<Planned>, ExportError> {
    let mut out = Vec::new();
    if let Some(index) = repo.read_snapshot_index(prefix, manifest).await? {
        for f in index.files {
            out.push(Planned {
                name: data_file_name(&f.name)?.to_string(),
                size: f.size,
                sha256: f.sha256,
                source: Source::Chunks(f.chunks),
            });
        }
    } else {
        let files_dir = format!("{FILES_DIR}/");
        for f in &manifest.files {
            let Some(name) = f.name.strip_prefix(&files_dir) else {
                continue;
            };
            out.push(Planned {
                name: data_file_name(name)?.to_string(),
                size: f.size,
                sha256: f.sha256.clone(),
                source: Source::Object(prefix.join(&f.name)?),
            });
        }
    }
    if out.is_empty() {
        return Err(ExportError::Manifest(format!(
            "backup {} lists no data file",
            manifest.backup_id
        )));
    }
    let mut names: Vec<&str> = out.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(ExportError::Manifest(format!(
            "backup {} lists a data file twice",
            manifest.backup_id
        )));
    }
    Ok(out)
}

/// Chunks fetched and checked at once, delivered in order: the repository's latency (an object store's round trip)
/// and the decompression and hashing of one chunk overlap with the others instead of adding up.
const CHUNKS_IN_FLIGHT: usize = 8;

/// A file's chunks, fetched [`CHUNKS_IN_FLIGHT`] at a time and each checked against its hash, in file order.
fn chunk_stream(
    repo: Repository,
    instance: String,
    chunks: Vec<ChunkRef>,
) -> BoxStream<'static, Result<Bytes, ExportError>> {
    futures::stream::iter(chunks)
        .map(move |c| {
            let repo = repo.clone();
            let instance = instance.clone();
            async move {
                repo.get_chunk(&instance, &c)
                    .await
                    .map_err(ExportError::from)
            }
        })
        .buffered(CHUNKS_IN_FLIGHT)
        .boxed()
}

/// Where a tar entry's data is padded to.
const TAR_BLOCK: u64 = 512;

/// The data files of a Physical or Snapshot backup as one ustar stream (`<db>.sqlite` entries, mode 0644, the
/// backup's time), assembled while it is read, and its exact length. Snapshot chunks are checked against their
/// hashes as they are fetched (a mismatch ends the stream with an error, so the client sees a failed download,
/// never a wrong file); Physical files are sent as stored (`ddsvault verify` re-checks them).
///
/// # Errors
/// Repository errors, or a manifest that lists no data file.
pub async fn tar_stream(
    repo: &Repository,
    prefix: &RepoPath,
    manifest: &Manifest,
) -> Result<(u64, BoxStream<'static, Result<Bytes, ExportError>>), ExportError> {
    let planned = plan(repo, prefix, manifest).await?;
    let mtime = u64::try_from(manifest.created_at.timestamp()).unwrap_or(0);
    let mut length = 2 * TAR_BLOCK;
    let mut parts = Vec::with_capacity(planned.len());
    for f in planned {
        let mut header = tar::Header::new_ustar();
        header
            .set_path(&f.name)
            .map_err(|e| ExportError::Manifest(format!("tar entry {}: {e}", f.name)))?;
        header.set_size(f.size);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let pad = (TAR_BLOCK - f.size % TAR_BLOCK) % TAR_BLOCK;
        length += TAR_BLOCK + f.size + pad;
        parts.push((Bytes::copy_from_slice(header.as_bytes()), f, pad));
    }
    let repo = repo.clone();
    let instance = manifest.instance_id.clone();
    let files = futures::stream::iter(parts)
        .then(move |(header, f, pad)| {
            let repo = repo.clone();
            let instance = instance.clone();
            async move {
                let data: BoxStream<'static, Result<Bytes, ExportError>> = match f.source {
                    Source::Object(path) => {
                        let (_, stream) = repo.get_stream(&path).await?;
                        stream.map_err(ExportError::from).boxed()
                    }
                    Source::Chunks(chunks) => chunk_stream(repo, instance, chunks),
                };
                let padding = Bytes::from(vec![0u8; usize::try_from(pad).unwrap_or(0)]);
                Ok::<_, ExportError>(
                    futures::stream::once(async move { Ok(header) })
                        .chain(data)
                        .chain(futures::stream::once(async move { Ok(padding) })),
                )
            }
        })
        .try_flatten();
    let end = futures::stream::once(async { Ok(Bytes::from(vec![0u8; 2 * TAR_BLOCK as usize])) });
    Ok((length, files.chain(end).boxed()))
}

/// The sum of the file sizes a backup restores, for progress.
pub async fn restore_size(
    repo: &Repository,
    prefix: &RepoPath,
    manifest: &Manifest,
) -> Result<u64, ExportError> {
    Ok(plan(repo, prefix, manifest)
        .await?
        .iter()
        .map(|p| p.size)
        .sum())
}

/// Writes every data file of a Physical or Snapshot backup into the existing directory `dir`, each checked
/// against the manifest (size and SHA-256; snapshot chunks one by one as well) before it gets its final name.
/// `done` counts the bytes written so far. Reading, hashing and writing run on a blocking thread.
///
/// # Errors
/// Repository errors, a mismatch, I/O errors, cancellation. The files written so far are removed.
pub async fn materialize(
    repo: &Repository,
    prefix: &RepoPath,
    manifest: &Manifest,
    dir: &Path,
    cancel: &CancellationToken,
    done: Arc<AtomicU64>,
) -> Result<Materialized, ExportError> {
    let planned = plan(repo, prefix, manifest).await?;
    let repo = repo.clone();
    let instance = manifest.instance_id.clone();
    let dir = dir.to_path_buf();
    let cancel = cancel.clone();
    let handle = Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut written = Vec::new();
        let result = write_files(
            &handle,
            &repo,
            &instance,
            &planned,
            &dir,
            &cancel,
            &done,
            &mut written,
        );
        if result.is_err() {
            for p in &written {
                let _ = std::fs::remove_file(p);
            }
        }
        result
    })
    .await
    .map_err(|e| ExportError::Task(e.to_string()))?
}

#[allow(clippy::too_many_arguments)]
fn write_files(
    handle: &Handle,
    repo: &Repository,
    instance: &str,
    planned: &[Planned],
    dir: &Path,
    cancel: &CancellationToken,
    done: &AtomicU64,
    written: &mut Vec<PathBuf>,
) -> Result<Materialized, ExportError> {
    let cancelled = || ExportError::Cancelled;
    let mut files = Vec::with_capacity(planned.len());
    let mut bytes = 0u64;
    for f in planned {
        let mut out = FileOut::create(dir, &f.name, written)?;
        match &f.source {
            Source::Chunks(chunks) => {
                let mut fetched = chunk_stream(repo.clone(), instance.to_string(), chunks.clone());
                while let Some(data) = handle.block_on(fetched.next()) {
                    if cancel.is_cancelled() {
                        return Err(cancelled());
                    }
                    let data = data?;
                    out.write(&data)?;
                    done.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Source::Object(path) => {
                let (_, mut stream) = handle.block_on(repo.get_stream(path))?;
                while let Some(chunk) = handle.block_on(stream.next()) {
                    if cancel.is_cancelled() {
                        return Err(cancelled());
                    }
                    let chunk = chunk?;
                    out.write(&chunk)?;
                    done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
        }
        bytes += out.finish(f.size, &f.sha256)?;
        files.push(f.name.clone());
    }
    sync_dir(dir)?;
    Ok(Materialized { files, bytes })
}

/// Makes renames and creations in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), ExportError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("sync", dir, e))
}

/// A data file being restored: written as `<name>.partial`, renamed once size and SHA-256 match.
struct FileOut {
    tmp: PathBuf,
    dest: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    hasher: Sha256,
    size: u64,
}

impl FileOut {
    fn create(dir: &Path, name: &str, written: &mut Vec<PathBuf>) -> Result<Self, ExportError> {
        let dest = dir.join(name);
        let tmp = dir.join(format!("{name}.partial"));
        let file = std::fs::File::create_new(&tmp).map_err(|e| io_err("create", &tmp, e))?;
        written.push(tmp.clone());
        written.push(dest.clone());
        Ok(Self {
            tmp,
            dest,
            file: std::io::BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<(), ExportError> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.file
            .write_all(data)
            .map_err(|e| io_err("write", &self.tmp, e))
    }

    fn finish(self, size: u64, sha256: &str) -> Result<u64, ExportError> {
        let Self {
            tmp,
            dest,
            file,
            hasher,
            size: got,
        } = self;
        let file = file
            .into_inner()
            .map_err(|e| io_err("write", &tmp, e.into_error()))?;
        file.sync_all().map_err(|e| io_err("write", &tmp, e))?;
        let digest = hex::encode(hasher.finalize());
        if got != size || digest != sha256 {
            return Err(ExportError::Mismatch(format!(
                "data file {} does not match the manifest: expected {size} bytes sha256 {sha256}, got {got} bytes sha256 {digest}",
                dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            )));
        }
        std::fs::rename(&tmp, &dest).map_err(|e| io_err("rename to", &dest, e))?;
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddsvault_catalog::BackupMethod;

    fn physical_manifest(id: i64, instance: &str, files: Vec<crate::ManifestFile>) -> Manifest {
        let mut m = Manifest::new(id, instance, BackupMethod::Physical.as_str());
        m.files = files;
        m.extra = serde_json::json!({});
        m
    }

    #[tokio::test]
    async fn a_physical_backup_downloads_as_a_tar_of_its_files() {
        let repo = Repository::memory();
        let prefix = Repository::backup_prefix("dds-t", 9);
        let files = [("a.sqlite", vec![7u8; 1000]), ("b.sqlite", vec![9u8; 512])];
        let mut listed = Vec::new();
        for (name, body) in &files {
            let rel = format!("{FILES_DIR}/{name}");
            repo.put(&prefix.join(&rel).expect("path"), Bytes::from(body.clone()))
                .await
                .expect("put");
            listed.push(crate::ManifestFile {
                name: rel,
                size: body.len() as u64,
                sha256: hex::encode(Sha256::digest(body)),
            });
        }
        let manifest = physical_manifest(9, "dds-t", listed);
        let (length, stream) = tar_stream(&repo, &prefix, &manifest).await.expect("tar");
        let bytes: Vec<Bytes> = stream.try_collect().await.expect("stream");
        let tar: Vec<u8> = bytes.concat();
        assert_eq!(tar.len() as u64, length);
        // 512 + 1024 (1000 padded) + 512 + 512 + two end blocks.
        assert_eq!(length, 512 + 1024 + 512 + 512 + 1024);
        let mut archive = tar::Archive::new(std::io::Cursor::new(tar));
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").display().to_string();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut body).expect("read");
            seen.push((name, body));
        }
        let want: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|(n, b)| (n.to_string(), b.clone()))
            .collect();
        assert_eq!(seen, want);
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn materialize_checks_every_file_and_removes_what_it_wrote_on_a_mismatch() {
        let repo = Repository::memory();
        let prefix = Repository::backup_prefix("dds-m", 3);
        let body = b"database bytes".to_vec();
        repo.put(
            &prefix.join("files/shop.sqlite").expect("path"),
            bytes::Bytes::from(body.clone()),
        )
        .await
        .expect("put");
        let mut manifest = physical_manifest(
            3,
            "dds-m",
            vec![crate::ManifestFile {
                name: "files/shop.sqlite".into(),
                size: body.len() as u64,
                sha256: crate::sha256_hex(&body),
            }],
        );
        let out = tempfile::tempdir().expect("tempdir");
        let done = Arc::new(AtomicU64::new(0));
        let m = materialize(
            &repo,
            &prefix,
            &manifest,
            out.path(),
            &CancellationToken::new(),
            Arc::clone(&done),
        )
        .await
        .expect("materialize");
        assert_eq!(m.files, ["shop.sqlite"]);
        assert_eq!(m.bytes, body.len() as u64);
        assert_eq!(done.load(Ordering::Relaxed), body.len() as u64);
        assert_eq!(
            std::fs::read(out.path().join("shop.sqlite")).expect("read"),
            body
        );
        assert_eq!(
            restore_size(&repo, &prefix, &manifest).await.ok(),
            Some(body.len() as u64)
        );

        manifest.files[0].sha256 = crate::sha256_hex(b"something else");
        let again = tempfile::tempdir().expect("tempdir");
        let e = materialize(
            &repo,
            &prefix,
            &manifest,
            again.path(),
            &CancellationToken::new(),
            Arc::new(AtomicU64::new(0)),
        )
        .await
        .expect_err("mismatch");
        assert!(matches!(e, ExportError::Mismatch(_)), "{e}");
        assert!(e.to_string().contains("does not match the manifest"), "{e}");
        assert!(names(again.path()).is_empty(), "nothing left behind");
    }
}
