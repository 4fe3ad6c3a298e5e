//! From oplog entries to writes: the [`Sequencer`] (scope, transactions, the checks every
//! entry passes before anything is written) and the [`Applier`] (the two ways of applying:
//! ordinary writes, or `applyOps` where the target has it).
//!
//! The same [`Sequencer`] runs three times over the same entries: when a backup captures its
//! oplog ([`Mode::Backup`]: an entry this version cannot apply fails the backup), in a
//! restore's verify pass before anything is written ([`Mode::Restore`], nothing kept), and in
//! the restore's replay pass (the actions are applied).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bson::{doc, Bson, Document, RawDocument, Timestamp};
use mongodb::Client;
use tracing::{info, warn};

use super::entry::{self, name_of, Command, Parsed, TxnMeta, Write};
use super::{ReplayOp, Replayer};
use crate::error::{MongoError, Result};
use crate::restore::{clean_index, create_command};

/// How the target applies entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyPath {
    /// Ordinary writes (`insert`, `delete`, `replaceOne` of images computed here, `create`,
    /// `drop`, ...): servers without `applyOps`, like FerretDB.
    Translate,
    /// `applyOps` with the raw entries, one at a time, as `mongorestore --oplogReplay` does
    /// (mongod). **Unverified**: no mongod was available to test it.
    ApplyOps,
}

/// What the [`Sequencer`] checks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Checking a backup's captured oplog: the target is not known, so only what no target
    /// could apply is refused; renames are refused as `mongodump --oplog` refuses them (a
    /// collection renamed during the dump was read under one name or the other, or not at
    /// all: the copy cannot be made consistent).
    Backup,
    /// A restore's verify pass, before the target is asked how it applies entries: what
    /// only ordinary writes cannot apply is recorded
    /// ([`SequencerReport::translate_refusal`]), everything else refused.
    Verify,
    /// A restore into a target that applies entries this way.
    Restore(ApplyPath),
}

/// Which namespaces the entries are applied to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    all: bool,
    dbs: BTreeSet<String>,
    colls: BTreeSet<(String, String)>,
    /// The databases of the backup: a dump captures the oplog of every database, a restore
    /// applies only the entries of the databases it has.
    within: Option<BTreeSet<String>>,
}

impl Scope {
    /// Every user namespace.
    pub(crate) fn all() -> Scope {
        Scope {
            all: true,
            ..Scope::default()
        }
    }

    /// Whole databases.
    pub(crate) fn databases<'a>(dbs: impl IntoIterator<Item = &'a str>) -> Scope {
        Scope {
            dbs: dbs.into_iter().map(str::to_string).collect(),
            ..Scope::default()
        }
    }

    /// Whole databases and single collections.
    pub(crate) fn selection<'a>(
        items: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Scope {
        let mut s = Scope::default();
        for (db, coll) in items {
            match coll {
                None => {
                    s.dbs.insert(db.to_string());
                }
                Some(c) => {
                    s.colls.insert((db.to_string(), c.to_string()));
                }
            }
        }
        s
    }

    /// Restricted to the databases `dbs` (those of the backup).
    pub(crate) fn within<'a>(mut self, dbs: impl IntoIterator<Item = &'a str>) -> Scope {
        self.within = Some(dbs.into_iter().map(str::to_string).collect());
        self
    }

    fn in_backup(&self, db: &str) -> bool {
        self.within.as_ref().is_none_or(|w| w.contains(db))
    }

    fn user(db: &str, coll: &str) -> bool {
        !db.is_empty()
            && !coll.is_empty()
            && db != "local"
            && db != "config"
            && !(db == "admin" && coll.starts_with("system."))
    }

    /// Whether entries of `db.coll` are applied.
    pub(crate) fn ns(&self, db: &str, coll: &str) -> bool {
        Scope::user(db, coll)
            && self.in_backup(db)
            && (self.all
                || self.dbs.contains(db)
                || self.colls.contains(&(db.to_string(), coll.to_string())))
    }

    /// Whether some namespace of `db` is in scope.
    pub(crate) fn db(&self, db: &str) -> bool {
        db != "local"
            && db != "config"
            && self.in_backup(db)
            && (self.all || self.dbs.contains(db) || self.colls.iter().any(|(d, _)| d == db))
    }
}

/// One thing to apply.
#[derive(Debug, Clone)]
pub(crate) struct Action {
    /// The entry (and operation inside it) it comes from, for errors.
    pub name: String,
    /// The operation as logged, without `ui` (for [`ApplyPath::ApplyOps`]).
    pub raw: Document,
    pub kind: ActionKind,
}

#[derive(Debug, Clone)]
pub(crate) enum ActionKind {
    Write {
        db: String,
        coll: String,
        write: Write,
    },
    Command {
        db: String,
        cmd: Command,
    },
}

/// A transaction whose entries are being collected until its commit.
struct OpenTxn {
    name: String,
    last_ts: Option<Timestamp>,
    prepared: bool,
    /// Kept only by the replay; `count` is kept always.
    ops: Vec<Action>,
    count: u64,
}

/// What a [`Sequencer`] saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct SequencerReport {
    /// Entries read.
    pub entries: u64,
    /// Actions produced (the writes and commands to apply).
    pub actions: u64,
    /// Namespaces in scope that the actions write to or drop.
    pub touched: BTreeSet<(String, String)>,
    /// Transactions still open at the end of the window: not applied.
    pub warnings: Vec<String>,
    /// [`Mode::Verify`]: the first entry ordinary writes cannot apply (a view, a timeseries
    /// collection, `convertToCapped`): the restore fails if the target has no `applyOps`.
    pub translate_refusal: Option<String>,
}

/// Turns entries into [`Action`]s, in order: entries outside the scope are left out,
/// transactions are collected and released at their commit (as MongoDB applies them), every
/// entry in scope is checked (see [`entry::parse`]).
pub(crate) struct Sequencer {
    scope: Scope,
    mode: Mode,
    /// Keep the actions of open transactions (the replay) or only their chain (checks).
    keep: bool,
    open: HashMap<Vec<u8>, OpenTxn>,
    report: SequencerReport,
}

impl Sequencer {
    /// Restricts the scope to the backup's databases (see [`Scope::within`]).
    pub(crate) fn within<'a>(&mut self, dbs: impl IntoIterator<Item = &'a str>) {
        self.scope = std::mem::take(&mut self.scope).within(dbs);
    }

    pub(crate) fn new(scope: Scope, mode: Mode, keep: bool) -> Sequencer {
        Sequencer {
            scope,
            mode,
            keep,
            open: HashMap::new(),
            report: SequencerReport::default(),
        }
    }

    /// Feeds one entry (raw BSON bytes); returns what to apply now.
    ///
    /// # Errors
    /// The entry (named) cannot be applied: see [`entry::parse`], plus broken transaction
    /// chains, renames across the scope's border, and what the apply path cannot do.
    pub(crate) fn push_bytes(&mut self, raw: &[u8]) -> Result<Vec<Action>> {
        let raw = RawDocument::from_bytes(raw).map_err(|e| MongoError::Protocol {
            context: "read the backup's oplog".into(),
            detail: format!("undecodable oplog entry: {e}"),
        })?;
        self.push(raw)
    }

    pub(crate) fn push(&mut self, raw: &RawDocument) -> Result<Vec<Action>> {
        self.report.entries += 1;
        let name = name_of(raw);
        if self.outside(raw) {
            return Ok(Vec::new());
        }
        let ts = raw.get_timestamp("ts").ok();
        let mut out = Vec::new();
        match entry::parse(raw, &name)? {
            Parsed::ApplyOps { ops, txn: None } => {
                self.flatten(&name, &ops, &mut out)?;
                self.report.actions += out.len() as u64;
            }
            Parsed::ApplyOps { ops, txn: Some(meta) } => {
                let mut actions = Vec::new();
                self.flatten(&name, &ops, &mut actions)?;
                self.txn_data(&name, ts, &meta, actions, &mut out)?;
            }
            Parsed::Commit(meta) => match self.open.remove(&meta.key) {
                Some(t) if t.prepared => self.release(t, &mut out),
                Some(t) => {
                    return Err(broken(&name, &format!("commits {} which was not prepared", t.name)))
                }
                None => {
                    return Err(broken(
                        &name,
                        "commits a prepared transaction whose entries precede the backup's oplog window",
                    ))
                }
            },
            Parsed::Abort(meta) => {
                self.open.remove(&meta.key);
            }
            other => {
                if let Some(a) = self.route(&name, raw, other)? {
                    out.push(a);
                    self.report.actions += 1;
                }
            }
        }
        Ok(out)
    }

    /// Entries of namespaces outside the scope are not this restore's business, whatever
    /// their form (`admin.$cmd` carries transactions and renames: looked at by the parser;
    /// an entry without a `db.collection` namespace is refused there).
    fn outside(&self, raw: &RawDocument) -> bool {
        let ns = raw.get_str("ns").unwrap_or("");
        let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
        !db.is_empty()
            && !coll.is_empty()
            && match raw.get_str("op").unwrap_or("") {
                "c" => db != "admin" && !self.scope.db(db),
                "n" => false,
                _ => !self.scope.ns(db, coll),
            }
    }

    fn release(&mut self, t: OpenTxn, out: &mut Vec<Action>) {
        self.report.actions += t.count;
        out.extend(t.ops);
    }

    /// The report; transactions still open are reported (not applied, as MongoDB does not
    /// apply an uncommitted transaction).
    pub(crate) fn finish(mut self) -> SequencerReport {
        let mut open: Vec<String> = self.open.into_values().map(|t| t.name).collect();
        open.sort();
        for name in open {
            self.report.warnings.push(format!(
                "the transaction of {name} was not committed by the end of the backup's oplog window: not applied"
            ));
        }
        self.report
    }

    /// A data entry of a transaction (`applyOps` with `lsid` and `txnNumber`): collected, and
    /// released when it is the commit (neither `partialTxn` nor `prepare`).
    fn txn_data(
        &mut self,
        name: &str,
        ts: Option<Timestamp>,
        meta: &TxnMeta,
        actions: Vec<Action>,
        out: &mut Vec<Action>,
    ) -> Result<()> {
        let keep = self.keep;
        let txn = match self.open.get_mut(&meta.key) {
            Some(t) => {
                if meta.prev.is_none() || meta.prev != t.last_ts {
                    return Err(broken(
                        name,
                        &format!(
                            "does not follow the previous entry of its transaction ({})",
                            t.name
                        ),
                    ));
                }
                t
            }
            None => {
                if meta.prev.is_some() {
                    return Err(broken(
                        name,
                        "continues a transaction whose first entries precede the backup's oplog window",
                    ));
                }
                self.open.entry(meta.key.clone()).or_insert(OpenTxn {
                    name: name.to_string(),
                    last_ts: None,
                    prepared: false,
                    ops: Vec::new(),
                    count: 0,
                })
            }
        };
        txn.last_ts = ts;
        txn.prepared = meta.prepare;
        txn.count += actions.len() as u64;
        if keep {
            txn.ops.extend(actions);
        }
        if !meta.partial && !meta.prepare {
            if let Some(t) = self.open.remove(&meta.key) {
                self.release(t, out);
            }
        }
        Ok(())
    }

    /// The operations of an `applyOps`, each parsed and routed.
    fn flatten(&mut self, name: &str, ops: &[&RawDocument], out: &mut Vec<Action>) -> Result<()> {
        for (i, op) in ops.iter().enumerate() {
            let inner = format!("operation {i} of {name}");
            if self.outside(op) {
                continue;
            }
            match entry::parse(op, &inner)? {
                Parsed::ApplyOps { ops, .. } => self.flatten(&inner, &ops, out)?,
                Parsed::Commit(_) | Parsed::Abort(_) => {
                    return Err(MongoError::Unsupported(format!(
                        "{inner}: transaction commit or abort inside applyOps"
                    )))
                }
                other => {
                    if let Some(a) = self.route(&inner, op, other)? {
                        out.push(a);
                    }
                }
            }
        }
        Ok(())
    }

    /// One write or command: in scope or not, applicable on this path or not.
    fn route(
        &mut self,
        name: &str,
        raw: &RawDocument,
        parsed: Parsed<'_>,
    ) -> Result<Option<Action>> {
        let refuse = |detail: &str| Err(MongoError::Unsupported(format!("{name}: {detail}")));
        // What only ordinary writes cannot apply: refused on that path, recorded while the
        // path is not known yet.
        let mode = self.mode;
        let translate_only = |refusal: &mut Option<String>, detail: &str| -> Result<()> {
            match mode {
                Mode::Restore(ApplyPath::Translate) => {
                    Err(MongoError::Unsupported(format!("{name}: {detail}")))
                }
                Mode::Verify => {
                    refusal.get_or_insert_with(|| format!("{name}: {detail}"));
                    Ok(())
                }
                _ => Ok(()),
            }
        };
        let kind = match parsed {
            Parsed::Noop => return Ok(None),
            Parsed::Write { db, coll, write } => {
                if !self.scope.ns(&db, &coll) {
                    return Ok(None);
                }
                if coll == "system.views" || coll.starts_with("system.buckets.") {
                    translate_only(
                        &mut self.report.translate_refusal,
                        "views and timeseries collections cannot be restored without applyOps",
                    )?;
                }
                self.report.touched.insert((db.clone(), coll.clone()));
                ActionKind::Write { db, coll, write }
            }
            Parsed::Command { db, cmd } => {
                let coll = match &cmd {
                    Command::Skip => return Ok(None),
                    Command::DropDatabase => {
                        if !self.scope.db(&db) {
                            return Ok(None);
                        }
                        None
                    }
                    Command::Rename { from, to, .. } => {
                        let (a, b) = (self.scope.ns(&from.0, &from.1), self.scope.ns(&to.0, &to.1));
                        if !a && !b {
                            return Ok(None);
                        }
                        if self.mode == Mode::Backup {
                            return refuse(&format!(
                                "renameCollection {}.{} to {}.{} during the backup: the dump cannot be \
                                 consistent (mongodump --oplog refuses it too); take the backup again",
                                from.0, from.1, to.0, to.1
                            ));
                        }
                        if a != b {
                            return refuse(&format!(
                                "renameCollection {}.{} to {}.{} crosses the restore's selection; \
                                 select both namespaces or neither",
                                from.0, from.1, to.0, to.1
                            ));
                        }
                        self.report.touched.insert(from.clone());
                        self.report.touched.insert(to.clone());
                        None
                    }
                    Command::Create { coll, .. }
                    | Command::Drop { coll }
                    | Command::AddIndexes { coll, .. }
                    | Command::DropIndexes { coll, .. }
                    | Command::CollMod { coll, .. }
                    | Command::EmptyCapped { coll }
                    | Command::ConvertToCapped { coll } => Some(coll.clone()),
                };
                if let Some(coll) = coll {
                    if !self.scope.ns(&db, &coll) {
                        return Ok(None);
                    }
                    match &cmd {
                        Command::Create { options, .. } => {
                            if let Some(k) = ["viewOn", "pipeline", "timeseries"]
                                .into_iter()
                                .find(|k| options.contains_key(*k))
                            {
                                translate_only(&mut self.report.translate_refusal, &format!(
                                    "create with {k:?}: views and timeseries collections cannot be restored without applyOps"
                                ))?;
                            }
                        }
                        Command::ConvertToCapped { .. } => translate_only(
                            &mut self.report.translate_refusal,
                            "convertToCapped cannot be replayed without applyOps",
                        )?,
                        _ => {}
                    }
                    self.report.touched.insert((db.clone(), coll));
                }
                ActionKind::Command { db, cmd }
            }
            Parsed::ApplyOps { .. } | Parsed::Commit(_) | Parsed::Abort(_) => {
                return Err(MongoError::Internal(format!("{name}: routed an applyOps")))
            }
        };
        let raw_doc = if self.keep && self.mode == Mode::Restore(ApplyPath::ApplyOps) {
            let mut d = Document::try_from(raw).map_err(|e| MongoError::Protocol {
                context: "read the backup's oplog".into(),
                detail: format!("{name}: undecodable: {e}"),
            })?;
            // mongorestore strips the collection UUID too: the target's collections have others.
            d.remove("ui");
            d
        } else {
            Document::new()
        };
        Ok(Some(Action {
            name: name.to_string(),
            raw: raw_doc,
            kind,
        }))
    }
}

fn broken(name: &str, detail: &str) -> MongoError {
    MongoError::Unsupported(format!("{name}: {detail}"))
}

/// The secondary indexes to build once the replay is done: the archive's, changed by the
/// oplog's `createIndexes`, `commitIndexBuild`, `dropIndexes`, `collMod`, drops and renames
/// (built after the replay, as mongorestore does, because the replay passes through states a
/// unique index could refuse).
#[derive(Debug, Clone, Default)]
pub(crate) struct IndexCatalog {
    pub(crate) specs: BTreeMap<(String, String), Vec<Document>>,
}

impl IndexCatalog {
    fn add(&mut self, ns: (String, String), spec: Document) {
        let list = self.specs.entry(ns).or_default();
        let name = spec.get_str("name").unwrap_or_default().to_string();
        list.retain(|s| s.get_str("name").unwrap_or_default() != name);
        list.push(spec);
    }

    fn drop_indexes(&mut self, ns: &(String, String), which: &Bson) {
        let Some(list) = self.specs.get_mut(ns) else {
            return;
        };
        match which {
            Bson::String(s) if s == "*" => list.clear(),
            Bson::String(s) => list.retain(|i| i.get_str("name").ok() != Some(s.as_str())),
            Bson::Document(key) => list.retain(|i| i.get_document("key").ok() != Some(key)),
            Bson::Array(names) => list.retain(|i| {
                !names
                    .iter()
                    .any(|n| n.as_str().is_some() && n.as_str() == i.get_str("name").ok())
            }),
            _ => {}
        }
    }

    /// `collMod`'s `index: {name | keyPattern, expireAfterSeconds?, hidden?, ...}`.
    fn modify(&mut self, ns: &(String, String), change: &Document) {
        let Some(list) = self.specs.get_mut(ns) else {
            return;
        };
        let by_name = change.get_str("name").ok();
        let by_key = change.get_document("keyPattern").ok();
        for spec in list.iter_mut() {
            let hit = by_name.is_some_and(|n| spec.get_str("name").ok() == Some(n))
                || by_key.is_some_and(|k| spec.get_document("key").ok() == Some(k));
            if hit {
                for (k, v) in change {
                    if k != "name" && k != "keyPattern" {
                        spec.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
}

/// Applies [`Action`]s to the target.
pub(crate) struct Applier<'a> {
    client: &'a Client,
    path: ApplyPath,
    replayer: Replayer,
    pub(crate) indexes: IndexCatalog,
    /// Namespaces this restore manages (restored from the archive, or touched by the oplog):
    /// what a `dropDatabase` drops.
    known: BTreeSet<(String, String)>,
    pub(crate) warnings: BTreeSet<String>,
    pub(crate) applied: u64,
}

impl<'a> Applier<'a> {
    pub(crate) fn new(
        client: &'a Client,
        path: ApplyPath,
        indexes: IndexCatalog,
        known: BTreeSet<(String, String)>,
    ) -> Applier<'a> {
        Applier {
            client,
            path,
            replayer: Replayer::new(),
            indexes,
            known,
            warnings: BTreeSet::new(),
            applied: 0,
        }
    }

    /// Applies one action (writes may be held in a batch until [`Applier::flush`]).
    pub(crate) async fn apply(&mut self, a: Action) -> Result<()> {
        self.applied += 1;
        match a.kind {
            ActionKind::Write { db, coll, write } => match self.path {
                ApplyPath::ApplyOps => self.apply_ops(&a.name, a.raw).await,
                ApplyPath::Translate => self.write(db, coll, write).await,
            },
            ActionKind::Command { db, cmd } => {
                self.replayer.flush(self.client).await?;
                self.command(&a.name, a.raw, db, cmd).await
            }
        }
    }

    /// Applies the writes held in the current batch.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.replayer.flush(self.client).await
    }

    async fn write(&mut self, db: String, collection: String, write: Write) -> Result<()> {
        let op = match write {
            Write::Upsert { id, doc } => ReplayOp::Upsert {
                db,
                collection,
                id,
                doc,
            },
            Write::Delete { id } => ReplayOp::Delete { db, collection, id },
            Write::Modify { id, update } => ReplayOp::Update {
                db,
                collection,
                id,
                update,
            },
            // A diff is applied here, to the document's current image, and the result
            // written as a whole: translating it into $set/$unset cannot be exact (a `u` of an
            // absent field, an `i` that moves a field to the end, array resizes and null
            // padding have no exact update-operator equivalent), a replacement is.
            Write::Diff { id, diff } => {
                match self
                    .replayer
                    .current(&db, &collection, &id, self.client)
                    .await?
                {
                    // Absent: deleted later in the window (the dump read it after that),
                    // which a later entry replays; MongoDB's idempotent replay skips it too.
                    None => return Ok(()),
                    Some(pre) => ReplayOp::Upsert {
                        db,
                        collection,
                        id,
                        doc: diff.apply(&pre),
                    },
                }
            }
        };
        self.replayer.push(op, self.client).await
    }

    async fn run(&self, db: &str, cmd: Document, what: &str, ignore: &[i32]) -> Result<()> {
        match self.client.database(db).run_command(cmd).await {
            Ok(_) => Ok(()),
            Err(e) if command_code(&e).is_some_and(|c| ignore.contains(&c)) => Ok(()),
            Err(e) => Err(MongoError::from_driver(what.to_string(), e)),
        }
    }

    async fn apply_ops(&mut self, name: &str, raw: Document) -> Result<()> {
        let reply = self
            .client
            .database("admin")
            .run_command(doc! { "applyOps": [raw] })
            .await
            .map_err(|e| MongoError::from_driver(format!("applyOps of {name}"), e))?;
        // applyOps answers ok with a per-operation `results` list.
        if let Ok(results) = reply.get_array("results") {
            if results.iter().any(|r| r == &Bson::Boolean(false)) {
                return Err(MongoError::Protocol {
                    context: format!("applyOps of {name}"),
                    detail: format!("the server did not apply it: {reply}"),
                });
            }
        }
        Ok(())
    }

    async fn command(&mut self, name: &str, raw: Document, db: String, cmd: Command) -> Result<()> {
        const NAMESPACE_NOT_FOUND: i32 = 26;
        const NAMESPACE_EXISTS: i32 = 48;
        let ctx = |what: &str| format!("replay {what} ({name})");
        let mongod = self.path == ApplyPath::ApplyOps;
        match cmd {
            Command::Skip => {}
            Command::Create { coll, options } => {
                self.known.insert((db.clone(), coll.clone()));
                if mongod {
                    return self.apply_ops(name, raw).await;
                }
                // Only the options the target accepts, as for the archive's collections.
                let (create, dropped) = create_command(&coll, &options)
                    .map_err(|e| MongoError::Unsupported(format!("{name}: {e}")))?;
                for opt in dropped {
                    self.warnings.insert(format!(
                        "{db}.{coll}: collection option {opt:?} (created during the backup) is not supported by the target and was not restored"
                    ));
                }
                // Already there: the dump listed it after its creation and restored it.
                self.run(&db, create, &ctx("create"), &[NAMESPACE_EXISTS])
                    .await?;
            }
            Command::Drop { coll } => {
                self.indexes.specs.remove(&(db.clone(), coll.clone()));
                if mongod {
                    return self.apply_ops(name, raw).await;
                }
                self.run(
                    &db,
                    doc! { "drop": &coll },
                    &ctx("drop"),
                    &[NAMESPACE_NOT_FOUND],
                )
                .await?;
            }
            Command::DropDatabase => {
                // Only what this restore manages: the target's other collections are not in
                // the backup's scope.
                let colls: Vec<String> = self
                    .known
                    .iter()
                    .filter(|(d, _)| *d == db)
                    .map(|(_, c)| c.clone())
                    .collect();
                for c in colls {
                    self.indexes.specs.remove(&(db.clone(), c.clone()));
                    self.run(
                        &db,
                        doc! { "drop": &c },
                        &ctx("dropDatabase"),
                        &[NAMESPACE_NOT_FOUND],
                    )
                    .await?;
                }
            }
            Command::AddIndexes { coll, specs } => {
                self.known.insert((db.clone(), coll.clone()));
                for spec in specs {
                    // Cut down to what the target accepts, as the archive's indexes are.
                    let Some((clean, dropped)) = clean_index(&spec) else {
                        continue;
                    };
                    let iname = clean.get_str("name").unwrap_or_default().to_string();
                    for opt in dropped {
                        self.warnings.insert(format!(
                            "{db}.{coll}: index {iname:?}: option {opt:?} is not supported by the target and was dropped"
                        ));
                    }
                    self.indexes.add((db.clone(), coll.clone()), clean);
                }
            }
            Command::DropIndexes { coll, which } => {
                self.indexes.drop_indexes(&(db, coll), &which);
            }
            Command::CollMod {
                coll,
                index,
                options,
            } => {
                if let Some(change) = &index {
                    self.indexes.modify(&(db.clone(), coll.clone()), change);
                }
                if options.is_empty() {
                    return Ok(());
                }
                if mongod {
                    let mut raw = raw;
                    if let Ok(o) = raw.get_document_mut("o") {
                        o.remove("index");
                    }
                    return self.apply_ops(name, raw).await;
                }
                for k in options.keys() {
                    self.warnings.insert(format!(
                        "{db}.{coll}: collMod option {k:?} is not supported by the target and was not applied"
                    ));
                }
            }
            Command::Rename {
                from,
                to,
                drop_target,
            } => {
                self.known.insert(to.clone());
                if drop_target {
                    self.indexes.specs.remove(&to);
                }
                if let Some(specs) = self.indexes.specs.remove(&from) {
                    self.indexes.specs.insert(to.clone(), specs);
                }
                if mongod {
                    return self.apply_ops(name, raw).await;
                }
                let cmd = doc! {
                    "renameCollection": format!("{}.{}", from.0, from.1),
                    "to": format!("{}.{}", to.0, to.1),
                    "dropTarget": drop_target,
                };
                // Source absent: renamed before the dump listed the collections, which it
                // then read under its new name.
                self.run(
                    "admin",
                    cmd,
                    &ctx("renameCollection"),
                    &[NAMESPACE_NOT_FOUND],
                )
                .await?;
            }
            Command::EmptyCapped { coll } => {
                if mongod {
                    return self.apply_ops(name, raw).await;
                }
                self.client
                    .database(&db)
                    .collection::<Document>(&coll)
                    .delete_many(doc! {})
                    .await
                    .map_err(|e| MongoError::from_driver(ctx("emptycapped"), e))?;
            }
            Command::ConvertToCapped { .. } => {
                if mongod {
                    return self.apply_ops(name, raw).await;
                }
                return Err(MongoError::Unsupported(format!(
                    "{name}: convertToCapped is not supported on this target"
                )));
            }
        }
        Ok(())
    }
}

fn command_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// Whether the target has `applyOps`: an empty `applyOps` changes nothing on a server that
/// has it and fails on one that does not (FerretDB: CommandNotFound), or on one where this
/// user may not run it; both of those replay by ordinary writes.
///
/// # Errors
/// Connection problems (not command errors).
pub async fn detect_apply_path(client: &Client) -> Result<ApplyPath> {
    match client
        .database("admin")
        .run_command(doc! { "applyOps": [] })
        .await
    {
        Ok(_) => {
            info!("the target has applyOps: the oplog is replayed with applyOps (mongod path, unverified)");
            Ok(ApplyPath::ApplyOps)
        }
        Err(e) if command_code(&e).is_some() => {
            info!(reason = %e, "the target has no usable applyOps: the oplog is replayed as ordinary writes");
            Ok(ApplyPath::Translate)
        }
        Err(e) => {
            warn!(error = %e, "applyOps probe failed");
            Err(MongoError::from_driver("probe applyOps on the target", e))
        }
    }
}
