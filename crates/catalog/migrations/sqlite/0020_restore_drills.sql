-- Restore drills (docs/drills.md): an instance's drill settings, and the outcome of every drill.
--
-- A drill restores the instance's newest successful Logical backup into a scratch instance and compares what it
-- reads back with what the backup recorded. A backup whose newest drill Failed is shown as unverified.
CREATE TABLE restore_drill_policies (
    instance_id  TEXT PRIMARY KEY,
    -- Days like PreferredBackupPeriod ("Monday,Thursday"); '' switches scheduled drills off.
    period       TEXT NOT NULL,
    -- The one-hour window like PreferredBackupTime ("03:00Z-04:00Z").
    drill_window TEXT NOT NULL,
    -- The scratch instance the backup is restored into (its contents are replaced).
    target       TEXT NOT NULL,
    updated_at   INTEGER NOT NULL
);

CREATE TABLE restore_drills (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The instance the backup is of.
    instance_id TEXT NOT NULL,
    backup_id   INTEGER NOT NULL,
    target      TEXT NOT NULL,
    job_id      INTEGER,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    result      TEXT NOT NULL CHECK (result IN ('Passed', 'Failed')),
    -- 1 when per-collection checksums were compared, 0 when only counts were (backups taken before checksums).
    checksums   INTEGER NOT NULL,
    -- JSON: the collections compared and every mismatch, or why the restore failed.
    detail      TEXT NOT NULL
);
CREATE INDEX restore_drills_instance ON restore_drills (instance_id, id);
CREATE INDEX restore_drills_backup ON restore_drills (backup_id, id);

-- Drill slots are taken in schedule_runs like backup slots (schedule 'drill', keyed by the drilled instance): the
-- schedule's CHECK gains the value. SQLite cannot alter a CHECK, so the table is rebuilt as 0006 did.
CREATE TABLE schedule_runs_new (
    instance_id TEXT NOT NULL,
    schedule    TEXT NOT NULL DEFAULT 'standard' CHECK (schedule IN ('standard', 'high_frequency', 'drill')),
    slot_start  INTEGER NOT NULL,
    owner       TEXT NOT NULL,
    claimed_at  INTEGER NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('Created', 'Skipped')),
    job_id      INTEGER,
    detail      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (instance_id, schedule, slot_start)
);
INSERT INTO schedule_runs_new (instance_id, schedule, slot_start, owner, claimed_at, outcome, job_id, detail)
    SELECT instance_id, schedule, slot_start, owner, claimed_at, outcome, job_id, detail FROM schedule_runs;
DROP TABLE schedule_runs;
ALTER TABLE schedule_runs_new RENAME TO schedule_runs;
CREATE INDEX schedule_runs_job ON schedule_runs(job_id);
