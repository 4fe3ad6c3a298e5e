-- Copies of backups in a second repository ([[repository.copies]], Dds' cross-region backup).

-- ModifyBackupPolicy's cross-region settings, per instance and destination region. enabled = 0 after
-- CrossBackupType=delete: no further copies to that region.
CREATE TABLE cross_region_policies (
    instance_id     TEXT NOT NULL,
    dest_region     TEXT NOT NULL,
    src_region      TEXT NOT NULL,
    enabled         INTEGER NOT NULL,
    backup_period   TEXT NOT NULL,
    retention_type  TEXT NOT NULL CHECK (retention_type IN ('delay', 'never')),
    retention_value INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (instance_id, dest_region)
);

-- One copy job (and, once done, the copy) of a backup in a destination region. Kept after the source backup's
-- row is deleted: the copy outlives it until its own expiry. The backup's description is copied in for the same
-- reason.
CREATE TABLE backup_copies (
    backup_id       INTEGER NOT NULL,
    dest_region     TEXT NOT NULL,
    instance_id     TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('Pending', 'Success', 'Failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT NOT NULL DEFAULT '',
    method          TEXT NOT NULL,
    start_time      INTEGER NOT NULL,
    end_time        INTEGER,
    size            INTEGER NOT NULL DEFAULT 0,
    expire_time     INTEGER,
    created_at      INTEGER NOT NULL,
    copied_at       INTEGER,
    PRIMARY KEY (backup_id, dest_region)
);
CREATE INDEX backup_copies_due ON backup_copies (status, next_attempt_at);
CREATE INDEX backup_copies_instance ON backup_copies (instance_id, dest_region);
