//! Connection and slot settings, with the field names of Drasi's PostgreSQL
//! source (its camelCase keys are accepted as aliases).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

pub use crate::tls::SslMode;

/// Settings of a replication connection and the slot it streams.
///
/// `Debug` never shows the password. Unknown keys are ignored, so a host can
/// read a larger source configuration (e.g. with `tableKeys`) into it.
#[derive(Clone, Deserialize)]
pub struct ReplicationConfig {
    /// Host name, IP address, or a unix-socket directory (starting with `/`).
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub database: String,
    pub user: String,
    /// Needed unless the server trusts the connection.
    #[serde(default)]
    pub password: Option<String>,
    /// The logical replication slot (`[a-z0-9_]`, at most 63 characters).
    #[serde(default = "default_slot_name", alias = "slotName")]
    pub slot_name: String,
    /// The publication streamed from the slot.
    #[serde(default = "default_publication_name", alias = "publicationName")]
    pub publication_name: String,
    /// Tables of the publication, `table` (in `public`) or `schema.table`.
    #[serde(default)]
    pub tables: Vec<String>,
    /// libpq's `sslmode`: disable, prefer (the default), require, verify-ca, verify-full.
    #[serde(default, alias = "sslMode", alias = "sslmode")]
    pub ssl_mode: SslMode,
    /// The CA certificate(s) (PEM) the server's certificate must lead to;
    /// `system` for the operating system's store (the default).
    #[serde(default, alias = "sslRootCert", alias = "sslrootcert")]
    pub ssl_root_cert: Option<PathBuf>,
    /// Reported to the server (visible in `pg_stat_replication`).
    #[serde(default = "default_application_name", alias = "applicationName")]
    pub application_name: String,
    /// Time allowed for connecting and authenticating, in seconds.
    #[serde(default = "default_connect_timeout", alias = "connectTimeoutSecs")]
    pub connect_timeout_secs: u64,
}

fn default_host() -> String {
    "localhost".into()
}
fn default_port() -> u16 {
    5432
}
fn default_slot_name() -> String {
    "sluice_slot".into()
}
fn default_publication_name() -> String {
    "sluice_publication".into()
}
fn default_application_name() -> String {
    "sluice".into()
}
fn default_connect_timeout() -> u64 {
    10
}

impl ReplicationConfig {
    /// A configuration with the defaults for everything but the database and user.
    pub fn new(database: impl Into<String>, user: impl Into<String>) -> Self {
        ReplicationConfig {
            host: default_host(),
            port: default_port(),
            database: database.into(),
            user: user.into(),
            password: None,
            slot_name: default_slot_name(),
            publication_name: default_publication_name(),
            tables: Vec::new(),
            ssl_mode: SslMode::default(),
            ssl_root_cert: None,
            application_name: default_application_name(),
            connect_timeout_secs: default_connect_timeout(),
        }
    }

    /// The TLS settings of `ssl_mode` and `ssl_root_cert`.
    pub fn tls(&self) -> crate::tls::TlsSettings {
        crate::tls::TlsSettings::new(self.ssl_mode, self.ssl_root_cert.clone())
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }

    /// `host:port`, or the socket path for a unix-socket directory. Never contains the password.
    pub fn target(&self) -> String {
        if self.host.starts_with('/') {
            format!("{}/.s.PGSQL.{}", self.host.trim_end_matches('/'), self.port)
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Checks what can be checked without a server.
    pub fn validate(&self) -> Result<()> {
        if self.host.is_empty() {
            return Err(Error::Config("`host` is empty".into()));
        }
        if self.database.is_empty() {
            return Err(Error::Config("`database` is empty".into()));
        }
        if self.user.is_empty() {
            return Err(Error::Config("`user` is empty".into()));
        }
        validate_slot_name(&self.slot_name)?;
        if self.publication_name.is_empty() {
            return Err(Error::Config("`publication_name` is empty".into()));
        }
        for t in &self.tables {
            crate::table::TableName::parse(t)?;
        }
        Ok(())
    }
}

/// Slot names may contain only lower-case letters, digits and `_` (PostgreSQL's own rule).
pub fn validate_slot_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 {
        return Err(Error::Config(format!("slot name {name:?} must have 1 to 63 characters")));
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(Error::Config(format!(
            "slot name {name:?} may contain only lower-case letters, digits and underscores"
        )));
    }
    Ok(())
}

impl fmt::Debug for ReplicationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand: the password must never be printed.
        f.debug_struct("ReplicationConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("slot_name", &self.slot_name)
            .field("publication_name", &self.publication_name)
            .field("tables", &self.tables)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("application_name", &self.application_name)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_drasi_camel_case_and_snake_case() {
        let camel: ReplicationConfig = serde_json::from_str(
            r#"{"host":"db","port":5433,"database":"shop","user":"u","password":"hunter2",
                "slotName":"s1","publicationName":"p1","tables":["orders","inv.items"],"sslMode":"disable"}"#,
        )
        .unwrap();
        assert_eq!(camel.slot_name, "s1");
        assert_eq!(camel.publication_name, "p1");
        assert_eq!(camel.ssl_mode, SslMode::Disable);
        assert_eq!(camel.tables, ["orders", "inv.items"]);
        camel.validate().unwrap();
        let snake: ReplicationConfig =
            serde_json::from_str(r#"{"database":"shop","user":"u","slot_name":"s2","publication_name":"p2"}"#).unwrap();
        assert_eq!((snake.host.as_str(), snake.port), ("localhost", 5432));
        assert_eq!(snake.slot_name, "s2");
        assert_eq!(snake.ssl_mode, SslMode::Prefer);
        let full: ReplicationConfig =
            serde_json::from_str(r#"{"database":"d","user":"u","sslMode":"verify-full","sslRootCert":"/etc/ca.pem"}"#)
                .unwrap();
        assert_eq!(full.ssl_mode, SslMode::VerifyFull);
        assert_eq!(full.ssl_root_cert.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
        assert!(
            serde_json::from_str::<ReplicationConfig>(r#"{"database":"d","user":"u","sslMode":"always"}"#).is_err()
        );
    }

    #[test]
    fn debug_redacts_the_password() {
        let mut config = ReplicationConfig::new("db", "u");
        config.password = Some("hunter2-secret".into());
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn slot_names_are_checked() {
        validate_slot_name("sluice_slot_1").unwrap();
        for bad in ["", "Upper", "with-dash", "a\"b", &"x".repeat(64)] {
            assert!(validate_slot_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn targets() {
        let mut c = ReplicationConfig::new("d", "u");
        assert_eq!(c.target(), "localhost:5432");
        c.host = "/run/postgresql/".into();
        assert_eq!(c.target(), "/run/postgresql/.s.PGSQL.5432");
        c.host = "::1".into();
        assert_eq!(c.target(), "[::1]:5432");
    }
}
