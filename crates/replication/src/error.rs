//! Errors of the replication connection.
//!
//! No error carries the password: authentication failures report what the
//! server said (which never includes it) or which step failed.

use std::fmt;
use std::io;

/// An error reported by the server in an `ErrorResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    /// `ERROR`, `FATAL` or `PANIC`.
    pub severity: String,
    /// The SQLSTATE code, e.g. `28P01` for a wrong password.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (SQLSTATE {})", self.severity, self.message, self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, "; detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong on a replication connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot be used (missing field, bad name…).
    #[error("invalid replication configuration: {0}")]
    Config(String),
    /// The TCP or unix-socket connection could not be made.
    #[error("could not connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },
    /// Connecting (including authentication) took longer than the configured timeout.
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    /// Authentication failed on the client's side (unsupported method, no password configured, bad SCRAM exchange).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server answered with an error.
    #[error("server error: {0}")]
    Server(Box<DbError>),
    /// Reading or writing the socket failed.
    #[error("replication connection I/O error: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("the server closed the replication connection")]
    Closed,
    /// The server sent something the protocol does not allow here.
    #[error("replication protocol error: {0}")]
    Protocol(String),
    /// A pgoutput message could not be decoded.
    #[error(transparent)]
    Decode(#[from] crate::pgoutput::DecodeError),
}

impl Error {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// What the failure is, by the one policy of `sluice-postgres`: the
    /// server's SQLSTATE; a configuration or a login this client cannot
    /// make is refused until changed; anything else is the connection's.
    pub fn kind(&self) -> sluice_postgres::Kind {
        use sluice_postgres::Kind;
        match self {
            Error::Server(e) => sluice_postgres::classify_code(&e.code),
            Error::Config(_) => Kind::Refused,
            Error::Auth(_) => Kind::Authorization,
            Error::Connect { .. }
            | Error::ConnectTimeout(_)
            | Error::Io(_)
            | Error::Closed
            | Error::Protocol(_)
            | Error::Decode(_) => Kind::Connection,
        }
    }

    /// The server's error, if this is one.
    pub fn db_error(&self) -> Option<&DbError> {
        match self {
            Error::Server(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> Error {
        Error::Protocol(msg.into())
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_postgres::{Action, Kind};

    fn server(code: &str) -> Error {
        Error::Server(Box::new(DbError {
            severity: "FATAL".into(),
            code: code.into(),
            message: "refused".into(),
            detail: None,
            hint: None,
        }))
    }

    #[test]
    fn a_server_error_is_classified_by_its_sqlstate_and_the_rest_by_what_failed() {
        assert_eq!(server("42501").kind(), Kind::Privilege);
        assert_eq!(server("42704").kind().action(), Action::Stop);
        assert_eq!(server("55006").kind().action(), Action::Retry);
        assert_eq!(server("57P01").kind().action(), Action::Retry);
        assert_eq!(Error::Config("no tables".into()).kind().action(), Action::Stop);
        assert_eq!(Error::Auth("no password".into()).kind(), Kind::Authorization);
        assert_eq!(Error::Closed.kind(), Kind::Connection);
        assert_eq!(Error::Io(io::Error::other("reset")).kind().action(), Action::Retry);
    }
}
