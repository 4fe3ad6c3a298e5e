-- PostgreSQL twin of migrations/sqlite/0017_job_leases.sql: job leases (`lease_until`, ms since the epoch) and
-- fencing tokens (`lease_token`, one more at every claim and takeover, checked by every write of the job).
ALTER TABLE jobs ADD COLUMN lease_until BIGINT;
ALTER TABLE jobs ADD COLUMN lease_token BIGINT NOT NULL DEFAULT 0;
-- Jobs running under a process from before leases: 120 s after their last heartbeat, as the previous recovery.
UPDATE jobs SET lease_until = COALESCE(heartbeat_at, started_at, created_at) + 120000 WHERE state = 'Running';
