-- PostgreSQL twin of migrations/sqlite/0015_storage_usage.sql (DescribeBackupStorage from the catalog, issue 17.7).
CREATE TABLE backup_storage (
    backup_id    BIGINT PRIMARY KEY,
    instance_id  TEXT NOT NULL,
    stored_bytes BIGINT NOT NULL
);
CREATE INDEX backup_storage_instance ON backup_storage (instance_id);

CREATE TABLE instance_chunks (
    instance_id TEXT NOT NULL,
    digest      TEXT NOT NULL,
    size        BIGINT NOT NULL,
    PRIMARY KEY (instance_id, digest)
);
