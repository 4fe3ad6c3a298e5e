-- Job leases and fencing tokens (issue 19 item 2, docs/deployment.md). A claimed job is held until `lease_until`
-- (ms since the epoch), renewed by its process while it runs; any process takes over a Running job whose lease
-- ran out. `lease_token` grows by one at every claim and takeover, and every write of a job's progress, result or
-- state names the token it holds: a process that lost its lease (paused, cut off) can no longer commit anything.
ALTER TABLE jobs ADD COLUMN lease_until INTEGER;
ALTER TABLE jobs ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
-- Jobs running under a process from before leases keep the grace the previous recovery gave them: 120 s after their
-- last heartbeat. Upgrade every process sharing the catalog together (the old ones do not renew leases).
UPDATE jobs SET lease_until = COALESCE(heartbeat_at, started_at, created_at) + 120000 WHERE state = 'Running';
