-- PostgreSQL twin of migrations/sqlite/0021_console_sessions.sql (docs/console.md): console logouts and
-- failed-login lockouts shared by every process of the catalog.

-- Sessions ended by logout, by the random nonce their signed cookie carries. A row is kept until the session would
-- have expired anyway (unix milliseconds); then it is pruned.
CREATE TABLE console_revoked_sessions (
    nonce      TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

-- Failed console logins per client address in the current window (started at window_start, unix milliseconds).
CREATE TABLE console_login_failures (
    address      TEXT PRIMARY KEY,
    failures     BIGINT NOT NULL,
    window_start BIGINT NOT NULL
);
CREATE INDEX console_login_failures_window ON console_login_failures (window_start);
