//! The repository conformance suite against a real S3 server: MinIO from `$STACK_DIR/bin/minio`
//! (built by `scripts/setup-minio.sh`), started here on a free loopback port with a temporary data directory.
//!
//! Without the binary the tests print why and return, except under `CI=true`, where they fail.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ddsvault_repo::{RepoError, RepoPath, Repository, S3Settings, UploadTuning};
use object_store::signer::Signer;

const USER: &str = "ddsvault-test";
const PASSWORD: &str = "ddsvault-test-secret";

struct Minio {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Minio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn minio_binary() -> Option<PathBuf> {
    let stack = std::env::var_os("STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.stack"));
    let bin = stack.join("bin/minio");
    if bin.exists() {
        return Some(bin);
    }
    let why = format!(
        "{} is missing: run scripts/setup-stack.sh (or scripts/setup-minio.sh)",
        bin.display()
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: {why}"
    );
    eprintln!("skipping the S3 conformance test: {why}");
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Minio {
    fn start(bin: &PathBuf) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let console = free_port();
        let child = Command::new(bin)
            .arg("server")
            .arg(dir.path().join("data"))
            .args(["--address", &format!("127.0.0.1:{port}")])
            .args(["--console-address", &format!("127.0.0.1:{console}")])
            .arg("--quiet")
            .env("MINIO_ROOT_USER", USER)
            .env("MINIO_ROOT_PASSWORD", PASSWORD)
            .env("MINIO_BROWSER", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start minio");
        let m = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(port, "GET", "/minio/health/ready") != Some(200) {
            assert!(Instant::now() < deadline, "minio did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn settings(&self, bucket: &str, prefix: &str) -> S3Settings {
        let mut s = S3Settings::from_url(&format!("s3://{bucket}/{prefix}")).expect("url");
        s.endpoint = Some(self.endpoint());
        s.region = Some("us-east-1".into());
        s.access_key_id = Some(USER.into());
        s.secret_access_key = Some(PASSWORD.into());
        s.allow_http = true;
        s.max_retries = 2;
        s.retry_timeout = Duration::from_secs(5);
        s
    }

    /// Creates `bucket` with a presigned `PUT /<bucket>/` (CreateBucket), signed by object_store's signer.
    async fn create_bucket(&self, bucket: &str) {
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(self.endpoint())
            .with_region("us-east-1")
            .with_access_key_id(USER)
            .with_secret_access_key(PASSWORD)
            .with_allow_http(true)
            .build()
            .expect("s3 client");
        let url = s3
            .signed_url(
                http::Method::PUT,
                &object_store::path::Path::from(""),
                Duration::from_secs(60),
            )
            .await
            .expect("presign");
        let target = url.as_str();
        let path = &target[target.find(&format!("/{bucket}")).expect("bucket in url")..];
        // MinIO answers 503 while it is still settling (and under load); that is its "retry later".
        let mut status = http(self.port, "PUT", path);
        for _ in 0..20 {
            if status != Some(503) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
            status = http(self.port, "PUT", path);
        }
        assert_eq!(status, Some(200), "CreateBucket {bucket}");
    }
}

/// A bare HTTP/1.1 request to the loopback server; returns the status code.
fn http(port: u16, method: &str, path_and_query: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_minio() {
    let Some(bin) = minio_binary() else { return };
    let minio = Minio::start(&bin);
    minio.create_bucket("conformance").await;
    // Under a key prefix, with several parts in flight.
    let repo = Repository::open(
        &ddsvault_repo::RepositoryLocation::S3(Box::new(minio.settings("conformance", "team/a"))),
        UploadTuning {
            part_size: 5 * 1024 * 1024,
            max_in_flight_parts: 3,
        },
    )
    .expect("open");
    repo.check().await.expect("usable");
    ddsvault_repo::conformance::conformance(&repo).await;
    // Sealed by client-side encryption, with S3's minimum part size (parts keep their size: the final segment
    // goes with the last part).
    let sealed = Repository::open(
        &ddsvault_repo::RepositoryLocation::S3(Box::new(minio.settings("conformance", "sealed"))),
        UploadTuning {
            part_size: 5 * 1024 * 1024,
            max_in_flight_parts: 2,
        },
    )
    .expect("open")
    .with_encryption(std::sync::Arc::new(
        ddsvault_repo::encrypted::MasterKey::from_bytes(&[7; 32]),
    ));
    ddsvault_repo::conformance::conformance(&sealed).await;
    // And at the bucket root, with the defaults.
    let root = Repository::s3(&minio.settings("conformance", "")).expect("open");
    ddsvault_repo::conformance::conformance(&root).await;
    // Nothing was left anywhere: no object, and no journaled multipart upload.
    let left = root
        .list(&RepoPath::new("uploads").expect("path"))
        .await
        .expect("list");
    assert!(left.is_empty(), "upload markers left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_repositories_are_refused_with_the_reason() {
    let Some(bin) = minio_binary() else { return };
    let minio = Minio::start(&bin);
    minio.create_bucket("present").await;

    let missing = Repository::s3(&minio.settings("absent", "")).expect("open");
    let err = missing.check().await.expect_err("missing bucket");
    let text = err.to_string();
    assert!(matches!(err, RepoError::Unusable { .. }), "{text}");
    assert!(
        text.contains("NoSuchBucket") || text.contains("does not exist"),
        "{text}"
    );

    let mut wrong = minio.settings("present", "");
    wrong.secret_access_key = Some("not-the-secret".into());
    let err = Repository::s3(&wrong)
        .expect("open")
        .check()
        .await
        .expect_err("wrong secret");
    let text = err.to_string();
    assert!(
        text.contains("SignatureDoesNotMatch") || text.contains("403"),
        "{text}"
    );
    assert!(
        !text.contains("not-the-secret"),
        "the secret leaked: {text}"
    );

    let ok = Repository::s3(&minio.settings("present", "x")).expect("open");
    ok.check().await.expect("usable");
    // The probe leaves nothing behind.
    assert!(ok
        .list(&RepoPath::new("ddsvault-probe").expect("path"))
        .await
        .expect("list")
        .is_empty());
}

/// A multipart upload whose process "died" (its handle leaked without abort) is found through its journal
/// marker and aborted by `delete_prefix` of the prefix it was writing into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_uploads_are_aborted_with_their_prefix() {
    let Some(bin) = minio_binary() else { return };
    let minio = Minio::start(&bin);
    minio.create_bucket("lost").await;
    let repo = Repository::s3(&minio.settings("lost", "p")).expect("open");
    let target = RepoPath::new("backups/i/7/archive.zst").expect("path");
    let loc = object_store::path::Path::from("backups/i/7/archive.zst");
    let mut upload = repo.store().put_multipart(&loc).await.expect("start");
    upload
        .put_part(vec![7u8; 5 * 1024 * 1024].into())
        .await
        .expect("part");
    // The process dies: neither complete nor abort.
    std::mem::forget(upload);
    let markers = repo
        .list(&RepoPath::new("uploads/backups/i/7").expect("path"))
        .await
        .expect("list");
    assert_eq!(markers.len(), 1, "one marker: {markers:?}");
    assert!(repo.head(&target).await.is_err(), "nothing published");
    let removed = repo
        .delete_prefix(&RepoPath::new("backups/i/7").expect("path"))
        .await
        .expect("delete");
    assert_eq!(removed, 1, "the upload was aborted");
    assert!(repo
        .list(&RepoPath::new("uploads").expect("path"))
        .await
        .expect("list")
        .is_empty());
    // And the sweep finds nothing more; a fresh repository put still works.
    assert_eq!(repo.sweep_uploads(Duration::ZERO).await.expect("sweep"), 0);
    repo.put(&target, Bytes::from_static(b"x"))
        .await
        .expect("put");
}

/// An upload no journal marker names (its process died between CreateMultipartUpload and the marker) is found by
/// the sweep through ListMultipartUploads once older than the grace period; an upload this process is running,
/// and uploads outside the repository prefix, are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_no_marker_names_are_swept_by_listing() {
    let Some(bin) = minio_binary() else { return };
    let minio = Minio::start(&bin);
    minio.create_bucket("unmarked").await;
    let repo = Repository::s3(&minio.settings("unmarked", "p")).expect("open");
    let loc = object_store::path::Path::from("backups/i/8/archive.zst");
    let mut running = repo.store().put_multipart(&loc).await.expect("start");
    running
        .put_part(vec![8u8; 5 * 1024 * 1024].into())
        .await
        .expect("part");
    // The marker is lost, as if the process had died before writing it.
    for m in repo
        .list(&RepoPath::new("uploads").expect("path"))
        .await
        .expect("list")
    {
        repo.delete(&m.path).await.expect("delete marker");
    }
    // Another repository prefix in the same bucket, with an upload of its own: not this repository's.
    let neighbour = Repository::s3(&minio.settings("unmarked", "q")).expect("open");
    let theirs = neighbour.store().put_multipart(&loc).await.expect("start");
    std::mem::forget(theirs);

    // The process that runs the upload leaves it alone, whatever its age.
    assert_eq!(repo.sweep_uploads(Duration::ZERO).await.expect("sweep"), 0);
    // Another process (a restart) does not run it: left while younger than the grace, then aborted.
    let restarted = Repository::s3(&minio.settings("unmarked", "p")).expect("open");
    assert_eq!(
        restarted
            .sweep_uploads(Duration::from_secs(3600))
            .await
            .expect("sweep"),
        0
    );
    assert_eq!(
        restarted
            .sweep_uploads(Duration::ZERO)
            .await
            .expect("sweep"),
        1
    );
    assert!(
        running.complete().await.is_err(),
        "the aborted upload cannot be completed"
    );
    assert_eq!(
        restarted
            .sweep_uploads(Duration::ZERO)
            .await
            .expect("sweep"),
        0,
        "the neighbour's upload is not swept"
    );
    assert!(repo
        .head(&RepoPath::new("backups/i/8/archive.zst").expect("path"))
        .await
        .is_err());
}
