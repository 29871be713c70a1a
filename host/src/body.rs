//! Reading an ingest request's body: gzip and zstd are decompressed in
//! bounded chunks, and every chunk is charged to the budgets before it is
//! produced (the service's in-flight bytes, the tenant's, and the memory
//! limiter), so a small compressed body that expands a thousandfold (a
//! decompression bomb) is refused as it grows, not after.

use crate::memory::MemoryLimiter;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Decompressed bytes produced between two charges, at first; each charge
/// then doubles what is held, as the buffer grows.
const CHUNK: usize = 64 << 10;

/// The largest zstd window a body may use: 8 MiB, what `zstd -19` uses
/// (frames made with `--long` are refused), so a decoder holds at most that.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Why a body was refused: the answer's status and reason.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
}

impl Refusal {
    fn new(status: StatusCode, reason: String) -> Refusal {
        Refusal { status, reason }
    }
}

/// The budgets a request's body is charged to: the service's bytes in
/// flight, the tenant's, and the memory limiter. What was charged is given
/// back when the budget is dropped, with the request.
pub struct Budget<'a> {
    service: &'a AtomicUsize,
    service_cap: usize,
    tenant: &'a AtomicUsize,
    tenant_cap: usize,
    tenant_id: &'a str,
    memory: &'a MemoryLimiter,
    /// Bytes taken from `service` and from `tenant`.
    service_held: usize,
    tenant_held: usize,
}

impl<'a> Budget<'a> {
    pub fn new(
        (service, service_cap): (&'a AtomicUsize, usize),
        (tenant, tenant_cap): (&'a AtomicUsize, usize),
        tenant_id: &'a str,
        memory: &'a MemoryLimiter,
    ) -> Budget<'a> {
        Budget { service, service_cap, tenant, tenant_cap, tenant_id, memory, service_held: 0, tenant_held: 0 }
    }

    /// Takes `bytes` more from every budget: the body's declared size
    /// before it is read, then what decompression makes of it as it grows.
    /// Past a budget: 503 (the service's bytes or memory) or 429 (the
    /// tenant's). A request alone in flight passes the memory limiter, so
    /// the service keeps making progress.
    pub fn charge(&mut self, bytes: usize) -> Result<(), Refusal> {
        let before = self.service.fetch_add(bytes, Ordering::Relaxed);
        self.service_held += bytes;
        if before + bytes > self.service_cap {
            let reason = format!("the service has more than {} bytes in flight; retry shortly", self.service_cap);
            return Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, reason));
        }
        if !self.memory.admit(bytes, before == 0) {
            let reason = format!(
                "the service is near its memory limit ({} of {} bytes resident); retry shortly",
                self.memory.resident(),
                self.memory.limit()
            );
            return Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, reason));
        }
        self.tenant_held += bytes;
        if self.tenant.fetch_add(bytes, Ordering::Relaxed) + bytes > self.tenant_cap {
            let reason =
                format!("tenant {} has more than {} bytes in flight; retry shortly", self.tenant_id, self.tenant_cap);
            return Err(Refusal::new(StatusCode::TOO_MANY_REQUESTS, reason));
        }
        Ok(())
    }
}

impl Drop for Budget<'_> {
    fn drop(&mut self) {
        self.service.fetch_sub(self.service_held, Ordering::Relaxed);
        self.tenant.fetch_sub(self.tenant_held, Ordering::Relaxed);
    }
}

/// The error of a body that did not arrive in time (the listener paces
/// bodies; see `listener.rs`).
#[derive(Debug)]
pub struct BodyTooSlow(pub String);

impl std::fmt::Display for BodyTooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BodyTooSlow {}

/// Whether `e`, or an error it wraps, is a [`BodyTooSlow`].
fn is_too_slow(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(e);
    while let Some(e) = at {
        if e.is::<BodyTooSlow>() {
            return true;
        }
        at = e.source();
    }
    false
}

/// Reads the body, decompressing gzip or zstd, never holding more than
/// `limit` bytes of it either way, and charging what decompression
/// produces to `budget` as it goes.
pub async fn read(headers: &HeaderMap, body: Body, limit: usize, budget: &mut Budget<'_>) -> Result<Vec<u8>, Refusal> {
    let too_large =
        || Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than the limit of {limit} bytes"));
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !matches!(encoding.as_str(), "" | "identity" | "gzip" | "x-gzip" | "zstd") {
        return Err(Refusal::new(
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
            Err(e) if is_too_slow(&*e) => {
                return Err(Refusal::new(StatusCode::REQUEST_TIMEOUT, format!("the body could not be read: {e}")));
            }
            Err(e) => return Err(Refusal::new(StatusCode::BAD_REQUEST, format!("the body could not be read: {e}"))),
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
        Err(Failure::Refused(refusal)) => Err(refusal),
        Err(Failure::Corrupt(e)) => {
            Err(Refusal::new(StatusCode::BAD_REQUEST, format!("the {encoding} body does not decompress: {e}")))
        }
    }
}

enum Failure {
    TooLarge,
    Refused(Refusal),
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
            budget.charge(grown - out.capacity() + filled).map_err(Failure::Refused)?;
            out.reserve_exact(grown - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use std::io::Write;

    /// Budgets of `service` and `tenant` bytes, memory unlimited.
    struct Budgets {
        service: AtomicUsize,
        tenant: AtomicUsize,
        memory: MemoryLimiter,
    }

    impl Budgets {
        fn new() -> Budgets {
            Budgets { service: AtomicUsize::new(0), tenant: AtomicUsize::new(0), memory: MemoryLimiter::default() }
        }

        fn budget(&self, service_cap: usize, tenant_cap: usize) -> Budget<'_> {
            Budget::new((&self.service, service_cap), (&self.tenant, tenant_cap), "acme", &self.memory)
        }
    }

    fn headers(encoding: Option<&str>, length: Option<usize>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(encoding) = encoding {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_str(encoding).unwrap());
        }
        if let Some(length) = length {
            headers.insert(header::CONTENT_LENGTH, length.into());
        }
        headers
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    async fn read_with(
        encoding: Option<&str>,
        body: Vec<u8>,
        limit: usize,
        caps: (usize, usize),
    ) -> (Result<Vec<u8>, Refusal>, usize, usize) {
        let budgets = Budgets::new();
        let mut budget = budgets.budget(caps.0, caps.1);
        let headers = headers(encoding, Some(body.len()));
        let read = read(&headers, Body::from(body), limit, &mut budget).await;
        let held = (budgets.service.load(Ordering::Relaxed), budgets.tenant.load(Ordering::Relaxed));
        drop(budget);
        assert_eq!(budgets.service.load(Ordering::Relaxed), 0, "the service's bytes are given back");
        assert_eq!(budgets.tenant.load(Ordering::Relaxed), 0, "the tenant's bytes are given back");
        (read, held.0, held.1)
    }

    #[tokio::test]
    async fn plain_gzip_and_zstd_bodies_read_alike() {
        let text = b"{\"eventType\":\"a\"}\n".repeat(10_000);
        for (encoding, body) in [
            (None, text.clone()),
            (Some("identity"), text.clone()),
            (Some("gzip"), gzip(&text)),
            (Some("x-gzip"), gzip(&text)),
            (Some("zstd"), zstd::encode_all(&text[..], 3).unwrap()),
        ] {
            let (read, _, _) = read_with(encoding, body, 1 << 20, (usize::MAX, usize::MAX)).await;
            assert_eq!(read.unwrap(), text, "{encoding:?}");
        }
    }

    #[tokio::test]
    async fn decompressed_bytes_are_charged_as_they_grow() {
        let text = vec![b'x'; 4 << 20];
        let compressed = gzip(&text);
        let (read, service, tenant) =
            read_with(Some("gzip"), compressed.clone(), 8 << 20, (usize::MAX, usize::MAX)).await;
        assert_eq!(read.unwrap().len(), text.len());
        // The buffer's growth (and the decoder's window) is charged, not
        // the few compressed bytes.
        assert!(service >= text.len() && tenant == service, "charged {service} and {tenant}");

        // A bomb past the tenant's budget is refused as it expands: 429.
        let (read, _, _) = read_with(Some("gzip"), compressed.clone(), 8 << 20, (usize::MAX, 1 << 20)).await;
        let refusal = read.unwrap_err();
        assert_eq!(refusal.status, StatusCode::TOO_MANY_REQUESTS, "{}", refusal.reason);
        assert!(refusal.reason.contains("tenant acme"), "{}", refusal.reason);
        // Past the service's: 503.
        let (read, _, _) = read_with(Some("gzip"), compressed, 8 << 20, (1 << 20, usize::MAX)).await;
        assert_eq!(read.unwrap_err().status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn bodies_past_the_limit_are_refused_either_way() {
        // Declared too large: refused before a byte is read.
        let budgets = Budgets::new();
        let mut budget = budgets.budget(usize::MAX, usize::MAX);
        let refusal = read(&headers(None, Some(1001)), Body::empty(), 1000, &mut budget).await.unwrap_err();
        assert_eq!(refusal.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(refusal.reason.contains("limit of 1000 bytes"), "{}", refusal.reason);
        // Exactly the limit, decompressed, passes; one byte more does not.
        let (read, _, _) =
            read_with(Some("zstd"), zstd::encode_all(&[b'y'; 1000][..], 3).unwrap(), 1000, (usize::MAX, usize::MAX))
                .await;
        assert_eq!(read.unwrap().len(), 1000);
        let (read, _, _) =
            read_with(Some("zstd"), zstd::encode_all(&[b'y'; 1001][..], 3).unwrap(), 1000, (usize::MAX, usize::MAX))
                .await;
        assert_eq!(read.unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn unknown_encodings_and_corrupt_bodies_are_named() {
        let (read, _, _) = read_with(Some("br"), b"x".to_vec(), 1000, (usize::MAX, usize::MAX)).await;
        let refusal = read.unwrap_err();
        assert_eq!(refusal.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(refusal.reason.contains("\"br\""), "{}", refusal.reason);
        for encoding in ["gzip", "zstd"] {
            let (read, _, _) =
                read_with(Some(encoding), b"not compressed".to_vec(), 1000, (usize::MAX, usize::MAX)).await;
            let refusal = read.unwrap_err();
            assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
            assert!(refusal.reason.contains(&format!("the {encoding} body does not decompress")), "{}", refusal.reason);
        }
    }
}
