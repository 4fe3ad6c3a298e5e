//! PostgreSQL side of provisioned instances (CreateDBInstance; migration 0016); mirrors sqlite_provision.rs.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::{from_ms, is_unique_violation, job_from_row, ms, query, PgCatalog, JOB_COLUMNS};
use crate::{
    CatalogError, Job, NewJob, NewProvisionedInstance, ProvisionStatus, ProvisionedInstance,
};

const COLUMNS: &str =
    "id, port, dir, status, source_instance_id, backup_id, restore_time, description, job_id, \
     error, created_at, updated_at";

fn row(r: &PgRow) -> Result<ProvisionedInstance, CatalogError> {
    let status: String = r.try_get("status")?;
    let port: i64 = r.try_get("port")?;
    Ok(ProvisionedInstance {
        id: r.try_get("id")?,
        port: u16::try_from(port)
            .map_err(|_| CatalogError::Corrupt(format!("provisioned instance port {port}")))?,
        dir: r.try_get("dir")?,
        status: ProvisionStatus::parse(&status).ok_or_else(|| {
            CatalogError::Corrupt(format!("provisioned instance status {status:?}"))
        })?,
        source_instance_id: r.try_get("source_instance_id")?,
        backup_id: r.try_get("backup_id")?,
        restore_time: r.try_get("restore_time")?,
        description: r.try_get("description")?,
        job_id: r.try_get("job_id")?,
        error: r.try_get("error")?,
        created_at: from_ms(r.try_get("created_at")?)?,
        updated_at: from_ms(r.try_get("updated_at")?)?,
    })
}

impl PgCatalog {
    pub(super) async fn create_provisioned_impl(
        &self,
        new: &NewProvisionedInstance,
        job: &NewJob,
    ) -> Result<(ProvisionedInstance, Job), CatalogError> {
        let mut tx = self.begin().await?;
        let inserted = query(
            "INSERT INTO provisioned_instances (id, port, dir, status, source_instance_id, backup_id, restore_time, \
             description, created_at, updated_at) VALUES (?, ?, ?, 'Creating', ?, ?, ?, ?, ?, ?)",
        )
        .bind(&new.id)
        .bind(i64::from(new.port))
        .bind(&new.dir)
        .bind(&new.source_instance_id)
        .bind(new.backup_id)
        .bind(new.restore_time)
        .bind(&new.description)
        .bind(ms(new.now))
        .bind(ms(new.now))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(CatalogError::AlreadyExists(format!(
                    "provisioned instance {} or port {}",
                    new.id, new.port
                )))
            }
            Err(e) => return Err(e.into()),
        }
        query("INSERT INTO instances (id, created_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING")
            .bind(&new.id)
            .bind(ms(new.now))
            .execute(&mut *tx)
            .await?;
        let job_row = query(&format!(
            "INSERT INTO jobs (kind, instance_id, backup_id, state, mode, params, created_at) \
             VALUES (?, ?, ?, 'Pending', ?, ?, ?) RETURNING {JOB_COLUMNS}"
        ))
        .bind(job.kind.as_str())
        .bind(&job.instance_id)
        .bind(job.backup_id)
        .bind(&job.mode)
        .bind(job.params.to_string())
        .bind(ms(job.now))
        .fetch_one(&mut *tx)
        .await?;
        let created = job_from_row(&job_row)?;
        query("UPDATE provisioned_instances SET job_id = ? WHERE id = ?")
            .bind(created.id)
            .bind(&new.id)
            .execute(&mut *tx)
            .await?;
        let r = query(&format!(
            "SELECT {COLUMNS} FROM provisioned_instances WHERE id = ?"
        ))
        .bind(&new.id)
        .fetch_one(&mut *tx)
        .await?;
        let inst = row(&r)?;
        tx.commit().await?;
        Ok((inst, created))
    }

    pub(super) async fn get_provisioned_impl(
        &self,
        id: &str,
    ) -> Result<Option<ProvisionedInstance>, CatalogError> {
        query(&format!(
            "SELECT {COLUMNS} FROM provisioned_instances WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(row)
        .transpose()
    }

    pub(super) async fn list_provisioned_impl(
        &self,
    ) -> Result<Vec<ProvisionedInstance>, CatalogError> {
        query(&format!(
            "SELECT {COLUMNS} FROM provisioned_instances ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(row)
        .collect()
    }

    pub(super) async fn set_provisioned_status_impl(
        &self,
        id: &str,
        status: ProvisionStatus,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        let done = query(
            "UPDATE provisioned_instances SET status = ?, error = ?, updated_at = ? WHERE id = ?",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(ms(now))
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(CatalogError::NotFound(format!("provisioned instance {id}")));
        }
        Ok(())
    }

    pub(super) async fn delete_provisioned_impl(&self, id: &str) -> Result<bool, CatalogError> {
        let done = query("DELETE FROM provisioned_instances WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
