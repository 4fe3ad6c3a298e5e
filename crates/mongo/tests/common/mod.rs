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
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let stack = std::env::var_os("STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".stack"));
    let p = stack.join("bin").join(name);
    if p.is_file() {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Returns the binary, or prints `SKIPPED: <name> not found` and returns None.
///
/// The message is written straight to the process's stderr, not through `eprintln!`,
/// so the test harness does not capture it: a skip is always visible in the output.
pub fn require_binary(name: &str) -> Option<PathBuf> {
    let found = find_binary(name);
    if found.is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {name} not found (run scripts/setup-stack.sh or set DDSVAULT_{})",
            name.to_ascii_uppercase()
        );
    }
    found
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

/// Creates the capped `local.oplog.rs` that makes FerretDB log its oplog.
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
