-- One row per automatic-backup slot an instance's policy opened: the primary key makes "exactly one run per slot"
-- hold across restarts and across processes sharing the catalog.
CREATE TABLE schedule_runs (
    instance_id TEXT NOT NULL,
    slot_start  BIGINT NOT NULL,
    owner       TEXT NOT NULL,
    claimed_at  BIGINT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('Created', 'Skipped')),
    job_id      BIGINT,
    detail      TEXT NOT NULL DEFAULT '',
    CONSTRAINT schedule_runs_pkey PRIMARY KEY (instance_id, slot_start)
);
