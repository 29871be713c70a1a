//! Framing of backend messages over any byte stream, and the socket type.
//!
//! Reads go into a growable buffer and are parsed with `postgres-protocol`,
//! except `CopyBothResponse` (`W`), which that crate does not know. Writes are
//! queued in a buffer and flushed with `write_buf`, so that a flush cancelled
//! half-way resumes where it stopped: nothing is lost or written twice.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorResponseBody, Message, NoticeResponseBody};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::error::{DbError, Error, Result};

/// The socket of a connection: plain TCP, a unix socket, or TLS over TCP.
/// Code that only needs bytes is generic over `AsyncRead + AsyncWrite` instead.
#[derive(Debug)]
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One message from the server.
pub(crate) enum Backend {
    Msg(Message),
    /// `CopyBothResponse`: the server entered streaming (its body, column formats, is of no use).
    CopyBoth,
}

impl Backend {
    /// The message's name, for errors.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Backend::CopyBoth => "CopyBothResponse",
            Backend::Msg(m) => match m {
                Message::AuthenticationOk
                | Message::AuthenticationCleartextPassword
                | Message::AuthenticationMd5Password(_)
                | Message::AuthenticationSasl(_)
                | Message::AuthenticationSaslContinue(_)
                | Message::AuthenticationSaslFinal(_) => "Authentication",
                Message::BackendKeyData(_) => "BackendKeyData",
                Message::CommandComplete(_) => "CommandComplete",
                Message::CopyData(_) => "CopyData",
                Message::CopyDone => "CopyDone",
                Message::CopyInResponse(_) => "CopyInResponse",
                Message::CopyOutResponse(_) => "CopyOutResponse",
                Message::DataRow(_) => "DataRow",
                Message::EmptyQueryResponse => "EmptyQueryResponse",
                Message::ErrorResponse(_) => "ErrorResponse",
                Message::NoticeResponse(_) => "NoticeResponse",
                Message::ParameterStatus(_) => "ParameterStatus",
                Message::ReadyForQuery(_) => "ReadyForQuery",
                Message::RowDescription(_) => "RowDescription",
                _ => "another message",
            },
        }
    }
}

pub(crate) struct Conn<S> {
    pub(crate) io: S,
    rbuf: BytesMut,
    /// Bytes queued for the server; see the module docs.
    pub(crate) wbuf: BytesMut,
}

const READ_CHUNK: usize = 64 * 1024;

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(crate) fn new(io: S) -> Self {
        Conn { io, rbuf: BytesMut::with_capacity(READ_CHUNK), wbuf: BytesMut::with_capacity(1024) }
    }

    /// A complete message from the read buffer, if there is one.
    pub(crate) fn try_parse(&mut self) -> Result<Option<Backend>> {
        if self.rbuf.len() >= 5 && self.rbuf[0] == b'W' {
            let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
            if len < 4 {
                return Err(Error::protocol("invalid CopyBothResponse length"));
            }
            if self.rbuf.len() < len + 1 {
                self.rbuf.reserve(len + 1 - self.rbuf.len());
                return Ok(None);
            }
            self.rbuf.advance(len + 1);
            return Ok(Some(Backend::CopyBoth));
        }
        match Message::parse(&mut self.rbuf) {
            Ok(m) => Ok(m.map(Backend::Msg)),
            Err(e) => Err(Error::protocol(format!("bad message from the server: {e}"))),
        }
    }

    /// Reads more bytes. Cancel-safe: a cancelled read has read nothing.
    pub(crate) async fn fill(&mut self) -> Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        let n = self.io.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// The next message.
    pub(crate) async fn read(&mut self) -> Result<Backend> {
        loop {
            if let Some(m) = self.try_parse()? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// Writes the queued bytes. Cancel-safe (see the module docs).
    pub(crate) async fn flush(&mut self) -> Result<()> {
        while self.wbuf.has_remaining() {
            let n = self.io.write_buf(&mut self.wbuf).await?;
            if n == 0 {
                return Err(Error::Closed);
            }
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Reads until `ReadyForQuery`, returning the first server error seen on the way.
    pub(crate) async fn drain_to_ready(&mut self, mut error: Option<Error>) -> Result<()> {
        loop {
            match self.read().await? {
                Backend::Msg(Message::ReadyForQuery(_)) => break,
                Backend::Msg(Message::ErrorResponse(body)) => {
                    error.get_or_insert(db_error(&body));
                }
                Backend::Msg(Message::NoticeResponse(body)) => log_notice(&body),
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The fields of an `ErrorResponse`.
pub(crate) fn db_error(body: &ErrorResponseBody) -> Error {
    let mut e =
        DbError { severity: String::new(), code: String::new(), message: String::new(), detail: None, hint: None };
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            // V: the non-localized severity (9.6+); S: the localized one.
            b'V' => e.severity = v,
            b'S' if e.severity.is_empty() => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    Error::Server(Box::new(e))
}

pub(crate) fn log_notice(body: &NoticeResponseBody) {
    let mut fields = body.fields();
    let mut message = String::new();
    while let Ok(Some(f)) = fields.next() {
        if f.type_() == b'M' {
            message = String::from_utf8_lossy(f.value_bytes()).into_owned();
        }
    }
    tracing::debug!(%message, "notice from the server");
}
