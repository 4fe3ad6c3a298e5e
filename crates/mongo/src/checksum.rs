//! An order-independent checksum of a set of documents, for restore drills (docs/drills.md).
//!
//! A backup records, per collection, the checksum of the documents it dumped; a drill restores the backup into a
//! scratch instance, reads the collection back and computes the same checksum there. The two reads return the
//! documents in whatever order the servers choose (natural order is not kept by a restore, nor by FerretDB), so the
//! checksum must not depend on order: it is the sum, modulo 2^128, of the first 128 bits of the SHA-256 of each
//! document's BSON bytes exactly as the server returned them. A changed, missing, extra or duplicated document
//! changes the sum (up to a 2^-128 chance); a reordering does not.
//!
//! The bytes are the server's canonical BSON of the document (field order and types as stored): a restore that
//! changed a type (an int32 stored back as int64, a double rounded) or the field order is a difference the drill
//! must report, so nothing is normalised.

use sha2::{Digest, Sha256};

/// Name of the algorithm, recorded next to the checksums so that a later change cannot be mistaken for a mismatch.
pub const ALGORITHM: &str = "sha256-sum128";

/// The running checksum of a set of documents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DocSetChecksum(u128);

impl DocSetChecksum {
    /// The checksum of no documents.
    pub fn new() -> Self {
        Self(0)
    }

    /// Adds one document (its raw BSON bytes).
    pub fn add(&mut self, doc: &[u8]) {
        let digest = Sha256::digest(doc);
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        self.0 = self.0.wrapping_add(u128::from_be_bytes(first));
    }

    /// Adds every document another checksum holds (the sum of two disjoint sets).
    pub fn merge(&mut self, other: DocSetChecksum) {
        self.0 = self.0.wrapping_add(other.0);
    }

    /// 32 lowercase hex digits, as recorded in the manifest.
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }

    /// Reads [`DocSetChecksum::to_hex`]'s form; `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, RawDocumentBuf};

    fn raw(d: bson::Document) -> Vec<u8> {
        RawDocumentBuf::from_document(&d)
            .expect("encode")
            .into_bytes()
    }

    fn of(docs: &[Vec<u8>]) -> DocSetChecksum {
        let mut c = DocSetChecksum::new();
        for d in docs {
            c.add(d);
        }
        c
    }

    #[test]
    fn order_does_not_matter_and_content_does() {
        let a = raw(doc! {"_id": 1, "name": "a"});
        let b = raw(doc! {"_id": 2, "name": "b"});
        let c = raw(doc! {"_id": 3, "name": "c"});
        let base = of(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(base, of(&[c.clone(), a.clone(), b.clone()]));
        // A missing, an extra, a duplicated or a changed document each change the sum.
        assert_ne!(base, of(&[a.clone(), b.clone()]));
        assert_ne!(
            base,
            of(&[a.clone(), b.clone(), c.clone(), raw(doc! {"_id": 4})])
        );
        assert_ne!(base, of(&[a.clone(), b.clone(), c.clone(), c.clone()]));
        assert_ne!(
            base,
            of(&[a.clone(), b.clone(), raw(doc! {"_id": 3, "name": "C"})])
        );
        // Types and field order are part of the document: an int32 read back as an int64 is a difference.
        assert_ne!(of(&[raw(doc! {"n": 1i32})]), of(&[raw(doc! {"n": 1i64})]));
        assert_ne!(
            of(&[raw(doc! {"_id": 1, "x": 1})]),
            of(&[raw(doc! {"x": 1, "_id": 1})])
        );
        // Swapping two documents' fields between them is not a cancellation (the sum is of whole digests).
        assert_ne!(
            of(&[raw(doc! {"_id": 1, "v": 2}), raw(doc! {"_id": 2, "v": 1})]),
            of(&[raw(doc! {"_id": 1, "v": 1}), raw(doc! {"_id": 2, "v": 2})])
        );
    }

    #[test]
    fn merging_partial_sums_equals_the_whole_and_hex_round_trips() {
        let docs: Vec<Vec<u8>> = (0..100).map(|i| raw(doc! {"_id": i, "k": i * 7})).collect();
        let whole = of(&docs);
        let mut left = of(&docs[..37]);
        left.merge(of(&docs[37..]));
        assert_eq!(left, whole);
        assert_eq!(DocSetChecksum::new().to_hex(), "0".repeat(32));
        let hex = whole.to_hex();
        assert_eq!(hex.len(), 32);
        assert_eq!(DocSetChecksum::from_hex(&hex), Some(whole));
        assert_eq!(DocSetChecksum::from_hex("xyz"), None);
        assert_eq!(DocSetChecksum::from_hex(&"g".repeat(32)), None);
    }

    #[test]
    fn the_value_is_stable_across_versions() {
        // Recorded checksums are compared by later ddsvault versions: the algorithm must never drift.
        let mut c = DocSetChecksum::new();
        c.add(&raw(doc! {"_id": 1}));
        let digest = Sha256::digest(raw(doc! {"_id": 1}));
        assert_eq!(c.to_hex(), hex::encode(&digest[..16]));
    }
}
