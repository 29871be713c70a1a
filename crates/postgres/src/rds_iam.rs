//! AWS RDS IAM authentication: the password is a short-lived token, a SigV4
//! presigned `connect` request for the database user, made afresh for each
//! new connection (a token is good for 15 minutes, a connection for longer).
//!
//! The signing follows AWS Signature Version 4 (query-string form) with the
//! service `rds-db`; it is small enough to write against the published test
//! vectors rather than pull in the AWS SDK.

use crate::Secret;
use anyhow::{Result, bail};
use ring::{digest, hmac};
use std::time::SystemTime;

/// What a token is signed with. `Debug` shows only the access key id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl Credentials {
    /// From `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and (optionally)
    /// `AWS_SESSION_TOKEN`, read through `lookup`.
    pub fn from_env(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Credentials> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
                access_key_id,
                secret_access_key: Secret(secret_access_key),
                session_token: get("AWS_SESSION_TOKEN").map(Secret),
            }),
            _ => bail!(
                "database.auth = \"rds-iam\" needs AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (and AWS_SESSION_TOKEN for temporary credentials)"
            ),
        }
    }
}

/// Everything a token needs but the time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RdsIam {
    pub region: String,
    pub credentials: Credentials,
}

impl RdsIam {
    /// The token for `user` at `host:port`, signed at `now`.
    pub fn token(&self, host: &str, port: u16, user: &str, now: SystemTime) -> String {
        let query = [("Action", "connect".to_owned()), ("DBUser", user.to_owned())];
        let signed =
            presign(&self.credentials, &self.region, "rds-db", &format!("{host}:{port}"), "/", &query, 900, now);
        // The token is the URL without its scheme.
        format!("{host}:{port}/?{signed}")
    }
}

/// A SigV4 presigned GET: the full query string (the given parameters, the
/// `X-Amz-*` ones and the signature), sorted as signed.
#[allow(clippy::too_many_arguments)]
pub fn presign(
    credentials: &Credentials,
    region: &str,
    service: &str,
    host: &str,
    path: &str,
    query: &[(&str, String)],
    expires_secs: u64,
    now: SystemTime,
) -> String {
    let (date, stamp) = amz_dates(now);
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let mut params: Vec<(String, String)> = query.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    params.push(("X-Amz-Algorithm".into(), "AWS4-HMAC-SHA256".into()));
    params.push(("X-Amz-Credential".into(), encode(&format!("{}/{scope}", credentials.access_key_id))));
    params.push(("X-Amz-Date".into(), stamp.clone()));
    params.push(("X-Amz-Expires".into(), expires_secs.to_string()));
    if let Some(Secret(token)) = &credentials.session_token {
        params.push(("X-Amz-Security-Token".into(), encode(token)));
    }
    params.push(("X-Amz-SignedHeaders".into(), "host".into()));
    params.sort();
    let canonical_query = params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let canonical_request =
        format!("GET\n{path}\n{canonical_query}\nhost:{host}\n\nhost\n{}", hex(digest::digest(&digest::SHA256, b"")));
    let signature = sign(&credentials.secret_access_key.0, &date, region, service, &stamp, &scope, &canonical_request);
    format!("{canonical_query}&X-Amz-Signature={signature}")
}

/// The SigV4 signature of `canonical_request`.
fn sign(
    secret: &str,
    date: &str,
    region: &str,
    service: &str,
    stamp: &str,
    scope: &str,
    canonical_request: &str,
) -> String {
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()))
    );
    let mac = |key: &[u8], data: &str| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes());
    let k_date = mac(format!("AWS4{secret}").as_bytes(), date);
    let k_region = mac(k_date.as_ref(), region);
    let k_service = mac(k_region.as_ref(), service);
    let k_signing = mac(k_service.as_ref(), "aws4_request");
    hex(mac(k_signing.as_ref(), &string_to_sign))
}

/// `YYYYMMDD` and `YYYYMMDDTHHMMSSZ` in UTC.
fn amz_dates(now: SystemTime) -> (String, String) {
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let date = format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day());
    let stamp = format!("{date}T{:02}{:02}{:02}Z", t.hour(), t.minute(), t.second());
    (date, stamp)
}

/// SigV4's URI encoding: everything but `A-Z a-z 0-9 - _ . ~` as `%XX`.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex(bytes: impl AsRef<[u8]>) -> String {
    bytes.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn example() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            session_token: None,
        }
    }

    fn at(stamp: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(stamp)
    }

    /// AWS's SigV4 test suite, `get-vanilla-query-order-key-case`: the
    /// string to sign's scope and the signature of its canonical request
    /// (20150830T123600Z, us-east-1, service).
    #[test]
    fn signs_the_aws_test_suite_request() {
        let canonical = "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let signature = sign(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830",
            "us-east-1",
            "service",
            "20150830T123600Z",
            "20150830/us-east-1/service/aws4_request",
            canonical,
        );
        assert_eq!(signature, "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500");
    }

    /// The suite's `get-vanilla` request (no query): its documented signature.
    #[test]
    fn signs_get_vanilla() {
        let canonical = "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let signature = sign(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830",
            "us-east-1",
            "service",
            "20150830T123600Z",
            "20150830/us-east-1/service/aws4_request",
            canonical,
        );
        assert_eq!(signature, "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
    }

    #[test]
    fn rds_token_has_the_documented_shape() {
        let iam = RdsIam { region: "us-east-1".into(), credentials: example() };
        // 2015-08-30T12:36:00Z
        let token = iam.token("db.abc.us-east-1.rds.amazonaws.com", 5432, "app_user", at(1_440_938_160));
        let expected_prefix = "db.abc.us-east-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app_user\
            &X-Amz-Algorithm=AWS4-HMAC-SHA256\
            &X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Frds-db%2Faws4_request\
            &X-Amz-Date=20150830T123600Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=";
        assert!(token.starts_with(expected_prefix), "{token}");
        let signature = token.rsplit('=').next().unwrap();
        assert_eq!(signature.len(), 64);
        assert!(signature.bytes().all(|b| b.is_ascii_hexdigit()));
        // A fresh token per connection: another second, another signature.
        assert_ne!(token, iam.token("db.abc.us-east-1.rds.amazonaws.com", 5432, "app_user", at(1_440_938_161)));
        // A session token is signed in, encoded.
        let temporary = RdsIam {
            region: "us-east-1".into(),
            credentials: Credentials { session_token: Some(Secret("tok/en+=".into())), ..example() },
        };
        let token = temporary.token("h", 5432, "u", at(1_440_938_160));
        assert!(token.contains("&X-Amz-Security-Token=tok%2Fen%2B%3D&X-Amz-SignedHeaders=host"), "{token}");
    }

    #[test]
    fn credentials_come_from_the_environment_and_never_print() {
        let env = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("AKIDEXAMPLE".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned()),
            _ => None,
        };
        let credentials = Credentials::from_env(&env).unwrap();
        let shown = format!("{credentials:?}");
        assert!(shown.contains("AKIDEXAMPLE") && !shown.contains("EXAMPLEKEY"), "{shown}");
        let e = Credentials::from_env(&|_| None).unwrap_err().to_string();
        assert!(e.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
    }
}
