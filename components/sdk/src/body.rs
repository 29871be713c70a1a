//! Splitting a request body into events: one JSON object, a JSON array of
//! them, or NDJSON (one per line).

use crate::types::{Request, RequestError};
use serde_json::value::RawValue;

/// The body formats a normalizer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`: one event, or an array of events.
    Json,
    /// `application/x-ndjson`: one event per line.
    Ndjson,
}

impl Format {
    /// The format named by the request's `content-type`. A request without
    /// one is read as JSON.
    pub fn of(request: &Request) -> Result<Format, RequestError> {
        let Some(content_type) = request.header("content-type") else {
            return Ok(Format::Json);
        };
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json" | "text/json" => Ok(Format::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/x-jsonlines" => {
                Ok(Format::Ndjson)
            }
            _ => Err(RequestError::UnsupportedMediaType(format!(
                "content-type {essence:?} is not supported; send application/json or application/x-ndjson"
            ))),
        }
    }
}

/// The events of the body, each as its raw JSON text, in order.
pub fn events(request: &Request) -> Result<Vec<&RawValue>, RequestError> {
    let (text, format) = text(request)?;
    split(text, format)
}

/// The body as text, and its format.
pub fn text(request: &Request) -> Result<(&str, Format), RequestError> {
    let format = Format::of(request)?;
    let text = std::str::from_utf8(&request.body)
        .map_err(|e| RequestError::Malformed(format!("the body is not valid UTF-8: {e}")))?;
    Ok((text, format))
}

/// Every event of the body read as `T` in one pass, or `None` when any
/// event does not fit `T` (the caller then reads them one by one, to say
/// which event is wrong and why).
pub fn parse_all<'a, T: serde::Deserialize<'a>>(text: &'a str, format: Format) -> Option<Vec<T>> {
    match format {
        Format::Json if text.trim_start().starts_with('[') => serde_json::from_str(text).ok(),
        Format::Json => serde_json::from_str(text).ok().map(|one| vec![one]),
        Format::Ndjson => {
            text.lines().filter(|line| !line.trim().is_empty()).map(|line| serde_json::from_str(line).ok()).collect()
        }
    }
}

/// Splits `text` as `format`.
pub fn split(text: &str, format: Format) -> Result<Vec<&RawValue>, RequestError> {
    match format {
        Format::Json => {
            let trimmed = text.trim_start();
            if trimmed.is_empty() {
                return Err(RequestError::Malformed("the body is empty; send a JSON object or array".into()));
            }
            if trimmed.starts_with('[') {
                serde_json::from_str::<Vec<&RawValue>>(text)
                    .map_err(|e| RequestError::Malformed(format!("the body is not a valid JSON array: {e}")))
            } else {
                let one = serde_json::from_str::<&RawValue>(text)
                    .map_err(|e| RequestError::Malformed(format!("the body is not valid JSON: {e}")))?;
                Ok(vec![one])
            }
        }
        Format::Ndjson => text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                serde_json::from_str::<&RawValue>(line).map_err(|e| {
                    RequestError::Malformed(format!("line {} of the NDJSON body is not valid JSON: {e}", n + 1))
                })
            })
            .collect(),
    }
}

/// Whether JSON text holds a `\u0000` escape, which PostgreSQL's text and
/// jsonb types cannot store.
pub fn has_nul_escape(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut from = 0;
    while let Some(at) = json[from..].find("u0000") {
        let at = from + at;
        let backslashes = bytes[..at].iter().rev().take_while(|&&b| b == b'\\').count();
        if backslashes % 2 == 1 {
            return true;
        }
        from = at + 5;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(content_type: Option<&str>, body: &str) -> Request {
        Request {
            tenant: "t".into(),
            method: "POST".into(),
            path: "/".into(),
            query: String::new(),
            headers: content_type.map(|c| ("content-type".to_owned(), c.to_owned())).into_iter().collect(),
            body: body.as_bytes().to_vec(),
            received_at: 0,
            settings: "{}".into(),
        }
    }

    #[test]
    fn reads_object_array_and_ndjson() {
        assert_eq!(events(&request(None, r#"{"a":1}"#)).unwrap().len(), 1);
        assert_eq!(events(&request(Some("application/json; charset=utf-8"), r#"[{"a":1}, 2]"#)).unwrap().len(), 2);
        let ndjson = request(Some("application/x-ndjson"), "{\"a\":1}\n\n{\"a\":2}\r\n");
        let nd = events(&ndjson).unwrap();
        assert_eq!(nd.iter().map(|r| r.get()).collect::<Vec<_>>(), ["{\"a\":1}", "{\"a\":2}"]);
    }

    #[test]
    fn names_what_is_wrong() {
        let e = events(&request(Some("text/csv"), "a,b")).unwrap_err();
        assert!(matches!(e, RequestError::UnsupportedMediaType(m) if m.contains("text/csv")));
        let e = events(&request(Some("application/x-ndjson"), "{}\n{oops")).unwrap_err();
        assert!(matches!(e, RequestError::Malformed(m) if m.contains("line 2")));
        assert!(matches!(events(&request(None, "  ")).unwrap_err(), RequestError::Malformed(_)));
        assert!(matches!(events(&request(None, "[1,")).unwrap_err(), RequestError::Malformed(_)));
    }

    #[test]
    fn finds_nul_escapes() {
        assert!(has_nul_escape(r#"{"a":"x\u0000"}"#));
        assert!(!has_nul_escape(r#"{"a":"x\\u0000"}"#));
        assert!(has_nul_escape(r#"{"a":"x\\\u0000"}"#));
        assert!(!has_nul_escape(r#"{"u0000":1}"#));
    }
}
