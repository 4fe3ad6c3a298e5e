//! Physical images of a node: a consistent copy of its data files, taken while the server keeps serving writes.
//! Physical and snapshot backups store such an image (as files, or as deduplicated chunks).
//!
//! How the copy is made consistent depends on what the server is:
//! * FerretDB with the SQLite backend: every `<db>.sqlite` through SQLite's online backup API ([`sqlite`]).
//! * MongoDB (mongod): `$backupCursor` on Enterprise/Percona, or an `fsync` lock on a secondary on Community.
//!   Neither can run against a real mongod here; see the method table of docs/physical-and-snapshot.md.

pub mod mongod;
pub mod sqlite;

use std::path::Path;

use crate::error::{MongoError, Result};
use crate::topology::Topology;

/// The data files to image for a node whose data directory is `data_path`, after checking the method applies.
///
/// # Errors
/// [`MongoError::Unsupported`] when the server is not FerretDB with the SQLite backend (mongod file copies are
/// not available in this version) or the directory holds no database file; [`MongoError::Io`] if it cannot be
/// read.
pub fn plan(topology: &Topology, data_path: &Path) -> Result<Vec<sqlite::DataFile>> {
    if !topology.is_ferretdb {
        return Err(MongoError::Unsupported(format!(
            "file-level backups of MongoDB {} (mongod) are not available in this ddsvault version; use BackupMethod=Logical",
            topology.server_version
        )));
    }
    let files = sqlite::list_databases(data_path)?;
    if files.is_empty() {
        return Err(MongoError::Unsupported(format!(
            "the configured data_path {} holds no <db>.sqlite file: it is not the data directory of this FerretDB \
             (only FerretDB's SQLite backend supports file-level backups)",
            data_path.display()
        )));
    }
    Ok(files)
}
