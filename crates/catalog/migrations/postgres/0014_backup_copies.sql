-- Copies of backups in a second repository ([[repository.copies]], Dds' cross-region backup).
CREATE TABLE cross_region_policies (
    instance_id     TEXT NOT NULL,
    dest_region     TEXT NOT NULL,
    src_region      TEXT NOT NULL,
    enabled         BIGINT NOT NULL,
    backup_period   TEXT NOT NULL,
    retention_type  TEXT NOT NULL CHECK (retention_type IN ('delay', 'never')),
    retention_value BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (instance_id, dest_region)
);

CREATE TABLE backup_copies (
    backup_id       BIGINT NOT NULL,
    dest_region     TEXT NOT NULL,
    instance_id     TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('Pending', 'Success', 'Failed')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT NOT NULL DEFAULT '',
    method          TEXT NOT NULL,
    start_time      BIGINT NOT NULL,
    end_time        BIGINT,
    size            BIGINT NOT NULL DEFAULT 0,
    expire_time     BIGINT,
    created_at      BIGINT NOT NULL,
    copied_at       BIGINT,
    PRIMARY KEY (backup_id, dest_region)
);
CREATE INDEX backup_copies_due ON backup_copies (status, next_attempt_at);
CREATE INDEX backup_copies_instance ON backup_copies (instance_id, dest_region);
