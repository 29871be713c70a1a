//! The streaming phase (CopyBoth) of a logical replication connection.
//!
//! Each `CopyData` from the server is either
//! - `XLogData` (`w`): WAL start, WAL end, send time, then one pgoutput message; or
//! - a primary keepalive (`k`): the server's WAL end, its time, and whether it
//!   wants an answer now (it drops the connection after `wal_sender_timeout`
//!   without one).
//!
//! The client answers with standby status updates (`r`): written, flushed and
//! applied positions. For a logical slot, *flushed* becomes the slot's
//! `confirmed_flush_lsn`: transactions that committed at or before it are
//! never sent again, and the WAL before the slot's restart point can be
//! recycled. So the flushed position is only ever what the caller confirmed
//! with [`ReplicationStream::confirm`], once it has made a transaction's
//! effects durable: that is what exactly-once rests on.
//!
//! A slot whose publication sees no changes still needs its position to move
//! (or it holds WAL forever). When everything handed to the caller has been
//! confirmed and no transaction is open, the WAL end of a keepalive is
//! confirmed on its own: the server sends a keepalive only after everything
//! before that position, so nothing unconfirmed lies behind it. (This is what
//! PostgreSQL's own apply worker does.)
//!
//! Status updates go out when the server asks, every `status_interval`, and
//! on [`ReplicationStream::send_status_now`].

use std::collections::HashSet;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use postgres_protocol::escape::escape_identifier;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::client::ReplicationClient;
use crate::config::validate_slot_name;
use crate::conn::{Backend, Socket, db_error, log_notice};
use crate::error::{Error, Result};
use crate::lsn::{Lsn, pg_now, pg_to_unix_micros};
use crate::pgoutput::{Decoder, Message as PgMessage};

/// What [`ReplicationStream::recv`] returns.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A decoded pgoutput message.
    Data {
        /// The WAL position of the message.
        wal_start: Lsn,
        /// The server's WAL end when it was sent.
        wal_end: Lsn,
        /// When the server sent it, µs since the Unix epoch.
        send_time: i64,
        message: PgMessage,
    },
    /// A primary keepalive (already answered when it asked for a reply).
    Keepalive { wal_end: Lsn, send_time: i64, reply_requested: bool },
}

/// A logical replication stream; made by [`ReplicationClient::start_replication`].
pub struct ReplicationStream<S = Socket> {
    client: ReplicationClient<S>,
    decoder: Decoder,
    protocol_version: u32,
    streaming: bool,
    /// Highest WAL position received (messages and keepalives): the "written" position.
    received: Lsn,
    /// The WAL end of the last keepalive.
    server_wal_end: Lsn,
    /// What the caller confirmed: the "flushed" and "applied" positions.
    confirmed: Lsn,
    /// The end LSN of the last commit handed to the caller.
    last_commit_end: Lsn,
    /// Between Begin and Commit.
    in_transaction: bool,
    /// Streamed transactions started and not yet committed or aborted.
    open_streams: HashSet<u32>,
    status_interval: Duration,
    next_status: Instant,
    ended: bool,
}

impl<S> std::fmt::Debug for ReplicationStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("protocol_version", &self.protocol_version)
            .field("streaming", &self.streaming)
            .field("received", &self.received)
            .field("confirmed", &self.confirmed)
            .field("server_wal_end", &self.server_wal_end)
            .finish_non_exhaustive()
    }
}

/// Options of `START_REPLICATION`.
#[derive(Clone, Debug)]
pub struct StartOptions {
    pub slot_name: String,
    /// Where to start; `0/0` starts at the slot's `confirmed_flush_lsn`. The
    /// server never sends transactions that committed before the slot's
    /// `confirmed_flush_lsn`, whatever this says.
    pub start_lsn: Lsn,
    pub publication_names: Vec<String>,
    /// Ask for logical decoding messages (`pg_logical_emit_message`).
    pub messages: bool,
    /// Ask for large in-progress transactions to be streamed (used only where
    /// the server supports it: PostgreSQL 14+).
    pub streaming: bool,
    /// How often a standby status update is sent when nothing else prompts one.
    pub status_interval: Duration,
}

impl StartOptions {
    pub fn new(slot_name: impl Into<String>, publication: impl Into<String>) -> Self {
        StartOptions {
            slot_name: slot_name.into(),
            start_lsn: Lsn::INVALID,
            publication_names: vec![publication.into()],
            messages: true,
            streaming: true,
            status_interval: Duration::from_secs(10),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ReplicationClient<S> {
    /// Sends `START_REPLICATION … LOGICAL` and turns the connection into a
    /// stream. Protocol version 2 with streaming of large transactions on
    /// PostgreSQL 14+, version 1 without streaming before.
    pub async fn start_replication(mut self, options: StartOptions) -> Result<ReplicationStream<S>> {
        validate_slot_name(&options.slot_name)?;
        if options.publication_names.is_empty() {
            return Err(Error::Config("START_REPLICATION needs at least one publication".into()));
        }
        let v2 = self.server_version_num() >= 140_000;
        let streaming = options.streaming && v2;
        let mut args = vec![format!("proto_version '{}'", if v2 { 2 } else { 1 })];
        let publications: Vec<String> = options.publication_names.iter().map(|p| escape_identifier(p)).collect();
        args.push(format!("publication_names {}", repl_literal(&publications.join(","))?));
        if streaming {
            args.push("streaming 'on'".into());
        }
        if options.messages {
            args.push("messages 'true'".into());
        }
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} ({})",
            escape_identifier(&options.slot_name),
            options.start_lsn,
            args.join(", ")
        );
        tracing::debug!(command = %sql, "starting replication");
        frontend::query(&sql, &mut self.conn.wbuf)?;
        self.conn.flush().await?;
        loop {
            match self.conn.read().await? {
                Backend::CopyBoth => break,
                Backend::Msg(Message::ErrorResponse(body)) => {
                    let error = db_error(&body);
                    self.conn.drain_to_ready(Some(error)).await?;
                    unreachable!("drain_to_ready returns the error");
                }
                Backend::Msg(Message::NoticeResponse(body)) => log_notice(&body),
                Backend::Msg(Message::ParameterStatus(_)) => {}
                other => {
                    return Err(Error::protocol(format!("unexpected {} in answer to START_REPLICATION", other.name())));
                }
            }
        }
        Ok(ReplicationStream::new(self, options.start_lsn, options.status_interval, if v2 { 2 } else { 1 }, streaming))
    }
}

/// A string literal for the replication command grammar, which knows only
/// `'…'` with doubled quotes (no `E''`, backslashes are plain characters).
fn repl_literal(s: &str) -> Result<String> {
    if s.contains('\0') {
        return Err(Error::Config("names may not contain NUL".into()));
    }
    Ok(format!("'{}'", s.replace('\'', "''")))
}

impl<S: AsyncRead + AsyncWrite + Unpin> ReplicationStream<S> {
    pub(crate) fn new(
        client: ReplicationClient<S>,
        start_lsn: Lsn,
        status_interval: Duration,
        protocol_version: u32,
        streaming: bool,
    ) -> Self {
        let status_interval = status_interval.max(Duration::from_millis(10));
        ReplicationStream {
            client,
            decoder: Decoder::new(),
            protocol_version,
            streaming,
            received: start_lsn,
            server_wal_end: start_lsn,
            // Starting at an LSN means everything before it is done with.
            confirmed: start_lsn,
            last_commit_end: start_lsn,
            in_transaction: false,
            open_streams: HashSet::new(),
            status_interval,
            next_status: Instant::now() + status_interval,
            ended: false,
        }
    }

    /// The next event; `None` once the server ended the stream.
    ///
    /// Sends the status updates that fall due while waiting. Cancel-safe: a
    /// cancelled call loses no data message (a keepalive may be skipped) and
    /// a half-written status update is completed by the next call.
    pub async fn recv(&mut self) -> Result<Option<Event>> {
        loop {
            self.client.conn.flush().await?;
            if self.ended {
                return Ok(None);
            }
            if let Some(backend) = self.client.conn.try_parse()? {
                match backend {
                    Backend::Msg(Message::CopyData(body)) => {
                        if let Some(event) = self.handle_copy_data(body.into_bytes())? {
                            if matches!(event, Event::Keepalive { reply_requested: true, .. }) {
                                self.client.conn.flush().await?;
                            }
                            return Ok(Some(event));
                        }
                        continue;
                    }
                    Backend::Msg(Message::CopyDone) => {
                        // The server ends streaming (shutdown, or the slot was dropped): finish the copy.
                        self.ended = true;
                        frontend::copy_done(&mut self.client.conn.wbuf);
                        self.client.conn.flush().await?;
                        self.client.conn.drain_to_ready(None).await?;
                        return Ok(None);
                    }
                    Backend::Msg(Message::CommandComplete(_)) => {
                        // The server left streaming without a CopyDone: PostgreSQL does so
                        // when START_REPLICATION is run a second time on one connection.
                        self.ended = true;
                        self.client.conn.drain_to_ready(None).await?;
                        return Ok(None);
                    }
                    Backend::Msg(Message::ErrorResponse(body)) => return Err(db_error(&body)),
                    Backend::Msg(Message::NoticeResponse(body)) => {
                        log_notice(&body);
                        continue;
                    }
                    Backend::Msg(Message::ParameterStatus(_)) => continue,
                    other => return Err(Error::protocol(format!("unexpected {} while streaming", other.name()))),
                }
            }
            if Instant::now() >= self.next_status {
                self.queue_status(false);
                continue;
            }
            tokio::select! {
                filled = self.client.conn.fill() => filled?,
                _ = tokio::time::sleep_until(self.next_status) => {}
            }
        }
    }

    fn handle_copy_data(&mut self, mut data: Bytes) -> Result<Option<Event>> {
        if !data.has_remaining() {
            return Err(Error::protocol("empty CopyData"));
        }
        match data.get_u8() {
            b'w' => {
                if data.remaining() < 24 {
                    return Err(Error::protocol("truncated XLogData header"));
                }
                let wal_start = Lsn(data.get_u64());
                let wal_end = Lsn(data.get_u64());
                let send_time = pg_to_unix_micros(data.get_i64());
                let message = self.decoder.decode(&data)?;
                self.received = self.received.max(wal_start);
                self.track(&message);
                Ok(Some(Event::Data { wal_start, wal_end, send_time, message }))
            }
            b'k' => {
                if data.remaining() < 17 {
                    return Err(Error::protocol("truncated keepalive"));
                }
                let wal_end = Lsn(data.get_u64());
                let send_time = pg_to_unix_micros(data.get_i64());
                let reply_requested = data.get_u8() == 1;
                self.server_wal_end = self.server_wal_end.max(wal_end);
                self.received = self.received.max(wal_end);
                if self.is_idle() && wal_end > self.confirmed {
                    self.confirmed = wal_end;
                }
                if reply_requested {
                    self.queue_status(false);
                }
                Ok(Some(Event::Keepalive { wal_end, send_time, reply_requested }))
            }
            other => {
                tracing::debug!(tag = other, "ignoring an unknown CopyData message");
                Ok(None)
            }
        }
    }

    /// Follows transaction boundaries, for the idle rule (see the module docs).
    fn track(&mut self, message: &PgMessage) {
        match message {
            PgMessage::Begin(_) => self.in_transaction = true,
            PgMessage::Commit(c) => {
                self.in_transaction = false;
                self.last_commit_end = self.last_commit_end.max(c.end_lsn);
            }
            PgMessage::StreamStart { xid, .. } => {
                self.open_streams.insert(*xid);
            }
            PgMessage::StreamCommit(c) => {
                self.open_streams.remove(&c.xid);
                self.last_commit_end = self.last_commit_end.max(c.end_lsn);
            }
            PgMessage::StreamAbort(a) if a.xid == a.subxid => {
                self.open_streams.remove(&a.xid);
            }
            _ => {}
        }
    }

    /// No transaction open and everything delivered confirmed.
    fn is_idle(&self) -> bool {
        !self.in_transaction && self.open_streams.is_empty() && self.confirmed >= self.last_commit_end
    }

    /// Records that everything up to `lsn` (a commit's end LSN) is durably
    /// handled and may be confirmed to the server. Positions only move
    /// forward; the server hears of it with the next status update.
    pub fn confirm(&mut self, lsn: Lsn) {
        if lsn > self.confirmed {
            self.confirmed = lsn;
        }
    }

    /// Sends a status update now with the current positions (cancel-safe).
    pub async fn send_status_now(&mut self) -> Result<()> {
        self.queue_status(false);
        self.client.conn.flush().await
    }

    /// Sends a status update if one is due: for callers that do not call
    /// [`recv`](Self::recv) for a while (the server gives up after `wal_sender_timeout`).
    pub async fn send_status_if_due(&mut self) -> Result<()> {
        if Instant::now() >= self.next_status {
            self.queue_status(false);
        }
        self.client.conn.flush().await
    }

    /// Sends a standby status update with explicit positions. `flushed`
    /// becomes the slot's confirmed position, so it must not run ahead of
    /// what is durably handled; it is also recorded as confirmed.
    pub async fn send_status(&mut self, written: Lsn, flushed: Lsn, applied: Lsn, reply_requested: bool) -> Result<()> {
        self.confirm(flushed);
        self.write_status(written, flushed, applied, reply_requested);
        self.client.conn.flush().await
    }

    fn queue_status(&mut self, reply_requested: bool) {
        if self.is_idle() && self.server_wal_end > self.confirmed {
            self.confirmed = self.server_wal_end;
        }
        let written = self.received.max(self.confirmed);
        self.write_status(written, self.confirmed, self.confirmed, reply_requested);
    }

    fn write_status(&mut self, written: Lsn, flushed: Lsn, applied: Lsn, reply_requested: bool) {
        let mut body = bytes::BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(written.0);
        body.put_u64(flushed.0);
        body.put_u64(applied.0);
        body.put_i64(pg_now());
        body.put_u8(u8::from(reply_requested));
        frontend::CopyData::new(body.freeze()).expect("34 bytes fit").write(&mut self.client.conn.wbuf);
        self.next_status = Instant::now() + self.status_interval;
        tracing::trace!(%written, %flushed, %applied, "standby status update");
    }

    /// The position confirmed so far (sent with the next status update if not yet).
    pub fn confirmed_lsn(&self) -> Lsn {
        self.confirmed
    }

    /// The highest WAL position received.
    pub fn received_lsn(&self) -> Lsn {
        self.received
    }

    /// The server's WAL end from its last keepalive: the lag in bytes is this minus [`confirmed_lsn`](Self::confirmed_lsn).
    pub fn server_wal_end(&self) -> Lsn {
        self.server_wal_end
    }

    /// The pgoutput protocol version in use (2 on PostgreSQL 14+, else 1).
    pub fn protocol_version(&self) -> u32 {
        self.protocol_version
    }

    /// Whether large transactions are streamed before they commit.
    pub fn streaming(&self) -> bool {
        self.streaming
    }

    /// The decoder, with its relation cache.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The connection's parameters and version.
    pub fn client(&self) -> &ReplicationClient<S> {
        &self.client
    }

    /// Ends streaming (`CopyDone`) after a last status update, discarding
    /// messages still in flight (they were not confirmed, so the server sends
    /// them again next time), and returns the connection for more commands.
    ///
    /// Streaming again needs a new connection: PostgreSQL (15 at least) does
    /// not reset a walsender's end-of-streaming state, so a second
    /// `START_REPLICATION` on the same connection ends at once (then
    /// [`recv`](Self::recv) returns `None`).
    pub async fn stop(mut self) -> Result<ReplicationClient<S>> {
        if !self.ended {
            self.queue_status(false);
            frontend::copy_done(&mut self.client.conn.wbuf);
            self.client.conn.flush().await?;
            loop {
                match self.client.conn.read().await? {
                    Backend::Msg(Message::CopyDone) => break,
                    Backend::Msg(Message::ErrorResponse(body)) => return Err(db_error(&body)),
                    _ => {}
                }
            }
            self.client.conn.drain_to_ready(None).await?;
        }
        Ok(self.client)
    }
}

#[cfg(test)]
mod tests {
    //! The stream against a scripted server over an in-memory pipe: the
    //! exact status updates sent, and when the idle rule may confirm.

    use bytes::{BufMut, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::config::ReplicationConfig;

    fn backend(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        b.put_i32(body.len() as i32 + 4);
        b.put_slice(body);
        b.to_vec()
    }

    fn xlog(start: u64, payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(start);
        b.put_u64(start);
        b.put_i64(0);
        b.put_slice(payload);
        backend(b'd', &b)
    }

    fn keepalive(wal_end: u64, reply: bool) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(wal_end);
        b.put_i64(0);
        b.put_u8(u8::from(reply));
        backend(b'd', &b)
    }

    fn begin(xid: u32) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_u8(b'B');
        b.put_u64(0);
        b.put_i64(0);
        b.put_u32(xid);
        b.to_vec()
    }

    fn commit(end: u64) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_u8(b'C');
        b.put_u8(0);
        b.put_u64(end - 8);
        b.put_u64(end);
        b.put_i64(0);
        b.to_vec()
    }

    async fn read_frontend(io: &mut DuplexStream) -> (u8, Vec<u8>) {
        let tag = io.read_u8().await.unwrap();
        let len = io.read_i32().await.unwrap() as usize;
        let mut body = vec![0; len - 4];
        io.read_exact(&mut body).await.unwrap();
        (tag, body)
    }

    /// The next standby status update: (written, flushed, applied, reply requested).
    async fn read_status(io: &mut DuplexStream) -> (u64, u64, u64, u8) {
        let (tag, body) = read_frontend(io).await;
        assert_eq!(tag, b'd');
        let mut b = &body[..];
        assert_eq!(b.get_u8(), b'r');
        let (w, f, a) = (b.get_u64(), b.get_u64(), b.get_u64());
        let _time = b.get_i64();
        let reply = b.get_u8();
        assert!(b.is_empty());
        (w, f, a, reply)
    }

    /// A client streaming from a scripted server; returns both ends.
    async fn started() -> (ReplicationStream<DuplexStream>, DuplexStream) {
        let (client_io, mut server) = tokio::io::duplex(1 << 16);
        let server_side = async {
            let len = server.read_i32().await.unwrap() as usize;
            let mut startup = vec![0; len - 4];
            server.read_exact(&mut startup).await.unwrap();
            assert!(String::from_utf8_lossy(&startup).contains("replication\0database\0"));
            let mut out = backend(b'R', &0i32.to_be_bytes());
            out.extend(backend(b'S', b"server_version\x0015.4\0"));
            out.extend(backend(b'Z', b"I"));
            server.write_all(&out).await.unwrap();
            let (tag, query) = read_frontend(&mut server).await;
            assert_eq!(tag, b'Q');
            let query = String::from_utf8_lossy(&query).into_owned();
            assert!(query.starts_with("START_REPLICATION SLOT \"s\" LOGICAL 0/0 (proto_version '2'"), "{query}");
            assert!(query.contains("publication_names '\"p\"'") && query.contains("streaming 'on'"), "{query}");
            server.write_all(&backend(b'W', &[0, 0, 0])).await.unwrap();
        };
        let client_side = async {
            let config = ReplicationConfig::new("db", "u");
            let client = ReplicationClient::handshake(client_io, &config).await.unwrap();
            assert_eq!(client.server_version_num(), 150_004);
            let mut options = StartOptions::new("s", "p");
            options.status_interval = Duration::from_secs(3600);
            client.start_replication(options).await.unwrap()
        };
        let (stream, ()) = tokio::join!(client_side, server_side);
        (stream, server)
    }

    async fn recv(stream: &mut ReplicationStream<DuplexStream>) -> Event {
        stream.recv().await.unwrap().expect("an event")
    }

    #[tokio::test]
    async fn status_updates_confirm_only_what_the_caller_confirmed_or_an_idle_position() {
        let (mut stream, mut server) = started().await;
        assert_eq!((stream.protocol_version(), stream.streaming()), (2, true));

        // A transaction, not yet confirmed: a keepalive asking for a reply gets
        // the received position as written, nothing as flushed.
        let mut out = xlog(0x100, &begin(7));
        out.extend(xlog(0x180, &commit(0x1a0)));
        out.extend(keepalive(0x200, true));
        server.write_all(&out).await.unwrap();
        assert!(matches!(recv(&mut stream).await, Event::Data { message: PgMessage::Begin(_), .. }));
        let Event::Data { wal_start, message: PgMessage::Commit(c), .. } = recv(&mut stream).await else { panic!() };
        assert_eq!((wal_start, c.end_lsn), (Lsn(0x180), Lsn(0x1a0)));
        assert_eq!(
            recv(&mut stream).await,
            Event::Keepalive {
                wal_end: Lsn(0x200),
                send_time: crate::lsn::PG_EPOCH_OFFSET_MICROS,
                reply_requested: true
            }
        );
        assert_eq!(read_status(&mut server).await, (0x200, 0, 0, 0));

        // Confirmed: nothing is pending, so the last keepalive's position (after
        // the commit) is confirmed too, and so is the next one's.
        stream.confirm(Lsn(0x1a0));
        stream.send_status_now().await.unwrap();
        assert_eq!(read_status(&mut server).await, (0x200, 0x200, 0x200, 0));
        server.write_all(&keepalive(0x300, false)).await.unwrap();
        recv(&mut stream).await;
        assert_eq!(stream.confirmed_lsn(), Lsn(0x300));
        stream.send_status_now().await.unwrap();
        assert_eq!(read_status(&mut server).await, (0x300, 0x300, 0x300, 0));

        // A streamed transaction is open (a subtransaction abort does not close
        // it): keepalives are not confirmed until it commits and is confirmed.
        let mut start = vec![b'S'];
        start.extend(9u32.to_be_bytes());
        start.push(1);
        let mut abort_sub = vec![b'A'];
        abort_sub.extend(9u32.to_be_bytes());
        abort_sub.extend(10u32.to_be_bytes());
        let mut out = xlog(0x400, &start);
        out.extend(xlog(0x400, b"E"));
        out.extend(xlog(0x410, &abort_sub));
        out.extend(keepalive(0x500, true));
        server.write_all(&out).await.unwrap();
        for _ in 0..3 {
            recv(&mut stream).await;
        }
        assert!(matches!(recv(&mut stream).await, Event::Keepalive { reply_requested: true, .. }));
        assert_eq!(read_status(&mut server).await, (0x500, 0x300, 0x300, 0));

        let mut stream_commit = vec![b'c'];
        stream_commit.extend(9u32.to_be_bytes());
        stream_commit.push(0);
        stream_commit.extend(0x5f0u64.to_be_bytes());
        stream_commit.extend(0x600u64.to_be_bytes());
        stream_commit.extend(0i64.to_be_bytes());
        let mut out = xlog(0x5f0, &stream_commit);
        out.extend(keepalive(0x700, true));
        server.write_all(&out).await.unwrap();
        recv(&mut stream).await;
        recv(&mut stream).await;
        assert_eq!(read_status(&mut server).await, (0x700, 0x300, 0x300, 0), "the streamed commit is unconfirmed");
        stream.confirm(Lsn(0x600));
        server.write_all(&keepalive(0x800, true)).await.unwrap();
        recv(&mut stream).await;
        assert_eq!(read_status(&mut server).await, (0x800, 0x800, 0x800, 0));

        // Explicit positions.
        stream.send_status(Lsn(0x900), Lsn(0x880), Lsn(0x870), true).await.unwrap();
        assert_eq!(read_status(&mut server).await, (0x900, 0x880, 0x870, 1));
        // Positions never go back.
        stream.confirm(Lsn(0x10));
        assert_eq!(stream.confirmed_lsn(), Lsn(0x880));
    }

    #[tokio::test]
    async fn the_timer_sends_status_updates_and_the_server_may_end_the_stream() {
        let (mut stream, mut server) = started().await;
        stream.status_interval = Duration::from_millis(20);
        stream.next_status = Instant::now();
        // No traffic: recv sends a status update on its own, then another.
        let waiting = tokio::time::timeout(Duration::from_millis(200), stream.recv()).await;
        assert!(waiting.is_err(), "no event expected");
        assert_eq!(read_status(&mut server).await, (0, 0, 0, 0));
        assert_eq!(read_status(&mut server).await, (0, 0, 0, 0));

        // The server ends streaming: the client answers CopyDone and the stream ends.
        let mut out = backend(b'c', &[]);
        out.extend(backend(b'C', b"COPY 0\0"));
        out.extend(backend(b'C', b"START_REPLICATION\0"));
        out.extend(backend(b'Z', b"I"));
        server.write_all(&out).await.unwrap();
        // Status updates sent meanwhile are skipped; then the CopyDone.
        let answer = async {
            loop {
                let (tag, _) = read_frontend(&mut server).await;
                if tag == b'c' {
                    break;
                }
            }
        };
        let (ended, ()) = tokio::join!(stream.recv(), answer);
        assert_eq!(ended.unwrap(), None);
        assert_eq!(stream.recv().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_broken_message_is_an_error() {
        let (mut stream, mut server) = started().await;
        server.write_all(&xlog(0x100, b"Zgarbage")).await.unwrap();
        assert!(matches!(stream.recv().await, Err(Error::Decode(_))));
        let (mut stream, mut server) = started().await;
        server.write_all(&backend(b'd', b"w\0")).await.unwrap();
        assert!(matches!(stream.recv().await, Err(Error::Protocol(_))));
        let (mut stream, server) = started().await;
        drop(server);
        assert!(matches!(stream.recv().await, Err(Error::Closed)));
    }

    #[test]
    fn replication_literals() {
        assert_eq!(repl_literal(r#""p1","it's""#).unwrap(), r#"'"p1","it''s"'"#);
        assert!(repl_literal("a\0b").is_err());
    }
}
