//! The replication connection before streaming: startup, authentication,
//! simple queries and replication commands.

use std::collections::HashMap;
use std::sync::Arc;

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::escape::{escape_identifier, escape_literal};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{ReplicationConfig, validate_slot_name};
use crate::conn::{Backend, Conn, Socket, db_error, log_notice};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::table::TableName;

/// Session settings sent at startup. They fix the text form of the values
/// pgoutput sends (it prints them with the walsender session's settings), so
/// that [`crate::pgoutput::Value::from_text`] sees one known shape per type.
const SESSION_SETTINGS: [(&str, &str); 6] = [
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

/// A connection in logical replication mode (`replication=database`): it
/// accepts replication commands and plain SQL, until
/// [`start_replication`](ReplicationClient::start_replication) turns it into a stream.
pub struct ReplicationClient<S = Socket> {
    pub(crate) conn: Conn<S>,
    params: HashMap<String, String>,
    server_version_num: u32,
    backend_pid: Option<i32>,
}

impl<S> std::fmt::Debug for ReplicationClient<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("server_version_num", &self.server_version_num)
            .field("backend_pid", &self.backend_pid)
            .finish_non_exhaustive()
    }
}

/// A row of a simple query: every value in text form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Option<String>>,
}

impl Row {
    pub fn columns(&self) -> &[String] {
        &self.columns
    }
    /// The value of column `idx`; `None` for NULL or a missing column.
    pub fn get(&self, idx: usize) -> Option<&str> {
        self.values.get(idx).and_then(|v| v.as_deref())
    }
    /// The value of the column named `name`; `None` for NULL or a missing column.
    pub fn get_by_name(&self, name: &str) -> Option<&str> {
        self.columns.iter().position(|c| c == name).and_then(|i| self.get(i))
    }
}

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifySystem {
    pub system_id: String,
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    pub dbname: Option<String>,
}

/// What `CREATE_REPLICATION_SLOT` does with the snapshot at the slot's consistent point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Export it (its name is returned): another connection can read the
    /// data as of the slot's start with `SET TRANSACTION SNAPSHOT`, until the
    /// next command on this connection.
    Export,
    /// Use it in the current transaction of this connection.
    Use,
    /// Neither.
    NoExport,
}

/// A slot just created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    pub slot_name: String,
    /// Changes committed after this point are streamed; those before are in the snapshot.
    pub consistent_point: Lsn,
    pub snapshot_name: Option<String>,
    pub output_plugin: Option<String>,
}

/// A row of `pg_replication_slots`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot_name: String,
    pub plugin: Option<String>,
    pub slot_type: String,
    pub database: Option<String>,
    pub active: bool,
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush_lsn: Option<Lsn>,
}

/// The outcome of [`ReplicationClient::ensure_slot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnsuredSlot {
    /// The slot was there (no snapshot: its past changes are not re-read).
    Existing(SlotInfo),
    /// The slot was made, with an exported snapshot for the initial read.
    Created(CreatedSlot),
}

impl ReplicationClient<Socket> {
    /// Connects over TCP (or a unix socket when `host` starts with `/`) and
    /// authenticates (trust, cleartext password, MD5 or SCRAM-SHA-256).
    pub async fn connect(config: &ReplicationConfig) -> Result<ReplicationClient<Socket>> {
        config.validate()?;
        // Read the root file (and fail on it) before touching the network.
        let tls = config.tls().client_config()?;
        let target = config.target();
        let connect = async {
            let socket = if config.host.starts_with('/') {
                // As libpq: no TLS over a unix socket, whatever sslmode says.
                UnixStream::connect(&target).await.map(Socket::Unix)
            } else {
                match TcpStream::connect((config.host.as_str(), config.port)).await {
                    Ok(s) => {
                        // Status updates are small and latency-sensitive.
                        let _ = s.set_nodelay(true);
                        start_tls(s, config, tls).await
                    }
                    Err(e) => Err(e),
                }
            };
            let socket = socket.map_err(|source| Error::Connect { target: target.clone(), source })?;
            ReplicationClient::handshake(socket, config).await
        };
        tokio::time::timeout(config.connect_timeout(), connect)
            .await
            .map_err(|_| Error::ConnectTimeout(target.clone()))?
    }
}

/// Asks the server for TLS (`SSLRequest`) and does the handshake before the
/// startup message; `prefer` stays plain when the server says no.
async fn start_tls(
    mut tcp: TcpStream,
    config: &ReplicationConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> std::io::Result<Socket> {
    let Some(tls) = tls else { return Ok(Socket::Tcp(tcp)) };
    let mut request = bytes::BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {}
        b'N' if config.ssl_mode.allows_plain() => {
            tracing::debug!("the server does not offer TLS; connecting without it (sslMode=prefer)");
            return Ok(Socket::Tcp(tcp));
        }
        b'N' => {
            return Err(std::io::Error::other(format!(
                "sslMode={} but the server does not accept TLS connections",
                config.ssl_mode
            )));
        }
        other => {
            return Err(std::io::Error::other(format!("unexpected answer {other:#04x} to the TLS request")));
        }
    }
    let name = crate::tls::server_name(&config.host).map_err(std::io::Error::other)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake (sslMode={}): {e}", config.ssl_mode)))?;
    Ok(Socket::Tls(Box::new(stream)))
}

impl<S: AsyncRead + AsyncWrite + Unpin> ReplicationClient<S> {
    /// Runs the startup and authentication over an already open stream (a TLS
    /// stream, for instance). Unlike [`connect`](ReplicationClient::connect),
    /// it sets no time limit: wrap it in `tokio::time::timeout` if needed.
    pub async fn handshake(io: S, config: &ReplicationConfig) -> Result<ReplicationClient<S>> {
        let mut client =
            ReplicationClient { conn: Conn::new(io), params: HashMap::new(), server_version_num: 0, backend_pid: None };
        let mut params = vec![
            ("user", config.user.as_str()),
            ("database", config.database.as_str()),
            ("replication", "database"),
            ("application_name", config.application_name.as_str()),
        ];
        params.extend(SESSION_SETTINGS);
        frontend::startup_message(params, &mut client.conn.wbuf)?;
        client.conn.flush().await?;
        client.authenticate(config).await?;
        loop {
            match client.conn.read().await? {
                Backend::Msg(Message::ReadyForQuery(_)) => break,
                Backend::Msg(Message::ParameterStatus(body)) => {
                    let (name, value) = (body.name()?.to_string(), body.value()?.to_string());
                    client.params.insert(name, value);
                }
                Backend::Msg(Message::BackendKeyData(body)) => client.backend_pid = Some(body.process_id()),
                Backend::Msg(Message::ErrorResponse(body)) => return Err(db_error(&body)),
                Backend::Msg(Message::NoticeResponse(body)) => log_notice(&body),
                other => return Err(Error::protocol(format!("unexpected {} during startup", other.name()))),
            }
        }
        client.server_version_num = client.params.get("server_version").map_or(0, |v| parse_server_version(v));
        tracing::debug!(server_version_num = client.server_version_num, "replication connection ready");
        Ok(client)
    }

    async fn authenticate(&mut self, config: &ReplicationConfig) -> Result<()> {
        let password = || {
            config.password.as_deref().ok_or_else(|| {
                Error::Auth(format!("the server asks user {:?} for a password, and none is configured", config.user))
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let Backend::Msg(msg) = self.conn.read().await? else {
                return Err(Error::protocol("unexpected CopyBothResponse during authentication"));
            };
            match msg {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut self.conn.wbuf)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(config.user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.conn.wbuf)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = Vec::new();
                    while let Some(m) = mechanisms.next()? {
                        offered.push(m.to_string());
                    }
                    // SCRAM-SHA-256-PLUS needs TLS channel binding; plain SCRAM is what is left.
                    if !offered.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                        return Err(Error::Auth(format!("the server offers only SASL mechanisms {offered:?}")));
                    }
                    let state = sasl::ScramSha256::new(password()?.as_bytes(), sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, state.message(), &mut self.conn.wbuf)?;
                    scram = Some(state);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let state = scram.as_mut().ok_or_else(|| Error::protocol("SASL continue without SASL start"))?;
                    state.update(body.data()).map_err(|e| Error::Auth(format!("bad SCRAM server message: {e}")))?;
                    frontend::sasl_response(state.message(), &mut self.conn.wbuf)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let state = scram.as_mut().ok_or_else(|| Error::protocol("SASL final without SASL start"))?;
                    state
                        .finish(body.data())
                        .map_err(|e| Error::Auth(format!("the server's SCRAM signature is not valid: {e}")))?;
                    continue;
                }
                Message::ErrorResponse(body) => return Err(db_error(&body)),
                Message::NoticeResponse(body) => {
                    log_notice(&body);
                    continue;
                }
                Message::AuthenticationKerberosV5
                | Message::AuthenticationGss
                | Message::AuthenticationSspi
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGssContinue(_) => {
                    return Err(Error::Auth(
                        "the server asks for Kerberos/GSSAPI/SSPI authentication, which is not supported".into(),
                    ));
                }
                _ => return Err(Error::protocol("unexpected message during authentication")),
            }
            self.conn.flush().await?;
        }
    }

    /// A run-time parameter the server reported (`server_version`, `TimeZone`…).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The server version as a number: 150020 for 15.20 (0 when unknown).
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// The process id of the walsender serving this connection.
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Runs `sql` with the simple query protocol (one or more statements, or a
    /// replication command) and returns the rows of all result sets, in text form.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>> {
        frontend::query(sql, &mut self.conn.wbuf)?;
        self.conn.flush().await?;
        let mut rows = Vec::new();
        let mut columns: Arc<[String]> = Arc::from(Vec::new());
        loop {
            match self.conn.read().await? {
                Backend::Msg(Message::RowDescription(body)) => {
                    columns = body.fields().map(|f| Ok(f.name().to_string())).collect::<Vec<_>>()?.into();
                }
                Backend::Msg(Message::DataRow(body)) => {
                    let buf = body.buffer();
                    let values = body
                        .ranges()
                        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
                        .collect::<Vec<_>>()?;
                    rows.push(Row { columns: columns.clone(), values });
                }
                Backend::Msg(Message::CommandComplete(_) | Message::EmptyQueryResponse) => {}
                Backend::Msg(Message::ReadyForQuery(_)) => return Ok(rows),
                Backend::Msg(Message::ErrorResponse(body)) => {
                    let error = db_error(&body);
                    self.conn.drain_to_ready(Some(error)).await?;
                    unreachable!("drain_to_ready returns the error");
                }
                Backend::Msg(Message::NoticeResponse(body)) => log_notice(&body),
                Backend::Msg(Message::ParameterStatus(body)) => {
                    self.params.insert(body.name()?.to_string(), body.value()?.to_string());
                }
                Backend::Msg(Message::CopyInResponse(_)) => {
                    frontend::copy_fail("COPY is not supported on this connection", &mut self.conn.wbuf)?;
                    self.conn.flush().await?;
                }
                Backend::Msg(Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone) => {}
                Backend::CopyBoth => {
                    return Err(Error::protocol("the server started streaming in answer to a simple query"));
                }
                other => {
                    return Err(Error::protocol(format!("unexpected {} in answer to a simple query", other.name())));
                }
            }
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows.first().ok_or_else(|| Error::protocol("IDENTIFY_SYSTEM returned no row"))?;
        Ok(IdentifySystem {
            system_id: required(row, 0, "systemid")?.to_string(),
            timeline: required(row, 1, "timeline")?
                .parse()
                .map_err(|_| Error::protocol("IDENTIFY_SYSTEM: bad timeline"))?,
            xlogpos: parse_lsn(required(row, 2, "xlogpos")?)?,
            dbname: row.get(3).map(str::to_string),
        })
    }

    /// `CREATE_REPLICATION_SLOT name LOGICAL pgoutput` with the snapshot
    /// option (PostgreSQL 15 syntax, or the older keywords on older servers).
    pub async fn create_replication_slot(&mut self, slot_name: &str, snapshot: SnapshotAction) -> Result<CreatedSlot> {
        validate_slot_name(slot_name)?;
        let option = if self.server_version_num >= 150_000 {
            match snapshot {
                SnapshotAction::Export => " (SNAPSHOT 'export')",
                SnapshotAction::Use => " (SNAPSHOT 'use')",
                SnapshotAction::NoExport => " (SNAPSHOT 'nothing')",
            }
        } else {
            match snapshot {
                SnapshotAction::Export => " EXPORT_SNAPSHOT",
                SnapshotAction::Use => " USE_SNAPSHOT",
                SnapshotAction::NoExport => " NOEXPORT_SNAPSHOT",
            }
        };
        let sql = format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput{option}", escape_identifier(slot_name));
        let rows = self.simple_query(&sql).await?;
        let row = rows.first().ok_or_else(|| Error::protocol("CREATE_REPLICATION_SLOT returned no row"))?;
        Ok(CreatedSlot {
            slot_name: required(row, 0, "slot_name")?.to_string(),
            consistent_point: parse_lsn(required(row, 1, "consistent_point")?)?,
            snapshot_name: row.get(2).map(str::to_string),
            output_plugin: row.get(3).map(str::to_string),
        })
    }

    /// `DROP_REPLICATION_SLOT`; with `wait`, waits for an active slot to become free instead of failing.
    pub async fn drop_replication_slot(&mut self, slot_name: &str, wait: bool) -> Result<()> {
        validate_slot_name(slot_name)?;
        let sql = format!("DROP_REPLICATION_SLOT {}{}", escape_identifier(slot_name), if wait { " WAIT" } else { "" });
        self.simple_query(&sql).await.map(drop)
    }

    /// The slot's row of `pg_replication_slots`, if it exists.
    pub async fn replication_slot(&mut self, slot_name: &str) -> Result<Option<SlotInfo>> {
        let sql = format!(
            "SELECT slot_name, plugin, slot_type, database, active, restart_lsn, confirmed_flush_lsn \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            escape_literal(slot_name)
        );
        let rows = self.simple_query(&sql).await?;
        let Some(row) = rows.first() else { return Ok(None) };
        Ok(Some(SlotInfo {
            slot_name: required(row, 0, "slot_name")?.to_string(),
            plugin: row.get(1).map(str::to_string),
            slot_type: required(row, 2, "slot_type")?.to_string(),
            database: row.get(3).map(str::to_string),
            active: row.get(4) == Some("t"),
            restart_lsn: row.get(5).map(parse_lsn).transpose()?,
            confirmed_flush_lsn: row.get(6).map(parse_lsn).transpose()?,
        }))
    }

    /// Reuses the slot when it exists (it must be a pgoutput slot of this
    /// database), else creates it with an exported snapshot.
    pub async fn ensure_slot(&mut self, slot_name: &str) -> Result<EnsuredSlot> {
        if let Some(info) = self.replication_slot(slot_name).await? {
            let database = self.simple_query("SELECT current_database()").await?;
            let database = database.first().and_then(|r| r.get(0)).map(str::to_string);
            if info.slot_type != "logical" || info.plugin.as_deref() != Some("pgoutput") || info.database != database {
                return Err(Error::Config(format!(
                    "replication slot {slot_name:?} exists but is not a pgoutput slot of database {:?} \
                     (type {}, plugin {:?}, database {:?})",
                    database.unwrap_or_default(),
                    info.slot_type,
                    info.plugin,
                    info.database
                )));
            }
            return Ok(EnsuredSlot::Existing(info));
        }
        Ok(EnsuredSlot::Created(self.create_replication_slot(slot_name, SnapshotAction::Export).await?))
    }

    /// Whether the publication exists in the connected database.
    pub async fn publication_exists(&mut self, name: &str) -> Result<bool> {
        let sql = format!("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {}", escape_literal(name));
        Ok(!self.simple_query(&sql).await?.is_empty())
    }

    /// Creates the publication `FOR TABLE …` unless it exists; returns whether it was created.
    /// An existing publication is left as it is.
    pub async fn ensure_publication(&mut self, name: &str, tables: &[String]) -> Result<bool> {
        if self.publication_exists(name).await? {
            return Ok(false);
        }
        if tables.is_empty() {
            return Err(Error::Config(format!("publication {name:?} does not exist and no `tables` are configured")));
        }
        let tables = tables.iter().map(|t| TableName::parse(t).map(|t| t.quoted())).collect::<Result<Vec<_>>>()?;
        let sql = format!("CREATE PUBLICATION {} FOR TABLE {}", escape_identifier(name), tables.join(", "));
        self.simple_query(&sql).await?;
        tracing::info!(publication = name, "created the publication");
        Ok(true)
    }

    /// Ends the session politely (`Terminate`).
    pub async fn close(mut self) -> Result<()> {
        frontend::terminate(&mut self.conn.wbuf);
        self.conn.flush().await
    }
}

fn required<'a>(row: &'a Row, idx: usize, what: &str) -> Result<&'a str> {
    row.get(idx).ok_or_else(|| Error::protocol(format!("missing {what} in the server's answer")))
}

fn parse_lsn(text: &str) -> Result<Lsn> {
    text.parse().map_err(|e| Error::protocol(format!("{e}")))
}

/// `15.20 (Debian …)` → 150020, `9.6.3` → 90603, `16beta1` → 160000.
pub(crate) fn parse_server_version(text: &str) -> u32 {
    let version = text.split_whitespace().next().unwrap_or("");
    let mut nums = version.split('.').map(|part| {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().unwrap_or(0)
    });
    let major = nums.next().unwrap_or(0);
    let minor = nums.next().unwrap_or(0);
    if major >= 10 {
        major * 10_000 + minor
    } else {
        let patch = nums.next().unwrap_or(0);
        major * 10_000 + minor * 100 + patch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions() {
        assert_eq!(parse_server_version("15.20 (Debian 15.20-0+deb12u1)"), 150_020);
        assert_eq!(parse_server_version("9.6.3"), 90_603);
        assert_eq!(parse_server_version("16beta1"), 160_000);
        assert_eq!(parse_server_version("14.0"), 140_000);
    }
}
