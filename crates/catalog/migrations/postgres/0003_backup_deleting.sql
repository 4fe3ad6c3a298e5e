-- Retention: a backup being removed is 'Deleting' (hidden from listings, refused by downloads and restores) until
-- its files are gone and its row is deleted. PostgreSQL alters the CHECK in place (SQLite rebuilds the table).
ALTER TABLE backups DROP CONSTRAINT backups_status_check;
ALTER TABLE backups ADD CONSTRAINT backups_status_check
    CHECK (status IN ('Running', 'Success', 'Failed', 'Deleting'));
CREATE INDEX backups_expiry ON backups(status, expire_time);
