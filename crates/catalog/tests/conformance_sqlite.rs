//! Runs the catalog conformance suite against every SQLite flavour.

use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cat = ddsvault_catalog::SqliteCatalog::open_file(&dir.path().join("catalog.db"))
        .await
        .expect("open");
    ddsvault_catalog::conformance::run_all(Arc::new(cat)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_conforms() {
    let cat = ddsvault_catalog::open("sqlite::memory:")
        .await
        .expect("open");
    ddsvault_catalog::conformance::run_all(cat).await;
}

#[tokio::test]
async fn reopening_keeps_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.db");
    let url = format!("sqlite://{}", path.display());
    {
        let cat = ddsvault_catalog::open(&url).await.expect("open");
        cat.init_setting("node_id", "n1").await.expect("init");
    }
    let cat = ddsvault_catalog::open(&url).await.expect("reopen");
    assert_eq!(
        cat.get_setting("node_id").await.expect("get").as_deref(),
        Some("n1")
    );
}

#[tokio::test]
async fn unsupported_url_is_refused() {
    let err = ddsvault_catalog::open("mysql://x")
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains("unsupported catalog url"), "{err}");
}

/// A catalog created before the retention migration keeps its backups, ids and AUTOINCREMENT sequence.
#[tokio::test]
async fn upgrade_from_the_first_schema_keeps_backups() {
    use ddsvault_catalog::{BackupStatus, CatalogBackend, DeleteMark};
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("old-migrations");
    std::fs::create_dir(&old).expect("mkdir");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for f in ["0001_init.sql", "0002_job_result.sql"] {
        std::fs::copy(src.join(f), old.join(f)).expect("copy");
    }
    let path = dir.path().join("c.db");
    {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true),
            )
            .await
            .expect("pool");
        sqlx::migrate::Migrator::new(old.as_path())
            .await
            .expect("migrator")
            .run(&pool)
            .await
            .expect("old schema");
        sqlx::query(
            "INSERT INTO jobs (id, kind, instance_id, backup_id, state, mode, params, created_at) \
             VALUES (3, 'backup', 'dds-old', 7, 'Success', 'Manual', '{}', 1)",
        )
        .execute(&pool)
        .await
        .expect("job");
        sqlx::query(
            "INSERT INTO backups (id, job_id, instance_id, status, method, mode, backup_type, start_time, \
             end_time, expire_time, retention_days) VALUES (7, 3, 'dds-old', 'Success', 'Logical', 'Manual', \
             'FullBackup', 1, 2, 3, 30)",
        )
        .execute(&pool)
        .await
        .expect("backup");
        pool.close().await;
    }
    let cat = ddsvault_catalog::SqliteCatalog::open_file(&path)
        .await
        .expect("upgrade");
    let b = cat.get_backup(7).await.expect("get").expect("kept");
    assert_eq!(
        (b.status, b.job_id, b.retention_days),
        (BackupStatus::Success, 3, 30)
    );
    let (_, next) = cat
        .create_backup_job(&ddsvault_catalog::NewBackupJob {
            instance_id: "dds-old".into(),
            method: ddsvault_catalog::BackupMethod::Logical,
            mode: "Manual".into(),
            retention_days: 30,
            engine_version: String::new(),
            params: serde_json::json!({}),
            now: chrono::Utc::now(),
        })
        .await
        .expect("new backup");
    assert!(next.id > 7, "ids continue after the old ones: {}", next.id);
    assert!(matches!(
        cat.mark_backup_deleting(7).await.expect("mark"),
        DeleteMark::Marked(_)
    ));
}

/// A catalog from before migration 0006 keeps its schedule slots (as `standard` ones), and a taken slot stays
/// taken.
#[tokio::test]
async fn upgrade_keeps_schedule_runs_as_standard_slots() {
    use chrono::TimeZone;
    use ddsvault_catalog::{CatalogBackend, ScheduledJob, SCHEDULE_STANDARD};
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("old-migrations");
    std::fs::create_dir(&old).expect("mkdir");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for f in [
        "0001_init.sql",
        "0002_job_result.sql",
        "0003_backup_deleting.sql",
        "0004_schedule_runs.sql",
    ] {
        std::fs::copy(src.join(f), old.join(f)).expect("copy");
    }
    let path = dir.path().join("c.db");
    let slot = chrono::Utc
        .timestamp_opt(1_900_000_000, 0)
        .single()
        .expect("time");
    {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true),
            )
            .await
            .expect("pool");
        sqlx::migrate::Migrator::new(old.as_path())
            .await
            .expect("migrator")
            .run(&pool)
            .await
            .expect("old schema");
        sqlx::query(
            "INSERT INTO schedule_runs (instance_id, slot_start, owner, claimed_at, outcome, job_id, detail) \
             VALUES ('dds-old', ?, 'n1', ?, 'Skipped', 4, 'a restore job (4) was active')",
        )
        .bind(slot.timestamp_millis())
        .bind(slot.timestamp_millis())
        .execute(&pool)
        .await
        .expect("slot");
        pool.close().await;
    }
    let cat = ddsvault_catalog::SqliteCatalog::open_file(&path)
        .await
        .expect("upgrade");
    let runs = cat.list_schedule_runs("dds-old", 10).await.expect("runs");
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (
            runs[0].schedule.as_str(),
            runs[0].slot_start,
            runs[0].outcome.as_str(),
            runs[0].job_id
        ),
        (SCHEDULE_STANDARD, slot, "Skipped", Some(4))
    );
    let again = cat
        .create_scheduled_backup_job(
            &ddsvault_catalog::NewBackupJob {
                instance_id: "dds-old".into(),
                method: ddsvault_catalog::BackupMethod::Logical,
                mode: "Automated".into(),
                retention_days: 30,
                engine_version: String::new(),
                params: serde_json::json!({}),
                now: slot,
            },
            slot,
            "n2",
        )
        .await
        .expect("schedule");
    assert_eq!(again, ScheduledJob::AlreadyTaken);
}

/// A catalog from before the identity migration keeps its AccessKeys, marked `plain` so the server seals them.
#[tokio::test]
async fn upgrade_keeps_access_keys_as_plain() {
    use ddsvault_catalog::{CatalogBackend, SECRET_PLAIN};
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("old-migrations");
    std::fs::create_dir(&old).expect("mkdir");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for f in ["0001_init.sql", "0002_job_result.sql"] {
        std::fs::copy(src.join(f), old.join(f)).expect("copy");
    }
    let path = dir.path().join("c.db");
    {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true),
            )
            .await
            .expect("pool");
        sqlx::migrate::Migrator::new(old.as_path())
            .await
            .expect("migrator")
            .run(&pool)
            .await
            .expect("old schema");
        sqlx::query(
            "INSERT INTO access_keys (id, secret, user_name, status, source, created_at) \
             VALUES ('LTAIold', 'old-secret', 'root', 'Active', 'generated', 1)",
        )
        .execute(&pool)
        .await
        .expect("key");
        pool.close().await;
    }
    let cat = ddsvault_catalog::SqliteCatalog::open_file(&path)
        .await
        .expect("upgrade");
    let snap = cat.load_identities().await.expect("load");
    assert_eq!(snap.keys.len(), 1);
    let k = &snap.keys[0];
    assert_eq!(
        (k.id.as_str(), k.secret.as_str(), k.secret_format.as_str()),
        ("LTAIold", "old-secret", SECRET_PLAIN)
    );
    assert!(k.active && k.last_used_at.is_none());
    assert!(snap.users.is_empty() && snap.policies.is_empty());
}
