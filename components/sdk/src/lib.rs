//! What the Sluice host and its components share: the contract's value and
//! table types, identifier quoting and the SQL of tables and upserts.
//!
//! It compiles natively and for `wasm32-wasip2`.

pub mod check;
pub mod component;
pub mod sql;
pub mod types;

pub use types::*;
#[cfg(feature = "json")]
pub mod body;
