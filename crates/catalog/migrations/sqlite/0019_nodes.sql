-- Several processes on one catalog (issue 19 items 4 and 5).
--
-- request_nonces: signature nonces already used, shared by every API process so that a request replayed to another
-- process is refused too. `nonce` is a digest chosen by the server (bounded length whatever the client sent); rows
-- past `expires_at` no longer count and are deleted by the nonce-sweeper task.
CREATE TABLE request_nonces (
    access_key_id TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    expires_at    INTEGER NOT NULL,
    PRIMARY KEY (access_key_id, nonce)
);
CREATE INDEX request_nonces_expiry ON request_nonces (expires_at);

-- nodes: one row per ddsvault process (its node id), refreshed by its node-heartbeat task; `ddsvault nodes` shows a
-- node whose last_seen is older than the stale bound as down.
CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,
    hostname     TEXT NOT NULL,
    api          TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    last_seen    INTEGER NOT NULL,
    running_jobs INTEGER NOT NULL DEFAULT 0,
    draining     INTEGER NOT NULL DEFAULT 0
);
