-- Instances ddsvault provisioned itself (CreateDBInstance, docs/provisioning.md): a server process it starts from
-- the [provisioning] command template, with its data under the provisioning base directory. Configured
-- ([[instances]]) instances never appear here. The port is unique so two instances never share one.
CREATE TABLE provisioned_instances (
    id                 TEXT PRIMARY KEY,
    port               INTEGER NOT NULL UNIQUE,
    dir                TEXT NOT NULL,
    status             TEXT NOT NULL,
    source_instance_id TEXT NOT NULL,
    backup_id          INTEGER,
    restore_time       INTEGER,
    description        TEXT NOT NULL,
    job_id             INTEGER,
    error              TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
CREATE INDEX provisioned_instances_source ON provisioned_instances (source_instance_id, created_at);
