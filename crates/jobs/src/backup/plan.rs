//! Backup planning: which method a backup takes on an instance and whether it can, from what the instance is
//! (its topology, its disks, its data directory), and the databases it would back up. CreateBackup and the
//! scheduler's automatic backups decide with the same rules from here (the seed's: standalone → Snapshot only;
//! cloud disks → Snapshot only; replica sets and sharded clusters on local disks choose, default Physical).

use std::time::Duration;

use chrono::{DateTime, Utc};
use ddsvault_catalog::{permanent_expiry, BackupMethod, Job};
use ddsvault_mongo::topology::{list_user_databases, Topology, TopologyKind, SYSTEM_DATABASES};
use ddsvault_mongo::MongoError;

use crate::InstanceSpec;

/// How long `listDatabases` may take when a backup is planned.
pub const LIST_DATABASES_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an instance may take to say what it is (`hello`) when an automatic backup's method is chosen.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(4);

/// Why a backup cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The method is not available for this instance (the message says why and what is).
    #[error("{0}")]
    MethodNotSupported(String),
    /// A file-level method on an instance without `data_path`.
    #[error("instance {instance} has no data_path: {method} backups copy its data files")]
    DataPathMissing {
        /// The instance asked for.
        instance: String,
        /// The file-level method asked for.
        method: BackupMethod,
    },
    /// `listDatabases` failed (the message may hold the connection string: callers redact it).
    #[error("{0}")]
    Listing(MongoError),
    /// `listDatabases` did not answer within [`LIST_DATABASES_TIMEOUT`].
    #[error("listDatabases did not answer within {}s", LIST_DATABASES_TIMEOUT.as_secs())]
    ListingTimeout,
}

/// Cloud disks take snapshot backups only (seed: "Instances that use disks support only snapshot backups").
pub fn is_cloud_disk(storage_type: &str) -> bool {
    storage_type.starts_with("cloud_")
}

/// Decides the backup method from the request and what the instance is (the seed's rules):
/// standalone → Snapshot only; cloud disks → Snapshot only; replica sets and sharded clusters on local disks
/// choose, default Physical.
///
/// # Errors
/// [`PlanError::MethodNotSupported`] for a method the instance cannot take.
pub fn choose_method(
    requested: Option<BackupMethod>,
    kind: TopologyKind,
    cloud_disk: bool,
) -> Result<BackupMethod, PlanError> {
    if kind == TopologyKind::Standalone {
        return match requested {
            None | Some(BackupMethod::Snapshot) => Ok(BackupMethod::Snapshot),
            Some(m) => Err(PlanError::MethodNotSupported(format!(
                "The instance is a standalone server, which takes snapshot backups only; {m} is not available for it."
            ))),
        };
    }
    if cloud_disk {
        return match requested {
            None | Some(BackupMethod::Snapshot) => Ok(BackupMethod::Snapshot),
            Some(m) => Err(PlanError::MethodNotSupported(format!(
                "Instances on cloud disks support only snapshot backups; {m} is not available."
            ))),
        };
    }
    Ok(requested.unwrap_or(BackupMethod::Physical))
}

/// What a backup without `BackupMethod` takes, for manual and automatic backups alike: the seed's rules (Physical;
/// Snapshot for standalone servers and cloud disks) where ddsvault can copy the node's files (FerretDB with the
/// SQLite backend and `data_path`). Elsewhere a replica set or sharded cluster takes Logical instead of a method
/// that would be refused; a standalone server or cloud disk keeps Snapshot, whose refusal says what is missing.
pub fn default_method(
    kind: TopologyKind,
    cloud_disk: bool,
    file_backups_possible: bool,
) -> BackupMethod {
    let seed = if kind == TopologyKind::Standalone || cloud_disk {
        BackupMethod::Snapshot
    } else {
        BackupMethod::Physical
    };
    if file_backups_possible || seed == BackupMethod::Snapshot {
        seed
    } else {
        BackupMethod::Logical
    }
}

/// [`default_method`] of `instance`, whose server answered `topo`.
pub fn default_method_of(instance: &InstanceSpec, topo: &Topology) -> BackupMethod {
    default_method(
        topo.kind,
        is_cloud_disk(&instance.storage_type),
        instance.data_path.is_some() && topo.is_ferretdb,
    )
}

/// Physical and Snapshot backups copy the node's data files: ddsvault must know where they are, and the server
/// must be one whose files it can copy consistently (FerretDB's SQLite backend in this version).
///
/// # Errors
/// [`PlanError::DataPathMissing`], or [`PlanError::MethodNotSupported`] for a server whose files cannot be copied.
pub fn file_backup_possible(
    instance: &InstanceSpec,
    topo: &Topology,
    method: BackupMethod,
) -> Result<(), PlanError> {
    if instance.data_path.is_none() {
        return Err(PlanError::DataPathMissing {
            instance: instance.id.clone(),
            method,
        });
    }
    if !topo.is_ferretdb {
        return Err(PlanError::MethodNotSupported(format!(
            "{method} backups of MongoDB servers (mongod) are not available in this ddsvault version; only FerretDB with the SQLite backend supports them. Use BackupMethod=Logical."
        )));
    }
    Ok(())
}

/// One look at an instance: what it is and which user databases it holds.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// Its topology (replica set, sharded cluster, …).
    pub topo: Topology,
    /// Its user databases.
    pub databases: Vec<String>,
    /// When the databases were listed.
    pub at: DateTime<Utc>,
}

/// The user databases of the instance whose server (reached by `client`) answered `topo`; `listDatabases` gets
/// [`LIST_DATABASES_TIMEOUT`].
///
/// # Errors
/// [`PlanError::Listing`] (its message may hold the connection string) or [`PlanError::ListingTimeout`].
pub async fn inspect(
    client: &mongodb::Client,
    topo: Topology,
    instance: &InstanceSpec,
) -> Result<Inspection, PlanError> {
    let databases = match databases_from_files(instance, &topo).await {
        Some(names) => names,
        None => tokio::time::timeout(LIST_DATABASES_TIMEOUT, list_user_databases(client))
            .await
            .map_err(|_| PlanError::ListingTimeout)?
            .map_err(PlanError::Listing)?,
    };
    Ok(Inspection {
        topo,
        databases,
        at: Utc::now(),
    })
}

/// The user databases of a FerretDB (SQLite) instance with `data_path`, from its files: FerretDB answers
/// `listDatabases` (even `nameOnly`) by measuring every database, ~0.2 s per 100 MB, which every CreateBackup would
/// wait for. `None` (ask the server) when the instance is not such a node or the directory holds no database file
/// (a `data_path` that is not this server's directory must not turn into a NoDatabase refusal).
async fn databases_from_files(instance: &InstanceSpec, topo: &Topology) -> Option<Vec<String>> {
    let dir = instance.data_path.clone()?;
    if !topo.is_ferretdb {
        return None;
    }
    let files =
        tokio::task::spawn_blocking(move || ddsvault_mongo::physical::sqlite::list_databases(&dir))
            .await
            .ok()?
            .ok()?;
    if files.is_empty() {
        return None;
    }
    let mut names: Vec<String> = files
        .into_iter()
        .map(|f| f.database)
        .filter(|d| !SYSTEM_DATABASES.contains(&d.as_str()))
        .collect();
    names.sort();
    Some(names)
}

/// The method of an automatic backup of `instance`: what CreateBackup without `BackupMethod` takes
/// ([`default_method`]). An instance that does not answer within [`PROBE_TIMEOUT`] gets Logical: its job then
/// fails with the reason.
pub async fn automatic_method(instance: &InstanceSpec) -> BackupMethod {
    let probe = async {
        let client = ddsvault_mongo::topology::connect(&instance.uri)
            .await
            .ok()?;
        ddsvault_mongo::topology::discover(&client).await.ok()
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Some(topo)) => default_method_of(instance, &topo),
        _ => BackupMethod::Logical,
    }
}

/// When a backup that ended at `end_time` expires: the job's `retention_days` later, or never for -1.
pub(crate) fn expire_time_of(job: &Job, end_time: DateTime<Utc>) -> DateTime<Utc> {
    // The job read its parameters when it started; they cannot have become unreadable since.
    let retention = job.backup_params().map_or(30, |p| p.retention_days);
    if retention < 0 {
        permanent_expiry()
    } else {
        end_time + chrono::Duration::days(retention)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_rules_follow_the_seed() {
        use BackupMethod::{Logical, Physical, Snapshot};
        use TopologyKind::*;
        assert_eq!(choose_method(None, ReplicaSet, false).ok(), Some(Physical));
        assert_eq!(
            choose_method(Some(Logical), ReplicaSet, false).ok(),
            Some(Logical)
        );
        assert_eq!(
            choose_method(Some(Logical), Sharded, false).ok(),
            Some(Logical)
        );
        assert_eq!(choose_method(None, Standalone, false).ok(), Some(Snapshot));
        assert_eq!(
            choose_method(Some(Snapshot), Standalone, false).ok(),
            Some(Snapshot)
        );
        assert!(choose_method(Some(Logical), Standalone, false).is_err());
        assert!(choose_method(Some(Physical), Standalone, false).is_err());
        assert_eq!(choose_method(None, ReplicaSet, true).ok(), Some(Snapshot));
        assert!(choose_method(Some(Logical), ReplicaSet, true).is_err());
    }

    #[test]
    fn default_method_copies_files_only_where_it_can() {
        use BackupMethod::{Logical, Physical, Snapshot};
        use TopologyKind::*;
        assert_eq!(default_method(ReplicaSet, false, true), Physical);
        assert_eq!(default_method(ReplicaSet, false, false), Logical);
        assert_eq!(default_method(Sharded, false, false), Logical);
        assert_eq!(default_method(Standalone, false, true), Snapshot);
        assert_eq!(default_method(Standalone, false, false), Snapshot);
        assert_eq!(default_method(ReplicaSet, true, true), Snapshot);
        assert_eq!(default_method(ReplicaSet, true, false), Snapshot);
    }
}
