//! `ddsvault ram …`: identity management on the catalog, beside running servers (they see every change at their
//! next request through the identity version).

use chrono::{DateTime, Utc};
use ddsvault_catalog::{
    Catalog, CatalogError, GroupMember, IdentitySnapshot, PolicyAttachment, PrincipalKind,
    RamGroupRecord, RamPolicyRecord, RamUserRecord,
};
use ddsvault_ram::Policy;
use rand::distributions::Alphanumeric;
use rand::Rng;

use super::crypto::{MasterKey, SEALED_FORMAT};
use super::MAX_KEYS_PER_USER;
use ddsvault_api::ApiError;

use crate::error::{ActionError, ServerError};
use crate::state::ROOT_USER;
use crate::Config;

/// Source of everything created through the CLI: never touched by the configuration sync.
pub const CLI_SOURCE: &str = "cli";

/// A key just created: the only moment its secret is shown.
pub struct CreatedKey {
    /// The AccessKeyId.
    pub id: String,
    /// The RAM user it belongs to (`root` for the account).
    pub user: String,
    /// The secret in clear; shown once and never stored in this form.
    pub secret: String,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("secret", &"***")
            .finish()
    }
}

/// What `ram key list` shows of a key (never its secret).
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// The AccessKeyId.
    pub id: String,
    /// The RAM user it belongs to (`root` for the account).
    pub user: String,
    /// Whether the key may sign requests.
    pub active: bool,
    /// `config`, `generated` or `cli`.
    pub source: String,
    /// When the key was created.
    pub created_at: DateTime<Utc>,
    /// When the key last signed a request (coarse, about once a minute); `None`: never.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Something to attach a policy to.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A RAM user, by name.
    User(String),
    /// A RAM group, by name.
    Group(String),
}

impl Principal {
    fn parts(&self) -> (PrincipalKind, &str) {
        match self {
            Principal::User(u) => (PrincipalKind::User, u),
            Principal::Group(g) => (PrincipalKind::Group, g),
        }
    }
}

/// The catalog's answer in Alibaba RAM terms: `kind` is the entity the call is about.
fn ram_error(e: CatalogError, kind: &'static str) -> ActionError {
    match e {
        CatalogError::NotFound(what) => ActionError::RamNotFound { kind, what },
        CatalogError::AlreadyExists(what) => ActionError::RamExists { kind, what },
        CatalogError::Conflict(message) => ActionError::RamDeleteConflict { kind, message },
        CatalogError::LimitExceeded(m) => ActionError::RamKeyLimit(m),
        other => ActionError::Catalog(other),
    }
}

fn invalid(param: &str, why: String) -> ActionError {
    ActionError::Api(ApiError::invalid_parameter(param, &why))
}

/// Alibaba's RAM naming rules: users and groups 1–64 of `A-Za-z0-9.@-_`, policies 1–128 of `A-Za-z0-9-`.
fn check_name(
    param: &str,
    what: &str,
    name: &str,
    max: usize,
    extra: &[char],
) -> Result<(), ActionError> {
    let ok = !name.is_empty()
        && name.chars().count() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || extra.contains(&c));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            param,
            format!(
                "invalid {what} name {name:?}: 1-{max} characters of A-Z a-z 0-9 - {}",
                extra.iter().map(|c| format!("{c} ")).collect::<String>()
            ),
        ))
    }
}

fn check_user_name(name: &str) -> Result<(), ActionError> {
    if name == ROOT_USER {
        return Err(invalid(
            "UserName",
            "\"root\" is the account itself, not a RAM user".into(),
        ));
    }
    check_name("UserName", "user", name, 64, &['.', '@', '_'])
}

fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Identity management over the catalog named by a configuration.
pub struct IdentityAdmin {
    catalog: Catalog,
    master: std::sync::Arc<MasterKey>,
}

impl IdentityAdmin {
    /// Opens an existing catalog and its master key; creates neither (that is the server's first start).
    ///
    /// # Errors
    /// A missing catalog or master key (naming the path), catalog errors, a wrong master key.
    pub async fn open(cfg: &Config) -> Result<Self, ServerError> {
        let catalog = ddsvault_catalog::open_existing(&cfg.catalog_url()).await?;
        let master = super::unlock_existing(cfg, &catalog).await?;
        Ok(Self { catalog, master })
    }

    /// Over a catalog already unlocked (the server's RAM API).
    pub fn new(catalog: Catalog, master: std::sync::Arc<MasterKey>) -> Self {
        Self { catalog, master }
    }

    /// Everything, for the list commands.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn snapshot(&self) -> Result<IdentitySnapshot, ActionError> {
        Ok(self.catalog.load_identities().await?)
    }

    /// # Errors
    /// Invalid or taken name.
    pub async fn create_user(&self, name: &str, display_name: &str) -> Result<(), ActionError> {
        check_user_name(name)?;
        self.catalog
            .create_ram_user(&RamUserRecord {
                name: name.into(),
                display_name: display_name.into(),
                source: CLI_SOURCE.into(),
                created_at: Utc::now(),
            })
            .await
            .map_err(|e| ram_error(e, "User"))
    }

    /// # Errors
    /// Unknown user, or one that still has keys, policies or groups.
    pub async fn delete_user(&self, name: &str) -> Result<(), ActionError> {
        self.catalog
            .delete_ram_user(name)
            .await
            .map_err(|e| ram_error(e, "User"))
    }

    /// # Errors
    /// Invalid or taken name.
    pub async fn create_group(&self, name: &str) -> Result<(), ActionError> {
        check_name("GroupName", "group", name, 64, &['.', '@', '_'])?;
        self.catalog
            .create_ram_group(&RamGroupRecord {
                name: name.into(),
                source: CLI_SOURCE.into(),
                created_at: Utc::now(),
            })
            .await
            .map_err(|e| ram_error(e, "Group"))
    }

    /// # Errors
    /// Unknown group, or one that still has members or policies.
    pub async fn delete_group(&self, name: &str) -> Result<(), ActionError> {
        self.catalog
            .delete_ram_group(name)
            .await
            .map_err(|e| ram_error(e, "Group"))
    }

    /// # Errors
    /// Unknown group or user, or already a member.
    pub async fn add_member(&self, group: &str, user: &str) -> Result<(), ActionError> {
        let r = self
            .catalog
            .add_group_member(&GroupMember {
                group: group.into(),
                user: user.into(),
                source: CLI_SOURCE.into(),
            })
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                let snap = self.catalog.load_identities().await?;
                let has_group = snap.groups.iter().any(|g| g.name == group);
                let has_user = snap.users.iter().any(|u| u.name == user);
                Err(match e {
                    CatalogError::NotFound(what) => ActionError::RamNotFound {
                        kind: if has_group { "User" } else { "Group" },
                        what: if has_group && !has_user {
                            format!("RAM user {user:?}")
                        } else {
                            what
                        },
                    },
                    other => ram_error(other, "Group.User"),
                })
            }
        }
    }

    /// # Errors
    /// Not a member.
    pub async fn remove_member(&self, group: &str, user: &str) -> Result<(), ActionError> {
        self.catalog
            .remove_group_member(group, user)
            .await
            .map_err(|e| ram_error(e, "Group.User"))
    }

    /// Stores a custom policy after checking it is a policy ddsvault can evaluate.
    ///
    /// # Errors
    /// Invalid name or document, taken name.
    pub async fn create_policy(&self, name: &str, document: &str) -> Result<(), ActionError> {
        check_name("PolicyName", "policy", name, 128, &[])?;
        Policy::parse(document)
            .map_err(|e| invalid("PolicyDocument", format!("policy {name:?}: {e}")))?;
        self.catalog
            .create_ram_policy(&RamPolicyRecord {
                name: name.into(),
                document: document.into(),
                source: CLI_SOURCE.into(),
                created_at: Utc::now(),
            })
            .await
            .map_err(|e| ram_error(e, "Policy"))
    }

    /// # Errors
    /// Unknown or still attached policy.
    pub async fn delete_policy(&self, name: &str) -> Result<(), ActionError> {
        self.catalog
            .delete_ram_policy(name)
            .await
            .map_err(|e| ram_error(e, "Policy"))
    }

    /// # Errors
    /// Unknown policy or principal, already attached.
    pub async fn attach(&self, policy: &str, to: &Principal) -> Result<(), ActionError> {
        let (kind, principal) = to.parts();
        let link = match kind {
            PrincipalKind::User => ("User", "User.Policy"),
            PrincipalKind::Group => ("Group", "Group.Policy"),
        };
        let r = self
            .catalog
            .attach_policy(&PolicyAttachment {
                policy: policy.into(),
                kind,
                principal: principal.into(),
                source: CLI_SOURCE.into(),
            })
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(CatalogError::NotFound(what)) => {
                let snap = self.catalog.load_identities().await?;
                let has_policy = snap.policies.iter().any(|p| p.name == policy);
                Err(ActionError::RamNotFound {
                    kind: if has_policy { link.0 } else { "Policy" },
                    what,
                })
            }
            Err(e) => Err(ram_error(e, link.1)),
        }
    }

    /// # Errors
    /// Not attached.
    pub async fn detach(&self, policy: &str, from: &Principal) -> Result<(), ActionError> {
        let (kind, principal) = from.parts();
        self.catalog
            .detach_policy(policy, kind, principal)
            .await
            .map_err(|e| {
                ram_error(
                    e,
                    match kind {
                        PrincipalKind::User => "User.Policy",
                        PrincipalKind::Group => "Group.Policy",
                    },
                )
            })
    }

    /// Creates an active key for a RAM user or `root`; the secret is returned here and never again.
    ///
    /// # Errors
    /// Unknown user, or it has [`MAX_KEYS_PER_USER`] keys already.
    pub async fn create_key(&self, user: &str) -> Result<CreatedKey, ActionError> {
        let id = format!("LTAI{}", random_string(20));
        let secret = random_string(30);
        self.catalog
            .create_access_key(
                &ddsvault_catalog::AccessKeyRecord {
                    id: id.clone(),
                    secret: self
                        .master
                        .seal(&id, &secret)
                        .map_err(|e| ActionError::Internal(e.to_string()))?,
                    secret_format: SEALED_FORMAT.into(),
                    user: user.into(),
                    active: true,
                    source: CLI_SOURCE.into(),
                    created_at: Utc::now(),
                    last_used_at: None,
                },
                MAX_KEYS_PER_USER,
            )
            .await
            .map_err(|e| match e {
                CatalogError::AlreadyExists(what) => ActionError::RamExists {
                    kind: "User.AccessKey",
                    what,
                },
                other => ram_error(other, "User"),
            })?;
        Ok(CreatedKey {
            id,
            user: user.into(),
            secret,
        })
    }

    /// Enables or disables a key; running servers refuse a disabled key from their next request on.
    ///
    /// # Errors
    /// Unknown key.
    pub async fn set_key_active(&self, id: &str, active: bool) -> Result<(), ActionError> {
        self.catalog
            .set_access_key_active(id, active)
            .await
            .map_err(|e| ram_error(e, "User.AccessKey"))
    }

    /// # Errors
    /// Unknown key.
    pub async fn delete_key(&self, id: &str) -> Result<(), ActionError> {
        self.catalog
            .delete_access_key(id)
            .await
            .map_err(|e| ram_error(e, "User.AccessKey"))
    }

    /// Keys, optionally of one user, without secrets.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn list_keys(&self, user: Option<&str>) -> Result<Vec<KeyInfo>, ActionError> {
        Ok(self
            .catalog
            .list_access_keys()
            .await?
            .into_iter()
            .filter(|k| user.is_none() || user == Some(k.user.as_str()))
            .map(|k| KeyInfo {
                id: k.id,
                user: k.user,
                active: k.active,
                source: k.source,
                created_at: k.created_at,
                last_used_at: k.last_used_at,
            })
            .collect())
    }
}
