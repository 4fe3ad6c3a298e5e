-- DescribeBackups answers TotalRecordCount on every page. COUNT(*) over an instance's backups walks all of them
-- (tens of milliseconds at 100,000 backups), so the counts per (instance, status) are kept by triggers, in the
-- same transaction as every change to `backups`, and the unfiltered listings read them in O(1).
-- A later migration that rebuilds `backups` (as 0003 did) must recreate these triggers.
CREATE TABLE backup_counts (
    instance_id TEXT NOT NULL,
    status      TEXT NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY (instance_id, status)
);
INSERT INTO backup_counts (instance_id, status, n)
    SELECT instance_id, status, COUNT(*) FROM backups GROUP BY instance_id, status;

CREATE TRIGGER backups_count_insert AFTER INSERT ON backups BEGIN
    INSERT INTO backup_counts (instance_id, status, n) VALUES (NEW.instance_id, NEW.status, 1)
        ON CONFLICT (instance_id, status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER backups_count_delete AFTER DELETE ON backups BEGIN
    UPDATE backup_counts SET n = n - 1 WHERE instance_id = OLD.instance_id AND status = OLD.status;
END;

CREATE TRIGGER backups_count_update AFTER UPDATE OF status, instance_id ON backups
    WHEN OLD.status <> NEW.status OR OLD.instance_id <> NEW.instance_id BEGIN
    UPDATE backup_counts SET n = n - 1 WHERE instance_id = OLD.instance_id AND status = OLD.status;
    INSERT INTO backup_counts (instance_id, status, n) VALUES (NEW.instance_id, NEW.status, 1)
        ON CONFLICT (instance_id, status) DO UPDATE SET n = n + 1;
END;

-- Listed backups in page order, so a page (even a deep one) is found by walking this index alone.
CREATE INDEX backups_listed ON backups (instance_id, start_time, id)
    WHERE status <> 'Running' AND status <> 'Deleting';
