//! Test support: locating the stack binaries and running throwaway FerretDB instances.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Finds a stack binary: `$DDSVAULT_<NAME>` (e.g. `DDSVAULT_FERRETDB`), then
/// `<repo>/.stack/bin/<name>` (or `$STACK_DIR/bin`), then `$PATH`.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let var = format!("DDSVAULT_{}", name.to_ascii_uppercase());
    if let Some(p) = std::env::var_os(&var).map(PathBuf::from) {
        if p.is_file() {
            return Some(p);
        }
    }
    let p = stack_dir().join("bin").join(name);
    if p.is_file() {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// True under `CI=true`, where no test may pass by skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A missing stack binary: under `CI=true` the test fails with the reason; elsewhere it prints
/// `SKIPPED: <reason>` and the caller returns.
///
/// The message is written straight to the process's stderr, not through `eprintln!`,
/// so the test harness does not capture it: a skip is always visible in the output.
pub fn missing(reason: &str) {
    if in_ci() {
        panic!("{reason}; CI=true: a test may not pass by skipping");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
}

/// Returns the binary, or reports it missing (see [`missing`]) and returns None.
pub fn require_binary(name: &str) -> Option<PathBuf> {
    let found = find_binary(name);
    if found.is_none() {
        missing(&format!(
            "{name} not found (run scripts/setup-stack.sh or set DDSVAULT_{})",
            name.to_ascii_uppercase()
        ));
    }
    found
}

/// The mongo-tools release whose mongorestore can insert into FerretDB 1.24: later releases send
/// `bypassEmptyTsReplacement`, which FerretDB refuses (see shared/third_party/mongo-tools/README.md).
pub const MONGO_TOOLS_FOR_FERRETDB: &str = "100.11.0";

/// The mongorestore to restore INTO FerretDB with: `$DDSVAULT_MONGORESTORE_FERRETDB`, else
/// `$STACK_DIR/mongo-tools-100.11.0/mongorestore` (installed by scripts/setup-stack.sh). The
/// current release (`require_binary("mongorestore")`) serves every check that does not insert.
pub fn require_mongorestore_for_ferretdb() -> Option<PathBuf> {
    let from_env = std::env::var_os("DDSVAULT_MONGORESTORE_FERRETDB").map(PathBuf::from);
    let p = from_env.unwrap_or_else(|| {
        stack_dir()
            .join(format!("mongo-tools-{MONGO_TOOLS_FOR_FERRETDB}"))
            .join("mongorestore")
    });
    if p.is_file() {
        return Some(p);
    }
    missing(&format!(
        "mongorestore {MONGO_TOOLS_FOR_FERRETDB} not found at {} (run scripts/setup-stack.sh or set \
         DDSVAULT_MONGORESTORE_FERRETDB)",
        p.display()
    ));
    None
}

fn stack_dir() -> PathBuf {
    std::env::var_os("STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.stack"))
}

/// What `mongorestore --version` reports on its first line, e.g. `100.18.0`.
pub fn tool_version(bin: &Path) -> String {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("run {} --version: {e}", bin.display()));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.split("version: ").nth(1))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Proves that a (current) mongorestore reads every namespace of a plain or gzip archive without
/// inserting anything (FerretDB 1.24 refuses the inserts of mongorestore >= 100.12.0):
///
/// 1. `--dryRun -v`: it parses the magic number, the prelude header and every namespace's
///    metadata, and makes a restore intent for each (`found collection <ns> bson to restore`).
/// 2. `--nsInclude` of a database that is not in the archive: every namespace is muted, and its
///    demultiplexer still reads the whole archive, block by block: every namespace header (decoded
///    by its strict header decoder), every document's length framing and trailing NUL, every EOF
///    block (`demux checksum for namespace <ns> was not calculated`, logged at -vvvvv), and the end
///    check that every prelude namespace was seen and closed. Muted namespaces skip the CRC-64
///    comparison; the CRCs are checked by the restore with [`MONGO_TOOLS_FOR_FERRETDB`].
///
/// Returns both logs. Panics with the log when mongorestore fails or a namespace is not reported.
pub fn current_mongorestore_reads_every_namespace(
    mongorestore: &Path,
    uri: &str,
    archive: &Path,
    gzip: bool,
    namespaces: &[String],
) -> String {
    let mut logs = String::new();
    for (pass, args, line) in [
        (
            "dry run",
            vec!["--dryRun", "-v"],
            "found collection `{ns}` bson to restore",
        ),
        (
            "full read",
            vec!["--nsInclude=ddsvault-no-such-db.*", "-vvvvv"],
            "demux checksum for namespace `{ns}` was not calculated",
        ),
    ] {
        let mut cmd = Command::new(mongorestore);
        cmd.arg(format!("--uri={uri}"))
            .arg(format!("--archive={}", archive.display()))
            .args(&args);
        if gzip {
            cmd.arg("--gzip");
        }
        let out = cmd.output().expect("run mongorestore");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "mongorestore {pass} of {}: {log}",
            archive.display()
        );
        for ns in namespaces {
            let want = line.replace("{ns}", ns);
            assert!(
                log.contains(&want),
                "mongorestore {pass}: no `{want}` in:\n{log}"
            );
        }
        logs.push_str(&log);
    }
    logs
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A FerretDB (SQLite backend) process on a private port and directory; killed on drop.
pub struct FerretDb {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl FerretDb {
    /// Starts FerretDB; `repl_set` adds `--repl-set-name=rs0`.
    pub fn start(bin: &Path, repl_set: bool) -> FerretDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&data).expect("mkdir data");
        std::fs::create_dir_all(&state).expect("mkdir state");
        for attempt in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join(format!("ferretdb-{attempt}.log")))
                .expect("log file");
            let mut cmd = Command::new(bin);
            cmd.arg("--handler=sqlite")
                .arg(format!("--sqlite-url=file:{}/", data.display()))
                .arg(format!("--listen-addr=127.0.0.1:{port}"))
                .arg(format!("--state-dir={}", state.display()))
                .arg("--telemetry=disable")
                .arg("--debug-addr=-")
                .arg("--log-level=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log);
            if repl_set {
                cmd.arg("--repl-set-name=rs0");
            }
            let mut child = cmd.spawn().expect("spawn ferretdb");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return FerretDb { child, port, dir };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited (port taken?): retry on another port
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut text = String::new();
            if let Ok(mut f) =
                std::fs::File::open(dir.path().join(format!("ferretdb-{attempt}.log")))
            {
                let _ = f.read_to_string(&mut text);
            }
            eprintln!("ferretdb did not start on port {port} (attempt {attempt}): {text}");
        }
        panic!("could not start ferretdb");
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.port)
    }
}

impl Drop for FerretDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain collection's prelude entry (no options) with `indexes`.
pub fn collection_meta(
    db: &str,
    coll: &str,
    indexes: &[bson::Document],
) -> ddsvault_mongo::archive::CollectionMetadata {
    ddsvault_mongo::archive::CollectionMetadata::collection(
        db,
        coll,
        ddsvault_mongo::logical::metadata_json(
            &bson::Document::new(),
            indexes,
            None,
            coll,
            Some("collection"),
        ),
    )
}

/// An uncompressed archive of `collections` (each in one segment) and an oplog namespace
/// holding `oplog`, as a dump of a replica set writes it.
pub fn archive_with_oplog(
    collections: &[(
        ddsvault_mongo::archive::CollectionMetadata,
        Vec<bson::Document>,
    )],
    oplog: &[bson::Document],
) -> Vec<u8> {
    use ddsvault_mongo::archive::{ArchiveHeader, ArchiveWriter, CollectionMetadata};
    let raw = |ds: &[bson::Document]| -> Vec<u8> {
        ds.iter()
            .flat_map(|d| bson::to_vec(d).expect("encode"))
            .collect()
    };
    let mut w =
        ArchiveWriter::new(Vec::new(), &ArchiveHeader::new(1, "7.0.0", "test")).expect("archive");
    let ids: Vec<_> = collections
        .iter()
        .map(|(m, _)| w.add_namespace(m.clone()).expect("namespace"))
        .collect();
    let op = w
        .add_namespace(CollectionMetadata::oplog())
        .expect("oplog namespace");
    w.finish_prelude().expect("prelude");
    for (id, (_, docs)) in ids.iter().zip(collections) {
        if !docs.is_empty() {
            w.write_segment(*id, &raw(docs)).expect("segment");
        }
        w.close_namespace(*id).expect("close");
    }
    if !oplog.is_empty() {
        w.write_segment(op, &raw(oplog)).expect("oplog segment");
    }
    w.close_namespace(op).expect("close oplog");
    w.finish().expect("finish")
}

/// A `Write` into a shared buffer (a dump takes ownership of its output).
#[derive(Clone, Default)]
pub struct SharedBuf(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Creates `local.oplog.rs` (capped, 256 MiB): FerretDB then logs the writes that follow, as a replica set member.
pub async fn create_oplog(client: &mongodb::Client) {
    client
        .database("local")
        .create_collection("oplog.rs")
        .with_options(
            mongodb::options::CreateCollectionOptions::builder()
                .capped(true)
                .size(256 * 1024 * 1024)
                .build(),
        )
        .await
        .expect("create local.oplog.rs");
}

/// Restores the (uncompressed) archive `bytes`.
pub async fn restore_bytes(
    client: &mongodb::Client,
    bytes: Vec<u8>,
    opts: &ddsvault_mongo::restore::RestoreOptions,
) -> Result<ddsvault_mongo::restore::RestoreSummary, ddsvault_mongo::MongoError> {
    let open =
        Box::new(move || Ok(Box::new(std::io::Cursor::new(bytes.clone())) as Box<dyn Read + Send>));
    ddsvault_mongo::restore::logical_restore(
        client,
        open,
        opts,
        &|_| {},
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
}

/// Every document of `coll`, in `sort` order.
pub async fn find_sorted(
    coll: &mongodb::Collection<bson::Document>,
    sort: bson::Document,
) -> Vec<bson::Document> {
    use futures::TryStreamExt;
    coll.find(bson::doc! {})
        .sort(sort)
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("read")
}

/// The `ts` of an oplog entry.
pub fn ts_of(d: &bson::Document) -> bson::Timestamp {
    match d.get("ts") {
        Some(bson::Bson::Timestamp(t)) => *t,
        other => panic!("no ts in {other:?}"),
    }
}
