//! The time window an archive's oplog covers (`mongodump --oplog`): the only times a mongodump
//! archive records.

use std::io::Read;

use bson::Timestamp;

use super::{ArchiveError, ArchiveEvent, ArchiveReader};

/// The first and last `ts` of the oplog entries an archive carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OplogWindow {
    /// The first entry: mongodump starts its capture at the newest entry when the dump begins.
    pub first: Timestamp,
    /// The last entry: the point a restore that replays the oplog reaches.
    pub last: Timestamp,
    /// Entries in the oplog namespace.
    pub entries: u64,
}

/// Reads the whole archive (validating it as [`ArchiveReader`] does) and returns the window of its
/// oplog namespace (`db: ""`, `collection: "oplog"`), or `None` when it has no oplog entries.
///
/// # Errors
/// The reader's errors, or an oplog entry without a timestamp `ts` (naming its position).
pub fn oplog_window<R: Read>(r: R) -> Result<Option<OplogWindow>, ArchiveError> {
    let mut reader = ArchiveReader::new(r);
    let mut oplog_index = None;
    let mut window: Option<OplogWindow> = None;
    while let Some(ev) = reader.next_event()? {
        match ev {
            ArchiveEvent::Prelude { namespaces, .. } => {
                // Without an oplog namespace the rest is still read: a corrupt archive must not
                // be reported as fine.
                oplog_index = namespaces
                    .iter()
                    .position(|m| m.db.is_empty() && m.collection == "oplog");
            }
            ArchiveEvent::Document { ns_index, raw } if Some(ns_index) == oplog_index => {
                let n = window.map_or(0, |w| w.entries);
                let ts = bson::RawDocument::from_bytes(&raw)
                    .ok()
                    .and_then(|d| d.get_timestamp("ts").ok())
                    .ok_or_else(|| ArchiveError::Io {
                        offset: reader.offset(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("oplog entry {n} has no timestamp `ts`"),
                        ),
                    })?;
                window = Some(match window {
                    None => OplogWindow {
                        first: ts,
                        last: ts,
                        entries: 1,
                    },
                    Some(w) => OplogWindow {
                        first: w.first.min(ts),
                        last: w.last.max(ts),
                        entries: w.entries + 1,
                    },
                });
            }
            _ => {}
        }
    }
    Ok(window)
}
