//! Logflare's ingest API (`POST /api/logs`, `POST /logs`), so unchanged
//! Logflare clients can send to Sluice.
//!
//! The source is the query's `source=<uuid>` or `source_name=<name>`, or
//! (as winston-logflare sends it) a `source`/`source_name` member beside a
//! body's `batch`; each source has a table of Logflare's PostgreSQL shape, `log_events_<uuid with
//! '_' for '-'>`, made from the template `log_events` on first use. The body
//! is one event, `{"batch": [events]}`, an array of events, or NDJSON. An
//! event is an object with `message`, `event_message` or `log_entry` (the
//! name Logflare's browser and edge clients use), and optionally
//! `metadata`, `timestamp`, `id` and any other fields, all kept in `body`.
//!
//! Tenant settings (`request.settings`, key `logflare`):
//! `{"logflare": {"sources": {"<name>": "<uuid>"}, "create_sources": true}}`.

pub mod record;

use record::{Names, Object, ObjectText, Record, Records, TimeIds, object_members};
use serde::Deserialize;
use serde::de::{Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use sluice_sdk::body::{self, Format};
use sluice_sdk::{Column, ColumnType, Conflict, Index, Outcome, Request, RequestError, Row, Table, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;

/// The template of every source's table.
pub const TEMPLATE: &str = "log_events";

/// The namespace of the UUIDv5s made here: a source's id from its name, an
/// event's id from a client's id that is not a UUID.
pub const NAMESPACE: Uuid = Uuid::from_u128(0xf2e5_d5a6_c743_4a54_b100_f455_b90f_4f4b);

const COLUMNS: [&str; 4] = ["id", "timestamp", "event_message", "body"];

/// The template a table per source is made from: Logflare's PostgreSQL
/// backend's shape, with an index for time-range scans.
pub fn tables() -> Vec<Table> {
    use ColumnType::*;
    vec![Table {
        name: TEMPLATE.into(),
        columns: vec![
            Column::new("id", Uuid).not_null(),
            // Unix microseconds.
            Column::new("timestamp", Int8).not_null(),
            Column::new("event_message", Text).not_null(),
            Column::new("body", Jsonb).not_null(),
        ],
        primary_key: vec!["id".into()],
        indexes: vec![Index::btree("timestamp", &["-timestamp"])],
        template: true,
    }]
}

/// The table of a source, named as Logflare names it.
pub fn table(source: Uuid) -> String {
    format!("{TEMPLATE}_{}", source.to_string().replace('-', "_"))
}

/// Normalizes one request into a plan for its source's table.
pub fn handle(request: &Request) -> Result<Outcome, RequestError> {
    let sources = Settings::read(&request.settings)?;
    let (text, format) = body::text(request)?;
    let Body { records, named } = records(text, format)?;
    let source = sources.source(request, &named)?;
    let mut ids = Names::new(NAMESPACE, format!("{}/{source}/", request.tenant));
    let time_ids = TimeIds::new(request.received_at);
    let rows = records.into_iter().enumerate().map(|(index, record)| {
        let Record::Object(event) = record else { return Err("an event must be a JSON object".into()) };
        row(&mut ids, &time_ids, request.received_at, event).map(|values| Row { event: index as u32, values })
    });
    let mut outcome = Outcome::one_table(&table(source), &COLUMNS, Conflict::DoNothing, rows);
    for plan in &mut outcome.plans {
        plan.template = Some(TEMPLATE.into());
    }
    Ok(outcome)
}

/// The tenant's `logflare` settings.
#[derive(Deserialize, Default)]
struct Settings {
    #[serde(default)]
    logflare: Sources,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Sources {
    /// Declared sources: name → UUID.
    sources: BTreeMap<String, String>,
    /// Whether sources that are not declared are made on first use.
    create_sources: bool,
}

impl Default for Sources {
    fn default() -> Sources {
        Sources { sources: BTreeMap::new(), create_sources: true }
    }
}

impl Settings {
    fn read(json: &str) -> Result<Sources, RequestError> {
        let settings: Settings = serde_json::from_str(json)
            .map_err(|e| RequestError::Malformed(format!("the tenant's settings are invalid: logflare: {e}")))?;
        for (name, id) in &settings.logflare.sources {
            if Uuid::try_parse(id).is_err() {
                return Err(RequestError::Malformed(format!(
                    "the tenant's settings are invalid: logflare.sources.{name} must be a UUID, not {id:?}"
                )));
            }
        }
        Ok(settings.logflare)
    }
}

impl Sources {
    /// The source the request names: in its query, else beside its body's
    /// `batch`.
    fn source(&self, request: &Request, body: &Named) -> Result<Uuid, RequestError> {
        let (id, name) = (param(&request.query, "source"), param(&request.query, "source_name"));
        let (id, name) = match (id, name) {
            (None, None) => (body.source.clone().map(Cow::Owned), body.source_name.clone().map(Cow::Owned)),
            named => named,
        };
        let by_id = match id {
            None => None,
            Some(text) => Some(
                Uuid::try_parse(&text)
                    .map_err(|_| RequestError::Malformed(format!("source must be a source's UUID, not {text:?}")))?,
            ),
        };
        let by_name = match name {
            None => None,
            Some(name) => Some((self.named(&request.tenant, &name)?, name)),
        };
        match (by_id, by_name) {
            (None, None) => Err(RequestError::Malformed(
                "the request names no source: send source=<uuid> or source_name=<name> in the query, or \
                 \"source\" or \"source_name\" beside the body's \"batch\""
                    .into(),
            )),
            (Some(id), Some((named, name))) if id != named => Err(RequestError::Malformed(format!(
                "source={id} and source_name={name} name different sources (source {name:?} is {named})"
            ))),
            (_, Some((id, _))) => Ok(id),
            (Some(id), None) => {
                let declared = self.sources.values().any(|d| Uuid::try_parse(d) == Ok(id));
                if declared || self.create_sources {
                    Ok(id)
                } else {
                    Err(RequestError::NotFound(format!(
                        "no source {id}: it is not among the tenant's sources (settings logflare.sources), \
                         and create_sources is false"
                    )))
                }
            }
        }
    }

    /// The source called `name`: declared, else (when sources are made on
    /// first use) UUIDv5(NAMESPACE, "<tenant>/<name>"), which every host
    /// derives alike.
    fn named(&self, tenant: &str, name: &str) -> Result<Uuid, RequestError> {
        if name.is_empty() {
            return Err(RequestError::Malformed("source_name is empty".into()));
        }
        if let Some(id) = self.sources.get(name) {
            return Ok(Uuid::try_parse(id).expect("checked when read"));
        }
        if self.create_sources {
            return Ok(Uuid::new_v5(&NAMESPACE, format!("{tenant}/{name}").as_bytes()));
        }
        Err(RequestError::NotFound(format!(
            "no source named {name:?}: it is not among the tenant's sources (settings logflare.sources), \
             and create_sources is false"
        )))
    }
}

/// The first value of query parameter `name`, URL-decoded.
fn param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    let value = query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })?;
    if !value.contains(['%', '+']) {
        return Some(Cow::Borrowed(value));
    }
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |at: usize| bytes.get(at).and_then(|&b| (b as char).to_digit(16));
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high * 16 + low) as u8);
                i += 2;
            }
            (b'+', ..) => decoded.push(b' '),
            (b, ..) => decoded.push(b),
        }
        i += 1;
    }
    Some(Cow::Owned(String::from_utf8_lossy(&decoded).into_owned()))
}

/// The events of a body, read in one pass, and the source it names.
fn records(text: &str, format: Format) -> Result<Body<'_>, RequestError> {
    let error = |e: serde_json::Error| match e.classify() {
        serde_json::error::Category::Data => e.to_string(),
        _ => format!("the body is not valid JSON: {e}"),
    };
    match format {
        Format::Json if text.trim().is_empty() => Err(RequestError::Malformed(
            "the body is empty; send an event, {\"batch\": [events]} or an array of events".into(),
        )),
        Format::Json => serde_json::from_str::<Body>(text).map_err(|e| RequestError::Malformed(error(e))),
        Format::Ndjson => text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                serde_json::from_str::<Record>(line).map_err(|e| {
                    RequestError::Malformed(format!("line {} of the NDJSON body is not valid JSON: {e}", n + 1))
                })
            })
            .collect::<Result<_, _>>()
            .map(|records| Body { records, named: Named::default() }),
    }
}

/// A JSON body: one event, `{"batch": [events]}` or an array of events;
/// and the source a batch's object names beside it.
struct Body<'a> {
    records: Vec<Record<'a>>,
    named: Named,
}

/// `source` and `source_name` members beside a body's `batch`.
#[derive(Default)]
struct Named {
    source: Option<String>,
    source_name: Option<String>,
}

impl<'de> serde::Deserialize<'de> for Body<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"an event, {"batch": [events]} or an array of events"#)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Body<'de>, A::Error> {
        let records = Records::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Body { records: records.0, named: Named::default() })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Body<'de>, A::Error> {
        // An object with `batch` is a batch (of its other members only the
        // source is read, as Logflare does); any other object is one event.
        let mut batch = None;
        let members = object_members(map, |key, map| {
            if key != "batch" {
                return Ok(false);
            }
            batch = Some(map.next_value::<Records>()?.0);
            Ok(true)
        })?;
        let Some(records) = batch else {
            return Ok(Body { records: vec![Record::Object(Object { members })], named: Named::default() });
        };
        let beside = Object { members };
        let named = |key: &str| beside.string(key).map(|s| s.map(Cow::into_owned)).map_err(A::Error::custom);
        Ok(Body { records, named: Named { source: named("source")?, source_name: named("source_name")? } })
    }
}

/// One event's values, or why it was refused.
fn row(ids: &mut Names, time_ids: &TimeIds, received_at: i64, event: Object) -> Result<Vec<Value>, String> {
    // `event_message` is Logflare's own name; `message` is what most clients
    // send; `log_entry` what Logflare's browser and edge senders send.
    let message_key = ["event_message", "message", "log_entry"]
        .into_iter()
        .find(|key| event.get(key).is_some())
        .ok_or("message (or event_message, or log_entry) is required")?;
    let message = event.string(message_key)?.expect("present");
    if message.trim().is_empty() {
        return Err(format!("{message_key} is empty"));
    }
    if message.contains('\0') {
        return Err(format!("{message_key} contains a NUL character"));
    }
    let timestamp = match event.get("timestamp") {
        Some(raw) => record::timestamp("timestamp", raw)?,
        None => received_at,
    };
    let id = match event.get("id") {
        Some(raw) => ids.client_id("id", raw)?,
        None => time_ids.next(),
    };

    // The body is the event as sent, with the id and timestamp as stored
    // and its message as `event_message`.
    let size = event.members.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum::<usize>();
    let mut body = ObjectText::with_capacity(size + 96);
    body.raw("id", &format!("\"{id}\""));
    body.raw("timestamp", &timestamp.to_string());
    body.raw("event_message", event.get(message_key).expect("read above").get());
    for member @ (key, _) in &event.members {
        if !matches!(&**key, "id" | "timestamp" | "event_message") && key != message_key {
            body.member(member)?;
        }
    }
    Ok(vec![
        Value::uuid(id.as_u128()),
        Value::Int8(timestamp),
        Value::Text(message.into_owned()),
        Value::Jsonb(body.finish()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::sql::Upsert;

    const AT: i64 = 1_779_805_268_493_000;
    const RECEIVED: i64 = 1_780_000_000_000_000;
    const SOURCE: &str = "6f1d4a8e-3b7c-4e1a-9d2f-0a1b2c3d4e5f";

    fn request(query: &str, settings: &str, body: &str) -> Request {
        Request {
            tenant: "acme".into(),
            method: "POST".into(),
            path: "/api/logs".into(),
            query: query.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
            received_at: RECEIVED,
            settings: settings.into(),
        }
    }

    fn ok(query: &str, body: &str) -> Outcome {
        handle(&request(query, "{}", body)).unwrap()
    }

    fn json(value: &Value) -> serde_json::Value {
        let Value::Jsonb(text) = value else { panic!("{value:?}") };
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn single_batch_array_and_ndjson_forms() {
        let source = format!("source={SOURCE}");
        assert_eq!(ok(&source, r#"{"message":"one"}"#).plans[0].rows.len(), 1);
        let batch = ok(&source, r#"{"batch":[{"message":"a"},{"event_message":"b"}],"ignored":1}"#);
        assert_eq!((batch.events, batch.plans[0].rows.len()), (2, 2));
        assert_eq!(batch.plans[0].rows[1].values[2], Value::Text("b".into()));
        assert_eq!(ok(&source, r#"[{"message":"a"},{"message":"b"},{"message":"c"}]"#).events, 3);
        let mut nd = request(&source, "{}", "{\"message\":\"a\"}\n\n{\"message\":\"b\"}\n");
        nd.headers = vec![("content-type".into(), "application/x-ndjson".into())];
        assert_eq!(handle(&nd).unwrap().plans[0].rows.len(), 2);

        // The plan names the source's table, an instance of the template.
        let plan = &batch.plans[0];
        let table = format!("log_events_{}", SOURCE.replace('-', "_"));
        assert_eq!((plan.table.as_str(), plan.template.as_deref()), (table.as_str(), Some(TEMPLATE)));
        let instance = tables()[0].instance(&plan.table);
        instance.validate().unwrap();
        Upsert::new("public", &instance, &plan.columns, &plan.conflict).unwrap();
    }

    #[test]
    fn the_source_may_be_named_beside_the_batch() {
        // winston-logflare: {"batch": [...], "source": "<uuid>"} to /logs.
        let body = format!(r#"{{"batch":[{{"message":"a"}}],"source":"{SOURCE}"}}"#);
        let table = format!("log_events_{}", SOURCE.replace('-', "_"));
        assert_eq!(ok("", &body).plans[0].table, table);
        let named = ok("", r#"{"batch":[{"message":"a"}],"source_name":"app"}"#);
        assert_eq!(named.plans[0].table, self::table(Uuid::new_v5(&NAMESPACE, b"acme/app")));
        // The query wins over the body; both name sources the same way.
        assert_eq!(ok("source_name=app", &body).plans[0].table, named.plans[0].table);
        // A single event's `source` is its own data, not the source.
        let error = handle(&request("", "{}", &format!(r#"{{"message":"a","source":"{SOURCE}"}}"#))).unwrap_err();
        assert!(format!("{error:?}").contains("names no source"), "{error:?}");
        let error = handle(&request("", "{}", r#"{"batch":[],"source":7}"#)).unwrap_err();
        assert!(format!("{error:?}").contains("source must be a string"), "{error:?}");
        let error = handle(&request("", "{}", r#"{"batch":[],"source":"not-a-uuid"}"#)).unwrap_err();
        assert!(format!("{error:?}").contains("source must be a source's UUID"), "{error:?}");
    }

    #[test]
    fn log_entry_is_a_message() {
        // pino-logflare's browser and edge senders.
        let outcome = ok(
            &format!("source={SOURCE}"),
            r#"{"batch":[{"log_entry":"from the browser","metadata":{"level":"info"}}]}"#,
        );
        let values = &outcome.plans[0].rows[0].values;
        assert_eq!(values[2], Value::Text("from the browser".into()));
        let body = json(&values[3]);
        assert_eq!(body["event_message"], "from the browser");
        assert!(body.get("log_entry").is_none(), "kept once, as event_message: {body}");
        assert_eq!(body["metadata"]["level"], "info");
        // Of several names, Logflare's own wins.
        let outcome = ok(&format!("source={SOURCE}"), r#"{"log_entry":"l","message":"m","event_message":"e"}"#);
        assert_eq!(outcome.plans[0].rows[0].values[2], Value::Text("e".into()));
    }

    #[test]
    fn body_is_the_processed_event() {
        let outcome = ok(
            &format!("source={SOURCE}"),
            r#"{"message":"hi \"you\"","metadata":{"user":{"id":7}},"timestamp":"2026-05-26T14:21:08.493Z","host":"web-1","event_message":null}"#,
        );
        let values = &outcome.plans[0].rows[0].values;
        assert_eq!(values[1], Value::Int8(AT));
        assert_eq!(values[2], Value::Text("hi \"you\"".into()));
        let Value::Uuid((hi, lo)) = values[0] else { panic!() };
        let body = json(&values[3]);
        assert_eq!(
            body,
            serde_json::json!({"id": Uuid::from_u64_pair(hi, lo).to_string(), "timestamp": AT,
                "event_message": "hi \"you\"", "metadata": {"user": {"id": 7}}, "host": "web-1"})
        );
        // Without a timestamp: the time the request arrived.
        let outcome = ok(&format!("source={SOURCE}"), r#"{"message":"x"}"#);
        assert_eq!(outcome.plans[0].rows[0].values[1], Value::Int8(RECEIVED));
        assert_eq!(json(&outcome.plans[0].rows[0].values[3])["timestamp"], RECEIVED);
    }

    #[test]
    fn timestamp_forms_give_the_same_micros() {
        let outcome = ok(
            &format!("source={SOURCE}"),
            r#"[{"message":"a","timestamp":"2026-05-26T16:21:08.493+02:00"},{"message":"b","timestamp":1779805268.493},
                {"message":"c","timestamp":1779805268493},{"message":"d","timestamp":1779805268493000}]"#,
        );
        assert!(outcome.plans[0].rows.iter().all(|r| r.values[1] == Value::Int8(AT)));
    }

    #[test]
    fn ids_are_kept_derived_or_made() {
        let uuid = "0b6e3c2a-5f4d-4e3b-8a1c-9d8e7f6a5b4c";
        let body = format!(
            r#"[{{"message":"a","id":"{uuid}"}},{{"message":"b","id":"req-1"}},{{"message":"c","id":42}},{{"message":"d"}},{{"message":"e"}}]"#
        );
        let ids = |query: &str| -> Vec<Uuid> {
            ok(query, &body).plans[0]
                .rows
                .iter()
                .map(|r| {
                    let Value::Uuid((hi, lo)) = r.values[0] else { panic!() };
                    assert_eq!(json(&r.values[3])["id"], Uuid::from_u64_pair(hi, lo).to_string());
                    Uuid::from_u64_pair(hi, lo)
                })
                .collect()
        };
        let first = ids(&format!("source={SOURCE}"));
        assert_eq!(first[0].to_string(), uuid);
        assert_eq!(first[1], Uuid::new_v5(&NAMESPACE, format!("acme/{SOURCE}/req-1").as_bytes()));
        assert_eq!(first[2], Uuid::new_v5(&NAMESPACE, format!("acme/{SOURCE}/42").as_bytes()));
        assert_eq!(first[3].get_version_num(), 7);
        assert_ne!(first[3], first[4]);
        let again = ids(&format!("source={SOURCE}"));
        assert_eq!(first[..3], again[..3], "a retry gets the same ids");
        assert_ne!(first[1], ids("source_name=other")[1], "ids are per source");
    }

    #[test]
    fn rejects_each_bad_event_by_index() {
        let outcome = ok(
            &format!("source={SOURCE}"),
            r#"[{"message":"ok"},{"metadata":{}},{"message":""},{"message":5},{"event_message":"x","timestamp":"yesterday"},
                7,{"message":"x","id":true},{"message":"x","metadata":{"k":"\u0000"}},{"message":"a\u0000"}]"#,
        );
        assert_eq!(outcome.events, 9);
        assert_eq!(outcome.plans[0].rows.len(), 1);
        let reasons: Vec<(u32, &str)> = outcome.rejections.iter().map(|r| (r.index, r.reason.as_str())).collect();
        assert_eq!(reasons[0], (1, "message (or event_message, or log_entry) is required"));
        assert_eq!(reasons[1], (2, "message is empty"));
        assert_eq!(reasons[2], (3, "message must be a string"));
        assert_eq!(reasons[3].0, 4);
        assert!(reasons[3].1.starts_with("timestamp must be an ISO 8601 time"), "{}", reasons[3].1);
        assert_eq!(reasons[4], (5, "an event must be a JSON object"));
        assert_eq!(reasons[5], (6, "id must be a string or a number"));
        assert!(reasons[6].1.starts_with("metadata contains a \\u0000 escape"));
        assert_eq!(reasons[7], (8, "message contains a NUL character"));
    }

    #[test]
    fn sources_by_name_and_id() {
        let settings = format!(r#"{{"logflare": {{"sources": {{"app": "{SOURCE}"}}, "create_sources": false}}}}"#);
        let table = |query: &str, settings: &str| {
            handle(&request(query, settings, r#"{"message":"m"}"#)).map(|o| o.plans[0].table.clone())
        };
        let app = format!("log_events_{}", SOURCE.replace('-', "_"));
        assert_eq!(table("source_name=app", &settings).unwrap(), app);
        assert_eq!(table(&format!("source={}", SOURCE.to_uppercase()), &settings).unwrap(), app);
        assert_eq!(table(&format!("source_name=app&source={SOURCE}"), &settings).unwrap(), app);
        // Undeclared sources exist only when they are made on first use.
        let typo = table("source_name=typo", &settings).unwrap_err();
        assert!(matches!(&typo, RequestError::NotFound(m) if m.contains("\"typo\"")), "{typo:?}");
        let other = "00000000-0000-4000-8000-000000000000";
        assert!(matches!(table(&format!("source={other}"), &settings), Err(RequestError::NotFound(_))));
        assert!(table(&format!("source={other}"), "{}").unwrap().ends_with("00000000_0000_4000_8000_000000000000"));
        let named = Uuid::new_v5(&NAMESPACE, b"acme/my app");
        assert_eq!(table("source_name=my%20app", "{}").unwrap(), super::table(named));
        assert_eq!(table("api=1&source_name=my+app", r#"{"events":{}}"#).unwrap(), super::table(named));

        let malformed = |query: &str, settings: &str| match table(query, settings) {
            Err(RequestError::Malformed(m)) => m,
            other => panic!("{query}: {other:?}"),
        };
        assert!(malformed("", "{}").contains("send source=<uuid> or source_name=<name>"));
        assert!(malformed("source=nope", "{}").contains("\"nope\""));
        assert!(malformed(&format!("source={other}&source_name=app"), &settings).contains("different sources"));
        assert!(malformed("source_name=", "{}").contains("empty"));
        assert!(malformed("source_name=a", r#"{"logflare":{"sources":{"a":"x"}}}"#).contains("logflare.sources.a"));
        assert!(malformed("source_name=a", r#"{"logflare":{"create_source":false}}"#).contains("create_source"));
    }

    #[test]
    fn query_parameters_are_url_decoded() {
        assert_eq!(param("a=1&source_name=x%2Fy+z%zz%4", "source_name").as_deref(), Some("x/y z%zz%4"));
        assert_eq!(param("source_name&source_name=b", "source_name").as_deref(), Some(""), "the first one counts");
        assert_eq!(param("source_names=b", "source_name"), None);
        assert_eq!(param("source_name=%C3%A9", "source_name").as_deref(), Some("é"));
    }

    #[test]
    fn whole_request_errors() {
        let source = format!("source={SOURCE}");
        for body in ["{nope", "", "5", r#"{"batch": 5}"#, "[1,"] {
            assert!(matches!(handle(&request(&source, "{}", body)), Err(RequestError::Malformed(_))), "{body}");
        }
    }

    #[test]
    fn the_template_is_valid_and_names_fit() {
        let template = &tables()[0];
        template.validate().unwrap();
        template.instance(&table(Uuid::max())).validate().unwrap();
    }
}
