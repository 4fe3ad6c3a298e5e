//! Runs the catalog conformance suite against every SQLite flavour.

use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cat = ddsvault_catalog::SqliteCatalog::open_file(&dir.path().join("catalog.db"))
        .await
        .expect("open");
    ddsvault_catalog::conformance::run_all(Arc::new(cat)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_conforms() {
    let cat = ddsvault_catalog::open("sqlite::memory:")
        .await
        .expect("open");
    ddsvault_catalog::conformance::run_all(cat).await;
}

#[tokio::test]
async fn reopening_keeps_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.db");
    let url = format!("sqlite://{}", path.display());
    {
        let cat = ddsvault_catalog::open(&url).await.expect("open");
        cat.init_setting("node_id", "n1").await.expect("init");
    }
    let cat = ddsvault_catalog::open(&url).await.expect("reopen");
    assert_eq!(
        cat.get_setting("node_id").await.expect("get").as_deref(),
        Some("n1")
    );
}

#[tokio::test]
async fn unsupported_url_is_refused() {
    let err = ddsvault_catalog::open("postgres://x")
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains("unsupported catalog url"), "{err}");
}
