use super::*;

const EVENT: &str = r#"{"eventType":"order.completed","occurredAt":"2026-05-26T14:21:08.493Z","idempotencyKey":"k"}"#;

fn incoming(path: &str, body: &str) -> Incoming {
    Incoming {
        method: "POST".into(),
        path: path.into(),
        query: "source_name=app".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.as_bytes().to_vec(),
        received_at: 1_780_000_000_000_000,
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    // The fake executor never waits, so one poll finishes the future.
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("the fake executor does not wait"),
    }
}

/// Records statements; answers from a script.
#[derive(Default)]
struct Fake {
    ddl: Vec<String>,
    upserts: Vec<(String, Vec<Vec<Option<String>>>)>,
    /// Errors for the next upserts, in order (then: all rows written).
    errors: Vec<DbError>,
    /// Events (by the first column's text) the database refuses.
    poison: Vec<String>,
}

impl Executor for Fake {
    async fn execute_ddl(&mut self, sql: &str) -> Result<(), DbError> {
        self.ddl.push(sql.to_owned());
        Ok(())
    }

    async fn upsert(&mut self, sql: &str, columns: &[Vec<Option<String>>]) -> Result<Vec<i64>, DbError> {
        self.upserts.push((sql.to_owned(), columns.to_vec()));
        if !self.errors.is_empty() {
            return Err(self.errors.remove(0));
        }
        let poisoned = columns[1].iter().any(|v| v.as_ref().is_some_and(|v| self.poison.contains(v)));
        if poisoned {
            return Err(DbError { sqlstate: Some("22P02".into()), message: "invalid input".into() });
        }
        Ok((1..=columns[0].len() as i64).collect())
    }
}

#[test]
fn dispatches_like_the_built_in_component() {
    assert_eq!(tables(), sluice_standard::tables());
    for path in
        ["/v1/events", "/t/a/v1/events", "/api/logs", "/logs", "/t/a/api/logs", "/v1/logs", "/t/a/v1/logs", "/x"]
    {
        let request = Request {
            tenant: "acme".into(),
            method: "POST".into(),
            path: path.into(),
            query: "source_name=app".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: br#"{"eventType":"a","occurredAt":"2026-01-01T00:00:00Z","message":"m","event":"e"}"#.to_vec(),
            received_at: 1_780_000_000_000_000,
            settings: "{}".into(),
        };
        // Ids may be random (no idempotency key); the shape is the same.
        let shape = |o: Result<Outcome, RequestError>| {
            o.map(|o| (o.events, o.plans.into_iter().map(|p| (p.table, p.template, p.columns)).collect::<Vec<_>>()))
        };
        assert_eq!(shape(normalize(&request)), shape(sluice_standard::handle(&request)), "{path}");
    }
}

#[test]
fn values_in_text_form() {
    assert_eq!(text(Value::Null), None);
    assert_eq!(
        text(Value::uuid(0x0123_4567_89ab_cdef_0011_2233_4455_6677)).unwrap(),
        "01234567-89ab-cdef-0011-223344556677"
    );
    assert_eq!(text(Value::Timestamptz(0)).unwrap(), "1970-01-01 00:00:00.000000+00");
    assert_eq!(text(Value::Timestamptz(1_780_000_000_123_456)).unwrap(), "2026-05-28 20:26:40.123456+00");
    assert_eq!(text(Value::Timestamptz(-1)).unwrap(), "1969-12-31 23:59:59.999999+00");
    assert_eq!(
        text(Value::Timestamptz(-62_135_596_800_000_000 - 86_400_000_000)).unwrap(),
        "0001-12-31 00:00:00.000000+00 BC"
    );
    assert_eq!(text(Value::Timestamptz(951_782_400_000_000)).unwrap(), "2000-02-29 00:00:00.000000+00");
    assert_eq!(text(Value::Timestamptz(253_402_300_800_000_000)).unwrap(), "10000-01-01 00:00:00.000000+00");
    assert_eq!(text(Value::Float8(0.1)).unwrap(), "0.1");
    assert_eq!(text(Value::Float8(1e300)).unwrap(), "1e300");
    assert_eq!(text(Value::Float8(f64::NEG_INFINITY)).unwrap(), "-Infinity");
    assert_eq!(text(Value::Bytea(vec![0, 255])).unwrap(), "\\x00ff");
    assert_eq!(text(Value::Boolean(true)).unwrap(), "true");
}

#[test]
fn every_parameter_is_text() {
    let prepared = prepare(&Config::default(), incoming("/v1/events", EVENT)).unwrap();
    assert_eq!(prepared.statements.len(), 1);
    let sql = &prepared.statements[0].sql;
    assert!(
        sql.starts_with(
            "WITH input AS (SELECT * FROM unnest($1::text[]::uuid[], $2::text[], $3::text[]::timestamp with time zone[]"
        ),
        "{sql}"
    );
    assert!(sql.contains(r#"INSERT INTO "public"."events""#), "{sql}");
    let chunk = &prepared.statements[0].chunks[0];
    assert_eq!(chunk.columns[2], [Some("2026-05-26 14:21:08.493000+00".to_owned())]);

    // A table per event type: an instance of the template.
    let config = Config { settings: r#"{"events":{"table_per_event_type":true}}"#.into(), ..Config::default() };
    let prepared = prepare(&config, incoming("/v1/events", EVENT)).unwrap();
    assert_eq!(
        prepared.statements[0].table,
        sluice_events::tables()[1].instance(&sluice_events::type_table("order.completed"))
    );
}

#[test]
fn request_errors_answer_at_once() {
    let mut fake = Fake::default();
    let answer = block_on(handle(&mut fake, &Config::default(), incoming("/v2/events", EVENT)));
    assert_eq!(answer.status, 404);
    let answer = block_on(handle(&mut fake, &Config::default(), incoming("/v1/events", "{")));
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    let answer = block_on(handle(&mut fake, &Config::default(), incoming("/api/logs", "{")));
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["message"], answer.body["error"]);
    assert!(fake.upserts.is_empty() && fake.ddl.is_empty());
}

#[test]
fn a_missing_table_is_created_and_the_write_retried() {
    let mut fake = Fake::default();
    fake.errors.push(DbError { sqlstate: Some("42P01".into()), message: "relation does not exist".into() });
    let answer = block_on(handle(&mut fake, &Config::default(), incoming("/api/logs", r#"{"message":"hi"}"#)));
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["message"], "Logged!");
    assert_eq!(answer.body["inserted"], 1);
    assert_eq!(fake.ddl[0], r#"CREATE SCHEMA IF NOT EXISTS "public""#);
    assert!(fake.ddl[1].starts_with(r#"CREATE TABLE IF NOT EXISTS "public"."log_events_"#), "{:?}", fake.ddl);
    assert_eq!(fake.upserts.len(), 2);
}

#[test]
fn refused_events_are_found_by_bisection() {
    let mut fake = Fake::default();
    fake.poison.push("bad".into());
    let body = r#"[{"eventType":"a","occurredAt":"2026-01-01T00:00:00Z"},{"eventType":"bad","occurredAt":"2026-01-01T00:00:00Z"},{"eventType":"c","occurredAt":"2026-01-01T00:00:00Z"},{"occurredAt":"2026-01-01T00:00:00Z"}]"#;
    let answer = block_on(handle(&mut fake, &Config::default(), incoming("/v1/events", body)));
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["inserted"], 2);
    let rejected = answer.body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert_eq!(rejected[0]["index"], 1);
    assert!(
        rejected[0]["reason"].as_str().unwrap().contains("the database refused it: invalid input (SQLSTATE 22P02)")
    );
    assert_eq!(rejected[1]["index"], 3);
}

#[test]
fn unavailable_is_503() {
    let mut fake = Fake::default();
    fake.errors.push(DbError { sqlstate: None, message: "connection refused".into() });
    let answer = block_on(handle(&mut fake, &Config::default(), incoming("/v1/events", EVENT)));
    assert_eq!(answer.status, 503);
    assert_eq!(answer.retry_after, Some(1));
}

#[test]
fn large_requests_are_chunked_under_the_parameter_cap() {
    let events: Vec<String> = (0..MAX_PARAMETERS / 4 + 10).map(|i| format!(r#"{{"message":"m{i}"}}"#)).collect();
    let body = format!("[{}]", events.join(","));
    let prepared = prepare(&Config::default(), incoming("/api/logs", &body)).unwrap();
    let chunks = &prepared.statements[0].chunks;
    assert_eq!(chunks.iter().map(|c| c.events.len()).collect::<Vec<_>>(), [MAX_PARAMETERS / 4, 10]);
    for chunk in chunks {
        assert!(chunk.columns.iter().map(Vec::len).sum::<usize>() <= MAX_PARAMETERS);
    }
}
