//! Reading new oplog entries of a FerretDB (SQLite backend) without scanning the whole oplog.
//!
//! FerretDB 1.24 pushes no range filter down to SQLite: `find local.oplog.rs {ts: {$gt: …}}` reads and decodes every
//! entry of the capped collection and filters them in memory (only an `_id` equality reaches SQL;
//! `internal/backends/sqlite/collection.go` `Query`). Measured on this project's machine: ~130 µs per entry, so
//! 0.64 s for a 4,000-entry oplog and 2.5 s for 20,000 — a log backup polling every second falls behind for good
//! once the oplog holds more than a few thousand entries, which any real oplog does.
//!
//! When the instance's data directory is known (`data_path`, as file backups need it), the entries that are new are
//! found in FerretDB's own database file instead: `local.oplog.rs` is the table `_ferretdb_collections` names, whose
//! `_ferretdb_record_id` is its INTEGER PRIMARY KEY. FerretDB gives every document of a capped collection the record
//! id `types.NextTimestamp(now)` when it inserts it (`internal/backends/collection.go`), and the oplog decorator took
//! the entry's `ts` from the same process-wide, strictly increasing `NextTimestamp` just before
//! (`internal/backends/decorators/oplog`), so an entry's record id is larger than its `ts` read as an integer. The
//! index range `record_id > after - SLACK` therefore holds every entry with `ts > after`, and the exact `ts` bounds
//! are applied in SQL on top (`ts` is stored as that same integer in FerretDB's JSON, `sjson` `timestampType`). Only
//! those entries are then read through the server, one `_id` lookup each (FerretDB pushes that one down), so the
//! documents are exactly the BSON the server answers, as with the scan. Each read is checked: an entry listed here
//! that the server no longer has (the capped oplog evicted it meanwhile) or that answers another `ts` is an error,
//! never a silent skip; the caller retries and then sees the roll-over itself.
//!
//! Anything unexpected in the file (no `local.sqlite`, no `oplog.rs` row, another layout) answers `None`, and the
//! caller scans through the server as before.

use std::path::{Path, PathBuf};

use bson::{doc, oid::ObjectId, RawDocumentBuf, Timestamp};
use futures::{StreamExt, TryStreamExt};
use mongodb::Client;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::{MongoError, Result};

/// How far below `after` the record-id range starts: a margin against the ordering argument above (a minute of
/// entries costs SQLite a few milliseconds to pass over).
const SLACK_SECS: i64 = 60;

/// `_id` lookups in flight at once.
const LOOKUPS_IN_FLIGHT: usize = 8;

/// FerretDB's file of the `local` database in `data_dir`.
fn local_file(data_dir: &Path) -> PathBuf {
    data_dir.join("local.sqlite")
}

/// `(ts, _id)` of every entry with `after < ts <= upto`, from the file; `None` when the file is not laid out as
/// FerretDB 1.24 lays it out.
fn listed_between(
    data_dir: &Path,
    after: Timestamp,
    upto: Timestamp,
) -> Result<Option<Vec<(Timestamp, ObjectId)>>> {
    let file = local_file(data_dir);
    if !file.is_file() {
        return Ok(None);
    }
    let err = |e: rusqlite::Error| MongoError::Protocol {
        context: format!("read the oplog index in {}", file.display()),
        detail: e.to_string(),
    };
    let conn = Connection::open_with_flags(
        &file,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(err)?;
    let table: Option<String> = match conn
        .query_row(
            "SELECT table_name FROM _ferretdb_collections WHERE name = 'oplog.rs'",
            [],
            |r| r.get(0),
        )
        .optional()
    {
        Ok(t) => t,
        // No metadata table: not a FerretDB 1.x file.
        Err(_) => return Ok(None),
    };
    let Some(table) = table else {
        return Ok(None);
    };
    let key = |t: Timestamp| (i64::from(t.time) << 32) | i64::from(t.increment);
    let from = key(after).saturating_sub(SLACK_SECS << 32);
    let sql = format!(
        "SELECT json_extract(_ferretdb_sjson, '$.ts'), json_extract(_ferretdb_sjson, '$._id') \
         FROM \"{}\" WHERE _ferretdb_record_id > ?1 \
         AND json_extract(_ferretdb_sjson, '$.ts') > ?2 AND json_extract(_ferretdb_sjson, '$.ts') <= ?3",
        table.replace('"', "\"\"")
    );
    let mut stmt = match conn.prepare(&sql) {
        Ok(s) => s,
        // Not the columns FerretDB 1.24 creates.
        Err(_) => return Ok(None),
    };
    let rows = stmt
        .query_map(rusqlite::params![from, key(after), key(upto)], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(err)?;
    let mut out = Vec::new();
    for row in rows {
        let (ts, id) = row.map_err(err)?;
        let Ok(id) = ObjectId::parse_str(&id) else {
            return Ok(None);
        };
        let ts = u64::try_from(ts).map_err(|_| MongoError::Protocol {
            context: format!("read the oplog index in {}", file.display()),
            detail: format!("negative timestamp {ts}"),
        })?;
        // Truncation intended: the high and low 32 bits of a BSON timestamp.
        #[allow(clippy::cast_possible_truncation)]
        let ts = Timestamp {
            time: (ts >> 32) as u32,
            increment: ts as u32,
        };
        out.push((ts, id));
    }
    Ok(Some(out))
}

/// Every entry with `after < ts <= upto`, sorted by `ts`, found through FerretDB's file in `data_dir` and read
/// through the server (module docs); `None` when the file cannot serve as an index, so the caller scans instead.
///
/// # Errors
/// The file cannot be read; a listed entry is gone from the server or answers another `ts`; server errors.
pub async fn entries_between_indexed(
    client: &Client,
    data_dir: &Path,
    after: Timestamp,
    upto: Timestamp,
) -> Result<Option<Vec<(Timestamp, RawDocumentBuf)>>> {
    let dir = data_dir.to_path_buf();
    let listed = tokio::task::spawn_blocking(move || listed_between(&dir, after, upto))
        .await
        .map_err(|e| MongoError::Protocol {
            context: "read the oplog index".into(),
            detail: e.to_string(),
        })??;
    let Some(listed) = listed else {
        return Ok(None);
    };
    let oplog = client
        .database(super::OPLOG_DB)
        .collection::<RawDocumentBuf>(super::OPLOG_COLLECTION);
    let oplog = &oplog;
    let mut out: Vec<(Timestamp, RawDocumentBuf)> = futures::stream::iter(listed)
        .map(|(ts, id)| async move {
            let entry = oplog
                .find_one(doc! { "_id": id })
                .await
                .map_err(|e| MongoError::from_driver("read an oplog entry by _id", e))?
                .ok_or_else(|| MongoError::Protocol {
                    context: "read local.oplog.rs".into(),
                    detail: format!(
                        "entry {id} at {} is no longer in the oplog (evicted while being read)",
                        super::fmt_ts(ts)
                    ),
                })?;
            let got = entry.get_timestamp("ts").map_err(|e| MongoError::Protocol {
                context: "read local.oplog.rs".into(),
                detail: format!("entry {id} without a timestamp \"ts\": {e}"),
            })?;
            if got != ts {
                return Err(MongoError::Protocol {
                    context: "read local.oplog.rs".into(),
                    detail: format!(
                        "entry {id} answers ts {} where its file says {}",
                        super::fmt_ts(got),
                        super::fmt_ts(ts)
                    ),
                });
            }
            Ok((ts, entry))
        })
        .buffered(LOOKUPS_IN_FLIGHT)
        .try_collect()
        .await?;
    out.sort_by_key(|(ts, _)| *ts);
    Ok(Some(out))
}
