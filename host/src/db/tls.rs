//! TLS for the host's connections (writer, tenant and query pools, the
//! `migrate` command), with libpq's `sslmode` meanings: see
//! [`sluice_replication::tls`].

use anyhow::Result;
use sluice_replication::tls::{SslMode, TlsSettings};
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

/// What tokio-postgres is told: `disable`, `prefer` or `require` (the
/// certificate checks live in the rustls configuration).
pub fn driver_mode(settings: &TlsSettings, hosts: &[Host]) -> tokio_postgres::config::SslMode {
    // As libpq: a unix socket is never encrypted, whatever sslmode says.
    if !hosts.is_empty() && hosts.iter().all(|h| matches!(h, Host::Unix(_))) {
        return tokio_postgres::config::SslMode::Disable;
    }
    match settings.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    }
}

/// The connector, `None` for `disable`. Reads the root certificate file.
pub fn connector(settings: &TlsSettings) -> Result<Option<MakeRustlsConnect>> {
    Ok(settings.client_config()?.map(|config| MakeRustlsConnect::new((*config).clone())))
}

/// A plain SQL connection with `tls`'s settings (e.g. beside a replication
/// connection, to the same source): the client and its connection's task.
pub async fn connect_spawned(
    mut pg: tokio_postgres::Config,
    tls: &TlsSettings,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>)> {
    pg.ssl_mode(driver_mode(tls, pg.get_hosts()));
    let connector = connector(tls)?.filter(|_| pg.get_ssl_mode() != tokio_postgres::config::SslMode::Disable);
    Ok(match connector {
        Some(connector) => {
            let (client, connection) = pg.connect(connector).await?;
            (client, tokio::spawn(connection))
        }
        None => {
            let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
            (client, tokio::spawn(connection))
        }
    })
}
