-- The audit trail: one row per API call, allowed or refused (authentication failures included). Never holds
-- secrets, signatures or request parameter values; `resources` is a JSON array of the ARNs the call touched.
CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    time          INTEGER NOT NULL,          -- server receive time, epoch ms
    request_id    TEXT NOT NULL,
    access_key_id TEXT,                      -- as claimed by the request; NULL when none could be read
    user_name     TEXT,                      -- RAM user (or root) of a known key
    action        TEXT,                      -- Dds action as claimed by the request
    resources     TEXT NOT NULL DEFAULT '[]',
    source_ip     TEXT NOT NULL,
    secure        INTEGER NOT NULL DEFAULT 0,
    http_status   INTEGER NOT NULL,
    code          TEXT                       -- Dds error code; NULL for a success
);
CREATE INDEX audit_log_time ON audit_log (time);
CREATE INDEX audit_log_key_time ON audit_log (access_key_id, time);
