-- One row per automatic-backup slot an instance's policy opened: the primary key makes "exactly one run per slot"
-- hold across restarts and across processes sharing the catalog. The row is inserted in the same transaction as
-- the job it starts, or records why the slot was skipped.
CREATE TABLE schedule_runs (
    instance_id TEXT NOT NULL,
    slot_start  INTEGER NOT NULL,           -- window start, epoch ms
    owner       TEXT NOT NULL,              -- node that took the slot
    claimed_at  INTEGER NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('Created', 'Skipped')),
    job_id      INTEGER,                    -- the job created (Created) or met (Skipped)
    detail      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (instance_id, slot_start)
);
