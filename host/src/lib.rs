//! The Sluice host: HTTP in, WebAssembly normalizers, batched idempotent
//! upserts out to PostgreSQL.

pub mod admin;
pub mod body;
pub mod cdc;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod db;
pub use sluice_embedded_postgres as embedded;
pub mod faults;
pub mod files;
pub mod fleet;
pub mod hex;
pub mod http;
pub mod ingest;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod migrate_cmd;
pub mod openapi;
pub mod query;
pub mod request_id;
pub mod router;
pub mod runtime;
pub mod schema;
pub mod server;
pub mod spool;
pub mod state;
pub mod status;
pub mod tenants;
pub mod write_modes;
