//! The canonical event envelope (`POST /v1/events`).
//!
//! Each event becomes one row of table `events`, keyed by `event_id`: a
//! UUIDv5 of the tenant and the event's `idempotencyKey` when it has one (so
//! a replay finds the same row), else a time-ordered UUIDv7.
//!
//! With the tenant setting `{"events": {"table_per_event_type": true}}`,
//! each event goes instead to a table of its type (see [`type_table`]), made
//! from the template `events_by_type` on first use.

use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_sdk::body;
use sluice_sdk::sql::MAX_IDENT_BYTES;
use sluice_sdk::{
    Column, ColumnDefault, ColumnType, Conflict, Index, Outcome, Rejection, Request, RequestError, Row, Table,
    UpsertPlan, Value,
};
use std::borrow::Cow;
use std::collections::HashMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

#[cfg(all(target_family = "wasm", feature = "component"))]
sluice_sdk::export_normalizer!();

pub const TABLE: &str = "events";

/// The template of the tables per event type.
pub const TEMPLATE: &str = "events_by_type";

/// The longest name of a table per event type: the host names its index
/// `<table>_occurred_at_idx`, within PostgreSQL's 63 bytes.
const MAX_TYPE_TABLE_BYTES: usize = MAX_IDENT_BYTES - "_occurred_at_idx".len();

/// The namespace of Sluice's UUIDv5 event ids.
const NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_3c5e_0d7a_4c4e_9f57_2b9d_61a0_e3c1);

/// The columns of a plan, in the order rows list their values.
const COLUMNS: [&str; 9] = [
    "event_id",
    "event_type",
    "occurred_at",
    "customer_external_id",
    "source",
    "correlation_id",
    "payload",
    "metadata",
    "received_at",
];

/// The table events go to, and the template of the tables per event type.
pub fn tables() -> Vec<Table> {
    use ColumnType::*;
    let columns = vec![
        Column::new("event_id", Uuid).not_null(),
        Column::new("event_type", Text).not_null(),
        Column::new("occurred_at", Timestamptz).not_null(),
        Column::new("customer_external_id", Text),
        Column::new("source", Text),
        Column::new("correlation_id", Text),
        Column::new("payload", Jsonb),
        Column::new("metadata", Jsonb),
        Column::new("received_at", Timestamptz).not_null().default(ColumnDefault::Now),
    ];
    vec![
        Table {
            name: TABLE.into(),
            columns: columns.clone(),
            primary_key: vec!["event_id".into()],
            indexes: vec![
                Index::btree("occurred_at", &["-occurred_at"]),
                Index::btree("type_occurred_at", &["event_type", "-occurred_at"]),
            ],
            template: false,
        },
        // A table holds one type, so an index by type would only cost writes.
        Table {
            name: TEMPLATE.into(),
            columns,
            primary_key: vec!["event_id".into()],
            indexes: vec![Index::btree("occurred_at", &["-occurred_at"])],
            template: true,
        },
    ]
}

/// The table of an event type: `events_` and the type lower-cased, each run
/// of characters outside `[a-z0-9]` made one `_`, leading and trailing ones
/// dropped. When that changed more than case (`order.completed`), or the
/// name had to be cut to `MAX_TYPE_TABLE_BYTES`, `_` and 8 hex digits of a
/// hash of the type follow, so that distinct types get distinct tables;
/// types that differ only in case share one.
pub fn type_table(event_type: &str) -> String {
    let lower = event_type.to_ascii_lowercase();
    let mut slug = String::with_capacity(lower.len());
    for c in lower.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('_') {
            slug.push('_');
        }
    }
    if slug.ends_with('_') {
        slug.pop();
    }
    let room = MAX_TYPE_TABLE_BYTES - "events_".len();
    if slug == lower && slug.len() <= room {
        return format!("events_{slug}");
    }
    // The first 32 bits of UUIDv5(NAMESPACE, type), a SHA-1 of it.
    let hash = (Uuid::new_v5(&NAMESPACE, event_type.as_bytes()).as_u128() >> 96) as u32;
    slug.truncate(room - "_12345678".len());
    let slug = slug.trim_end_matches('_');
    if slug.is_empty() { format!("events_{hash:08x}") } else { format!("events_{slug}_{hash:08x}") }
}

/// The tenant's `events` settings.
#[derive(Deserialize)]
struct Settings {
    #[serde(default)]
    events: EventsSettings,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EventsSettings {
    #[serde(default)]
    table_per_event_type: bool,
}

fn table_per_event_type(settings: &str) -> Result<bool, RequestError> {
    let settings: Settings = serde_json::from_str(settings)
        .map_err(|e| RequestError::Malformed(format!("the tenant's settings are invalid: events: {e}")))?;
    Ok(settings.events.table_per_event_type)
}

/// The envelope read in one pass, when every field has its expected JSON
/// type (the common case).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    occurred_at: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    customer_external_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    idempotency_key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    correlation_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
}

/// The envelope with every field raw, read when the one-pass read fails, so
/// that each field can be checked on its own and a reason can name it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow)]
    occurred_at: Option<&'a RawValue>,
    #[serde(borrow)]
    source: Option<&'a RawValue>,
    #[serde(borrow)]
    customer_external_id: Option<&'a RawValue>,
    #[serde(borrow)]
    idempotency_key: Option<&'a RawValue>,
    #[serde(borrow)]
    correlation_id: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
}

impl<'a> RawEnvelope<'a> {
    /// Reads one raw event, naming the first field of the wrong type.
    fn read(raw: &'a RawValue) -> Result<Envelope<'a>, String> {
        let envelope: RawEnvelope = match serde_json::from_str(raw.get()) {
            Ok(envelope) => envelope,
            Err(_) if !raw.get().starts_with('{') => return Err("an event must be a JSON object".into()),
            Err(e) => return Err(format!("the event does not parse: {e}")),
        };
        Ok(Envelope {
            event_type: string("eventType", envelope.event_type)?,
            occurred_at: string("occurredAt", envelope.occurred_at)?,
            source: string("source", envelope.source)?,
            customer_external_id: string("customerExternalId", envelope.customer_external_id)?,
            idempotency_key: string("idempotencyKey", envelope.idempotency_key)?,
            correlation_id: string("correlationId", envelope.correlation_id)?,
            payload: envelope.payload,
            metadata: envelope.metadata,
        })
    }
}

/// A string field: absent and `null` are `None`.
fn string<'a>(field: &str, raw: Option<&'a RawValue>) -> Result<Option<Cow<'a, str>>, String> {
    match raw {
        None => Ok(None),
        Some(raw) => serde_json::from_str(raw.get()).map_err(|_| format!("{field} must be a string")),
    }
}

/// Longest accepted value of a short text field, in bytes.
const MAX_FIELD_BYTES: usize = 1024;

/// A text field, checked for what PostgreSQL's text type can hold.
fn text<'a>(field: &str, value: Option<Cow<'a, str>>) -> Result<Option<Cow<'a, str>>, String> {
    if let Some(value) = &value {
        if value.len() > MAX_FIELD_BYTES {
            return Err(format!("{field} is longer than {MAX_FIELD_BYTES} bytes"));
        }
        if value.contains('\0') {
            return Err(format!("{field} contains a NUL character"));
        }
    }
    Ok(value)
}

fn required<'a>(field: &str, value: Option<Cow<'a, str>>) -> Result<Cow<'a, str>, String> {
    match text(field, value)? {
        Some(value) if !value.trim().is_empty() => Ok(value),
        Some(_) => Err(format!("{field} is empty")),
        None => Err(format!("{field} is required")),
    }
}

/// An object field as JSON text: absent and `null` are SQL null.
fn object(field: &str, raw: Option<&RawValue>) -> Result<Value, String> {
    let Some(raw) = raw else { return Ok(Value::Null) };
    let json = raw.get();
    if json == "null" {
        return Ok(Value::Null);
    }
    if !json.starts_with('{') {
        return Err(format!("{field} must be a JSON object"));
    }
    if body::has_nul_escape(json) {
        return Err(format!("{field} contains a \\u0000 escape, which PostgreSQL cannot store"));
    }
    Ok(Value::Jsonb(json.to_owned()))
}

fn timestamp(field: &str, text: &str) -> Result<i64, String> {
    let at = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|_| format!("{field} must be an RFC 3339 timestamp such as 2026-05-26T14:21:08.493Z, not {text:?}"))?;
    Ok((at.unix_timestamp_nanos() / 1000) as i64)
}

/// Makes event ids for one request.
struct Ids {
    tenant: Uuid,
    clock: uuid::Timestamp,
}

impl Ids {
    fn new(tenant: &str, received_at: i64) -> Ids {
        let micros = received_at.max(0) as u64;
        let context = uuid::ContextV7::new();
        let clock = uuid::Timestamp::from_unix(context, micros / 1_000_000, (micros % 1_000_000) as u32 * 1000);
        Ids { tenant: Uuid::new_v5(&NAMESPACE, tenant.as_bytes()), clock }
    }

    fn id(&self, idempotency_key: Option<&str>) -> Uuid {
        match idempotency_key {
            Some(key) => Uuid::new_v5(&self.tenant, key.as_bytes()),
            None => Uuid::new_v7(self.clock),
        }
    }
}

/// One event's row, or why it was refused.
fn row(ids: &Ids, index: u32, received_at: i64, envelope: Envelope) -> Result<Row, String> {
    let event_type = required("eventType", envelope.event_type)?;
    let occurred_at = timestamp("occurredAt", &required("occurredAt", envelope.occurred_at)?)?;
    let idempotency_key = text("idempotencyKey", envelope.idempotency_key)?;
    // An empty key would make every such event of the tenant one id: the
    // second would be taken for a duplicate of the first and never stored.
    if idempotency_key.as_deref().is_some_and(|key| key.trim().is_empty()) {
        return Err("idempotencyKey is empty: send a non-empty key, or leave the field out for a new id".into());
    }
    let values = vec![
        Value::uuid(ids.id(idempotency_key.as_deref()).as_u128()),
        Value::Text(event_type.into_owned()),
        Value::Timestamptz(occurred_at),
        Value::text_or_null(text("customerExternalId", envelope.customer_external_id)?),
        Value::text_or_null(text("source", envelope.source)?),
        Value::text_or_null(text("correlationId", envelope.correlation_id)?),
        object("payload", envelope.payload)?,
        object("metadata", envelope.metadata)?,
        Value::Timestamptz(received_at),
    ];
    Ok(Row { event: index, values })
}

/// Normalizes one request into a plan for table `events`, or a plan per
/// event type's table.
pub fn handle(request: &Request) -> Result<Outcome, RequestError> {
    let per_type = table_per_event_type(&request.settings)?;
    let (body, format) = body::text(request)?;
    // One pass when every event is well typed; else event by event.
    let envelopes: Vec<Result<Envelope, String>> = match body::parse_all::<Envelope>(body, format) {
        Some(envelopes) => envelopes.into_iter().map(Ok).collect(),
        None => body::split(body, format)?.into_iter().map(RawEnvelope::read).collect(),
    };
    let ids = Ids::new(&request.tenant, request.received_at);
    let rows = envelopes
        .into_iter()
        .enumerate()
        .map(|(index, envelope)| envelope.and_then(|envelope| row(&ids, index as u32, request.received_at, envelope)));
    if per_type {
        return Ok(by_type(rows));
    }
    Ok(Outcome::one_table(TABLE, &COLUMNS, Conflict::DoNothing, rows))
}

/// The outcome of `rows` (one per event, in order) with a plan per event
/// type's table.
fn by_type(rows: impl Iterator<Item = Result<Row, String>>) -> Outcome {
    let mut outcome = Outcome::default();
    // Event type → its plan; the table is worked out once per type.
    let mut plans: HashMap<String, usize> = HashMap::new();
    for row in rows {
        match row {
            Err(reason) => outcome.rejections.push(Rejection { index: outcome.events, reason }),
            Ok(row) => {
                let Value::Text(event_type) = &row.values[1] else { unreachable!("row() puts the type second") };
                let plan = match plans.get(event_type) {
                    Some(&plan) => plan,
                    None => {
                        let table = type_table(event_type);
                        // Types that differ only in case share a table, and a plan.
                        let plan = outcome.plans.iter().position(|p| p.table == table).unwrap_or_else(|| {
                            outcome.plans.push(UpsertPlan {
                                table,
                                template: Some(TEMPLATE.into()),
                                columns: COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
                                conflict: Conflict::DoNothing,
                                rows: Vec::new(),
                            });
                            outcome.plans.len() - 1
                        });
                        plans.insert(event_type.clone(), plan);
                        plan
                    }
                };
                outcome.plans[plan].rows.push(row);
            }
        }
        outcome.events += 1;
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::sql::Upsert;

    pub const EXAMPLE: &str = r#"{"eventType":"order.completed","occurredAt":"2026-05-26T14:21:08.493Z","source":"billing-service","customerExternalId":"acct_8K2zRq","idempotencyKey":"order_38a91f-completed","correlationId":"req_4f30b2","payload":{"orderId":"ord_38a91f","amount":12900,"currency":"USD","items":[{"sku":"PR-PRO-MONTHLY","qty":1,"price":12900}]},"metadata":{"tier":"pro","region":"us-east-1"}}"#;

    fn request(tenant: &str, body: &str) -> Request {
        Request {
            tenant: tenant.into(),
            method: "POST".into(),
            path: "/v1/events".into(),
            query: String::new(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
            received_at: 1_780_000_000_000_000,
            settings: "{}".into(),
        }
    }

    #[test]
    fn maps_the_example_column_by_column() {
        let outcome = handle(&request("acme", EXAMPLE)).unwrap();
        assert_eq!(outcome.events, 1);
        assert!(outcome.rejections.is_empty());
        let plan = &outcome.plans[0];
        let v = &plan.rows[0].values;
        assert_eq!(v[1], Value::Text("order.completed".into()));
        assert_eq!(v[2], Value::Timestamptz(1_779_805_268_493_000));
        assert_eq!(v[3], Value::Text("acct_8K2zRq".into()));
        assert_eq!(v[4], Value::Text("billing-service".into()));
        assert_eq!(v[5], Value::Text("req_4f30b2".into()));
        assert!(matches!(&v[6], Value::Jsonb(j) if j.starts_with(r#"{"orderId":"ord_38a91f""#)));
        assert_eq!(v[7], Value::Jsonb(r#"{"tier":"pro","region":"us-east-1"}"#.into()));
        assert_eq!(v[8], Value::Timestamptz(1_780_000_000_000_000));
        // The plan fits the declared table.
        Upsert::new("public", &tables()[0], &plan.columns, &plan.conflict).unwrap();
    }

    #[test]
    fn idempotency_key_gives_a_stable_id_per_tenant() {
        let id = |tenant: &str| handle(&request(tenant, EXAMPLE)).unwrap().plans[0].rows[0].values[0].clone();
        assert_eq!(id("acme"), id("acme"));
        assert_ne!(id("acme"), id("globex"));
        let Value::Uuid((hi, _)) = id("acme") else { panic!() };
        assert_eq!((hi >> 12) & 0xf, 5, "a UUIDv5");
    }

    #[test]
    fn events_without_a_key_get_distinct_v7_ids() {
        let body = r#"[{"eventType":"a","occurredAt":"2026-01-01T00:00:00Z"},{"eventType":"a","occurredAt":"2026-01-01T00:00:00Z"}]"#;
        let outcome = handle(&request("acme", body)).unwrap();
        let ids: Vec<_> = outcome.plans[0].rows.iter().map(|r| r.values[0].clone()).collect();
        assert_ne!(ids[0], ids[1]);
        let Value::Uuid((hi, _)) = ids[0] else { panic!() };
        assert_eq!((hi >> 12) & 0xf, 7, "a UUIDv7");
        assert_eq!(hi >> 16, 1_780_000_000_000, "ordered by the time the request arrived (ms)");
    }

    #[test]
    fn rejects_each_bad_event_by_index_and_field() {
        let body = r#"[
            {"eventType":"ok","occurredAt":"2026-01-01T00:00:00+02:00"},
            {"occurredAt":"2026-01-01T00:00:00Z"},
            {"eventType":"x","occurredAt":"yesterday"},
            {"eventType":5,"occurredAt":"2026-01-01T00:00:00Z"},
            {"eventType":"x","occurredAt":"2026-01-01T00:00:00Z","payload":[1]},
            42,
            {"eventType":"x","occurredAt":"2026-01-01T00:00:00Z","source":"a\u0000b"},
            {"eventType":"x","occurredAt":"2026-01-01T00:00:00Z","metadata":{"k":"\u0000"}}
        ]"#;
        let outcome = handle(&request("acme", body)).unwrap();
        assert_eq!(outcome.events, 8);
        assert_eq!(outcome.plans[0].rows.len(), 1);
        assert_eq!(outcome.plans[0].rows[0].event, 0);
        let reasons: Vec<(u32, &str)> = outcome.rejections.iter().map(|r| (r.index, r.reason.as_str())).collect();
        assert_eq!(reasons[0], (1, "eventType is required"));
        assert_eq!(reasons[1].0, 2);
        assert!(reasons[1].1.starts_with("occurredAt must be an RFC 3339 timestamp"));
        assert_eq!(reasons[2], (3, "eventType must be a string"));
        assert_eq!(reasons[3], (4, "payload must be a JSON object"));
        assert_eq!(reasons[4], (5, "an event must be a JSON object"));
        assert_eq!(reasons[5], (6, "source contains a NUL character"));
        assert!(reasons[6].1.starts_with("metadata contains a \\u0000 escape"));
    }

    #[test]
    fn names_a_table_per_event_type() {
        assert_eq!(type_table("order_completed"), "events_order_completed");
        assert_eq!(type_table("Order_Completed"), "events_order_completed", "case alone adds no hash");
        let dotted = type_table("order.completed");
        assert!(dotted.starts_with("events_order_completed_") && dotted.len() == 31, "{dotted}");
        assert_ne!(dotted, type_table("order-completed"));
        assert_eq!(dotted, type_table("order.completed"), "stable");
        assert!(type_table("User Signed Up!").starts_with("events_user_signed_up_"));
        assert!(type_table("__x").starts_with("events_x_"));
        let unicode = type_table("注文");
        assert_eq!(unicode.len(), "events_".len() + 8, "{unicode}");
        // Long types are cut and told apart by their hash.
        let long = "a".repeat(100);
        let (a, b) = (type_table(&long), type_table(&format!("{long}b")));
        assert_ne!(a, b);
        let exact = "b".repeat(MAX_TYPE_TABLE_BYTES - 7);
        assert_eq!(type_table(&exact), format!("events_{exact}"));
        assert_ne!(type_table(&format!("{exact}b")), format!("events_{exact}"));
        let template = tables().into_iter().find(|t| t.template).unwrap();
        for name in [a, b, type_table(&exact), type_table(&format!("{exact}b")), type_table(&"_.".repeat(60))] {
            assert!(name.len() <= MAX_TYPE_TABLE_BYTES, "{name}");
            assert!(!name.contains("__") && !name.ends_with('_'), "{name}");
            template.instance(&name).validate().unwrap();
        }
    }

    #[test]
    fn routes_events_to_a_table_per_type_when_set() {
        let body = r#"[
            {"eventType":"order_completed","occurredAt":"2026-01-01T00:00:00Z","idempotencyKey":"a"},
            {"eventType":"User Signed Up!","occurredAt":"2026-01-01T00:00:00Z"},
            {"eventType":"ORDER_COMPLETED","occurredAt":"2026-01-01T00:00:00Z"},
            {"occurredAt":"2026-01-01T00:00:00Z"}
        ]"#;
        let mut r = request("acme", body);
        r.settings = r#"{"events": {"table_per_event_type": true}, "logflare": {}}"#.into();
        let outcome = handle(&r).unwrap();
        assert_eq!(outcome.events, 4);
        assert_eq!(outcome.rejections, [Rejection { index: 3, reason: "eventType is required".into() }]);
        let plans: Vec<(&str, Vec<u32>)> =
            outcome.plans.iter().map(|p| (p.table.as_str(), p.rows.iter().map(|r| r.event).collect())).collect();
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0], ("events_order_completed", vec![0, 2]));
        assert!(plans[1].0.starts_with("events_user_signed_up_") && plans[1].1 == [1], "{plans:?}");
        let template = tables().into_iter().find(|t| t.template).unwrap();
        for plan in &outcome.plans {
            assert_eq!(plan.template.as_deref(), Some(TEMPLATE));
            Upsert::new("public", &template.instance(&plan.table), &plan.columns, &plan.conflict).unwrap();
        }
        // The same request with the same id lands in the same table.
        assert_eq!(handle(&r).unwrap().plans[0].rows[0].values[0], outcome.plans[0].rows[0].values[0]);

        // Off (the default) or unset: one table.
        r.settings = r#"{"events": {"table_per_event_type": false}}"#.into();
        assert_eq!(handle(&r).unwrap().plans[0].table, TABLE);
        r.settings = r#"{"events": {"table_per_type": true}}"#.into();
        assert!(matches!(handle(&r), Err(RequestError::Malformed(m)) if m.contains("table_per_type")));
    }

    #[test]
    fn whole_request_errors() {
        assert!(matches!(handle(&request("t", "{nope")), Err(RequestError::Malformed(_))));
        let mut r = request("t", "a=b");
        r.headers = vec![("content-type".into(), "application/x-www-form-urlencoded".into())];
        assert!(matches!(handle(&r), Err(RequestError::UnsupportedMediaType(_))));
    }
}
