-- What a finished job produced (restore summaries, counts), as JSON.
ALTER TABLE jobs ADD COLUMN result TEXT;
