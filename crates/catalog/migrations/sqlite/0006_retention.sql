-- Tiered ("advanced") backup policies of an instance, as JSON (see AdvancedPolicy): one row per instance, written
-- in the same transaction as the standard policy it shares fields with.
CREATE TABLE advanced_policies (
    instance_id TEXT PRIMARY KEY,
    policy      TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Retention lock of an instance: on from enabled_at until unlock_at (NULL = no unlock requested). A row whose
-- unlock_at has passed is a lock that is off.
CREATE TABLE retention_locks (
    instance_id TEXT PRIMARY KEY,
    enabled_at  INTEGER NOT NULL,
    unlock_at   INTEGER,
    updated_at  INTEGER NOT NULL
);

-- High-frequency snapshots get their own slots next to the standard (daily) ones: the same instant may be a slot
-- of both schedules, so the schedule joins the primary key. SQLite cannot alter a primary key: rebuild.
CREATE TABLE schedule_runs_new (
    instance_id TEXT NOT NULL,
    schedule    TEXT NOT NULL DEFAULT 'standard' CHECK (schedule IN ('standard', 'high_frequency')),
    slot_start  INTEGER NOT NULL,
    owner       TEXT NOT NULL,
    claimed_at  INTEGER NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('Created', 'Skipped')),
    job_id      INTEGER,
    detail      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (instance_id, schedule, slot_start)
);
INSERT INTO schedule_runs_new (instance_id, schedule, slot_start, owner, claimed_at, outcome, job_id, detail)
    SELECT instance_id, 'standard', slot_start, owner, claimed_at, outcome, job_id, detail FROM schedule_runs;
DROP TABLE schedule_runs;
ALTER TABLE schedule_runs_new RENAME TO schedule_runs;
CREATE INDEX schedule_runs_job ON schedule_runs(job_id);
