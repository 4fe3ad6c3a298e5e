//! Instances registered at run time (docs/instances.md): RegisterDBInstance, ModifyRegisteredDBInstance and
//! UnregisterDBInstance (ddsvault extensions, RAM actions `dds:<Action>` on the instance's ARN), listed by
//! DescribeDBInstances like every instance.
//!
//! Everything is checked before anything is written: the id (its form, and that no configured, provisioned or
//! registered instance has it), the other parameters, the connection string (parsed, and a server must answer
//! `hello` within [`PROBE_TIMEOUT`]). Then one catalog transaction stores the row (the connection string sealed with
//! the master key, as it may hold a password) with the policy, and the instance is live at once in this process:
//! API, job runner, scheduler, log followers, copies and object lock all read the runner's instance map. Other
//! processes sharing the catalog pick the change up within [`SYNC_INTERVAL`] ([`sync`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use ddsvault_api::{ApiError, Params};
use ddsvault_catalog::{BackupPolicy, CatalogError, RegisteredInstance};
use serde_json::{json, Map};

use crate::error::ActionError;
use crate::router::ActionResult;
use crate::state::{redact, AppState, Instance, PROBE_TIMEOUT};

/// How often a process looks at the catalog for instances other processes registered, changed or removed.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(2);

/// The policy parameters RegisterDBInstance accepts (as ModifyBackupPolicy validates them): given any, the
/// instance gets a stored policy, which turns automatic backups on.
const POLICY_PARAMS: [&str; 5] = [
    "PreferredBackupTime",
    "PreferredBackupPeriod",
    "BackupRetentionPeriod",
    "EnableBackupLog",
    "LogBackupRetentionPeriod",
];

/// The associated data a connection string is sealed under: tied to the instance, so a row's sealed value cannot
/// be moved to another row (nor mistaken for an AccessKey secret).
fn seal_context(id: &str) -> String {
    format!("registered-instance-uri:{id}")
}

fn nonempty<'a>(p: &'a Params, name: &str) -> Option<&'a str> {
    p.get(name).map(str::trim).filter(|s| !s.is_empty())
}

/// Ids become repository prefixes and ARNs: letters, digits, `-`, `_`, `.`, at most 64, not starting with `.`.
fn check_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && !id.contains("..")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_parameter(
            "DBInstanceId",
            "Use 1 to 64 letters, digits, '-', '_' or '.' (not starting with '.', no '..').",
        ))
    }
}

fn check_storage_type(v: &str) -> Result<(), ApiError> {
    if crate::config::STORAGE_TYPES.contains(&v) {
        Ok(())
    } else {
        Err(ApiError::invalid_parameter(
            "StorageType",
            &format!("Valid values: {}.", crate::config::STORAGE_TYPES.join(", ")),
        ))
    }
}

/// `DataPath` must name an existing directory as ddsvault sees it (Physical and Snapshot backups read it).
fn check_data_path(v: &str) -> Result<PathBuf, ApiError> {
    let path = PathBuf::from(v);
    if !path.is_absolute() {
        return Err(ApiError::invalid_parameter(
            "DataPath",
            "It must be an absolute path (the node's data directory as ddsvault sees it).",
        ));
    }
    if !path.is_dir() {
        return Err(ApiError::invalid_parameter(
            "DataPath",
            "No such directory on the ddsvault host (the node's data directory must be readable by ddsvault).",
        ));
    }
    Ok(path)
}

fn check_node(v: &str) -> Result<(), ApiError> {
    if v.len() <= 128
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Ok(())
    } else {
        Err(ApiError::invalid_parameter(
            "Node",
            "A node id: at most 128 letters, digits, '-', '_' or '.'.",
        ))
    }
}

/// Parses `uri` and asks the server `hello` within [`PROBE_TIMEOUT`]. Errors never hold the connection string.
async fn check_reachable(uri: &str) -> Result<(), ActionError> {
    let trimmed = uri.trim_start();
    if !(trimmed.starts_with("mongodb://") || trimmed.starts_with("mongodb+srv://")) {
        return Err(ActionError::ConnectionStringMalformed(
            "it must start with mongodb:// or mongodb+srv://".into(),
        ));
    }
    let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
    let late = || {
        ActionError::ConnectionStringUnreachable(format!(
            "no answer within {}s",
            PROBE_TIMEOUT.as_secs()
        ))
    };
    let client =
        match tokio::time::timeout_at(deadline, ddsvault_mongo::topology::connect(uri)).await {
            Err(_) => return Err(late()),
            Ok(Err(ddsvault_mongo::MongoError::InvalidUri(why))) => {
                return Err(ActionError::ConnectionStringMalformed(redact(&why, uri)))
            }
            Ok(Err(e)) => {
                return Err(ActionError::ConnectionStringUnreachable(redact(
                    &e.to_string(),
                    uri,
                )))
            }
            Ok(Ok(c)) => c,
        };
    let answer =
        tokio::time::timeout_at(deadline, ddsvault_mongo::topology::discover(&client)).await;
    // The probe's client is not kept (dropping it ends its pool and monitor): the instance gets its own pooled
    // client once registered.
    drop(client);
    match answer {
        Err(_) => Err(late()),
        Ok(Err(e)) => Err(ActionError::ConnectionStringUnreachable(redact(
            &e.to_string(),
            uri,
        ))),
        Ok(Ok(_)) => Ok(()),
    }
}

/// The in-memory instance of a catalog row whose connection string is already opened.
fn instance_of(row: &RegisteredInstance, uri: String) -> Instance {
    Instance {
        id: row.id.clone(),
        uri,
        storage_type: row.storage_type.clone(),
        description: row.description.clone(),
        data_path: row.data_path.as_ref().map(PathBuf::from),
        created_at: row.created_at,
        provisioned: false,
        registered: true,
        node: row.node.clone(),
    }
}

/// Brings this process's registered instances in line with the catalog: new and changed rows are made live,
/// removed ones are forgotten. An id that is configured here stays the configured instance (logged once). Called
/// at start and every [`SYNC_INTERVAL`] by the `registered-instances` task.
///
/// # Errors
/// The catalog cannot be read (the instances stay as they were).
pub async fn sync(st: &AppState) -> Result<(), CatalogError> {
    let rows = st.catalog.list_registered_instances().await?;
    let mut seen = std::collections::HashSet::new();
    for row in &rows {
        if st.instances.contains_key(&row.id) {
            // Said once per process, not at every look.
            static WARNED: std::sync::OnceLock<
                std::sync::Mutex<std::collections::HashSet<String>>,
            > = std::sync::OnceLock::new();
            let first = WARNED
                .get_or_init(Default::default)
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(row.id.clone());
            if first {
                tracing::warn!(instance = %row.id, "a registered instance has the id of a configured one; the configuration's entry is used");
            }
            continue;
        }
        seen.insert(row.id.clone());
        let uri = match st
            .identities
            .master()
            .open(&seal_context(&row.id), &row.uri)
        {
            Ok(s) => s.expose().to_string(),
            Err(_) => {
                tracing::error!(instance = %row.id, "the connection string of a registered instance cannot be opened with this master key; the instance is left out");
                continue;
            }
        };
        let current = st
            .registered
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&row.id)
            .cloned();
        let fresh = instance_of(row, uri);
        let changed = current.is_none_or(|c| {
            c.uri != fresh.uri
                || c.storage_type != fresh.storage_type
                || c.data_path != fresh.data_path
                || c.node != fresh.node
                || c.description != fresh.description
        });
        if changed {
            tracing::info!(instance = %row.id, "registered instance is live");
            st.put_registered(fresh);
        }
    }
    let gone: Vec<String> = st
        .registered
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .filter(|id| !seen.contains(*id))
        .cloned()
        .collect();
    for id in gone {
        tracing::info!(instance = %id, "registered instance removed");
        st.remove_registered(&id);
    }
    Ok(())
}

/// What a registered instance looks like in the answers of these actions (never its connection string).
fn answer(inst: &Instance) -> Map<String, serde_json::Value> {
    let mut out = Map::new();
    out.insert("DBInstanceId".into(), json!(inst.id));
    out.insert("StorageType".into(), json!(inst.storage_type));
    out.insert(
        "DataPath".into(),
        json!(inst
            .data_path
            .as_deref()
            .map(Path::display)
            .map(|d| d.to_string())
            .unwrap_or_default()),
    );
    out.insert("Node".into(), json!(inst.node.clone().unwrap_or_default()));
    out.insert("DBInstanceDescription".into(), json!(inst.description));
    out
}

pub async fn register_db_instance(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?.trim();
    check_id(id)?;
    let uri = p.required("ConnectionString")?.trim().to_string();
    let storage_type = nonempty(p, "StorageType")
        .unwrap_or("local_ssd")
        .to_string();
    check_storage_type(&storage_type)?;
    let data_path = nonempty(p, "DataPath").map(check_data_path).transpose()?;
    let node = nonempty(p, "Node").map(str::to_string);
    if let Some(n) = &node {
        check_node(n)?;
    }
    let description = p
        .get("DBInstanceDescription")
        .unwrap_or("")
        .trim()
        .to_string();
    let policy: Option<BackupPolicy> = if POLICY_PARAMS.iter().any(|n| nonempty(p, n).is_some()) {
        Some(super::policy::apply_changes(BackupPolicy::default(), p)?)
    } else {
        None
    };
    if let Ok(existing) = st.instance(id) {
        return Err(ActionError::InstanceIdTaken {
            id: id.to_string(),
            origin: existing.origin(),
        }
        .into());
    }
    check_reachable(&uri).await?;

    let sealed = st
        .identities
        .master()
        .seal(&seal_context(id), &uri)
        .map_err(|e| ActionError::Internal(e.to_string()))?;
    let now = Utc::now();
    let row = RegisteredInstance {
        id: id.to_string(),
        uri: sealed,
        storage_type,
        data_path: data_path.as_ref().map(|d| d.display().to_string()),
        node,
        description,
        created_at: now,
        updated_at: now,
    };
    match st
        .catalog
        .create_registered_instance(&row, policy.as_ref())
        .await
    {
        Ok(()) => {}
        // Another process (or call) took the id since the look above; what it is shows at its next sync.
        Err(CatalogError::AlreadyExists(what)) => {
            return Err(ActionError::InstanceIdTaken {
                id: id.to_string(),
                origin: if what.starts_with("provisioned") {
                    "provisioned"
                } else {
                    "registered"
                },
            }
            .into())
        }
        Err(e) => return Err(ActionError::from(e).into()),
    }
    let inst = instance_of(&row, uri);
    let out = answer(&inst);
    st.put_registered(inst);
    tracing::info!(instance = %id, policy = policy.is_some(), "registered an instance");
    Ok(out)
}

/// The registered instance `id`, or why it cannot be changed or removed.
fn registered(st: &AppState, id: &str) -> Result<std::sync::Arc<Instance>, ActionError> {
    let inst = st.instance(id)?;
    if !inst.registered {
        return Err(ActionError::NotRegistered {
            id: id.to_string(),
            origin: inst.origin(),
        });
    }
    Ok(inst)
}

pub async fn modify_registered_db_instance(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?.trim();
    let current = registered(st, id)?;
    let mut row = st
        .catalog
        .get_registered_instance(id)
        .await
        .map_err(ActionError::from)?
        .ok_or_else(|| ActionError::InstanceNotFound(id.to_string()))?;
    if let Some(v) = nonempty(p, "StorageType") {
        check_storage_type(v)?;
        row.storage_type = v.to_string();
    }
    // Present but empty clears DataPath and Node.
    if let Some(v) = p.get("DataPath") {
        row.data_path = match v.trim() {
            "" => None,
            v => Some(check_data_path(v)?.display().to_string()),
        };
    }
    if let Some(v) = p.get("Node") {
        row.node = match v.trim() {
            "" => None,
            v => {
                check_node(v)?;
                Some(v.to_string())
            }
        };
    }
    if let Some(v) = p.get("DBInstanceDescription") {
        row.description = v.trim().to_string();
    }
    let mut uri = current.uri.clone();
    if let Some(v) = nonempty(p, "ConnectionString") {
        check_reachable(v).await?;
        uri = v.to_string();
        row.uri = st
            .identities
            .master()
            .seal(&seal_context(id), &uri)
            .map_err(|e| ActionError::Internal(e.to_string()))?;
    }
    row.updated_at = Utc::now();
    st.catalog
        .update_registered_instance(&row)
        .await
        .map_err(|e| match e {
            CatalogError::NotFound(_) => ActionError::InstanceNotFound(id.to_string()),
            e => ActionError::from(e),
        })?;
    let inst = instance_of(&row, uri);
    let out = answer(&inst);
    st.put_registered(inst);
    tracing::info!(instance = %id, "modified a registered instance");
    Ok(out)
}

pub async fn unregister_db_instance(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?.trim();
    registered(st, id)?;
    let now = Utc::now();
    if st
        .catalog
        .get_retention_lock(id)
        .await
        .map_err(ActionError::from)?
        .is_some_and(|l| l.is_active(now))
    {
        return Err(ActionError::UnregisterRetentionLocked(id.to_string()).into());
    }
    match st.catalog.delete_registered_instance(id).await {
        Ok(_) => {}
        Err(CatalogError::ActiveJobExists { job_id, kind }) => {
            return Err(ActionError::InstanceHasActiveJob {
                instance: id.to_string(),
                job_id,
                kind,
            }
            .into())
        }
        Err(e) => return Err(ActionError::from(e).into()),
    }
    st.remove_registered(id);
    tracing::info!(instance = %id, "unregistered an instance (its backups stay)");
    Ok(Map::new())
}
