//! The Sluice host: HTTP in, WebAssembly normalizers, batched idempotent
//! upserts out to PostgreSQL.

pub mod admin;
pub mod body;
pub mod cdc;
pub mod cli;
pub mod config;
pub mod db;
pub use sluice_embedded_postgres as embedded;
pub mod faults;
pub mod http;
pub mod ingest;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod migrate_cmd;
pub mod openapi;
pub mod query;
pub mod request_id;
pub mod runtime;
pub mod server;
pub mod spool;
pub mod status;
pub mod tenants;
pub mod write_modes;
