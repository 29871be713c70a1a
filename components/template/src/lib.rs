//! A template normalizer: page views. Copy this crate to start your own
//! (docs/authoring.md walks through it).
//!
//! It reads one JSON object, a JSON array of them, or NDJSON (one per line):
//!
//! ```json
//! {"url": "https://example.com/pricing", "visitor": "v_81f2", "at": "2026-05-26T14:21:08Z",
//!  "referrer": "https://news.example/", "props": {"plan": "pro"}}
//! ```
//!
//! and writes each view as one row of table `page_views`. The row's key is a
//! UUIDv5 of the tenant, visitor, url and time, so a view sent twice (a
//! client retry, a replayed log) is stored once and counted as a duplicate.
//!
//! Everything here is plain Rust over `sluice_sdk` types and is tested
//! natively (`cargo test -p sluice-template`); `sluice_sdk::export_normalizer!`
//! only exports `tables` and `handle` through the WIT contract.

use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_sdk::body;
use sluice_sdk::{
    Column, ColumnDefault, ColumnType, Conflict, Index, IndexMethod, Outcome, Request, RequestError, Row, Table, Value,
};
use std::borrow::Cow;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

#[cfg(all(target_family = "wasm", feature = "component"))]
sluice_sdk::export_normalizer!();

pub const TABLE: &str = "page_views";

/// The namespace of this component's keys. When you copy the template, put
/// a fresh random UUID here, then never change it: every replay would get a
/// new key and be stored again.
const NAMESPACE: Uuid = Uuid::from_u128(0x2092_db93_2158_4884_be7c_09f1_f2bf_57e2);

/// The columns of the plan, in the order every row lists its values.
/// `inserted_at` is left out: its default, `now()`, fills it in.
const COLUMNS: [&str; 6] = ["view_id", "url", "visitor", "viewed_at", "referrer", "props"];

/// The longest accepted text field, in bytes.
const MAX_TEXT_BYTES: usize = 2048;

/// The tables this component writes. The host creates what is missing before
/// the first request. Later versions may add columns that are nullable or
/// have a default, and indexes; the host refuses changes that would rewrite
/// or drop data (a column's type, the primary key).
pub fn tables() -> Vec<Table> {
    use ColumnType::*;
    vec![Table {
        name: TABLE.into(),
        columns: vec![
            Column::new("view_id", Uuid).not_null(),
            Column::new("url", Text).not_null(),
            Column::new("visitor", Text).not_null(),
            Column::new("viewed_at", Timestamptz).not_null(),
            Column::new("referrer", Text),
            Column::new("props", Jsonb),
            Column::new("inserted_at", Timestamptz).not_null().default(ColumnDefault::Now),
        ],
        primary_key: vec!["view_id".into()],
        indexes: vec![
            // Views arrive roughly in time order, so a tiny BRIN index serves time ranges.
            Index::btree("viewed_at", &["viewed_at"]).method(IndexMethod::Brin),
            // "What did this visitor look at lately": newest first.
            Index::btree("visitor_viewed_at", &["visitor", "-viewed_at"]),
        ],
        template: false,
    }]
}

/// A page view as it arrives. Each field stays raw JSON, borrowed from the
/// body, and is checked on its own so a rejection can name it. Unknown
/// fields are ignored.
#[derive(Deserialize)]
struct View<'a> {
    #[serde(borrow)]
    url: Option<&'a RawValue>,
    #[serde(borrow)]
    visitor: Option<&'a RawValue>,
    #[serde(borrow)]
    at: Option<&'a RawValue>,
    #[serde(borrow)]
    referrer: Option<&'a RawValue>,
    #[serde(borrow)]
    props: Option<&'a RawValue>,
}

/// An optional string field: absent and `null` are `None`. Borrowed unless
/// it holds escapes.
fn text<'a>(field: &str, raw: Option<&'a RawValue>) -> Result<Option<Cow<'a, str>>, String> {
    let Some(raw) = raw.filter(|raw| raw.get() != "null") else { return Ok(None) };
    let value: Cow<'a, str> = serde_json::from_str(raw.get()).map_err(|_| format!("{field} must be a string"))?;
    if value.len() > MAX_TEXT_BYTES {
        return Err(format!("{field} is longer than {MAX_TEXT_BYTES} bytes"));
    }
    // PostgreSQL's text cannot hold NUL; refuse the event, not the request.
    if value.contains('\0') {
        return Err(format!("{field} contains a NUL character"));
    }
    Ok(Some(value))
}

/// A string field that must be present and not blank.
fn required<'a>(field: &str, raw: Option<&'a RawValue>) -> Result<Cow<'a, str>, String> {
    match text(field, raw)? {
        Some(value) if !value.trim().is_empty() => Ok(value),
        Some(_) => Err(format!("{field} is empty")),
        None => Err(format!("{field} is required")),
    }
}

/// An optional JSON object, stored as jsonb text exactly as it arrived.
fn object(field: &str, raw: Option<&RawValue>) -> Result<Value, String> {
    let Some(raw) = raw.filter(|raw| raw.get() != "null") else { return Ok(Value::Null) };
    if !raw.get().starts_with('{') {
        return Err(format!("{field} must be a JSON object"));
    }
    if body::has_nul_escape(raw.get()) {
        return Err(format!("{field} contains a \\u0000 escape, which PostgreSQL cannot store"));
    }
    Ok(Value::Jsonb(raw.get().to_owned()))
}

/// An RFC 3339 timestamp, as microseconds since the Unix epoch.
fn timestamp(field: &str, text: &str) -> Result<i64, String> {
    let at = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|_| format!("{field} must be an RFC 3339 timestamp such as 2026-05-26T14:21:08Z, not {text:?}"))?;
    Ok((at.unix_timestamp_nanos() / 1000) as i64)
}

/// Whether `url` is `http://…` or `https://…` (the scheme in any case).
fn is_http_url(url: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        url.len() > scheme.len() && url.get(..scheme.len()).is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    })
}

/// The key of a view: a UUIDv5 of the tenant's namespace, the visitor, the
/// url and the instant (so `…Z` and the same instant as `+02:00` agree). The
/// fields cannot hold NUL, so it separates them unambiguously.
fn view_id(tenant: &Uuid, visitor: &str, url: &str, at: i64) -> Uuid {
    Uuid::new_v5(tenant, format!("{visitor}\0{url}\0{at}").as_bytes())
}

/// One view's row, or the reason it is refused.
fn row(tenant: &Uuid, index: u32, raw: &RawValue) -> Result<Row, String> {
    let view: View = match serde_json::from_str(raw.get()) {
        Ok(view) => view,
        Err(_) if !raw.get().starts_with('{') => return Err("a page view must be a JSON object".into()),
        Err(e) => return Err(format!("the page view does not parse: {e}")),
    };
    let url = required("url", view.url)?;
    if !is_http_url(&url) {
        return Err("url must start with http:// or https://".into());
    }
    let visitor = required("visitor", view.visitor)?;
    let at = timestamp("at", &required("at", view.at)?)?;
    // One value per entry of COLUMNS, in the same order.
    let values = vec![
        Value::uuid(view_id(tenant, &visitor, &url, at).as_u128()),
        Value::Text(url.into_owned()),
        Value::Text(visitor.into_owned()),
        Value::Timestamptz(at),
        Value::text_or_null(text("referrer", view.referrer)?),
        object("props", view.props)?,
    ];
    Ok(Row { event: index, values })
}

/// Normalizes one request. A body that cannot be read at all is a
/// `RequestError` (400 or 415); a bad view only rejects itself, and the good
/// ones in the same request are still written.
pub fn handle(request: &Request) -> Result<Outcome, RequestError> {
    let views = body::events(request)?;
    let tenant = Uuid::new_v5(&NAMESPACE, request.tenant.as_bytes());
    let rows = views.iter().enumerate().map(|(index, raw)| row(&tenant, index as u32, raw));
    // A key that exists already is a replay: keep the stored row.
    Ok(Outcome::one_table(TABLE, &COLUMNS, Conflict::DoNothing, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::UpsertPlan;
    use sluice_sdk::sql::{Upsert, create_table};

    const VIEW: &str = r#"{"url":"https://example.com/pricing","visitor":"v_81f2","at":"2026-05-26T14:21:08.493Z","referrer":"https://news.example/","props":{"plan":"pro","ab":["b"]}}"#;

    fn request(tenant: &str, content_type: &str, body: &str) -> Request {
        Request {
            tenant: tenant.into(),
            method: "POST".into(),
            path: "/v1/events".into(),
            query: String::new(),
            headers: vec![("content-type".into(), content_type.into())],
            body: body.as_bytes().to_vec(),
            received_at: 1_780_000_000_000_000,
            settings: "{}".into(),
        }
    }

    fn json(body: &str) -> Outcome {
        handle(&request("acme", "application/json", body)).unwrap()
    }

    /// What the host checks: the table is valid, the plan fits it, and every
    /// row has one value of the right type per column.
    fn assert_fits(plan: &UpsertPlan) {
        let table = tables().into_iter().find(|t| t.name == plan.table).unwrap();
        create_table("public", &table).unwrap();
        Upsert::new("public", &table, &plan.columns, &plan.conflict).unwrap();
        for row in &plan.rows {
            assert_eq!(row.values.len(), plan.columns.len());
            for (value, column) in row.values.iter().zip(&plan.columns) {
                let declared = table.column(column).unwrap();
                assert!(value.column_type().is_none_or(|t| t == declared.data_type), "{column}: {value:?}");
                assert!(declared.nullable || *value != Value::Null, "{column} is null");
            }
        }
    }

    #[test]
    fn maps_a_view_column_by_column() {
        let outcome = json(VIEW);
        assert_eq!((outcome.events, outcome.rejections.len()), (1, 0));
        let plan = &outcome.plans[0];
        assert_fits(plan);
        let v = &plan.rows[0].values;
        assert!(matches!(v[0], Value::Uuid(_)));
        assert_eq!(v[1], Value::Text("https://example.com/pricing".into()));
        assert_eq!(v[2], Value::Text("v_81f2".into()));
        assert_eq!(v[3], Value::Timestamptz(1_779_805_268_493_000));
        assert_eq!(v[4], Value::Text("https://news.example/".into()));
        assert_eq!(v[5], Value::Jsonb(r#"{"plan":"pro","ab":["b"]}"#.into()));
    }

    #[test]
    fn optional_fields_may_be_absent_or_null_and_ndjson_works() {
        let body = "{\"url\":\"http://a.example/\",\"visitor\":\"v1\",\"at\":\"2026-01-01T00:00:00Z\"}\n\
                    {\"url\":\"HTTPS://a.example/\",\"visitor\":\"v1\",\"at\":\"2026-01-01T00:00:00Z\",\"referrer\":null,\"props\":null}\n";
        let outcome = handle(&request("acme", "application/x-ndjson", body)).unwrap();
        assert_eq!((outcome.events, outcome.rejections.len()), (2, 0));
        assert_fits(&outcome.plans[0]);
        for row in &outcome.plans[0].rows {
            assert_eq!(row.values[4..], [Value::Null, Value::Null]);
        }
    }

    #[test]
    fn the_key_is_stable_for_replays_and_distinct_otherwise() {
        let id = |tenant: &str, view: &str| {
            handle(&request(tenant, "application/json", view)).unwrap().plans[0].rows[0].values[0].clone()
        };
        let Value::Uuid((hi, _)) = id("acme", VIEW) else { panic!() };
        assert_eq!((hi >> 12) & 0xf, 5, "a UUIDv5");
        assert_eq!(id("acme", VIEW), id("acme", VIEW));
        // The same instant written with another offset, and other props, is the same view.
        let same = VIEW.replace("14:21:08.493Z", "16:21:08.493+02:00").replace(r#""plan":"pro""#, r#""plan":"x""#);
        assert_eq!(id("acme", VIEW), id("acme", &same));
        assert_ne!(id("acme", VIEW), id("globex", VIEW));
        assert_ne!(id("acme", VIEW), id("acme", &VIEW.replace("v_81f2", "v_81f3")));
        assert_ne!(id("acme", VIEW), id("acme", &VIEW.replace("/pricing", "/docs")));
        assert_ne!(id("acme", VIEW), id("acme", &VIEW.replace(".493Z", ".494Z")));
    }

    #[test]
    fn rejects_each_bad_view_by_index_with_a_reason_naming_the_field() {
        let long =
            format!(r#"{{"url":"https://a.example/{}","visitor":"v","at":"2026-01-01T00:00:00Z"}}"#, "x".repeat(2048));
        let body = format!(
            r#"[{VIEW},
            {{"visitor":"v","at":"2026-01-01T00:00:00Z"}},
            {{"url":"ftp://a.example/","visitor":"v","at":"2026-01-01T00:00:00Z"}},
            {{"url":"https://","visitor":"v","at":"2026-01-01T00:00:00Z"}},
            {{"url":"https://a.example/","visitor":" ","at":"2026-01-01T00:00:00Z"}},
            {{"url":"https://a.example/","visitor":7,"at":"2026-01-01T00:00:00Z"}},
            {{"url":"https://a.example/","visitor":"a\u0000b","at":"2026-01-01T00:00:00Z"}},
            {{"url":"https://a.example/","visitor":"v"}},
            {{"url":"https://a.example/","visitor":"v","at":"yesterday"}},
            {{"url":"https://a.example/","visitor":"v","at":"2026-01-01T00:00:00Z","referrer":false}},
            {{"url":"https://a.example/","visitor":"v","at":"2026-01-01T00:00:00Z","props":[1]}},
            {{"url":"https://a.example/","visitor":"v","at":"2026-01-01T00:00:00Z","props":{{"k":"\u0000"}}}},
            {long},
            "https://a.example/"]"#
        );
        let outcome = json(&body);
        assert_eq!(outcome.events, 14);
        assert_eq!(outcome.plans[0].rows.len(), 1, "the good view is still written");
        assert_eq!(outcome.plans[0].rows[0].event, 0);
        let reasons: Vec<(u32, &str)> = outcome.rejections.iter().map(|r| (r.index, r.reason.as_str())).collect();
        assert_eq!(
            reasons,
            [
                (1, "url is required"),
                (2, "url must start with http:// or https://"),
                (3, "url must start with http:// or https://"),
                (4, "visitor is empty"),
                (5, "visitor must be a string"),
                (6, "visitor contains a NUL character"),
                (7, "at is required"),
                (8, r#"at must be an RFC 3339 timestamp such as 2026-05-26T14:21:08Z, not "yesterday""#),
                (9, "referrer must be a string"),
                (10, "props must be a JSON object"),
                (11, "props contains a \\u0000 escape, which PostgreSQL cannot store"),
                (12, "url is longer than 2048 bytes"),
                (13, "a page view must be a JSON object"),
            ]
        );
    }

    #[test]
    fn a_request_of_only_bad_views_has_no_plan() {
        let outcome = json(r#"[{"url":"https://a.example/"}]"#);
        assert_eq!((outcome.events, outcome.plans.len(), outcome.rejections.len()), (1, 0, 1));
    }

    #[test]
    fn unreadable_bodies_fail_the_whole_request() {
        let malformed = handle(&request("acme", "application/json", "{nope"));
        assert!(matches!(malformed, Err(RequestError::Malformed(_))));
        let form = handle(&request("acme", "application/x-www-form-urlencoded", "url=x"));
        assert!(matches!(form, Err(RequestError::UnsupportedMediaType(_))));
    }
}
