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

#[cfg(test)]
mod tests {
    use bson::{doc, Timestamp};

    use super::*;
    use crate::archive::{ArchiveHeader, ArchiveWriter, CollectionMetadata};

    fn archive(oplog: &[bson::Document]) -> Vec<u8> {
        let mut w = ArchiveWriter::new(Vec::new(), &ArchiveHeader::new(1, "7.0.0", "test"))
            .expect("writer");
        let data = w
            .add_namespace(CollectionMetadata::collection("a", "b", "{}"))
            .expect("ns");
        let op = w.add_namespace(CollectionMetadata::oplog()).expect("oplog");
        w.finish_prelude().expect("prelude");
        w.write_segment(data, &bson::to_vec(&doc! { "_id": 1 }).expect("bson"))
            .expect("segment");
        w.close_namespace(data).expect("close");
        let raw: Vec<u8> = oplog
            .iter()
            .flat_map(|d| bson::to_vec(d).expect("bson"))
            .collect();
        if !raw.is_empty() {
            w.write_segment(op, &raw).expect("oplog segment");
        }
        w.close_namespace(op).expect("close oplog");
        w.finish().expect("finish")
    }

    fn ts(time: u32, increment: u32) -> Timestamp {
        Timestamp { time, increment }
    }

    #[test]
    fn window_spans_the_oplog_entries_and_is_none_without_them() {
        let entries = [
            doc! { "ts": ts(100, 2), "op": "n", "ns": "", "o": {} },
            doc! { "ts": ts(100, 1), "op": "i", "ns": "a.b", "o": { "_id": 2 } },
            doc! { "ts": ts(107, 1), "op": "d", "ns": "a.b", "o": { "_id": 2 } },
        ];
        let w = oplog_window(&archive(&entries)[..])
            .expect("read")
            .expect("window");
        assert_eq!((w.first, w.last, w.entries), (ts(100, 1), ts(107, 1), 3));
        assert_eq!(oplog_window(&archive(&[])[..]).expect("read"), None);
    }

    #[test]
    fn an_entry_without_ts_or_a_corrupt_archive_is_an_error() {
        let e = oplog_window(&archive(&[doc! { "op": "n" }])[..]).expect_err("no ts");
        assert!(
            e.to_string().contains("oplog entry 0 has no timestamp"),
            "{e}"
        );
        let good = archive(&[doc! { "ts": ts(1, 1) }]);
        let e = oplog_window(&good[..good.len() - 10]).expect_err("truncated");
        assert!(e.violation().is_some() || e.is_permanent(), "{e}");
    }
}
