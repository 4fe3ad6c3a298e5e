//! The metadata catalog: access keys, registered instances, backup policies, jobs and backup sets.
//!
//! Everything that must survive a restart or be visible to another ddsvault process lives here: a job is a row that
//! any process can claim, not a task in memory. Callers see the [`Catalog`] handle and the record types; the storage
//! engine sits behind the crate-private [`CatalogBackend`] trait so that PostgreSQL can join SQLite without touching
//! callers. One conformance suite ([`conformance`]) runs against every engine.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod advanced;
pub mod copies;
mod error;
mod model;
pub mod nodes;
pub mod policy;
mod postgres;
mod sqlite;
pub mod storage;

pub mod conformance;
#[cfg(feature = "pgtest")]
pub mod pgtest;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use advanced::{AdvancedPolicy, DataPolicy, LogPolicy, RetentionLock};
pub use copies::{BackupCopy, CopyStatus, CrossRegionPolicy, CrossRetention};
pub use error::CatalogError;
pub use model::*;
pub use nodes::{NodeRecord, NODE_AGENT};
pub use postgres::{redact_url, PgCatalog};
pub use sqlite::SqliteCatalog;
pub use storage::{BackupStorage, ChunkUsage, StorageUsage};

/// Operations the rest of ddsvault needs from a catalog engine.
///
/// Each method is one atomic unit: a caller never has to compose two calls into a transaction itself.
#[async_trait]
pub trait CatalogBackend: Send + Sync + std::fmt::Debug {
    /// Reads a free-form setting (node id, schema facts).
    async fn get_setting(&self, key: &str) -> Result<Option<String>, CatalogError>;
    /// Writes a setting only if it is not set yet; returns the value that is stored afterwards.
    async fn init_setting(&self, key: &str, value: &str) -> Result<String, CatalogError>;
    /// Replaces a setting only if it still holds `expected` (compare-and-set, for migrating a stored value in
    /// place while other processes may do the same); true if this call replaced it.
    async fn replace_setting(
        &self,
        key: &str,
        expected: &str,
        value: &str,
    ) -> Result<bool, CatalogError>;

    /// Inserts or replaces an AccessKey (no per-user limit: start-up uses it for the generated root key).
    async fn put_access_key(&self, key: &AccessKeyRecord) -> Result<(), CatalogError>;
    /// All AccessKeys, secrets included in their stored form (callers keep them out of logs).
    async fn list_access_keys(&self) -> Result<Vec<AccessKeyRecord>, CatalogError>;

    // Identities. Every change below bumps the identity version in the same transaction.

    /// The identity version: it changes whenever a key, user, group, policy or attachment changes (last-used
    /// times excepted). Cheap: servers read it on every request.
    async fn identity_version(&self) -> Result<i64, CatalogError>;
    /// Every identity and the version they belong to, read consistently.
    async fn load_identities(&self) -> Result<IdentitySnapshot, CatalogError>;
    /// Creates an AccessKey for an existing RAM user (or `root`), atomically with the per-user limit.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`] (no such user), [`CatalogError::LimitExceeded`] (the user has `max_per_user`
    /// keys already), [`CatalogError::AlreadyExists`] (the id is taken).
    async fn create_access_key(
        &self,
        key: &AccessKeyRecord,
        max_per_user: u32,
    ) -> Result<(), CatalogError>;
    /// Enables or disables a key. [`CatalogError::NotFound`] if there is none.
    async fn set_access_key_active(&self, id: &str, active: bool) -> Result<(), CatalogError>;
    /// Deletes a key. [`CatalogError::NotFound`] if there is none.
    async fn delete_access_key(&self, id: &str) -> Result<(), CatalogError>;
    /// Replaces the stored secret of a key if it is still stored as `from_format` (migration of old rows; a
    /// concurrent migration by another process is harmless). Returns whether this call replaced it.
    async fn replace_access_key_secret(
        &self,
        id: &str,
        from_format: &str,
        secret: &str,
        secret_format: &str,
    ) -> Result<bool, CatalogError>;
    /// Records that a key was used at `at` (never moves the time backwards; does not change the version).
    async fn touch_access_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), CatalogError>;

    /// Creates a RAM user. [`CatalogError::AlreadyExists`] if the name is taken.
    async fn create_ram_user(&self, user: &RamUserRecord) -> Result<(), CatalogError>;
    /// Deletes a RAM user. [`CatalogError::Conflict`] while it has AccessKeys, policies or group memberships.
    async fn delete_ram_user(&self, name: &str) -> Result<(), CatalogError>;
    /// Creates a group. [`CatalogError::AlreadyExists`] if the name is taken.
    async fn create_ram_group(&self, group: &RamGroupRecord) -> Result<(), CatalogError>;
    /// Deletes a group. [`CatalogError::Conflict`] while it has members or policies.
    async fn delete_ram_group(&self, name: &str) -> Result<(), CatalogError>;
    /// Creates a custom policy (the document is validated by the caller).
    async fn create_ram_policy(&self, policy: &RamPolicyRecord) -> Result<(), CatalogError>;
    /// Deletes a policy. [`CatalogError::Conflict`] while it is attached.
    async fn delete_ram_policy(&self, name: &str) -> Result<(), CatalogError>;
    /// Attaches a policy to a user or group; both must exist. [`CatalogError::AlreadyExists`] if attached.
    async fn attach_policy(&self, attachment: &PolicyAttachment) -> Result<(), CatalogError>;
    /// Detaches a policy. [`CatalogError::NotFound`] if it was not attached.
    async fn detach_policy(
        &self,
        policy: &str,
        kind: PrincipalKind,
        principal: &str,
    ) -> Result<(), CatalogError>;
    /// Adds a user to a group; both must exist. [`CatalogError::AlreadyExists`] if it is a member.
    async fn add_group_member(&self, member: &GroupMember) -> Result<(), CatalogError>;
    /// Removes a user from a group. [`CatalogError::NotFound`] if it was not a member.
    async fn remove_group_member(&self, group: &str, user: &str) -> Result<(), CatalogError>;
    /// Makes the `config`-sourced identities exactly `cfg`, in one transaction: config entries are upserted
    /// (taking over same-named run-time ones; a key keeps its enabled/disabled state), `config` entries no longer
    /// in `cfg` are removed with what depends on them, and entries created at run time are left alone.
    async fn sync_config_identities(
        &self,
        cfg: &ConfigIdentities,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError>;

    /// Registers an instance id; the first registration time is kept as its creation time.
    async fn register_instance(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<InstanceRecord, CatalogError>;
    /// Reads the stored backup policy of an instance.
    async fn get_policy(&self, instance_id: &str) -> Result<Option<BackupPolicy>, CatalogError>;
    /// Stores the backup policy of an instance.
    async fn put_policy(
        &self,
        instance_id: &str,
        policy: &BackupPolicy,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError>;

    /// Creates a pending backup job and the backup set it will fill, atomically.
    ///
    /// # Errors
    /// [`CatalogError::ActiveJobExists`] when the instance already has a pending or running job of any kind.
    async fn create_backup_job(&self, new: &NewBackupJob) -> Result<(Job, Backup), CatalogError>;
    /// Creates a backup job already Running under `owner` (heartbeat `now`, leased until `lease_until`, first
    /// fencing token) and its backup set, atomically: work done by this process itself (`ddsvault import`), which no
    /// runner may claim. `new.now` is the backup's start.
    ///
    /// # Errors
    /// [`CatalogError::ActiveJobExists`] when the instance already has a pending or running job of any kind.
    async fn create_claimed_backup_job(
        &self,
        new: &NewBackupJob,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<(Job, Backup), CatalogError>;
    /// Creates a pending job of another kind than backup (e.g. a restore).
    ///
    /// # Errors
    /// [`CatalogError::ActiveJobExists`] when the instance already has a pending or running job of any kind.
    async fn create_job(&self, new: &NewJob) -> Result<Job, CatalogError>;
    /// Marks a running non-backup job Success with its result, if `owner` still holds it with fencing token
    /// `token`.
    ///
    /// # Errors
    /// [`CatalogError::LeaseLost`] when the job is not Running under `owner` and `token` any more.
    async fn complete_job(
        &self,
        job_id: i64,
        owner: &str,
        token: i64,
        result: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError>;
    /// Claims the oldest pending job for `owner`, moving it to Running with a lease until `lease_until` and a new
    /// fencing token ([`Job::lease_token`], which the job's every later write must name), whatever its instance.
    async fn claim_next_job(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<Job>, CatalogError> {
        self.claim_next_job_placed(owner, now, lease_until, &[])
            .await
    }
    /// As [`CatalogBackend::claim_next_job`], passing over the jobs of `skip_instances` (instances pinned to another
    /// node, or that this node does not know): they stay Pending for another node.
    async fn claim_next_job_placed(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        skip_instances: &[String],
    ) -> Result<Option<Job>, CatalogError>;
    /// Puts a job `owner` claimed but must not run (its instance turned out to be unknown here) back to Pending,
    /// for another node, dropping its lease. True if it was still Running under `owner`.
    async fn release_job(&self, job_id: i64, owner: &str) -> Result<bool, CatalogError>;
    /// Extends the lease of a running job to `lease_until`, only while `owner` still holds it with `token`.
    ///
    /// # Errors
    /// [`CatalogError::LeaseLost`] when the job was taken over (another token), failed or finished: its holder
    /// must stop at once and commit nothing.
    async fn renew_lease(
        &self,
        job_id: i64,
        owner: &str,
        token: i64,
        lease_until: DateTime<Utc>,
    ) -> Result<(), CatalogError>;
    /// Records progress of a running job and refreshes its heartbeat, if `owner` still holds it with `token`.
    ///
    /// # Errors
    /// [`CatalogError::LeaseLost`] as [`CatalogBackend::renew_lease`].
    async fn heartbeat(
        &self,
        job_id: i64,
        owner: &str,
        token: i64,
        progress: i32,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        self.heartbeat_with_detail(
            job_id,
            owner,
            token,
            progress,
            &serde_json::Value::Null,
            now,
        )
        .await
    }
    /// As [`CatalogBackend::heartbeat`], also recording the job's progress detail (phase and counters; `Null`
    /// keeps the previous one).
    async fn heartbeat_with_detail(
        &self,
        job_id: i64,
        owner: &str,
        token: i64,
        progress: i32,
        detail: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError>;
    /// Marks a running backup job and its backup set Success, if `owner` still holds it with `token`. Called only
    /// after every byte is durably stored.
    ///
    /// # Errors
    /// [`CatalogError::LeaseLost`] as [`CatalogBackend::renew_lease`]: nothing is written.
    async fn complete_backup(
        &self,
        job_id: i64,
        owner: &str,
        token: i64,
        done: &BackupCompletion,
    ) -> Result<(), CatalogError>;
    /// As [`CatalogBackend::complete_backup`], recording in the same transaction what the backup occupies in the
    /// repository ([`BackupStorage`]): its stored bytes, and the snapshot chunks it names that the instance's
    /// earlier snapshots did not (each chunk counts once per instance).
    async fn complete_backup_with_storage(
        &self,
        job_id: i64,
        owner: &str,
        token: i64,
        done: &BackupCompletion,
        usage: &BackupStorage,
    ) -> Result<(), CatalogError>;
    /// Records the usage of a Success backup that has none (one committed before migration 0015, or by a path
    /// that does not measure). Returns false if the backup is not Success or was already recorded (its first
    /// record stays; its chunks are still counted).
    async fn record_backup_storage(
        &self,
        backup_id: i64,
        usage: &BackupStorage,
    ) -> Result<bool, CatalogError>;
    /// Success backups with no recorded usage, oldest first, at most `limit`.
    async fn backups_without_storage(&self, limit: u32) -> Result<Vec<Backup>, CatalogError>;
    /// Counts chunks a committed snapshot names, each once per instance (a chunk already counted takes the size
    /// given now).
    async fn add_instance_chunks(
        &self,
        instance_id: &str,
        chunks: &[ChunkUsage],
    ) -> Result<(), CatalogError>;
    /// Stops counting chunks the collector deleted.
    async fn forget_instance_chunks(
        &self,
        instance_id: &str,
        digests: &[String],
    ) -> Result<(), CatalogError>;
    /// The instance's recorded usage: DescribeBackupStorage's `FullStorageSize` without a repository listing.
    async fn storage_usage(&self, instance_id: &str) -> Result<StorageUsage, CatalogError>;
    /// Marks a job (and its backup set, if any) Failed with a reason whose source is unknown
    /// ([`JOB_ERROR_CODE`]). Not fenced: for a job no process holds (Pending) and for tests; a process ends the
    /// jobs it runs with [`CatalogBackend::fail_leased_job`].
    async fn fail_job(
        &self,
        job_id: i64,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        self.fail_job_with_code(job_id, JOB_ERROR_CODE, reason, now)
            .await
    }
    /// Marks a job (and its backup set, if any) Failed with the code of the failure's source (e.g.
    /// `Repository.NoSpace`) and a message; both are shown by the task APIs. Not fenced, as
    /// [`CatalogBackend::fail_job`].
    async fn fail_job_with_code(
        &self,
        job_id: i64,
        code: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError>;
    /// As [`CatalogBackend::fail_job_with_code`] for a running job `owner` holds with `token`.
    ///
    /// # Errors
    /// [`CatalogError::LeaseLost`] as [`CatalogBackend::renew_lease`]: nothing is written.
    async fn fail_leased_job(
        &self,
        job_id: i64,
        owner: &str,
        token: i64,
        code: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError>;
    /// Takes over, for `recoverer`, every Running job whose lease expired before `now` (its holder died, was
    /// paused or cut off) and, when `own_previous_life`, every Running job `recoverer` itself holds (a previous run
    /// of this node id: at start nothing of it runs any more). Each takeover is a compare-and-set on the fencing
    /// token: the job gets a new token and a lease until `lease_until`, so its previous holder can commit nothing,
    /// and two recovering processes never both take it. A job whose lease is live is never touched. The caller
    /// removes what the jobs left and fails them ([`CatalogBackend::fail_leased_job`]); if it dies meanwhile, its
    /// own lease expires and another process recovers them again.
    async fn recover_expired(
        &self,
        recoverer: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        own_previous_life: bool,
    ) -> Result<Vec<RecoveredJob>, CatalogError>;
    /// One job by id.
    async fn get_job(&self, job_id: i64) -> Result<Option<Job>, CatalogError>;
    /// Jobs of an instance, newest first; `active_only` keeps Pending and Running ones.
    async fn list_jobs(
        &self,
        instance_id: &str,
        active_only: bool,
    ) -> Result<Vec<Job>, CatalogError>;

    /// The newest Pending or Running job of an instance, as (id, kind). Cheap: CreateBackup reads it first.
    async fn active_job(&self, instance_id: &str) -> Result<Option<(i64, JobKind)>, CatalogError>;

    /// One backup set by id.
    async fn get_backup(&self, backup_id: i64) -> Result<Option<Backup>, CatalogError>;
    /// A page of backup sets matching `filter`, newest first, with the total count.
    async fn list_backups(
        &self,
        filter: &BackupFilter,
        page: Page,
    ) -> Result<(u64, Vec<Backup>), CatalogError>;

    /// Sets the expiry of a successful backup.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`] when there is no such backup in `Success`.
    async fn set_backup_expire_time(
        &self,
        backup_id: i64,
        expire_time: DateTime<Utc>,
    ) -> Result<(), CatalogError>;
    /// Marks a `Success`, `Failed` (or already `Deleting`) backup `Deleting`, atomically with the check that no
    /// pending or running restore or drill job reads it. From then on it is not listed, downloaded or restored.
    async fn mark_backup_deleting(&self, backup_id: i64) -> Result<DeleteMark, CatalogError>;
    /// As [`CatalogBackend::mark_backup_deleting`] for a deletion someone asked for (`DeleteBackup`): in the same
    /// transaction, refuses ([`DeleteMark::Locked`]) while the instance's retention lock holds at `now`, so a lock
    /// enabled between a caller's own check and the deletion still wins.
    async fn mark_backup_deleting_unless_locked(
        &self,
        backup_id: i64,
        now: DateTime<Utc>,
    ) -> Result<DeleteMark, CatalogError>;
    /// Successful backups whose expiry is at or before `now`, oldest expiry first, at most `limit`.
    async fn list_expired_backups(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Backup>, CatalogError>;
    /// Backups left in `Deleting` (a deletion interrupted by a crash, or in progress elsewhere).
    async fn list_deleting_backups(&self) -> Result<Vec<Backup>, CatalogError>;
    /// Deletes the row of a `Deleting` backup (its files are already gone). Returns false if there was none.
    async fn delete_backup_row(&self, backup_id: i64) -> Result<bool, CatalogError>;

    /// Takes the automatic-backup slot `(new.instance_id, slot_start)` and creates its job, in one transaction:
    /// a slot is run at most once whatever the number of processes or restarts. An instance with an active job
    /// gets the slot recorded as skipped instead.
    async fn create_scheduled_backup_job(
        &self,
        new: &NewBackupJob,
        slot_start: DateTime<Utc>,
        owner: &str,
    ) -> Result<ScheduledJob, CatalogError> {
        self.create_scheduled_job(new, SCHEDULE_STANDARD, slot_start, owner)
            .await
    }
    /// [`CatalogBackend::create_scheduled_backup_job`] for the slot `(new.instance_id, schedule, slot_start)`:
    /// `schedule` is [`SCHEDULE_STANDARD`] or [`SCHEDULE_HIGH_FREQUENCY`], whose slots are independent.
    async fn create_scheduled_job(
        &self,
        new: &NewBackupJob,
        schedule: &str,
        slot_start: DateTime<Utc>,
        owner: &str,
    ) -> Result<ScheduledJob, CatalogError>;
    /// The recorded slots of an instance (both schedules), newest first, at most `limit`.
    async fn list_schedule_runs(
        &self,
        instance_id: &str,
        limit: u32,
    ) -> Result<Vec<ScheduleRun>, CatalogError>;
    /// The backups of an instance that a schedule slot created, with their slot (retention needs the slot's day
    /// and schedule). Backups of other instances or of no slot (manual ones) are not listed.
    async fn list_backup_slots(&self, instance_id: &str) -> Result<Vec<BackupSlot>, CatalogError>;

    /// Reads the advanced (tiered) backup policies of an instance.
    async fn get_advanced_policy(
        &self,
        instance_id: &str,
    ) -> Result<Option<AdvancedPolicy>, CatalogError>;
    /// Stores the advanced policies together with the standard policy (they share `PreferredBackupTime`,
    /// `SnapshotBackupType` and `BackupRetentionPolicyOnClusterDeletion`), atomically.
    async fn put_advanced_policy(
        &self,
        instance_id: &str,
        standard: &BackupPolicy,
        advanced: &AdvancedPolicy,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError>;

    /// The retention lock of an instance as last written (it may have unlocked since: see
    /// [`RetentionLock::is_active`]).
    async fn get_retention_lock(
        &self,
        instance_id: &str,
    ) -> Result<Option<RetentionLock>, CatalogError>;
    /// Applies an enable or disable request at `now` ([`RetentionLock::transition`]) atomically and returns the
    /// lock afterwards (`None`: no lock).
    async fn set_retention_lock(
        &self,
        instance_id: &str,
        enable: bool,
        now: DateTime<Utc>,
        cooling_off: chrono::Duration,
    ) -> Result<Option<RetentionLock>, CatalogError>;

    /// Writes the cross-region settings of an instance for one destination region.
    async fn put_cross_policy(&self, policy: &CrossRegionPolicy) -> Result<(), CatalogError>;
    /// The cross-region settings of an instance, by destination region.
    async fn list_cross_policies(
        &self,
        instance_id: &str,
    ) -> Result<Vec<CrossRegionPolicy>, CatalogError>;
    /// Records a copy job unless the backup already has one for that region; `true` if it was new.
    async fn enqueue_copy(&self, copy: &BackupCopy) -> Result<bool, CatalogError>;
    /// Pending copies whose next attempt is due at `now`, oldest first.
    async fn due_copies(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<BackupCopy>, CatalogError>;
    /// Writes the outcome of an attempt (status, attempts, next attempt, error, size, copied_at).
    async fn update_copy(&self, copy: &BackupCopy) -> Result<(), CatalogError>;
    /// The copies of an instance in a region (every status), newest backup first.
    async fn list_copies(
        &self,
        instance_id: &str,
        dest_region: &str,
    ) -> Result<Vec<BackupCopy>, CatalogError>;
    /// Successful copies (any instance, any region) expired at `now`.
    async fn expired_copies(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<BackupCopy>, CatalogError>;
    /// Forgets a copy (after its files were deleted).
    async fn delete_copy(&self, backup_id: i64, dest_region: &str) -> Result<(), CatalogError>;

    /// Appends audit records (their `id` is ignored and assigned by the catalog), all or none.
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), CatalogError>;
    /// Audit records matching `filter`, newest first (by time, then id).
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, CatalogError>;
    /// Deletes the audit records older than `before`; returns how many.
    async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, CatalogError>;

    // Continuous log backup (see crates/jobs/src/pitr.rs).

    /// Takes or renews the claim of following `instance_id`'s oplog for `owner` until `lease_until`: succeeds when
    /// nobody holds it, `owner` already does, or the holder's lease ran out before `now`. True if `owner` holds it.
    async fn claim_log_follower(
        &self,
        instance_id: &str,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, CatalogError>;
    /// Gives the claim up (only if `owner` holds it).
    async fn release_log_follower(
        &self,
        instance_id: &str,
        owner: &str,
    ) -> Result<(), CatalogError>;
    /// Records a stored slice, only while `owner` holds the instance's claim (a fencing check in the same
    /// transaction) and only if it continues the last slice (`start_excl` = its `end_incl`) or is marked as a gap
    /// after it.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the claim is lost or the slice does not follow the last one.
    async fn add_log_slice(
        &self,
        slice: &NewLogSlice,
        owner: &str,
    ) -> Result<LogSlice, CatalogError>;
    /// The instance's slices, oldest first.
    async fn list_log_slices(&self, instance_id: &str) -> Result<Vec<LogSlice>, CatalogError>;
    /// Removes a slice's row (its object is deleted first by the caller).
    async fn delete_log_slice(&self, id: i64) -> Result<(), CatalogError>;

    // Provisioned instances (CreateDBInstance, docs/provisioning.md).

    /// Records a new provisioned instance (status `Creating`, registered as an instance) and creates `job` for it,
    /// in one transaction; the row's `job_id` is the new job's.
    ///
    /// # Errors
    /// [`CatalogError::AlreadyExists`] when the id or the port is taken (nothing is written).
    async fn create_provisioned_instance(
        &self,
        new: &NewProvisionedInstance,
        job: &NewJob,
    ) -> Result<(ProvisionedInstance, Job), CatalogError>;
    /// One provisioned instance.
    async fn get_provisioned_instance(
        &self,
        id: &str,
    ) -> Result<Option<ProvisionedInstance>, CatalogError>;
    /// Every provisioned instance, oldest first.
    async fn list_provisioned_instances(&self) -> Result<Vec<ProvisionedInstance>, CatalogError>;
    /// Sets the status (and the failure message, cleared when `None`).
    ///
    /// # Errors
    /// [`CatalogError::NotFound`] when there is no such instance.
    async fn set_provisioned_status(
        &self,
        id: &str,
        status: ProvisionStatus,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError>;
    /// Removes the row; true if there was one. Its backups and jobs stay.
    async fn delete_provisioned_instance(&self, id: &str) -> Result<bool, CatalogError>;

    // Instances registered at run time (RegisterDBInstance, docs/instances.md; migration 0018).

    /// Records a registered instance, registers its id as an instance and, if given, stores its backup policy, in
    /// one transaction (nothing is half-registered).
    ///
    /// # Errors
    /// [`CatalogError::AlreadyExists`] when the id is registered already or names a provisioned instance (nothing
    /// is written).
    async fn create_registered_instance(
        &self,
        inst: &RegisteredInstance,
        policy: Option<&BackupPolicy>,
    ) -> Result<(), CatalogError>;
    /// Replaces the connection string, storage type, data path, node and description of a registered instance
    /// (`created_at` is kept).
    ///
    /// # Errors
    /// [`CatalogError::NotFound`] when there is no such registered instance.
    async fn update_registered_instance(
        &self,
        inst: &RegisteredInstance,
    ) -> Result<(), CatalogError>;
    /// One registered instance.
    async fn get_registered_instance(
        &self,
        id: &str,
    ) -> Result<Option<RegisteredInstance>, CatalogError>;
    /// Every registered instance, by id.
    async fn list_registered_instances(&self) -> Result<Vec<RegisteredInstance>, CatalogError>;
    /// Removes a registered instance's row, refused in the same transaction while it has a pending or running job.
    /// Its id, backups, policy and jobs stay in the catalog. True if there was a row.
    ///
    /// # Errors
    /// [`CatalogError::ActiveJobExists`] (nothing is removed).
    async fn delete_registered_instance(&self, id: &str) -> Result<bool, CatalogError>;
    // Several processes on one catalog (issue 19, migration 0019).

    /// Records that `access_key_id` used the signature nonce `nonce` (a bounded form the caller chose: the server
    /// passes a digest), until `expires_at`. False when the pair is already recorded and has not expired: a replay,
    /// whichever process saw it first. A recorded pair whose expiry has passed counts as absent.
    async fn record_nonce(
        &self,
        access_key_id: &str,
        nonce: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, CatalogError>;
    /// Deletes the nonces expired at `now`; returns how many.
    async fn sweep_nonces(&self, now: DateTime<Utc>) -> Result<u64, CatalogError>;
    /// Inserts or replaces a node's row (its heartbeat).
    async fn put_node(&self, node: &NodeRecord) -> Result<(), CatalogError>;
    /// Every node that ever reported itself, by id.
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, CatalogError>;

    /// Job and backup counts for `/metrics` ([`CatalogStats`]).
    async fn stats(&self) -> Result<CatalogStats, CatalogError>;

    // Restore drills (docs/drills.md; migration 0020).

    /// The drill settings of an instance.
    async fn get_drill_policy(
        &self,
        instance_id: &str,
    ) -> Result<Option<DrillPolicy>, CatalogError>;
    /// Stores (replaces) the drill settings of an instance.
    async fn put_drill_policy(&self, policy: &DrillPolicy) -> Result<(), CatalogError>;
    /// Every instance's drill settings, by instance id.
    async fn list_drill_policies(&self) -> Result<Vec<DrillPolicy>, CatalogError>;
    /// Takes the drill slot `(source, `[`SCHEDULE_DRILL`]`, slot_start)` and creates `job` (whose instance is the
    /// scratch target), in one transaction, like [`CatalogBackend::create_scheduled_job`]: a slot runs at most
    /// once whatever the number of processes; a target with an active job gets the slot recorded as skipped.
    async fn create_scheduled_drill_job(
        &self,
        source: &str,
        slot_start: DateTime<Utc>,
        owner: &str,
        job: &NewJob,
    ) -> Result<ScheduledDrill, CatalogError>;
    /// Records a finished drill.
    async fn record_restore_drill(
        &self,
        drill: &NewRestoreDrill,
    ) -> Result<RestoreDrill, CatalogError>;
    /// Recorded drills matching `filter`, newest first.
    async fn list_restore_drills(
        &self,
        filter: &DrillFilter,
    ) -> Result<Vec<RestoreDrill>, CatalogError>;
    /// The newest drill of each instance (metrics, status), by instance id.
    async fn latest_restore_drills(&self) -> Result<Vec<RestoreDrill>, CatalogError>;

    // Console sessions shared by every process of the catalog (docs/console.md; migration 0021).

    /// Ends the console session `nonce` for every process; the row is kept until `expires_at` (when the session
    /// would have ended anyway), and rows already past it are pruned (`now`).
    async fn revoke_console_session(
        &self,
        nonce: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError>;
    /// Whether the console session `nonce` was ended by a logout.
    async fn console_session_revoked(&self, nonce: &str) -> Result<bool, CatalogError>;
    /// Counts one failed console login from `address` at `now`, in one statement: the count restarts at 1 (window
    /// starting `now`) when the address's window started at or before `window_start_after`. Returns the count and
    /// its window. Windows over for other addresses are pruned.
    async fn record_console_login_failure(
        &self,
        address: &str,
        now: DateTime<Utc>,
        window_start_after: DateTime<Utc>,
    ) -> Result<LoginFailures, CatalogError>;
    /// The failed logins of `address` in a window that started after `window_start_after` (`None`: none).
    async fn console_login_failures(
        &self,
        address: &str,
        window_start_after: DateTime<Utc>,
    ) -> Result<Option<LoginFailures>, CatalogError>;
    /// Forgets the failed logins of `address` (a successful login).
    async fn clear_console_login_failures(&self, address: &str) -> Result<(), CatalogError>;
}

/// Shared handle to the catalog engine chosen by configuration.
pub type Catalog = Arc<dyn CatalogBackend>;

/// Opens the catalog named by `url` only if it exists: the offline verbs (`ram`, `audit`, `gc`, `verify`, …) read
/// or change an existing deployment and must never create an empty catalog where a mistyped path points.
///
/// # Errors
/// [`CatalogError::Config`] naming the path when an SQLite catalog file does not exist; else as [`open`].
pub async fn open_existing(url: &str) -> Result<Catalog, CatalogError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if !std::path::Path::new(path).is_file() {
            return Err(CatalogError::Config(format!(
                "no catalog at {path}: check data_dir / catalog_url (relative paths in a configuration file are \
                 relative to that file), or start `ddsvault serve` with this configuration first"
            )));
        }
    }
    open(url).await
}

/// Opens the catalog named by `url`, creating it (or its schema) if needed: `sqlite://<path>`, `sqlite::memory:`,
/// or `postgres://` / `postgresql://` (the database must exist; its tables are created by the migrations).
///
/// # Errors
/// [`CatalogError::Config`] for an unsupported or unreachable URL (shown without its password), or the engine's
/// error when it cannot open or migrate.
pub async fn open(url: &str) -> Result<Catalog, CatalogError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PgCatalog::connect(url).await?));
    }
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Arc::new(
            SqliteCatalog::open_file(std::path::Path::new(path)).await?,
        ));
    }
    if url == "sqlite::memory:" {
        return Ok(Arc::new(SqliteCatalog::open_memory().await?));
    }
    Err(CatalogError::Config(format!(
        "unsupported catalog url {:?}: expected sqlite://<path>, sqlite::memory: or postgres://user:password@host:port/database",
        redact_url(url)
    )))
}
