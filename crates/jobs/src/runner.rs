//! The job runner's loop, at the top of the crate: claims pending jobs from the catalog (where this node may run
//! them), holds their lease, dispatches each to its kind (backup, restore, provision, drill) and records how it
//! ended; and recovery of the jobs whose holder died. The handles the kinds work with are in `context.rs`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ddsvault_catalog::{CatalogError, Job, JobKind};
use ddsvault_repo::Repository;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::{scratch_dir, staging_token};
use crate::{JobError, Runner, Tasks};

/// How often an idle runner looks for jobs created by another process (its own are signalled at once).
const POLL_INTERVAL: Duration = Duration::from_secs(2);

impl Runner {
    /// Whether this node may run a job of `instance_id`: it knows the instance and no other node has it pinned.
    fn may_run(&self, instance_id: &str) -> bool {
        let pinned_elsewhere = self
            .placement
            .pins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(instance_id)
            .is_some_and(|n| *n != self.node_id);
        !pinned_elsewhere && self.instance(instance_id).is_ok()
    }

    /// The instances whose jobs a claim must pass over: pinned to another node, or found unknown here (an
    /// instance added since is taken off the list).
    fn skip_instances(&self) -> Vec<String> {
        let mut skip: Vec<String> = self
            .placement
            .pins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, node)| **node != self.node_id)
            .map(|(id, _)| id.clone())
            .collect();
        let mut unknown = self
            .placement
            .unknown
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        unknown.retain(|id| self.instance(id).is_err());
        skip.extend(unknown.iter().cloned());
        skip
    }

    /// Claims the oldest job this node may run. A job of an instance this node does not know can only come back
    /// when it appeared after the skip list was made: it is handed back to Pending at once and passed over from
    /// then on.
    async fn claim_placed(&self) -> Result<Option<Job>, ddsvault_catalog::CatalogError> {
        loop {
            let skip = self.skip_instances();
            let now = Utc::now();
            let Some(job) = self
                .catalog
                .claim_next_job_placed(&self.node_id, now, self.lease_until(now), &skip)
                .await?
            else {
                return Ok(None);
            };
            if self.may_run(&job.instance_id) {
                return Ok(Some(job));
            }
            tracing::info!(job_id = job.id, instance = %job.instance_id, "passing over a job of an instance this node does not know");
            self.placement
                .unknown
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(job.instance_id.clone());
            self.catalog.release_job(job.id, &self.node_id).await?;
        }
    }

    /// Takes over and fails the jobs a previous life of this node left running, and those of any node whose lease
    /// expired, and removes their partial files. Called once at start, before serving. Jobs other live processes
    /// hold (their lease is live) are never touched. Returns the jobs it failed: the chunks a crashed snapshot
    /// wrote are not under its prefixes, and go with [`crate::Gc::sweep_after_crash`].
    ///
    /// # Errors
    /// Catalog errors. Failing to delete leftover files is logged, not fatal: the files are unreachable (no
    /// catalog row points at them as Success).
    pub async fn recover(&self) -> Result<Vec<Job>, JobError> {
        self.recover_leases(true).await
    }

    /// [`Runner::recover`] for the jobs of other nodes whose lease expired, run continuously by every process
    /// (every [`Runner::recovery_interval`]): a dead process's jobs are failed and cleaned up within the lease and
    /// that interval, without waiting for a process to start.
    ///
    /// # Errors
    /// Catalog errors (the next round retries).
    pub async fn recover_expired(&self) -> Result<Vec<Job>, JobError> {
        self.recover_leases(false).await
    }

    async fn recover_leases(&self, own_previous_life: bool) -> Result<Vec<Job>, JobError> {
        let now = Utc::now();
        let taken = self
            .catalog
            .recover_expired(&self.node_id, now, self.lease_until(now), own_previous_life)
            .await?;
        let mut failed = Vec::with_capacity(taken.len());
        for r in taken {
            let job = r.job;
            let previous = r.previous_owner.unwrap_or_default();
            let reason = if previous == self.node_id {
                "interrupted: the ddsvault process running this job stopped before it finished"
                    .to_string()
            } else {
                format!(
                    "interrupted: node {previous} stopped renewing the job's lease (it stopped, was paused or lost \
                     the catalog) before the job finished"
                )
            };
            tracing::warn!(job_id = job.id, instance = %job.instance_id, previous_owner = %previous,
                "took over a job whose lease expired: removing its files and failing it");
            // The clean-up holds the lease it took: were this process to die meanwhile, another one takes the job
            // over again and repeats the (idempotent) clean-up.
            let cancel = CancellationToken::new();
            let ((), lost) = self
                .holding_lease(&job, &cancel, self.remove_job_files(&job))
                .await;
            if lost {
                continue;
            }
            match self
                .catalog
                .fail_leased_job(
                    job.id,
                    &self.node_id,
                    job.lease_token,
                    ddsvault_catalog::JOB_INTERRUPTED_CODE,
                    &reason,
                    Utc::now(),
                )
                .await
            {
                Ok(()) => failed.push(job),
                Err(CatalogError::LeaseLost(_)) => {
                    tracing::warn!(
                        job_id = job.id,
                        "lost the lease of a recovered job to another process"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(failed)
    }

    /// Runs `work` on `job` while renewing its lease every third of the lease. If the lease is lost (another
    /// process took the job over after it expired: this one was paused, or cut off from the catalog for longer than
    /// the lease), `cancel` is cancelled, the work is awaited to its end, and the second value is true: the caller
    /// must then write nothing of the job to the catalog (every write would be refused by its fencing token
    /// anyway). A renewal the catalog does not answer is retried; once a whole lease passed without one, the lease
    /// is presumed lost too.
    pub(crate) async fn holding_lease<T>(
        &self,
        job: &Job,
        cancel: &CancellationToken,
        work: impl std::future::Future<Output = T>,
    ) -> (T, bool) {
        tokio::pin!(work);
        tokio::select! {
            out = &mut work => (out, false),
            () = self.keep_lease(job) => {
                cancel.cancel();
                (work.await, true)
            }
        }
    }

    /// Renews `job`'s lease until it is lost; never returns otherwise.
    async fn keep_lease(&self, job: &Job) {
        let every = self.lease / 3;
        let mut renewed = std::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let until = self.lease_until(Utc::now());
            match self
                .catalog
                .renew_lease(job.id, &self.node_id, job.lease_token, until)
                .await
            {
                Ok(()) => renewed = std::time::Instant::now(),
                Err(CatalogError::LeaseLost(_)) => {
                    tracing::warn!(job_id = job.id, "lease lost: another process took the job over; stopping it without committing anything");
                    return;
                }
                Err(e) => {
                    if renewed.elapsed() >= self.lease {
                        tracing::warn!(job_id = job.id, error = %e, "could not renew the lease for a whole lease period; stopping the job without committing anything");
                        return;
                    }
                    tracing::warn!(job_id = job.id, error = %e, "could not renew the job's lease; retrying");
                }
            }
        }
    }

    /// Deletes everything a backup job may have written: its staging area and its (never completed) backup
    /// prefix. Other kinds write nothing to the repository; a restore's `backup_id` names the backup it READS,
    /// which must never be touched (a file restore's own directories in the target's data_path are removed).
    pub(crate) async fn remove_job_files(&self, job: &Job) {
        if job.kind == ddsvault_catalog::JobKind::Restore {
            self.remove_restore_files(job).await;
            return;
        }
        if job.kind == ddsvault_catalog::JobKind::Provision {
            crate::provision::job::cleanup(self, job, "creating the instance was interrupted")
                .await;
            return;
        }
        if job.kind != ddsvault_catalog::JobKind::Backup {
            return;
        }
        let scratch = scratch_dir(&self.settings.scratch_dir, job.id);
        if let Err(e) = std::fs::remove_dir_all(&scratch) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(job_id = job.id, dir = %scratch.display(), error = %e, "could not remove scratch files");
            }
        }
        // Snapshot chunks are not under these prefixes: they may be shared with other snapshots.
        let mut prefixes = vec![Repository::staging_prefix(&staging_token(job.id))];
        if let Some(backup_id) = job.backup_id {
            prefixes.push(Repository::backup_prefix(&job.instance_id, backup_id));
        }
        for p in prefixes {
            if let Err(e) = self.repo.delete_prefix(&p).await {
                tracing::warn!(job_id = job.id, prefix = %p, error = %e, "could not remove partial files");
            }
        }
    }

    /// A file restore that did not succeed: its restore directory inside the target's data_path, and an
    /// interrupted swap undone (see `file_restore`). Logical restores leave nothing behind.
    async fn remove_restore_files(&self, job: &Job) {
        let Some(data_path) = self
            .instance(&job.instance_id)
            .ok()
            .and_then(|i| i.data_path)
        else {
            return;
        };
        let job_id = job.id;
        let done =
            tokio::task::spawn_blocking(move || crate::restore::files::cleanup(&data_path, job_id))
                .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(job_id, error = %e, "could not clean up the restore directory")
            }
            Err(e) => tracing::warn!(job_id, error = %e, "restore cleanup task failed"),
        }
    }

    /// Claims and runs jobs until `cancel` fires. Each job runs as its own named task.
    pub async fn run(
        self: Arc<Self>,
        tasks: Tasks,
        cancel: CancellationToken,
    ) -> Result<(), String> {
        loop {
            if self.is_draining() {
                // Running jobs go on in their own tasks; nothing new is claimed until the process stops.
                cancel.cancelled().await;
                return Ok(());
            }
            let permit = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                p = Arc::clone(&self.slots).acquire_owned() => p.map_err(|e| e.to_string())?,
            };
            let claimed = if self.is_draining() {
                Ok(None)
            } else {
                self.claim_placed().await
            };
            match claimed {
                Ok(Some(job)) => {
                    let me = Arc::clone(&self);
                    me.placement
                        .running
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tasks.spawn(format!("job-{}", job.id), move |token| async move {
                        me.execute(job, token).await;
                        me.placement
                            .running
                            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        drop(permit);
                        Ok(())
                    });
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(POLL_INTERVAL) => {}
                    }
                }
                Err(e) => {
                    drop(permit);
                    tracing::error!(error = %e, "could not claim a job; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(POLL_INTERVAL) => {}
                    }
                }
            }
        }
    }

    async fn execute(&self, job: Job, cancel: CancellationToken) {
        let span = tracing::info_span!("job", job_id = job.id, instance = %job.instance_id, kind = %job.kind);
        async {
            tracing::info!("job started");
            // The work's own token: cancelled by shutdown (its parent) or by the loss of the lease.
            let work_cancel = cancel.child_token();
            let work = async {
                match job.kind {
                    JobKind::Backup => crate::backup::run(self, &job, &work_cancel).await,
                    JobKind::Restore => crate::restore::run(self, &job, &work_cancel).await,
                    JobKind::Provision => {
                        crate::provision::job::run(self, &job, &work_cancel).await
                    }
                    JobKind::Drill => crate::drill::run(self, &job, &work_cancel).await,
                }
            };
            let (result, lost) = self.holding_lease(&job, &work_cancel, work).await;
            // A result the catalog accepted passed the fencing check: it stands even if a renewal failed since.
            if result.as_ref().is_err_and(|e| lost || e.is_lease_lost()) {
                self.lease_lost(&job).await;
                return;
            }
            // Still renewed while a failed job's files are removed: a long clean-up must not let the lease run out.
            let settle_cancel = CancellationToken::new();
            self.holding_lease(&job, &settle_cancel, self.settle(&job, result, &cancel))
                .await;
        }
        .instrument(span)
        .await;
    }

    /// The end of a job whose lease another process took over: nothing is written to the catalog (the new holder
    /// fails the job and removes its repository files). Only this host's scratch space of a file-level backup goes,
    /// which no other process can reach.
    async fn lease_lost(&self, job: &Job) {
        tracing::warn!(
            "job stopped: its lease was lost to another process, which records its outcome"
        );
        if job.kind == ddsvault_catalog::JobKind::Backup {
            let scratch = scratch_dir(&self.settings.scratch_dir, job.id);
            if let Err(e) = std::fs::remove_dir_all(&scratch) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %scratch.display(), error = %e, "could not remove scratch files");
                }
            }
        }
    }

    async fn settle(&self, job: &Job, result: Result<(), JobError>, cancel: &CancellationToken) {
        match result {
            Ok(()) => {
                tracing::info!("job succeeded");
                self.report(job, None).await;
            }
            Err(e) => {
                // A job cancelled by shutdown stays Running in the catalog: once its lease expires, recovery (of
                // another process, or of the next start) fails it and cleans up, the same path as a crash, so
                // there is only one way out.
                if cancel.is_cancelled() {
                    tracing::warn!(error = %e, "job interrupted by shutdown");
                    return;
                }
                tracing::warn!(error = %e, "job failed");
                if job.kind == ddsvault_catalog::JobKind::Provision {
                    // The instance shows why it failed (its process and data are removed).
                    crate::provision::job::cleanup(self, job, &e.to_string()).await;
                } else {
                    self.remove_job_files(job).await;
                }
                match self
                    .catalog
                    .fail_leased_job(
                        job.id,
                        &self.node_id,
                        job.lease_token,
                        e.code(),
                        &e.to_string(),
                        Utc::now(),
                    )
                    .await
                {
                    Ok(()) => {}
                    Err(CatalogError::LeaseLost(_)) => {
                        tracing::warn!("the job's lease was lost before its failure was recorded; the new holder records it");
                        return;
                    }
                    Err(ce) => tracing::error!(error = %ce, "could not record the job failure"),
                }
                self.report(job, Some((e.code(), e.to_string()))).await;
            }
        }
    }

    /// Tells the event sink how `job` ended (`failure`: its code and message).
    async fn report(&self, job: &Job, failure: Option<(&str, String)>) {
        let now = Utc::now();
        let started = job.started_at.unwrap_or(job.created_at);
        let mut method = job.method();
        let mut bytes = None;
        if failure.is_none() && job.kind == ddsvault_catalog::JobKind::Backup {
            if let Some(id) = job.backup_id {
                match self.catalog.get_backup(id).await {
                    Ok(Some(b)) => {
                        bytes = Some(u64::try_from(b.size).unwrap_or(0));
                        method = Some(b.method);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read the finished backup for metrics")
                    }
                }
            }
        }
        let (error_code, error) = match failure {
            Some((code, message)) => (Some(code.to_string()), Some(message)),
            None => (None, None),
        };
        self.events
            .emit(&crate::Event::JobFinished(crate::JobOutcome {
                job_id: job.id,
                instance_id: job.instance_id.clone(),
                kind: job.kind,
                method,
                mode: job.mode.clone(),
                error_code,
                error,
                duration: (now - started).to_std().unwrap_or_default(),
                bytes,
            }));
    }
}
