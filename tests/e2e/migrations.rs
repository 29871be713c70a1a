//! Creating declared tables, and refusing destructive changes.

use crate::support::TestDb;
use sluice::db::migrate::migrate;
use sluice_sdk::{Column, ColumnType, Table};

fn events() -> Table {
    sluice_events::tables().remove(0)
}

async fn columns(client: &tokio_postgres::Client, table: &str) -> Vec<(String, String, bool)> {
    client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn creates_tables_and_indexes_idempotently() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    migrate(&mut client, "ingest", &[events()]).await.unwrap();
    migrate(&mut client, "ingest", &[events()]).await.unwrap();
    let cols = columns(&client, "ingest.events").await;
    assert_eq!(cols[0], ("event_id".into(), "uuid".into(), true));
    assert_eq!(cols[2], ("occurred_at".into(), "timestamp with time zone".into(), true));
    assert_eq!(cols.len(), 9);
    let indexes: Vec<String> = client
        .query("SELECT indexname::text FROM pg_indexes WHERE schemaname = 'ingest' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(indexes, ["events_occurred_at_idx", "events_pkey", "events_type_occurred_at_idx"]);
}

#[tokio::test]
async fn adds_new_nullable_columns_and_missing_indexes() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    migrate(&mut client, "public", &[events()]).await.unwrap();
    client.batch_execute("DROP INDEX events_occurred_at_idx").await.unwrap();
    let mut table = events();
    table.columns.push(Column::new("tenant_note", ColumnType::Text));
    migrate(&mut client, "public", &[table]).await.unwrap();
    let cols = columns(&client, "public.events").await;
    assert_eq!(cols.last().unwrap(), &("tenant_note".to_string(), "text".to_string(), false));
    let restored: bool =
        client.query_one("SELECT to_regclass('events_occurred_at_idx') IS NOT NULL", &[]).await.unwrap().get(0);
    assert!(restored);
}

#[tokio::test]
async fn refuses_changes_that_would_rewrite_or_drop_data() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    migrate(&mut client, "public", &[events()]).await.unwrap();

    let mut retyped = events();
    retyped.columns[1].data_type = ColumnType::Int8;
    let e = migrate(&mut client, "public", &[retyped]).await.unwrap_err().to_string();
    assert!(e.contains("\"event_type\"") && e.contains("text in the database") && e.contains("bigint"), "{e}");

    let mut required = events();
    required.columns.push(Column::new("must_have", ColumnType::Text).not_null());
    let e = migrate(&mut client, "public", &[required]).await.unwrap_err().to_string();
    assert!(e.contains("\"must_have\"") && e.contains("not null with no default"), "{e}");

    let mut rekeyed = events();
    rekeyed.columns[1].nullable = false;
    rekeyed.primary_key = vec!["event_id".into(), "event_type".into()];
    let e = migrate(&mut client, "public", &[rekeyed]).await.unwrap_err().to_string();
    assert!(e.contains("primary key (event_id)") && e.contains("(event_id, event_type)"), "{e}");

    // Nothing was changed by the refused attempts.
    assert_eq!(columns(&client, "public.events").await.len(), 9);
}
