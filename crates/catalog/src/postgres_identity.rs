//! Identity tables of the PostgreSQL catalog (mirrors sqlite_identity.rs): AccessKeys, RAM users, groups, policies and their links.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};

use super::{from_ms, is_unique_violation, ms, opt_from_ms, query, PgCatalog};
use crate::{
    AccessKeyRecord, CatalogError, ConfigIdentities, GroupMember, IdentitySnapshot,
    PolicyAttachment, PrincipalKind, RamGroupRecord, RamPolicyRecord, RamUserRecord,
};

const KEY_COLUMNS: &str =
    "id, secret, secret_format, user_name, status, source, created_at, last_used_at";
const ROOT: &str = "root";

fn key_from_row(r: &PgRow) -> Result<AccessKeyRecord, CatalogError> {
    let status: String = r.try_get("status")?;
    Ok(AccessKeyRecord {
        id: r.try_get("id")?,
        secret: r.try_get("secret")?,
        secret_format: r.try_get("secret_format")?,
        user: r.try_get("user_name")?,
        active: status == "Active",
        source: r.try_get("source")?,
        created_at: from_ms(r.try_get("created_at")?)?,
        last_used_at: opt_from_ms(r.try_get("last_used_at")?)?,
    })
}

fn status(active: bool) -> &'static str {
    if active {
        "Active"
    } else {
        "Inactive"
    }
}

async fn bump(tx: &mut Transaction<'_, Postgres>) -> Result<(), CatalogError> {
    query("UPDATE identity_version SET version = version + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn exists(
    tx: &mut Transaction<'_, Postgres>,
    sql: &str,
    binds: &[&str],
) -> Result<bool, CatalogError> {
    let mut q = query(sql);
    for b in binds {
        q = q.bind(*b);
    }
    Ok(q.fetch_optional(&mut **tx).await?.is_some())
}

/// Refuses to delete `what` while any of `uses` (a query on its name, and what that query finds) still holds it,
/// naming everything that does.
async fn refuse_while_used(
    tx: &mut Transaction<'_, Postgres>,
    what: &str,
    name: &str,
    uses: &[(&str, &str)],
) -> Result<(), CatalogError> {
    let mut blockers = Vec::new();
    for (sql, found) in uses {
        if exists(tx, sql, &[name]).await? {
            blockers.push(*found);
        }
    }
    if blockers.is_empty() {
        Ok(())
    } else {
        Err(CatalogError::Conflict(format!(
            "{what} still has {}; remove them first",
            blockers.join(", ")
        )))
    }
}

async fn principal_exists(
    tx: &mut Transaction<'_, Postgres>,
    kind: PrincipalKind,
    name: &str,
) -> Result<bool, CatalogError> {
    let sql = match kind {
        PrincipalKind::User => "SELECT 1 FROM ram_users WHERE name = ?",
        PrincipalKind::Group => "SELECT 1 FROM ram_groups WHERE name = ?",
    };
    exists(tx, sql, &[name]).await
}

/// Runs one `INSERT`, turning a primary-key clash into [`CatalogError::AlreadyExists`].
async fn insert_new<'q>(
    tx: &mut Transaction<'_, Postgres>,
    q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    what: String,
) -> Result<(), CatalogError> {
    match q.execute(&mut **tx).await {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(CatalogError::AlreadyExists(what)),
        Err(e) => Err(e.into()),
    }
}

async fn commit_bumped(mut tx: Transaction<'_, Postgres>) -> Result<(), CatalogError> {
    bump(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

impl PgCatalog {
    pub(super) async fn identity_version_impl(&self) -> Result<i64, CatalogError> {
        let row = query(super::IDENTITY_VERSION_SQL)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("version")?)
    }

    pub(super) async fn list_access_keys_impl(&self) -> Result<Vec<AccessKeyRecord>, CatalogError> {
        let rows = query(&format!(
            "SELECT {KEY_COLUMNS} FROM access_keys ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    pub(super) async fn put_access_key_impl(
        &self,
        key: &AccessKeyRecord,
    ) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        query(
            "INSERT INTO access_keys (id, secret, secret_format, user_name, status, source, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET secret = excluded.secret, secret_format = excluded.secret_format, \
             user_name = excluded.user_name, status = excluded.status, source = excluded.source",
        )
        .bind(&key.id)
        .bind(&key.secret)
        .bind(&key.secret_format)
        .bind(&key.user)
        .bind(status(key.active))
        .bind(&key.source)
        .bind(ms(key.created_at))
        .execute(&mut *tx)
        .await?;
        commit_bumped(tx).await
    }

    pub(super) async fn load_identities_impl(&self) -> Result<IdentitySnapshot, CatalogError> {
        // One read transaction: a concurrent change is seen entirely or not at all, with its version.
        let mut tx = self.begin_read().await?;
        let version: i64 = query(super::IDENTITY_VERSION_SQL)
            .fetch_one(&mut *tx)
            .await?
            .try_get("version")?;
        let keys = query(&format!(
            "SELECT {KEY_COLUMNS} FROM access_keys ORDER BY created_at, id"
        ))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(key_from_row)
        .collect::<Result<_, _>>()?;
        let users =
            query("SELECT name, display_name, source, created_at FROM ram_users ORDER BY name")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| {
                    Ok(RamUserRecord {
                        name: r.try_get("name")?,
                        display_name: r.try_get("display_name")?,
                        source: r.try_get("source")?,
                        created_at: from_ms(r.try_get("created_at")?)?,
                    })
                })
                .collect::<Result<_, CatalogError>>()?;
        let groups = query("SELECT name, source, created_at FROM ram_groups ORDER BY name")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| {
                Ok(RamGroupRecord {
                    name: r.try_get("name")?,
                    source: r.try_get("source")?,
                    created_at: from_ms(r.try_get("created_at")?)?,
                })
            })
            .collect::<Result<_, CatalogError>>()?;
        let policies =
            query("SELECT name, document, source, created_at FROM ram_policies ORDER BY name")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| {
                    Ok(RamPolicyRecord {
                        name: r.try_get("name")?,
                        document: r.try_get("document")?,
                        source: r.try_get("source")?,
                        created_at: from_ms(r.try_get("created_at")?)?,
                    })
                })
                .collect::<Result<_, CatalogError>>()?;
        let attachments = query(
            "SELECT policy_name, principal_type, principal_name, source FROM ram_policy_attachments \
             ORDER BY principal_type, principal_name, policy_name",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            let kind: String = r.try_get("principal_type")?;
            Ok(PolicyAttachment {
                policy: r.try_get("policy_name")?,
                kind: PrincipalKind::parse(&kind)
                    .ok_or_else(|| CatalogError::Corrupt(format!("principal type {kind:?}")))?,
                principal: r.try_get("principal_name")?,
                source: r.try_get("source")?,
            })
        })
        .collect::<Result<_, CatalogError>>()?;
        let members = query(
            "SELECT group_name, user_name, source FROM ram_group_members ORDER BY group_name, user_name",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok(GroupMember {
                group: r.try_get("group_name")?,
                user: r.try_get("user_name")?,
                source: r.try_get("source")?,
            })
        })
        .collect::<Result<_, CatalogError>>()?;
        tx.commit().await?;
        Ok(IdentitySnapshot {
            version,
            keys,
            users,
            groups,
            policies,
            attachments,
            members,
        })
    }

    pub(super) async fn create_access_key_impl(
        &self,
        key: &AccessKeyRecord,
        max_per_user: u32,
    ) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        if key.user != ROOT && !principal_exists(&mut tx, PrincipalKind::User, &key.user).await? {
            return Err(CatalogError::NotFound(format!("RAM user {:?}", key.user)));
        }
        let count: i64 = query("SELECT COUNT(*) AS n FROM access_keys WHERE user_name = ?")
            .bind(&key.user)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if count >= i64::from(max_per_user) {
            return Err(CatalogError::LimitExceeded(format!(
                "user {:?} already has {count} AccessKeys (at most {max_per_user}); delete one first",
                key.user
            )));
        }
        let q = query(
            "INSERT INTO access_keys (id, secret, secret_format, user_name, status, source, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(&key.secret)
        .bind(&key.secret_format)
        .bind(&key.user)
        .bind(status(key.active))
        .bind(&key.source)
        .bind(ms(key.created_at));
        insert_new(&mut tx, q, format!("AccessKey {:?}", key.id)).await?;
        commit_bumped(tx).await
    }

    pub(super) async fn set_access_key_active_impl(
        &self,
        id: &str,
        active: bool,
    ) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        let n = query("UPDATE access_keys SET status = ? WHERE id = ?")
            .bind(status(active))
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("AccessKey {id:?}")));
        }
        commit_bumped(tx).await
    }

    pub(super) async fn delete_access_key_impl(&self, id: &str) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        let n = query("DELETE FROM access_keys WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("AccessKey {id:?}")));
        }
        commit_bumped(tx).await
    }

    pub(super) async fn replace_access_key_secret_impl(
        &self,
        id: &str,
        from_format: &str,
        secret: &str,
        secret_format: &str,
    ) -> Result<bool, CatalogError> {
        let mut tx = self.begin().await?;
        let n = query(
            "UPDATE access_keys SET secret = ?, secret_format = ? WHERE id = ? AND secret_format = ?",
        )
        .bind(secret)
        .bind(secret_format)
        .bind(id)
        .bind(from_format)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        commit_bumped(tx).await?;
        Ok(true)
    }

    pub(super) async fn touch_access_key_impl(
        &self,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        query(
            "UPDATE access_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
        )
        .bind(ms(at))
        .bind(id)
        .bind(ms(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn create_ram_user_impl(&self, u: &RamUserRecord) -> Result<(), CatalogError> {
        if u.name == ROOT {
            return Err(CatalogError::AlreadyExists(
                "\"root\" (the account itself)".into(),
            ));
        }
        let mut tx = self.begin().await?;
        let q = query(
            "INSERT INTO ram_users (name, display_name, source, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&u.name)
        .bind(&u.display_name)
        .bind(&u.source)
        .bind(ms(u.created_at));
        insert_new(&mut tx, q, format!("RAM user {:?}", u.name)).await?;
        commit_bumped(tx).await
    }

    pub(super) async fn delete_ram_user_impl(&self, name: &str) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        if !principal_exists(&mut tx, PrincipalKind::User, name).await? {
            return Err(CatalogError::NotFound(format!("RAM user {name:?}")));
        }
        refuse_while_used(
            &mut tx,
            &format!("RAM user {name:?}"),
            name,
            &[
                ("SELECT 1 FROM access_keys WHERE user_name = ?", "AccessKeys"),
                (
                    "SELECT 1 FROM ram_policy_attachments WHERE principal_type = 'user' AND principal_name = ?",
                    "attached policies",
                ),
                (
                    "SELECT 1 FROM ram_group_members WHERE user_name = ?",
                    "group memberships",
                ),
            ],
        )
        .await?;
        query("DELETE FROM ram_users WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        commit_bumped(tx).await
    }

    pub(super) async fn create_ram_group_impl(
        &self,
        g: &RamGroupRecord,
    ) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        let q = query("INSERT INTO ram_groups (name, source, created_at) VALUES (?, ?, ?)")
            .bind(&g.name)
            .bind(&g.source)
            .bind(ms(g.created_at));
        insert_new(&mut tx, q, format!("RAM group {:?}", g.name)).await?;
        commit_bumped(tx).await
    }

    pub(super) async fn delete_ram_group_impl(&self, name: &str) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        if !principal_exists(&mut tx, PrincipalKind::Group, name).await? {
            return Err(CatalogError::NotFound(format!("RAM group {name:?}")));
        }
        refuse_while_used(
            &mut tx,
            &format!("RAM group {name:?}"),
            name,
            &[
                ("SELECT 1 FROM ram_group_members WHERE group_name = ?", "members"),
                (
                    "SELECT 1 FROM ram_policy_attachments WHERE principal_type = 'group' AND principal_name = ?",
                    "attached policies",
                ),
            ],
        )
        .await?;
        query("DELETE FROM ram_groups WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        commit_bumped(tx).await
    }

    pub(super) async fn create_ram_policy_impl(
        &self,
        p: &RamPolicyRecord,
    ) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        let q = query(
            "INSERT INTO ram_policies (name, document, source, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&p.name)
        .bind(&p.document)
        .bind(&p.source)
        .bind(ms(p.created_at));
        insert_new(&mut tx, q, format!("RAM policy {:?}", p.name)).await?;
        commit_bumped(tx).await
    }

    pub(super) async fn delete_ram_policy_impl(&self, name: &str) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        if !exists(
            &mut tx,
            "SELECT 1 FROM ram_policies WHERE name = ?",
            &[name],
        )
        .await?
        {
            return Err(CatalogError::NotFound(format!("RAM policy {name:?}")));
        }
        if exists(
            &mut tx,
            "SELECT 1 FROM ram_policy_attachments WHERE policy_name = ?",
            &[name],
        )
        .await?
        {
            // Deleting an attached Deny policy would silently widen rights: detaching is an explicit step.
            return Err(CatalogError::Conflict(format!(
                "RAM policy {name:?} is still attached; detach it first"
            )));
        }
        query("DELETE FROM ram_policies WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        commit_bumped(tx).await
    }

    pub(super) async fn attach_policy_impl(
        &self,
        a: &PolicyAttachment,
    ) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        if !exists(
            &mut tx,
            "SELECT 1 FROM ram_policies WHERE name = ?",
            &[&a.policy],
        )
        .await?
        {
            return Err(CatalogError::NotFound(format!("RAM policy {:?}", a.policy)));
        }
        if !principal_exists(&mut tx, a.kind, &a.principal).await? {
            return Err(CatalogError::NotFound(format!(
                "RAM {} {:?}",
                a.kind.as_str(),
                a.principal
            )));
        }
        let q = query(
            "INSERT INTO ram_policy_attachments (policy_name, principal_type, principal_name, source) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(&a.policy)
        .bind(a.kind.as_str())
        .bind(&a.principal)
        .bind(&a.source);
        insert_new(
            &mut tx,
            q,
            format!(
                "attachment of policy {:?} to {} {:?}",
                a.policy,
                a.kind.as_str(),
                a.principal
            ),
        )
        .await?;
        commit_bumped(tx).await
    }

    pub(super) async fn detach_policy_impl(
        &self,
        policy: &str,
        kind: PrincipalKind,
        principal: &str,
    ) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        let n = query(
            "DELETE FROM ram_policy_attachments WHERE policy_name = ? AND principal_type = ? AND principal_name = ?",
        )
        .bind(policy)
        .bind(kind.as_str())
        .bind(principal)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!(
                "attachment of policy {policy:?} to {} {principal:?}",
                kind.as_str()
            )));
        }
        commit_bumped(tx).await
    }

    pub(super) async fn add_group_member_impl(&self, m: &GroupMember) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        if !principal_exists(&mut tx, PrincipalKind::Group, &m.group).await? {
            return Err(CatalogError::NotFound(format!("RAM group {:?}", m.group)));
        }
        if !principal_exists(&mut tx, PrincipalKind::User, &m.user).await? {
            return Err(CatalogError::NotFound(format!("RAM user {:?}", m.user)));
        }
        let q =
            query("INSERT INTO ram_group_members (group_name, user_name, source) VALUES (?, ?, ?)")
                .bind(&m.group)
                .bind(&m.user)
                .bind(&m.source);
        insert_new(
            &mut tx,
            q,
            format!("membership of user {:?} in group {:?}", m.user, m.group),
        )
        .await?;
        commit_bumped(tx).await
    }

    pub(super) async fn remove_group_member_impl(
        &self,
        group: &str,
        user: &str,
    ) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        let n = query("DELETE FROM ram_group_members WHERE group_name = ? AND user_name = ?")
            .bind(group)
            .bind(user)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!(
                "membership of user {user:?} in group {group:?}"
            )));
        }
        commit_bumped(tx).await
    }

    pub(super) async fn sync_config_identities_impl(
        &self,
        cfg: &ConfigIdentities,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        let mut tx = self.begin().await?;
        let users: HashSet<&str> = cfg.users.iter().map(String::as_str).collect();
        let policies: HashSet<&str> = cfg.policies.iter().map(|(n, _)| n.as_str()).collect();
        let keys: HashSet<&str> = cfg.keys.iter().map(|k| k.id.as_str()).collect();

        // Removals first: config entries that left the file, with what hangs on them.
        for name in names(
            &mut tx,
            "SELECT name FROM ram_users WHERE source = 'config'",
        )
        .await?
        {
            if !users.contains(name.as_str()) {
                for sql in [
                    "DELETE FROM access_keys WHERE user_name = ?",
                    "DELETE FROM ram_policy_attachments WHERE principal_type = 'user' AND principal_name = ?",
                    "DELETE FROM ram_group_members WHERE user_name = ?",
                    "DELETE FROM ram_users WHERE name = ?",
                ] {
                    query(sql).bind(&name).execute(&mut *tx).await?;
                }
            }
        }
        for name in names(
            &mut tx,
            "SELECT name FROM ram_policies WHERE source = 'config'",
        )
        .await?
        {
            if !policies.contains(name.as_str()) {
                // Attachments go with it (ON DELETE CASCADE).
                query("DELETE FROM ram_policies WHERE name = ?")
                    .bind(&name)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        for id in names(
            &mut tx,
            "SELECT id AS name FROM access_keys WHERE source = 'config'",
        )
        .await?
        {
            if !keys.contains(id.as_str()) {
                query("DELETE FROM access_keys WHERE id = ?")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
        }

        for name in &cfg.users {
            query(
                "INSERT INTO ram_users (name, display_name, source, created_at) VALUES (?, '', 'config', ?) \
                 ON CONFLICT (name) DO UPDATE SET source = 'config'",
            )
            .bind(name)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
        }
        for (name, document) in &cfg.policies {
            query(
                "INSERT INTO ram_policies (name, document, source, created_at) VALUES (?, ?, 'config', ?) \
                 ON CONFLICT (name) DO UPDATE SET document = excluded.document, source = 'config'",
            )
            .bind(name)
            .bind(document)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
        }
        // The file's user → policies lists are the whole truth about config attachments.
        query("DELETE FROM ram_policy_attachments WHERE source = 'config'")
            .execute(&mut *tx)
            .await?;
        for (policy, user) in &cfg.user_policies {
            query(
                "INSERT INTO ram_policy_attachments (policy_name, principal_type, principal_name, source) \
                 VALUES (?, 'user', ?, 'config') \
                 ON CONFLICT (policy_name, principal_type, principal_name) DO UPDATE SET source = 'config'",
            )
            .bind(policy)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        }
        for k in &cfg.keys {
            // The enabled/disabled state is the operator's (CLI) decision and survives restarts.
            query(
                "INSERT INTO access_keys (id, secret, secret_format, user_name, status, source, created_at) \
                 VALUES (?, ?, ?, ?, ?, 'config', ?) \
                 ON CONFLICT (id) DO UPDATE SET secret = excluded.secret, secret_format = excluded.secret_format, \
                 user_name = excluded.user_name, source = 'config'",
            )
            .bind(&k.id)
            .bind(&k.secret)
            .bind(&k.secret_format)
            .bind(&k.user)
            .bind(status(k.active))
            .bind(ms(k.created_at))
            .execute(&mut *tx)
            .await?;
        }
        commit_bumped(tx).await
    }
}

async fn names(tx: &mut Transaction<'_, Postgres>, sql: &str) -> Result<Vec<String>, CatalogError> {
    query(sql)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| Ok(r.try_get("name")?))
        .collect()
}
