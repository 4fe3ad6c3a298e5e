//! Copying a committed backup into another repository (a second bucket or directory: `[[repository.copies]]`).

use std::collections::BTreeSet;

use futures::StreamExt;
use object_store::WriteMultipart;

use crate::{chunks::chunk_path, RepoError, RepoPath, Repository};

impl Repository {
    /// Copies the committed backup under `prefix` into `dst` under the same keys: every file its manifest lists,
    /// then for a snapshot every chunk its index names that `dst` does not hold with the same size yet (chunks
    /// are shared), then the manifest's exact bytes last, so the copy becomes visible only when complete and
    /// its manifest hashes to what the catalog recorded. Returns the bytes copied. Files are streamed (one
    /// multipart upload each, bounded by `dst`'s part size and parts in flight).
    ///
    /// # Errors
    /// [`RepoError::NotFound`] if the backup has no manifest, or the store errors. A failed copy may leave files
    /// but no manifest in `dst` (invisible; the caller deletes the prefix when it gives up).
    pub async fn copy_backup_to(
        &self,
        dst: &Repository,
        prefix: &RepoPath,
        instance_id: &str,
    ) -> Result<u64, RepoError> {
        let manifest_path = Self::manifest_path(prefix);
        let manifest_bytes = self.get(&manifest_path).await?;
        let Some(manifest) = self.read_manifest(prefix).await? else {
            return Err(RepoError::NotFound {
                path: manifest_path.to_string(),
            });
        };
        let mut copied = 0;
        for f in &manifest.files {
            copied += self.copy_object(dst, &prefix.join(&f.name)?).await?;
        }
        if let Some(index) = self.read_snapshot_index(prefix, &manifest).await? {
            let digests: BTreeSet<String> = index
                .files
                .into_iter()
                .flat_map(|f| f.chunks.into_iter().map(|c| c.sha256))
                .collect();
            for d in digests {
                let path = chunk_path(instance_id, &d)?;
                let src = self.head(&path).await?;
                match dst.head(&path).await {
                    Ok(have) if have.size == src.size => continue,
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
                copied += self.copy_object(dst, &path).await?;
            }
        }
        copied += manifest_bytes.len() as u64;
        dst.put(&manifest_path, manifest_bytes).await?;
        Ok(copied)
    }

    /// Streams one object into `dst` at the same key.
    async fn copy_object(&self, dst: &Repository, path: &RepoPath) -> Result<u64, RepoError> {
        let location = path.to_location()?;
        let source = self
            .store
            .get(&location)
            .await
            .map_err(|e| RepoError::from_store(path, e))?;
        // Errors of the destination name it and keep the server's answer (a missing bucket is a 404 too, which
        // `from_store` would report as a missing object).
        let dst_error = |e: object_store::Error| RepoError::Unusable {
            repository: dst.store.to_string(),
            reason: format!("writing {path}: {}", crate::error::describe(&e)),
        };
        let upload = dst
            .store
            .put_multipart(&location)
            .await
            .map_err(dst_error)?;
        let tuning = dst.upload_tuning;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, tuning.part_size);
        let mut stream = source.into_stream();
        let mut size = 0u64;
        let outcome: Result<(), object_store::Error> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                writer
                    .wait_for_capacity(tuning.max_in_flight_parts.max(1))
                    .await?;
                size += chunk.len() as u64;
                writer.write(&chunk);
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => {
                writer.finish().await.map_err(dst_error)?;
                Ok(size)
            }
            Err(e) => {
                // Aborting releases the parts; its own failure is left to the upload journal's sweep.
                let _ = writer.abort().await;
                Err(RepoError::Store(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::{
        sha256_hex, ChunkRef, Manifest, ManifestFile, Repository, SnapshotFile, SnapshotIndex,
    };

    /// A snapshot of one file made of two chunks, committed in `repo`.
    async fn snapshot(repo: &Repository, id: i64, chunks: &[&'static [u8]]) -> crate::RepoPath {
        let prefix = Repository::backup_prefix("dds-c", id);
        let mut file = SnapshotFile {
            name: "data.db".into(),
            size: 0,
            sha256: String::new(),
            chunks: Vec::new(),
        };
        let mut whole = Vec::new();
        for c in chunks {
            let digest = sha256_hex(c);
            repo.put_chunk("dds-c", &digest, Bytes::from_static(c), 3)
                .await
                .expect("chunk");
            file.chunks.push(ChunkRef::new(digest, c.len() as u64));
            whole.extend_from_slice(c);
        }
        file.size = whole.len() as u64;
        file.sha256 = sha256_hex(&whole);
        let index = SnapshotIndex { files: vec![file] };
        let entry = repo
            .write_snapshot_index(&prefix, &index, 3)
            .await
            .expect("index");
        let mut m = Manifest::new(
            id,
            "dds-c",
            ddsvault_catalog::BackupMethod::Snapshot.as_str(),
        );
        m.files.push(entry);
        let extra = Bytes::from_static(b"metadata");
        repo.put(&prefix.join("meta.json").expect("path"), extra.clone())
            .await
            .expect("put");
        m.files.push(ManifestFile {
            name: "meta.json".into(),
            size: extra.len() as u64,
            sha256: sha256_hex(&extra),
        });
        repo.write_manifest(&prefix, &m).await.expect("manifest");
        prefix
    }

    #[tokio::test]
    async fn a_copy_has_the_same_bytes_and_skips_chunks_the_destination_has() {
        let (src, dst) = (Repository::memory(), Repository::memory());
        let first = snapshot(&src, 1, &[b"chunk one", b"chunk two"]).await;
        let copied = src
            .copy_backup_to(&dst, &first, "dds-c")
            .await
            .expect("copy");
        let second = snapshot(&src, 2, &[b"chunk one", b"chunk three"]).await;
        let copied2 = src
            .copy_backup_to(&dst, &second, "dds-c")
            .await
            .expect("copy");
        for prefix in [&first, &second] {
            let manifest = Repository::manifest_path(prefix);
            assert_eq!(
                src.get(&manifest).await.expect("src"),
                dst.get(&manifest).await.expect("dst")
            );
            let m = dst.verify(prefix).await.expect("verifies");
            let index = dst
                .read_snapshot_index(prefix, &m)
                .await
                .expect("index")
                .expect("snapshot");
            for c in &index.files[0].chunks {
                dst.get_chunk("dds-c", c).await.expect("chunk copied");
            }
        }
        // "chunk one" was in the destination already: the second copy moved its prefix's objects and only
        // "chunk three".
        let prefix_bytes: u64 = src
            .list(&second)
            .await
            .expect("list")
            .iter()
            .map(|o| o.size)
            .sum();
        let three = crate::chunks::chunk_path("dds-c", &sha256_hex(b"chunk three")).expect("path");
        let three_size = src.head(&three).await.expect("head").size;
        assert_eq!(copied2, prefix_bytes + three_size);
        assert_eq!(
            dst.list(&crate::chunks::chunks_prefix("dds-c"))
                .await
                .expect("list")
                .len(),
            3
        );
        assert!(copied > copied2);
        // A backup without a manifest is not copied.
        let missing = Repository::backup_prefix("dds-c", 9);
        assert!(src
            .copy_backup_to(&dst, &missing, "dds-c")
            .await
            .expect_err("no manifest")
            .is_not_found());
    }
}
