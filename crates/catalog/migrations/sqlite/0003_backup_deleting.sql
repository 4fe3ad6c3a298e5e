-- Retention: a backup being removed is 'Deleting' (hidden from listings, refused by downloads and restores) until
-- its files are gone and its row is deleted. SQLite cannot alter a CHECK constraint, so the table is rebuilt with
-- the same columns, ids (AUTOINCREMENT sequence kept) and indexes.
CREATE TABLE backups_new (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id         INTEGER NOT NULL REFERENCES jobs(id),
    instance_id    TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('Running', 'Success', 'Failed', 'Deleting')),
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
INSERT INTO backups_new (id, job_id, instance_id, status, method, mode, backup_type, start_time, end_time,
                         expire_time, retention_days, size, db_names, engine_version, repo_prefix, details)
    SELECT id, job_id, instance_id, status, method, mode, backup_type, start_time, end_time,
           expire_time, retention_days, size, db_names, engine_version, repo_prefix, details FROM backups;
DROP TABLE backups;
ALTER TABLE backups_new RENAME TO backups;
CREATE INDEX backups_instance_start ON backups(instance_id, start_time);
CREATE INDEX backups_job ON backups(job_id);
CREATE INDEX backups_expiry ON backups(status, expire_time);
