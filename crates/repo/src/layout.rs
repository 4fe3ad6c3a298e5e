//! The repository layout: the only place that knows where things live.
//!
//! ```text
//! backups/<instance>/<backup_id>/manifest.json   commit marker, written last
//! backups/<instance>/<backup_id>/<files…>        the backup's data files
//! staging/<job_token>/<files…>                   scratch space of a running job
//! chunks/<instance>/<hh>/<sha256>                snapshot chunks, shared by the instance's snapshots
//! quarantine/chunks/<instance>/<hh>/<sha256>.<ms> damaged chunks moved aside by scrub
//! ```
//!
//! `<instance>` and `<job_token>` come from outside; they are escaped with
//! [`RepoPath::join_escaped`] so that no value can leave its prefix (`../x` becomes `..%2Fx`).
//! Ordinary ids (`[A-Za-z0-9._-]`) are used unchanged.

use crate::RepoPath;

/// Top-level directory of committed (and in-progress) backups.
pub const BACKUPS_DIR: &str = "backups";
/// Top-level directory of per-job scratch space.
pub const STAGING_DIR: &str = "staging";
/// Top-level directory of the snapshot chunk stores (one per instance, see [`crate::chunks`]).
pub const CHUNKS_DIR: &str = "chunks";
/// Top-level directory of what `scrub` found damaged and moved aside (see [`crate::chunks`]).
pub const QUARANTINE_DIR: &str = "quarantine";
/// File name of a backup's manifest, relative to its backup prefix.
pub const MANIFEST_FILE: &str = "manifest.json";

/// `backups`
pub fn backups_root() -> RepoPath {
    RepoPath::from_valid(BACKUPS_DIR.to_string())
}

/// `staging`
pub fn staging_root() -> RepoPath {
    RepoPath::from_valid(STAGING_DIR.to_string())
}

/// `backups/<instance>`: every backup of one instance.
pub fn instance_prefix(instance_id: &str) -> RepoPath {
    backups_root().join_escaped(instance_id)
}

/// `backups/<instance>/<backup_id>`: one backup.
pub fn backup_prefix(instance_id: &str, backup_id: i64) -> RepoPath {
    instance_prefix(instance_id).join_escaped(&backup_id.to_string())
}

/// `staging/<job_token>`: scratch space of one job.
pub fn staging_prefix(job_token: &str) -> RepoPath {
    staging_root().join_escaped(job_token)
}

/// `<prefix>/manifest.json`
pub fn manifest_path(prefix: &RepoPath) -> RepoPath {
    RepoPath::from_valid(format!("{prefix}/{MANIFEST_FILE}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(backup_prefix("dds-bp1", 42).as_str(), "backups/dds-bp1/42");
        assert_eq!(backup_prefix("dds-bp1", -1).as_str(), "backups/dds-bp1/-1");
        assert_eq!(staging_prefix("tok_1").as_str(), "staging/tok_1");
        assert_eq!(
            manifest_path(&backup_prefix("i", 1)).as_str(),
            "backups/i/1/manifest.json"
        );
        // Hostile ids stay inside their prefix.
        assert_eq!(backup_prefix("../etc", 1).as_str(), "backups/..%2Fetc/1");
        assert_eq!(backup_prefix("..", 1).as_str(), "backups/%2E%2E/1");
        assert_eq!(staging_prefix("a/b").as_str(), "staging/a%2Fb");
        assert_eq!(staging_prefix("").as_str(), "staging/%");
    }
}
