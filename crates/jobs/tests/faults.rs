//! Faults injected into the repository at every stage of every job path (issue 17): Logical, Physical and
//! Snapshot backups, a restore and a collector pass, against a real FerretDB (`$STACK_DIR/bin/ferretdb`) and a
//! local repository wrapped in the fault-injecting store (`ddsvault-repo`'s `fault-injection` feature).
//!
//! For each operation kind a backup performs (put, multipart part, get, list, rename) the stages are found by
//! counting that kind's calls in a clean backup, then a fault is set at the first, a middle and the last of them
//! (failing from there on, as a full disk does), and once by a byte limit ("No space left on device" after N
//! bytes). Each faulty job must: end Failed (never Success) within [`BOUND`], with the injected error in its
//! message; leave no file of its own (backup prefix, staging, new snapshot chunks); and free the instance, so a
//! backup taken once the fault is cleared succeeds.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ddsvault_catalog::{BackupMethod, Catalog, Job, JobState, NewBackupJob, NewJob};
use ddsvault_jobs::{BackupSettings, Gc, InstanceSpec, Runner, Tasks};
use ddsvault_repo::faults::{FaultKind, FaultOp, FaultPlan};
use ddsvault_repo::Repository;

/// A faulty job must be Failed within this long after its creation.
const BOUND: Duration = Duration::from_secs(30);
const IID: &str = "dds-faults";

fn stack_dir() -> PathBuf {
    std::env::var_os("STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.stack"))
}

/// FerretDB from the stack; under `CI=true` a missing binary fails the test instead of skipping it.
fn ferretdb_bin() -> Option<PathBuf> {
    let p = std::env::var_os("DDSVAULT_FERRETDB")
        .map(PathBuf::from)
        .unwrap_or_else(|| stack_dir().join("bin").join("ferretdb"));
    if p.is_file() {
        return Some(p);
    }
    let reason = format!(
        "ferretdb not found at {} (run scripts/setup-stack.sh)",
        p.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}; CI=true: a test may not pass by skipping");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
    None
}

struct FerretDb {
    child: Child,
    port: u16,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl FerretDb {
    fn start(bin: &Path) -> FerretDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&data).expect("mkdir data");
        std::fs::create_dir_all(&state).expect("mkdir state");
        for attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let log = std::fs::File::create(dir.path().join(format!("ferretdb-{attempt}.log")))
                .expect("log");
            let mut child = Command::new(bin)
                .arg("--handler=sqlite")
                .arg(format!("--sqlite-url=file:{}/", data.display()))
                .arg(format!("--listen-addr=127.0.0.1:{port}"))
                .arg(format!("--state-dir={}", state.display()))
                .arg("--telemetry=disable")
                .arg("--debug-addr=-")
                .arg("--log-level=warn")
                .arg("--repl-set-name=rs0")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup"))
                .stderr(log)
                .spawn()
                .expect("spawn ferretdb");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return FerretDb {
                        child,
                        port,
                        data,
                        _dir: dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start ferretdb");
    }

    fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.port)
    }
}

impl Drop for FerretDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Env {
    ferret: FerretDb,
    catalog: Catalog,
    plan: Arc<FaultPlan>,
    repo: Repository,
    repo_dir: tempfile::TempDir,
    runner: Arc<Runner>,
    tasks: Tasks,
    _scratch: tempfile::TempDir,
    _catalog_dir: tempfile::TempDir,
}

impl Env {
    async fn start(bin: &Path) -> Env {
        let ferret = FerretDb::start(bin);
        let client = mongodb::Client::with_uri_str(ferret.uri())
            .await
            .expect("client");
        client
            .database("local")
            .create_collection("oplog.rs")
            .with_options(
                mongodb::options::CreateCollectionOptions::builder()
                    .capped(true)
                    .size(64 * 1024 * 1024)
                    .build(),
            )
            .await
            .expect("oplog");
        // ~1.5 MB over two databases: several chunks, parts and files per backup.
        for db in ["shop", "crm"] {
            let docs: Vec<bson::Document> = (0..1500)
                .map(|i: i64| bson::doc! {"_id": i, "pad": format!("{db}-{i}-{}", "x".repeat(400 + (i % 97) as usize))})
                .collect();
            client
                .database(db)
                .collection::<bson::Document>("docs")
                .insert_many(docs)
                .await
                .expect("seed");
        }
        // A file catalog, as in production (an in-memory one is per connection).
        let catalog_dir = tempfile::tempdir().expect("catalog dir");
        let catalog = ddsvault_catalog::open(&format!(
            "sqlite://{}",
            catalog_dir.path().join("catalog.db").display()
        ))
        .await
        .expect("catalog");
        catalog
            .register_instance(IID, Utc::now())
            .await
            .expect("register");
        let repo_dir = tempfile::tempdir().expect("repo dir");
        let plan = Arc::new(FaultPlan::default());
        let repo = Repository::local(repo_dir.path())
            .expect("repo")
            .with_faults(Arc::clone(&plan));
        let scratch = tempfile::tempdir().expect("scratch");
        let mut instances = HashMap::new();
        instances.insert(
            IID.to_string(),
            InstanceSpec {
                id: IID.into(),
                uri: ferret.uri(),
                storage_type: "local_ssd".into(),
                data_path: Some(ferret.data.clone()),
            },
        );
        let runner = Arc::new(Runner::new(
            Arc::clone(&catalog),
            repo.clone(),
            Arc::new(instances),
            "node-faults".into(),
            BackupSettings {
                compression: ddsvault_mongo::archive::Compression::Zstd { level: 1 },
                parallel_collections: 2,
                scratch_dir: scratch.path().to_path_buf(),
                stall_timeout: Duration::from_secs(20),
            },
            2,
        ));
        let tasks = Tasks::new();
        let r = Arc::clone(&runner);
        let t = tasks.clone();
        tasks.spawn("runner", move |token| r.run(t, token));
        Env {
            ferret,
            catalog,
            plan,
            repo,
            repo_dir,
            runner,
            tasks,
            _scratch: scratch,
            _catalog_dir: catalog_dir,
        }
    }

    /// Every file of the repository with its size (what a failed job must not add to).
    fn files(&self) -> BTreeMap<String, u64> {
        fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, u64>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, root, out);
                } else if let Ok(m) = e.metadata() {
                    let rel = p
                        .strip_prefix(root)
                        .expect("under root")
                        .display()
                        .to_string();
                    out.insert(rel, m.len());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.repo_dir.path(), self.repo_dir.path(), &mut out);
        out
    }

    async fn backup(&self, method: BackupMethod) -> Job {
        let (job, _) = self
            .catalog
            .create_backup_job(&NewBackupJob {
                instance_id: IID.into(),
                method,
                mode: "Manual".into(),
                retention_days: 7,
                engine_version: "7.0".into(),
                params: serde_json::json!({"method": method}),
                now: Utc::now(),
            })
            .await
            .expect("create backup job");
        self.runner.wake();
        self.finish(job.id).await
    }

    async fn restore(&self, backup_id: i64) -> Job {
        let job = self
            .catalog
            .create_job(&NewJob {
                kind: ddsvault_catalog::JobKind::Restore,
                instance_id: IID.into(),
                backup_id: Some(backup_id),
                mode: "Manual".into(),
                params: serde_json::json!({"source_instance": IID, "drop": true}),
                now: Utc::now(),
            })
            .await
            .expect("create restore job");
        self.runner.wake();
        self.finish(job.id).await
    }

    /// Waits for the job to end; panics if it does not within [`BOUND`].
    async fn finish(&self, job_id: i64) -> Job {
        let start = Instant::now();
        loop {
            let job = self
                .catalog
                .get_job(job_id)
                .await
                .expect("get job")
                .expect("job exists");
            if matches!(job.state, JobState::Success | JobState::Failed) {
                return job;
            }
            assert!(
                start.elapsed() < BOUND,
                "job {job_id} still {:?} after {BOUND:?}: {job:?}",
                job.state
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Where the faults go: each op kind at its first, middle and last call in a clean run.
fn stages(calls: u64) -> Vec<u64> {
    let mut v = vec![1, calls.div_ceil(2), calls];
    v.retain(|n| *n >= 1);
    v.dedup();
    v
}

const OPS: [FaultOp; 5] = [
    FaultOp::Put,
    FaultOp::PutPart,
    FaultOp::Get,
    FaultOp::List,
    FaultOp::Rename,
];

/// Counts each op kind over one clean run of `run`.
async fn census<F, Fut>(env: &Env, run: F) -> HashMap<FaultOp, u64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Job>,
{
    let before: HashMap<FaultOp, u64> = OPS.iter().map(|op| (*op, env.plan.calls(*op))).collect();
    let job = run().await;
    assert_eq!(job.state, JobState::Success, "clean run: {job:?}");
    OPS.iter()
        .map(|op| (*op, env.plan.calls(*op) - before[op]))
        .collect()
}

/// One faulty backup: Failed in time with the injected error, nothing of its own left, instance freed.
async fn faulty_backup(env: &Env, method: BackupMethod, what: &str) {
    let before = env.files();
    let injected = env.plan.injected();
    let start = Instant::now();
    let job = env.backup(method).await;
    let took = start.elapsed();
    env.plan.clear();
    if env.plan.injected() == injected {
        // The fault's position was past what this run did (runs differ slightly): it must then succeed.
        assert_eq!(job.state, JobState::Success, "{method} {what}: {job:?}");
        return;
    }
    assert!(took < BOUND, "{method} {what}: took {took:?}");
    if job.state == JobState::Success {
        // The fault hit a best-effort step after the commit (removing the emptied staging area): the backup
        // must then really be complete — its manifest readable and every file it lists stored at its size.
        let prefix = Repository::backup_prefix(IID, job.backup_id.expect("backup id"));
        let m = env
            .repo
            .read_manifest(&prefix)
            .await
            .expect("manifest readable")
            .unwrap_or_else(|| panic!("{method} {what}: Success without a manifest"));
        let files = env.files();
        for f in &m.files {
            let at = format!("{prefix}/{}", f.name);
            assert_eq!(
                files.get(&at),
                Some(&f.size),
                "{method} {what}: {at} missing or short"
            );
        }
        return;
    }
    assert_eq!(job.state, JobState::Failed, "{method} {what}: {job:?}");
    let error = job.error.clone().unwrap_or_default();
    assert!(
        error.contains("injected fault"),
        "{method} {what}: the job's error does not give the reason: {error:?}"
    );
    let after = env.files();
    let added: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert!(
        added.is_empty(),
        "{method} {what}: the failed job left files behind: {added:?}"
    );
    assert_eq!(
        env.catalog.active_job(IID).await.expect("active"),
        None,
        "{method} {what}: instance still busy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_fails_the_job_in_time_cleans_up_and_frees_the_instance() {
    let Some(bin) = ferretdb_bin() else {
        return;
    };
    let env = Env::start(&bin).await;
    let mut hit: BTreeMap<String, u64> = BTreeMap::new();
    for method in BackupMethod::ALL {
        let calls = census(&env, || env.backup(method)).await;
        for op in OPS {
            for nth in stages(calls[&op]) {
                let what = format!("{op:?} #{nth} of {}", calls[&op]);
                let before = env.plan.injected();
                // Writes and reads fail from there on, as on a full or broken disk; a listing fails once (a job
                // cleans up by listing its prefixes, so a store that can never list cannot be cleaned).
                let times = if op == FaultOp::List { 1 } else { u64::MAX };
                env.plan.fail(op, nth, times, FaultKind::NoSpace);
                faulty_backup(&env, method, &what).await;
                if env.plan.injected() > before {
                    *hit.entry(format!("{method} {op:?}")).or_default() += 1;
                }
                // Freed: the next backup succeeds.
                let next = env.backup(method).await;
                assert_eq!(
                    next.state,
                    JobState::Success,
                    "{method} after {what}: {next:?}"
                );
            }
        }
        // A repository that fills up part-way. New documents first, so that a snapshot has new chunks to write
        // (it writes only its index and manifest when nothing changed).
        let client = mongodb::Client::with_uri_str(env.ferret.uri())
            .await
            .expect("client");
        let docs: Vec<bson::Document> = (0..500)
            .map(|i: u64| {
                let pad: String = (0..40)
                    .map(|k| {
                        format!(
                            "{:016x}",
                            (i * 1000 + k).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        )
                    })
                    .collect();
                bson::doc! {"method": method.as_str(), "i": i as i64, "pad": pad}
            })
            .collect();
        client
            .database("shop")
            .collection::<bson::Document>("more")
            .insert_many(docs)
            .await
            .expect("more documents");
        env.plan.fail_after_bytes(8 * 1024);
        let before = env.plan.injected();
        faulty_backup(&env, method, "full repository").await;
        assert!(
            env.plan.injected() > before,
            "{method}: the byte limit never hit"
        );
        let next = env.backup(method).await;
        assert_eq!(
            next.state,
            JobState::Success,
            "{method} after a full repository: {next:?}"
        );
    }
    // Every method met faults at each kind of write and read it does (the others are reported below).
    for method in BackupMethod::ALL {
        for op in [FaultOp::Put, FaultOp::Get, FaultOp::List] {
            assert!(
                hit.get(&format!("{method} {op:?}")).copied().unwrap_or(0) > 0,
                "no {op:?} fault reached a {method} backup: {hit:?}"
            );
        }
    }
    eprintln!("faults that reached a job, by method and operation: {hit:?}");
    env.tasks.token().cancel();
    drop(env.ferret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_faulty_restore_fails_in_time_and_the_next_one_succeeds() {
    let Some(bin) = ferretdb_bin() else {
        return;
    };
    let env = Env::start(&bin).await;
    let backup = env.backup(BackupMethod::Logical).await;
    assert_eq!(backup.state, JobState::Success, "{backup:?}");
    let backup_id = backup.backup_id.expect("backup id");
    let calls = census(&env, || env.restore(backup_id)).await;
    let mut hit = 0;
    for op in OPS {
        for nth in stages(calls[&op]) {
            let before = env.plan.injected();
            let times = if op == FaultOp::List { 1 } else { u64::MAX };
            env.plan.fail(op, nth, times, FaultKind::Io);
            let start = Instant::now();
            let job = env.restore(backup_id).await;
            env.plan.clear();
            if env.plan.injected() == before {
                assert_eq!(job.state, JobState::Success, "{op:?} #{nth}: {job:?}");
                continue;
            }
            hit += 1;
            assert_eq!(job.state, JobState::Failed, "{op:?} #{nth}: {job:?}");
            assert!(start.elapsed() < BOUND);
            assert!(
                job.error
                    .clone()
                    .unwrap_or_default()
                    .contains("injected fault"),
                "{op:?} #{nth}: {job:?}"
            );
            assert_eq!(env.catalog.active_job(IID).await.expect("active"), None);
            let next = env.restore(backup_id).await;
            assert_eq!(
                next.state,
                JobState::Success,
                "after {op:?} #{nth}: {next:?}"
            );
        }
    }
    assert!(hit > 0, "no fault reached the restore: {calls:?}");
    env.tasks.token().cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_faulty_collector_pass_fails_in_time_and_the_next_one_finishes_the_work() {
    let Some(bin) = ferretdb_bin() else {
        return;
    };
    let env = Env::start(&bin).await;
    let gc = Gc::new(
        Arc::clone(&env.catalog),
        env.repo.clone(),
        Duration::from_secs(3600),
    )
    .with_chunk_grace(Duration::ZERO);
    for op in [FaultOp::List, FaultOp::Get, FaultOp::Delete] {
        // Two snapshots and a logical backup; the first snapshot and the logical one are then deleted.
        let mut ids = Vec::new();
        for method in [
            BackupMethod::Snapshot,
            BackupMethod::Logical,
            BackupMethod::Snapshot,
        ] {
            let j = env.backup(method).await;
            assert_eq!(j.state, JobState::Success, "{j:?}");
            ids.push(j.backup_id.expect("id"));
        }
        // Marked only: the pass deletes their files (and then the chunks only the first snapshot named).
        for id in &ids[..2] {
            assert!(matches!(
                env.catalog.mark_backup_deleting(*id).await.expect("mark"),
                ddsvault_catalog::DeleteMark::Marked(_)
            ));
        }
        // A fault at the first operation of its kind; the pass must end (not hang) within the bound.
        env.plan.fail(op, 1, u64::MAX, FaultKind::Io);
        let before = env.plan.injected();
        let start = Instant::now();
        let outcome = tokio::time::timeout(BOUND, gc.pass()).await;
        env.plan.clear();
        let outcome = outcome.unwrap_or_else(|_| panic!("{op:?}: the collector pass hung"));
        if env.plan.injected() > before {
            match &outcome {
                Ok(report) => assert!(
                    report.failed > 0 || !report.chunk_stores_skipped.is_empty(),
                    "{op:?}: a pass that met a fault reported none: {report:?}"
                ),
                Err(e) => assert!(e.to_string().contains("injected fault"), "{op:?}: {e}"),
            }
        }
        assert!(start.elapsed() < BOUND);
        // The next pass finishes: the deleted backups' files and the chunks only they named are gone, and the
        // kept snapshot restores its chunks (verified by counting: every chunk left is named by it).
        let report = gc.pass().await.expect("clean pass");
        assert_eq!(report.failed, 0, "{op:?}: {report:?}");
        for id in &ids[..2] {
            assert!(
                !env.files()
                    .keys()
                    .any(|k| k.starts_with(&format!("backups/{IID}/{id}/"))),
                "{op:?}: deleted backup {id} still has files"
            );
        }
        let kept = env.repo.referenced_chunks(IID).await.expect("refs");
        let stored = env.repo.stored_chunk_digests(IID).await.expect("stored");
        assert_eq!(
            stored, kept,
            "{op:?}: orphan chunks left after a clean pass"
        );
        ddsvault_jobs::gc::delete_backup(&env.catalog, &env.repo, ids[2])
            .await
            .expect("delete the last");
        gc.pass().await.expect("pass");
    }
    env.tasks.token().cancel();
}
