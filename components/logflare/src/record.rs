//! Reading log records field by field, shared with `sluice-structlog`.
//!
//! A record is read in one serde pass into its members, each value left as
//! raw JSON text: the fields a normalizer knows are decoded from it, and the
//! rest are copied into a JSON object text as they were sent, never decoded
//! and re-encoded.

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use sluice_sdk::body;
use std::borrow::Cow;
use std::fmt;
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::{OffsetDateTime, PrimitiveDateTime};
use uuid::Uuid;

/// A JSON string, borrowed from the input unless it holds escapes (serde's
/// own `Cow<str>` always copies).
struct Str<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

/// A JSON object's members in order, each value as raw JSON text.
pub struct Object<'a> {
    pub members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Object<'a> {
    /// The value of `key`, or `None` when it is absent or null. Of repeated
    /// keys the last counts, as in jsonb.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        let (_, value) = self.members.iter().rev().find(|(k, _)| k == key)?;
        (value.get() != "null").then_some(*value)
    }

    /// The string value of `key`; `Err` names the key when it is not a string.
    pub fn string(&self, key: &str) -> Result<Option<Cow<'a, str>>, String> {
        self.get(key).map(|raw| string(raw).ok_or_else(|| format!("{key} must be a string"))).transpose()
    }
}

/// A raw value's string, or `None` when it is not one.
pub fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Str>(raw.get()).ok().map(|s| s.0)
}

/// One element of a body: an object, or anything else (which the caller
/// refuses by its index).
pub enum Record<'a> {
    Object(Object<'a>),
    Other,
}

impl<'de> Deserialize<'de> for Record<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RecordVisitor)
    }
}

/// Reads an object's members (see [`object_members`]); anything else is
/// skipped as [`Record::Other`].
struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = Record<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Record<'de>, A::Error> {
        object_members(map, |_, _| Ok(false)).map(|members| Record::Object(Object { members }))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Record<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Record::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Record<'de>, E> {
        Ok(Record::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Record<'de>, E> {
        Ok(Record::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Record<'de>, E> {
        Ok(Record::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Record<'de>, E> {
        Ok(Record::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Record<'de>, E> {
        Ok(Record::Other)
    }

    fn visit_unit<E>(self) -> Result<Record<'de>, E> {
        Ok(Record::Other)
    }
}

/// Reads the members of an object. `take(key, map)` may consume a member's
/// value itself and return `true` (a body's `batch`); every other member is
/// kept raw.
pub fn object_members<'de, A: MapAccess<'de>>(
    mut map: A,
    mut take: impl FnMut(&str, &mut A) -> Result<bool, A::Error>,
) -> Result<Vec<(Cow<'de, str>, &'de RawValue)>, A::Error> {
    let mut members = Vec::new();
    while let Some(Str(key)) = map.next_key()? {
        if !take(&key, &mut map)? {
            members.push((key, map.next_value()?));
        }
    }
    Ok(members)
}

/// The elements of an array, as [`Record`]s.
pub struct Records<'a>(pub Vec<Record<'a>>);

impl<'de> Deserialize<'de> for Records<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RecordsVisitor;
        impl<'de> Visitor<'de> for RecordsVisitor {
            type Value = Records<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Records<'de>, A::Error> {
                let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(record) = seq.next_element()? {
                    records.push(record);
                }
                Ok(Records(records))
            }
        }
        deserializer.deserialize_seq(RecordsVisitor)
    }
}

/// Builds a JSON object's text member by member.
pub struct ObjectText(String);

impl ObjectText {
    pub fn with_capacity(bytes: usize) -> ObjectText {
        let mut text = String::with_capacity(bytes + 2);
        text.push('{');
        ObjectText(text)
    }

    /// Adds `"key":json`; `key` must need no escaping.
    pub fn raw(&mut self, key: &str, json: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push('"');
        self.0.push_str(key);
        self.0.push_str("\":");
        self.0.push_str(json);
    }

    /// Copies a member of an [`Object`] as it was sent, refusing what
    /// PostgreSQL cannot store.
    pub fn member(&mut self, (key, value): &(Cow<str>, &RawValue)) -> Result<(), String> {
        if key.contains('\0') {
            return Err("a field name contains a NUL character".into());
        }
        if body::has_nul_escape(value.get()) {
            return Err(format!("{key} contains a \\u0000 escape, which PostgreSQL cannot store"));
        }
        match key {
            // Borrowed means the key held no escapes, so it is valid JSON as it is.
            Cow::Borrowed(key) => self.raw(key, value.get()),
            Cow::Owned(key) => {
                let quoted = serde_json::to_string(key).expect("a string serializes");
                self.raw(&quoted[1..quoted.len() - 1], value.get());
            }
        }
        Ok(())
    }

    pub fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z in unix µs: the
/// times accepted, which both a bigint and PostgreSQL's timestamptz hold.
const MIN_MICROS: i64 = -62_135_596_800_000_000;
const MAX_MICROS: i64 = 253_402_300_799_999_999;

/// A unix time is read as seconds below 10^11 (the year 5138), else as
/// milliseconds below 10^14, else as microseconds below 10^17, else as
/// nanoseconds. Times from 1973-03-03 to the year 5138 are read right in
/// any unit (in nanoseconds, as far as an i64 goes: 2262).
const SECONDS_BELOW: f64 = 1e11;
const MILLIS_BELOW: f64 = 1e14;
const MICROS_BELOW: f64 = 1e17;

/// A timestamp field in unix µs: an ISO 8601 / RFC 3339 string (a time
/// without offset is UTC), or a unix time whose unit its magnitude tells
/// (see `SECONDS_BELOW`).
pub fn timestamp(field: &str, raw: &RawValue) -> Result<i64, String> {
    let json = raw.get();
    let micros = match json.as_bytes()[0] {
        b'"' => {
            let text = string(raw).unwrap_or_default();
            iso8601(&text).ok_or_else(|| {
                format!("{field} must be an ISO 8601 time such as 2026-05-26T14:21:08.493Z, not {text:?}")
            })?
        }
        b'-' | b'0'..=b'9' => unix(json).ok_or_else(|| format!("{field} is out of range: {json}"))?,
        _ => return Err(format!("{field} must be an ISO 8601 string or a unix time")),
    };
    if !(MIN_MICROS..=MAX_MICROS).contains(&micros) {
        return Err(format!("{field} is out of range: it must fall in the years 1 to 9999"));
    }
    Ok(micros)
}

fn unix(number: &str) -> Option<i64> {
    if let Ok(n) = number.parse::<i64>() {
        // Whole numbers stay exact: nanoseconds do not fit an f64.
        let magnitude = n.unsigned_abs() as f64;
        return if magnitude < SECONDS_BELOW {
            Some(n * 1_000_000)
        } else if magnitude < MILLIS_BELOW {
            Some(n * 1000)
        } else if magnitude < MICROS_BELOW {
            Some(n)
        } else {
            Some(n.div_euclid(1000))
        };
    }
    let x = number.parse::<f64>().ok()?;
    let scale = match x.abs() {
        m if m < SECONDS_BELOW => 1e6,
        m if m < MILLIS_BELOW => 1e3,
        m if m < MICROS_BELOW => 1.0,
        _ => 1e-3,
    };
    let micros = (x * scale).round();
    // Out of i64's range saturates; the caller's range check refuses it.
    micros.is_finite().then_some(micros as i64)
}

fn iso8601(text: &str) -> Option<i64> {
    let at = match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(at) => at,
        Err(_) => {
            // Python's str(datetime) puts a space where ISO 8601 has a `T`.
            let text = match text.as_bytes().get(10) {
                Some(b' ') => Cow::Owned(format!("{}T{}", &text[..10], &text[11..])),
                _ => Cow::Borrowed(text),
            };
            OffsetDateTime::parse(&text, &Iso8601::DEFAULT)
                .or_else(|_| PrimitiveDateTime::parse(&text, &Iso8601::DEFAULT).map(PrimitiveDateTime::assume_utc))
                .ok()?
        }
    };
    Some(at.unix_timestamp_nanos().div_euclid(1000) as i64)
}

/// UUIDv5 names under one prefix (such as `<tenant>/`), built in one
/// reused buffer.
pub struct Names {
    namespace: Uuid,
    buffer: String,
    prefix: usize,
}

impl Names {
    pub fn new(namespace: Uuid, prefix: String) -> Names {
        Names { namespace, prefix: prefix.len(), buffer: prefix }
    }

    /// UUIDv5(namespace, prefix + name).
    pub fn id(&mut self, name: &str) -> Uuid {
        self.buffer.truncate(self.prefix);
        self.buffer.push_str(name);
        Uuid::new_v5(&self.namespace, self.buffer.as_bytes())
    }

    /// A client's id for a record: a UUID as it is; any other string, or a
    /// number (its JSON text), named under the prefix, so a retry gets the
    /// same id.
    pub fn client_id(&mut self, field: &str, raw: &RawValue) -> Result<Uuid, String> {
        let json = raw.get();
        match json.as_bytes()[0] {
            b'"' => {
                let id = string(raw).unwrap_or_default();
                if id.is_empty() {
                    return Err(format!("{field} is empty"));
                }
                Ok(Uuid::try_parse(&id).unwrap_or_else(|_| self.id(&id)))
            }
            b'-' | b'0'..=b'9' => Ok(self.id(json)),
            _ => Err(format!("{field} must be a string or a number")),
        }
    }
}

/// Time-ordered UUIDv7 ids for the records of one request that bring none.
pub struct TimeIds(uuid::Timestamp);

impl TimeIds {
    /// Ids ordered by `received_at` (µs); their random bits keep them apart.
    pub fn new(received_at: i64) -> TimeIds {
        let micros = received_at.max(0) as u64;
        let context = uuid::ContextV7::new();
        TimeIds(uuid::Timestamp::from_unix(context, micros / 1_000_000, (micros % 1_000_000) as u32 * 1000))
    }

    pub fn next(&self) -> Uuid {
        Uuid::new_v7(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> &RawValue {
        serde_json::from_str(json).unwrap()
    }

    const AT: i64 = 1_779_805_268_493_000;

    #[test]
    fn timestamps_in_every_form_decode_to_the_same_micros() {
        for json in [
            r#""2026-05-26T14:21:08.493Z""#,
            r#""2026-05-26T16:21:08.493+02:00""#,
            r#""2026-05-26T14:21:08.493""#,
            r#""2026-05-26 14:21:08.493""#,
            r#""2026-05-26T14:21:08.493000+0000""#,
            "1779805268.493",
            "1779805268493",
            "1779805268493.0",
            "1779805268493000",
            "1779805268493000000",
        ] {
            assert_eq!(timestamp("timestamp", raw(json)), Ok(AT), "{json}");
        }
        assert_eq!(timestamp("t", raw("1779805268")), Ok(1_779_805_268_000_000));
        assert_eq!(timestamp("t", raw("0")), Ok(0));
        assert_eq!(timestamp("t", raw("-1.5")), Ok(-1_500_000), "before 1970");
    }

    #[test]
    fn bad_timestamps_name_the_field() {
        for json in [r#""yesterday""#, "true", "{}", "1e300", r#""""#] {
            let e = timestamp("timestamp", raw(json)).unwrap_err();
            assert!(e.starts_with("timestamp "), "{json}: {e}");
        }
        assert!(timestamp("t", raw("-99999999999999999999")).unwrap_err().contains("out of range"));
    }

    #[test]
    fn records_keep_members_raw_and_borrowed() {
        let json = r#"{"a": [1, 2], "b\"c": "x", "a": {"k": null}, "n": null}"#;
        let Record::Object(object) = serde_json::from_str(json).unwrap() else { panic!() };
        assert!(matches!(object.members[0].0, Cow::Borrowed("a")));
        assert!(matches!(&object.members[1].0, Cow::Owned(k) if k == "b\"c"));
        assert_eq!(object.get("a").unwrap().get(), r#"{"k": null}"#, "the last of a repeated key");
        assert!(object.get("n").is_none(), "null is absent");
        assert_eq!(object.string("b\"c").unwrap().as_deref(), Some("x"));
        assert_eq!(object.string("a").unwrap_err(), "a must be a string");
        for other in ["1", "\"s\"", "[{}]", "null", "true"] {
            assert!(matches!(serde_json::from_str(other).unwrap(), Record::Other), "{other}");
        }
    }

    #[test]
    fn object_text_copies_members_and_refuses_nul() {
        let Record::Object(object) = serde_json::from_str(r#"{"a": [1], "q\"": "\n"}"#).unwrap() else { panic!() };
        let mut text = ObjectText::with_capacity(0);
        text.raw("id", "1");
        for member in &object.members {
            text.member(member).unwrap();
        }
        let text = text.finish();
        assert_eq!(text, r#"{"id":1,"a":[1],"q\"":"\n"}"#);
        serde_json::from_str::<serde_json::Value>(&text).unwrap();
        let mut text = ObjectText::with_capacity(0);
        assert!(text.member(&(Cow::Borrowed("m"), raw(r#"{"x":"\u0000"}"#))).unwrap_err().contains("m contains"));
        assert!(text.member(&(Cow::Owned("a\0".into()), raw("1"))).unwrap_err().contains("NUL"));
    }

    #[test]
    fn client_ids() {
        let mut names = Names::new(Uuid::nil(), "t/".into());
        let uuid = "0b6e3c2a-5f4d-4e3b-8a1c-9d8e7f6a5b4c";
        assert_eq!(names.client_id("id", raw(&format!("\"{uuid}\""))).unwrap().to_string(), uuid);
        let a = names.client_id("id", raw(r#""abc""#)).unwrap();
        assert_eq!(a, Uuid::new_v5(&Uuid::nil(), b"t/abc"));
        assert_eq!(names.client_id("id", raw("3")).unwrap(), names.client_id("id", raw(r#""3""#)).unwrap());
        assert_eq!(names.client_id("id", raw(r#""""#)).unwrap_err(), "id is empty");
        assert_eq!(names.client_id("id", raw("{}")).unwrap_err(), "id must be a string or a number");
    }
}
