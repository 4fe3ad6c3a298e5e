//! Who is calling: AccessKeys, RAM users, groups and policies, all kept in the catalog.
//!
//! A server keeps a decrypted view of the identities in memory and compares the catalog's identity version on
//! every request (one small read): when anything changed — in this process, in a `ddsvault ram` command beside it,
//! or in another server sharing the catalog — the view is reloaded before the request is authenticated. A key
//! disabled or deleted anywhere is thus refused from the next request on.

pub mod admin;
pub mod crypto;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use ddsvault_api::{ApiError, KeyState, SecretLookup};
use ddsvault_catalog::{
    AccessKeyRecord, Catalog, ConfigIdentities, IdentitySnapshot, PrincipalKind, SECRET_PLAIN,
};
use ddsvault_ram::Policy;

use crate::config::Config;
use crate::error::ServerError;
use crate::state::ROOT_USER;
use crypto::{MasterKey, SEALED_FORMAT};

/// Alibaba allows two AccessKeys per user; so does ddsvault for keys created at run time.
pub const MAX_KEYS_PER_USER: u32 = 2;
/// Last-used times are written at most this often per key and process.
pub const LAST_USED_GRANULARITY: chrono::Duration = chrono::Duration::seconds(60);

#[derive(Debug)]
enum KeyEntryState {
    Usable(KeyState),
    /// The row exists but its secret cannot be decrypted (wrong master key, damaged row).
    Undecryptable,
}

#[derive(Debug)]
struct KeyEntry {
    user: String,
    state: KeyEntryState,
}

/// The identities at one catalog version, secrets decrypted, policies parsed and grouped per user.
#[derive(Debug, Default)]
pub struct IdentityView {
    version: i64,
    keys: HashMap<String, KeyEntry>,
    /// RAM user → the policies that apply to it: attached directly and through its groups. An `Err` names a stored
    /// policy that no longer parses; the user is then refused rather than evaluated without it (it might be a
    /// Deny).
    users: HashMap<String, Result<Vec<Arc<Policy>>, String>>,
}

impl IdentityView {
    /// Builds the view of a snapshot.
    pub fn build(snap: &IdentitySnapshot, master: &MasterKey) -> Self {
        let keys = snap
            .keys
            .iter()
            .map(|k| (k.id.clone(), key_entry(k, master)))
            .collect();
        let mut parsed: HashMap<&str, Result<Arc<Policy>, String>> = HashMap::new();
        for p in &snap.policies {
            let one = Policy::parse(&p.document).map(Arc::new).map_err(|e| {
                tracing::error!(policy = %p.name, error = %e, "stored RAM policy does not parse");
                p.name.clone()
            });
            parsed.insert(p.name.as_str(), one);
        }
        let mut users = HashMap::new();
        for u in &snap.users {
            let groups: Vec<&str> = snap
                .members
                .iter()
                .filter(|m| m.user == u.name)
                .map(|m| m.group.as_str())
                .collect();
            let mut names: Vec<&str> = snap
                .attachments
                .iter()
                .filter(|a| match a.kind {
                    PrincipalKind::User => a.principal == u.name,
                    PrincipalKind::Group => groups.contains(&a.principal.as_str()),
                })
                .map(|a| a.policy.as_str())
                .collect();
            // A policy reached twice (directly and through a group) is evaluated once.
            names.sort_unstable();
            names.dedup();
            let policies = names
                .iter()
                .map(|n| match parsed.get(n) {
                    Some(p) => p.clone(),
                    None => Err((*n).to_string()),
                })
                .collect::<Result<Vec<_>, _>>();
            users.insert(u.name.clone(), policies);
        }
        Self {
            version: snap.version,
            keys,
            users,
        }
    }

    /// The identity version this view shows.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The user of an AccessKey and the policies that apply to it (none for `root`, which RAM does not limit).
    ///
    /// # Errors
    /// `InvalidAccessKeyId.NotFound` when the key is unknown (deleted since the request authenticated), internal
    /// error when a policy is unreadable.
    pub fn principal(&self, access_key_id: &str) -> Result<(String, Vec<Arc<Policy>>), ApiError> {
        // Absent only if the key was deleted since this request authenticated (a newer view): refuse as deleted.
        let entry = self
            .keys
            .get(access_key_id)
            .ok_or_else(ApiError::access_key_not_found)?;
        if entry.user == ROOT_USER {
            return Ok((entry.user.clone(), Vec::new()));
        }
        match self.users.get(&entry.user) {
            Some(Ok(policies)) => Ok((entry.user.clone(), policies.clone())),
            Some(Err(policy)) => Err(ApiError::internal(format!(
                "RAM policy {policy:?} of user {:?} cannot be read",
                entry.user
            ))),
            // A key whose user row is gone has no rights (the catalog refuses this state; be safe anyway).
            None => Ok((entry.user.clone(), Vec::new())),
        }
    }
}

fn key_entry(k: &AccessKeyRecord, master: &MasterKey) -> KeyEntry {
    let state = if !k.active {
        KeyEntryState::Usable(KeyState::Inactive)
    } else if k.secret_format == SEALED_FORMAT {
        match master.open(&k.id, &k.secret) {
            Ok(s) => KeyEntryState::Usable(KeyState::Active(s)),
            Err(e) => {
                tracing::error!(error = %e, "AccessKey unusable");
                KeyEntryState::Undecryptable
            }
        }
    } else {
        // Plain rows are migrated at start; one written since by an old binary is not trusted either.
        tracing::error!(access_key = %k.id, format = %k.secret_format, "AccessKey secret is not sealed");
        KeyEntryState::Undecryptable
    };
    KeyEntry {
        user: k.user.clone(),
        state,
    }
}

impl SecretLookup for IdentityView {
    fn secret(&self, access_key_id: &str) -> Result<Option<KeyState>, ApiError> {
        match self.keys.get(access_key_id).map(|k| &k.state) {
            None => Ok(None),
            Some(KeyEntryState::Usable(s)) => Ok(Some(s.clone())),
            Some(KeyEntryState::Undecryptable) => Err(ApiError::internal(format!(
                "the secret of AccessKey {access_key_id} cannot be decrypted"
            ))),
        }
    }
}

/// The identity view of a running server, refreshed from the catalog when its version moves.
pub struct Identities {
    catalog: Catalog,
    master: Arc<MasterKey>,
    current: RwLock<Arc<IdentityView>>,
    /// One reload at a time: concurrent requests that see a new version wait for it instead of all reloading.
    reload: tokio::sync::Mutex<()>,
    /// When this process last wrote each key's last-used time.
    touched: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl Identities {
    /// Loads the current view.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn load(catalog: Catalog, master: Arc<MasterKey>) -> Result<Self, ServerError> {
        let snap = catalog.load_identities().await?;
        let view = IdentityView::build(&snap, &master);
        Ok(Self {
            catalog,
            master,
            current: RwLock::new(Arc::new(view)),
            reload: tokio::sync::Mutex::new(()),
            touched: Mutex::new(HashMap::new()),
        })
    }

    fn cached(&self) -> Arc<IdentityView> {
        match self.current.read() {
            Ok(v) => Arc::clone(&v),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The view as of now: the cached one if the catalog's version has not moved, else a fresh one.
    ///
    /// # Errors
    /// `ServiceUnavailable` when the catalog cannot be read: no request is authenticated against a view that may
    /// be stale.
    pub async fn view(&self) -> Result<Arc<IdentityView>, ApiError> {
        let unavailable = |e: ddsvault_catalog::CatalogError| {
            tracing::error!(error = %e, "identity version unreadable");
            ApiError::service_unavailable()
        };
        let version = self.catalog.identity_version().await.map_err(unavailable)?;
        let cached = self.cached();
        if cached.version == version {
            return Ok(cached);
        }
        let _one = self.reload.lock().await;
        let cached = self.cached();
        if cached.version >= version {
            return Ok(cached);
        }
        let snap = self.catalog.load_identities().await.map_err(unavailable)?;
        let view = Arc::new(IdentityView::build(&snap, &self.master));
        tracing::debug!(version = view.version, "identity view reloaded");
        match self.current.write() {
            Ok(mut w) => *w = Arc::clone(&view),
            Err(poisoned) => *poisoned.into_inner() = Arc::clone(&view),
        }
        Ok(view)
    }

    /// The master key: it also seals the connection strings of registered instances (docs/instances.md).
    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// Identity management over the same catalog and master key (the RAM API).
    pub fn admin(&self) -> admin::IdentityAdmin {
        admin::IdentityAdmin::new(Arc::clone(&self.catalog), Arc::clone(&self.master))
    }

    /// The user and effective policies of a key in the latest loaded view (the request authenticated against it,
    /// or a newer one).
    ///
    /// # Errors
    /// See [`IdentityView::principal`].
    pub fn principal(&self, access_key_id: &str) -> Result<(String, Vec<Arc<Policy>>), ApiError> {
        self.cached().principal(access_key_id)
    }

    /// Records a successful use of a key, writing at most once per [`LAST_USED_GRANULARITY`]. A failed write is
    /// logged, never fails the request.
    pub async fn touch(&self, access_key_id: &str, now: DateTime<Utc>) {
        {
            let Ok(mut touched) = self.touched.lock() else {
                return;
            };
            if touched
                .get(access_key_id)
                .is_some_and(|last| now - *last < LAST_USED_GRANULARITY)
            {
                return;
            }
            touched.insert(access_key_id.to_string(), now);
        }
        if let Err(e) = self.catalog.touch_access_key(access_key_id, now).await {
            tracing::warn!(access_key = %access_key_id, error = %e, "could not record AccessKey use");
        }
    }
}

/// Opens the master key and checks it is the one the catalog's secrets are sealed with, then seals any secret
/// still stored in clear (catalogs from before encryption at rest).
///
/// # Errors
/// A missing or wrong master key, catalog errors.
pub async fn unlock(cfg: &Config, catalog: &Catalog) -> Result<Arc<MasterKey>, ServerError> {
    check_and_migrate(MasterKey::load(cfg)?, catalog).await
}

/// As [`unlock`], but never generates a master key: for the offline verbs, which work on an existing deployment.
///
/// # Errors
/// As [`unlock`], and a missing `<data_dir>/master.key` (naming the path).
pub async fn unlock_existing(
    cfg: &Config,
    catalog: &Catalog,
) -> Result<Arc<MasterKey>, ServerError> {
    check_and_migrate(MasterKey::load_existing(cfg)?, catalog).await
}

async fn check_and_migrate(
    master: MasterKey,
    catalog: &Catalog,
) -> Result<Arc<MasterKey>, ServerError> {
    let stored = catalog
        .init_setting("master_key_check", master.check_value())
        .await?;
    if stored != master.check_value() {
        return Err(ServerError::Identity(
            "the master key does not match the one this catalog's AccessKey secrets were sealed with \
             (check DDSVAULT_MASTER_KEY / secret_key_file / <data_dir>/master.key)"
                .into(),
        ));
    }
    if let crypto::KeySource::Generated(path) = &master.source {
        tracing::warn!(path = %path.display(), "generated a new master key: back it up with the catalog, \
            without it the stored AccessKey secrets are lost");
    }
    let mut migrated = 0;
    for k in catalog.list_access_keys().await? {
        if k.secret_format == SECRET_PLAIN {
            let sealed = master.seal(&k.id, &k.secret).map_err(seal_failed)?;
            if catalog
                .replace_access_key_secret(&k.id, SECRET_PLAIN, &sealed, SEALED_FORMAT)
                .await?
            {
                migrated += 1;
            }
        }
    }
    if migrated > 0 {
        tracing::info!(keys = migrated, "sealed AccessKey secrets stored in clear");
    }
    Ok(Arc::new(master))
}

fn seal_failed(e: crypto::SealError) -> ServerError {
    ServerError::Identity(e.to_string())
}

/// Makes the catalog's `config` identities match the configuration file (see README, "Identities").
///
/// # Errors
/// Catalog errors.
pub async fn sync_config(
    cfg: &Config,
    catalog: &Catalog,
    master: &MasterKey,
    now: DateTime<Utc>,
) -> Result<(), ServerError> {
    let ids = ConfigIdentities {
        users: cfg.ram_users.iter().map(|u| u.name.clone()).collect(),
        policies: cfg
            .ram_policies
            .iter()
            .map(|p| (p.name.clone(), p.document.clone()))
            .collect(),
        user_policies: cfg
            .ram_users
            .iter()
            .flat_map(|u| u.policies.iter().map(|p| (p.clone(), u.name.clone())))
            .collect(),
        keys: cfg
            .access_keys
            .iter()
            .map(|k| {
                Ok(AccessKeyRecord {
                    id: k.id.clone(),
                    secret: master.seal(&k.id, &k.secret).map_err(seal_failed)?,
                    secret_format: SEALED_FORMAT.into(),
                    user: k.user.clone(),
                    active: true,
                    source: "config".into(),
                    created_at: now,
                    last_used_at: None,
                })
            })
            .collect::<Result<_, ServerError>>()?,
    };
    catalog.sync_config_identities(&ids, now).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::crypto::KeySource;
    use super::*;
    use ddsvault_catalog::{
        GroupMember, PolicyAttachment, RamGroupRecord, RamPolicyRecord, RamUserRecord,
    };
    use ddsvault_ram::{evaluate, Decision, Request};

    const ALLOW_LIST: &str = r#"{"Version":"1","Statement":[{"Effect":"Allow","Action":"dds:Describe*","Resource":"*"}]}"#;
    const DENY_BACKUPS: &str = r#"{"Version":"1","Statement":[{"Effect":"Deny","Action":"dds:DescribeBackups","Resource":"*"}]}"#;

    fn master() -> Arc<MasterKey> {
        Arc::new(MasterKey::from_bytes(&[3; 32], KeySource::Env))
    }

    fn key(master: &MasterKey, id: &str, user: &str, secret: &str) -> AccessKeyRecord {
        AccessKeyRecord {
            id: id.into(),
            secret: master.seal(id, secret).expect("seal"),
            secret_format: SEALED_FORMAT.into(),
            user: user.into(),
            active: true,
            source: "cli".into(),
            created_at: Utc::now(),
            last_used_at: None,
        }
    }

    async fn catalog() -> Catalog {
        ddsvault_catalog::open("sqlite::memory:")
            .await
            .expect("memory catalog")
    }

    async fn add_user(cat: &Catalog, name: &str) {
        cat.create_ram_user(&RamUserRecord {
            name: name.into(),
            display_name: String::new(),
            source: "cli".into(),
            created_at: Utc::now(),
        })
        .await
        .expect("user");
    }

    async fn add_policy(cat: &Catalog, name: &str, doc: &str, kind: PrincipalKind, to: &str) {
        let exists = cat
            .load_identities()
            .await
            .expect("load")
            .policies
            .iter()
            .any(|p| p.name == name);
        if !exists {
            cat.create_ram_policy(&RamPolicyRecord {
                name: name.into(),
                document: doc.into(),
                source: "cli".into(),
                created_at: Utc::now(),
            })
            .await
            .expect("policy");
        }
        cat.attach_policy(&PolicyAttachment {
            policy: name.into(),
            kind,
            principal: to.into(),
            source: "cli".into(),
        })
        .await
        .expect("attach");
    }

    fn decide(policies: &[Arc<Policy>], action: &str) -> Decision {
        let refs: Vec<&Policy> = policies.iter().map(|p| p.as_ref()).collect();
        evaluate(&refs, &Request::new(action, "*"))
    }

    #[tokio::test]
    async fn group_policies_are_inherited_once_and_changes_are_seen_at_once() {
        let cat = catalog().await;
        let m = master();
        add_user(&cat, "u").await;
        cat.create_ram_group(&RamGroupRecord {
            name: "g".into(),
            source: "cli".into(),
            created_at: Utc::now(),
        })
        .await
        .expect("group");
        cat.add_group_member(&GroupMember {
            group: "g".into(),
            user: "u".into(),
            source: "cli".into(),
        })
        .await
        .expect("member");
        add_policy(&cat, "List", ALLOW_LIST, PrincipalKind::User, "u").await;
        add_policy(&cat, "List", ALLOW_LIST, PrincipalKind::Group, "g").await;
        add_policy(&cat, "NoBackups", DENY_BACKUPS, PrincipalKind::Group, "g").await;
        cat.create_access_key(&key(&m, "K1", "u", "s1"), MAX_KEYS_PER_USER)
            .await
            .expect("key");

        let ids = Identities::load(Arc::clone(&cat), Arc::clone(&m))
            .await
            .expect("load");
        let view = ids.view().await.expect("view");
        assert_eq!(
            view.secret("K1").expect("lookup"),
            Some(KeyState::Active(ddsvault_api::Secret::new("s1")))
        );
        assert_eq!(view.secret("K-none").expect("lookup"), None);
        let (user, policies) = ids.principal("K1").expect("principal");
        assert_eq!(user, "u");
        assert_eq!(policies.len(), 2, "List reached twice counts once");
        assert_eq!(
            decide(&policies, "dds:DescribeDBInstances"),
            Decision::Allow
        );
        assert_eq!(
            decide(&policies, "dds:DescribeBackups"),
            Decision::ExplicitDeny
        );

        // Another writer (a CLI) disables the key: the next view sees it without any restart.
        let before = view.version();
        cat.set_access_key_active("K1", false)
            .await
            .expect("disable");
        let view = ids.view().await.expect("view");
        assert!(view.version() > before);
        assert_eq!(view.secret("K1").expect("lookup"), Some(KeyState::Inactive));
        cat.delete_access_key("K1").await.expect("delete");
        assert_eq!(
            ids.view()
                .await
                .expect("view")
                .secret("K1")
                .expect("lookup"),
            None
        );
        // Leaving the group drops the inherited policies.
        cat.create_access_key(&key(&m, "K2", "u", "s2"), MAX_KEYS_PER_USER)
            .await
            .expect("key");
        cat.remove_group_member("g", "u").await.expect("leave");
        ids.view().await.expect("view");
        let (_, policies) = ids.principal("K2").expect("principal");
        assert_eq!(policies.len(), 1);
        assert_eq!(decide(&policies, "dds:DescribeBackups"), Decision::Allow);
    }

    #[tokio::test]
    async fn unreadable_secrets_and_policies_refuse_instead_of_guessing() {
        let cat = catalog().await;
        let m = master();
        add_user(&cat, "u").await;
        // Sealed under another master key, and a row still in clear.
        let other = MasterKey::from_bytes(&[9; 32], KeySource::Env);
        cat.create_access_key(&key(&other, "K-other", "u", "s"), 5)
            .await
            .expect("key");
        cat.put_access_key(&AccessKeyRecord {
            secret: "clear".into(),
            secret_format: SECRET_PLAIN.into(),
            ..key(&m, "K-plain", "root", "x")
        })
        .await
        .expect("plain key");
        // A stored policy the evaluator cannot read (written by something else): the user is refused.
        add_policy(&cat, "Broken", "{not json", PrincipalKind::User, "u").await;
        cat.create_access_key(&key(&m, "K-ok", "u", "s"), 5)
            .await
            .expect("key");
        let ids = Identities::load(Arc::clone(&cat), Arc::clone(&m))
            .await
            .expect("load");
        let view = ids.view().await.expect("view");
        for id in ["K-other", "K-plain"] {
            let e = view.secret(id).expect_err("undecryptable");
            assert!(e.is_server_error(), "{e:?}");
            assert!(!format!("{e:?}").contains("clear"));
        }
        assert!(ids
            .principal("K-ok")
            .expect_err("broken policy")
            .is_server_error());
    }

    #[tokio::test]
    async fn last_use_is_written_at_most_once_a_minute() {
        let cat = catalog().await;
        let m = master();
        cat.create_access_key(&key(&m, "K1", "root", "s"), MAX_KEYS_PER_USER)
            .await
            .expect("key");
        let ids = Identities::load(Arc::clone(&cat), Arc::clone(&m))
            .await
            .expect("load");
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let last = |cat: Catalog| async move {
            cat.list_access_keys().await.expect("list")[0].last_used_at
        };
        ids.touch("K1", t0).await;
        assert_eq!(last(Arc::clone(&cat)).await, Some(t0));
        ids.touch("K1", t0 + chrono::Duration::seconds(59)).await;
        assert_eq!(
            last(Arc::clone(&cat)).await,
            Some(t0),
            "not rewritten within a minute"
        );
        let t1 = t0 + chrono::Duration::seconds(61);
        ids.touch("K1", t1).await;
        assert_eq!(last(Arc::clone(&cat)).await, Some(t1));
    }

    #[tokio::test]
    async fn unlock_seals_plain_rows_and_refuses_another_master_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = Config::parse(&format!(
            "data_dir = {:?}",
            dir.path().display().to_string()
        ))
        .expect("config");
        let cat = ddsvault_catalog::open(&cfg.catalog_url())
            .await
            .expect("open");
        cat.put_access_key(&AccessKeyRecord {
            secret: "old-clear-secret".into(),
            secret_format: SECRET_PLAIN.into(),
            ..key(&master(), "K-old", "root", "x")
        })
        .await
        .expect("plain row");
        let m = unlock(&cfg, &cat).await.expect("unlock");
        let row = cat.list_access_keys().await.expect("list").remove(0);
        assert_eq!(row.secret_format, SEALED_FORMAT);
        assert!(!row.secret.contains("old-clear-secret"));
        assert_eq!(
            m.open("K-old", &row.secret).expect("open").expose(),
            "old-clear-secret"
        );
        // The generated key file is reused by the next unlock (a CLI beside the server)…
        unlock(&cfg, &cat).await.expect("same key again");
        // …and a different key is refused.
        std::fs::write(dir.path().join(crypto::MASTER_KEY_FILE), "cd".repeat(32)).expect("write");
        let e = unlock(&cfg, &cat).await.expect_err("other key");
        assert!(e.to_string().contains("does not match"), "{e}");
    }
}
