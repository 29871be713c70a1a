//! PostgreSQL: the connection pool, binary parameters, migrations and the
//! batching writer.

pub mod dead_letters;
pub mod migrate;
pub mod tls;
pub mod writer;

pub use sluice_postgres::{encode, rds_iam};

use anyhow::{Context, Result};
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use sluice_replication::tls::TlsSettings;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};
use tokio_postgres::config::Host;

/// Everything needed to open a connection: tokio-postgres's settings, plus
/// the certificate checks and the RDS IAM signing it does not know.
/// Derefs to the tokio-postgres settings. `Debug` never shows a secret.
#[derive(Clone)]
pub struct PgSettings {
    pub pg: tokio_postgres::Config,
    pub tls: TlsSettings,
    /// A fresh IAM token is the password of every new connection.
    pub rds_iam: Option<rds_iam::RdsIam>,
}

impl PgSettings {
    pub fn new(pg: tokio_postgres::Config, tls: TlsSettings, rds_iam: Option<rds_iam::RdsIam>) -> PgSettings {
        PgSettings { pg, tls, rds_iam }
    }

    /// The tokio-postgres settings of one new connection (its IAM token signed now).
    fn for_connect(&self) -> tokio_postgres::Config {
        let mut pg = self.pg.clone();
        pg.ssl_mode(tls::driver_mode(&self.tls, pg.get_hosts()));
        if let Some(iam) = &self.rds_iam {
            let host = match pg.get_hosts().first() {
                Some(Host::Tcp(host)) => host.clone(),
                _ => String::new(),
            };
            let port = pg.get_ports().first().copied().unwrap_or(5432);
            let user = pg.get_user().unwrap_or_default().to_owned();
            pg.password(iam.token(&host, port, &user, SystemTime::now()));
        }
        pg
    }
}

impl std::ops::Deref for PgSettings {
    type Target = tokio_postgres::Config;
    fn deref(&self) -> &tokio_postgres::Config {
        &self.pg
    }
}

impl std::ops::DerefMut for PgSettings {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.pg
    }
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio_postgres::Config's Debug redacts the password.
        f.debug_struct("PgSettings")
            .field("pg", &self.pg)
            .field("sslmode", &self.tls.mode)
            .field("sslrootcert", &self.tls.root_cert)
            .field("rds_iam", &self.rds_iam)
            .finish()
    }
}

/// Opens connections for a pool: TLS as configured, a fresh IAM token each time.
struct Connector {
    settings: PgSettings,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl deadpool_postgres::Connect for Connector {
    fn connect(
        &self,
        _: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>> {
        let pg = self.settings.for_connect();
        Box::pin(async move { spawn_connection(&pg, self.tls.clone()).await })
    }
}

async fn spawn_connection(
    pg: &tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let log = |e: tokio_postgres::Error| tracing::warn!("database connection closed: {e}");
    // The TLS connector needs a host name even when it will not be used (a unix socket).
    let tls = tls.filter(|_| pg.get_ssl_mode() != tokio_postgres::config::SslMode::Disable);
    Ok(match tls {
        Some(tls) => {
            let (client, connection) = pg.connect(tls).await?;
            (client, tokio::spawn(async move { connection.await.unwrap_or_else(log) }))
        }
        None => {
            let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
            (client, tokio::spawn(async move { connection.await.unwrap_or_else(log) }))
        }
    })
}

/// How long a pooled connection is used before it is closed and replaced,
/// give or take a tenth (so a pool's connections do not all end at once).
/// A session keeps the settings it started with (a role's
/// `statement_timeout`, say); this bounds how long a change on the server
/// takes to reach every connection.
pub const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// A pool of `size` connections. Connections are opened lazily, so this
/// succeeds while the server is down (but not with an unreadable root
/// certificate file).
///
/// The pool's rules: a connection is opened when one is needed and none is
/// idle; a connection the driver saw close is replaced when next taken; one
/// older than [`MAX_CONNECTION_LIFETIME`] is closed instead of reused; and a
/// connection on which a statement failed is closed by its user
/// ([`discard`]), never returned with unknown session state.
pub fn pool(settings: PgSettings, size: usize, wait: Duration) -> Result<Pool> {
    let tls = tls::connector(&settings.tls)?;
    let pg = settings.pg.clone();
    let manager = Manager::from_connect(
        pg,
        Connector { settings, tls },
        ManagerConfig { recycling_method: RecyclingMethod::Fast },
    );
    Ok(Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(wait))
        .recycle_timeout(Some(wait))
        .pre_recycle(Hook::sync_fn(|_, metrics| {
            if metrics.age() >= lifetime_of(metrics.created) {
                return Err(HookError::Message("the connection reached its maximum lifetime".into()));
            }
            Ok(())
        }))
        .build()?)
}

/// A connection's lifetime: [`MAX_CONNECTION_LIFETIME`] less up to a tenth,
/// chosen by when it was made.
fn lifetime_of(created: std::time::Instant) -> Duration {
    let spread = MAX_CONNECTION_LIFETIME / 10;
    let seed = created.duration_since(*PROCESS_START.get_or_init(std::time::Instant::now)).subsec_nanos();
    MAX_CONNECTION_LIFETIME - spread.mul_f64(f64::from(seed % 1000) / 1000.0)
}

/// Sluice's own schema in the service database: the tenant registry, the
/// fleet's hosts, the query roles' passwords. Created by Sluice's login, so
/// PUBLIC (and every tenant's reader role) has no USAGE on it.
pub const INTERNAL_SCHEMA: &str = "_sluice";

static PROCESS_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Closes a pooled connection instead of returning it to its pool: after a
/// failed statement its session may hold an aborted transaction, a pending
/// error the driver never read, or settings of an older session; a new
/// connection holds none of these.
pub fn discard(client: deadpool_postgres::Object) {
    drop(deadpool_postgres::Object::take(client));
}

/// Commits a transaction, failing unless the server committed it.
///
/// `Transaction::commit` takes any answer to `COMMIT` without an error as
/// success. But PostgreSQL answers the `COMMIT` of an aborted transaction
/// with the tag `ROLLBACK` and no error, and a transaction can be aborted by
/// an error the driver never read: a statement timeout or cancel that fires
/// after a statement's `CommandComplete` (between a `COPY`'s end and the
/// `Sync` that follows it, say) is dropped with the finished statement. So
/// a statement goes first: in an aborted transaction it fails with 25P02,
/// and the transaction is not acknowledged.
pub trait CommitChecked {
    fn commit_checked(self) -> impl Future<Output = Result<(), tokio_postgres::Error>> + Send;
}

impl CommitChecked for tokio_postgres::Transaction<'_> {
    async fn commit_checked(self) -> Result<(), tokio_postgres::Error> {
        self.batch_execute(STILL_OPEN).await?;
        self.commit().await
    }
}

impl CommitChecked for deadpool_postgres::Transaction<'_> {
    async fn commit_checked(self) -> Result<(), tokio_postgres::Error> {
        self.batch_execute(STILL_OPEN).await?;
        self.commit().await
    }
}

/// Fails in a transaction that is aborted, and costs nothing otherwise.
const STILL_OPEN: &str = "SELECT";

/// One connection, outside any pool (its task ends when the client drops).
pub async fn connect(settings: &PgSettings) -> Result<tokio_postgres::Client> {
    let tls = tls::connector(&settings.tls)?;
    let (client, _task) = spawn_connection(&settings.for_connect(), tls).await.context("connect to the database")?;
    Ok(client)
}

/// One connection that `LISTEN`s on `channel`, and the payloads of the
/// notifications it receives. The receiver ends when the connection does
/// (the caller reconnects, and must assume it missed notifications).
pub async fn listen(
    settings: &PgSettings,
    channel: &str,
) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<String>)> {
    let pg = settings.for_connect();
    let tls = tls::connector(&settings.tls)?.filter(|_| pg.get_ssl_mode() != tokio_postgres::config::SslMode::Disable);
    let (sender, notifications) = tokio::sync::mpsc::unbounded_channel();
    let client = match tls {
        Some(tls) => {
            let (client, connection) = pg.connect(tls).await.context("connect to the database")?;
            tokio::spawn(forward_notifications(connection, sender));
            client
        }
        None => {
            let (client, connection) = pg.connect(tokio_postgres::NoTls).await.context("connect to the database")?;
            tokio::spawn(forward_notifications(connection, sender));
            client
        }
    };
    client.batch_execute(&format!("LISTEN {}", sluice_sdk::sql::quote_ident(channel))).await?;
    Ok((client, notifications))
}

/// Drives a connection, passing on its notifications until it closes.
async fn forward_notifications<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    sender: tokio::sync::mpsc::UnboundedSender<String>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
        match message {
            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                if sender.send(n.payload().to_owned()).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("database connection closed: {e}");
                return;
            }
        }
    }
}

/// Cancels what the connection of `token` is running, through a
/// connection of its own made with `settings` (TLS as configured).
pub async fn cancel(settings: &PgSettings, token: tokio_postgres::CancelToken) -> Result<()> {
    // The token knows the connection's sslmode; a connector is only used
    // where that asks for TLS.
    match tls::connector(&settings.tls)? {
        Some(tls) => token.cancel_query(tls).await?,
        None => token.cancel_query(tokio_postgres::NoTls).await?,
    }
    Ok(())
}

/// Whether `e` says the database could not be reached (or is starting or
/// stopping), rather than that it refused what was asked.
pub fn is_unreachable(e: &anyhow::Error) -> bool {
    sluice_postgres::failure::classify_chain(e.chain()).is_some_and(sluice_postgres::Kind::is_unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_replication::tls::SslMode;

    #[test]
    fn each_connection_signs_its_own_iam_token_and_unix_sockets_stay_plain() {
        let mut pg = tokio_postgres::Config::new();
        pg.host("db.abc.eu-west-1.rds.amazonaws.com").port(5432).user("writer");
        let iam = rds_iam::RdsIam {
            region: "eu-west-1".into(),
            credentials: rds_iam::Credentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: crate::config::Secret("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
                session_token: None,
            },
        };
        let settings = PgSettings::new(pg, TlsSettings::new(SslMode::Require, None), Some(iam));
        let connect = settings.for_connect();
        let token = std::str::from_utf8(connect.get_password().unwrap()).unwrap().to_owned();
        assert!(token.starts_with("db.abc.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=writer&"), "{token}");
        assert!(token.contains("%2Feu-west-1%2Frds-db%2Faws4_request"), "{token}");
        assert_eq!(connect.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        // The settings kept by the pool hold no token; each connect makes one.
        assert!(settings.get_password().is_none());
        assert!(!format!("{settings:?}").contains("EXAMPLEKEY"));

        let mut unix = tokio_postgres::Config::new();
        unix.host("/run/postgresql");
        let settings = PgSettings::new(unix, TlsSettings::new(SslMode::VerifyFull, None), None);
        assert_eq!(settings.for_connect().get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
    }
}
