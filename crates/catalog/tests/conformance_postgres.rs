//! Runs the catalog conformance suite against PostgreSQL: a real server, started for the test in a temporary
//! directory (`ddsvault_catalog::pgtest`). Fails (never skips) when PostgreSQL is not installed.

use ddsvault_catalog::pgtest::PgCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conforms() {
    let pg = PgCluster::start().expect("start PostgreSQL (scripts/setup-stack.sh installs it)");
    let url = pg
        .create_database("conformance")
        .await
        .expect("create database");
    let cat = ddsvault_catalog::open(&url).await.expect("open");
    ddsvault_catalog::conformance::run_all(cat).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reopen_keeps_data_and_migrates_once() {
    let pg = PgCluster::start().expect("start PostgreSQL");
    let url = pg.create_database("reopen").await.expect("create database");
    // Two processes starting together run the migrations once (sqlx's advisory lock): both opens succeed.
    let (a, b) = tokio::join!(ddsvault_catalog::open(&url), ddsvault_catalog::open(&url));
    let a = a.expect("open a");
    b.expect("open b");
    a.init_setting("k", "v1").await.expect("init");
    drop(a);
    let c = ddsvault_catalog::open(&url).await.expect("reopen");
    assert_eq!(
        c.get_setting("k").await.expect("get").as_deref(),
        Some("v1")
    );
}

#[tokio::test]
async fn unreachable_postgres_is_refused_without_the_password() {
    // A port nothing listens on: bind one and drop it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("postgres://ddsvault:s3cretPassw0rd@127.0.0.1:{port}/catalog");
    let err = ddsvault_catalog::open(&url).await.expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot connect to the PostgreSQL catalog"),
        "{msg}"
    );
    assert!(msg.contains(&format!("127.0.0.1:{port}/catalog")), "{msg}");
    assert!(!msg.contains("s3cretPassw0rd"), "password leaked: {msg}");

    let bad = ddsvault_catalog::open("postgres://ddsvault:s3cretPassw0rd@127.0.0.1:notaport/x")
        .await
        .expect_err("must fail");
    assert!(
        !bad.to_string().contains("s3cretPassw0rd"),
        "password leaked: {bad}"
    );
    assert!(
        bad.to_string().contains("invalid PostgreSQL catalog url"),
        "{bad}"
    );
}

#[test]
fn redact_url_hides_passwords() {
    use ddsvault_catalog::redact_url;
    assert_eq!(
        redact_url("postgres://u:p@h:5432/db"),
        "postgres://u:***@h:5432/db"
    );
    assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    assert_eq!(
        redact_url("postgres://h/db?user=u&password=p&sslmode=require"),
        "postgres://h/db?user=u&password=***&sslmode=require"
    );
}
