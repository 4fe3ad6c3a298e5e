//! Conformance of the catalog methods for several processes on one catalog (issue 19): the shared nonce store,
//! placed claims and node rows.

use chrono::{Duration, TimeZone, Utc};

use super::{drain, new_job};
use crate::{Catalog, JobState, NodeRecord, NODE_AGENT};

pub(super) async fn run_all(cat: &Catalog) {
    nonces(cat).await;
    nonce_race(cat).await;
    placed_claims(cat).await;
    nodes(cat).await;
}

async fn nonces(cat: &Catalog) {
    let now = Utc::now();
    let live = now + Duration::minutes(30);
    assert!(cat.record_nonce("ak-n", "n1", live).await.expect("first"));
    // A replay, whichever process sees it.
    assert!(!cat.record_nonce("ak-n", "n1", live).await.expect("replay"));
    // The pair is (key, nonce): the same nonce under another key is new.
    assert!(cat
        .record_nonce("ak-m", "n1", live)
        .await
        .expect("other key"));
    // A pair whose expiry passed counts as absent even before the sweeper ran.
    let past = now - Duration::seconds(5);
    assert!(cat.record_nonce("ak-n", "old", past).await.expect("old"));
    assert!(cat
        .record_nonce("ak-n", "old", live)
        .await
        .expect("again after expiry"));
    assert!(!cat
        .record_nonce("ak-n", "old", live)
        .await
        .expect("now live"));
    // The sweeper deletes what expired, only that.
    assert!(cat.record_nonce("ak-n", "gone", past).await.expect("gone"));
    assert_eq!(cat.sweep_nonces(now).await.expect("sweep"), 1);
    assert_eq!(cat.sweep_nonces(now).await.expect("sweep again"), 0);
    assert!(!cat.record_nonce("ak-n", "n1", live).await.expect("kept"));
    // Far in the future: a sweep then removes everything.
    let later = live + Duration::seconds(1);
    assert!(cat.sweep_nonces(later).await.expect("sweep all") >= 3);
    assert!(cat
        .record_nonce("ak-n", "n1", later + Duration::minutes(1))
        .await
        .expect("after sweep"));
}

/// Processes racing with the same (key, nonce): exactly one is told it is new.
async fn nonce_race(cat: &Catalog) {
    let live = Utc::now() + Duration::minutes(30);
    let tries = (0..8).map(|_| {
        let cat = cat.clone();
        tokio::spawn(async move { cat.record_nonce("ak-race", "same", live).await })
    });
    let mut won = 0;
    for t in tries {
        if t.await.expect("join").expect("record") {
            won += 1;
        }
    }
    assert_eq!(won, 1);
}

async fn placed_claims(cat: &Catalog) {
    drain(cat).await;
    let now = Utc::now();
    let mut ids = Vec::new();
    for (i, inst) in ["dds-place-a", "dds-place-b", "dds-place-c"]
        .iter()
        .enumerate()
    {
        let (job, _) = cat
            .create_backup_job(&new_job(inst, i64::try_from(i).expect("small")))
            .await
            .expect("create");
        ids.push(job.id);
    }
    let lease = now + chrono::Duration::seconds(30);
    let skip = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
    // Every pending job's instance skipped: nothing to claim, nothing changed.
    assert!(cat
        .claim_next_job_placed(
            "node-x",
            now,
            lease,
            &skip(&["dds-place-a", "dds-place-b", "dds-place-c"])
        )
        .await
        .expect("claim none")
        .is_none());
    // The oldest job not skipped.
    let b = cat
        .claim_next_job_placed("node-x", now, lease, &skip(&["dds-place-a"]))
        .await
        .expect("claim")
        .expect("a job");
    assert_eq!((b.id, b.owner.as_deref()), (ids[1], Some("node-x")));
    assert_eq!(b.state, JobState::Running);
    // Handed back: only by its owner, and only while it runs.
    assert!(!cat.release_job(b.id, "node-y").await.expect("not owner"));
    assert!(cat.release_job(b.id, "node-x").await.expect("release"));
    assert!(!cat.release_job(b.id, "node-x").await.expect("twice"));
    let back = cat.get_job(b.id).await.expect("get").expect("job");
    assert_eq!(
        (back.state, back.owner, back.started_at, back.lease_until),
        (JobState::Pending, None, None, None)
    );
    // The unplaced claim takes anything, oldest first; the released job is claimable again.
    let a = cat
        .claim_next_job("node-y", now, lease)
        .await
        .expect("claim")
        .expect("a");
    assert_eq!(a.id, ids[0]);
    let b = cat
        .claim_next_job("node-y", now, lease)
        .await
        .expect("claim")
        .expect("b");
    assert_eq!((b.id, b.owner.as_deref()), (ids[1], Some("node-y")));
    let c = cat
        .claim_next_job_placed("node-y", now, lease, &skip(&["dds-place-a", "dds-place-b"]))
        .await
        .expect("claim")
        .expect("c");
    assert_eq!(c.id, ids[2]);
    drain(cat).await;
}

async fn nodes(cat: &Catalog) {
    let t0 = Utc.timestamp_opt(1_970_000_000, 0).single().expect("time");
    let mut api = NodeRecord {
        id: "node-api-1".into(),
        hostname: "web1".into(),
        api: "10.0.0.1:8080".into(),
        started_at: t0,
        last_seen: t0,
        running_jobs: 0,
        draining: false,
    };
    let agent = NodeRecord {
        id: "db-host-1".into(),
        hostname: "db1".into(),
        api: NODE_AGENT.into(),
        started_at: t0,
        last_seen: t0 + Duration::seconds(5),
        running_jobs: 2,
        draining: true,
    };
    cat.put_node(&api).await.expect("put api");
    cat.put_node(&agent).await.expect("put agent");
    // A heartbeat replaces the row.
    api.last_seen = t0 + Duration::seconds(10);
    api.running_jobs = 3;
    cat.put_node(&api).await.expect("heartbeat");
    let listed = cat.list_nodes().await.expect("list");
    assert_eq!(listed, vec![agent.clone(), api.clone()]);
    let stale_before = t0 + Duration::seconds(8);
    assert!(agent.is_down(stale_before) && !api.is_down(stale_before));
}
