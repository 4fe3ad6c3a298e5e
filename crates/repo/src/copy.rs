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
        let upload = dst
            .store
            .put_multipart(&location)
            .await
            .map_err(|e| RepoError::from_store(path, e))?;
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
                writer
                    .finish()
                    .await
                    .map_err(|e| RepoError::from_store(path, e))?;
                Ok(size)
            }
            Err(e) => {
                // Aborting releases the parts; its own failure is left to the upload journal's sweep.
                let _ = writer.abort().await;
                Err(RepoError::from_store(path, e))
            }
        }
    }
}
