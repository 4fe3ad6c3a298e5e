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
