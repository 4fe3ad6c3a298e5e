//! The behaviour every catalog engine must show. Run by this crate's tests against each engine; panics on the
//! first violation (it is test code).

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};

#[path = "conformance_nodes.rs"]
mod nodes;

use crate::{
    BackupCompletion, BackupFilter, BackupPolicy, BackupStatus, Catalog, CatalogError, JobState,
    NewBackupJob, NewJob, Page,
};

/// The lease the checks' claims take.
const LEASE: Duration = Duration::seconds(30);

/// Now, at the catalog's precision (milliseconds), so that times read back compare equal.
fn now_ms() -> chrono::DateTime<Utc> {
    let now = Utc::now();
    Utc.timestamp_millis_opt(now.timestamp_millis())
        .single()
        .expect("valid time")
}

fn new_job(instance: &str, secs: i64) -> NewBackupJob {
    NewBackupJob {
        instance_id: instance.into(),
        method: crate::BackupMethod::Logical,
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
    claimed_backup_job(&cat).await;
    one_active_job_under_concurrency(&cat).await;
    recovery(&cat).await;
    listing(&cat).await;
    restore_jobs(&cat).await;
    retention(&cat).await;
    schedule(&cat).await;
    totals_match_rows(&cat).await;
    identities(&cat).await;
    config_identities(&cat).await;
    high_frequency_slots(&cat).await;
    advanced_policies(&cat).await;
    retention_lock(&cat).await;
    audit(&cat).await;
    stats(&cat).await;
    storage_usage(&cat).await;
    provisioned_instances(&cat).await;
    restore_drills(&cat).await;
    nodes::run_all(&cat).await;
    registered_instances(&cat).await;
}

/// Run-time registrations (migration 0018): created with their policy in one step, duplicates of registered or
/// provisioned ids refused without writing, updated in place, never removed while a job is active.
async fn registered_instances(cat: &Catalog) {
    use crate::{NewProvisionedInstance, RegisteredInstance};
    let t0 = Utc.timestamp_opt(1_970_000_000, 0).single().expect("time");
    let reg = |id: &str| RegisteredInstance {
        id: id.into(),
        uri: "sealed:abc".into(),
        storage_type: "local_ssd".into(),
        data_path: None,
        node: None,
        description: "d".into(),
        created_at: t0,
        updated_at: t0,
    };
    assert!(cat
        .list_registered_instances()
        .await
        .expect("list")
        .is_empty());
    let policy = BackupPolicy {
        preferred_backup_time: "03:00Z-04:00Z".into(),
        backup_retention_period: 9,
        ..BackupPolicy::default()
    };
    cat.create_registered_instance(&reg("dds-r1"), Some(&policy))
        .await
        .expect("register r1");
    assert_eq!(
        cat.get_policy("dds-r1").await.expect("policy"),
        Some(policy.clone())
    );
    assert_eq!(
        cat.register_instance("dds-r1", t0 + Duration::days(1))
            .await
            .expect("instance row")
            .created_at,
        t0,
        "the id is registered as an instance in the same step"
    );
    let mut r2 = reg("dds-r2");
    r2.data_path = Some("/data/r2".into());
    r2.node = Some("node-b".into());
    cat.create_registered_instance(&r2, None)
        .await
        .expect("register r2");
    assert_eq!(cat.get_policy("dds-r2").await.expect("policy"), None);
    assert_eq!(
        cat.get_registered_instance("dds-r2").await.expect("get"),
        Some(r2.clone())
    );
    // A duplicate writes nothing (the policy of the existing one is untouched).
    let other_policy = BackupPolicy {
        backup_retention_period: 30,
        ..BackupPolicy::default()
    };
    let mut dup = reg("dds-r1");
    dup.uri = "sealed:other".into();
    assert!(matches!(
        cat.create_registered_instance(&dup, Some(&other_policy))
            .await,
        Err(CatalogError::AlreadyExists(_))
    ));
    assert_eq!(
        cat.get_policy("dds-r1").await.expect("policy"),
        Some(policy)
    );
    assert_eq!(
        cat.get_registered_instance("dds-r1")
            .await
            .expect("get")
            .map(|r| r.uri),
        Some("sealed:abc".into())
    );
    // The id of a provisioned instance is taken too.
    cat.create_provisioned_instance(
        &NewProvisionedInstance {
            id: "dds-rp".into(),
            port: 41900,
            dir: "/x/dds-rp".into(),
            source_instance_id: "dds-r1".into(),
            backup_id: None,
            restore_time: None,
            description: String::new(),
            now: t0,
        },
        &NewJob {
            kind: crate::JobKind::Provision,
            instance_id: "dds-rp".into(),
            backup_id: None,
            mode: "Manual".into(),
            params: serde_json::json!({}),
            now: t0,
        },
    )
    .await
    .expect("provision");
    assert!(matches!(
        cat.create_registered_instance(&reg("dds-rp"), None).await,
        Err(CatalogError::AlreadyExists(_))
    ));
    assert_eq!(
        cat.get_registered_instance("dds-rp").await.expect("get"),
        None
    );
    // Updates replace the fields, keep the creation time.
    let mut changed = r2.clone();
    changed.uri = "sealed:new".into();
    changed.data_path = None;
    changed.node = None;
    changed.storage_type = "cloud_essd".into();
    changed.created_at = t0 + Duration::days(5);
    changed.updated_at = t0 + Duration::days(5);
    cat.update_registered_instance(&changed)
        .await
        .expect("update");
    let got = cat
        .get_registered_instance("dds-r2")
        .await
        .expect("get")
        .expect("row");
    assert_eq!(
        (
            got.uri.as_str(),
            got.data_path,
            got.node,
            got.storage_type.as_str()
        ),
        ("sealed:new", None, None, "cloud_essd")
    );
    assert_eq!(
        (got.created_at, got.updated_at),
        (t0, t0 + Duration::days(5))
    );
    assert!(matches!(
        cat.update_registered_instance(&reg("dds-nope")).await,
        Err(CatalogError::NotFound(_))
    ));
    let ids: Vec<String> = cat
        .list_registered_instances()
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["dds-r1", "dds-r2"]);
    // Not removed while a job is active; removed once it ended, and only once.
    let job = cat
        .create_job(&NewJob {
            kind: crate::JobKind::Restore,
            instance_id: "dds-r1".into(),
            backup_id: None,
            mode: "Manual".into(),
            params: serde_json::json!({}),
            now: t0,
        })
        .await
        .expect("job");
    match cat.delete_registered_instance("dds-r1").await {
        Err(CatalogError::ActiveJobExists { job_id, kind }) => {
            assert_eq!((job_id, kind), (job.id, Some(crate::JobKind::Restore)))
        }
        other => panic!("expected ActiveJobExists, got {other:?}"),
    }
    assert!(cat
        .get_registered_instance("dds-r1")
        .await
        .expect("get")
        .is_some());
    cat.fail_job_with_code(job.id, "X", "ended", t0)
        .await
        .expect("fail job");
    assert!(cat
        .delete_registered_instance("dds-r1")
        .await
        .expect("delete"));
    assert!(!cat
        .delete_registered_instance("dds-r1")
        .await
        .expect("delete again"));
    assert_eq!(
        cat.get_registered_instance("dds-r1").await.expect("get"),
        None
    );
    // Registering the id again is allowed (its backups are still attached to it).
    cat.create_registered_instance(&reg("dds-r1"), None)
        .await
        .expect("register again");
}

async fn provisioned_instances(cat: &Catalog) {
    use crate::{NewProvisionedInstance, ProvisionStatus};
    let now = Utc.timestamp_opt(1_960_000_000, 0).single().expect("time");
    let new = |id: &str, port: u16| NewProvisionedInstance {
        id: id.into(),
        port,
        dir: format!("/p/{id}"),
        source_instance_id: "dds-src".into(),
        backup_id: Some(7),
        restore_time: None,
        description: "restored".into(),
        now,
    };
    let job = |id: &str| NewJob {
        kind: crate::JobKind::Provision,
        instance_id: id.into(),
        backup_id: Some(7),
        mode: "Manual".into(),
        params: serde_json::json!({"source_instance": "dds-src"}),
        now,
    };
    assert!(cat
        .list_provisioned_instances()
        .await
        .expect("list")
        .is_empty());
    let (inst, j) = cat
        .create_provisioned_instance(&new("dds-p1", 41000), &job("dds-p1"))
        .await
        .expect("create");
    assert_eq!(inst.status, ProvisionStatus::Creating);
    assert_eq!(inst.job_id, Some(j.id));
    assert_eq!(inst.port, 41000);
    assert_eq!(j.kind, crate::JobKind::Provision);
    assert_eq!(j.instance_id, "dds-p1");
    assert_eq!(j.state, JobState::Pending);
    // Same id, or same port: refused, and nothing of the second attempt is written (no second job).
    for (id, port) in [("dds-p1", 41001), ("dds-p2", 41000)] {
        assert!(matches!(
            cat.create_provisioned_instance(&new(id, port), &job(id))
                .await,
            Err(CatalogError::AlreadyExists(_))
        ));
    }
    assert!(cat
        .get_provisioned_instance("dds-p2")
        .await
        .expect("get")
        .is_none());
    assert!(cat
        .list_jobs("dds-p2", false)
        .await
        .expect("jobs")
        .is_empty());
    assert_eq!(cat.list_jobs("dds-p1", false).await.expect("jobs").len(), 1);
    // Registered as an instance: the registration keeps the creation time.
    let rec = cat
        .register_instance("dds-p1", now + Duration::days(1))
        .await
        .expect("register");
    assert_eq!(rec.created_at, now);

    cat.set_provisioned_status("dds-p1", ProvisionStatus::Failed, Some("boom"), now)
        .await
        .expect("fail");
    let got = cat
        .get_provisioned_instance("dds-p1")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.status, ProvisionStatus::Failed);
    assert_eq!(got.error.as_deref(), Some("boom"));
    cat.set_provisioned_status("dds-p1", ProvisionStatus::Running, None, now)
        .await
        .expect("run");
    let got = cat
        .get_provisioned_instance("dds-p1")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.status, ProvisionStatus::Running);
    assert_eq!(got.error, None);
    assert!(matches!(
        cat.set_provisioned_status("dds-nope", ProvisionStatus::Running, None, now)
            .await,
        Err(CatalogError::NotFound(_))
    ));
    cat.create_provisioned_instance(&new("dds-p2", 41001), &job("dds-p2"))
        .await
        .expect("second");
    let ids: Vec<String> = cat
        .list_provisioned_instances()
        .await
        .expect("list")
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, ["dds-p1", "dds-p2"]);
    assert!(cat
        .delete_provisioned_instance("dds-p1")
        .await
        .expect("delete"));
    assert!(!cat
        .delete_provisioned_instance("dds-p1")
        .await
        .expect("again"));
    // Its port is free again.
    cat.create_provisioned_instance(&new("dds-p3", 41000), &job("dds-p3"))
        .await
        .expect("port reused");
}

async fn high_frequency_slots(cat: &Catalog) {
    use crate::{ScheduledJob, SCHEDULE_HIGH_FREQUENCY, SCHEDULE_STANDARD};
    let slot = Utc.timestamp_opt(1_950_000_000, 0).single().expect("time");
    let auto = NewBackupJob {
        mode: "Automated".into(),
        ..new_job("dds-hf", 0)
    };
    drain(cat).await;
    // The same instant is a slot of each schedule, independently.
    let ScheduledJob::Created(first) = cat
        .create_scheduled_job(&auto, SCHEDULE_HIGH_FREQUENCY, slot, "n1")
        .await
        .expect("hf")
    else {
        panic!("expected Created");
    };
    assert_eq!(
        cat.create_scheduled_job(&auto, SCHEDULE_HIGH_FREQUENCY, slot, "n2")
            .await
            .expect("again"),
        ScheduledJob::AlreadyTaken
    );
    let (hf_job, hf_backup) = *first;
    assert!(matches!(
        cat.create_scheduled_backup_job(&auto, slot, "n1")
            .await
            .expect("standard"),
        ScheduledJob::Skipped { job_id, .. } if job_id == hf_job.id
    ));
    let runs = cat.list_schedule_runs("dds-hf", 10).await.expect("runs");
    let mut kinds: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| (r.schedule.as_str(), r.outcome.as_str()))
        .collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        vec![
            (SCHEDULE_HIGH_FREQUENCY, "Created"),
            (SCHEDULE_STANDARD, "Skipped")
        ]
    );
    // Only slots that created a backup are listed, with their schedule; manual backups are not.
    drain(cat).await;
    cat.create_backup_job(&new_job("dds-hf", 1))
        .await
        .expect("manual");
    drain(cat).await;
    let later = slot + Duration::minutes(30);
    let ScheduledJob::Created(second) = cat
        .create_scheduled_backup_job(&auto, later, "n1")
        .await
        .expect("standard")
    else {
        panic!("expected Created");
    };
    let slots = cat.list_backup_slots("dds-hf").await.expect("slots");
    assert_eq!(
        slots,
        vec![
            crate::BackupSlot {
                backup_id: hf_backup.id,
                schedule: SCHEDULE_HIGH_FREQUENCY.into(),
                slot_start: slot,
            },
            crate::BackupSlot {
                backup_id: second.1.id,
                schedule: SCHEDULE_STANDARD.into(),
                slot_start: later,
            },
        ]
    );
    assert!(cat
        .list_backup_slots("dds-none")
        .await
        .expect("slots")
        .is_empty());
    drain(cat).await;
}

async fn advanced_policies(cat: &Catalog) {
    use crate::{AdvancedPolicy, DataPolicy};
    let now = Utc.timestamp_opt(1_800_000_000, 0).single().expect("time");
    cat.register_instance("dds-adv", now)
        .await
        .expect("register");
    assert_eq!(cat.get_advanced_policy("dds-adv").await.expect("get"), None);
    let adv = AdvancedPolicy {
        enabled: true,
        data_policies: vec![DataPolicy {
            policy_id: "1".into(),
            backup_policy: "dayOfMonth".into(),
            preferred_backup_period: "1,-1".into(),
            retention_type: "delay".into(),
            retention_period: 365,
            ..DataPolicy::default()
        }],
        log_policies: Vec::new(),
        last_policy_id: 1,
    };
    let standard = BackupPolicy {
        preferred_backup_time: "05:00Z-06:00Z".into(),
        ..BackupPolicy::default()
    };
    cat.put_advanced_policy("dds-adv", &standard, &adv, now)
        .await
        .expect("put");
    assert_eq!(
        cat.get_advanced_policy("dds-adv").await.expect("get"),
        Some(adv.clone())
    );
    assert_eq!(
        cat.get_policy("dds-adv").await.expect("get"),
        Some(standard)
    );
    let emptied = AdvancedPolicy {
        data_policies: Vec::new(),
        ..adv
    };
    cat.put_advanced_policy("dds-adv", &BackupPolicy::default(), &emptied, now)
        .await
        .expect("replace");
    assert_eq!(
        cat.get_advanced_policy("dds-adv").await.expect("get"),
        Some(emptied)
    );
}

async fn retention_lock(cat: &Catalog) {
    let t0 = Utc.timestamp_opt(1_800_000_000, 0).single().expect("time");
    let cool = Duration::hours(24);
    assert_eq!(cat.get_retention_lock("dds-lock").await.expect("get"), None);
    // Disabling no lock changes nothing.
    assert_eq!(
        cat.set_retention_lock("dds-lock", false, t0, cool)
            .await
            .expect("off"),
        None
    );
    let on = cat
        .set_retention_lock("dds-lock", true, t0, cool)
        .await
        .expect("on")
        .expect("lock");
    assert_eq!((on.enabled_at, on.unlock_at), (t0, None));
    assert_eq!(
        cat.get_retention_lock("dds-lock").await.expect("get"),
        Some(on.clone())
    );
    let t1 = t0 + Duration::hours(1);
    let unlocking = cat
        .set_retention_lock("dds-lock", false, t1, cool)
        .await
        .expect("disable")
        .expect("lock");
    assert_eq!(unlocking.unlock_at, Some(t1 + cool));
    // Requests racing: one cooling-off, never shortened.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let cat = Arc::clone(cat);
        tasks.push(tokio::spawn(async move {
            cat.set_retention_lock(
                "dds-lock",
                false,
                t1 + Duration::minutes(i),
                Duration::seconds(1),
            )
            .await
        }));
    }
    for t in tasks {
        let l = t.await.expect("task").expect("disable").expect("lock");
        assert_eq!(l.unlock_at, Some(t1 + cool));
    }
    assert!(cat
        .get_retention_lock("dds-lock")
        .await
        .expect("get")
        .expect("lock")
        .is_active(t1 + cool - Duration::seconds(1)));
    // Enabling cancels the unlock; after an unlock took effect, disabling removes the record.
    let back = cat
        .set_retention_lock("dds-lock", true, t1, cool)
        .await
        .expect("on")
        .expect("lock");
    assert_eq!((back.enabled_at, back.unlock_at), (t0, None));
    cat.set_retention_lock("dds-lock", false, t1, cool)
        .await
        .expect("off");
    assert_eq!(
        cat.set_retention_lock("dds-lock", false, t1 + cool, cool)
            .await
            .expect("after unlock"),
        None
    );
    assert_eq!(cat.get_retention_lock("dds-lock").await.expect("get"), None);
    assert_eq!(
        cat.get_retention_lock("dds-other").await.expect("get"),
        None
    );

    // A requested deletion checks the lock in its own transaction: refused while the lock holds (the backup is
    // untouched), allowed once the unlock took effect; expiry deletions never look at the lock.
    let expire = Utc::now() + Duration::days(3);
    let b = successful_backup(cat, "dds-lockdel", expire).await;
    let other = successful_backup(cat, "dds-lockdel", expire).await;
    // Whole seconds: the catalog keeps milliseconds.
    let now = Utc
        .timestamp_opt(Utc::now().timestamp(), 0)
        .single()
        .expect("time");
    cat.set_retention_lock("dds-lockdel", true, now, cool)
        .await
        .expect("lock");
    assert_eq!(
        cat.mark_backup_deleting_unless_locked(b, now)
            .await
            .expect("mark"),
        crate::DeleteMark::Locked { unlock_at: None }
    );
    assert_eq!(
        cat.get_backup(b).await.expect("get").expect("b").status,
        BackupStatus::Success
    );
    let unlocking = cat
        .set_retention_lock("dds-lockdel", false, now, cool)
        .await
        .expect("unlock")
        .expect("lock");
    assert_eq!(
        cat.mark_backup_deleting_unless_locked(b, now + Duration::hours(1))
            .await
            .expect("mark"),
        crate::DeleteMark::Locked {
            unlock_at: unlocking.unlock_at
        }
    );
    assert!(matches!(
        cat.mark_backup_deleting_unless_locked(b, now + cool)
            .await
            .expect("mark"),
        crate::DeleteMark::Marked(_)
    ));
    cat.set_retention_lock("dds-lockdel", true, now + cool, cool)
        .await
        .expect("lock again");
    assert!(matches!(
        cat.mark_backup_deleting(other).await.expect("mark"),
        crate::DeleteMark::Marked(_)
    ));
}

/// `list_backups`' total equals the number of rows it can page through, for every instance-level filter,
/// whichever way the engine counts (the filters with a time bound take the plain counting path).
async fn totals_match_rows(cat: &Catalog) {
    // A running backup and a failed one beside the successful, deleting and deleted ones earlier checks left.
    drain(cat).await;
    let (failed, _) = cat
        .create_backup_job(&new_job("dds-totals", 0))
        .await
        .expect("create");
    cat.claim_next_job("totals", Utc::now(), Utc::now() + LEASE)
        .await
        .expect("claim")
        .expect("job");
    cat.fail_job(failed.id, "for the count", Utc::now())
        .await
        .expect("fail");
    successful_backup(cat, "dds-totals", Utc::now() + Duration::days(3)).await;
    cat.create_backup_job(&new_job("dds-totals", 0))
        .await
        .expect("create running");
    cat.claim_next_job("totals", Utc::now(), Utc::now() + LEASE)
        .await
        .expect("claim")
        .expect("job");
    let everything = Page {
        number: 1,
        size: 100_000,
    };
    let mut instances: Vec<Option<String>> = vec![None, Some("dds-none".into())];
    let (_, all) = cat
        .list_backups(
            &BackupFilter {
                include_running: true,
                ..Default::default()
            },
            everything,
        )
        .await
        .expect("list all");
    for b in &all {
        if !instances.contains(&Some(b.instance_id.clone())) {
            instances.push(Some(b.instance_id.clone()));
        }
    }
    assert!(all.iter().any(|b| b.status == BackupStatus::Running));
    assert!(all.iter().any(|b| b.status == BackupStatus::Failed));
    for instance_id in instances {
        for include_running in [false, true] {
            let filter = BackupFilter {
                instance_id: instance_id.clone(),
                include_running,
                ..Default::default()
            };
            let (total, rows) = cat.list_backups(&filter, everything).await.expect("list");
            assert_eq!(total, rows.len() as u64, "{filter:?}");
            let bounded = BackupFilter {
                start_from: Some(Utc.timestamp_opt(0, 0).single().expect("epoch")),
                ..filter.clone()
            };
            let (bounded_total, _) = cat.list_backups(&bounded, everything).await.expect("list");
            assert_eq!(total, bounded_total, "{filter:?}");
            assert!(rows.iter().all(|b| b.status != BackupStatus::Deleting));
            assert!(include_running || rows.iter().all(|b| b.status != BackupStatus::Running));
        }
    }
    drain(cat).await;
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

    // A batch larger than any engine's statement size keeps every record, in order.
    let big: Vec<AuditRecord> = (100..400)
        .map(|s| rec(s, Some("AKbig"), Some("DescribeBackups"), None))
        .collect();
    cat.append_audit(&big).await.expect("big batch");
    let stored = cat
        .list_audit(&AuditFilter {
            access_key_id: Some("AKbig".into()),
            limit: 1000,
            ..AuditFilter::default()
        })
        .await
        .expect("list big");
    let mut want: Vec<AuditRecord> = big;
    want.reverse();
    assert_eq!(stored.len(), want.len());
    for (got, want) in stored.iter().zip(&want) {
        assert_eq!(
            got,
            &AuditRecord {
                id: got.id,
                ..want.clone()
            }
        );
    }
    assert!(stored.windows(2).all(|w| w[0].id > w[1].id));

    // Pruning removes exactly the records older than the cut-off.
    let total = cat
        .list_audit(&AuditFilter {
            limit: 10_000,
            ..AuditFilter::default()
        })
        .await
        .expect("all")
        .len();
    assert_eq!(cat.prune_audit(at(2)).await.expect("prune"), 1);
    assert_eq!(cat.prune_audit(at(2)).await.expect("prune again"), 0);
    let left = cat
        .list_audit(&AuditFilter {
            limit: 10_000,
            ..AuditFilter::default()
        })
        .await
        .expect("left");
    assert_eq!(left.len(), total - 1);
    assert!(left.iter().all(|r| r.time >= at(2)));
    assert_eq!(
        cat.prune_audit(at(250)).await.expect("prune many"),
        2 + 1 + 150
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
            kind: crate::JobKind::Backup
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
    while let Some(j) = cat
        .claim_next_job("drain", now, now + LEASE)
        .await
        .expect("claim")
    {
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
        .claim_next_job("node-ret", Utc::now(), Utc::now() + LEASE)
        .await
        .expect("claim")
        .expect("job");
    assert_eq!(claimed.id, job.id);
    cat.complete_backup(
        job.id,
        "node-ret",
        claimed.lease_token,
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
            kind: crate::JobKind::Restore,
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
    while let Some(j) = cat
        .claim_next_job("drain", now, now + LEASE)
        .await
        .expect("claim")
    {
        cat.fail_job(j.id, "drained", now).await.expect("fail");
    }
    let new = NewJob {
        kind: crate::JobKind::Restore,
        instance_id: "dds-restore".into(),
        backup_id: Some(42),
        mode: "Manual".into(),
        params: serde_json::json!({"drop": true}),
        now,
    };
    let job = cat.create_job(&new).await.expect("create restore job");
    assert_eq!(
        (job.kind, job.backup_id, job.state),
        (crate::JobKind::Restore, Some(42), JobState::Pending)
    );
    // A restore and a backup of the same instance never run at once, whichever came first.
    match cat.create_backup_job(&new_job("dds-restore", 0)).await {
        Err(CatalogError::ActiveJobExists { job_id, kind }) => {
            assert_eq!((job_id, kind), (job.id, Some(crate::JobKind::Restore)))
        }
        other => panic!("expected ActiveJobExists, got {other:?}"),
    }
    match cat.create_job(&new).await {
        Err(CatalogError::ActiveJobExists { kind, .. }) => {
            assert_eq!(kind, Some(crate::JobKind::Restore))
        }
        other => panic!("expected ActiveJobExists, got {other:?}"),
    }
    let claimed = cat
        .claim_next_job("node-r", now, now + LEASE)
        .await
        .expect("claim")
        .expect("job");
    assert_eq!(claimed.id, job.id);
    let result = serde_json::json!({"documents": 7});
    assert!(matches!(
        cat.complete_job(job.id, "other", claimed.lease_token, &result, now)
            .await,
        Err(CatalogError::LeaseLost(_))
    ));
    assert!(matches!(
        cat.complete_job(job.id, "node-r", claimed.lease_token + 1, &result, now)
            .await,
        Err(CatalogError::LeaseLost(_))
    ));
    cat.complete_job(job.id, "node-r", claimed.lease_token, &result, now)
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
    // Compare-and-set: only from the expected value, and only once.
    assert!(!cat.replace_setting("node_id", "x", "c").await.expect("cas"));
    assert!(cat.replace_setting("node_id", "a", "c").await.expect("cas"));
    assert!(!cat.replace_setting("node_id", "a", "d").await.expect("cas"));
    assert!(!cat.replace_setting("absent", "", "d").await.expect("cas"));
    assert_eq!(
        cat.get_setting("node_id").await.expect("get").as_deref(),
        Some("c")
    );
    assert_eq!(cat.get_setting("absent").await.expect("get"), None);
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

/// A job created Running for its creator (an import) is never handed to a runner, and completes like any other.
async fn claimed_backup_job(cat: &Catalog) {
    let end = Utc.timestamp_opt(1_700_000_100, 0).single().expect("time");
    let now = now_ms();
    let (job, backup) = cat
        .create_claimed_backup_job(&new_job("dds-import", 0), "importer", now, now + LEASE)
        .await
        .expect("create");
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.owner.as_deref(), Some("importer"));
    assert_eq!(job.backup_id, Some(backup.id));
    assert_eq!(backup.status, BackupStatus::Running);
    assert!(cat
        .claim_next_job("other", now, now + LEASE)
        .await
        .expect("claim")
        .is_none());
    // One active job per instance holds for it too.
    assert!(matches!(
        cat.create_claimed_backup_job(&new_job("dds-import", 1), "importer", now, now + LEASE)
            .await,
        Err(CatalogError::ActiveJobExists { .. })
    ));
    assert_eq!(
        job.lease_token, 1,
        "a claimed job holds its first fencing token"
    );
    assert_eq!(job.lease_until, Some(now + LEASE));
    cat.complete_backup(
        job.id,
        "importer",
        job.lease_token,
        &BackupCompletion {
            end_time: end,
            expire_time: end + Duration::days(30),
            size: 1,
            db_names: "a".into(),
            repo_prefix: "backups/dds-import/1".into(),
            details: serde_json::json!({}),
        },
    )
    .await
    .expect("complete");
    let done = cat.get_backup(backup.id).await.expect("get").expect("row");
    assert_eq!(done.status, BackupStatus::Success);
    assert_eq!(done.start_time, new_job("dds-import", 0).now);
    assert_eq!(done.end_time, Some(end));
}

async fn job_lifecycle(cat: &Catalog) {
    let (job, backup) = cat
        .create_backup_job(&new_job("dds-life", 0))
        .await
        .expect("create");
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.backup_id, Some(backup.id));
    assert_eq!(
        cat.active_job("dds-life").await.expect("active"),
        Some((job.id, crate::JobKind::Backup))
    );
    assert_eq!(cat.active_job("dds-none").await.expect("active"), None);
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
        .claim_next_job("node-1", now, now + LEASE)
        .await
        .expect("claim")
        .expect("a job");
    assert_eq!(claimed.id, job.id);
    assert_eq!(claimed.state, JobState::Running);
    assert!(cat
        .claim_next_job("node-2", now, now + LEASE)
        .await
        .expect("claim")
        .is_none());
    let token = claimed.lease_token;
    cat.heartbeat(job.id, "node-1", token, 50, now)
        .await
        .expect("hb");
    assert!(matches!(
        cat.heartbeat(job.id, "node-2", token, 50, now).await,
        Err(CatalogError::LeaseLost(_))
    ));
    // The progress detail is kept as written, and a heartbeat without one keeps it.
    let detail = serde_json::json!({"phase": "Dumping", "docs_done": 10, "docs_total": 40});
    cat.heartbeat_with_detail(job.id, "node-1", token, 25, &detail, now)
        .await
        .expect("hb");
    cat.heartbeat(job.id, "node-1", token, 30, now)
        .await
        .expect("hb");
    let j = cat.get_job(job.id).await.expect("get").expect("job");
    assert_eq!((j.progress, j.progress_detail), (30, detail));
    assert!(matches!(
        cat.heartbeat_with_detail(job.id, "node-2", token, 25, &serde_json::json!({}), now)
            .await,
        Err(CatalogError::LeaseLost(_))
    ));
    assert!(matches!(
        cat.complete_backup(job.id, "node-2", token, &completion(now))
            .await,
        Err(CatalogError::LeaseLost(_))
    ));
    cat.complete_backup(job.id, "node-1", token, &completion(now))
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
    assert_eq!(cat.active_job("dds-life").await.expect("active"), None);
    // The instance is free again.
    let (job2, backup2) = cat
        .create_backup_job(&new_job("dds-life", 10))
        .await
        .expect("second");
    assert_eq!(
        cat.active_job("dds-life").await.expect("active"),
        Some((job2.id, crate::JobKind::Backup))
    );
    cat.fail_job(job2.id, "boom", now).await.expect("fail");
    assert_eq!(cat.active_job("dds-life").await.expect("active"), None);
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
    let now = now_ms();
    // Drain whatever the earlier checks left pending.
    drain(cat).await;
    let (job, backup) = cat
        .create_backup_job(&new_job("dds-crash", 0))
        .await
        .expect("create");
    let old = cat
        .claim_next_job("node-old", now, now + LEASE)
        .await
        .expect("claim")
        .expect("job");
    assert_eq!(old.id, job.id);
    assert_eq!(old.lease_until, Some(now + LEASE));
    // Another live node, whose lease is live, is never touched by our recovery.
    let (other, _) = cat
        .create_backup_job(&new_job("dds-other", 0))
        .await
        .expect("create");
    let live = cat
        .claim_next_job("node-live", now, now + LEASE * 4)
        .await
        .expect("claim")
        .expect("job");
    assert_eq!(live.id, other.id);

    // At start, node-old takes back what its previous life held (live lease or not), and nothing of node-live.
    let taken = cat
        .recover_expired("node-old", now, now + LEASE, true)
        .await
        .expect("recover");
    let ids: Vec<i64> = taken.iter().map(|r| r.job.id).collect();
    assert!(ids.contains(&job.id), "{ids:?}");
    assert!(!ids.contains(&other.id), "{ids:?}");
    let mine = taken
        .iter()
        .find(|r| r.job.id == job.id)
        .expect("recovered");
    assert_eq!(mine.previous_owner.as_deref(), Some("node-old"));
    assert_eq!(mine.job.owner.as_deref(), Some("node-old"));
    assert_eq!(
        mine.job.lease_token,
        old.lease_token + 1,
        "a takeover is a new token"
    );
    // Its previous life's token commits nothing any more.
    assert!(matches!(
        cat.complete_backup(job.id, "node-old", old.lease_token, &completion(now))
            .await,
        Err(CatalogError::LeaseLost(_))
    ));
    cat.fail_leased_job(
        job.id,
        "node-old",
        mine.job.lease_token,
        crate::JOB_INTERRUPTED_CODE,
        "interrupted: the ddsvault process running this job stopped before it finished",
        now,
    )
    .await
    .expect("fail");
    assert_eq!(
        cat.get_backup(backup.id)
            .await
            .expect("get")
            .expect("exists")
            .status,
        BackupStatus::Failed
    );
    // Continuous recovery by any other node leaves the live lease alone...
    for recoverer in ["node-new", "node-x"] {
        let taken = cat
            .recover_expired(recoverer, now + LEASE, now + LEASE * 2, false)
            .await
            .expect("recover");
        assert!(!taken.iter().any(|r| r.job.id == other.id));
    }
    let still = cat.get_job(other.id).await.expect("get").expect("exists");
    assert_eq!(
        (still.state, still.owner.as_deref(), still.lease_token),
        (JobState::Running, Some("node-live"), live.lease_token)
    );
    // ... also after a renewal moved it on, which only its holder with its token can do.
    let renewed_until = now + LEASE * 8;
    assert!(matches!(
        cat.renew_lease(other.id, "node-live", live.lease_token + 1, renewed_until)
            .await,
        Err(CatalogError::LeaseLost(_))
    ));
    assert!(matches!(
        cat.renew_lease(other.id, "node-x", live.lease_token, renewed_until)
            .await,
        Err(CatalogError::LeaseLost(_))
    ));
    cat.renew_lease(other.id, "node-live", live.lease_token, renewed_until)
        .await
        .expect("renew");
    // A renewal that arrives late never shortens the lease.
    cat.renew_lease(other.id, "node-live", live.lease_token, now + LEASE)
        .await
        .expect("late renew");
    assert_eq!(
        cat.get_job(other.id)
            .await
            .expect("get")
            .expect("exists")
            .lease_until,
        Some(renewed_until)
    );
    let taken = cat
        .recover_expired("node-new", now + LEASE * 5, now + LEASE * 6, false)
        .await
        .expect("recover");
    assert!(!taken.iter().any(|r| r.job.id == other.id));

    // Once the lease expired, recoverers racing for the job: exactly one takes it over.
    let later = renewed_until + Duration::seconds(1);
    let mut racers = Vec::new();
    for i in 0..8 {
        let cat = Arc::clone(cat);
        racers.push(tokio::spawn(async move {
            let me = format!("node-r{i}");
            let taken = cat
                .recover_expired(&me, later, later + LEASE, false)
                .await
                .expect("recover");
            taken
                .into_iter()
                .filter(|r| r.job.id == other.id)
                .map(|r| (me.clone(), r))
                .collect::<Vec<_>>()
        }));
    }
    let mut winners = Vec::new();
    for r in racers {
        winners.extend(r.await.expect("task"));
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let (winner, took) = winners.pop().expect("one winner");
    assert_eq!(took.previous_owner.as_deref(), Some("node-live"));
    assert_eq!(took.job.owner.as_deref(), Some(winner.as_str()));
    assert_eq!(took.job.lease_token, live.lease_token + 1);
    // The paused holder comes back: it can neither renew, nor report progress, nor commit a result or a failure.
    let stale = live.lease_token;
    assert!(matches!(
        cat.renew_lease(other.id, "node-live", stale, later + LEASE * 10)
            .await,
        Err(CatalogError::LeaseLost(_))
    ));
    assert!(matches!(
        cat.heartbeat(other.id, "node-live", stale, 90, later).await,
        Err(CatalogError::LeaseLost(_))
    ));
    assert!(matches!(
        cat.complete_backup(other.id, "node-live", stale, &completion(later))
            .await,
        Err(CatalogError::LeaseLost(_))
    ));
    assert!(matches!(
        cat.fail_leased_job(other.id, "node-live", stale, "Job.Failed", "mine", later)
            .await,
        Err(CatalogError::LeaseLost(_))
    ));
    // Even under the new owner's name, a stale token commits nothing.
    assert!(matches!(
        cat.complete_backup(other.id, &winner, stale, &completion(later))
            .await,
        Err(CatalogError::LeaseLost(_))
    ));
    let held = cat.get_job(other.id).await.expect("get").expect("exists");
    assert_eq!(
        (held.state, held.owner.as_deref(), held.progress),
        (JobState::Running, Some(winner.as_str()), live.progress)
    );
    // The new owner records the outcome: a recovered job says why, with the interruption's code.
    cat.fail_leased_job(
        other.id,
        &winner,
        took.job.lease_token,
        crate::JOB_INTERRUPTED_CODE,
        "interrupted: the lease of node-live expired",
        later,
    )
    .await
    .expect("fail");
    let recovered = cat.get_job(other.id).await.expect("get").expect("exists");
    assert_eq!(recovered.state, JobState::Failed);
    assert_eq!(
        recovered.error_code.as_deref(),
        Some(crate::JOB_INTERRUPTED_CODE)
    );
    assert!(recovered
        .error
        .as_deref()
        .is_some_and(|e| e.starts_with("interrupted")));
    // A finished job is never recovered again.
    let taken = cat
        .recover_expired("node-z", later + LEASE * 100, later + LEASE * 101, true)
        .await
        .expect("recover");
    assert!(!taken
        .iter()
        .any(|r| r.job.id == other.id || r.job.id == job.id));

    // A failure's code and message are kept on the job and in its backup's details; a job that did not fail has
    // neither.
    let (job, backup) = cat
        .create_backup_job(&new_job("dds-coded", 0))
        .await
        .expect("create");
    let running = cat
        .claim_next_job("node-c", now, now + LEASE)
        .await
        .expect("claim")
        .expect("job");
    assert_eq!((running.error_code, running.error), (None, None));
    assert_eq!(running.lease_token, 1);
    cat.fail_job_with_code(job.id, "Repository.NoSpace", "repository: no space", now)
        .await
        .expect("fail");
    let failed = cat.get_job(job.id).await.expect("get").expect("exists");
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.error_code.as_deref(), Some("Repository.NoSpace"));
    assert_eq!(failed.error.as_deref(), Some("repository: no space"));
    let b = cat
        .get_backup(backup.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(b.status, BackupStatus::Failed);
    assert_eq!(b.details["error_code"], "Repository.NoSpace");
    assert_eq!(b.details["error"], "repository: no space");
    // Failing it again changes nothing (it is no longer pending or running).
    cat.fail_job_with_code(job.id, "Job.Failed", "again", now)
        .await
        .expect("fail again");
    let still = cat.get_job(job.id).await.expect("get").expect("exists");
    assert_eq!(still.error_code.as_deref(), Some("Repository.NoSpace"));
}

async fn listing(cat: &Catalog) {
    let base = Utc.timestamp_opt(1_800_000_000, 0).single().expect("time");
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut n = new_job("dds-list", 0);
        n.now = base + Duration::hours(i);
        let (job, backup) = cat.create_backup_job(&n).await.expect("create");
        let claimed = cat
            .claim_next_job("lister", base, base + LEASE)
            .await
            .expect("claim")
            .expect("job");
        assert_eq!(claimed.id, job.id);
        cat.complete_backup(job.id, "lister", claimed.lease_token, &completion(n.now))
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

fn key(id: &str, user: &str, source: &str) -> crate::AccessKeyRecord {
    crate::AccessKeyRecord {
        id: id.into(),
        secret: format!("sealed-{id}"),
        secret_format: "test-v1".into(),
        user: user.into(),
        active: true,
        source: source.into(),
        created_at: Utc.timestamp_opt(1_700_000_000, 0).single().expect("time"),
        last_used_at: None,
    }
}

async fn identities(cat: &Catalog) {
    use crate::{
        GroupMember, PolicyAttachment, PrincipalKind, RamGroupRecord, RamPolicyRecord,
        RamUserRecord,
    };
    let now = Utc.timestamp_opt(1_700_000_000, 0).single().expect("time");
    let v0 = cat.identity_version().await.expect("version");
    let user = |name: &str| RamUserRecord {
        name: name.into(),
        display_name: String::new(),
        source: "cli".into(),
        created_at: now,
    };
    cat.create_ram_user(&user("alice")).await.expect("alice");
    assert!(matches!(
        cat.create_ram_user(&user("alice")).await,
        Err(CatalogError::AlreadyExists(_))
    ));
    assert!(matches!(
        cat.create_ram_user(&user("root")).await,
        Err(CatalogError::AlreadyExists(_))
    ));
    let v1 = cat.identity_version().await.expect("version");
    assert!(v1 > v0, "a change bumps the version");

    // Keys: the user must exist, at most `max` per user, ids unique.
    assert!(matches!(
        cat.create_access_key(&key("K-ghost", "ghost", "cli"), 2)
            .await,
        Err(CatalogError::NotFound(_))
    ));
    cat.create_access_key(&key("K-a1", "alice", "cli"), 2)
        .await
        .expect("1st");
    assert!(matches!(
        cat.create_access_key(&key("K-a1", "alice", "cli"), 2).await,
        Err(CatalogError::AlreadyExists(_))
    ));
    cat.create_access_key(&key("K-a2", "alice", "cli"), 2)
        .await
        .expect("2nd");
    assert!(matches!(
        cat.create_access_key(&key("K-a3", "alice", "cli"), 2).await,
        Err(CatalogError::LimitExceeded(_))
    ));
    // The limit is checked atomically: concurrent creations for one user never exceed it.
    cat.create_ram_user(&user("bob")).await.expect("bob");
    let racers: Vec<_> = (0..6)
        .map(|i| {
            let cat = Arc::clone(cat);
            tokio::spawn(async move {
                cat.create_access_key(&key(&format!("K-b{i}"), "bob", "cli"), 2)
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for r in racers {
        if r.await.expect("join").is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 2, "exactly two of the concurrent creations succeed");
    // Root keys need no RAM user row.
    cat.create_access_key(&key("K-root", "root", "cli"), 2)
        .await
        .expect("root key");

    // Disable / enable / delete, each visible at once and bumping the version.
    let before = cat.identity_version().await.expect("version");
    cat.set_access_key_active("K-a1", false)
        .await
        .expect("disable");
    assert!(cat.identity_version().await.expect("version") > before);
    let snap = cat.load_identities().await.expect("load");
    let k = snap
        .keys
        .iter()
        .find(|k| k.id == "K-a1")
        .expect("K-a1 listed");
    assert!(!k.active);
    assert_eq!(
        (k.secret.as_str(), k.secret_format.as_str()),
        ("sealed-K-a1", "test-v1")
    );
    assert_eq!(snap.version, cat.identity_version().await.expect("version"));
    cat.set_access_key_active("K-a1", true)
        .await
        .expect("enable");
    assert!(matches!(
        cat.set_access_key_active("K-none", true).await,
        Err(CatalogError::NotFound(_))
    ));

    // Last use: stored, never moved backwards, and not an identity change.
    let v = cat.identity_version().await.expect("version");
    let later = now + Duration::minutes(5);
    cat.touch_access_key("K-a1", later).await.expect("touch");
    cat.touch_access_key("K-a1", now)
        .await
        .expect("older touch");
    assert_eq!(cat.identity_version().await.expect("version"), v);
    let listed = cat.list_access_keys().await.expect("list");
    let k = listed.iter().find(|k| k.id == "K-a1").expect("K-a1");
    assert_eq!(k.last_used_at, Some(later));

    // Secret migration is a compare-and-swap on the format.
    assert!(cat
        .replace_access_key_secret("K-a2", "test-v1", "sealed2", "test-v2")
        .await
        .expect("replace"));
    assert!(!cat
        .replace_access_key_secret("K-a2", "test-v1", "sealed3", "test-v2")
        .await
        .expect("second replace is a no-op"));

    // Groups, policies, attachments.
    cat.create_ram_group(&RamGroupRecord {
        name: "ops".into(),
        source: "cli".into(),
        created_at: now,
    })
    .await
    .expect("group");
    let policy = |name: &str| RamPolicyRecord {
        name: name.into(),
        document: r#"{"Version":"1","Statement":[]}"#.into(),
        source: "cli".into(),
        created_at: now,
    };
    cat.create_ram_policy(&policy("P1")).await.expect("P1");
    assert!(matches!(
        cat.create_ram_policy(&policy("P1")).await,
        Err(CatalogError::AlreadyExists(_))
    ));
    let attach = |kind, principal: &str| PolicyAttachment {
        policy: "P1".into(),
        kind,
        principal: principal.into(),
        source: "cli".into(),
    };
    cat.attach_policy(&attach(PrincipalKind::User, "alice"))
        .await
        .expect("to user");
    cat.attach_policy(&attach(PrincipalKind::Group, "ops"))
        .await
        .expect("to group");
    assert!(matches!(
        cat.attach_policy(&attach(PrincipalKind::User, "alice"))
            .await,
        Err(CatalogError::AlreadyExists(_))
    ));
    assert!(matches!(
        cat.attach_policy(&attach(PrincipalKind::Group, "nogroup"))
            .await,
        Err(CatalogError::NotFound(_))
    ));
    assert!(matches!(
        cat.attach_policy(&PolicyAttachment {
            policy: "P-none".into(),
            ..attach(PrincipalKind::User, "alice")
        })
        .await,
        Err(CatalogError::NotFound(_))
    ));
    let member = GroupMember {
        group: "ops".into(),
        user: "alice".into(),
        source: "cli".into(),
    };
    cat.add_group_member(&member).await.expect("member");
    assert!(matches!(
        cat.add_group_member(&member).await,
        Err(CatalogError::AlreadyExists(_))
    ));
    let snap = cat.load_identities().await.expect("load");
    assert_eq!(
        snap.users
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    assert_eq!(snap.groups.len(), 1);
    assert_eq!(snap.policies.len(), 1);
    assert_eq!(snap.attachments.len(), 2);
    assert_eq!(snap.members, vec![member.clone()]);

    // Deletes refuse while something depends on the entity.
    assert!(matches!(
        cat.delete_ram_policy("P1").await,
        Err(CatalogError::Conflict(_))
    ));
    assert!(matches!(
        cat.delete_ram_group("ops").await,
        Err(CatalogError::Conflict(_))
    ));
    assert!(matches!(
        cat.delete_ram_user("alice").await,
        Err(CatalogError::Conflict(_))
    ));
    cat.remove_group_member("ops", "alice")
        .await
        .expect("leave");
    assert!(matches!(
        cat.remove_group_member("ops", "alice").await,
        Err(CatalogError::NotFound(_))
    ));
    cat.detach_policy("P1", PrincipalKind::Group, "ops")
        .await
        .expect("detach group");
    cat.detach_policy("P1", PrincipalKind::User, "alice")
        .await
        .expect("detach user");
    assert!(matches!(
        cat.detach_policy("P1", PrincipalKind::User, "alice").await,
        Err(CatalogError::NotFound(_))
    ));
    cat.delete_ram_policy("P1").await.expect("policy");
    cat.delete_ram_group("ops").await.expect("group");
    assert!(
        matches!(
            cat.delete_ram_user("alice").await,
            Err(CatalogError::Conflict(_))
        ),
        "keys remain"
    );
    cat.delete_access_key("K-a1").await.expect("del");
    cat.delete_access_key("K-a2").await.expect("del");
    assert!(matches!(
        cat.delete_access_key("K-a2").await,
        Err(CatalogError::NotFound(_))
    ));
    cat.delete_ram_user("alice").await.expect("user");
    assert!(matches!(
        cat.delete_ram_user("alice").await,
        Err(CatalogError::NotFound(_))
    ));
    let snap = cat.load_identities().await.expect("load");
    assert!(snap.keys.iter().all(|k| k.user != "alice"));
    assert!(snap.policies.is_empty() && snap.groups.is_empty() && snap.attachments.is_empty());
}

async fn config_identities(cat: &Catalog) {
    use crate::{ConfigIdentities, PolicyAttachment, PrincipalKind, RamUserRecord};
    let now = Utc.timestamp_opt(1_700_000_000, 0).single().expect("time");
    let doc = r#"{"Version":"1","Statement":[]}"#;
    let cfg = ConfigIdentities {
        users: vec!["cfg-op".into(), "cfg-ro".into()],
        policies: vec![("CfgP".into(), doc.into()), ("CfgQ".into(), doc.into())],
        user_policies: vec![
            ("CfgP".into(), "cfg-op".into()),
            ("CfgQ".into(), "cfg-ro".into()),
        ],
        keys: vec![
            key("K-cfg-op", "cfg-op", "config"),
            key("K-cfg-ro", "cfg-ro", "config"),
        ],
    };
    cat.sync_config_identities(&cfg, now).await.expect("sync");
    // Run-time changes next to the config ones.
    cat.create_ram_user(&RamUserRecord {
        name: "cli-user".into(),
        display_name: String::new(),
        source: "cli".into(),
        created_at: now,
    })
    .await
    .expect("cli user");
    cat.create_access_key(&key("K-cli", "cli-user", "cli"), 2)
        .await
        .expect("cli key");
    cat.create_access_key(&key("K-cli-ro", "cfg-ro", "cli"), 2)
        .await
        .expect("cli key of a config user");
    cat.attach_policy(&PolicyAttachment {
        policy: "CfgP".into(),
        kind: PrincipalKind::User,
        principal: "cli-user".into(),
        source: "cli".into(),
    })
    .await
    .expect("cli attachment");
    cat.set_access_key_active("K-cfg-op", false)
        .await
        .expect("disable config key");

    // Same config again: idempotent, and the disabled state survives.
    cat.sync_config_identities(&cfg, now).await.expect("resync");
    let snap = cat.load_identities().await.expect("load");
    let op = snap
        .keys
        .iter()
        .find(|k| k.id == "K-cfg-op")
        .expect("config key kept");
    assert!(
        !op.active,
        "a key disabled at run time stays disabled across restarts"
    );
    assert_eq!(op.source, "config");
    assert_eq!(snap.attachments.len(), 3);

    // The config drops cfg-ro and CfgQ: they go, with the keys and attachments hanging on them; run-time entries
    // of other principals stay.
    let smaller = ConfigIdentities {
        users: vec!["cfg-op".into()],
        policies: vec![("CfgP".into(), doc.into())],
        user_policies: vec![("CfgP".into(), "cfg-op".into())],
        keys: vec![key("K-cfg-op", "cfg-op", "config")],
    };
    cat.sync_config_identities(&smaller, now)
        .await
        .expect("sync smaller");
    let snap = cat.load_identities().await.expect("load");
    let mut ids: Vec<_> = snap
        .keys
        .iter()
        .map(|k| k.id.as_str())
        .filter(|id| id.contains("cfg") || id.contains("cli"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["K-cfg-op", "K-cli"]);
    assert!(snap
        .users
        .iter()
        .any(|u| u.name == "cli-user" && u.source == "cli"));
    assert!(!snap.users.iter().any(|u| u.name == "cfg-ro"));
    assert_eq!(
        snap.policies
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["CfgP"]
    );
    let mut att: Vec<_> = snap
        .attachments
        .iter()
        .map(|a| (a.principal.as_str(), a.source.as_str()))
        .collect();
    att.sort_unstable();
    assert_eq!(att, [("cfg-op", "config"), ("cli-user", "cli")]);
}

/// The metrics counts follow the rows: a new successful backup moves the job count of its method, the instance's
/// last success and the bytes of its method.
async fn stats(cat: &Catalog) {
    let before = cat.stats().await.expect("stats");
    let jobs_of = |s: &crate::CatalogStats, state: JobState| {
        s.jobs
            .iter()
            .filter(|j| {
                j.kind == crate::JobKind::Backup
                    && j.method == Some(crate::BackupMethod::Logical)
                    && j.state == state
            })
            .map(|j| j.count)
            .sum::<u64>()
    };
    let bytes_of = |s: &crate::CatalogStats| {
        s.backups
            .iter()
            .filter(|b| b.method == crate::BackupMethod::Logical && b.status == "Success")
            .map(|b| b.bytes)
            .sum::<u64>()
    };
    assert!(!before.last_success.iter().any(|(i, _)| i == "dds-stats"));
    let expire = Utc::now() + Duration::days(3);
    let id = successful_backup(cat, "dds-stats", expire).await;
    let backup = cat.get_backup(id).await.expect("get").expect("backup");
    let after = cat.stats().await.expect("stats");
    assert_eq!(
        jobs_of(&after, JobState::Success),
        jobs_of(&before, JobState::Success) + 1,
        "{after:?}"
    );
    assert_eq!(bytes_of(&after), bytes_of(&before) + 10);
    let last = after
        .last_success
        .iter()
        .find(|(i, _)| i == "dds-stats")
        .map(|(_, t)| *t);
    assert_eq!(last, backup.end_time);

    // The log backup's stored end is the newest slice's, per instance.
    assert!(!after.log_backup_end.iter().any(|(i, _)| i == "dds-stats"));
    assert!(cat
        .claim_log_follower(
            "dds-stats",
            "n1",
            Utc::now(),
            Utc::now() + Duration::minutes(1)
        )
        .await
        .expect("claim"));
    // Slices chain: each starts where the previous one ended.
    for (start, end) in [
        (crate::ts_key(100, 0), 200),
        (crate::ts_key(200, u32::MAX), 300),
    ] {
        cat.add_log_slice(
            &crate::NewLogSlice {
                instance_id: "dds-stats".into(),
                start_excl: start,
                end_incl: crate::ts_key(end, u32::MAX),
                first_ts: None,
                last_ts: None,
                entries: 0,
                size: 1,
                sha256: String::new(),
                path: format!("log/{end}"),
                gap: false,
                now: Utc::now(),
            },
            "n1",
        )
        .await
        .expect("slice");
    }
    let logs = cat.stats().await.expect("stats").log_backup_end;
    assert!(logs.contains(&("dds-stats".to_string(), 300)), "{logs:?}");
}

/// A backup of `instance` committed with its repository usage (migration 0015).
async fn backup_with_storage(cat: &Catalog, instance: &str, usage: &crate::BackupStorage) -> i64 {
    drain(cat).await;
    let (job, backup) = cat
        .create_backup_job(&new_job(instance, 0))
        .await
        .expect("create");
    let claimed = cat
        .claim_next_job("node-use", Utc::now(), Utc::now() + LEASE)
        .await
        .expect("claim")
        .expect("job");
    assert_eq!(claimed.id, job.id);
    cat.complete_backup_with_storage(
        job.id,
        "node-use",
        claimed.lease_token,
        &BackupCompletion {
            end_time: backup.start_time + Duration::minutes(5),
            expire_time: crate::permanent_expiry(),
            size: 10,
            db_names: "shop".into(),
            repo_prefix: format!("backups/{instance}/{}", backup.id),
            details: serde_json::json!({}),
        },
        usage,
    )
    .await
    .expect("complete");
    backup.id
}

/// DescribeBackupStorage's counters: a backup counts while Success, a chunk once per instance however many
/// snapshots name it, until the collector forgets it; backups committed without a record can be measured later.
async fn storage_usage(cat: &Catalog) {
    use crate::{BackupStorage, ChunkUsage, StorageUsage};
    let inst = "dds-use";
    let chunk = |d: &str, size: u64| ChunkUsage {
        digest: d.into(),
        size,
    };
    let usage = |b: u64, c: u64| StorageUsage {
        backup_bytes: b,
        chunk_bytes: c,
    };
    assert_eq!(cat.storage_usage(inst).await.expect("usage"), usage(0, 0));
    let a = backup_with_storage(
        cat,
        inst,
        &BackupStorage {
            stored_bytes: 100,
            chunks: vec![chunk("a", 10), chunk("b", 20)],
        },
    )
    .await;
    backup_with_storage(
        cat,
        inst,
        &BackupStorage {
            stored_bytes: 50,
            chunks: vec![chunk("b", 20), chunk("c", 5)],
        },
    )
    .await;
    // "b" is named twice and counted once.
    assert_eq!(
        cat.storage_usage(inst).await.expect("usage"),
        usage(150, 35)
    );
    assert_eq!(
        cat.storage_usage("dds-use-other").await.expect("usage"),
        usage(0, 0)
    );

    // A backup committed without a record (before the migration) is listed until measured, then counted.
    let old = successful_backup(cat, inst, crate::permanent_expiry()).await;
    let missing: Vec<i64> = cat
        .backups_without_storage(1000)
        .await
        .expect("missing")
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert!(
        missing.contains(&old) && !missing.contains(&a),
        "{missing:?}"
    );
    let measured = BackupStorage {
        stored_bytes: 7,
        chunks: vec![chunk("d", 1)],
    };
    assert!(cat
        .record_backup_storage(old, &measured)
        .await
        .expect("record"));
    assert!(!cat
        .record_backup_storage(old, &measured)
        .await
        .expect("again"));
    assert!(!cat
        .backups_without_storage(1000)
        .await
        .expect("missing")
        .iter()
        .any(|b| b.id == old));
    assert_eq!(
        cat.storage_usage(inst).await.expect("usage"),
        usage(157, 36)
    );
    // Only a Success backup is recorded.
    drain(cat).await;
    let (_, running) = cat
        .create_backup_job(&new_job(inst, 1))
        .await
        .expect("running");
    assert!(!cat
        .record_backup_storage(running.id, &measured)
        .await
        .expect("running"));
    drain(cat).await;
    assert_eq!(
        cat.storage_usage(inst).await.expect("usage"),
        usage(157, 36)
    );

    // A backup stops counting when its deletion starts; its chunks count until the collector deletes them.
    assert!(matches!(
        cat.mark_backup_deleting(a).await.expect("mark"),
        crate::DeleteMark::Marked(_)
    ));
    assert_eq!(cat.storage_usage(inst).await.expect("usage"), usage(57, 36));
    assert!(cat.delete_backup_row(a).await.expect("row"));
    assert_eq!(cat.storage_usage(inst).await.expect("usage"), usage(57, 36));
    cat.forget_instance_chunks(inst, &["a".to_string(), "zz".to_string()])
        .await
        .expect("forget");
    assert_eq!(cat.storage_usage(inst).await.expect("usage"), usage(57, 26));
    // A chunk counts once however often it is added; its size is the latest measured (a rewritten chunk).
    cat.add_instance_chunks(inst, &[chunk("a", 10), chunk("a", 10), chunk("b", 25)])
        .await
        .expect("add");
    assert_eq!(cat.storage_usage(inst).await.expect("usage"), usage(57, 41));
}

async fn restore_drills(cat: &Catalog) {
    use crate::{
        DrillFilter, DrillPolicy, DrillResult, NewRestoreDrill, ScheduledDrill, SCHEDULE_DRILL,
    };
    let t = |s: i64| {
        Utc.timestamp_opt(1_970_000_000 + s, 0)
            .single()
            .expect("time")
    };
    // Settings: none, stored, replaced, listed.
    assert_eq!(cat.get_drill_policy("dds-d1").await.expect("get"), None);
    let mut p = DrillPolicy {
        instance_id: "dds-d1".into(),
        period: "Monday".into(),
        window: "03:00Z-04:00Z".into(),
        target: "dds-scratch".into(),
        updated_at: t(0),
    };
    cat.put_drill_policy(&p).await.expect("put");
    p.period = "Monday,Friday".into();
    p.updated_at = t(1);
    cat.put_drill_policy(&p).await.expect("replace");
    assert_eq!(
        cat.get_drill_policy("dds-d1").await.expect("get"),
        Some(p.clone())
    );
    let other = DrillPolicy {
        instance_id: "dds-d0".into(),
        ..p.clone()
    };
    cat.put_drill_policy(&other).await.expect("put");
    let all = cat.list_drill_policies().await.expect("list");
    assert_eq!(all, vec![other, p.clone()]);

    // Scheduled drill jobs: one per (source, slot) whatever the callers; the job runs on the scratch target.
    let job = |source: &str, now: i64| NewJob {
        kind: crate::JobKind::Drill,
        instance_id: "dds-scratch".into(),
        backup_id: None,
        mode: "Automated".into(),
        params: serde_json::json!({"source_instance": source}),
        now: t(now),
    };
    let slot = t(100);
    let created = cat
        .create_scheduled_drill_job("dds-d1", slot, "node-a", &job("dds-d1", 101))
        .await
        .expect("schedule");
    let ScheduledDrill::Created(j) = created else {
        panic!("expected Created, got {created:?}");
    };
    assert_eq!(
        (j.kind, j.instance_id.as_str(), j.state),
        (crate::JobKind::Drill, "dds-scratch", JobState::Pending)
    );
    assert_eq!(
        cat.create_scheduled_drill_job("dds-d1", slot, "node-b", &job("dds-d1", 102))
            .await
            .expect("again"),
        ScheduledDrill::AlreadyTaken
    );
    // Another instance's slot meets the drill still active on the shared scratch target: skipped, recorded.
    assert_eq!(
        cat.create_scheduled_drill_job("dds-d0", slot, "node-a", &job("dds-d0", 103))
            .await
            .expect("skip"),
        ScheduledDrill::Skipped {
            job_id: j.id,
            kind: crate::JobKind::Drill
        }
    );
    let runs = cat.list_schedule_runs("dds-d0", 10).await.expect("runs");
    assert_eq!(
        (
            runs.len(),
            runs[0].schedule.as_str(),
            runs[0].outcome.as_str(),
            runs[0].job_id
        ),
        (1, SCHEDULE_DRILL, "Skipped", Some(j.id))
    );
    let runs = cat.list_schedule_runs("dds-d1", 10).await.expect("runs");
    assert_eq!(
        (runs[0].outcome.as_str(), runs[0].job_id),
        ("Created", Some(j.id))
    );
    cat.fail_job(j.id, "test", t(104)).await.expect("end");

    // Drills: recorded with their duration, listed newest first, filtered, newest per instance.
    let drill = |instance: &str, backup: i64, at: i64, result: DrillResult| NewRestoreDrill {
        instance_id: instance.into(),
        backup_id: backup,
        target: "dds-scratch".into(),
        job_id: Some(j.id),
        started_at: t(at),
        finished_at: t(at) + Duration::milliseconds(2500),
        result,
        checksums: result == DrillResult::Passed,
        detail: serde_json::json!({"collections": [{"db": "app", "collection": "c", "documents": 3}]}),
    };
    let first = cat
        .record_restore_drill(&drill("dds-d1", 11, 200, DrillResult::Passed))
        .await
        .expect("record");
    assert_eq!(
        (
            first.duration_ms,
            first.result,
            first.checksums,
            first.job_id
        ),
        (2500, DrillResult::Passed, true, Some(j.id))
    );
    assert_eq!(first.detail["collections"][0]["documents"], 3);
    let second = cat
        .record_restore_drill(&drill("dds-d1", 12, 300, DrillResult::Failed))
        .await
        .expect("record");
    let other = cat
        .record_restore_drill(&drill("dds-d0", 21, 250, DrillResult::Passed))
        .await
        .expect("record");
    let of_d1 = cat
        .list_restore_drills(&DrillFilter {
            instance_id: Some("dds-d1".into()),
            ..DrillFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(of_d1, vec![second.clone(), first.clone()]);
    let of_backup = cat
        .list_restore_drills(&DrillFilter {
            backup_id: Some(11),
            ..DrillFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(of_backup, vec![first.clone()]);
    let limited = cat
        .list_restore_drills(&DrillFilter {
            limit: 1,
            ..DrillFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(limited, vec![other.clone()]);
    assert_eq!(
        cat.latest_restore_drills().await.expect("latest"),
        vec![other, second]
    );
}
