//! An instance as jobs see it: its id, how to reach it, and where its data files are. Below every other module:
//! the runner's context, the provisioner and the log backup all describe instances with it.

/// What the runner needs to know of an instance.
#[derive(Clone)]
pub struct InstanceSpec {
    /// The instance id.
    pub id: String,
    /// Connection string; never logged.
    pub uri: String,
    /// The Dds `StorageType` of the instance.
    pub storage_type: String,
    /// The node's data directory, read by Physical and Snapshot backups.
    pub data_path: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for InstanceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSpec")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
