//! SQLite side of instances registered at run time (RegisterDBInstance; migration 0018).

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{from_ms, is_unique_violation, ms, SqliteCatalog, ACTIVE_JOB_SQL};
use crate::{BackupPolicy, CatalogError, RegisteredInstance};

const COLUMNS: &str = "id, uri, storage_type, data_path, node, description, created_at, updated_at";

fn row(r: &SqliteRow) -> Result<RegisteredInstance, CatalogError> {
    Ok(RegisteredInstance {
        id: r.try_get("id")?,
        uri: r.try_get("uri")?,
        storage_type: r.try_get("storage_type")?,
        data_path: r.try_get("data_path")?,
        node: r.try_get("node")?,
        description: r.try_get("description")?,
        created_at: from_ms(r.try_get("created_at")?)?,
        updated_at: from_ms(r.try_get("updated_at")?)?,
    })
}

impl SqliteCatalog {
    pub(super) async fn create_registered_impl(
        &self,
        inst: &RegisteredInstance,
        policy: Option<&BackupPolicy>,
    ) -> Result<(), CatalogError> {
        let policy_text = policy
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| CatalogError::Corrupt(format!("encode backup policy: {e}")))?;
        let mut tx = self.write.begin().await?;
        // A provisioned instance's id is taken as long as its row exists (DeleteDBInstance frees it).
        let provisioned: Option<String> =
            sqlx::query_scalar("SELECT id FROM provisioned_instances WHERE id = ?")
                .bind(&inst.id)
                .fetch_optional(&mut *tx)
                .await?;
        if provisioned.is_some() {
            return Err(CatalogError::AlreadyExists(format!(
                "provisioned instance {}",
                inst.id
            )));
        }
        let inserted = sqlx::query(&format!(
            "INSERT INTO registered_instances ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&inst.id)
        .bind(&inst.uri)
        .bind(&inst.storage_type)
        .bind(&inst.data_path)
        .bind(&inst.node)
        .bind(&inst.description)
        .bind(ms(inst.created_at))
        .bind(ms(inst.updated_at))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(CatalogError::AlreadyExists(format!(
                    "registered instance {}",
                    inst.id
                )))
            }
            Err(e) => return Err(e.into()),
        }
        sqlx::query(
            "INSERT INTO instances (id, created_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&inst.id)
        .bind(ms(inst.created_at))
        .execute(&mut *tx)
        .await?;
        if let Some(text) = policy_text {
            sqlx::query(
                "INSERT INTO backup_policies (instance_id, policy, updated_at) VALUES (?, ?, ?) \
                 ON CONFLICT (instance_id) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
            )
            .bind(&inst.id)
            .bind(text)
            .bind(ms(inst.created_at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn update_registered_impl(
        &self,
        inst: &RegisteredInstance,
    ) -> Result<(), CatalogError> {
        let done = sqlx::query(
            "UPDATE registered_instances SET uri = ?, storage_type = ?, data_path = ?, node = ?, description = ?, \
             updated_at = ? WHERE id = ?",
        )
        .bind(&inst.uri)
        .bind(&inst.storage_type)
        .bind(&inst.data_path)
        .bind(&inst.node)
        .bind(&inst.description)
        .bind(ms(inst.updated_at))
        .bind(&inst.id)
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 0 {
            return Err(CatalogError::NotFound(format!(
                "registered instance {}",
                inst.id
            )));
        }
        Ok(())
    }

    pub(super) async fn get_registered_impl(
        &self,
        id: &str,
    ) -> Result<Option<RegisteredInstance>, CatalogError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM registered_instances WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(row)
        .transpose()
    }

    pub(super) async fn list_registered_impl(
        &self,
    ) -> Result<Vec<RegisteredInstance>, CatalogError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM registered_instances ORDER BY id"
        ))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(row)
        .collect()
    }

    pub(super) async fn delete_registered_impl(&self, id: &str) -> Result<bool, CatalogError> {
        let mut tx = self.write.begin().await?;
        // Checked inside the transaction: no job can be created for the instance between the look and the delete
        // (SQLite has one writer; the job insert waits for this transaction).
        if let Some(r) = sqlx::query(ACTIVE_JOB_SQL)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        {
            return Err(CatalogError::ActiveJobExists {
                job_id: r.try_get("id")?,
                kind: crate::JobKind::parse(r.try_get("kind")?),
            });
        }
        let done = sqlx::query("DELETE FROM registered_instances WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }
}
