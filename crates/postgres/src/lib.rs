//! PostgreSQL for Sluice: the one policy for the database's failures
//! ([`failure`]), shared by the writer, the query API, dead letters and the
//! change streams; the binary encoding of a plan's columns as parameters
//! ([`encode`]); and the RDS IAM tokens that are the password of each new
//! connection ([`rds_iam`]).

pub mod encode;
pub mod failure;
pub mod rds_iam;

pub use failure::{Action, Kind, classify, classify_code, describe};

/// A string that never prints: a password, a token, a secret key.
#[derive(Clone, serde::Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}
