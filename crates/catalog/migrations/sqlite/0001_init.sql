-- Every timestamp is Unix epoch milliseconds (UTC): portable to PostgreSQL's BIGINT unchanged.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE access_keys (
    id         TEXT PRIMARY KEY,
    secret     TEXT NOT NULL,
    user_name  TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('Active', 'Inactive')),
    source     TEXT NOT NULL,              -- 'config' | 'generated'
    created_at INTEGER NOT NULL
);

CREATE TABLE instances (
    id         TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);

CREATE TABLE backup_policies (
    instance_id TEXT PRIMARY KEY REFERENCES instances(id),
    policy      TEXT NOT NULL,             -- JSON, see BackupPolicy
    updated_at  INTEGER NOT NULL
);

CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL,            -- 'backup' | 'restore'
    instance_id  TEXT NOT NULL,
    backup_id    INTEGER,
    state        TEXT NOT NULL CHECK (state IN ('Pending', 'Running', 'Success', 'Failed')),
    mode         TEXT NOT NULL,            -- 'Manual' | 'Automated'
    progress     INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    params       TEXT NOT NULL,            -- JSON
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    owner        TEXT,
    heartbeat_at INTEGER
);

-- The rule "one pending or running job per instance" lives in the schema, so it holds under any concurrency and
-- across processes sharing the catalog.
CREATE UNIQUE INDEX jobs_one_active_per_instance ON jobs(instance_id) WHERE state IN ('Pending', 'Running');
CREATE INDEX jobs_pending ON jobs(state, id);

CREATE TABLE backups (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id         INTEGER NOT NULL REFERENCES jobs(id),
    instance_id    TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('Running', 'Success', 'Failed')),
    method         TEXT NOT NULL,
    mode           TEXT NOT NULL,
    backup_type    TEXT NOT NULL,
    start_time     INTEGER NOT NULL,
    end_time       INTEGER,
    expire_time    INTEGER,
    retention_days INTEGER NOT NULL,
    size           INTEGER NOT NULL DEFAULT 0,
    db_names       TEXT NOT NULL DEFAULT '',
    engine_version TEXT NOT NULL DEFAULT '',
    repo_prefix    TEXT NOT NULL DEFAULT '',
    details        TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX backups_instance_start ON backups(instance_id, start_time);
CREATE INDEX backups_job ON backups(job_id);
