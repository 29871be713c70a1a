//! Reading an ingest request's body: gzip and zstd are decompressed in
//! bounded chunks, and every chunk is charged to the budgets before it is
//! produced (the service's in-flight bytes, the tenant's, and the memory
//! limiter), so a small compressed body that expands a thousandfold (a
//! decompression bomb) is refused as it grows, not after.

use crate::http::{App, error};
use crate::ingest::Tenant;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::io::Read;
use std::sync::atomic::Ordering;

/// Decompressed bytes produced between two charges, at first; each charge
/// then doubles what is held, as the buffer grows.
const CHUNK: usize = 64 << 10;

/// The largest zstd window a body may use: 8 MiB, what `zstd -19` uses
/// (frames made with `--long` are refused), so a decoder holds at most that.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// What a request's body took from the budgets beyond what was charged
/// for it before it was read; given back when dropped.
pub struct Budget<'a> {
    app: &'a App,
    tenant: &'a Tenant,
    total: usize,
    own: usize,
}

impl<'a> Budget<'a> {
    pub fn new(app: &'a App, tenant: &'a Tenant) -> Budget<'a> {
        Budget { app, tenant, total: 0, own: 0 }
    }

    /// Takes `bytes` more from every budget, or the answer refusing the
    /// request: 503 (the service's bytes or memory) or 429 (the tenant's),
    /// with `Retry-After`.
    #[allow(clippy::result_large_err, reason = "the error is the response sent, once per refused request")]
    pub fn charge(&mut self, bytes: usize) -> Result<(), Response> {
        let limits = &self.tenant.limits;
        self.total += bytes;
        if self.app.in_flight_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes > limits.max_in_flight_bytes_total {
            return Err(retry(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the service has more than {} bytes in flight (decompressed); retry shortly",
                    limits.max_in_flight_bytes_total
                ),
            ));
        }
        self.own += bytes;
        let tenant = &self.tenant.stats.in_flight_bytes;
        if tenant.fetch_add(bytes, Ordering::Relaxed) + bytes > limits.max_in_flight_bytes {
            return Err(retry(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "tenant {} has more than {} bytes in flight (decompressed); retry shortly",
                    self.tenant.id(),
                    limits.max_in_flight_bytes
                ),
            ));
        }
        if !self.app.memory.admit(bytes, false) {
            return Err(retry(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the service is near its memory limit ({} of {} bytes resident); retry shortly",
                    self.app.memory.resident(),
                    self.app.memory.limit()
                ),
            ));
        }
        Ok(())
    }
}

impl Drop for Budget<'_> {
    fn drop(&mut self) {
        self.app.in_flight_bytes.fetch_sub(self.total, Ordering::Relaxed);
        self.tenant.stats.in_flight_bytes.fetch_sub(self.own, Ordering::Relaxed);
    }
}

fn retry(status: StatusCode, reason: String) -> Response {
    let mut response = error(status, reason);
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

/// Reads the body, decompressing gzip or zstd, never holding more than
/// `limit` bytes of it either way, and charging what decompression
/// produces to `budget` as it goes.
pub async fn read(headers: &HeaderMap, body: Body, limit: usize, budget: &mut Budget<'_>) -> Result<Vec<u8>, Response> {
    let too_large =
        || error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than the limit of {limit} bytes"));
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !matches!(encoding.as_str(), "" | "identity" | "gzip" | "x-gzip" | "zstd") {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-encoding {encoding:?} is not supported; send gzip, zstd or no encoding"),
        ));
    }
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // Read into one buffer of the declared size: a large body is then
    // neither gathered from its frames nor copied again.
    let mut raw = Vec::with_capacity(declared.unwrap_or(0));
    let mut body = Limited::new(body, limit);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    raw.extend_from_slice(data);
                }
            }
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
            Err(e) if crate::listener::is_too_slow(&*e) => {
                return Err(error(StatusCode::REQUEST_TIMEOUT, format!("the body could not be read: {e}")));
            }
            Err(e) => return Err(error(StatusCode::BAD_REQUEST, format!("the body could not be read: {e}"))),
        }
    }
    let decoded = match encoding.as_str() {
        // gzip's window is 32 KiB; zstd's is what the frame says, capped.
        "gzip" | "x-gzip" => decompress(flate2::read::MultiGzDecoder::new(&raw[..]), limit, 32 << 10, budget),
        "zstd" => match zstd::stream::read::Decoder::with_buffer(&raw[..]) {
            Ok(mut decoder) => match decoder.window_log_max(ZSTD_WINDOW_LOG_MAX) {
                Ok(()) => decompress(decoder, limit, 1 << ZSTD_WINDOW_LOG_MAX, budget),
                Err(e) => Err(Failure::Corrupt(e)),
            },
            Err(e) => Err(Failure::Corrupt(e)),
        },
        _ => return Ok(raw),
    };
    match decoded {
        Ok(body) => Ok(body),
        Err(Failure::TooLarge) => Err(too_large()),
        Err(Failure::Refused(response)) => Err(*response),
        Err(Failure::Corrupt(e)) => {
            Err(error(StatusCode::BAD_REQUEST, format!("the {encoding} body does not decompress: {e}")))
        }
    }
}

enum Failure {
    TooLarge,
    Refused(Box<Response>),
    Corrupt(std::io::Error),
}

/// Decompresses at most `limit` bytes, a chunk at a time, charging the
/// output buffer's growth to `budget` before it is allocated, and as much
/// again for the decoder's window (up to `window` bytes) as it fills.
fn decompress(mut reader: impl Read, limit: usize, window: usize, budget: &mut Budget<'_>) -> Result<Vec<u8>, Failure> {
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = vec![0; CHUNK];
    // One byte past the limit tells a body of exactly `limit` from a larger one.
    let most = limit.saturating_add(1);
    loop {
        let want = chunk.len().min(most - out.len());
        let n = match reader.read(&mut chunk[..want]) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::Corrupt(e)),
        };
        if out.len() + n > limit {
            return Err(Failure::TooLarge);
        }
        if out.len() + n > out.capacity() {
            // Double what is held (as a Vec would), charged first.
            let grown = (out.capacity().max(CHUNK) * 2).min(most).max(out.len() + n);
            let filled = grown.min(window) - out.capacity().min(window);
            budget.charge(grown - out.capacity() + filled).map_err(|refusal| Failure::Refused(Box::new(refusal)))?;
            out.reserve_exact(grown - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}
