//! PostgreSQL side of the continuous log backup (mirrors sqlite_logs.rs): the follower claim and the slice index (migration 0013).

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::{from_ms, ms, query, query_as, query_scalar, PgCatalog};
use crate::{CatalogError, LogSlice, NewLogSlice};

const SLICE_COLUMNS: &str =
    "id, instance_id, start_excl, end_incl, first_ts, last_ts, entries, size, sha256, \
     path, gap, created_at";

fn slice_row(r: &PgRow) -> Result<LogSlice, CatalogError> {
    Ok(LogSlice {
        id: r.try_get("id")?,
        instance_id: r.try_get("instance_id")?,
        start_excl: r.try_get("start_excl")?,
        end_incl: r.try_get("end_incl")?,
        first_ts: r.try_get("first_ts")?,
        last_ts: r.try_get("last_ts")?,
        entries: r.try_get("entries")?,
        size: r.try_get("size")?,
        sha256: r.try_get("sha256")?,
        path: r.try_get("path")?,
        gap: r.try_get::<i64, _>("gap")? != 0,
        created_at: from_ms(r.try_get("created_at")?)?,
    })
}

impl PgCatalog {
    pub(super) async fn claim_log_follower_impl(
        &self,
        instance_id: &str,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        query(
            "INSERT INTO log_followers (instance_id, owner, lease_until) VALUES (?, ?, ?) \
             ON CONFLICT (instance_id) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until \
             WHERE log_followers.owner = excluded.owner OR log_followers.lease_until < ?",
        )
        .bind(instance_id)
        .bind(owner)
        .bind(ms(lease_until))
        .bind(ms(now))
        .execute(&self.pool)
        .await?;
        let holder: Option<String> =
            query_scalar("SELECT owner FROM log_followers WHERE instance_id = ?")
                .bind(instance_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(holder.as_deref() == Some(owner))
    }

    pub(super) async fn release_log_follower_impl(
        &self,
        instance_id: &str,
        owner: &str,
    ) -> Result<(), CatalogError> {
        query("DELETE FROM log_followers WHERE instance_id = ? AND owner = ?")
            .bind(instance_id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn add_log_slice_impl(
        &self,
        s: &NewLogSlice,
        owner: &str,
    ) -> Result<LogSlice, CatalogError> {
        let mut tx = self.begin().await?;
        let holder: Option<(String, i64)> =
            query_as("SELECT owner, lease_until FROM log_followers WHERE instance_id = ?")
                .bind(&s.instance_id)
                .fetch_optional(&mut *tx)
                .await?;
        match holder {
            Some((o, until)) if o == owner && until >= ms(s.now) => {}
            _ => {
                return Err(CatalogError::Conflict(format!(
                    "the log follower claim of instance {} is not held by {owner}",
                    s.instance_id
                )))
            }
        }
        let last: Option<i64> =
            query_scalar("SELECT MAX(end_incl) FROM log_slices WHERE instance_id = ?")
                .bind(&s.instance_id)
                .fetch_one(&mut *tx)
                .await?;
        let follows = match last {
            None => true,
            Some(l) => s.start_excl == l || (s.gap && s.start_excl > l),
        };
        if !follows || s.end_incl <= s.start_excl {
            return Err(CatalogError::Conflict(format!(
                "log slice ({}, {}] of instance {} does not follow the last stored slice (ending {last:?})",
                s.start_excl, s.end_incl, s.instance_id
            )));
        }
        let id: i64 = query_scalar(
            "INSERT INTO log_slices (instance_id, start_excl, end_incl, first_ts, last_ts, entries, size, sha256, \
             path, gap, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&s.instance_id)
        .bind(s.start_excl)
        .bind(s.end_incl)
        .bind(s.first_ts)
        .bind(s.last_ts)
        .bind(s.entries)
        .bind(s.size)
        .bind(&s.sha256)
        .bind(&s.path)
        .bind(i64::from(s.gap))
        .bind(ms(s.now))
        .fetch_one(&mut *tx)
        .await?;
        let row = query(&format!(
            "SELECT {SLICE_COLUMNS} FROM log_slices WHERE id = ?"
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let slice = slice_row(&row)?;
        tx.commit().await?;
        Ok(slice)
    }

    pub(super) async fn list_log_slices_impl(
        &self,
        instance_id: &str,
    ) -> Result<Vec<LogSlice>, CatalogError> {
        let rows = query(&format!(
            "SELECT {SLICE_COLUMNS} FROM log_slices WHERE instance_id = ? ORDER BY end_incl"
        ))
        .bind(instance_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(slice_row).collect()
    }

    pub(super) async fn delete_log_slice_impl(&self, id: i64) -> Result<(), CatalogError> {
        query("DELETE FROM log_slices WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
