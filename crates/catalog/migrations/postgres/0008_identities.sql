-- Identities managed at run time: RAM users, groups, custom policies and their attachments, plus how an
-- AccessKey's stored secret is encoded and when it was last used.
ALTER TABLE access_keys ADD COLUMN secret_format TEXT NOT NULL DEFAULT 'plain';
ALTER TABLE access_keys ADD COLUMN last_used_at BIGINT;
CREATE INDEX access_keys_user ON access_keys(user_name);

CREATE TABLE ram_users (
    name         TEXT PRIMARY KEY,
    display_name TEXT NOT NULL DEFAULT '',
    source       TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

CREATE TABLE ram_groups (
    name       TEXT PRIMARY KEY,
    source     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE ram_policies (
    name       TEXT PRIMARY KEY,
    document   TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE ram_group_members (
    group_name TEXT NOT NULL REFERENCES ram_groups(name) ON DELETE CASCADE,
    user_name  TEXT NOT NULL REFERENCES ram_users(name) ON DELETE CASCADE,
    source     TEXT NOT NULL,
    PRIMARY KEY (group_name, user_name)
);

CREATE TABLE ram_policy_attachments (
    policy_name    TEXT NOT NULL REFERENCES ram_policies(name) ON DELETE CASCADE,
    principal_type TEXT NOT NULL CHECK (principal_type IN ('user', 'group')),
    principal_name TEXT NOT NULL,
    source         TEXT NOT NULL,
    PRIMARY KEY (policy_name, principal_type, principal_name)
);

-- Bumped by every identity change in the same transaction.
CREATE TABLE identity_version (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO identity_version (id, version) VALUES (1, 1);
