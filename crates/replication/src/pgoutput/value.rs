//! Column values decoded from pgoutput's text format by their type OID.
//!
//! The replication connection sets `DateStyle=ISO`, `TimeZone=UTC`,
//! `bytea_output=hex` and `extra_float_digits=3` at startup, so the text the
//! server sends has one known shape per type. A text that still does not
//! parse as its type (it should not happen) is kept as [`Value::Other`]: a
//! value is never dropped.

use bytes::Bytes;

/// Type OIDs of the built-in types decoded into typed values.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// One column value of a row change.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A TOASTed value that the change did not touch: the server did not send
    /// it, and it is *not* NULL. The row's previous value still holds.
    Unchanged,
    Bool(bool),
    Int2(i16),
    Int4(i32),
    Int8(i64),
    Float4(f32),
    Float8(f64),
    /// `numeric`, as PostgreSQL prints it (exact; may be `NaN` or `Infinity`).
    Numeric(String),
    /// `text`, `varchar`, `bpchar` (with its padding), `name`, `"char"`.
    Text(String),
    /// `json` or `jsonb`, as JSON text.
    Json(String),
    Uuid([u8; 16]),
    /// `timestamp` (without time zone, read as UTC), µs since the Unix epoch;
    /// `infinity` is `i64::MAX`, `-infinity` is `i64::MIN`.
    Timestamp(i64),
    /// `timestamptz`, µs since the Unix epoch; infinities as for `Timestamp`.
    TimestampTz(i64),
    /// `date`, days since 1970-01-01; `infinity` is `i32::MAX`, `-infinity` is `i32::MIN`.
    Date(i32),
    Bytea(Vec<u8>),
    /// Any other type, as the server's text.
    Other {
        type_oid: u32,
        text: String,
    },
    /// A value sent in binary format (only when binary transfer is requested).
    Binary {
        type_oid: u32,
        bytes: Bytes,
    },
}

impl Value {
    /// Decodes a text-format value of the type `type_oid`.
    pub fn from_text(type_oid: u32, text: &str) -> Value {
        let typed = match type_oid {
            oid::BOOL => match text {
                "t" => Some(Value::Bool(true)),
                "f" => Some(Value::Bool(false)),
                _ => None,
            },
            oid::INT2 => text.parse().ok().map(Value::Int2),
            oid::INT4 => text.parse().ok().map(Value::Int4),
            oid::INT8 => text.parse().ok().map(Value::Int8),
            oid::FLOAT4 => parse_float(text).map(|f| Value::Float4(f as f32)),
            oid::FLOAT8 => parse_float(text).map(Value::Float8),
            oid::NUMERIC => Some(Value::Numeric(text.to_string())),
            oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::CHAR => Some(Value::Text(text.to_string())),
            oid::JSON | oid::JSONB => Some(Value::Json(text.to_string())),
            oid::UUID => parse_uuid(text).map(Value::Uuid),
            oid::TIMESTAMP => parse_timestamp(text, false).map(Value::Timestamp),
            oid::TIMESTAMPTZ => parse_timestamp(text, true).map(Value::TimestampTz),
            oid::DATE => parse_date(text).map(Value::Date),
            oid::BYTEA => parse_bytea_hex(text).map(Value::Bytea),
            _ => None,
        };
        typed.unwrap_or_else(|| Value::Other { type_oid, text: text.to_string() })
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn is_unchanged(&self) -> bool {
        matches!(self, Value::Unchanged)
    }
}

/// `8-4-4-4-12` lower-case hex, as PostgreSQL prints a uuid.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let digits: Vec<u8> = text.bytes().filter(|&b| b != b'-').collect();
    if digits.len() != 32 || text.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in digits.chunks(2).enumerate() {
        out[i] = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(out)
}

fn parse_bytea_hex(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks(2).map(|p| Some(hex_digit(p[0])? << 4 | hex_digit(p[1])?)).collect()
}

/// Days from 1970-01-01 to the proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` (the year may have more digits) → days since the Unix epoch;
/// `bc` turns year Y into the astronomical year 1 - Y.
fn parse_ymd(s: &str, bc: bool) -> Option<i64> {
    let mut parts = s.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() < 4 || m.len() != 2 || d.len() != 2 || !y.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut y: i64 = y.parse().ok()?;
    let (m, d): (u32, u32) = (m.parse().ok()?, d.parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    if bc {
        y = 1 - y;
    }
    Some(days_from_civil(y, m, d))
}

fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

fn parse_date(text: &str) -> Option<i32> {
    match text {
        "infinity" => return Some(i32::MAX),
        "-infinity" => return Some(i32::MIN),
        _ => {}
    }
    let (text, bc) = strip_bc(text);
    i32::try_from(parse_ymd(text, bc)?).ok()
}

/// ISO `YYYY-MM-DD HH:MM:SS[.ffffff][±HH[:MM[:SS]]][ BC]` → µs since the Unix epoch.
fn parse_timestamp(text: &str, with_zone: bool) -> Option<i64> {
    match text {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let (text, bc) = strip_bc(text);
    let (date, time) = text.split_once(' ')?;
    let days = parse_ymd(date, bc)?;
    // The zone offset starts at the first sign after the seconds.
    let (clock, offset_secs) = match time.find(['+', '-']) {
        Some(at) => (&time[..at], parse_offset(&time[at..])?),
        None if with_zone => return None,
        None => (time, 0),
    };
    if !with_zone && offset_secs != 0 {
        return None;
    }
    let (hms, frac) = match clock.split_once('.') {
        Some((hms, frac)) => (hms, frac),
        None => (clock, ""),
    };
    let mut fields = hms.splitn(3, ':');
    let h: i64 = fields.next()?.parse().ok()?;
    let mi: i64 = fields.next()?.parse().ok()?;
    let s: i64 = fields.next()?.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros_frac: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().ok()? };
    let secs = days.checked_mul(86_400)? + h * 3600 + mi * 60 + s - offset_secs;
    secs.checked_mul(1_000_000)?.checked_add(micros_frac)
}

/// `+HH`, `-HH:MM`, `+HH:MM:SS` → seconds east of UTC.
fn parse_offset(s: &str) -> Option<i64> {
    let sign = if s.starts_with('-') { -1 } else { 1 };
    let mut parts = s[1..].split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    let sec: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    if parts.next().is_some() {
        return None;
    }
    Some(sign * (h * 3600 + m * 60 + sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars() {
        assert_eq!(Value::from_text(oid::BOOL, "t"), Value::Bool(true));
        assert_eq!(Value::from_text(oid::BOOL, "f"), Value::Bool(false));
        assert_eq!(Value::from_text(oid::INT2, "-32768"), Value::Int2(-32768));
        assert_eq!(Value::from_text(oid::INT4, "2147483647"), Value::Int4(i32::MAX));
        assert_eq!(Value::from_text(oid::INT8, "-9223372036854775808"), Value::Int8(i64::MIN));
        assert_eq!(Value::from_text(oid::FLOAT4, "1.5"), Value::Float4(1.5));
        assert_eq!(Value::from_text(oid::FLOAT8, "0.1"), Value::Float8(0.1));
        assert_eq!(Value::from_text(oid::FLOAT8, "-Infinity"), Value::Float8(f64::NEG_INFINITY));
        assert_eq!(Value::from_text(oid::FLOAT8, "Infinity"), Value::Float8(f64::INFINITY));
        assert!(matches!(Value::from_text(oid::FLOAT8, "NaN"), Value::Float8(f) if f.is_nan()));
        assert_eq!(Value::from_text(oid::FLOAT8, "1e+300"), Value::Float8(1e300));
        assert_eq!(
            Value::from_text(oid::NUMERIC, "12345678901234567890.000000000001"),
            Value::Numeric("12345678901234567890.000000000001".into())
        );
        assert_eq!(Value::from_text(oid::BPCHAR, "ab  "), Value::Text("ab  ".into()));
        assert_eq!(Value::from_text(oid::JSONB, r#"{"a": 1}"#), Value::Json(r#"{"a": 1}"#.into()));
        assert_eq!(Value::from_text(oid::BYTEA, "\\x00ff10"), Value::Bytea(vec![0, 255, 16]));
        assert_eq!(Value::from_text(oid::BYTEA, "\\x"), Value::Bytea(vec![]));
    }

    #[test]
    fn uuids() {
        let v = Value::from_text(oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        let Value::Uuid(bytes) = v else { panic!("{v:?}") };
        assert_eq!(bytes[0], 0xa0);
        assert_eq!(bytes[15], 0x11);
        assert_eq!(format_uuid(&bytes), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    }

    #[test]
    fn dates_and_timestamps() {
        assert_eq!(Value::from_text(oid::DATE, "1970-01-01"), Value::Date(0));
        assert_eq!(Value::from_text(oid::DATE, "2000-03-01"), Value::Date(11_017));
        assert_eq!(Value::from_text(oid::DATE, "1969-12-31"), Value::Date(-1));
        assert_eq!(Value::from_text(oid::DATE, "0001-01-01 BC"), Value::Date(-719_528));
        assert_eq!(Value::from_text(oid::DATE, "infinity"), Value::Date(i32::MAX));
        assert_eq!(Value::from_text(oid::TIMESTAMP, "1970-01-01 00:00:01.5"), Value::Timestamp(1_500_000));
        assert_eq!(
            Value::from_text(oid::TIMESTAMP, "2024-02-29 23:59:59.000001"),
            Value::Timestamp(1_709_251_199_000_001)
        );
        assert_eq!(Value::from_text(oid::TIMESTAMPTZ, "1970-01-01 00:00:00+00"), Value::TimestampTz(0));
        assert_eq!(Value::from_text(oid::TIMESTAMPTZ, "1970-01-01 05:30:00+05:30"), Value::TimestampTz(0));
        assert_eq!(Value::from_text(oid::TIMESTAMPTZ, "1969-12-31 23:00:00.25-01"), Value::TimestampTz(250_000));
        assert_eq!(Value::from_text(oid::TIMESTAMPTZ, "-infinity"), Value::TimestampTz(i64::MIN));
        assert_eq!(
            Value::from_text(oid::TIMESTAMP, "0001-01-01 00:00:00 BC"),
            Value::Timestamp(-719_528 * 86_400 * 1_000_000)
        );
        assert_eq!(
            Value::from_text(oid::TIMESTAMP, "10000-01-01 00:00:00"),
            Value::Timestamp(253_402_300_800 * 1_000_000)
        );
    }

    #[test]
    fn unknown_types_and_odd_text_are_kept_as_text() {
        assert_eq!(Value::from_text(600, "(1,2)"), Value::Other { type_oid: 600, text: "(1,2)".into() });
        // bytea in escape format (not what the connection asks for) is still kept.
        assert_eq!(
            Value::from_text(oid::BYTEA, "abc\\000"),
            Value::Other { type_oid: oid::BYTEA, text: "abc\\000".into() }
        );
        assert_eq!(Value::from_text(oid::INT4, "x"), Value::Other { type_oid: oid::INT4, text: "x".into() });
    }
}
