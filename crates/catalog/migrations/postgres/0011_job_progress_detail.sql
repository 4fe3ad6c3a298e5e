-- What a running job is doing beyond its percent (JSON, written by the heartbeat).
ALTER TABLE jobs ADD COLUMN progress_detail TEXT;
