-- PostgreSQL twin of migrations/sqlite/0019_nodes.sql.
CREATE TABLE request_nonces (
    access_key_id TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    expires_at    BIGINT NOT NULL,
    CONSTRAINT request_nonces_pkey PRIMARY KEY (access_key_id, nonce)
);
CREATE INDEX request_nonces_expiry ON request_nonces (expires_at);

CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,
    hostname     TEXT NOT NULL,
    api          TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    last_seen    BIGINT NOT NULL,
    running_jobs BIGINT NOT NULL DEFAULT 0,
    draining     BOOLEAN NOT NULL DEFAULT FALSE
);
