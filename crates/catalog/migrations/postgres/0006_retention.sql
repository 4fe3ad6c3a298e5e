-- Tiered ("advanced") backup policies of an instance, as JSON (see AdvancedPolicy).
CREATE TABLE advanced_policies (
    instance_id TEXT PRIMARY KEY,
    policy      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Retention lock of an instance: on from enabled_at until unlock_at (NULL = no unlock requested).
CREATE TABLE retention_locks (
    instance_id TEXT PRIMARY KEY,
    enabled_at  BIGINT NOT NULL,
    unlock_at   BIGINT,
    updated_at  BIGINT NOT NULL
);

-- High-frequency snapshots get their own slots next to the standard ones: the schedule joins the primary key.
ALTER TABLE schedule_runs ADD COLUMN schedule TEXT NOT NULL DEFAULT 'standard'
    CHECK (schedule IN ('standard', 'high_frequency'));
ALTER TABLE schedule_runs DROP CONSTRAINT schedule_runs_pkey;
ALTER TABLE schedule_runs ADD CONSTRAINT schedule_runs_pkey PRIMARY KEY (instance_id, schedule, slot_start);
CREATE INDEX schedule_runs_job ON schedule_runs(job_id);
