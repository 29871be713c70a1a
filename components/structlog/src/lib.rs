//! Structured log records (`POST /v1/logs`): structlog event dicts, as a
//! stogger-style logger writes them, into stogger-postgres's table shape, so
//! stogger's queries run unchanged.
//!
//! The body is one record, an array of records or NDJSON. A record is an
//! object with `event` (required), and optionally `timestamp`, `level`,
//! `func`, `scope` and `record_id`; every other field goes into `data`.
//!
//! The table is `stogger_logs`, or the name in the tenant's settings:
//! `{"structlog": {"table": "app_logs"}}`. It is made from the template
//! `structured_logs` on first use. Records dedupe on `record_id`, a unique
//! column next to stogger's own, so stogger's `bigserial` key stays as it is.

use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_logflare::record::{self, Names, Object, ObjectText, Record};
use sluice_sdk::sql::MAX_IDENT_BYTES;
use sluice_sdk::{
    Column, ColumnDefault, ColumnType, Conflict, Index, IndexMethod, Outcome, Request, RequestError, Row, Table, Value,
    body,
};
use uuid::Uuid;

/// The template of the structured-log table.
pub const TEMPLATE: &str = "structured_logs";

/// The table records go to unless the tenant's settings name another.
pub const DEFAULT_TABLE: &str = "stogger_logs";

/// The namespace of record ids: `UUIDv5(NAMESPACE, "<tenant>/<text>")`.
pub const NAMESPACE: Uuid = Uuid::from_u128(0xe428_9558_dbb6_4f87_a863_f7a8_6657_02fb);

/// The level of a record that gives none: structlog's default.
const DEFAULT_LEVEL: &str = "info";

/// The columns of a plan; `id` is left to its serial default.
const COLUMNS: [&str; 7] = ["record_id", "timestamp", "level", "event", "func", "scope", "data"];

/// The longest index name the host makes is `<table>_record_id_idx`.
const MAX_TABLE_BYTES: usize = MAX_IDENT_BYTES - "_record_id_idx".len();

/// The template: stogger's columns and indexes, and a unique `record_id`.
pub fn tables() -> Vec<Table> {
    use ColumnType::*;
    vec![Table {
        name: TEMPLATE.into(),
        columns: vec![
            Column::new("id", Int8).not_null().default(ColumnDefault::Serial),
            Column::new("timestamp", Timestamptz).not_null(),
            Column::new("level", Text).not_null(),
            Column::new("event", Text).not_null(),
            Column::new("func", Text),
            Column::new("scope", Text),
            Column::new("data", Jsonb).not_null().default(ColumnDefault::Constant(Value::Jsonb("{}".into()))),
            Column::new("record_id", Uuid).not_null(),
        ],
        primary_key: vec!["id".into()],
        indexes: vec![
            Index::btree("timestamp", &["-timestamp"]),
            Index::btree("level", &["level"]),
            Index::btree("event", &["event"]),
            Index::btree("data", &["data"]).method(IndexMethod::Gin),
            // What a plan conflicts on, as it leaves `id` to its default.
            Index { unique: true, ..Index::btree("record_id", &["record_id"]) },
        ],
        template: true,
    }]
}

/// Normalizes one request into a plan for the tenant's structured-log table.
pub fn handle(request: &Request) -> Result<Outcome, RequestError> {
    let table = table(&request.settings)?;
    let records = body::events(request)?;
    let mut names = Names::new(NAMESPACE, format!("{}/", request.tenant));
    // How often each record text has come before in this request.
    let mut seen: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    let rows = records.into_iter().enumerate().map(|(index, raw)| {
        let repeat = seen.entry(raw.get()).and_modify(|n| *n += 1).or_insert(0);
        row(&mut names, request.received_at, raw, *repeat).map(|values| Row { event: index as u32, values })
    });
    let mut outcome = Outcome::one_table(&table, &COLUMNS, Conflict::DoNothing, rows);
    for plan in &mut outcome.plans {
        plan.template = Some(TEMPLATE.into());
    }
    Ok(outcome)
}

#[derive(Deserialize, Default)]
struct Settings {
    #[serde(default)]
    structlog: StructlogSettings,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StructlogSettings {
    table: Option<String>,
}

/// The table the tenant's settings name: a plain lower-case identifier
/// whose index names fit PostgreSQL's 63 bytes.
fn table(settings: &str) -> Result<String, RequestError> {
    let invalid = |why: String| RequestError::Malformed(format!("the tenant's settings are invalid: structlog{why}"));
    let settings: Settings = serde_json::from_str(settings).map_err(|e| invalid(format!(": {e}")))?;
    let Some(name) = settings.structlog.table else { return Ok(DEFAULT_TABLE.into()) };
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !plain || name.len() > MAX_TABLE_BYTES {
        return Err(invalid(format!(
            ".table must be a lower-case identifier ([a-z_][a-z0-9_]*) of at most {MAX_TABLE_BYTES} bytes, \
             not {name:?}"
        )));
    }
    Ok(name)
}

/// One record's values, or why it was refused. `repeat`: how often the same
/// text came before it in the request.
fn row(names: &mut Names, received_at: i64, raw: &RawValue, repeat: u32) -> Result<Vec<Value>, String> {
    let Ok(Record::Object(record)) = serde_json::from_str(raw.get()) else {
        return Err("a record must be a JSON object".into());
    };
    let event = text(&record, "event")?.ok_or("event is required")?;
    if event.trim().is_empty() {
        return Err("event is empty".into());
    }
    let level = match text(&record, "level")? {
        None => DEFAULT_LEVEL.to_owned(),
        Some(level) if level.is_empty() => return Err("level is empty".into()),
        Some(level) => level.to_lowercase(),
    };
    let timestamp = match record.get("timestamp") {
        Some(raw) => record::timestamp("timestamp", raw)?,
        None => received_at,
    };
    // Without a record_id, the record's own text and its place among the
    // request's repeats of that text name it: a replay of the request is
    // the same records, and a line logged twice in it is two records.
    let record_id = match (record.get("record_id"), repeat) {
        (Some(raw), _) => names.client_id("record_id", raw)?,
        (None, 0) => names.id(raw.get()),
        (None, n) => names.id(&format!("{}\0{n}", raw.get())),
    };
    let mut data = ObjectText::with_capacity(raw.get().len());
    for member @ (key, _) in &record.members {
        if !matches!(&**key, "timestamp" | "level" | "event" | "func" | "scope" | "record_id") {
            data.member(member)?;
        }
    }
    Ok(vec![
        Value::uuid(record_id.as_u128()),
        Value::Timestamptz(timestamp),
        Value::Text(level),
        Value::Text(event.into_owned()),
        Value::text_or_null(text(&record, "func")?),
        Value::text_or_null(text(&record, "scope")?),
        Value::Jsonb(data.finish()),
    ])
}

/// A text field: absent and null are `None`.
fn text<'a>(record: &Object<'a>, field: &str) -> Result<Option<std::borrow::Cow<'a, str>>, String> {
    let value = record.string(field)?;
    if value.as_ref().is_some_and(|v| v.contains('\0')) {
        return Err(format!("{field} contains a NUL character"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::sql::Upsert;

    const RECEIVED: i64 = 1_780_000_000_000_000;

    fn request(settings: &str, body: &str) -> Request {
        Request {
            tenant: "acme".into(),
            method: "POST".into(),
            path: "/v1/logs".into(),
            query: String::new(),
            headers: vec![("content-type".into(), "application/x-ndjson".into())],
            body: body.as_bytes().to_vec(),
            received_at: RECEIVED,
            settings: settings.into(),
        }
    }

    fn values(body: &str) -> Vec<Vec<Value>> {
        handle(&request("{}", body)).unwrap().plans[0].rows.iter().map(|r| r.values.clone()).collect()
    }

    #[test]
    fn maps_a_record_column_by_column() {
        let record = r#"{"timestamp":"2026-05-26T14:21:08.493Z","level":"ERROR","event":"payment_failed","func":"charge","scope":"billing","user_id":"123","amount":10}"#;
        let outcome = handle(&request("{}", record)).unwrap();
        let plan = &outcome.plans[0];
        assert_eq!((plan.table.as_str(), plan.template.as_deref()), (DEFAULT_TABLE, Some(TEMPLATE)));
        let v = &plan.rows[0].values;
        assert_eq!(v[0], Value::uuid(Uuid::new_v5(&NAMESPACE, format!("acme/{record}").as_bytes()).as_u128()));
        assert_eq!(v[1], Value::Timestamptz(1_779_805_268_493_000));
        assert_eq!(v[2], Value::Text("error".into()), "levels are lower-cased");
        assert_eq!(v[3], Value::Text("payment_failed".into()));
        assert_eq!(v[4], Value::Text("charge".into()));
        assert_eq!(v[5], Value::Text("billing".into()));
        assert_eq!(v[6], Value::Jsonb(r#"{"user_id":"123","amount":10}"#.into()));
        // The plan fits the template's instance and dedupes on record_id.
        let instance = tables()[0].instance(&plan.table);
        let upsert = Upsert::new("public", &instance, &plan.columns, &plan.conflict).unwrap();
        assert!(upsert.sql.contains(r#"ON CONFLICT ("record_id")"#), "{}", upsert.sql);
    }

    #[test]
    fn defaults() {
        let v = &values(r#"{"event":"started","func":null}"#)[0];
        assert_eq!(v[1], Value::Timestamptz(RECEIVED));
        assert_eq!(v[2], Value::Text("info".into()));
        assert_eq!((&v[4], &v[5]), (&Value::Null, &Value::Null));
        assert_eq!(v[6], Value::Jsonb("{}".into()));
        assert_eq!(
            values(r#"{"event":"e","timestamp":1779805268.493}"#)[0][1],
            Value::Timestamptz(1_779_805_268_493_000)
        );
    }

    #[test]
    fn record_ids() {
        let uuid = "0b6e3c2a-5f4d-4e3b-8a1c-9d8e7f6a5b4c";
        let rows = values(&format!(
            "{{\"event\":\"a\",\"record_id\":\"{uuid}\"}}\n{{\"event\":\"a\",\"record_id\":\"r-1\"}}\n\
             {{\"event\":\"b\"}}\n{{\"event\":\"b\"}}\n{{\"event\": \"b\"}}\n"
        ));
        let id = |row: &Vec<Value>| match row[0] {
            Value::Uuid((hi, lo)) => Uuid::from_u64_pair(hi, lo),
            _ => panic!(),
        };
        assert_eq!(id(&rows[0]).to_string(), uuid);
        assert_eq!(id(&rows[1]), Uuid::new_v5(&NAMESPACE, b"acme/r-1"));
        assert!(rows[1][6] == Value::Jsonb("{}".into()), "record_id is not data");
        assert_ne!(id(&rows[2]), id(&rows[3]), "a line logged twice in a request is two records");
        assert_ne!(id(&rows[3]), id(&rows[4]));
        // A replay of the request names the same records.
        let again = values(
            "{\"event\":\"a\",\"record_id\":\"r-1\"}\n{\"event\":\"a\",\"record_id\":\"r-2\"}\n{\"event\":\"b\"}\n{\"event\":\"b\"}\n",
        );
        assert_eq!((id(&again[2]), id(&again[3])), (id(&rows[2]), id(&rows[3])));
        // The same record in an array names the same id.
        let mut array = request("{}", r#"[{"event":"b"}, {"event":"c"}]"#);
        array.headers = vec![("content-type".into(), "application/json".into())];
        assert_eq!(id(&handle(&array).unwrap().plans[0].rows[0].values), id(&rows[2]));
    }

    #[test]
    fn rejects_each_bad_record_by_index_and_field() {
        let body = r#"[{"event":"ok"},{"level":"info"},{"event":""},{"event":3},{"event":"x","timestamp":"soon"},
            "text",{"event":"x","level":4},{"event":"x","scope":"a\u0000"},{"event":"x","k":"\u0000"},{"event":"x","record_id":[]}]"#;
        let mut r = request("{}", body);
        r.headers = vec![("content-type".into(), "application/json".into())];
        let outcome = handle(&r).unwrap();
        assert_eq!((outcome.events, outcome.plans[0].rows.len()), (10, 1));
        let reasons: Vec<(u32, &str)> = outcome.rejections.iter().map(|r| (r.index, r.reason.as_str())).collect();
        assert_eq!(reasons[0], (1, "event is required"));
        assert_eq!(reasons[1], (2, "event is empty"));
        assert_eq!(reasons[2], (3, "event must be a string"));
        assert!(reasons[3].0 == 4 && reasons[3].1.starts_with("timestamp must be"), "{reasons:?}");
        assert_eq!(reasons[4], (5, "a record must be a JSON object"));
        assert_eq!(reasons[5], (6, "level must be a string"));
        assert_eq!(reasons[6], (7, "scope contains a NUL character"));
        assert!(reasons[7].0 == 8 && reasons[7].1.starts_with("k contains a \\u0000"), "{reasons:?}");
        assert_eq!(reasons[8], (9, "record_id must be a string or a number"));
    }

    #[test]
    fn the_table_comes_from_settings() {
        let table = |settings: &str| handle(&request(settings, r#"{"event":"e"}"#)).map(|o| o.plans[0].table.clone());
        assert_eq!(table(r#"{"structlog":{"table":"app_logs"}}"#).unwrap(), "app_logs");
        assert_eq!(table(r#"{"logflare":{}}"#).unwrap(), DEFAULT_TABLE);
        let longest = "l".repeat(MAX_TABLE_BYTES);
        tables()[0].instance(&longest).validate().unwrap();
        assert_eq!(table(&format!(r#"{{"structlog":{{"table":"{longest}"}}}}"#)).unwrap(), longest);
        for bad in [
            r#"{"structlog":{"table":"App"}}"#,
            r#"{"structlog":{"table":"a-b"}}"#,
            r#"{"structlog":{"table":"1a"}}"#,
            r#"{"structlog":{"table":""}}"#,
            r#"{"structlog":{"tabel":"x"}}"#,
            r#"{"structlog":{"table":5}}"#,
        ] {
            let e = table(bad).unwrap_err();
            assert!(matches!(&e, RequestError::Malformed(m) if m.contains("structlog")), "{bad}: {e:?}");
        }
        let too_long = format!(r#"{{"structlog":{{"table":"{longest}x"}}}}"#);
        assert!(matches!(table(&too_long), Err(RequestError::Malformed(m)) if m.contains("structlog.table")));
    }

    #[test]
    fn the_template_is_valid() {
        tables()[0].validate().unwrap();
        tables()[0].instance(DEFAULT_TABLE).validate().unwrap();
    }
}
