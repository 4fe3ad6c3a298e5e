//! PostgreSQL side of several processes on one catalog (issue 19, migration 0019): the shared nonce store, node rows and
//! handing a claimed job back.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{from_ms, ms, query, PgCatalog};
use crate::{CatalogError, NodeRecord};

const NODE_COLUMNS: &str = "id, hostname, api, started_at, last_seen, running_jobs, draining";

impl PgCatalog {
    pub(super) async fn record_nonce_impl(
        &self,
        access_key_id: &str,
        nonce: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        // One statement decides: a new pair is inserted, an expired one (not swept yet) is taken over, a live one
        // changes nothing (no row affected). The primary key makes racing processes wait for each other on the same pair.
        let done = query(
            "INSERT INTO request_nonces (access_key_id, nonce, expires_at) VALUES (?, ?, ?) \
             ON CONFLICT (access_key_id, nonce) DO UPDATE SET expires_at = excluded.expires_at \
             WHERE request_nonces.expires_at <= ?",
        )
        .bind(access_key_id)
        .bind(nonce)
        .bind(ms(expires_at))
        .bind(ms(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn sweep_nonces_impl(&self, now: DateTime<Utc>) -> Result<u64, CatalogError> {
        let done = query("DELETE FROM request_nonces WHERE expires_at <= ?")
            .bind(ms(now))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    pub(super) async fn put_node_impl(&self, node: &NodeRecord) -> Result<(), CatalogError> {
        query(
            "INSERT INTO nodes (id, hostname, api, started_at, last_seen, running_jobs, draining) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, \
             api = excluded.api, started_at = excluded.started_at, last_seen = excluded.last_seen, \
             running_jobs = excluded.running_jobs, draining = excluded.draining",
        )
        .bind(&node.id)
        .bind(&node.hostname)
        .bind(&node.api)
        .bind(ms(node.started_at))
        .bind(ms(node.last_seen))
        .bind(node.running_jobs)
        .bind(node.draining)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn list_nodes_impl(&self) -> Result<Vec<NodeRecord>, CatalogError> {
        let rows = query(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(NodeRecord {
                    id: r.try_get("id")?,
                    hostname: r.try_get("hostname")?,
                    api: r.try_get("api")?,
                    started_at: from_ms(r.try_get("started_at")?)?,
                    last_seen: from_ms(r.try_get("last_seen")?)?,
                    running_jobs: r.try_get("running_jobs")?,
                    draining: r.try_get("draining")?,
                })
            })
            .collect()
    }

    pub(super) async fn release_job_impl(
        &self,
        job_id: i64,
        owner: &str,
    ) -> Result<bool, CatalogError> {
        let done = query(
            "UPDATE jobs SET state = 'Pending', owner = NULL, started_at = NULL, heartbeat_at = NULL, lease_until = NULL \
             WHERE id = ? AND owner = ? AND state = 'Running'",
        )
        .bind(job_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
