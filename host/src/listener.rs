//! Serving HTTP: the accept loop and each connection, with the limits that
//! keep any one client from holding the service (`[http]`, and `[limits]
//! max_connections`):
//!
//! - at most `max_connections` connections open at once. A connection
//!   arriving at the limit is served at once: the connection that has gone
//!   longest with no request in flight (reading a request's headers, or an
//!   idle keep-alive) is closed to make room, as Apache's event MPM sheds
//!   keep-alives under pressure. Only when every connection is serving a
//!   request does a new one wait in the kernel's accept queue;
//! - at most `max_connections_per_address` of them from one client address;
//!   past it a connection is answered 503 (with `Retry-After`) and closed;
//! - a request's headers must arrive within `header_read_timeout_ms` of the
//!   connection being ready for them (hyper's header read timeout);
//! - a keep-alive connection with no request in flight is closed after
//!   `idle_timeout_ms` without a byte;
//! - a body must arrive within `body_read_timeout_ms`, and, past its first
//!   `BODY_GRACE`, at `min_body_bytes_per_second` on average; else its read
//!   fails with [`BodyTooSlow`](crate::body::BodyTooSlow) (the ingest routes answer 408).
//!
//! So a flood of connections that send partial headers, hold idle
//! keep-alives or trickle bodies is shed within those timeouts, and the
//! service keeps answering everyone else.

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::{Instant, Sleep};

/// Requests one HTTP/2 connection may have in flight at once.
const HTTP2_STREAMS: u32 = 128;

/// How long a body may take before its rate is checked.
pub const BODY_GRACE: Duration = Duration::from_secs(5);

/// `[http]`: how long clients may take, and how many connections one
/// address may hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A request's headers must have arrived this long after the connection
    /// was ready for them (for a new connection, after it was accepted).
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection with no request in flight is closed after
    /// this long without a byte either way. (hyper's header read timer also
    /// runs while a connection waits for its next request, so the shorter
    /// of the two applies.)
    pub idle_timeout_ms: u64,
    /// The most a request body may take to arrive.
    pub body_read_timeout_ms: u64,
    /// Past its first 5 s, a body must arrive at least this fast on
    /// average (0: no minimum).
    pub min_body_bytes_per_second: u64,
    /// Connections one client address may have open at once (0: no limit
    /// but `[limits] max_connections`).
    pub max_connections_per_address: usize,
    /// On SIGTERM, how long `/readyz` answers 503 while requests are still
    /// served, before the listener closes: a balancer's health checks see
    /// the host leave and stop sending to it first (0: close at once).
    pub drain_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 10_000,
            body_read_timeout_ms: 60_000,
            min_body_bytes_per_second: 1024,
            max_connections_per_address: 256,
            drain_ms: 0,
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.header_read_timeout_ms == 0 || self.idle_timeout_ms == 0 || self.body_read_timeout_ms == 0 {
            anyhow::bail!("http.header_read_timeout_ms, idle_timeout_ms and body_read_timeout_ms must be at least 1");
        }
        Ok(())
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then waits for
/// the connections to finish their requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: HttpConfig,
    max_connections: usize,
    on_cut: OnCut,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let max_connections = max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max_connections));
    let addresses = Arc::new(Addresses::default());
    let open = Arc::new(Open::default());
    let config = Arc::new(config);
    let (stop, stopping) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum::serve does.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are one write each: send them at once.
        let _ = stream.set_nodelay(true);
        let Some(slot) = addresses.take(peer.ip(), config.max_connections_per_address) else {
            refuse_connection(stream, config.max_connections_per_address, on_cut);
            continue;
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) if open.evict_longest_waiting() => {
                // At the limit: the connection that waited longest for a
                // request is closed, and its place is this one's at once (it
                // forgets its permit as it ends), so no newcomer waits for
                // another connection's task to run.
                on_cut("evicted");
                permits.add_permits(1);
                permits.clone().try_acquire_owned().expect("only this loop takes permits")
            }
            Err(_) => tokio::select! {
                // Every connection is serving a request: wait for one to end.
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = &mut shutdown => break,
            },
        };
        let activity = Arc::new(Activity::new());
        let entry = open.insert(activity.clone());
        let router = router.clone();
        let config = config.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            connection(stream, peer, activity.clone(), router, &config, on_cut, stopping).await;
            // Out of `open` first: past this, nothing can evict it, so the
            // flag read next is final.
            drop(entry);
            if activity.evicted.load(Ordering::Relaxed) {
                permit.forget();
            } else {
                drop(permit);
            }
            drop(slot);
        });
    }
    drop(stopping);
    drop(listener);
    // Every connection holds a receiver: this waits for the last to end.
    stop.send_replace(());
    stop.closed().await;
    Ok(())
}

/// Serves one connection until it closes, is idle too long, or the service
/// stops (then its request in flight is finished first).
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    activity: Arc<Activity>,
    router: Router,
    config: &HttpConfig,
    on_cut: OnCut,
    mut stopping: watch::Receiver<()>,
) {
    let pace =
        Pace { total: Duration::from_millis(config.body_read_timeout_ms), min_rate: config.min_body_bytes_per_second };
    let service = {
        let activity = activity.clone();
        tower::service_fn(move |mut request: axum::http::Request<Incoming>| {
            let busy = activity.begin();
            request.extensions_mut().insert(ConnectInfo(peer));
            let request = request.map(|body| Body::new(PacedBody::new(body, pace, on_cut)));
            let call = tower::ServiceExt::oneshot(router.clone(), request);
            async move {
                let response = call.await;
                drop(busy);
                response
            }
        })
    };
    let io = TokioIo::new(Tracked { stream, activity: activity.clone() });
    // HTTP/1.1, or HTTP/2 when the client opens with its preface (h2c with
    // prior knowledge). The idle and body limits below hold for both; the
    // header read timeout is HTTP/1's (an HTTP/2 client that sends no
    // request is idle, and cut as such).
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(HTTP2_STREAMS);
    let conn = builder.serve_connection(io, TowerToHyperService::new(service));
    tokio::pin!(conn);
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let mut closing = false;
    loop {
        let idle_at = activity.idle_deadline(idle);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
                        on_cut("header_timeout");
                    }
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            _ = stopping.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.evict.notified(), if !closing => {
                tracing::debug!(%peer, "closing a connection waiting for a request: the service is at max_connections");
                if activity.busy.load(Ordering::Relaxed) == 0 {
                    // Dropped, not shut down gracefully: hyper would wait
                    // for a half-read request's headers until their timeout,
                    // and the newcomer for this connection's place. Nothing
                    // is in flight, so nothing is lost.
                    return;
                }
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(idle_at), if !closing => {
                if activity.is_idle(idle) {
                    on_cut("idle");
                    tracing::debug!(%peer, "closing an idle connection");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A connection refused for its address's limit: a 503 it can read, if its
/// socket takes it at once, and the connection closed.
fn refuse_connection(stream: TcpStream, limit: usize, on_cut: OnCut) {
    let body = format!(
        "{{\"error\":\"this address has {limit} connections open, the most one address may have; retry shortly\"}}"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
    on_cut("per_address");
    tracing::debug!("refused a connection past max_connections_per_address ({limit})");
}

/// Open connections by client address.
#[derive(Default)]
struct Addresses(Mutex<HashMap<IpAddr, usize>>);

impl Addresses {
    /// A slot for one more connection from `ip`, unless it has `limit`
    /// already (0: no limit).
    fn take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<AddressSlot> {
        let mut open = self.0.lock().unwrap();
        let count = open.entry(ip).or_insert(0);
        if limit > 0 && *count >= limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot { addresses: self.clone(), ip })
    }
}

struct AddressSlot {
    addresses: Arc<Addresses>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.addresses.0.lock().unwrap();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The open connections, so that one arriving at the limit can make room.
#[derive(Default)]
struct Open {
    next: AtomicU64,
    connections: Mutex<HashMap<u64, Arc<Activity>>>,
}

impl Open {
    fn insert(self: &Arc<Self>, activity: Arc<Activity>) -> OpenEntry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.connections.lock().unwrap().insert(id, activity);
        OpenEntry { open: self.clone(), id }
    }

    /// Tells the connection that has gone longest with no request in
    /// flight to close; false if every connection is serving one.
    fn evict_longest_waiting(&self) -> bool {
        let connections = self.connections.lock().unwrap();
        let longest = connections
            .values()
            .filter(|a| a.busy.load(Ordering::Relaxed) == 0 && !a.evicted.load(Ordering::Relaxed))
            .min_by_key(|a| a.waiting_since());
        let Some(activity) = longest else { return false };
        activity.evicted.store(true, Ordering::Relaxed);
        activity.evict.notify_one();
        true
    }
}

/// A connection's place in [`Open`], given up when it ends.
struct OpenEntry {
    open: Arc<Open>,
    id: u64,
}

impl Drop for OpenEntry {
    fn drop(&mut self) {
        self.open.connections.lock().unwrap().remove(&self.id);
    }
}

/// When a connection last moved a byte, how many of its requests are being
/// served, and since when it has had none.
struct Activity {
    started: Instant,
    /// Milliseconds after `started`.
    last: AtomicU64,
    /// Milliseconds after `started` that its last request ended (0: it has
    /// had none): how long it has been waiting for one.
    done: AtomicU64,
    busy: AtomicUsize,
    evicted: AtomicBool,
    evict: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last: AtomicU64::new(0),
            done: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }

    /// Since when the connection has had no request in flight. Bytes of a
    /// request's headers do not count: a trickle of them is no request.
    fn waiting_since(&self) -> Instant {
        self.started + Duration::from_millis(self.done.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        self.last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn idle_deadline(&self, idle: Duration) -> Instant {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return Instant::now() + idle;
        }
        self.started + Duration::from_millis(self.last.load(Ordering::Relaxed)) + idle
    }

    fn is_idle(&self, idle: Duration) -> bool {
        self.busy.load(Ordering::Relaxed) == 0
            && self.started.elapsed().saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed))) >= idle
    }
}

/// A request being served; the connection is not idle until it drops.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.done.store(self.0.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP stream that records when it last read or wrote.
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Told of each connection the listener cuts or refuses, by reason:
/// `header_timeout`, `idle`, `body_too_slow`, `per_address` or `evicted`
/// (closed to make room at `max_connections`; the
/// service counts them in its metrics).
pub type OnCut = fn(&'static str);

/// How fast a body must arrive.
#[derive(Clone, Copy)]
struct Pace {
    total: Duration,
    /// Bytes per second; 0: none.
    min_rate: u64,
}

impl Pace {
    /// When the next bytes must have arrived, `received` bytes after `start`.
    fn deadline(&self, start: Instant, received: u64) -> Instant {
        let last = start + self.total;
        if self.min_rate == 0 {
            return last;
        }
        let earned = Duration::from_secs_f64(received as f64 / self.min_rate as f64);
        (start + BODY_GRACE + earned).min(last)
    }
}

/// A request body that fails with [`BodyTooSlow`](crate::body::BodyTooSlow) when it arrives too
/// slowly (see [`Pace`]).
struct PacedBody {
    inner: Incoming,
    pace: Pace,
    on_cut: OnCut,
    start: Instant,
    received: u64,
    timer: Pin<Box<Sleep>>,
}

impl PacedBody {
    fn new(inner: Incoming, pace: Pace, on_cut: OnCut) -> PacedBody {
        let start = Instant::now();
        PacedBody {
            inner,
            pace,
            on_cut,
            start,
            received: 0,
            timer: Box::pin(tokio::time::sleep_until(pace.deadline(start, 0))),
        }
    }
}

impl HttpBody for PacedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    let deadline = this.pace.deadline(this.start, this.received);
                    this.timer.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    (this.on_cut)("body_too_slow");
                    let elapsed = this.start.elapsed().as_secs_f64();
                    let message = if elapsed >= this.pace.total.as_secs_f64() {
                        format!("the body did not arrive within {} ms", this.pace.total.as_millis())
                    } else {
                        format!(
                            "the body arrives too slowly: {} bytes in {elapsed:.1} s, under {} bytes per second",
                            this.received, this.pace.min_rate
                        )
                    };
                    Poll::Ready(Some(Err(Box::new(crate::body::BodyTooSlow(message)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_earns_time_by_arriving() {
        let pace = Pace { total: Duration::from_secs(60), min_rate: 1000 };
        let start = Instant::now();
        assert_eq!(pace.deadline(start, 0), start + BODY_GRACE);
        assert_eq!(pace.deadline(start, 10_000), start + BODY_GRACE + Duration::from_secs(10));
        assert_eq!(pace.deadline(start, 1 << 30), start + Duration::from_secs(60));
        let unpaced = Pace { total: Duration::from_secs(60), min_rate: 0 };
        assert_eq!(unpaced.deadline(start, 0), start + Duration::from_secs(60));
    }

    #[test]
    fn an_address_holds_at_most_its_limit() {
        let addresses = Arc::new(Addresses::default());
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let first = addresses.take(ip, 2).unwrap();
        let _second = addresses.take(ip, 2).unwrap();
        assert!(addresses.take(ip, 2).is_none());
        assert!(addresses.take("127.0.0.3".parse().unwrap(), 2).is_some());
        drop(first);
        assert!(addresses.take(ip, 2).is_some());
        assert!(addresses.take(ip, 0).is_some(), "0 is no limit");
    }

    #[test]
    fn the_connection_waiting_longest_for_a_request_makes_room() {
        let open = Arc::new(Open::default());
        let (first, second, third) = (Arc::new(Activity::new()), Arc::new(Activity::new()), Arc::new(Activity::new()));
        let _entries = [open.insert(first.clone()), open.insert(second.clone()), open.insert(third.clone())];
        // The first is serving a request; the second's ended after the third
        // connected, so the third has waited longest.
        let busy = first.begin();
        std::thread::sleep(Duration::from_millis(5));
        drop(second.begin());
        assert!(open.evict_longest_waiting());
        assert!(third.evicted.load(Ordering::Relaxed));
        assert!(open.evict_longest_waiting());
        assert!(second.evicted.load(Ordering::Relaxed));
        assert!(!open.evict_longest_waiting(), "the one left is serving a request");
        assert!(!first.evicted.load(Ordering::Relaxed));
        drop(busy);
        assert!(open.evict_longest_waiting());
    }
}
