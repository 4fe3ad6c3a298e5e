-- DescribeBackupStorage answers from the catalog instead of listing the repository on every call (issue 17.7).
--
-- What a committed backup occupies in the repository under its own prefix (data files, index and manifest),
-- recorded in the transaction that marks it Success. A backup counts while it is Success; its row goes with the
-- backup's row. Backups committed before this migration have no row: the server measures them once at start
-- (and the collector on each pass) from the repository and records them here.
CREATE TABLE backup_storage (
    backup_id    INTEGER PRIMARY KEY,
    instance_id  TEXT NOT NULL,
    stored_bytes INTEGER NOT NULL
);
CREATE INDEX backup_storage_instance ON backup_storage (instance_id);

-- The snapshot chunks of an instance's store that a committed snapshot named, each once with its stored
-- (compressed) size: a chunk reused by many snapshots counts once, a chunk no snapshot committed (a failed or
-- crashed job's) never counts. Rows are added when a snapshot commits and removed when the collector deletes the
-- chunk.
CREATE TABLE instance_chunks (
    instance_id TEXT NOT NULL,
    digest      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    PRIMARY KEY (instance_id, digest)
);
