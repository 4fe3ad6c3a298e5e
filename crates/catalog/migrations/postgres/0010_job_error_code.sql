-- The source of a job's failure as a stable code beside its message.
ALTER TABLE jobs ADD COLUMN error_code TEXT;
