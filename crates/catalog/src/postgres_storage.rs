//! PostgreSQL side of the recorded repository usage (migration 0015, [`crate::storage`]); mirrors
//! sqlite_storage.rs statement for statement.

use sqlx::{Postgres, Transaction};

use super::{query, query_scalar, PgCatalog};
use crate::{Backup, BackupStorage, CatalogError, ChunkUsage, StorageUsage};

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Records `usage` for `backup_id` of `instance_id` inside `tx`. A backup already recorded keeps its row; a
/// chunk already counted takes the size measured now (a snapshot may have rewritten a damaged one).
pub(super) async fn record_in(
    tx: &mut Transaction<'static, Postgres>,
    backup_id: i64,
    instance_id: &str,
    usage: &BackupStorage,
) -> Result<bool, CatalogError> {
    let done = query(
        "INSERT INTO backup_storage (backup_id, instance_id, stored_bytes) VALUES (?, ?, ?) \
         ON CONFLICT (backup_id) DO NOTHING",
    )
    .bind(backup_id)
    .bind(instance_id)
    .bind(i64_of(usage.stored_bytes))
    .execute(&mut **tx)
    .await?;
    add_chunks_in(tx, instance_id, &usage.chunks).await?;
    Ok(done.rows_affected() == 1)
}

async fn add_chunks_in(
    tx: &mut Transaction<'static, Postgres>,
    instance_id: &str,
    chunks: &[ChunkUsage],
) -> Result<(), CatalogError> {
    for c in chunks {
        query(
            "INSERT INTO instance_chunks (instance_id, digest, size) VALUES (?, ?, ?) \
             ON CONFLICT (instance_id, digest) DO UPDATE SET size = excluded.size",
        )
        .bind(instance_id)
        .bind(&c.digest)
        .bind(i64_of(c.size))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl PgCatalog {
    pub(super) async fn record_backup_storage_impl(
        &self,
        backup_id: i64,
        usage: &BackupStorage,
    ) -> Result<bool, CatalogError> {
        let mut tx = self.begin().await?;
        let instance: Option<String> =
            query_scalar("SELECT instance_id FROM backups WHERE id = ? AND status = 'Success'")
                .bind(backup_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(instance) = instance else {
            return Ok(false);
        };
        let recorded = record_in(&mut tx, backup_id, &instance, usage).await?;
        tx.commit().await?;
        Ok(recorded)
    }

    pub(super) async fn backups_without_storage_impl(
        &self,
        limit: u32,
    ) -> Result<Vec<Backup>, CatalogError> {
        let rows = query(&format!(
            "SELECT {} FROM backups WHERE status = 'Success' \
             AND NOT EXISTS (SELECT 1 FROM backup_storage s WHERE s.backup_id = backups.id) \
             ORDER BY id LIMIT ?",
            super::BACKUP_COLUMNS
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(super::backup_from_row).collect()
    }

    pub(super) async fn add_instance_chunks_impl(
        &self,
        instance_id: &str,
        chunks: &[ChunkUsage],
    ) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        add_chunks_in(&mut tx, instance_id, chunks).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn forget_instance_chunks_impl(
        &self,
        instance_id: &str,
        digests: &[String],
    ) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        for d in digests {
            query("DELETE FROM instance_chunks WHERE instance_id = ? AND digest = ?")
                .bind(instance_id)
                .bind(d)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn storage_usage_impl(
        &self,
        instance_id: &str,
    ) -> Result<StorageUsage, CatalogError> {
        // SUM over BIGINT is NUMERIC in PostgreSQL: cast back so it decodes as i64.
        let backup_bytes: i64 = query_scalar(
            "SELECT CAST(COALESCE(SUM(s.stored_bytes), 0) AS BIGINT) FROM backup_storage s \
             JOIN backups b ON b.id = s.backup_id \
             WHERE s.instance_id = ? AND b.status = 'Success'",
        )
        .bind(instance_id)
        .fetch_one(&self.pool)
        .await?;
        let chunk_bytes: i64 = query_scalar(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM instance_chunks WHERE instance_id = ?",
        )
        .bind(instance_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(StorageUsage {
            backup_bytes: u64_of(backup_bytes),
            chunk_bytes: u64_of(chunk_bytes),
        })
    }
}
