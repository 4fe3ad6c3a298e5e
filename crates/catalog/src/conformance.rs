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
    retention(&cat).await;
    schedule(&cat).await;
    audit(&cat).await;
}

async fn audit(cat: &Catalog) {
    use crate::{AuditFilter, AuditRecord};
    let at = |secs: i64| {
        Utc.timestamp_opt(1_800_000_000 + secs, 0)
            .single()
            .expect("time")
    };
    let rec =
        |secs: i64, key: Option<&str>, action: Option<&str>, code: Option<&str>| AuditRecord {
            id: 0,
            time: at(secs),
            request_id: format!("REQ-{secs}"),
            access_key_id: key.map(str::to_owned),
            user: key.map(|_| "operator".to_owned()),
            action: action.map(str::to_owned),
            resources: vec![
                "acs:dds:cn-hangzhou:1:dbinstance/dds-a".into(),
                "acs:dds:cn-hangzhou:1:dbinstance/dds-b".into(),
            ],
            source_ip: "127.0.0.1".into(),
            secure: secs % 2 == 0,
            http_status: if code.is_some() { 403 } else { 200 },
            code: code.map(str::to_owned),
        };
    assert!(cat
        .list_audit(&AuditFilter::default())
        .await
        .expect("list empty")
        .is_empty());
    cat.append_audit(&[]).await.expect("empty batch");
    cat.append_audit(&[
        rec(1, Some("AK1"), Some("DescribeBackups"), None),
        rec(2, Some("AK2"), Some("CreateBackup"), Some("Forbidden.RAM")),
        rec(2, None, None, Some("MissingAccessKeyId")),
    ])
    .await
    .expect("append");
    cat.append_audit(&[rec(3, Some("AK1"), Some("CreateBackup"), None)])
        .await
        .expect("append 2");

    let all = cat.list_audit(&AuditFilter::default()).await.expect("list");
    let ids: Vec<&str> = all.iter().map(|r| r.request_id.as_str()).collect();
    // Newest first; same time: the later insert first.
    assert_eq!(ids, ["REQ-3", "REQ-2", "REQ-2", "REQ-1"]);
    assert_eq!(all[1].access_key_id, None);
    assert_eq!(all[2].code.as_deref(), Some("Forbidden.RAM"));
    assert!(all[1].id > all[2].id && all[2].id > all[3].id);
    let first = &all[3];
    assert_eq!(
        first,
        &AuditRecord {
            id: first.id,
            ..rec(1, Some("AK1"), Some("DescribeBackups"), None)
        }
    );

    let by = |f: AuditFilter| async move {
        cat.list_audit(&f)
            .await
            .expect("filtered")
            .into_iter()
            .map(|r| r.time)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        by(AuditFilter {
            access_key_id: Some("AK1".into()),
            ..AuditFilter::default()
        })
        .await,
        [at(3), at(1)]
    );
    assert_eq!(
        by(AuditFilter {
            action: Some("createbackup".into()),
            ..AuditFilter::default()
        })
        .await,
        [at(3), at(2)]
    );
    assert_eq!(
        by(AuditFilter {
            since: Some(at(2)),
            ..AuditFilter::default()
        })
        .await,
        [at(3), at(2), at(2)]
    );
    assert_eq!(
        by(AuditFilter {
            limit: 1,
            ..AuditFilter::default()
        })
        .await,
        [at(3)]
    );
    assert_eq!(
        by(AuditFilter {
            access_key_id: Some("AK1".into()),
            action: Some("CreateBackup".into()),
            since: Some(at(1)),
            limit: 10,
        })
        .await,
        [at(3)]
    );
}

async fn schedule(cat: &Catalog) {
    use crate::ScheduledJob;
    let slot = Utc.timestamp_opt(1_900_000_000, 0).single().expect("time");
    let auto = |instance: &str| NewBackupJob {
        mode: "Automated".into(),
        ..new_job(instance, 0)
    };
    drain(cat).await;
    let created = match cat
        .create_scheduled_backup_job(&auto("dds-sched"), slot, "n1")
        .await
        .expect("schedule")
    {
        ScheduledJob::Created(c) => c,
        other => panic!("expected Created, got {other:?}"),
    };
    let (job, backup) = *created;
    assert_eq!(
        (job.mode.as_str(), backup.mode.as_str()),
        ("Automated", "Automated")
    );
    assert_eq!(job.backup_id, Some(backup.id));
    // The same slot again (another process, or after a restart): nothing happens.
    assert_eq!(
        cat.create_scheduled_backup_job(&auto("dds-sched"), slot, "n2")
            .await
            .expect("again"),
        ScheduledJob::AlreadyTaken
    );
    // The next slot meets the still-pending job: skipped and recorded, not piled up.
    let next = slot + Duration::days(1);
    assert_eq!(
        cat.create_scheduled_backup_job(&auto("dds-sched"), next, "n1")
            .await
            .expect("next"),
        ScheduledJob::Skipped {
            job_id: job.id,
            kind: "backup".into()
        }
    );
    assert_eq!(
        cat.list_jobs("dds-sched", true).await.expect("jobs").len(),
        1
    );
    let runs = cat.list_schedule_runs("dds-sched", 10).await.expect("runs");
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0].slot_start, runs[0].outcome.as_str(), runs[0].job_id),
        (next, "Skipped", Some(job.id))
    );
    assert_eq!(
        (
            runs[1].slot_start,
            runs[1].outcome.as_str(),
            runs[1].job_id,
            runs[1].owner.as_str()
        ),
        (slot, "Created", Some(job.id), "n1")
    );
    // A skipped slot stays taken.
    drain(cat).await;
    assert_eq!(
        cat.create_scheduled_backup_job(&auto("dds-sched"), next, "n1")
            .await
            .expect("again"),
        ScheduledJob::AlreadyTaken
    );
    // Many processes racing for one slot: exactly one job.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let cat = Arc::clone(cat);
        let new = auto("dds-sched-race");
        tasks.push(tokio::spawn(async move {
            cat.create_scheduled_backup_job(&new, slot, &format!("node-{i}"))
                .await
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.expect("task").expect("schedule") {
            ScheduledJob::Created(_) => created += 1,
            ScheduledJob::AlreadyTaken => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(
        cat.list_jobs("dds-sched-race", false)
            .await
            .expect("jobs")
            .len(),
        1
    );
    drain(cat).await;
}

/// Fails every pending job so that the next claim takes the caller's job.
async fn drain(cat: &Catalog) {
    let now = Utc::now();
    while let Some(j) = cat.claim_next_job("drain", now).await.expect("claim") {
        cat.fail_job(j.id, "drained", now).await.expect("fail");
    }
}

/// A successful backup of `instance` that expires at `expire`.
async fn successful_backup(cat: &Catalog, instance: &str, expire: chrono::DateTime<Utc>) -> i64 {
    drain(cat).await;
    let (job, backup) = cat
        .create_backup_job(&new_job(instance, 0))
        .await
        .expect("create");
    let claimed = cat
        .claim_next_job("node-ret", Utc::now())
        .await
        .expect("claim")
        .expect("job");
    assert_eq!(claimed.id, job.id);
    cat.complete_backup(
        job.id,
        "node-ret",
        &BackupCompletion {
            end_time: backup.start_time + Duration::minutes(5),
            expire_time: expire,
            size: 10,
            db_names: "shop".into(),
            repo_prefix: format!("backups/{instance}/{}", backup.id),
            details: serde_json::json!({}),
        },
    )
    .await
    .expect("complete");
    backup.id
}

async fn retention(cat: &Catalog) {
    let t = Utc.timestamp_opt(1_800_000_000, 0).single().expect("time");
    let inst = "dds-ret";
    let b1 = successful_backup(cat, inst, t + Duration::days(1)).await;
    let b2 = successful_backup(cat, inst, crate::permanent_expiry()).await;
    drain(cat).await;
    let (_, running) = cat
        .create_backup_job(&new_job(inst, 1))
        .await
        .expect("running backup");
    let b3 = running.id;

    let expired_ids = |v: Vec<crate::Backup>| {
        v.into_iter()
            .filter(|b| b.instance_id == inst)
            .map(|b| b.id)
            .collect::<Vec<_>>()
    };
    assert!(expired_ids(cat.list_expired_backups(t, 100).await.expect("exp")).is_empty());
    assert_eq!(
        expired_ids(
            cat.list_expired_backups(t + Duration::days(2), 100)
                .await
                .expect("exp")
        ),
        vec![b1]
    );
    // Extending the expiry takes the backup out of the expired list; only successful backups have one.
    cat.set_backup_expire_time(b1, t + Duration::days(10))
        .await
        .expect("extend");
    assert_eq!(
        cat.get_backup(b1)
            .await
            .expect("get")
            .expect("b1")
            .expire_time,
        Some(t + Duration::days(10))
    );
    assert!(expired_ids(
        cat.list_expired_backups(t + Duration::days(2), 100)
            .await
            .expect("exp")
    )
    .is_empty());
    assert!(matches!(
        cat.set_backup_expire_time(b3, t).await,
        Err(CatalogError::NotFound(_))
    ));

    // A pending restore that reads b1 protects it.
    cat.fail_job(running.job_id, "done", t)
        .await
        .expect("end b3");
    let restore = cat
        .create_job(&NewJob {
            kind: "restore".into(),
            instance_id: "dds-ret-target".into(),
            backup_id: Some(b1),
            mode: "Manual".into(),
            params: serde_json::json!({}),
            now: t,
        })
        .await
        .expect("restore job");
    assert_eq!(
        cat.mark_backup_deleting(b1).await.expect("mark"),
        crate::DeleteMark::InUse { job_id: restore.id }
    );
    assert_eq!(
        cat.get_backup(b1).await.expect("get").expect("b1").status,
        BackupStatus::Success
    );
    cat.fail_job(restore.id, "done", t)
        .await
        .expect("end restore");

    // Marking: hidden from listings, visible to get_backup and list_deleting_backups, idempotent.
    let marked = match cat.mark_backup_deleting(b1).await.expect("mark") {
        crate::DeleteMark::Marked(b) => b,
        other => panic!("expected Marked, got {other:?}"),
    };
    assert_eq!((marked.id, marked.status), (b1, BackupStatus::Deleting));
    assert!(matches!(
        cat.mark_backup_deleting(b1).await.expect("mark again"),
        crate::DeleteMark::Marked(_)
    ));
    let filter = BackupFilter {
        instance_id: Some(inst.into()),
        include_running: true,
        ..Default::default()
    };
    let page = Page {
        number: 1,
        size: 100,
    };
    let (_, listed) = cat.list_backups(&filter, page).await.expect("list");
    assert!(
        listed.iter().all(|b| b.id != b1),
        "Deleting backups are not listed"
    );
    let (n, _) = cat
        .list_backups(
            &BackupFilter {
                backup_id: Some(b1),
                ..filter.clone()
            },
            page,
        )
        .await
        .expect("list one");
    assert_eq!(n, 0);
    assert_eq!(
        cat.get_backup(b1).await.expect("get").expect("b1").status,
        BackupStatus::Deleting
    );
    assert!(cat
        .list_deleting_backups()
        .await
        .expect("deleting")
        .iter()
        .any(|b| b.id == b1));
    assert!(cat
        .set_backup_expire_time(b1, t + Duration::days(20))
        .await
        .is_err());

    // A backup whose job failed can be deleted; an unknown one is NotFound.
    assert!(matches!(
        cat.mark_backup_deleting(b3).await.expect("mark failed"),
        crate::DeleteMark::Marked(_)
    ));
    assert_eq!(
        cat.mark_backup_deleting(i64::MAX).await.expect("mark"),
        crate::DeleteMark::NotFound
    );
    // A running backup cannot be deleted.
    drain(cat).await;
    let (_, still_running) = cat
        .create_backup_job(&new_job(inst, 2))
        .await
        .expect("running backup");
    assert_eq!(
        cat.mark_backup_deleting(still_running.id)
            .await
            .expect("mark"),
        crate::DeleteMark::Running
    );

    // Row deletion only ever removes Deleting rows.
    assert!(cat.delete_backup_row(b1).await.expect("delete"));
    assert!(!cat.delete_backup_row(b1).await.expect("delete again"));
    assert!(!cat.delete_backup_row(b2).await.expect("not deleting"));
    assert!(cat.delete_backup_row(b3).await.expect("delete b3"));
    assert_eq!(cat.get_backup(b1).await.expect("get"), None);
    assert!(cat.get_backup(b2).await.expect("get").is_some());
    assert!(cat
        .list_deleting_backups()
        .await
        .expect("deleting")
        .iter()
        .all(|b| b.id != b1 && b.id != b3));
    // Ids are never reused (repository prefixes derive from them).
    drain(cat).await;
    let (_, next) = cat
        .create_backup_job(&new_job(inst, 3))
        .await
        .expect("next backup");
    assert!(next.id > still_running.id);
    drain(cat).await;
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
