//! The behaviour every catalog engine must show. Run by this crate's tests against each engine; panics on the
//! first violation (it is test code).

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};

use crate::{
    BackupCompletion, BackupFilter, BackupPolicy, BackupStatus, Catalog, CatalogError, JobState,
    NewBackupJob, NewJob, Page,
};

fn new_job(instance: &str, secs: i64) -> NewBackupJob {
    NewBackupJob {
        instance_id: instance.into(),
        method: "Logical".into(),
        mode: "Manual".into(),
        retention_days: 30,
        engine_version: "7.0".into(),
        params: serde_json::json!({"compression": "zstd"}),
        now: Utc
            .timestamp_opt(1_700_000_000 + secs, 0)
            .single()
            .expect("valid test time"),
    }
}

/// Runs every check against `cat`, which must be empty.
pub async fn run_all(cat: Catalog) {
    settings(&cat).await;
    instances_and_policy(&cat).await;
    job_lifecycle(&cat).await;
    one_active_job_under_concurrency(&cat).await;
    recovery(&cat).await;
    listing(&cat).await;
    restore_jobs(&cat).await;
}

async fn restore_jobs(cat: &Catalog) {
    let now = Utc::now();
    while let Some(j) = cat.claim_next_job("drain", now).await.expect("claim") {
        cat.fail_job(j.id, "drained", now).await.expect("fail");
    }
    let new = NewJob {
        kind: "restore".into(),
        instance_id: "dds-restore".into(),
        backup_id: Some(42),
        mode: "Manual".into(),
        params: serde_json::json!({"drop": true}),
        now,
    };
    let job = cat.create_job(&new).await.expect("create restore job");
    assert_eq!(
        (job.kind.as_str(), job.backup_id, job.state),
        ("restore", Some(42), JobState::Pending)
    );
    // A restore and a backup of the same instance never run at once, whichever came first.
    match cat.create_backup_job(&new_job("dds-restore", 0)).await {
        Err(CatalogError::ActiveJobExists { job_id, kind }) => {
            assert_eq!((job_id, kind.as_str()), (job.id, "restore"))
        }
        other => panic!("expected ActiveJobExists, got {other:?}"),
    }
    match cat.create_job(&new).await {
        Err(CatalogError::ActiveJobExists { kind, .. }) => assert_eq!(kind, "restore"),
        other => panic!("expected ActiveJobExists, got {other:?}"),
    }
    let claimed = cat
        .claim_next_job("node-r", now)
        .await
        .expect("claim")
        .expect("job");
    assert_eq!(claimed.id, job.id);
    let result = serde_json::json!({"documents": 7});
    assert!(matches!(
        cat.complete_job(job.id, "other", &result, now).await,
        Err(CatalogError::LostOwnership(_))
    ));
    cat.complete_job(job.id, "node-r", &result, now)
        .await
        .expect("complete");
    let done = cat.get_job(job.id).await.expect("get").expect("exists");
    assert_eq!((done.state, done.result), (JobState::Success, result));
    // The backup can go ahead now.
    let (b, _) = cat
        .create_backup_job(&new_job("dds-restore", 1))
        .await
        .expect("backup after restore");
    assert_eq!(b.result, serde_json::Value::Null);
}

async fn settings(cat: &Catalog) {
    assert_eq!(cat.get_setting("node_id").await.expect("get"), None);
    assert_eq!(cat.init_setting("node_id", "a").await.expect("init"), "a");
    // A second init keeps the first value: two processes starting at once agree on one value.
    assert_eq!(cat.init_setting("node_id", "b").await.expect("init"), "a");
}

async fn instances_and_policy(cat: &Catalog) {
    let t0 = Utc.timestamp_opt(1_600_000_000, 0).single().expect("time");
    let first = cat.register_instance("dds-a", t0).await.expect("register");
    let again = cat
        .register_instance("dds-a", t0 + Duration::days(3))
        .await
        .expect("register again");
    assert_eq!(first, again, "creation time must survive re-registration");
    assert_eq!(cat.get_policy("dds-a").await.expect("policy"), None);
    let p = BackupPolicy {
        backup_retention_period: 45,
        ..BackupPolicy::default()
    };
    cat.put_policy("dds-a", &p, t0).await.expect("put policy");
    assert_eq!(cat.get_policy("dds-a").await.expect("policy"), Some(p));
}

async fn job_lifecycle(cat: &Catalog) {
    let (job, backup) = cat
        .create_backup_job(&new_job("dds-life", 0))
        .await
        .expect("create");
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.backup_id, Some(backup.id));
    assert_eq!(backup.status, BackupStatus::Running);
    // Running backups are invisible to DescribeBackups until they end.
    let (n, _) = cat
        .list_backups(
            &BackupFilter {
                instance_id: Some("dds-life".into()),
                ..Default::default()
            },
            Page {
                number: 1,
                size: 30,
            },
        )
        .await
        .expect("list");
    assert_eq!(n, 0);

    let now = Utc::now();
    let claimed = cat
        .claim_next_job("node-1", now)
        .await
        .expect("claim")
        .expect("a job");
    assert_eq!(claimed.id, job.id);
    assert_eq!(claimed.state, JobState::Running);
    assert!(cat
        .claim_next_job("node-2", now)
        .await
        .expect("claim")
        .is_none());
    assert!(cat.heartbeat(job.id, "node-1", 50, now).await.expect("hb"));
    assert!(!cat.heartbeat(job.id, "node-2", 50, now).await.expect("hb"));
    assert!(matches!(
        cat.complete_backup(job.id, "node-2", &completion(now))
            .await,
        Err(CatalogError::LostOwnership(_))
    ));
    cat.complete_backup(job.id, "node-1", &completion(now))
        .await
        .expect("complete");
    let b = cat
        .get_backup(backup.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(b.status, BackupStatus::Success);
    assert_eq!(b.size, 1234);
    assert_eq!(b.db_names, "a,b");
    let j = cat.get_job(job.id).await.expect("get").expect("exists");
    assert_eq!(j.state, JobState::Success);
    assert_eq!(j.progress, 100);
    // The instance is free again.
    let (job2, backup2) = cat
        .create_backup_job(&new_job("dds-life", 10))
        .await
        .expect("second");
    cat.fail_job(job2.id, "boom", now).await.expect("fail");
    let b2 = cat
        .get_backup(backup2.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(b2.status, BackupStatus::Failed);
    assert_eq!(b2.details["error"], "boom");
    assert_eq!(
        cat.get_job(job2.id)
            .await
            .expect("get")
            .expect("exists")
            .error
            .as_deref(),
        Some("boom")
    );
}

fn completion(now: chrono::DateTime<Utc>) -> BackupCompletion {
    BackupCompletion {
        end_time: now,
        expire_time: now + Duration::days(30),
        size: 1234,
        db_names: "a,b".into(),
        repo_prefix: "backups/x/1/".into(),
        details: serde_json::json!({"compression": "zstd"}),
    }
}

async fn one_active_job_under_concurrency(cat: &Catalog) {
    let mut tasks = Vec::new();
    for i in 0..64 {
        let cat = Arc::clone(cat);
        tasks.push(tokio::spawn(async move {
            cat.create_backup_job(&new_job("dds-race", i)).await
        }));
    }
    let mut ok = 0;
    let mut exists = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => ok += 1,
            Err(CatalogError::ActiveJobExists { .. }) => exists += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((ok, exists), (1, 63));
}

async fn recovery(cat: &Catalog) {
    let now = Utc::now();
    // Drain whatever the earlier checks left pending.
    while let Some(j) = cat.claim_next_job("drain", now).await.expect("claim") {
        cat.fail_job(j.id, "drained", now).await.expect("fail");
    }
    let (job, backup) = cat
        .create_backup_job(&new_job("dds-crash", 0))
        .await
        .expect("create");
    cat.claim_next_job("node-old", now)
        .await
        .expect("claim")
        .expect("job");
    // Another live node with a fresh heartbeat is not touched by our recovery.
    let (other, _) = cat
        .create_backup_job(&new_job("dds-other", 0))
        .await
        .expect("create");
    cat.claim_next_job("node-live", now)
        .await
        .expect("claim")
        .expect("job");

    let failed = cat
        .recover_interrupted("node-old", now - Duration::minutes(5), now)
        .await
        .expect("recover");
    assert_eq!(
        failed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![job.id]
    );
    assert_eq!(
        cat.get_backup(backup.id)
            .await
            .expect("get")
            .expect("exists")
            .status,
        BackupStatus::Failed
    );
    assert_eq!(
        cat.get_job(other.id)
            .await
            .expect("get")
            .expect("exists")
            .state,
        JobState::Running
    );
    // A stale heartbeat is recovered by any node.
    let later = now + Duration::minutes(10);
    let failed = cat
        .recover_interrupted("node-new", later - Duration::minutes(5), later)
        .await
        .expect("recover");
    assert_eq!(
        failed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![other.id]
    );
}

async fn listing(cat: &Catalog) {
    let base = Utc.timestamp_opt(1_800_000_000, 0).single().expect("time");
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut n = new_job("dds-list", 0);
        n.now = base + Duration::hours(i);
        let (job, backup) = cat.create_backup_job(&n).await.expect("create");
        let claimed = cat
            .claim_next_job("lister", base)
            .await
            .expect("claim")
            .expect("job");
        assert_eq!(claimed.id, job.id);
        cat.complete_backup(job.id, "lister", &completion(n.now))
            .await
            .expect("complete");
        ids.push(backup.id);
    }
    let filter = BackupFilter {
        instance_id: Some("dds-list".into()),
        ..Default::default()
    };
    let (n, page1) = cat
        .list_backups(&filter, Page { number: 1, size: 3 })
        .await
        .expect("list");
    assert_eq!(n, 7);
    assert_eq!(
        page1.iter().map(|b| b.id).collect::<Vec<_>>(),
        vec![ids[6], ids[5], ids[4]]
    );
    let (_, page3) = cat
        .list_backups(&filter, Page { number: 3, size: 3 })
        .await
        .expect("list");
    assert_eq!(page3.iter().map(|b| b.id).collect::<Vec<_>>(), vec![ids[0]]);
    let ranged = BackupFilter {
        start_from: Some(base + Duration::hours(2)),
        start_to: Some(base + Duration::hours(4)),
        ..filter.clone()
    };
    let (n, _) = cat
        .list_backups(
            &ranged,
            Page {
                number: 1,
                size: 30,
            },
        )
        .await
        .expect("list");
    assert_eq!(n, 3);
    let by_id = BackupFilter {
        backup_id: Some(ids[3]),
        ..filter.clone()
    };
    let (n, one) = cat
        .list_backups(
            &by_id,
            Page {
                number: 1,
                size: 30,
            },
        )
        .await
        .expect("list");
    assert_eq!((n, one[0].id), (1, ids[3]));
    let other_instance = BackupFilter {
        instance_id: Some("dds-none".into()),
        ..Default::default()
    };
    assert_eq!(
        cat.list_backups(
            &other_instance,
            Page {
                number: 1,
                size: 30
            }
        )
        .await
        .expect("list")
        .0,
        0
    );
}
