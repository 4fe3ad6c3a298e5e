//! Restore drills (docs/drills.md): prove on a schedule that a backup restores to what it recorded.
//!
//! A drill job ([`ddsvault_catalog::JobKind::Drill`]) runs on the scratch instance (its `instance_id`; one active job per instance,
//! so a drill never meets a restore into the same scratch) and names the backup it reads (`backup_id`, which
//! retention then does not delete under it). It
//! 1. checks that the scratch instance answers: an unreachable scratch says nothing about the backup, so the job
//!    fails without recording a drill;
//! 2. restores the backup into it (DropExisting: the scratch's copies of the backup's collections are replaced)
//!    through the ordinary restore path (manifest authentication, file digests, archive verification), without
//!    replaying the captured oplog: the dump recorded its figures before any oplog entry, so the comparison is
//!    against exactly what the dump read;
//! 3. reads every restored collection back and compares its document count and its order-independent checksum
//!    ([`ddsvault_mongo::checksum`]) with those the backup's manifest recorded at dump time (backups from before
//!    checksums were recorded: counts only, said in the result).
//!
//! A backup that fails 2 or 3 gets a `Failed` drill: it is unverified until a later drill passes, the job fails
//! with `Drill.Failed`, and a `drill_failed` event goes to the watchers (alert webhooks, metrics).

use std::sync::Arc;
use std::time::Instant;

use bson::{doc, RawDocumentBuf};
use chrono::Utc;
use ddsvault_catalog::{Backup, BackupStatus, DrillResult, Job, NewRestoreDrill};
use ddsvault_mongo::checksum::DocSetChecksum;
use ddsvault_mongo::topology::connect;
use mongodb::Client;
use tokio_util::sync::CancellationToken;

use crate::progress::{with_heartbeat, Phase, Progress};
use crate::{DrillOutcome, Event, JobError, Runner};

/// The job kind.
/// Mismatches kept in a drill's detail (the count of all of them is kept too).
const MAX_MISMATCHES: usize = 100;

/// What the backup recorded about one collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub db: String,
    pub collection: String,
    pub documents: u64,
    /// `None`: the backup recorded no checksum (taken before checksums existed, or imported).
    pub checksum: Option<DocSetChecksum>,
}

/// What was read back from the scratch instance for one collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub documents: u64,
    pub checksum: DocSetChecksum,
}

/// The collections a backup's manifest records (`extra.namespaces`), in manifest order.
///
/// # Errors
/// A manifest without a readable namespace list: nothing could be compared, which fails the drill.
pub fn expected_of(extra: &serde_json::Value) -> Result<Vec<Expected>, String> {
    let list = extra
        .get("namespaces")
        .and_then(|n| n.as_array())
        .ok_or("the manifest records no collection list")?;
    list.iter()
        .map(|n| {
            let text = |k: &str| n.get(k).and_then(|v| v.as_str()).map(str::to_string);
            let db = text("db").ok_or("a manifest namespace has no db")?;
            let collection = text("collection").ok_or("a manifest namespace has no collection")?;
            let documents = n
                .get("documents")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| format!("{db}.{collection}: no document count in the manifest"))?;
            let checksum = match n.get("checksum") {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => Some(
                    v.as_str()
                        .and_then(DocSetChecksum::from_hex)
                        .ok_or_else(|| format!("{db}.{collection}: unreadable checksum {v}"))?,
                ),
            };
            Ok(Expected {
                db,
                collection,
                documents,
                checksum,
            })
        })
        .collect()
}

/// One collection that did not come back as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub db: String,
    pub collection: String,
    pub expected_documents: u64,
    pub restored_documents: u64,
    pub expected_checksum: Option<String>,
    pub restored_checksum: String,
}

impl Mismatch {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "db": self.db,
            "collection": self.collection,
            "expected_documents": self.expected_documents,
            "restored_documents": self.restored_documents,
            "expected_checksum": self.expected_checksum,
            "restored_checksum": self.restored_checksum,
        })
    }

    fn describe(&self) -> String {
        if self.expected_documents == self.restored_documents {
            format!(
                "{}.{}: checksum {} expected {}",
                self.db,
                self.collection,
                self.restored_checksum,
                self.expected_checksum.as_deref().unwrap_or("-")
            )
        } else {
            format!(
                "{}.{}: {} documents, {} expected",
                self.db, self.collection, self.restored_documents, self.expected_documents
            )
        }
    }
}

/// Compares one collection; `None` when it matches. A checksum is compared only where the backup recorded one.
pub fn compare(e: &Expected, r: &Restored) -> Option<Mismatch> {
    let count_ok = e.documents == r.documents;
    let sum_ok = e.checksum.is_none_or(|c| c == r.checksum);
    (!(count_ok && sum_ok)).then(|| Mismatch {
        db: e.db.clone(),
        collection: e.collection.clone(),
        expected_documents: e.documents,
        restored_documents: r.documents,
        expected_checksum: e.checksum.map(DocSetChecksum::to_hex),
        restored_checksum: r.checksum.to_hex(),
    })
}

/// Reads every document of `db.collection` on `client` into a count and checksum. `None` for a view (it has no
/// documents of its own: its results are its source collection's, compared there).
///
/// # Errors
/// The driver's error, as text.
pub async fn read_back(
    client: &Client,
    db: &str,
    collection: &str,
    progress: &Progress,
    docs_before: u64,
) -> Result<Option<Restored>, String> {
    let database = client.database(db);
    let listed = database
        .run_command(doc! {"listCollections": 1, "filter": {"name": collection}})
        .await
        .map_err(|e| format!("list {db}.{collection} on the scratch instance: {e}"))?;
    let is_view = listed
        .get_document("cursor")
        .ok()
        .and_then(|c| c.get_array("firstBatch").ok())
        .and_then(|b| b.first())
        .and_then(|c| c.as_document())
        .and_then(|c| c.get_str("type").ok())
        == Some("view");
    if is_view {
        return Ok(None);
    }
    let mut cursor = database
        .collection::<RawDocumentBuf>(collection)
        .find(doc! {})
        .await
        .map_err(|e| format!("read {db}.{collection} on the scratch instance: {e}"))?;
    let mut out = Restored {
        documents: 0,
        checksum: DocSetChecksum::new(),
    };
    while cursor
        .advance()
        .await
        .map_err(|e| format!("read {db}.{collection} on the scratch instance: {e}"))?
    {
        out.checksum.add(cursor.current().as_bytes());
        out.documents += 1;
        if out.documents.is_multiple_of(1000) {
            progress.docs(docs_before + out.documents, 0);
        }
    }
    Ok(Some(out))
}

/// What one drill found, before it is recorded.
struct Finding {
    result: DrillResult,
    checksums: bool,
    detail: serde_json::Value,
    /// One line for the job error and the alert.
    message: Option<String>,
}

impl Finding {
    fn failed(stage: &str, error: String) -> Self {
        Self {
            result: DrillResult::Failed,
            checksums: false,
            detail: serde_json::json!({"stage": stage, "error": error}),
            message: Some(format!("{stage}: {error}")),
        }
    }
}

pub(crate) async fn run(
    runner: &Runner,
    job: &Job,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    let backup_id = job
        .backup_id
        .ok_or_else(|| JobError::Other("drill job names no backup".into()))?;
    let source = job
        .params
        .get("source_instance")
        .and_then(|v| v.as_str())
        .ok_or_else(|| JobError::Other("drill job names no source instance".into()))?
        .to_string();
    let backup = runner
        .catalog
        .get_backup(backup_id)
        .await?
        .filter(|b| b.status == BackupStatus::Success)
        .ok_or_else(|| {
            JobError::Other(format!(
                "backup {backup_id} does not exist or did not succeed"
            ))
        })?;
    if backup.method != ddsvault_catalog::BackupMethod::Logical {
        return Err(JobError::Other(format!(
            "backup {backup_id} is {}: restore drills restore Logical backups (docs/drills.md)",
            backup.method
        )));
    }
    let target = runner.instance(&job.instance_id)?;
    // 1. The scratch must answer before anything about the backup is concluded.
    let client = connect(&target.uri).await?;
    client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .map_err(|e| {
            JobError::Mongo(ddsvault_mongo::MongoError::Unreachable(format!(
                "scratch instance {}: {e}",
                job.instance_id
            )))
        })?;

    let started_at = Utc::now();
    let clock = Instant::now();
    let finding = drill(runner, job, &backup, &target.uri, &client, cancel).await?;
    let finished_at = Utc::now();
    let recorded = runner
        .catalog
        .record_restore_drill(&NewRestoreDrill {
            instance_id: source.clone(),
            backup_id,
            target: job.instance_id.clone(),
            job_id: Some(job.id),
            started_at,
            finished_at,
            result: finding.result,
            checksums: finding.checksums,
            detail: finding.detail.clone(),
        })
        .await?;
    let passed = finding.result == DrillResult::Passed;
    if passed {
        tracing::info!(backup_id, instance = %source, "restore drill passed");
    } else {
        tracing::error!(backup_id, instance = %source, message = ?finding.message, "restore drill FAILED: the backup is unverified");
    }
    runner.events.emit(&Event::DrillFinished(DrillOutcome {
        drill_id: recorded.id,
        instance_id: source.clone(),
        backup_id,
        target: job.instance_id.clone(),
        job_id: job.id,
        passed,
        duration: clock.elapsed(),
        message: finding.message.clone(),
    }));
    let mut result = finding.detail;
    if let Some(m) = result.as_object_mut() {
        m.insert("drill_id".into(), recorded.id.into());
        m.insert("result".into(), finding.result.as_str().into());
        m.insert("backup_id".into(), backup_id.into());
        m.insert("source_instance".into(), source.into());
    }
    if passed {
        runner
            .catalog
            .complete_job(
                job.id,
                &runner.node_id,
                job.lease_token,
                &result,
                Utc::now(),
            )
            .await?;
        Ok(())
    } else {
        Err(JobError::DrillFailed(format!(
            "backup {backup_id}: {}",
            finding.message.unwrap_or_default()
        )))
    }
}

/// Steps 2 and 3 of the module comment. `Err` only for what says nothing about the backup (cancellation, the
/// job lost to recovery, the catalog).
async fn drill(
    runner: &Runner,
    job: &Job,
    backup: &Backup,
    uri: &str,
    client: &Client,
    cancel: &CancellationToken,
) -> Result<Finding, JobError> {
    let manifest = match crate::integrity::authenticated_manifest(&runner.repo, backup).await {
        Ok(m) => m.manifest,
        Err(e @ (JobError::Repo(_) | JobError::Other(_))) => {
            return Ok(Finding::failed("manifest", e.to_string()))
        }
        Err(e) => return Err(e),
    };
    let expected = match expected_of(&manifest.extra) {
        Ok(x) => x,
        Err(e) => return Ok(Finding::failed("manifest", e)),
    };
    let mut restore_job = job.clone();
    restore_job.params = ddsvault_catalog::RestoreJobParams {
        drop: true,
        replay_oplog: Some(false),
        ..Default::default()
    }
    .to_value();
    match crate::restore::logical::logical_into(runner, &restore_job, backup, uri, cancel).await {
        Ok(_) => {}
        Err(e) if cancel.is_cancelled() => return Err(e),
        Err(e @ (JobError::Catalog(_) | JobError::Cancelled(_) | JobError::Stalled(_))) => {
            return Err(e)
        }
        Err(e) => return Ok(Finding::failed("restore", e.to_string())),
    }

    // 3. Read everything back.
    let progress = Arc::new(Progress::new(job.id));
    progress.set_phase(Phase::Verifying);
    progress.set_percent(95);
    let compare_all = async {
        let mut mismatches = Vec::new();
        let mut compared = 0u64;
        let mut views = 0u64;
        let mut documents = 0u64;
        for e in &expected {
            match read_back(client, &e.db, &e.collection, &progress, documents).await {
                Ok(Some(r)) => {
                    compared += 1;
                    documents += r.documents;
                    if let Some(m) = compare(e, &r) {
                        mismatches.push(m);
                    }
                }
                Ok(None) => views += 1,
                Err(msg) => return Err(msg),
            }
        }
        Ok((mismatches, compared, views, documents))
    };
    let (mismatches, compared, views, documents) =
        match with_heartbeat(runner, job, &progress, cancel, compare_all).await? {
            Ok(x) => x,
            Err(msg) => return Ok(Finding::failed("read back", msg)),
        };
    let with_sums = expected.iter().filter(|e| e.checksum.is_some()).count();
    let checksums = with_sums > 0;
    let coverage = if with_sums == expected.len() {
        "counts and checksums".to_string()
    } else if with_sums == 0 {
        "counts only: the backup recorded no checksums (taken before they were recorded, or imported)".to_string()
    } else {
        format!(
            "counts, and checksums of the {with_sums} of {} collections that recorded one",
            expected.len()
        )
    };
    let message = (!mismatches.is_empty()).then(|| {
        let first: Vec<String> = mismatches.iter().take(3).map(Mismatch::describe).collect();
        format!(
            "{} of {compared} collections differ from what the backup recorded: {}",
            mismatches.len(),
            first.join("; ")
        )
    });
    Ok(Finding {
        result: if mismatches.is_empty() {
            DrillResult::Passed
        } else {
            DrillResult::Failed
        },
        checksums,
        detail: serde_json::json!({
            "stage": "compare",
            "compared": coverage,
            "collections": compared,
            "views_skipped": views,
            "documents": documents,
            "mismatch_count": mismatches.len(),
            "mismatches": mismatches.iter().take(MAX_MISMATCHES).map(Mismatch::to_json).collect::<Vec<_>>(),
        }),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_of(docs: &[bson::Document]) -> DocSetChecksum {
        let mut c = DocSetChecksum::new();
        for d in docs {
            c.add(RawDocumentBuf::from_document(d).expect("bson").as_bytes());
        }
        c
    }

    #[test]
    fn the_manifest_list_is_read_with_and_without_checksums() {
        let sum = sum_of(&[doc! {"_id": 1}]);
        let extra = serde_json::json!({"namespaces": [
            {"db": "app", "collection": "a", "documents": 1, "raw_bytes": 14, "crc": 5, "checksum": sum.to_hex()},
            {"db": "app", "collection": "old", "documents": 7, "raw_bytes": 99, "crc": 6},
        ]});
        let got = expected_of(&extra).expect("parse");
        assert_eq!(got[0].checksum, Some(sum));
        assert_eq!((got[1].documents, got[1].checksum), (7, None));
        assert!(expected_of(&serde_json::json!({})).is_err());
        assert!(
            expected_of(&serde_json::json!({"namespaces": [{"db": "a", "collection": "b"}]}))
                .is_err()
        );
        assert!(expected_of(
            &serde_json::json!({"namespaces": [{"db": "a", "collection": "b", "documents": 1, "checksum": "zz"}]})
        )
        .is_err());
    }

    #[test]
    fn counts_and_checksums_are_compared() {
        let docs = [doc! {"_id": 1, "v": "a"}, doc! {"_id": 2, "v": "b"}];
        let e = Expected {
            db: "app".into(),
            collection: "c".into(),
            documents: 2,
            checksum: Some(sum_of(&docs)),
        };
        let same = Restored {
            documents: 2,
            checksum: sum_of(&[docs[1].clone(), docs[0].clone()]),
        };
        assert_eq!(compare(&e, &same), None);
        let changed = Restored {
            documents: 2,
            checksum: sum_of(&[docs[0].clone(), doc! {"_id": 2, "v": "B"}]),
        };
        let m = compare(&e, &changed).expect("a changed document is a mismatch");
        assert!(m.describe().contains("checksum"), "{}", m.describe());
        let fewer = Restored {
            documents: 1,
            checksum: sum_of(&docs[..1]),
        };
        let m = compare(&e, &fewer).expect("a lost document is a mismatch");
        assert_eq!(m.describe(), "app.c: 1 documents, 2 expected");
        // Without a recorded checksum only the count is compared.
        let counts_only = Expected {
            checksum: None,
            ..e
        };
        assert_eq!(compare(&counts_only, &changed), None);
        assert!(compare(&counts_only, &fewer).is_some());
    }
}
