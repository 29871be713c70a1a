//! Canonical events in the shape of the `/v1/events` example, each with an
//! idempotency key no other event (of this run or any other) has, and
//! Logflare log events (`POST /api/logs`), each with an `id` no other event
//! has: every event is a real insert.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// How a request body lists its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A JSON array, `application/json`.
    JsonArray,
    /// One object a line, `application/x-ndjson`.
    Ndjson,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::JsonArray => "application/json",
            Format::Ndjson => "application/x-ndjson",
        }
    }
}

/// What the requests carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Canonical events for `POST /v1/events` (a JSON array or NDJSON).
    Events,
    /// Logflare log events for `POST /api/logs?source_name=…`, as
    /// `{"batch": [events]}`.
    Logflare,
}

pub const EVENT_TYPES: [&str; 4] = ["order.completed", "order.created", "invoice.paid", "subscription.renewed"];
const TIERS: [&str; 3] = ["free", "pro", "enterprise"];
const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-2"];

/// A tag that differs between runs: the start time in µs and the process id.
pub fn run_tag() -> String {
    let micros = now_micros() as u64;
    format!("ld{micros:x}p{:x}", std::process::id())
}

pub fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Makes the events of one worker.
pub struct Generator {
    prefix: String,
    seq: u64,
    /// Logflare ids: 60 bits of the run, then the worker (14 bits) and the
    /// event's number (48 bits) — see [`logflare_id`].
    run_bits: u64,
    worker: u16,
}

impl Generator {
    pub fn new(run: &str, worker: usize) -> Generator {
        // FNV-1a of the run's tag: runs differ in their ids' first 60 bits.
        let run_bits =
            run.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        Generator { prefix: format!("{run}-w{worker}-"), seq: 0, run_bits, worker: (worker & 0x3fff) as u16 }
    }

    /// A request body of `count` events of `kind` (Logflare bodies are
    /// always `{"batch": [events]}`).
    pub fn request_body(&mut self, kind: Kind, count: usize, format: Format) -> String {
        match kind {
            Kind::Events => self.body(count, format),
            Kind::Logflare => self.logflare_body(count),
        }
    }

    /// A request body of `count` events.
    pub fn body(&mut self, count: usize, format: Format) -> String {
        let mut out = String::with_capacity(count * 380 + 2);
        let now = now_micros();
        if format == Format::JsonArray {
            out.push('[');
        }
        for i in 0..count {
            if i > 0 {
                out.push(if format == Format::JsonArray { ',' } else { '\n' });
            }
            // Events happened over the last second or so, one µs apart.
            self.event(now - (count - i) as i64, &mut out);
        }
        match format {
            Format::JsonArray => out.push(']'),
            Format::Ndjson => out.push('\n'),
        }
        out
    }

    fn event(&mut self, occurred_at: i64, out: &mut String) {
        let k = self.seq;
        self.seq += 1;
        let event_type = EVENT_TYPES[(k % 4) as usize];
        let customer = (k.wrapping_mul(7919)) % 50_000;
        let amount = 900 + (k % 120) * 100;
        let qty = 1 + k % 3;
        out.push_str(r#"{"eventType":""#);
        out.push_str(event_type);
        out.push_str(r#"","occurredAt":""#);
        rfc3339_micros(occurred_at, out);
        let _ = write!(
            out,
            concat!(
                r#"","source":"billing-service","customerExternalId":"acct_{customer:06}","#,
                r#""idempotencyKey":"{prefix}{k}","correlationId":"req_{k:x}","#,
                r#""payload":{{"orderId":"ord_{k:x}","amount":{total},"currency":"USD","#,
                r#""items":[{{"sku":"PR-PRO-MONTHLY","qty":{qty},"price":{amount}}}]}},"#,
                r#""metadata":{{"tier":"{tier}","region":"{region}"}}}}"#,
            ),
            customer = customer,
            prefix = self.prefix,
            k = k,
            total = amount * qty,
            qty = qty,
            amount = amount,
            tier = TIERS[(customer % 3) as usize],
            region = REGIONS[(k % 3) as usize],
        );
    }
}

impl Generator {
    /// `{"batch": [events]}` of `count` Logflare events of about 720 bytes:
    /// a request log line with its metadata, as an application's logger
    /// sends it.
    pub fn logflare_body(&mut self, count: usize) -> String {
        let mut out = String::with_capacity(count * 680 + 16);
        let now = now_micros();
        out.push_str(r#"{"batch":["#);
        for i in 0..count {
            if i > 0 {
                out.push(',');
            }
            self.log_event(now - (count - i) as i64, &mut out);
        }
        out.push_str("]}");
        out
    }

    fn log_event(&mut self, at: i64, out: &mut String) {
        const METHODS: [&str; 4] = ["GET", "GET", "POST", "PUT"];
        const ROUTES: [(&str, &str, &str); 4] = [
            ("orders", "StorefrontWeb.OrderController", "show/2"),
            ("carts", "StorefrontWeb.CartController", "update/2"),
            ("customers", "StorefrontWeb.CustomerController", "show/2"),
            ("invoices", "BillingWeb.InvoiceController", "index/2"),
        ];
        const STATUSES: [u16; 8] = [200, 200, 200, 200, 201, 304, 404, 500];
        let k = self.seq;
        self.seq += 1;
        let method = METHODS[(k % 4) as usize];
        let (resource, module, function) = ROUTES[((k / 4) % 4) as usize];
        let status = STATUSES[(k.wrapping_mul(2_654_435_761) >> 7) as usize % 8];
        let level = match status {
            500 => "error",
            404 => "warn",
            _ => "info",
        };
        let duration_us = 800 + k.wrapping_mul(7919) % 48_000;
        let user = k.wrapping_mul(104_729) % 90_000;
        out.push_str(r#"{"id":""#);
        logflare_id(self.run_bits, self.worker, k, out);
        let _ = write!(
            out,
            r#"","message":"{method} /api/v1/{resource}/{k:x} {status} in {ms}.{frac:03}ms","timestamp":""#,
            ms = duration_us / 1000,
            frac = duration_us % 1000,
        );
        rfc3339_micros(at, out);
        let _ = write!(
            out,
            concat!(
                r#"","metadata":{{"level":"{level}","host":"web-{host}","region":"{region}","#,
                r#""request":{{"method":"{method}","path":"/api/v1/{resource}/{k:x}","status":{status},"#,
                r#""duration_ms":{ms}.{frac:03},"remote_ip":"10.{a}.{b}.{c}","request_id":"F{k:016x}","#,
                r#""user_agent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"}},"#,
                r#""user":{{"id":{user},"plan":"{plan}","email_verified":{verified}}},"#,
                r#""context":{{"application":"storefront","module":"{module}","function":"{function}","#,
                r#""file":"lib/storefront_web/controllers/{resource}_controller.ex","line":{line},"pid":"<0.{pid}.0>"}}}}}}"#,
            ),
            level = level,
            host = 1 + k % 6,
            region = REGIONS[(k % 3) as usize],
            method = method,
            resource = resource,
            k = k,
            status = status,
            ms = duration_us / 1000,
            frac = duration_us % 1000,
            a = k % 7,
            b = (k >> 3) % 256,
            c = (k >> 11) % 256,
            user = user,
            plan = TIERS[(user % 3) as usize],
            verified = !user.is_multiple_of(5),
            module = module,
            function = function,
            line = 40 + k % 90,
            pid = 4000 + k % 900,
        );
    }
}

/// A Logflare event's id: a UUID (version 4 layout) whose last two groups
/// hold the worker and the event's number, so a row can be traced to the
/// request that carried it: `substr(id::text, 20, 4)` is `8000 + worker`
/// and `substr(id::text, 25, 12)` the number, in hex.
pub fn logflare_id(run_bits: u64, worker: u16, seq: u64, out: &mut String) {
    let _ = write!(
        out,
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        run_bits >> 32,
        (run_bits >> 16) & 0xffff,
        (run_bits >> 4) & 0xfff,
        0x8000 | (worker & 0x3fff),
        seq & 0xffff_ffff_ffff
    );
}

/// `2026-05-26T14:21:08.493123Z` for µs since the Unix epoch.
pub fn rfc3339_micros(micros: i64, out: &mut String) {
    let t = time::OffsetDateTime::from_unix_timestamp(micros.div_euclid(1_000_000)).expect("a time in range");
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        micros.rem_euclid(1_000_000)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::{Request, Value};
    use std::collections::HashSet;

    fn ts(micros: i64) -> String {
        let mut s = String::new();
        rfc3339_micros(micros, &mut s);
        s
    }

    #[test]
    fn formats_timestamps() {
        assert_eq!(ts(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(ts(1_779_805_268_493_000), "2026-05-26T14:21:08.493000Z");
        assert_eq!(ts(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(ts(-1), "1969-12-31T23:59:59.999999Z");
    }

    fn normalize(body: String, content_type: &str) -> sluice_sdk::Outcome {
        let request = Request {
            tenant: "default".into(),
            method: "POST".into(),
            path: "/v1/events".into(),
            query: String::new(),
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into_bytes(),
            received_at: now_micros(),
            settings: "{}".into(),
        };
        sluice_events::handle(&request).unwrap()
    }

    #[test]
    fn events_normalize_cleanly_with_distinct_ids() {
        let mut generators = [Generator::new("t", 0), Generator::new("t", 1)];
        let mut ids = HashSet::new();
        for (w, format) in [(0, Format::JsonArray), (1, Format::Ndjson), (0, Format::Ndjson)] {
            let body = generators[w].body(50, format);
            let outcome = normalize(body, format.content_type());
            assert_eq!(outcome.events, 50);
            assert!(outcome.rejections.is_empty(), "{:?}", outcome.rejections);
            for row in &outcome.plans[0].rows {
                let Value::Uuid(id) = row.values[0] else { panic!("not a uuid") };
                assert!(ids.insert(id), "a repeated event id");
            }
        }
        assert_eq!(ids.len(), 150);
    }

    #[test]
    fn logflare_events_normalize_cleanly_with_traceable_ids() {
        let mut generator = Generator::new(&run_tag(), 5);
        generator.logflare_body(10);
        let body = generator.logflare_body(100);
        let per_event = body.len() / 100;
        assert!((650..800).contains(&per_event), "{per_event} bytes an event");
        let request = Request {
            tenant: "default".into(),
            method: "POST".into(),
            path: "/api/logs".into(),
            query: "source_name=bench".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into_bytes(),
            received_at: now_micros(),
            settings: "{}".into(),
        };
        let outcome = sluice_logflare::handle(&request).unwrap();
        assert_eq!(outcome.events, 100);
        assert!(outcome.rejections.is_empty(), "{:?}", outcome.rejections);
        for (n, row) in outcome.plans[0].rows.iter().enumerate() {
            let Value::Uuid((hi, lo)) = row.values[0] else { panic!("not a uuid") };
            let id = format!("{:032x}", (u128::from(hi) << 64) | u128::from(lo));
            assert_eq!(&id[16..20], "8005", "the worker");
            assert_eq!(u64::from_str_radix(&id[20..], 16).unwrap(), 10 + n as u64, "the event's number");
            assert_eq!(&id[12..13], "4");
        }
        let mut a = String::new();
        let mut b = String::new();
        logflare_id(Generator::new("r1", 0).run_bits, 0, 0, &mut a);
        logflare_id(Generator::new("r2", 0).run_bits, 0, 0, &mut b);
        assert_ne!(a, b, "runs have their own ids");
    }

    #[test]
    fn events_are_about_the_size_of_the_example() {
        let body = Generator::new(&run_tag(), 3).body(100, Format::JsonArray);
        let per_event = body.len() / 100;
        assert!((250..450).contains(&per_event), "{per_event} bytes an event");
        let first: serde_json::Value = serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap().remove(0);
        assert_eq!(first["payload"]["currency"], "USD");
    }
}
