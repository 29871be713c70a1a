//! Values PostgreSQL would refuse, found before they reach the writer: a
//! refused row costs a whole batch's isolation there, and here it is one
//! event's rejection with a reason naming its field. `Table::check_row`
//! applies it to every row of every component's plans, in the host and in
//! the Spin app alike, so normalizers need not.
//!
//! - text and jsonb cannot hold NUL (`\u0000` in JSON);
//! - jsonb cannot hold a lone UTF-16 surrogate escape (`"\ud800"`);
//! - numeric (and every number in jsonb, which is numeric) holds at most
//!   131072 digits before the decimal point and 16383 after it.

use crate::types::Value;

/// The most decimal digits after the point (numeric's `dscale`).
const MAX_SCALE: i64 = 0x3FFF;
/// The highest decimal weight (numeric's base-10000 weight is an int16).
const MAX_WEIGHT: i64 = 32767 * 4 + 3;

/// Why PostgreSQL would refuse `value`, if it would.
pub fn refusal(value: &Value) -> Option<String> {
    match value {
        Value::Text(text) if text.contains('\0') => {
            Some("contains a NUL character, which PostgreSQL cannot store".into())
        }
        Value::Numeric(number) => numeric(number).err(),
        Value::Jsonb(json) => jsonb(json).err(),
        _ => None,
    }
}

/// A numeric's text: refused only when it is a number out of range (other
/// text, such as `NaN`, is left to PostgreSQL).
fn numeric(text: &str) -> Result<(), String> {
    let trimmed = text.trim();
    match number_range(trimmed.strip_prefix(['-', '+']).unwrap_or(trimmed)) {
        Some(false) => Err(format!("the number {} is out of PostgreSQL's numeric range", shorten(trimmed))),
        _ => Ok(()),
    }
}

/// Whether an unsigned decimal number (`12.5e-3`) fits numeric; `None`
/// when it is not one.
fn number_range(text: &str) -> Option<bool> {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['-', '+']).unwrap_or(e);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let digits = digits.trim_start_matches('0');
            let magnitude: i64 = match digits.len() {
                0 => 0,
                // Past i32::MAX / 2 PostgreSQL refuses whatever the digits.
                1..=12 => digits.parse().expect("digits"),
                _ => return Some(false),
            };
            if magnitude > i64::from(i32::MAX / 2) {
                return Some(false);
            }
            if e.starts_with('-') { -magnitude } else { magnitude }
        }
    };
    if frac.len() as i64 - exponent > MAX_SCALE {
        return Some(false);
    }
    // The weight of the first digit that is not 0 (a zero has none).
    let weight = match int.bytes().position(|b| b != b'0') {
        Some(at) => (int.len() - at) as i64 - 1,
        None => match frac.bytes().position(|b| b != b'0') {
            Some(at) => -(at as i64) - 1,
            None => return Some(true),
        },
    };
    Some(weight + exponent <= MAX_WEIGHT)
}

/// JSON text checked for what jsonb cannot hold. The text is JSON already
/// (the normalizer read it), so only strings and numbers are looked into.
fn jsonb(json: &str) -> Result<(), String> {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = string(bytes, i + 1)?,
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < bytes.len() && matches!(bytes[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                    i += 1;
                }
                numeric(&json[start..i])?;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Checks the escapes of the string starting after its quote at `i`;
/// returns the index after its closing quote.
fn string(bytes: &[u8], mut i: usize) -> Result<usize, String> {
    let lone = |at: usize| {
        let escape = String::from_utf8_lossy(&bytes[at..at + 6]).into_owned();
        format!("contains {escape}, a lone UTF-16 surrogate, which PostgreSQL cannot store")
    };
    // Where a high surrogate waiting for its low half is.
    let mut high: Option<usize> = None;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'u') {
            let code = bytes
                .get(i + 2..i + 6)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            let Some(code) = code else { return Ok(bytes.len()) };
            match (code, high) {
                (0, _) => return Err("contains a \\u0000 escape, which PostgreSQL cannot store".into()),
                (0xDC00..=0xDFFF, Some(_)) => high = None,
                (_, Some(at)) => return Err(lone(at)),
                (0xD800..=0xDBFF, None) => high = Some(i),
                (0xDC00..=0xDFFF, None) => return Err(lone(i)),
                _ => {}
            }
            i += 6;
            continue;
        }
        if let Some(at) = high {
            return Err(lone(at));
        }
        match bytes[i] {
            b'"' => return Ok(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    match high {
        Some(at) => Err(lone(at)),
        None => Ok(i),
    }
}

fn shorten(text: &str) -> String {
    if text.len() <= 40 {
        return text.to_owned();
    }
    let cut = (0..=40).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}…", &text[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_out_of_numeric_range() {
        // The edges as PostgreSQL 15 draws them: '9.9e131071' and '123e-16381'
        // are numeric, '1e131072' and '0.5e-16383' overflow.
        for fits in [
            "0",
            "12.5",
            "-1e100000",
            "1e131071",
            "9.9e131071",
            "123e-16381",
            "0e99999",
            "1.5e-16382",
            "123456789012345678901234567890",
        ] {
            assert_eq!(numeric(fits), Ok(()), "{fits}");
        }
        for past in ["1e200000", "-1E131072", "1e-16384", "0.5e-16383", "1e99999999999", "1e2147483647"] {
            assert!(numeric(past).unwrap_err().contains("numeric range"), "{past}");
        }
        assert_eq!(numeric("NaN"), Ok(()), "not a number: PostgreSQL's to judge");
    }

    #[test]
    fn jsonb_refusals_name_what() {
        assert_eq!(jsonb(r#"{"n":1,"s":"a\"b\\","m":[-2.5e10,{"x":"\ud83d\ude00"}]}"#), Ok(()));
        assert!(jsonb(r#"{"n":1e200000}"#).unwrap_err().contains("1e200000"));
        assert!(jsonb(r#"{"s":"\ud800"}"#).unwrap_err().contains("\\ud800, a lone UTF-16 surrogate"));
        assert!(jsonb(r#"{"s":"\udc00x"}"#).unwrap_err().contains("surrogate"));
        assert!(jsonb(r#"{"s":"\ud800\u0041"}"#).unwrap_err().contains("surrogate"));
        assert!(jsonb(r#"{"s":"a\u0000"}"#).unwrap_err().contains("\\u0000"));
        assert_eq!(jsonb(r#"{"s":"a\\u0000 and 1e200000"}"#), Ok(()), "escaped backslash, text in a string");
        assert_eq!(jsonb(r#"{"1e200000":true}"#), Ok(()), "a key is a string");
    }
}
