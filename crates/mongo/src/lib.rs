//! MongoDB side of ddsvault: the `mongodump --archive` format, topology discovery,
//! and the logical (document-level) backup engine.
//!
//! * [`archive`]: writer, validating reader and compression of the archive format
//!   (byte-compatible with mongo-tools `mongodump --archive` / `mongorestore --archive`).
//! * [`topology`]: connecting with fast failure, and `hello`/`buildInfo` discovery.
//! * [`logical`]: streaming logical dumps into an archive with bounded memory.
//! * [`oplog`]: oplog capture during a dump and replay after a restore (one consistency point).
//! * [`physical`]: consistent file images of a node's data directory (physical and snapshot backups).
//! * [`restore`]: verifying archives and restoring them into a server (logical restore).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod archive;
pub mod checksum;
mod error;
pub mod logical;
pub mod oplog;
pub mod physical;
pub mod restore;
pub mod topology;

pub use error::{MongoError, Result};
