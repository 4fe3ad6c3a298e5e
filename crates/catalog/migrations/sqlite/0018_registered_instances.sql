-- Instances registered at run time (RegisterDBInstance, `ddsvault instance add`; docs/instances.md), beside the
-- configured ([[instances]]) and provisioned ones. `uri` holds the connection string sealed with the master key
-- (it may carry a password). The id is also in `instances` (kept after unregistering, like a deleted provisioned
-- instance's, so its backups and policy stay attached).
CREATE TABLE registered_instances (
    id           TEXT PRIMARY KEY,
    uri          TEXT NOT NULL,
    storage_type TEXT NOT NULL,
    data_path    TEXT,
    node         TEXT,
    description  TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
