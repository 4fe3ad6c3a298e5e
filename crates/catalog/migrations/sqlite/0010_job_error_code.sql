-- The source of a job's failure as a stable code (`Repository.NoSpace`, `MongoDB.Unreachable`, …) beside its
-- message, so the task APIs can answer ErrorCode/ErrorMessage without parsing text. NULL for jobs that did not
-- fail and for failures recorded before this column existed.
ALTER TABLE jobs ADD COLUMN error_code TEXT;
