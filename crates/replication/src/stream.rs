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
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::client::ReplicationClient;
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
