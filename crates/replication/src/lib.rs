//! PostgreSQL logical replication for Sluice: the connection and the
//! `pgoutput` decoder.
//!
//! No crate of the rust-postgres family speaks the streaming (`CopyBoth`)
//! part of the protocol, so this one is written over `postgres-protocol`
//! (message encoding, SCRAM) and tokio.
//!
//! # Protocol flow
//!
//! 1. [`ReplicationClient::connect`] opens a socket and sends a startup
//!    message with `replication=database`: the server starts a *walsender*
//!    that accepts replication commands as well as plain SQL. It
//!    authenticates (trust, cleartext, MD5 or SCRAM-SHA-256).
//! 2. Commands on that connection: `IDENTIFY_SYSTEM`;
//!    `CREATE_REPLICATION_SLOT … LOGICAL pgoutput` (its exported snapshot
//!    lets another connection read the tables exactly as of the slot's
//!    consistent point, until the next command here); slot and publication
//!    checks with plain SQL.
//! 3. [`ReplicationClient::start_replication`] sends `START_REPLICATION SLOT …
//!    LOGICAL lsn (proto_version …, publication_names …)`; the server answers
//!    `CopyBothResponse` and the connection becomes a [`ReplicationStream`]:
//!    WAL data and keepalives in, standby status updates out (see [`stream`]).
//! 4. Each WAL data message carries one pgoutput message, decoded by
//!    [`pgoutput::Decoder`] into transactions of typed row changes.
//!
//! Exactly-once delivery is the caller's protocol on top: apply a committed
//! transaction's effects together with a checkpoint (its commit end LSN),
//! then [`ReplicationStream::confirm`] that LSN; on restart, skip
//! transactions at or below the checkpoint.

pub mod client;
pub mod config;
mod conn;
pub mod error;
pub mod lsn;
pub mod pgoutput;
pub mod stream;
pub mod table;
pub mod tls;

pub use client::{CreatedSlot, EnsuredSlot, IdentifySystem, ReplicationClient, Row, SlotInfo, SnapshotAction};
pub use config::{ReplicationConfig, SslMode};
pub use conn::Socket;
pub use error::{DbError, Error, Result};
pub use lsn::Lsn;
pub use stream::{Event, ReplicationStream, StartOptions};
pub use table::TableName;
pub use tls::TlsSettings;
