//! PostgreSQL engine of the catalog, for several ddsvault processes on several machines sharing one catalog.
//!
//! It mirrors the SQLite engine file for file (`postgres_identity.rs`, `postgres_logs.rs`) and statement for
//! statement: the SQL is written with SQLite's `?` placeholders and numbered (`$1`, `$2`, …) once per distinct
//! text by [`pg_sql`], so a method added to the SQLite engine ports by copying it. Where SQLite's single writer
//! makes a read-then-write transaction safe, [`PgCatalog::begin`] takes one transaction-scoped advisory lock that
//! serialises those transactions across every process sharing the catalog (the same guarantee, same cost model).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};

use crate::{
    AccessKeyRecord, AdvancedPolicy, AuditFilter, AuditRecord, Backup, BackupCompletion,
    BackupCopy, BackupCount, BackupFilter, BackupPolicy, BackupSlot, BackupStatus, CatalogBackend,
    CatalogError, CatalogStats, ConfigIdentities, CopyStatus, CrossRegionPolicy, CrossRetention,
    DeleteMark, GroupMember, IdentitySnapshot, InstanceRecord, Job, JobCount, JobState,
    NewBackupJob, NewJob, Page, PolicyAttachment, PrincipalKind, RamGroupRecord, RamPolicyRecord,
    RamUserRecord, RetentionLock, ScheduleRun, ScheduledJob,
};
use crate::{JobKind, LogSlice, NewLogSlice};

#[path = "postgres_console.rs"]
mod console;
#[path = "postgres_drills.rs"]
mod drills;
#[path = "postgres_identity.rs"]
mod identity;
#[path = "postgres_logs.rs"]
mod logs;
#[path = "postgres_nodes.rs"]
mod nodes;
#[path = "postgres_provision.rs"]
mod provision;
#[path = "postgres_registered.rs"]
mod registered;
#[path = "postgres_storage.rs"]
mod storage;

/// PostgreSQL catalog: one connection pool for reads and writes (PostgreSQL has real concurrent writers).
#[derive(Debug, Clone)]
pub struct PgCatalog {
    pool: PgPool,
}

/// The instance's active job (at most one: a unique index), newest first should that ever change.
const ACTIVE_JOB_SQL: &str =
    "SELECT id, kind FROM jobs WHERE instance_id = ? AND state IN ('Pending', 'Running') \
     ORDER BY id DESC LIMIT 1";

/// The identity version.
const IDENTITY_VERSION_SQL: &str = "SELECT version FROM identity_version WHERE id = 1";

/// Key of the transaction-scoped advisory lock that serialises the catalog's read-then-write transactions (see the
/// module comment). An arbitrary constant, the same in every ddsvault process.
const WRITE_LOCK_KEY: i64 = 0x6464_7376_6c74; // "ddsvlt"

const JOB_COLUMNS: &str =
    "id, kind, instance_id, backup_id, state, mode, progress, progress_detail, error, error_code, params, created_at, \
     started_at, finished_at, owner, heartbeat_at, result, lease_until, lease_token";
const BACKUP_COLUMNS: &str =
    "id, job_id, instance_id, status, method, mode, backup_type, start_time, end_time, \
     expire_time, retention_days, size, db_names, engine_version, repo_prefix, details";

/// `sql` with its `?` placeholders numbered `$1`, `$2`, … (PostgreSQL's syntax). The catalog's statements never
/// contain a literal `?`. Each distinct text is converted once and kept for the life of the process: the set of
/// texts is fixed by the code (a few hundred), so the cache is bounded.
pub(crate) fn pg_sql(sql: &str) -> &'static str {
    static CACHE: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(done) = map.get(sql) {
        return done;
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    let done: &'static str = Box::leak(out.into_boxed_str());
    map.insert(sql.to_string(), done);
    done
}

/// `sqlx::query` for SQL written with `?` placeholders.
pub(crate) fn query<'q>(sql: &str) -> sqlx::query::Query<'q, Postgres, PgArguments> {
    sqlx::query(pg_sql(sql))
}

/// `sqlx::query_scalar` for SQL written with `?` placeholders.
pub(crate) fn query_scalar<'q, O>(
    sql: &str,
) -> sqlx::query::QueryScalar<'q, Postgres, O, PgArguments>
where
    (O,): for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_scalar(pg_sql(sql))
}

/// `sqlx::query_as` for SQL written with `?` placeholders.
pub(crate) fn query_as<'q, O>(sql: &str) -> sqlx::query::QueryAs<'q, Postgres, O, PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_as(pg_sql(sql))
}

/// `url` with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    // A password may also be given as a query parameter.
    let tail = match tail.split_once('?') {
        Some((path, params)) => {
            let params: Vec<String> = params
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

impl PgCatalog {
    /// Connects to the PostgreSQL database named by `url` (`postgres://user:password@host:port/db`) and brings its
    /// schema up to date (sqlx takes an advisory lock, so processes starting together migrate once).
    ///
    /// # Errors
    /// [`CatalogError::Config`] naming the URL without its password when it cannot be parsed or reached; migration
    /// errors.
    pub async fn connect(url: &str) -> Result<Self, CatalogError> {
        let shown = redact_url(url);
        let opts = PgConnectOptions::from_str(url).map_err(|e| {
            CatalogError::Config(format!("invalid PostgreSQL catalog url {shown}: {e}"))
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(|e| {
                CatalogError::Config(format!(
                    "cannot connect to the PostgreSQL catalog {shown}: {e}"
                ))
            })?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    /// A write transaction serialised with every other one on this catalog (see the module comment).
    async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>, CatalogError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(WRITE_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// A read-only transaction that sees one snapshot for all its statements.
    async fn begin_read(&self) -> Result<sqlx::Transaction<'static, Postgres>, CatalogError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> Result<DateTime<Utc>, CatalogError> {
    DateTime::from_timestamp_millis(v)
        .ok_or_else(|| CatalogError::Corrupt(format!("timestamp {v}")))
}

fn opt_from_ms(v: Option<i64>) -> Result<Option<DateTime<Utc>>, CatalogError> {
    v.map(from_ms).transpose()
}

const COPY_COLUMNS: &str =
    "backup_id, dest_region, instance_id, status, attempts, next_attempt_at, last_error, \
     method, start_time, end_time, size, expire_time, created_at, copied_at";

fn copy_from_row(r: &PgRow) -> Result<BackupCopy, CatalogError> {
    let status: String = r.try_get("status")?;
    Ok(BackupCopy {
        backup_id: r.try_get("backup_id")?,
        dest_region: r.try_get("dest_region")?,
        instance_id: r.try_get("instance_id")?,
        status: CopyStatus::parse(&status)
            .ok_or_else(|| CatalogError::Corrupt(format!("copy status {status:?}")))?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: from_ms(r.try_get("next_attempt_at")?)?,
        last_error: r.try_get("last_error")?,
        method: crate::model::decode_method(r.try_get("method")?)?,
        start_time: from_ms(r.try_get("start_time")?)?,
        end_time: opt_from_ms(r.try_get("end_time")?)?,
        size: r.try_get("size")?,
        expire_time: opt_from_ms(r.try_get("expire_time")?)?,
        created_at: from_ms(r.try_get("created_at")?)?,
        copied_at: opt_from_ms(r.try_get("copied_at")?)?,
    })
}

fn cross_from_row(r: &PgRow) -> Result<CrossRegionPolicy, CatalogError> {
    let kind: String = r.try_get("retention_type")?;
    let value: i64 = r.try_get("retention_value")?;
    Ok(CrossRegionPolicy {
        instance_id: r.try_get("instance_id")?,
        dest_region: r.try_get("dest_region")?,
        src_region: r.try_get("src_region")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        backup_period: r.try_get("backup_period")?,
        retention: match kind.as_str() {
            "never" => CrossRetention::Never,
            _ => CrossRetention::Days(value),
        },
        updated_at: from_ms(r.try_get("updated_at")?)?,
    })
}

fn json(text: &str, what: &str) -> Result<serde_json::Value, CatalogError> {
    serde_json::from_str(text).map_err(|e| CatalogError::Corrupt(format!("{what}: {e}")))
}

fn job_from_row(r: &PgRow) -> Result<Job, CatalogError> {
    let state: String = r.try_get("state")?;
    let params: String = r.try_get("params")?;
    Ok(Job {
        id: r.try_get("id")?,
        kind: crate::model::decode_kind(r.try_get("kind")?)?,
        instance_id: r.try_get("instance_id")?,
        backup_id: r.try_get("backup_id")?,
        state: JobState::parse(&state)
            .ok_or_else(|| CatalogError::Corrupt(format!("job state {state:?}")))?,
        mode: r.try_get("mode")?,
        progress: r.try_get("progress")?,
        progress_detail: match r.try_get::<Option<String>, _>("progress_detail")? {
            Some(text) => json(&text, "job progress detail")?,
            None => serde_json::Value::Null,
        },
        error: r.try_get("error")?,
        error_code: r.try_get("error_code")?,
        params: json(&params, "job params")?,
        created_at: from_ms(r.try_get("created_at")?)?,
        started_at: opt_from_ms(r.try_get("started_at")?)?,
        finished_at: opt_from_ms(r.try_get("finished_at")?)?,
        owner: r.try_get("owner")?,
        heartbeat_at: opt_from_ms(r.try_get("heartbeat_at")?)?,
        result: match r.try_get::<Option<String>, _>("result")? {
            Some(text) => json(&text, "job result")?,
            None => serde_json::Value::Null,
        },
        lease_until: opt_from_ms(r.try_get("lease_until")?)?,
        lease_token: r.try_get("lease_token")?,
    })
}

fn backup_from_row(r: &PgRow) -> Result<Backup, CatalogError> {
    let status: String = r.try_get("status")?;
    let details: String = r.try_get("details")?;
    Ok(Backup {
        id: r.try_get("id")?,
        job_id: r.try_get("job_id")?,
        instance_id: r.try_get("instance_id")?,
        status: BackupStatus::parse(&status)
            .ok_or_else(|| CatalogError::Corrupt(format!("backup status {status:?}")))?,
        method: crate::model::decode_method(r.try_get("method")?)?,
        mode: r.try_get("mode")?,
        backup_type: r.try_get("backup_type")?,
        start_time: from_ms(r.try_get("start_time")?)?,
        end_time: opt_from_ms(r.try_get("end_time")?)?,
        expire_time: opt_from_ms(r.try_get("expire_time")?)?,
        retention_days: r.try_get("retention_days")?,
        size: r.try_get("size")?,
        db_names: r.try_get("db_names")?,
        engine_version: r.try_get("engine_version")?,
        repo_prefix: r.try_get("repo_prefix")?,
        details: json(&details, "backup details")?,
    })
}

fn lock_from_row(instance_id: &str, r: &PgRow) -> Result<RetentionLock, CatalogError> {
    Ok(RetentionLock {
        instance_id: instance_id.to_string(),
        enabled_at: from_ms(r.try_get("enabled_at")?)?,
        unlock_at: opt_from_ms(r.try_get("unlock_at")?)?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Inserts a pending backup job and its backup set inside `tx`. `None` when the one-active-job index refused the
/// job (the transaction is still usable: the insert runs under a savepoint that is rolled back, since PostgreSQL
/// would otherwise abort the whole transaction).
async fn insert_backup_job(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    new: &NewBackupJob,
) -> Result<Option<(Job, Backup)>, CatalogError> {
    sqlx::query("SAVEPOINT insert_backup_job")
        .execute(&mut **tx)
        .await?;
    let inserted = query(
        "INSERT INTO jobs (kind, instance_id, state, mode, params, created_at) VALUES ('backup', ?, 'Pending', ?, ?, ?) \
         RETURNING id",
    )
    .bind(&new.instance_id)
    .bind(&new.mode)
    .bind(new.params.to_string())
    .bind(ms(new.now))
    .fetch_one(&mut **tx)
    .await;
    let job_id: i64 = match inserted {
        Ok(row) => row.try_get("id")?,
        Err(e) if is_unique_violation(&e) => {
            sqlx::query("ROLLBACK TO SAVEPOINT insert_backup_job")
                .execute(&mut **tx)
                .await?;
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let backup_id: i64 = query(
        "INSERT INTO backups (job_id, instance_id, status, method, mode, backup_type, start_time, retention_days, \
         engine_version) VALUES (?, ?, 'Running', ?, ?, 'FullBackup', ?, ?, ?) RETURNING id",
    )
    .bind(job_id)
    .bind(&new.instance_id)
    .bind(new.method.as_str())
    .bind(&new.mode)
    .bind(ms(new.now))
    .bind(new.retention_days)
    .bind(&new.engine_version)
    .fetch_one(&mut **tx)
    .await?
    .try_get("id")?;
    query("UPDATE jobs SET backup_id = ? WHERE id = ?")
        .bind(backup_id)
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
    let job = job_from_row(
        &query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
            .bind(job_id)
            .fetch_one(&mut **tx)
            .await?,
    )?;
    let backup = backup_from_row(
        &query(&format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE id = ?"
        ))
        .bind(backup_id)
        .fetch_one(&mut **tx)
        .await?,
    )?;
    Ok(Some((job, backup)))
}

impl PgCatalog {
    /// The error for an insert refused by the one-active-job index, naming the job that holds the instance.
    async fn active_job_conflict(&self, instance_id: &str) -> CatalogError {
        let active = query(ACTIVE_JOB_SQL)
            .bind(instance_id)
            .fetch_optional(&self.pool)
            .await;
        match active {
            Ok(Some(r)) => match (r.try_get("id"), r.try_get::<String, _>("kind")) {
                (Ok(job_id), Ok(kind)) => CatalogError::ActiveJobExists {
                    job_id,
                    kind: crate::JobKind::parse(&kind),
                },
                (Err(e), _) | (_, Err(e)) => e.into(),
            },
            // The other job finished between our insert and this look-up; the caller may retry.
            Ok(None) => CatalogError::ActiveJobExists {
                job_id: 0,
                kind: None,
            },
            Err(e) => e.into(),
        }
    }
}

#[async_trait]
impl CatalogBackend for PgCatalog {
    async fn get_setting(&self, key: &str) -> Result<Option<String>, CatalogError> {
        let row = query("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    async fn init_setting(&self, key: &str, value: &str) -> Result<String, CatalogError> {
        query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        let row = query("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }

    async fn replace_setting(
        &self,
        key: &str,
        expected: &str,
        value: &str,
    ) -> Result<bool, CatalogError> {
        let done = query("UPDATE settings SET value = ? WHERE key = ? AND value = ?")
            .bind(value)
            .bind(key)
            .bind(expected)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn put_access_key(&self, key: &AccessKeyRecord) -> Result<(), CatalogError> {
        self.put_access_key_impl(key).await
    }

    async fn list_access_keys(&self) -> Result<Vec<AccessKeyRecord>, CatalogError> {
        self.list_access_keys_impl().await
    }

    async fn identity_version(&self) -> Result<i64, CatalogError> {
        self.identity_version_impl().await
    }

    async fn load_identities(&self) -> Result<IdentitySnapshot, CatalogError> {
        self.load_identities_impl().await
    }

    async fn create_access_key(
        &self,
        key: &AccessKeyRecord,
        max_per_user: u32,
    ) -> Result<(), CatalogError> {
        self.create_access_key_impl(key, max_per_user).await
    }

    async fn set_access_key_active(&self, id: &str, active: bool) -> Result<(), CatalogError> {
        self.set_access_key_active_impl(id, active).await
    }

    async fn delete_access_key(&self, id: &str) -> Result<(), CatalogError> {
        self.delete_access_key_impl(id).await
    }

    async fn replace_access_key_secret(
        &self,
        id: &str,
        from_format: &str,
        secret: &str,
        secret_format: &str,
    ) -> Result<bool, CatalogError> {
        self.replace_access_key_secret_impl(id, from_format, secret, secret_format)
            .await
    }

    async fn touch_access_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), CatalogError> {
        self.touch_access_key_impl(id, at).await
    }

    async fn create_ram_user(&self, user: &RamUserRecord) -> Result<(), CatalogError> {
        self.create_ram_user_impl(user).await
    }

    async fn delete_ram_user(&self, name: &str) -> Result<(), CatalogError> {
        self.delete_ram_user_impl(name).await
    }

    async fn create_ram_group(&self, group: &RamGroupRecord) -> Result<(), CatalogError> {
        self.create_ram_group_impl(group).await
    }

    async fn delete_ram_group(&self, name: &str) -> Result<(), CatalogError> {
        self.delete_ram_group_impl(name).await
    }

    async fn create_ram_policy(&self, policy: &RamPolicyRecord) -> Result<(), CatalogError> {
        self.create_ram_policy_impl(policy).await
    }

    async fn delete_ram_policy(&self, name: &str) -> Result<(), CatalogError> {
        self.delete_ram_policy_impl(name).await
    }

    async fn attach_policy(&self, attachment: &PolicyAttachment) -> Result<(), CatalogError> {
        self.attach_policy_impl(attachment).await
    }

    async fn detach_policy(
        &self,
        policy: &str,
        kind: PrincipalKind,
        principal: &str,
    ) -> Result<(), CatalogError> {
        self.detach_policy_impl(policy, kind, principal).await
    }

    async fn add_group_member(&self, member: &GroupMember) -> Result<(), CatalogError> {
        self.add_group_member_impl(member).await
    }

    async fn remove_group_member(&self, group: &str, user: &str) -> Result<(), CatalogError> {
        self.remove_group_member_impl(group, user).await
    }

    async fn sync_config_identities(
        &self,
        cfg: &ConfigIdentities,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        self.sync_config_identities_impl(cfg, now).await
    }

    async fn register_instance(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<InstanceRecord, CatalogError> {
        query("INSERT INTO instances (id, created_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING")
            .bind(id)
            .bind(ms(now))
            .execute(&self.pool)
            .await?;
        let row = query("SELECT id, created_at FROM instances WHERE id = ?")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(InstanceRecord {
            id: row.try_get("id")?,
            created_at: from_ms(row.try_get("created_at")?)?,
        })
    }

    async fn get_policy(&self, instance_id: &str) -> Result<Option<BackupPolicy>, CatalogError> {
        let row = query("SELECT policy FROM backup_policies WHERE instance_id = ?")
            .bind(instance_id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(None),
            Some(r) => {
                let text: String = r.try_get("policy")?;
                serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| CatalogError::Corrupt(format!("backup policy: {e}")))
            }
        }
    }

    async fn put_policy(
        &self,
        instance_id: &str,
        policy: &BackupPolicy,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        let text = serde_json::to_string(policy)
            .map_err(|e| CatalogError::Corrupt(format!("encode backup policy: {e}")))?;
        query(
            "INSERT INTO backup_policies (instance_id, policy, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (instance_id) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
        )
        .bind(instance_id)
        .bind(text)
        .bind(ms(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn create_backup_job(&self, new: &NewBackupJob) -> Result<(Job, Backup), CatalogError> {
        let mut tx = self.begin().await?;
        match insert_backup_job(&mut tx, new).await? {
            Some(created) => {
                tx.commit().await?;
                Ok(created)
            }
            None => {
                drop(tx);
                Err(self.active_job_conflict(&new.instance_id).await)
            }
        }
    }

    async fn create_claimed_backup_job(
        &self,
        new: &NewBackupJob,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<(Job, Backup), CatalogError> {
        let mut tx = self.begin().await?;
        let Some((job, backup)) = insert_backup_job(&mut tx, new).await? else {
            drop(tx);
            return Err(self.active_job_conflict(&new.instance_id).await);
        };
        // In the same transaction as the insert: no runner ever sees it Pending.
        let job = job_from_row(
            &query(&format!(
                "UPDATE jobs SET state = 'Running', owner = ?, started_at = ?, heartbeat_at = ?, lease_until = ?, \
                 lease_token = lease_token + 1 WHERE id = ? RETURNING {JOB_COLUMNS}"
            ))
            .bind(owner)
            .bind(ms(now))
            .bind(ms(now))
            .bind(ms(lease_until))
            .bind(job.id)
            .fetch_one(&mut *tx)
            .await?,
        )?;
        tx.commit().await?;
        Ok((job, backup))
    }

    async fn create_job(&self, new: &NewJob) -> Result<Job, CatalogError> {
        // Serialised with `mark_deleting`: a restore job and the deletion of the backup it reads never both win.
        let mut tx = self.begin().await?;
        let inserted = query(&format!(
            "INSERT INTO jobs (kind, instance_id, backup_id, state, mode, params, created_at) \
             VALUES (?, ?, ?, 'Pending', ?, ?, ?) RETURNING {JOB_COLUMNS}"
        ))
        .bind(new.kind.as_str())
        .bind(&new.instance_id)
        .bind(new.backup_id)
        .bind(&new.mode)
        .bind(new.params.to_string())
        .bind(ms(new.now))
        .fetch_one(&mut *tx)
        .await;
        match inserted {
            Ok(row) => {
                let job = job_from_row(&row)?;
                tx.commit().await?;
                Ok(job)
            }
            Err(e) if is_unique_violation(&e) => {
                drop(tx);
                Err(self.active_job_conflict(&new.instance_id).await)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn complete_job(
        &self,
        job_id: i64,
        owner: &str,
        token: i64,
        result: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        let done = query(
            "UPDATE jobs SET state = 'Success', progress = 100, finished_at = ?, heartbeat_at = ?, result = ? \
             WHERE id = ? AND owner = ? AND lease_token = ? AND state = 'Running'",
        )
        .bind(ms(now))
        .bind(ms(now))
        .bind(result.to_string())
        .bind(job_id)
        .bind(owner)
        .bind(token)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(CatalogError::LeaseLost(job_id))
        }
    }

    async fn claim_next_job_placed(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        skip_instances: &[String],
    ) -> Result<Option<Job>, CatalogError> {
        // The oldest pending row nobody else is claiming right now (SKIP LOCKED): two processes racing never
        // take the same job, and neither waits for the other. The instances to pass over are one array parameter.
        let row = query(&format!(
            "UPDATE jobs SET state = 'Running', owner = ?, started_at = ?, heartbeat_at = ?, lease_until = ?, \
             lease_token = lease_token + 1 \
             WHERE id = (SELECT id FROM jobs WHERE state = 'Pending' AND NOT (instance_id = ANY(?)) \
             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             AND state = 'Pending' RETURNING {JOB_COLUMNS}"
        ))
        .bind(owner)
        .bind(ms(now))
        .bind(ms(now))
        .bind(ms(lease_until))
        .bind(skip_instances)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn renew_lease(
        &self,
        job_id: i64,
        owner: &str,
        token: i64,
        lease_until: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        // Never shortens the lease: a renewal delayed in flight never shortens a lease a later one already extended.
        let done = query(
            "UPDATE jobs SET lease_until = GREATEST(COALESCE(lease_until, 0), ?) \
             WHERE id = ? AND owner = ? AND lease_token = ? AND state = 'Running'",
        )
        .bind(ms(lease_until))
        .bind(job_id)
        .bind(owner)
        .bind(token)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(CatalogError::LeaseLost(job_id))
        }
    }

    async fn heartbeat_with_detail(
        &self,
        job_id: i64,
        owner: &str,
        token: i64,
        progress: i32,
        detail: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        let detail = (!detail.is_null()).then(|| detail.to_string());
        let done = query(
            "UPDATE jobs SET progress = ?, progress_detail = COALESCE(?, progress_detail), heartbeat_at = ? \
             WHERE id = ? AND owner = ? AND lease_token = ? AND state = 'Running'",
        )
        .bind(progress.clamp(0, 100))
        .bind(detail)
        .bind(ms(now))
        .bind(job_id)
        .bind(owner)
        .bind(token)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(CatalogError::LeaseLost(job_id))
        }
    }

    async fn complete_backup(
        &self,
        job_id: i64,
        owner: &str,
        token: i64,
        done: &BackupCompletion,
    ) -> Result<(), CatalogError> {
        self.complete_backup_impl(job_id, owner, token, done, None)
            .await
    }

    async fn complete_backup_with_storage(
        &self,
        job_id: i64,
        owner: &str,
        token: i64,
        done: &BackupCompletion,
        usage: &crate::BackupStorage,
    ) -> Result<(), CatalogError> {
        self.complete_backup_impl(job_id, owner, token, done, Some(usage))
            .await
    }

    async fn record_backup_storage(
        &self,
        backup_id: i64,
        usage: &crate::BackupStorage,
    ) -> Result<bool, CatalogError> {
        self.record_backup_storage_impl(backup_id, usage).await
    }

    async fn backups_without_storage(&self, limit: u32) -> Result<Vec<Backup>, CatalogError> {
        self.backups_without_storage_impl(limit).await
    }

    async fn add_instance_chunks(
        &self,
        instance_id: &str,
        chunks: &[crate::ChunkUsage],
    ) -> Result<(), CatalogError> {
        self.add_instance_chunks_impl(instance_id, chunks).await
    }

    async fn forget_instance_chunks(
        &self,
        instance_id: &str,
        digests: &[String],
    ) -> Result<(), CatalogError> {
        self.forget_instance_chunks_impl(instance_id, digests).await
    }

    async fn storage_usage(&self, instance_id: &str) -> Result<crate::StorageUsage, CatalogError> {
        self.storage_usage_impl(instance_id).await
    }

    async fn fail_job_with_code(
        &self,
        job_id: i64,
        code: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        self.fail_impl(job_id, None, code, reason, now).await?;
        Ok(())
    }

    async fn fail_leased_job(
        &self,
        job_id: i64,
        owner: &str,
        token: i64,
        code: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        if self
            .fail_impl(job_id, Some((owner, token)), code, reason, now)
            .await?
        {
            Ok(())
        } else {
            Err(CatalogError::LeaseLost(job_id))
        }
    }

    async fn recover_expired(
        &self,
        recoverer: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        own_previous_life: bool,
    ) -> Result<Vec<crate::RecoveredJob>, CatalogError> {
        let rows = query(
            "SELECT id, owner, lease_token FROM jobs WHERE state = 'Running' \
             AND (lease_until IS NULL OR lease_until < ? OR (?::boolean AND owner = ?)) ORDER BY id",
        )
        .bind(ms(now))
        .bind(own_previous_life)
        .bind(recoverer)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.try_get("id")?;
            let previous_owner: Option<String> = r.try_get("owner")?;
            let token: i64 = r.try_get("lease_token")?;
            // Compare-and-set on the token read above: a renewal or another recoverer in between wins, and this
            // job is left alone.
            let taken = query(&format!(
                "UPDATE jobs SET owner = ?, lease_until = ?, lease_token = lease_token + 1 \
                 WHERE id = ? AND lease_token = ? AND state = 'Running' \
                 AND (lease_until IS NULL OR lease_until < ? OR (?::boolean AND owner = ?)) RETURNING {JOB_COLUMNS}"
            ))
            .bind(recoverer)
            .bind(ms(lease_until))
            .bind(id)
            .bind(token)
            .bind(ms(now))
            .bind(own_previous_life)
            .bind(recoverer)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = taken {
                out.push(crate::RecoveredJob {
                    job: job_from_row(&row)?,
                    previous_owner,
                });
            }
        }
        Ok(out)
    }

    async fn get_job(&self, job_id: i64) -> Result<Option<Job>, CatalogError> {
        let row = query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn list_jobs(
        &self,
        instance_id: &str,
        active_only: bool,
    ) -> Result<Vec<Job>, CatalogError> {
        let sql = if active_only {
            format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE instance_id = ? AND state IN ('Pending', 'Running') ORDER BY id DESC"
            )
        } else {
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE instance_id = ? ORDER BY id DESC")
        };
        let rows = query(&sql).bind(instance_id).fetch_all(&self.pool).await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn active_job(&self, instance_id: &str) -> Result<Option<(i64, JobKind)>, CatalogError> {
        let row = query(ACTIVE_JOB_SQL)
            .bind(instance_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok((
                r.try_get("id")?,
                crate::model::decode_kind(r.try_get("kind")?)?,
            ))
        })
        .transpose()
    }

    async fn get_backup(&self, backup_id: i64) -> Result<Option<Backup>, CatalogError> {
        let row = query(&format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE id = ?"
        ))
        .bind(backup_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(backup_from_row).transpose()
    }

    async fn list_backups(
        &self,
        filter: &BackupFilter,
        page: Page,
    ) -> Result<(u64, Vec<Backup>), CatalogError> {
        let mut clauses: Vec<&str> = Vec::new();
        if filter.instance_id.is_some() {
            clauses.push("instance_id = ?");
        }
        if filter.backup_id.is_some() {
            clauses.push("id = ?");
        }
        if filter.job_id.is_some() {
            clauses.push("job_id = ?");
        }
        if filter.start_from.is_some() {
            clauses.push("start_time >= ?");
        }
        if filter.start_to.is_some() {
            clauses.push("start_time <= ?");
        }
        if !filter.include_running {
            clauses.push("status <> 'Running'");
        }
        // Backups being deleted are never listed: their files may already be partly gone.
        clauses.push("status <> 'Deleting'");
        let where_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        // Binds are applied in the same order as the clauses above, for both statements.
        macro_rules! bind_filter {
            ($q:expr) => {{
                let mut q = $q;
                if let Some(v) = &filter.instance_id {
                    q = q.bind(v);
                }
                if let Some(v) = filter.backup_id {
                    q = q.bind(v);
                }
                if let Some(v) = filter.job_id {
                    q = q.bind(v);
                }
                if let Some(v) = filter.start_from {
                    q = q.bind(ms(v));
                }
                if let Some(v) = filter.start_to {
                    q = q.bind(ms(v));
                }
                q
            }};
        }
        // Listings filtered by instance (or not at all) read the trigger-kept counts (migration 0009); other
        // filters narrow the rows enough for COUNT(*).
        let counted = filter.backup_id.is_none()
            && filter.job_id.is_none()
            && filter.start_from.is_none()
            && filter.start_to.is_none();
        let total: i64 = if counted {
            let mut sql = String::from(
                "SELECT COALESCE(SUM(n), 0)::BIGINT AS n FROM backup_counts WHERE status <> 'Deleting'",
            );
            if !filter.include_running {
                sql.push_str(" AND status <> 'Running'");
            }
            if filter.instance_id.is_some() {
                sql.push_str(" AND instance_id = ?");
            }
            let mut q = query(&sql);
            if let Some(v) = &filter.instance_id {
                q = q.bind(v);
            }
            q.fetch_one(&self.pool).await?.try_get("n")?
        } else {
            let count_sql = format!("SELECT COUNT(*) AS n FROM backups {where_sql}");
            bind_filter!(query(&count_sql))
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?
        };
        let size = i64::from(page.size.max(1));
        let offset = i64::from(page.number.max(1) - 1) * size;
        let list_sql = format!(
            // The page's ids come from the index alone (OFFSET walks index entries, not rows); only the page's
            // rows are read.
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE id IN \
             (SELECT id FROM backups {where_sql} ORDER BY start_time DESC, id DESC LIMIT ? OFFSET ?) \
             ORDER BY start_time DESC, id DESC"
        );
        let rows = bind_filter!(query(&list_sql))
            .bind(size)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let backups = rows
            .iter()
            .map(backup_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((u64::try_from(total).unwrap_or(0), backups))
    }

    async fn set_backup_expire_time(
        &self,
        backup_id: i64,
        expire_time: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        let done = query("UPDATE backups SET expire_time = ? WHERE id = ? AND status = 'Success'")
            .bind(ms(expire_time))
            .bind(backup_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(CatalogError::NotFound(format!(
                "successful backup {backup_id}"
            )))
        }
    }

    async fn mark_backup_deleting(&self, backup_id: i64) -> Result<DeleteMark, CatalogError> {
        self.mark_deleting(backup_id, None).await
    }

    async fn mark_backup_deleting_unless_locked(
        &self,
        backup_id: i64,
        now: DateTime<Utc>,
    ) -> Result<DeleteMark, CatalogError> {
        self.mark_deleting(backup_id, Some(now)).await
    }
    async fn list_expired_backups(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Backup>, CatalogError> {
        let rows = query(&format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE status = 'Success' AND expire_time IS NOT NULL \
             AND expire_time <= ? ORDER BY expire_time, id LIMIT ?"
        ))
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(backup_from_row).collect()
    }

    async fn list_deleting_backups(&self) -> Result<Vec<Backup>, CatalogError> {
        let rows = query(&format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE status = 'Deleting' ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(backup_from_row).collect()
    }

    async fn delete_backup_row(&self, backup_id: i64) -> Result<bool, CatalogError> {
        let mut tx = self.begin().await?;
        let done = query("DELETE FROM backups WHERE id = ? AND status = 'Deleting'")
            .bind(backup_id)
            .execute(&mut *tx)
            .await?;
        // Its recorded usage (migration 0015) goes with it; it stopped counting when it left Success.
        query("DELETE FROM backup_storage WHERE backup_id = ?")
            .bind(backup_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn create_scheduled_job(
        &self,
        new: &NewBackupJob,
        schedule: &str,
        slot_start: DateTime<Utc>,
        owner: &str,
    ) -> Result<ScheduledJob, CatalogError> {
        let mut tx = self.begin().await?;
        let claimed = query(
            "INSERT INTO schedule_runs (instance_id, schedule, slot_start, owner, claimed_at, outcome) \
             VALUES (?, ?, ?, ?, ?, 'Created') ON CONFLICT (instance_id, schedule, slot_start) DO NOTHING",
        )
        .bind(&new.instance_id)
        .bind(schedule)
        .bind(ms(slot_start))
        .bind(owner)
        .bind(ms(new.now))
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            return Ok(ScheduledJob::AlreadyTaken);
        }
        let outcome = match insert_backup_job(&mut tx, new).await? {
            Some((job, backup)) => {
                query(
                    "UPDATE schedule_runs SET job_id = ? WHERE instance_id = ? AND schedule = ? AND slot_start = ?",
                )
                .bind(job.id)
                .bind(&new.instance_id)
                .bind(schedule)
                .bind(ms(slot_start))
                .execute(&mut *tx)
                .await?;
                ScheduledJob::Created(Box::new((job, backup)))
            }
            None => {
                let active = query(ACTIVE_JOB_SQL)
                    .bind(&new.instance_id)
                    .fetch_one(&mut *tx)
                    .await?;
                let job_id: i64 = active.try_get("id")?;
                let kind = crate::model::decode_kind(active.try_get("kind")?)?;
                query(
                    "UPDATE schedule_runs SET outcome = 'Skipped', job_id = ?, detail = ? \
                     WHERE instance_id = ? AND schedule = ? AND slot_start = ?",
                )
                .bind(job_id)
                .bind(format!("a {kind} job ({job_id}) was active"))
                .bind(&new.instance_id)
                .bind(schedule)
                .bind(ms(slot_start))
                .execute(&mut *tx)
                .await?;
                ScheduledJob::Skipped { job_id, kind }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn list_schedule_runs(
        &self,
        instance_id: &str,
        limit: u32,
    ) -> Result<Vec<ScheduleRun>, CatalogError> {
        let rows = query(
            "SELECT instance_id, schedule, slot_start, owner, claimed_at, outcome, job_id, detail FROM schedule_runs \
             WHERE instance_id = ? ORDER BY slot_start DESC, schedule LIMIT ?",
        )
        .bind(instance_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ScheduleRun {
                    instance_id: r.try_get("instance_id")?,
                    schedule: r.try_get("schedule")?,
                    slot_start: from_ms(r.try_get("slot_start")?)?,
                    owner: r.try_get("owner")?,
                    claimed_at: from_ms(r.try_get("claimed_at")?)?,
                    outcome: r.try_get("outcome")?,
                    job_id: r.try_get("job_id")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), CatalogError> {
        if records.is_empty() {
            return Ok(());
        }
        // One multi-row INSERT per 64 records: each statement is a round trip to sqlx's connection thread, and at
        // thousands of calls per second one per record made the audit writer the catalog's busiest client.
        let mut tx = self.begin().await?;
        for chunk in records.chunks(64) {
            let mut resources = Vec::with_capacity(chunk.len());
            for r in chunk {
                resources.push(
                    serde_json::to_string(&r.resources)
                        .map_err(|e| CatalogError::Corrupt(format!("audit resources: {e}")))?,
                );
            }
            let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO audit_log (time, request_id, access_key_id, user_name, action, resources, \
                 source_ip, secure, http_status, code) ",
            );
            q.push_values(chunk.iter().zip(resources), |mut row, (r, res)| {
                row.push_bind(ms(r.time))
                    .push_bind(&r.request_id)
                    .push_bind(&r.access_key_id)
                    .push_bind(&r.user)
                    .push_bind(&r.action)
                    .push_bind(res)
                    .push_bind(&r.source_ip)
                    .push_bind(r.secure)
                    .push_bind(i64::from(r.http_status))
                    .push_bind(&r.code);
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn put_cross_policy(&self, p: &CrossRegionPolicy) -> Result<(), CatalogError> {
        let (kind, value) = match p.retention {
            CrossRetention::Days(d) => ("delay", d),
            CrossRetention::Never => ("never", 0),
        };
        query(
            "INSERT INTO cross_region_policies (instance_id, dest_region, src_region, enabled, backup_period, \
             retention_type, retention_value, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (instance_id, dest_region) DO UPDATE SET src_region = excluded.src_region, \
             enabled = excluded.enabled, backup_period = excluded.backup_period, \
             retention_type = excluded.retention_type, retention_value = excluded.retention_value, \
             updated_at = excluded.updated_at",
        )
        .bind(&p.instance_id)
        .bind(&p.dest_region)
        .bind(&p.src_region)
        .bind(i64::from(p.enabled))
        .bind(&p.backup_period)
        .bind(kind)
        .bind(value)
        .bind(ms(p.updated_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_cross_policies(
        &self,
        instance_id: &str,
    ) -> Result<Vec<CrossRegionPolicy>, CatalogError> {
        query("SELECT * FROM cross_region_policies WHERE instance_id = ? ORDER BY dest_region")
            .bind(instance_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(cross_from_row)
            .collect()
    }

    async fn enqueue_copy(&self, c: &BackupCopy) -> Result<bool, CatalogError> {
        let done = query(&format!(
            "INSERT INTO backup_copies ({COPY_COLUMNS}) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
        ))
        .bind(c.backup_id)
        .bind(&c.dest_region)
        .bind(&c.instance_id)
        .bind(c.status.as_str())
        .bind(c.attempts)
        .bind(ms(c.next_attempt_at))
        .bind(&c.last_error)
        .bind(c.method.as_str())
        .bind(ms(c.start_time))
        .bind(c.end_time.map(ms))
        .bind(c.size)
        .bind(c.expire_time.map(ms))
        .bind(ms(c.created_at))
        .bind(c.copied_at.map(ms))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    async fn due_copies(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<BackupCopy>, CatalogError> {
        query(&format!(
            "SELECT {COPY_COLUMNS} FROM backup_copies WHERE status = 'Pending' AND next_attempt_at <= ? \
             ORDER BY next_attempt_at, backup_id LIMIT ?"
        ))
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(copy_from_row)
        .collect()
    }

    async fn update_copy(&self, c: &BackupCopy) -> Result<(), CatalogError> {
        query(
            "UPDATE backup_copies SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?, size = ?, \
             copied_at = ? WHERE backup_id = ? AND dest_region = ?",
        )
        .bind(c.status.as_str())
        .bind(c.attempts)
        .bind(ms(c.next_attempt_at))
        .bind(&c.last_error)
        .bind(c.size)
        .bind(c.copied_at.map(ms))
        .bind(c.backup_id)
        .bind(&c.dest_region)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_copies(
        &self,
        instance_id: &str,
        dest_region: &str,
    ) -> Result<Vec<BackupCopy>, CatalogError> {
        query(&format!(
            "SELECT {COPY_COLUMNS} FROM backup_copies WHERE instance_id = ? AND dest_region = ? \
             ORDER BY backup_id DESC"
        ))
        .bind(instance_id)
        .bind(dest_region)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(copy_from_row)
        .collect()
    }

    async fn expired_copies(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<BackupCopy>, CatalogError> {
        query(&format!(
            "SELECT {COPY_COLUMNS} FROM backup_copies WHERE status = 'Success' AND expire_time IS NOT NULL \
             AND expire_time <= ? ORDER BY expire_time LIMIT ?"
        ))
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(copy_from_row)
        .collect()
    }

    async fn delete_copy(&self, backup_id: i64, dest_region: &str) -> Result<(), CatalogError> {
        query("DELETE FROM backup_copies WHERE backup_id = ? AND dest_region = ?")
            .bind(backup_id)
            .bind(dest_region)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn claim_log_follower(
        &self,
        instance_id: &str,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        self.claim_log_follower_impl(instance_id, owner, now, lease_until)
            .await
    }

    async fn release_log_follower(
        &self,
        instance_id: &str,
        owner: &str,
    ) -> Result<(), CatalogError> {
        self.release_log_follower_impl(instance_id, owner).await
    }

    async fn add_log_slice(
        &self,
        slice: &NewLogSlice,
        owner: &str,
    ) -> Result<LogSlice, CatalogError> {
        self.add_log_slice_impl(slice, owner).await
    }

    async fn list_log_slices(&self, instance_id: &str) -> Result<Vec<LogSlice>, CatalogError> {
        self.list_log_slices_impl(instance_id).await
    }

    async fn delete_log_slice(&self, id: i64) -> Result<(), CatalogError> {
        self.delete_log_slice_impl(id).await
    }

    async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, CatalogError> {
        // In slices, so that a first prune of a large trail never holds the write lock for long.
        let mut total = 0;
        loop {
            let done = query(
                "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE time < ? LIMIT 5000)",
            )
            .bind(ms(before))
            .execute(&self.pool)
            .await?
            .rows_affected();
            total += done;
            if done < 5000 {
                return Ok(total);
            }
        }
    }

    async fn get_drill_policy(
        &self,
        instance_id: &str,
    ) -> Result<Option<crate::DrillPolicy>, CatalogError> {
        self.get_drill_policy_impl(instance_id).await
    }

    async fn put_drill_policy(&self, policy: &crate::DrillPolicy) -> Result<(), CatalogError> {
        self.put_drill_policy_impl(policy).await
    }

    async fn list_drill_policies(&self) -> Result<Vec<crate::DrillPolicy>, CatalogError> {
        self.list_drill_policies_impl().await
    }

    async fn create_scheduled_drill_job(
        &self,
        source: &str,
        slot_start: DateTime<Utc>,
        owner: &str,
        job: &NewJob,
    ) -> Result<crate::ScheduledDrill, CatalogError> {
        self.create_scheduled_drill_job_impl(source, slot_start, owner, job)
            .await
    }

    async fn record_restore_drill(
        &self,
        drill: &crate::NewRestoreDrill,
    ) -> Result<crate::RestoreDrill, CatalogError> {
        self.record_restore_drill_impl(drill).await
    }

    async fn list_restore_drills(
        &self,
        filter: &crate::DrillFilter,
    ) -> Result<Vec<crate::RestoreDrill>, CatalogError> {
        self.list_restore_drills_impl(filter).await
    }

    async fn latest_restore_drills(&self) -> Result<Vec<crate::RestoreDrill>, CatalogError> {
        self.latest_restore_drills_impl().await
    }

    async fn revoke_console_session(
        &self,
        nonce: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        self.revoke_console_session_impl(nonce, expires_at, now)
            .await
    }

    async fn console_session_revoked(&self, nonce: &str) -> Result<bool, CatalogError> {
        self.console_session_revoked_impl(nonce).await
    }

    async fn record_console_login_failure(
        &self,
        address: &str,
        now: DateTime<Utc>,
        window_start_after: DateTime<Utc>,
    ) -> Result<crate::LoginFailures, CatalogError> {
        self.record_console_login_failure_impl(address, now, window_start_after)
            .await
    }

    async fn console_login_failures(
        &self,
        address: &str,
        window_start_after: DateTime<Utc>,
    ) -> Result<Option<crate::LoginFailures>, CatalogError> {
        self.console_login_failures_impl(address, window_start_after)
            .await
    }

    async fn clear_console_login_failures(&self, address: &str) -> Result<(), CatalogError> {
        self.clear_console_login_failures_impl(address).await
    }

    async fn create_provisioned_instance(
        &self,
        new: &crate::NewProvisionedInstance,
        job: &NewJob,
    ) -> Result<(crate::ProvisionedInstance, Job), CatalogError> {
        self.create_provisioned_impl(new, job).await
    }

    async fn get_provisioned_instance(
        &self,
        id: &str,
    ) -> Result<Option<crate::ProvisionedInstance>, CatalogError> {
        self.get_provisioned_impl(id).await
    }

    async fn list_provisioned_instances(
        &self,
    ) -> Result<Vec<crate::ProvisionedInstance>, CatalogError> {
        self.list_provisioned_impl().await
    }

    async fn set_provisioned_status(
        &self,
        id: &str,
        status: crate::ProvisionStatus,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        self.set_provisioned_status_impl(id, status, error, now)
            .await
    }

    async fn delete_provisioned_instance(&self, id: &str) -> Result<bool, CatalogError> {
        self.delete_provisioned_impl(id).await
    }

    async fn create_registered_instance(
        &self,
        inst: &crate::RegisteredInstance,
        policy: Option<&BackupPolicy>,
    ) -> Result<(), CatalogError> {
        self.create_registered_impl(inst, policy).await
    }

    async fn update_registered_instance(
        &self,
        inst: &crate::RegisteredInstance,
    ) -> Result<(), CatalogError> {
        self.update_registered_impl(inst).await
    }

    async fn get_registered_instance(
        &self,
        id: &str,
    ) -> Result<Option<crate::RegisteredInstance>, CatalogError> {
        self.get_registered_impl(id).await
    }

    async fn list_registered_instances(
        &self,
    ) -> Result<Vec<crate::RegisteredInstance>, CatalogError> {
        self.list_registered_impl().await
    }

    async fn delete_registered_instance(&self, id: &str) -> Result<bool, CatalogError> {
        self.delete_registered_impl(id).await
    }

    async fn release_job(&self, job_id: i64, owner: &str) -> Result<bool, CatalogError> {
        self.release_job_impl(job_id, owner).await
    }

    async fn record_nonce(
        &self,
        access_key_id: &str,
        nonce: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        self.record_nonce_impl(access_key_id, nonce, expires_at)
            .await
    }

    async fn sweep_nonces(&self, now: DateTime<Utc>) -> Result<u64, CatalogError> {
        self.sweep_nonces_impl(now).await
    }

    async fn put_node(&self, node: &crate::NodeRecord) -> Result<(), CatalogError> {
        self.put_node_impl(node).await
    }

    async fn list_nodes(&self) -> Result<Vec<crate::NodeRecord>, CatalogError> {
        self.list_nodes_impl().await
    }

    async fn stats(&self) -> Result<CatalogStats, CatalogError> {
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        let mut stats = CatalogStats::default();
        for r in query(
            // A backup job's method is its set's; other kinds may name one in their parameters.
            "SELECT j.kind AS kind, COALESCE(b.method, j.params::jsonb ->> 'method', '') AS method, \
             j.state AS state, COUNT(*) AS n FROM jobs j LEFT JOIN backups b ON b.job_id = j.id \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let state: String = r.try_get("state")?;
            stats.jobs.push(JobCount {
                kind: crate::model::decode_kind(r.try_get("kind")?)?,
                // "" (COALESCE's last resort) for a job that names no method.
                method: match r.try_get::<String, _>("method")?.as_str() {
                    "" => None,
                    m => Some(crate::model::decode_method(m)?),
                },
                state: JobState::parse(&state)
                    .ok_or_else(|| CatalogError::Corrupt(format!("job state {state:?}")))?,
                count: count(r.try_get("n")?),
            });
        }
        for r in query(
            "SELECT method, status, COUNT(*) AS n, COALESCE(SUM(size), 0)::BIGINT AS bytes FROM backups \
             GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(&self.pool)
        .await?
        {
            stats.backups.push(BackupCount {
                method: crate::model::decode_method(r.try_get("method")?)?,
                status: r.try_get("status")?,
                count: count(r.try_get("n")?),
                bytes: count(r.try_get("bytes")?),
            });
        }
        for r in query(
            "SELECT instance_id, MAX(end_time) AS t FROM backups \
             WHERE status = 'Success' AND end_time IS NOT NULL GROUP BY instance_id ORDER BY instance_id",
        )
        .fetch_all(&self.pool)
        .await?
        {
            stats
                .last_success
                .push((r.try_get("instance_id")?, from_ms(r.try_get("t")?)?));
        }
        // One index seek per instance (log_slices_instance_end).
        for r in query(
            "SELECT instance_id, MAX(end_incl) AS e FROM log_slices GROUP BY instance_id ORDER BY instance_id",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let (secs, _) = crate::model::ts_parts(r.try_get("e")?);
            stats
                .log_backup_end
                .push((r.try_get("instance_id")?, secs));
        }
        Ok(stats)
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, CatalogError> {
        let limit = if filter.limit == 0 { 100 } else { filter.limit };
        let rows = query(
            "SELECT id, time, request_id, access_key_id, user_name, action, resources, source_ip, secure, \
             http_status, code FROM audit_log \
             WHERE (? IS NULL OR time >= ?) AND (? IS NULL OR access_key_id = ?) \
             AND (? IS NULL OR lower(action) = lower(?)) \
             ORDER BY time DESC, id DESC LIMIT ?",
        )
        .bind(filter.since.map(ms))
        .bind(filter.since.map(ms))
        .bind(&filter.access_key_id)
        .bind(&filter.access_key_id)
        .bind(&filter.action)
        .bind(&filter.action)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let resources: String = r.try_get("resources")?;
                let status: i64 = r.try_get("http_status")?;
                Ok(AuditRecord {
                    id: r.try_get("id")?,
                    time: from_ms(r.try_get("time")?)?,
                    request_id: r.try_get("request_id")?,
                    access_key_id: r.try_get("access_key_id")?,
                    user: r.try_get("user_name")?,
                    action: r.try_get("action")?,
                    resources: serde_json::from_str(&resources)
                        .map_err(|e| CatalogError::Corrupt(format!("audit resources: {e}")))?,
                    source_ip: r.try_get("source_ip")?,
                    secure: r.try_get("secure")?,
                    http_status: u16::try_from(status).map_err(|_| {
                        CatalogError::Corrupt(format!("audit http_status {status}"))
                    })?,
                    code: r.try_get("code")?,
                })
            })
            .collect()
    }

    async fn list_backup_slots(&self, instance_id: &str) -> Result<Vec<BackupSlot>, CatalogError> {
        let rows = query(
            "SELECT j.backup_id AS backup_id, r.schedule AS schedule, r.slot_start AS slot_start \
             FROM schedule_runs r JOIN jobs j ON j.id = r.job_id \
             WHERE r.instance_id = ? AND r.outcome = 'Created' AND j.backup_id IS NOT NULL \
             ORDER BY r.slot_start, j.backup_id",
        )
        .bind(instance_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BackupSlot {
                    backup_id: r.try_get("backup_id")?,
                    schedule: r.try_get("schedule")?,
                    slot_start: from_ms(r.try_get("slot_start")?)?,
                })
            })
            .collect()
    }

    async fn get_advanced_policy(
        &self,
        instance_id: &str,
    ) -> Result<Option<AdvancedPolicy>, CatalogError> {
        let row = query("SELECT policy FROM advanced_policies WHERE instance_id = ?")
            .bind(instance_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let text: String = r.try_get("policy")?;
            serde_json::from_str(&text)
                .map_err(|e| CatalogError::Corrupt(format!("advanced backup policy: {e}")))
        })
        .transpose()
    }

    async fn put_advanced_policy(
        &self,
        instance_id: &str,
        standard: &BackupPolicy,
        advanced: &AdvancedPolicy,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        let standard_text = serde_json::to_string(standard)
            .map_err(|e| CatalogError::Corrupt(format!("encode backup policy: {e}")))?;
        let advanced_text = serde_json::to_string(advanced)
            .map_err(|e| CatalogError::Corrupt(format!("encode advanced backup policy: {e}")))?;
        let mut tx = self.begin().await?;
        query(
            "INSERT INTO backup_policies (instance_id, policy, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (instance_id) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
        )
        .bind(instance_id)
        .bind(standard_text)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        query(
            "INSERT INTO advanced_policies (instance_id, policy, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (instance_id) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
        )
        .bind(instance_id)
        .bind(advanced_text)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_retention_lock(
        &self,
        instance_id: &str,
    ) -> Result<Option<RetentionLock>, CatalogError> {
        let row = query("SELECT enabled_at, unlock_at FROM retention_locks WHERE instance_id = ?")
            .bind(instance_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| lock_from_row(instance_id, &r)).transpose()
    }

    async fn set_retention_lock(
        &self,
        instance_id: &str,
        enable: bool,
        now: DateTime<Utc>,
        cooling_off: chrono::Duration,
    ) -> Result<Option<RetentionLock>, CatalogError> {
        // Read and write in one writer transaction: two requests racing cannot both start the cooling-off.
        let mut tx = self.begin().await?;
        let current =
            query("SELECT enabled_at, unlock_at FROM retention_locks WHERE instance_id = ?")
                .bind(instance_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| lock_from_row(instance_id, &r))
                .transpose()?;
        let next = RetentionLock::transition(current, instance_id, enable, now, cooling_off);
        match &next {
            Some(l) => {
                query(
                    "INSERT INTO retention_locks (instance_id, enabled_at, unlock_at, updated_at) VALUES (?, ?, ?, ?) \
                     ON CONFLICT (instance_id) DO UPDATE SET enabled_at = excluded.enabled_at, \
                     unlock_at = excluded.unlock_at, updated_at = excluded.updated_at",
                )
                .bind(instance_id)
                .bind(ms(l.enabled_at))
                .bind(l.unlock_at.map(ms))
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
            }
            None => {
                query("DELETE FROM retention_locks WHERE instance_id = ?")
                    .bind(instance_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(next)
    }
}

impl PgCatalog {
    /// `mark_backup_deleting`, with the retention-lock check of a requested deletion when `lock_at` is given.
    async fn mark_deleting(
        &self,
        backup_id: i64,
        lock_at: Option<DateTime<Utc>>,
    ) -> Result<DeleteMark, CatalogError> {
        // One writer transaction: the restore-job check, the lock check and the status change cannot interleave
        // with a restore job being created or a lock being enabled (writes are serialised, in this process and
        // across processes).
        let mut tx = self.begin().await?;
        if let Some(now) = lock_at {
            let lock = query(
                "SELECT l.enabled_at, l.unlock_at, l.instance_id FROM retention_locks l \
                 JOIN backups b ON b.instance_id = l.instance_id WHERE b.id = ?",
            )
            .bind(backup_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = lock {
                let instance: String = row.try_get("instance_id")?;
                let lock = lock_from_row(&instance, &row)?;
                if lock.is_active(now) {
                    tx.commit().await?;
                    return Ok(DeleteMark::Locked {
                        unlock_at: lock.unlock_at,
                    });
                }
            }
        }
        let updated = query(&format!(
            "UPDATE backups SET status = 'Deleting' WHERE id = ? AND status IN ('Success', 'Failed', 'Deleting') \
             AND NOT EXISTS (SELECT 1 FROM jobs WHERE kind IN ('restore', 'drill') AND backup_id = ? \
                             AND state IN ('Pending', 'Running')) \
             RETURNING {BACKUP_COLUMNS}"
        ))
        .bind(backup_id)
        .bind(backup_id)
        .fetch_optional(&mut *tx)
        .await?;
        let mark = if let Some(row) = updated {
            DeleteMark::Marked(Box::new(backup_from_row(&row)?))
        } else {
            let status: Option<String> = query("SELECT status FROM backups WHERE id = ?")
                .bind(backup_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("status"))
                .transpose()?;
            match status.as_deref() {
                None => DeleteMark::NotFound,
                Some("Running") => DeleteMark::Running,
                Some(_) => {
                    let job_id: i64 = query(
                        "SELECT id FROM jobs WHERE kind IN ('restore', 'drill') AND backup_id = ? \
                         AND state IN ('Pending', 'Running') ORDER BY id LIMIT 1",
                    )
                    .bind(backup_id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("id")?;
                    DeleteMark::InUse { job_id }
                }
            }
        };
        tx.commit().await?;
        Ok(mark)
    }
}

impl PgCatalog {
    /// Fails a Pending or Running job; with `fence`, only if that owner still holds it with that token. True if
    /// this call failed it.
    async fn fail_impl(
        &self,
        job_id: i64,
        fence: Option<(&str, i64)>,
        code: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let mut tx = self.begin().await?;
        let row = match fence {
            None => {
                query(
                    "UPDATE jobs SET state = 'Failed', error = ?, error_code = ?, finished_at = ? \
                     WHERE id = ? AND state IN ('Pending', 'Running') RETURNING backup_id",
                )
                .bind(reason)
                .bind(code)
                .bind(ms(now))
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?
            }
            Some((owner, token)) => {
                query(
                    "UPDATE jobs SET state = 'Failed', error = ?, error_code = ?, finished_at = ? \
                     WHERE id = ? AND owner = ? AND lease_token = ? AND state = 'Running' RETURNING backup_id",
                )
                .bind(reason)
                .bind(code)
                .bind(ms(now))
                .bind(job_id)
                .bind(owner)
                .bind(token)
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        let failed = row.is_some();
        if let Some(row) = row {
            let backup_id: Option<i64> = row.try_get("backup_id")?;
            if let Some(id) = backup_id {
                query(
                    "UPDATE backups SET status = 'Failed', end_time = ?, \
                     details = (details::jsonb || jsonb_build_object('error', ?::text, 'error_code', ?::text))::text WHERE id = ? AND status = 'Running'",
                )
                .bind(ms(now))
                .bind(reason)
                .bind(code)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(failed)
    }

    /// [`CatalogBackend::complete_backup`], recording the backup's repository usage in the same transaction when
    /// given (migration 0015).
    async fn complete_backup_impl(
        &self,
        job_id: i64,
        owner: &str,
        token: i64,
        done: &BackupCompletion,
        usage: Option<&crate::BackupStorage>,
    ) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        // The fencing check and the commit are one statement in one transaction: a holder whose lease was taken
        // over cannot slip a Success in after the new holder failed the job.
        let updated = query(
            "UPDATE jobs SET state = 'Success', progress = 100, finished_at = ?, heartbeat_at = ? \
             WHERE id = ? AND owner = ? AND lease_token = ? AND state = 'Running' RETURNING backup_id",
        )
        .bind(ms(done.end_time))
        .bind(ms(done.end_time))
        .bind(job_id)
        .bind(owner)
        .bind(token)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = updated else {
            return Err(CatalogError::LeaseLost(job_id));
        };
        let backup_id: Option<i64> = row.try_get("backup_id")?;
        let backup_id =
            backup_id.ok_or_else(|| CatalogError::NotFound(format!("backup of job {job_id}")))?;
        query(
            "UPDATE backups SET status = 'Success', end_time = ?, expire_time = ?, size = ?, db_names = ?, \
             repo_prefix = ?, details = ? WHERE id = ?",
        )
        .bind(ms(done.end_time))
        .bind(ms(done.expire_time))
        .bind(done.size)
        .bind(&done.db_names)
        .bind(&done.repo_prefix)
        .bind(done.details.to_string())
        .bind(backup_id)
        .execute(&mut *tx)
        .await?;
        if let Some(usage) = usage {
            let instance: String = query_scalar("SELECT instance_id FROM backups WHERE id = ?")
                .bind(backup_id)
                .fetch_one(&mut *tx)
                .await?;
            storage::record_in(&mut tx, backup_id, &instance, usage).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
