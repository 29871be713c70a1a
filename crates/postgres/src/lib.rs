//! PostgreSQL for Sluice: the one policy for the database's failures
//! ([`failure`]), shared by the writer, the query API, dead letters and the
//! change streams; the binary encoding of a plan's columns as parameters
//! ([`encode`]); and the RDS IAM tokens that are the password of each new
//! connection ([`rds_iam`]).

pub mod encode;
pub mod failure;
pub mod rds_iam;

pub use failure::{Action, Kind, classify, classify_code, describe};
