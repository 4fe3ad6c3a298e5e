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
//! With `RestoreDrillTarget=provision` the scratch is a temporary instance started from `[provisioning]` for the
//! job and removed after it ([`run_provisioned`]); that also drills Physical and Snapshot backups, whose files are
//! materialized into it and compared with what they hold ([`file_drill`]).
//!
//! A backup that fails 2 or 3 gets a `Failed` drill: it is unverified until a later drill passes, the job fails
//! with `Drill.Failed`, and a `drill_failed` event goes to the watchers (alert webhooks, metrics).

use std::sync::Arc;
use std::time::Instant;

use bson::{doc, RawDocumentBuf};
use chrono::Utc;
use ddsvault_catalog::{Backup, DrillResult, Job, NewRestoreDrill};
use ddsvault_mongo::checksum::{ChecksumAlgorithm, DocSetChecksum};
use ddsvault_mongo::topology::connect;
use mongodb::Client;
use tokio_util::sync::CancellationToken;

use crate::progress::{with_heartbeat, Phase, Progress};
use crate::provision::Provisioner;
use crate::{DrillOutcome, Event, JobError, Runner};

/// Mismatches kept in a drill's detail (the count of all of them is kept too).
const MAX_MISMATCHES: usize = 100;

/// What the backup recorded about one collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The database name.
    pub db: String,
    /// The collection name.
    pub collection: String,
    /// The document count the manifest recorded.
    pub documents: u64,
    /// `None`: the backup recorded no checksum (taken before checksums existed, or imported).
    pub checksum: Option<DocSetChecksum>,
}

/// What was read back from the scratch instance for one collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The documents read back.
    pub documents: u64,
    /// The checksum of the documents read back.
    pub checksum: DocSetChecksum,
}

/// The collections a backup's manifest records (`extra.namespaces`), in manifest order.
///
/// # Errors
/// A manifest without a readable namespace list: nothing could be compared, which fails the drill.
pub fn expected_of(extra: &serde_json::Value) -> Result<Vec<Expected>, String> {
    // Checksums are read with the algorithm the backup names (older backups: SHA-256, newer: XXH3-128).
    let recorded = extra.get("checksum_algorithm").and_then(|v| v.as_str());
    let algorithm = ChecksumAlgorithm::of_manifest(recorded).ok_or_else(|| {
        format!(
            "the manifest's checksum algorithm {:?} is unknown to this version",
            recorded.unwrap_or_default()
        )
    })?;
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
                        .and_then(|h| DocSetChecksum::from_hex(algorithm, h))
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
    /// The database name.
    pub db: String,
    /// The collection name.
    pub collection: String,
    /// The document count the backup recorded.
    pub expected_documents: u64,
    /// The document count read back.
    pub restored_documents: u64,
    /// The checksum the backup recorded (hex); `None` when it recorded none.
    pub expected_checksum: Option<String>,
    /// The checksum of the documents read back (hex).
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

/// Reads every document of `db.collection` on `client` into a count and a checksum of `algorithm` (the one the
/// backup used). `None` for a view (it has no documents of its own: its results are its source collection's,
/// compared there).
///
/// # Errors
/// The driver's error, as text.
pub async fn read_back(
    client: &Client,
    db: &str,
    collection: &str,
    progress: &Progress,
    docs_before: u64,
    algorithm: ChecksumAlgorithm,
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
        checksum: DocSetChecksum::with_algorithm(algorithm),
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

/// The `RestoreDrillTarget` / `TargetDBInstanceId` value asking for a temporary instance from `[provisioning]`.
pub const PROVISION_TARGET: &str = "provision";
/// Name prefix of a provisioned drill's directory under `[provisioning] base_dir` (`drill-<job id>`).
const SCRATCH_PREFIX: &str = "drill-";

/// Whether a drill job restores into a temporary provisioned instance (its `params.target`).
pub fn is_provisioned(job: &Job) -> bool {
    job.params.get("target").and_then(|v| v.as_str()) == Some(PROVISION_TARGET)
}

pub(crate) async fn run(
    runner: &Runner,
    job: &Job,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    let backup = runner.job_backup(job).await?;
    let backup_id = backup.id;
    let source = job
        .params
        .get("source_instance")
        .and_then(|v| v.as_str())
        .ok_or_else(|| JobError::Other("drill job names no source instance".into()))?
        .to_string();
    if is_provisioned(job) {
        return run_provisioned(runner, job, &backup, &source, cancel).await;
    }
    if backup.method != ddsvault_catalog::BackupMethod::Logical {
        return Err(JobError::Other(format!(
            "backup {backup_id} is {}: a drill into a registered scratch instance restores Logical backups; \
             Physical and Snapshot backups are drilled with RestoreDrillTarget=provision (docs/drills.md)",
            backup.method
        )));
    }
    let target = runner.instance(&job.instance_id)?;
    // 1. The scratch must answer before anything about the backup is concluded.
    let client = connect(&target.uri).await?;
    ping(&client, &job.instance_id).await?;
    let started_at = Utc::now();
    let clock = Instant::now();
    let finding = drill(runner, job, &backup, &target.uri, &client, cancel).await?;
    finish(
        runner,
        job,
        &source,
        backup_id,
        &job.instance_id,
        (started_at, clock),
        finding,
    )
    .await
}

async fn ping(client: &Client, what: &str) -> Result<(), JobError> {
    client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .map(|_| ())
        .map_err(|e| {
            JobError::Mongo(ddsvault_mongo::MongoError::Unreachable(format!(
                "scratch instance {what}: {e}"
            )))
        })
}

/// Records the drill, tells the watchers, and ends the job (step 5 of docs/drills.md).
async fn finish(
    runner: &Runner,
    job: &Job,
    source: &str,
    backup_id: i64,
    target: &str,
    (started_at, clock): (chrono::DateTime<Utc>, Instant),
    finding: Finding,
) -> Result<(), JobError> {
    let finished_at = Utc::now();
    let recorded = runner
        .catalog
        .record_restore_drill(&NewRestoreDrill {
            instance_id: source.to_string(),
            backup_id,
            target: target.to_string(),
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
        instance_id: source.to_string(),
        backup_id,
        target: target.to_string(),
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
        runner.complete(job, &result).await
    } else {
        Err(JobError::DrillFailed(format!(
            "backup {backup_id}: {}",
            finding.message.unwrap_or_default()
        )))
    }
}

/// A drill into a temporary instance started from `[provisioning]` for this drill only (`drill-<job id>` under the
/// base directory, a free port of the range): Logical backups are restored into it through the wire protocol as
/// into a registered scratch; Physical and Snapshot backups are materialized into its data directory before it
/// starts ([`file_drill`]). The process is stopped and its directory removed whatever happened, before the drill
/// is recorded; directories left by a drill that could not clean up (ddsvault killed) are removed by the next
/// provisioned drill on any node that sees them ([`sweep_scratch`]).
async fn run_provisioned(
    runner: &Runner,
    job: &Job,
    backup: &Backup,
    source: &str,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    let prov = runner.provisioner().cloned().ok_or_else(|| {
        JobError::Other(
            "RestoreDrillTarget=provision: this ddsvault node has no [provisioning] configuration"
                .into(),
        )
    })?;
    sweep_scratch(runner, &prov).await;
    let scratch = format!("{SCRATCH_PREFIX}{}", job.id);
    let dir = prov.instance_dir(&scratch);
    // A directory of this job's earlier life (its process died with ddsvault) is not ours to keep.
    let _ = tokio::fs::remove_dir_all(&dir).await;
    let data = Provisioner::data_dir(&dir);
    tokio::fs::create_dir_all(&data)
        .await
        .map_err(|e| JobError::Filesystem(format!("create {}: {e}", data.display())))?;
    let taken: Vec<u16> = runner
        .catalog
        .list_provisioned_instances()
        .await?
        .iter()
        .map(|p| p.port)
        .collect();
    let port = prov
        // A start that differs per drill, so two drills rarely try the same port first.
        .pick_port(
            &taken,
            (job.id as u32).wrapping_mul(2_654_435_761) ^ Utc::now().timestamp_subsec_nanos(),
        )
        .ok_or_else(|| {
            JobError::Other("no free port in the [provisioning] range for a drill".into())
        })?;
    let target = format!("{PROVISION_TARGET}:{scratch}");
    let started_at = Utc::now();
    let clock = Instant::now();
    let outcome = async {
        match backup.method {
            ddsvault_catalog::BackupMethod::Logical => {
                // An empty server that does not start says nothing about the backup.
                prov.start(&scratch, port, &dir).await?;
                let uri = Provisioner::uri(port);
                let client = connect(&uri).await?;
                ping(&client, &scratch).await?;
                drill(runner, job, backup, &uri, &client, cancel).await
            }
            ddsvault_catalog::BackupMethod::Physical | ddsvault_catalog::BackupMethod::Snapshot => {
                file_drill(runner, job, backup, &prov, &scratch, port, &dir, cancel).await
            }
        }
    }
    .await;
    if let Err(e) = prov.destroy(&scratch, &dir).await {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove a drill's temporary instance; the next provisioned drill retries");
    }
    let finding = outcome?;
    finish(
        runner,
        job,
        source,
        backup.id,
        &target,
        (started_at, clock),
        finding,
    )
    .await
}

/// Removes the `drill-<job>` directories of drill jobs that are no longer active (a ddsvault killed during a
/// provisioned drill leaves one). Logged, never fatal.
async fn sweep_scratch(runner: &Runner, prov: &Provisioner) {
    let base = prov.settings().base_dir.clone();
    let Ok(mut entries) = tokio::fs::read_dir(&base).await else {
        return;
    };
    while let Ok(Some(e)) = entries.next_entry().await {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(job_id) = name
            .strip_prefix(SCRATCH_PREFIX)
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        let active = match runner.catalog.get_job(job_id).await {
            Ok(Some(j)) => matches!(
                j.state,
                ddsvault_catalog::JobState::Pending | ddsvault_catalog::JobState::Running
            ),
            Ok(None) => false,
            Err(err) => {
                tracing::warn!(job_id, error = %err, "could not read a drill job; its scratch directory stays");
                true
            }
        };
        if !active {
            if let Err(err) = prov.destroy(&name, &e.path()).await {
                tracing::warn!(dir = %e.path().display(), error = %err, "could not remove a stale drill directory");
            } else {
                tracing::info!(dir = %e.path().display(), "removed the directory of an ended drill");
            }
        }
    }
}

/// The drill of a Physical or Snapshot backup (docs/drills.md, "File backups"): the backup's files are written into
/// the temporary instance's data directory (each checked against the manifest's size and SHA-256), SQLite reads
/// their own figures from them ([`file_figures`]: `quick_check`, every collection counted), the server starts on
/// them, and every collection is read back through the wire protocol and compared with those counts (the
/// per-collection checksums of what was read are kept in the detail: file backups record none to compare with).
#[allow(clippy::too_many_arguments)]
async fn file_drill(
    runner: &Runner,
    job: &Job,
    backup: &Backup,
    prov: &Provisioner,
    scratch: &str,
    port: u16,
    dir: &std::path::Path,
    cancel: &CancellationToken,
) -> Result<Finding, JobError> {
    let manifest = match crate::integrity::authenticated_manifest(&runner.repo, backup).await {
        Ok(m) => m.manifest,
        Err(e @ (JobError::Repo(_) | JobError::Other(_))) => {
            return Ok(Finding::failed("manifest", e.to_string()))
        }
        Err(e) => return Err(e),
    };
    let prefix = ddsvault_repo::RepoPath::new(backup.repo_prefix.clone())?;
    let data = Provisioner::data_dir(dir);
    let progress = Arc::new(Progress::new(job.id));
    progress.set_phase(Phase::Restoring);
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let work_cancel = cancel.child_token();
    let work = async {
        ddsvault_repo::export::materialize(
            &runner.repo,
            &prefix,
            &manifest,
            &data,
            &work_cancel,
            Arc::clone(&done),
        )
        .await
        .map_err(JobError::from)
    };
    let materialized = match with_heartbeat(runner, job, &progress, &work_cancel, work).await? {
        Ok(m) => m,
        Err(e) if cancel.is_cancelled() => return Err(e),
        Err(e @ (JobError::Catalog(_) | JobError::Cancelled(_) | JobError::Stalled(_))) => {
            return Err(e)
        }
        Err(e) => return Ok(Finding::failed("restore", e.to_string())),
    };
    let files_dir = data.clone();
    let expected = match tokio::task::spawn_blocking(move || file_figures(&files_dir)).await {
        Ok(Ok(x)) => x,
        Ok(Err(msg)) => return Ok(Finding::failed("open files", msg)),
        Err(e) => return Err(JobError::Other(format!("the file check task failed: {e}"))),
    };
    // The files are the backup's: a server that cannot start on them fails the drill (its log says why).
    if let Err(e) = prov.start(scratch, port, dir).await {
        return Ok(Finding::failed("start", e.to_string()));
    }
    let uri = Provisioner::uri(port);
    let client = match connect(&uri).await {
        Ok(c) => c,
        Err(e) => return Ok(Finding::failed("start", e.to_string())),
    };
    progress.set_phase(Phase::Verifying);
    progress.set_percent(90);
    let compare_all = async {
        let mut mismatches = Vec::new();
        let mut served = Vec::new();
        let mut documents = 0u64;
        let mut views = 0u64;
        for (db, collection, count) in &expected {
            // The files record no checksums: what the server returns is summed with today's algorithm, for the record.
            match read_back(
                &client,
                db,
                collection,
                &progress,
                documents,
                ChecksumAlgorithm::CURRENT,
            )
            .await?
            {
                Some(r) => {
                    documents += r.documents;
                    let e = Expected {
                        db: db.clone(),
                        collection: collection.clone(),
                        documents: *count,
                        checksum: None,
                    };
                    if let Some(m) = compare(&e, &r) {
                        mismatches.push(m);
                    }
                    served.push(serde_json::json!({
                        "db": db, "collection": collection, "documents": r.documents,
                        "checksum": r.checksum.to_hex(),
                    }));
                }
                None => views += 1,
            }
        }
        Ok::<_, String>((mismatches, served, documents, views))
    };
    let (mismatches, served, documents, views) =
        match with_heartbeat(runner, job, &progress, cancel, compare_all).await? {
            Ok(x) => x,
            Err(msg) => return Ok(Finding::failed("read back", msg)),
        };
    let compared = served.len();
    let message = (!mismatches.is_empty()).then(|| {
        let first: Vec<String> = mismatches.iter().take(3).map(Mismatch::describe).collect();
        format!(
            "{} of {compared} collections are not served as their files hold them: {}",
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
        checksums: false,
        detail: serde_json::json!({
            "stage": "compare",
            "compared": "counts: the backup's files (SHA-256 checked, SQLite quick_check) against what the server \
                         started on them serves; file backups record no per-collection checksums",
            "method": backup.method,
            "files": materialized.files.len(),
            "bytes": materialized.bytes,
            "collections": compared,
            "views_skipped": views,
            "documents": documents,
            "mismatch_count": mismatches.len(),
            "mismatches": mismatches.iter().take(MAX_MISMATCHES).map(Mismatch::to_json).collect::<Vec<_>>(),
            "served": served.into_iter().take(MAX_MISMATCHES).collect::<Vec<_>>(),
        }),
        message,
    })
}

/// The collections a materialized FerretDB SQLite data directory holds, with their document counts, read with
/// SQLite itself from the files (which [`ddsvault_repo::export::materialize`] wrote only after checking each one's
/// size and SHA-256 against the manifest, so these are the backup's own figures): each `<db>.sqlite` is checked
/// with `PRAGMA quick_check`, then every collection of its `_ferretdb_collections` table is counted. Sorted by
/// database and collection.
///
/// # Errors
/// A file SQLite cannot open or that fails `quick_check`, or a FerretDB table that cannot be counted, as text.
pub fn file_figures(dir: &std::path::Path) -> Result<Vec<(String, String, u64)>, String> {
    use rusqlite::{Connection, OpenFlags};
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    let mut files: Vec<std::path::PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sqlite"))
        .collect();
    files.sort();
    for path in files {
        let Some(db) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| format!("open {}: {e}", path.display()))?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| format!("quick_check {}: {e}", path.display()))?;
        if check != "ok" {
            return Err(format!("{}: quick_check says {check}", path.display()));
        }
        let has_meta: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '_ferretdb_collections'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| format!("{}: {e}", path.display()))?
            > 0;
        if !has_meta {
            // A database FerretDB created no collection in yet.
            continue;
        }
        let mut stmt = conn
            .prepare("SELECT name, table_name FROM _ferretdb_collections ORDER BY name")
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let tables: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect::<Result<Vec<(String, String)>, _>>())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        for (collection, table) in tables {
            let sql = format!("SELECT count(*) FROM \"{}\"", table.replace('"', "\"\""));
            let n: i64 = conn
                .query_row(&sql, [], |r| r.get(0))
                .map_err(|e| format!("count {db}.{collection} in {}: {e}", path.display()))?;
            out.push((db.clone(), collection, u64::try_from(n).unwrap_or(0)));
        }
    }
    Ok(out)
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
            let algorithm = e
                .checksum
                .map_or(ChecksumAlgorithm::CURRENT, |c| c.algorithm());
            match read_back(
                client,
                &e.db,
                &e.collection,
                &progress,
                documents,
                algorithm,
            )
            .await
            {
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
        let extra = serde_json::json!({"checksum_algorithm": ddsvault_mongo::checksum::ALGORITHM, "namespaces": [
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
    fn file_figures_count_every_ferretdb_collection_and_refuse_a_damaged_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let make = |db: &str, colls: &[(&str, &str, usize)]| {
            let c =
                rusqlite::Connection::open(dir.path().join(format!("{db}.sqlite"))).expect("open");
            // FerretDB 1.x's metadata table, as its registry creates it.
            c.execute_batch(
                "CREATE TABLE _ferretdb_collections (name TEXT NOT NULL UNIQUE CHECK(name != ''), \
                 table_name TEXT NOT NULL UNIQUE CHECK(table_name != ''), settings TEXT NOT NULL \
                 CHECK(settings != '')) STRICT",
            )
            .expect("meta");
            for (name, table, n) in colls {
                c.execute(
                    "INSERT INTO _ferretdb_collections VALUES (?1, ?2, '{}')",
                    [name, table],
                )
                .expect("row");
                c.execute_batch(&format!(
                    "CREATE TABLE \"{table}\" (_ferretdb_sjson TEXT NOT NULL) STRICT"
                ))
                .expect("table");
                for i in 0..*n {
                    c.execute(
                        &format!("INSERT INTO \"{table}\" VALUES (?1)"),
                        [format!("{{\"_id\":{i}}}")],
                    )
                    .expect("doc");
                }
            }
        };
        make(
            "shop",
            &[("orders", "orders_1a", 5), ("empty", "empty_2b", 0)],
        );
        make("crm", &[("notes", "notes_3c", 2)]);
        // A database file without FerretDB's table (no collection created yet) holds nothing.
        rusqlite::Connection::open(dir.path().join("blank.sqlite"))
            .expect("open")
            .execute_batch("CREATE TABLE x (a)")
            .expect("blank");
        std::fs::write(dir.path().join("notes.txt"), b"not a database").expect("write");
        assert_eq!(
            file_figures(dir.path()).expect("figures"),
            [
                ("crm".to_string(), "notes".to_string(), 2),
                ("shop".to_string(), "empty".to_string(), 0),
                ("shop".to_string(), "orders".to_string(), 5),
            ]
        );
        // A file that is not a database fails the check.
        std::fs::write(dir.path().join("bad.sqlite"), vec![7u8; 8192]).expect("write");
        assert!(file_figures(dir.path()).is_err());
    }

    #[test]
    fn older_backups_are_read_with_their_own_algorithm() {
        let bytes = RawDocumentBuf::from_document(&doc! {"_id": 1}).expect("bson");
        let mut old = DocSetChecksum::with_algorithm(ChecksumAlgorithm::Sha256Sum128);
        old.add(bytes.as_bytes());
        let entry = serde_json::json!([{"db": "a", "collection": "b", "documents": 1, "checksum": old.to_hex()}]);
        // Named, or not named at all (read as the first algorithm): both give the SHA-256 sum back.
        for extra in [
            serde_json::json!({"checksum_algorithm": "sha256-sum128", "namespaces": entry.clone()}),
            serde_json::json!({"namespaces": entry.clone()}),
        ] {
            let got = expected_of(&extra).expect("parse");
            assert_eq!(got[0].checksum, Some(old));
            // A drill reads back with the backup's algorithm, so the same documents match.
            let restored = Restored {
                documents: 1,
                checksum: old,
            };
            assert_eq!(compare(&got[0], &restored), None);
        }
        // Read back with another algorithm, the same documents would not match: the algorithm is part of the sum.
        let mut new = DocSetChecksum::new();
        new.add(bytes.as_bytes());
        assert_ne!(new, old);
        // A name this version does not know fails the drill with a reason rather than comparing wrong sums.
        let err = expected_of(
            &serde_json::json!({"checksum_algorithm": "md5-sum128", "namespaces": entry}),
        )
        .expect_err("unknown algorithm");
        assert!(err.contains("md5-sum128"), "{err}");
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
