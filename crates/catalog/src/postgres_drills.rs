//! PostgreSQL side of restore drills (docs/drills.md; migration 0020); mirrors sqlite_drills.rs.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::{
    from_ms, is_unique_violation, job_from_row, ms, query, PgCatalog, ACTIVE_JOB_SQL, JOB_COLUMNS,
};
use crate::{
    CatalogError, DrillFilter, DrillPolicy, DrillResult, NewJob, NewRestoreDrill, RestoreDrill,
    ScheduledDrill, SCHEDULE_DRILL,
};

const COLUMNS: &str =
    "id, instance_id, backup_id, target, job_id, started_at, finished_at, duration_ms, result, \
                       checksums, detail";

fn drill(r: &PgRow) -> Result<RestoreDrill, CatalogError> {
    let result: String = r.try_get("result")?;
    let detail: String = r.try_get("detail")?;
    Ok(RestoreDrill {
        id: r.try_get("id")?,
        instance_id: r.try_get("instance_id")?,
        backup_id: r.try_get("backup_id")?,
        target: r.try_get("target")?,
        job_id: r.try_get("job_id")?,
        started_at: from_ms(r.try_get("started_at")?)?,
        finished_at: from_ms(r.try_get("finished_at")?)?,
        duration_ms: r.try_get("duration_ms")?,
        result: DrillResult::parse(&result)
            .ok_or_else(|| CatalogError::Corrupt(format!("restore drill result {result:?}")))?,
        checksums: r.try_get::<i64, _>("checksums")? != 0,
        detail: serde_json::from_str(&detail)
            .map_err(|e| CatalogError::Corrupt(format!("restore drill detail: {e}")))?,
    })
}

fn policy(r: &PgRow) -> Result<DrillPolicy, CatalogError> {
    Ok(DrillPolicy {
        instance_id: r.try_get("instance_id")?,
        period: r.try_get("period")?,
        window: r.try_get("drill_window")?,
        target: r.try_get("target")?,
        updated_at: from_ms(r.try_get("updated_at")?)?,
    })
}

impl PgCatalog {
    pub(super) async fn get_drill_policy_impl(
        &self,
        instance_id: &str,
    ) -> Result<Option<DrillPolicy>, CatalogError> {
        query(
            "SELECT instance_id, period, drill_window, target, updated_at FROM restore_drill_policies \
             WHERE instance_id = ?",
        )
        .bind(instance_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(policy)
        .transpose()
    }

    pub(super) async fn put_drill_policy_impl(&self, p: &DrillPolicy) -> Result<(), CatalogError> {
        query(
            "INSERT INTO restore_drill_policies (instance_id, period, drill_window, target, updated_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (instance_id) DO UPDATE SET period = excluded.period, \
             drill_window = excluded.drill_window, target = excluded.target, updated_at = excluded.updated_at",
        )
        .bind(&p.instance_id)
        .bind(&p.period)
        .bind(&p.window)
        .bind(&p.target)
        .bind(ms(p.updated_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn list_drill_policies_impl(&self) -> Result<Vec<DrillPolicy>, CatalogError> {
        query(
            "SELECT instance_id, period, drill_window, target, updated_at FROM restore_drill_policies \
             ORDER BY instance_id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(policy)
        .collect()
    }

    pub(super) async fn create_scheduled_drill_job_impl(
        &self,
        source: &str,
        slot_start: DateTime<Utc>,
        owner: &str,
        job: &NewJob,
    ) -> Result<ScheduledDrill, CatalogError> {
        let mut tx = self.begin().await?;
        let claimed = query(
            "INSERT INTO schedule_runs (instance_id, schedule, slot_start, owner, claimed_at, outcome) \
             VALUES (?, ?, ?, ?, ?, 'Created') ON CONFLICT (instance_id, schedule, slot_start) DO NOTHING",
        )
        .bind(source)
        .bind(SCHEDULE_DRILL)
        .bind(ms(slot_start))
        .bind(owner)
        .bind(ms(job.now))
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            return Ok(ScheduledDrill::AlreadyTaken);
        }
        // The scratch target's one-active-job index decides: a restore or another drill into it wins.
        let active = query(ACTIVE_JOB_SQL)
            .bind(&job.instance_id)
            .fetch_optional(&mut *tx)
            .await?;
        let outcome = if let Some(a) = active {
            let job_id: i64 = a.try_get("id")?;
            let kind = crate::model::decode_kind(a.try_get("kind")?)?;
            query(
                "UPDATE schedule_runs SET outcome = 'Skipped', job_id = ?, detail = ? \
                 WHERE instance_id = ? AND schedule = ? AND slot_start = ?",
            )
            .bind(job_id)
            .bind(format!(
                "a {kind} job ({job_id}) was active on {}",
                job.instance_id
            ))
            .bind(source)
            .bind(SCHEDULE_DRILL)
            .bind(ms(slot_start))
            .execute(&mut *tx)
            .await?;
            ScheduledDrill::Skipped { job_id, kind }
        } else {
            let inserted = query(&format!(
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
            .await;
            let created = match inserted {
                Ok(row) => job_from_row(&row)?,
                Err(e) if is_unique_violation(&e) => {
                    return Err(CatalogError::ActiveJobExists {
                        job_id: 0,
                        kind: None,
                    })
                }
                Err(e) => return Err(e.into()),
            };
            query(
                "UPDATE schedule_runs SET job_id = ? WHERE instance_id = ? AND schedule = ? AND slot_start = ?",
            )
            .bind(created.id)
            .bind(source)
            .bind(SCHEDULE_DRILL)
            .bind(ms(slot_start))
            .execute(&mut *tx)
            .await?;
            ScheduledDrill::Created(Box::new(created))
        };
        tx.commit().await?;
        Ok(outcome)
    }

    pub(super) async fn record_restore_drill_impl(
        &self,
        d: &NewRestoreDrill,
    ) -> Result<RestoreDrill, CatalogError> {
        let duration_ms = (d.finished_at - d.started_at).num_milliseconds().max(0);
        let row = query(&format!(
            "INSERT INTO restore_drills (instance_id, backup_id, target, job_id, started_at, finished_at, \
             duration_ms, result, checksums, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {COLUMNS}"
        ))
        .bind(&d.instance_id)
        .bind(d.backup_id)
        .bind(&d.target)
        .bind(d.job_id)
        .bind(ms(d.started_at))
        .bind(ms(d.finished_at))
        .bind(duration_ms)
        .bind(d.result.as_str())
        .bind(i64::from(d.checksums))
        .bind(d.detail.to_string())
        .fetch_one(&self.pool)
        .await?;
        drill(&row)
    }

    pub(super) async fn list_restore_drills_impl(
        &self,
        f: &DrillFilter,
    ) -> Result<Vec<RestoreDrill>, CatalogError> {
        let limit = if f.limit == 0 { 100 } else { f.limit };
        query(&format!(
            "SELECT {COLUMNS} FROM restore_drills WHERE (? IS NULL OR instance_id = ?) \
             AND (? IS NULL OR backup_id = ?) ORDER BY id DESC LIMIT ?"
        ))
        .bind(f.instance_id.as_deref())
        .bind(f.instance_id.as_deref())
        .bind(f.backup_id)
        .bind(f.backup_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(drill)
        .collect()
    }

    pub(super) async fn latest_restore_drills_impl(
        &self,
    ) -> Result<Vec<RestoreDrill>, CatalogError> {
        query(&format!(
            "SELECT {COLUMNS} FROM restore_drills WHERE id IN \
             (SELECT MAX(id) FROM restore_drills GROUP BY instance_id) ORDER BY instance_id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(drill)
        .collect()
    }
}
