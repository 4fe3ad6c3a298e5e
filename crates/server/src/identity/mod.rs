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
    /// Internal error when the key is unknown (authentication found it moments ago) or a policy is unreadable.
    pub fn principal(&self, access_key_id: &str) -> Result<(String, Vec<Arc<Policy>>), ApiError> {
        let entry = self
            .keys
            .get(access_key_id)
            .ok_or_else(|| ApiError::internal("authenticated key has no user"))?;
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
    let master = MasterKey::load(cfg)?;
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
            let sealed = master.seal(&k.id, &k.secret);
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
            .map(|k| AccessKeyRecord {
                id: k.id.clone(),
                secret: master.seal(&k.id, &k.secret),
                secret_format: SEALED_FORMAT.into(),
                user: k.user.clone(),
                active: true,
                source: "config".into(),
                created_at: now,
                last_used_at: None,
            })
            .collect(),
    };
    catalog.sync_config_identities(&ids, now).await?;
    Ok(())
}
