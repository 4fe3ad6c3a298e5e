-- PostgreSQL twin of migrations/sqlite/0016_provisioned_instances.sql.
-- Instances ddsvault provisioned itself (CreateDBInstance, docs/provisioning.md): a server process it starts from
-- the [provisioning] command template, with its data under the provisioning base directory. Configured
-- ([[instances]]) instances never appear here. The port is unique so two instances never share one.
CREATE TABLE provisioned_instances (
    id                 TEXT PRIMARY KEY,
    port               BIGINT NOT NULL UNIQUE,
    dir                TEXT NOT NULL,
    status             TEXT NOT NULL,
    source_instance_id TEXT NOT NULL,
    backup_id          BIGINT,
    restore_time       BIGINT,
    description        TEXT NOT NULL,
    job_id             BIGINT,
    error              TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX provisioned_instances_source ON provisioned_instances (source_instance_id, created_at);
