-- Continuous log (oplog) backup: the index of the time slices stored in the repository, and the claim that makes
-- exactly one process follow an instance's oplog.
--
-- A slice holds every oplog entry with start_excl < ts <= end_incl (timestamps as seconds * 2^32 + increment, so
-- they order as integers). Slices chain: a slice whose start_excl equals the previous slice's end_incl continues
-- it; one that does not (gap = 1: the oplog rolled past the follower's position) starts a new recoverable range.
CREATE TABLE log_slices (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL,
    start_excl  INTEGER NOT NULL,
    end_incl    INTEGER NOT NULL,
    first_ts    INTEGER,
    last_ts     INTEGER,
    entries     INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    path        TEXT NOT NULL,
    gap         INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX log_slices_instance_end ON log_slices (instance_id, end_incl);

CREATE TABLE log_followers (
    instance_id TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    lease_until INTEGER NOT NULL
);
