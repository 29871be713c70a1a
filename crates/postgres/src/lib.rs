//! PostgreSQL for Sluice: the one policy for the database's failures
//! ([`failure`]), shared by the writer, the query API, dead letters and the
//! change streams.

pub mod failure;

pub use failure::{Action, Kind, classify, classify_code, describe};
