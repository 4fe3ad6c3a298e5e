-- What a running job is doing beyond its percent: its phase and the documents/bytes done and estimated (JSON,
-- written by the heartbeat), so the task APIs can show progress that moves in every phase.
ALTER TABLE jobs ADD COLUMN progress_detail TEXT;
