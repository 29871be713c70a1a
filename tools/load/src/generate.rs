//! Canonical events in the shape of the `/v1/events` example, each with an
//! idempotency key no other event (of this run or any other) has, so every
//! event is a real insert.

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
}

impl Generator {
    pub fn new(run: &str, worker: usize) -> Generator {
        Generator { prefix: format!("{run}-w{worker}-"), seq: 0 }
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
    fn events_are_about_the_size_of_the_example() {
        let body = Generator::new(&run_tag(), 3).body(100, Format::JsonArray);
        let per_event = body.len() / 100;
        assert!((250..450).contains(&per_event), "{per_event} bytes an event");
        let first: serde_json::Value = serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap().remove(0);
        assert_eq!(first["payload"]["currency"], "USD");
    }
}
