//! The dead-letter table: rows the database refused for good (a value out
//! of range, a broken constraint) are kept beside the tenant's tables with
//! why and when, so nothing is thrown away. Once the cause is fixed a
//! replay moves them into their table, idempotently.
//!
//! A row is kept as a JSON object of its columns, in the text forms
//! PostgreSQL reads back (`jsonb_populate_record` types them by the target
//! table), so a replay needs nothing but SQL.

use super::CommitChecked;
use sluice_sdk::sql::{qualified, quote_ident};
use sluice_sdk::{UpsertPlan, Value};
use std::fmt::Write;
use tokio_postgres::GenericClient;

/// The table's name in each tenant's schema.
pub const TABLE: &str = "sluice_dead_letters";

/// Creates the dead-letter table in `schema` when it is missing.
pub fn create_sql(schema: &str) -> String {
    let table = qualified(schema, TABLE);
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\
           id bigserial PRIMARY KEY, \
           tenant text NOT NULL, \
           target_table text NOT NULL, \
           row jsonb NOT NULL, \
           row_digest text NOT NULL, \
           conflict_key text[] NOT NULL, \
           update_columns text[], \
           sqlstate text NOT NULL, \
           message text NOT NULL, \
           first_seen timestamptz NOT NULL DEFAULT now(), \
           last_seen timestamptz NOT NULL DEFAULT now(), \
           attempts integer NOT NULL DEFAULT 1, \
           UNIQUE (tenant, target_table, row_digest))"
    )
}

/// A refused row, ready to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub table: String,
    pub row: serde_json::Value,
    pub conflict_key: Vec<String>,
    pub update_columns: Option<Vec<String>>,
    pub sqlstate: String,
    pub message: String,
}

impl DeadLetter {
    /// Row `r` of `plan`, refused with `sqlstate` and `message`.
    pub fn of(
        plan: &UpsertPlan,
        r: usize,
        upsert: &sluice_sdk::sql::Upsert,
        sqlstate: &str,
        message: &str,
    ) -> DeadLetter {
        let row = plan.columns.iter().zip(&plan.rows[r].values).map(|(c, v)| (c.clone(), json_of(v))).collect();
        DeadLetter {
            table: plan.table.clone(),
            row: serde_json::Value::Object(row),
            conflict_key: upsert.conflict_key.clone(),
            update_columns: upsert.update_columns.clone(),
            sqlstate: sqlstate.to_owned(),
            message: message.to_owned(),
        }
    }
}

/// Keeps `letters` of `tenant` in `schema`'s dead-letter table, creating
/// it when missing, while the tenant keeps fewer than `max` rows there. A
/// row refused again counts one more attempt (and no new row).
///
/// `known` is how many rows the tenant is believed to keep (a cached
/// count); without it they are counted, at most `max` of them, so the
/// count costs no more than the bound. Returns, for each letter, whether
/// it was kept, and how many rows the tenant keeps now.
pub async fn keep(
    client: &impl GenericClient,
    schema: &str,
    tenant: &str,
    letters: &[DeadLetter],
    max: u64,
    known: Option<u64>,
) -> Result<(Vec<bool>, u64), tokio_postgres::Error> {
    client.batch_execute(&create_sql(schema)).await?;
    let table = qualified(schema, TABLE);
    let mut count = match known {
        Some(count) => count,
        None => {
            let limit = i64::try_from(max).unwrap_or(i64::MAX);
            let sql = format!("SELECT count(*) FROM (SELECT 1 FROM {table} WHERE tenant = $1 LIMIT $2) kept");
            client.query_one(&sql, &[&tenant, &limit]).await?.get::<_, i64>(0) as u64
        }
    };
    let sql = format!(
        "INSERT INTO {table} AS d (tenant, target_table, row, row_digest, conflict_key, update_columns, sqlstate, message) \
         VALUES ($1, $2, $3::text::jsonb, md5($3::text::jsonb::text), $4, $5, $6, $7) \
         ON CONFLICT (tenant, target_table, row_digest) DO UPDATE SET last_seen = now(), \
         attempts = d.attempts + 1, sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message \
         RETURNING (xmax = 0)"
    );
    let statement = client.prepare(&sql).await?;
    let mut kept = Vec::with_capacity(letters.len());
    for letter in letters {
        // Past the bound nothing more is kept (nor another attempt counted).
        if count >= max {
            kept.push(false);
            continue;
        }
        let row = letter.row.to_string();
        let inserted: bool = client
            .query_one(
                &statement,
                &[
                    &tenant,
                    &letter.table,
                    &row,
                    &letter.conflict_key,
                    &letter.update_columns,
                    &letter.sqlstate,
                    &letter.message,
                ],
            )
            .await?
            .get(0);
        count += u64::from(inserted);
        kept.push(true);
    }
    Ok((kept, count))
}

/// The statement that moves one kept row (parameter `$1`, its JSON) into
/// its table: only the columns it has, typed by the table, with the
/// conflict handling it was first written with.
pub fn replay_sql(schema: &str, table: &str, columns: &[String], key: &[String], update: Option<&[String]>) -> String {
    let target = qualified(schema, table);
    let list = columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let picked = columns.iter().map(|c| format!("r.{}", quote_ident(c))).collect::<Vec<_>>().join(", ");
    let mut sql = format!(
        "INSERT INTO {target} ({list}) SELECT {picked} FROM jsonb_populate_record(NULL::{target}, $1::text::jsonb) r"
    );
    if !key.is_empty() {
        let key = key.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
        match update {
            Some(set) if !set.is_empty() => {
                let set = set.iter().map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c))).collect::<Vec<_>>();
                let _ = write!(sql, " ON CONFLICT ({key}) DO UPDATE SET {}", set.join(", "));
            }
            _ => {
                let _ = write!(sql, " ON CONFLICT ({key}) DO NOTHING");
            }
        }
    }
    sql
}

/// Which kept rows a list, replay or purge is about.
#[derive(Debug, Default, Clone, serde::Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields, default)]
#[into_params(parameter_in = Query)]
pub struct Selection {
    /// Only rows for this table.
    pub table: Option<String>,
    /// Only rows with a larger id (to page through them).
    pub after_id: Option<i64>,
    /// At most this many (default 100, at most 10,000).
    pub limit: Option<i64>,
}

impl Selection {
    fn limit(&self) -> i64 {
        self.limit.unwrap_or(100).clamp(1, 10_000)
    }
}

async fn exists(client: &impl GenericClient, schema: &str) -> Result<bool, tokio_postgres::Error> {
    let name = qualified(schema, TABLE);
    Ok(client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name]).await?.get(0))
}

/// Kept rows of `tenant`, oldest first, and how many match in all.
pub async fn list(
    client: &impl GenericClient,
    schema: &str,
    tenant: &str,
    selection: &Selection,
) -> Result<(Vec<serde_json::Value>, i64), tokio_postgres::Error> {
    if !exists(client, schema).await? {
        return Ok((Vec::new(), 0));
    }
    let table = qualified(schema, TABLE);
    let filter = "tenant = $1 AND ($2::text IS NULL OR target_table = $2) AND id > coalesce($3::int8, 0)";
    let rows = client
        .query(
            &format!(
                "SELECT json_build_object('id', id, 'table', target_table, 'row', row, 'sqlstate', sqlstate,                  'message', message, 'first_seen', first_seen, 'last_seen', last_seen, 'attempts', attempts)::text                  FROM {table} WHERE {filter} ORDER BY id LIMIT $4"
            ),
            &[&tenant, &selection.table, &selection.after_id, &selection.limit()],
        )
        .await?;
    let total: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table} WHERE {filter}"), &[&tenant, &selection.table, &None::<i64>])
        .await?
        .get(0);
    let letters = rows.iter().map(|r| serde_json::from_str(r.get(0)).expect("PostgreSQL writes JSON")).collect();
    Ok((letters, total))
}

/// What a replay did.
#[derive(Debug, Default, serde::Serialize, PartialEq, utoipa::ToSchema)]
pub struct Replayed {
    /// Rows moved into their tables (or found there already).
    pub replayed: u64,
    /// Rows that failed again; they stay, with the new reason.
    pub failed: u64,
    /// The last id looked at: pass it as `after_id` to go on.
    pub last_id: Option<i64>,
    /// Rows still kept after the last one looked at.
    pub remaining: i64,
}

/// Moves up to `selection.limit` kept rows into their tables, each in a
/// transaction of its own with its deletion from the dead letters. A row
/// already there (a replay run twice) counts as replayed.
pub async fn replay(
    client: &mut tokio_postgres::Client,
    schema: &str,
    tenant: &str,
    selection: &Selection,
) -> Result<Replayed, tokio_postgres::Error> {
    let mut report = Replayed::default();
    if !exists(&*client, schema).await? {
        return Ok(report);
    }
    let table = qualified(schema, TABLE);
    let rows = client
        .query(
            &format!(
                "SELECT id, target_table, row::text, conflict_key, update_columns FROM {table} \
                 WHERE tenant = $1 AND ($2::text IS NULL OR target_table = $2) AND id > coalesce($3::int8, 0) \
                 ORDER BY id LIMIT $4"
            ),
            &[&tenant, &selection.table, &selection.after_id, &selection.limit()],
        )
        .await?;
    for row in rows {
        let id: i64 = row.get(0);
        let target: String = row.get(1);
        let text: String = row.get(2);
        let kept: serde_json::Value = serde_json::from_str(&text).expect("PostgreSQL writes JSON");
        let key: Vec<String> = row.get(3);
        let update: Option<Vec<String>> = row.get(4);
        let columns: Vec<String> = kept.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        let sql = replay_sql(schema, &target, &columns, &key, update.as_deref());
        let attempt = async {
            let tx = client.transaction().await?;
            tx.execute(&sql, &[&text]).await?;
            tx.execute(&format!("DELETE FROM {table} WHERE id = $1"), &[&id]).await?;
            tx.commit_checked().await
        };
        match attempt.await {
            Ok(()) => report.replayed += 1,
            // A row the server refused stays, with why; a lost connection ends the replay.
            Err(e) if sluice_postgres::classify(&e) != sluice_postgres::Kind::Connection => {
                let db = e.as_db_error().expect("the server's refusal");
                client
                    .execute(
                        &format!(
                            "UPDATE {table} SET attempts = attempts + 1, last_seen = now(), sqlstate = $2, message = $3 \
                             WHERE id = $1"
                        ),
                        &[&id, &db.code().code(), &db.message()],
                    )
                    .await?;
                report.failed += 1;
            }
            Err(e) => return Err(e),
        }
        report.last_id = Some(id);
    }
    report.remaining = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {table} WHERE tenant = $1 AND ($2::text IS NULL OR target_table = $2) \
                 AND id > coalesce($3::int8, 0)"
            ),
            &[&tenant, &selection.table, &report.last_id.or(selection.after_id)],
        )
        .await?
        .get(0);
    Ok(report)
}

/// Deletes kept rows of `tenant` (of one table, with `selection.table`);
/// returns how many.
pub async fn purge(
    client: &impl GenericClient,
    schema: &str,
    tenant: &str,
    table: Option<&str>,
) -> Result<u64, tokio_postgres::Error> {
    if !exists(client, schema).await? {
        return Ok(0);
    }
    client
        .execute(
            &format!(
                "DELETE FROM {} WHERE tenant = $1 AND ($2::text IS NULL OR target_table = $2)",
                qualified(schema, TABLE)
            ),
            &[&tenant, &table],
        )
        .await
}

/// A value as JSON that PostgreSQL's text input reads back as the same
/// value.
pub fn json_of(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Null => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Int8(i) => J::from(*i),
        Value::Float8(f) if f.is_finite() => J::from(*f),
        Value::Float8(f) => J::String(
            match (f.is_nan(), f.is_sign_positive()) {
                (true, _) => "NaN",
                (false, true) => "Infinity",
                (false, false) => "-Infinity",
            }
            .into(),
        ),
        Value::Numeric(s) | Value::Text(s) => J::String(s.clone()),
        Value::Jsonb(s) => serde_json::from_str(s).unwrap_or_else(|_| J::String(s.clone())),
        Value::Uuid((hi, lo)) => J::String(uuid_text(*hi, *lo)),
        Value::Timestamptz(micros) => J::String(timestamp_text(*micros)),
        Value::Bytea(bytes) => {
            let mut hex = String::with_capacity(2 + bytes.len() * 2);
            hex.push_str("\\x");
            for b in bytes {
                let _ = write!(hex, "{b:02x}");
            }
            J::String(hex)
        }
    }
}

fn uuid_text(hi: u64, lo: u64) -> String {
    let h = format!("{hi:016x}{lo:016x}");
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// `2026-05-26 14:21:08.493000+00` for µs since the Unix epoch.
fn timestamp_text(micros: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(micros.div_euclid(1_000_000)) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            micros.rem_euclid(1_000_000)
        ),
        // Out of range for the calendar: PostgreSQL refuses it too.
        Err(_) => micros.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_json_postgresql_reads_back() {
        assert_eq!(json_of(&Value::Timestamptz(1_779_805_268_493_000)), "2026-05-26 14:21:08.493000+00");
        assert_eq!(json_of(&Value::Timestamptz(-1)), "1969-12-31 23:59:59.999999+00");
        assert_eq!(json_of(&Value::uuid(0x0123456789abcdef_0123456789abcdef)), "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(json_of(&Value::Jsonb(r#"{"a":[1]}"#.into())), serde_json::json!({"a": [1]}));
        assert_eq!(json_of(&Value::Float8(f64::NEG_INFINITY)), "-Infinity");
        assert_eq!(json_of(&Value::Bytea(vec![0, 255])), "\\x00ff");
        assert_eq!(json_of(&Value::Numeric("12.50".into())), "12.50");
    }

    #[test]
    fn replays_with_the_original_conflict_handling() {
        let cols = ["id".to_string(), "n".to_string()];
        let sql = replay_sql("s", "t", &cols, &["id".into()], None);
        assert_eq!(
            sql,
            r#"INSERT INTO "s"."t" ("id", "n") SELECT r."id", r."n" FROM jsonb_populate_record(NULL::"s"."t", $1::text::jsonb) r ON CONFLICT ("id") DO NOTHING"#
        );
        let sql = replay_sql("s", "t", &cols, &["id".into()], Some(&["n".into()]));
        assert!(sql.ends_with(r#"ON CONFLICT ("id") DO UPDATE SET "n" = EXCLUDED."n""#), "{sql}");
    }
}
