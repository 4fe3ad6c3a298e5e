-- Console session state shared by every process of the catalog (docs/console.md): a logout and a failed-login
-- lockout hold on every ddsvault process, not only the one that saw them.

-- Sessions ended by logout, by the random nonce their signed cookie carries. A row is kept until the session would
-- have expired anyway (unix milliseconds); then it is pruned.
CREATE TABLE console_revoked_sessions (
    nonce      TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);

-- Failed console logins per client address in the current window (started at window_start, unix milliseconds).
CREATE TABLE console_login_failures (
    address      TEXT PRIMARY KEY,
    failures     INTEGER NOT NULL,
    window_start INTEGER NOT NULL
);
CREATE INDEX console_login_failures_window ON console_login_failures (window_start);
