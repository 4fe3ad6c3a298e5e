-- Counts of backups per (instance, status), kept by triggers in the same transaction as every change to `backups`,
-- so unfiltered DescribeBackups answers TotalRecordCount in O(1).
CREATE TABLE backup_counts (
    instance_id TEXT NOT NULL,
    status      TEXT NOT NULL,
    n           BIGINT NOT NULL,
    PRIMARY KEY (instance_id, status)
);
INSERT INTO backup_counts (instance_id, status, n)
    SELECT instance_id, status, COUNT(*) FROM backups GROUP BY instance_id, status;

CREATE FUNCTION backups_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE backup_counts SET n = n - 1 WHERE instance_id = OLD.instance_id AND status = OLD.status;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO backup_counts (instance_id, status, n) VALUES (NEW.instance_id, NEW.status, 1)
            ON CONFLICT (instance_id, status) DO UPDATE SET n = backup_counts.n + 1;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER backups_count_insert AFTER INSERT ON backups FOR EACH ROW EXECUTE FUNCTION backups_count();
CREATE TRIGGER backups_count_delete AFTER DELETE ON backups FOR EACH ROW EXECUTE FUNCTION backups_count();
CREATE TRIGGER backups_count_update AFTER UPDATE OF status, instance_id ON backups FOR EACH ROW
    WHEN (OLD.status <> NEW.status OR OLD.instance_id <> NEW.instance_id) EXECUTE FUNCTION backups_count();

-- Listed backups in page order.
CREATE INDEX backups_listed ON backups (instance_id, start_time, id)
    WHERE status <> 'Running' AND status <> 'Deleting';
