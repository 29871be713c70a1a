//! An audit (outbox) change handler: every change of a committed
//! transaction becomes one row of table `cdc_audit`, keyed by the commit
//! LSN and the change's position in the transaction, so a transaction
//! delivered again writes nothing new.
//!
//! A bootstrap (xid 0: the rows read from the slot's snapshot) is keyed by
//! its consistent point negated, so its rows can never take the key of a
//! transaction that commits right at that point, and each bootstrap of a
//! source keeps rows of its own.

use serde_json::{Map, Value as Json};
use sluice_sdk::{
    ChangeOp, Column, ColumnDefault, ColumnType, Conflict, Index, NamedValue, Row, RowChange, Table, Transaction,
    UpsertPlan, Value,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[cfg(target_family = "wasm")]
sluice_sdk::export_change_handler!();

pub const TABLE: &str = "cdc_audit";

/// The columns of a plan, in the order rows list their values.
pub const COLUMNS: [&str; 13] = [
    "commit_lsn",
    "change_index",
    "source",
    "xid",
    "commit_time",
    "op",
    "schema_name",
    "table_name",
    "element_id",
    "key",
    "before",
    "after",
    "unchanged_toast",
];

pub fn tables() -> Vec<Table> {
    let columns = vec![
        Column::new("commit_lsn", ColumnType::Int8).not_null(),
        Column::new("change_index", ColumnType::Int8).not_null(),
        Column::new("source", ColumnType::Text).not_null(),
        Column::new("xid", ColumnType::Int8).not_null(),
        Column::new("commit_time", ColumnType::Timestamptz).not_null(),
        Column::new("op", ColumnType::Text).not_null(),
        Column::new("schema_name", ColumnType::Text).not_null(),
        Column::new("table_name", ColumnType::Text).not_null(),
        Column::new("element_id", ColumnType::Text),
        Column::new("key", ColumnType::Jsonb).not_null(),
        Column::new("before", ColumnType::Jsonb),
        Column::new("after", ColumnType::Jsonb),
        Column::new("unchanged_toast", ColumnType::Jsonb),
        Column::new("recorded_at", ColumnType::Timestamptz).not_null().default(ColumnDefault::Now),
    ];
    vec![Table {
        name: TABLE.into(),
        columns,
        primary_key: vec!["commit_lsn".into(), "change_index".into()],
        indexes: vec![Index::btree("element", &["element_id", "commit_lsn"])],
        template: false,
    }]
}

/// One row per change; replays are duplicates (`DO NOTHING`).
pub fn handle_transaction(tx: &Transaction) -> Vec<UpsertPlan> {
    let rows: Vec<Row> = tx
        .changes
        .iter()
        .enumerate()
        .map(|(i, change)| {
            let index = tx.first_change + i as u32;
            Row { event: index, values: row_values(tx, u64::from(index), change) }
        })
        .collect();
    if rows.is_empty() {
        return Vec::new();
    }
    vec![UpsertPlan {
        table: TABLE.into(),
        template: None,
        columns: COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
        conflict: Conflict::DoNothing,
        rows,
    }]
}

fn row_values(tx: &Transaction, index: u64, change: &RowChange) -> Vec<Value> {
    let image = |image: &Option<Vec<NamedValue>>| match image {
        Some(values) => Value::Jsonb(object(values).to_string()),
        None => Value::Null,
    };
    let unchanged = if change.op == ChangeOp::Update {
        Value::Jsonb(Json::from(change.unchanged_toast.clone()).to_string())
    } else {
        Value::Null
    };
    let commit_lsn = if tx.xid == 0 { -(tx.commit_lsn as i64) } else { tx.commit_lsn as i64 };
    vec![
        Value::Int8(commit_lsn),
        Value::Int8(index as i64),
        Value::Text(tx.source.clone()),
        Value::Int8(i64::from(tx.xid)),
        Value::Timestamptz(tx.commit_time),
        Value::Text(change.op.as_str().into()),
        Value::Text(change.schema.clone()),
        Value::Text(change.table.clone()),
        Value::text_or_null(change.element_id.clone()),
        Value::Jsonb(object(&change.key).to_string()),
        image(&change.before),
        image(&change.after),
        unchanged,
    ]
}

/// A row image as a JSON object, in column order.
pub fn object(values: &[NamedValue]) -> Json {
    let mut map = Map::new();
    for v in values {
        map.insert(v.name.clone(), json(&v.value));
    }
    Json::Object(map)
}

/// A value as JSON: numbers stay numbers where JSON can hold them exactly,
/// numeric stays its exact text, times are RFC 3339, bytes `\x` hex.
pub fn json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int8(i) => Json::from(*i),
        Value::Float8(f) => serde_json::Number::from_f64(*f).map_or_else(|| Json::String(f.to_string()), Json::Number),
        Value::Numeric(s) | Value::Text(s) => Json::String(s.clone()),
        Value::Jsonb(s) => serde_json::from_str(s).unwrap_or_else(|_| Json::String(s.clone())),
        Value::Uuid((hi, lo)) => {
            let id = (u128::from(*hi) << 64) | u128::from(*lo);
            let h = format!("{id:032x}");
            Json::String(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
        }
        Value::Timestamptz(micros) => Json::String(timestamp(*micros)),
        Value::Bytea(bytes) => {
            let mut s = String::with_capacity(2 + 2 * bytes.len());
            s.push_str("\\x");
            for b in bytes {
                s.push_str(&format!("{b:02x}"));
            }
            Json::String(s)
        }
    }
}

fn timestamp(micros: i64) -> String {
    match micros {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        _ => OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| micros.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: ChangeOp) -> RowChange {
        RowChange {
            op,
            schema: "public".into(),
            table: "orders".into(),
            element_id: Some("orders:7".into()),
            key: vec![NamedValue::new("id", Value::Int8(7))],
            before: None,
            after: Some(vec![
                NamedValue::new("id", Value::Int8(7)),
                NamedValue::new("note", Value::Text("hi".into())),
                NamedValue::new("doc", Value::Jsonb(r#"{"a":[1,2]}"#.into())),
                NamedValue::new("at", Value::Timestamptz(1_500_000)),
                NamedValue::new("id2", Value::uuid(0xa0ee_bc99_9c0b_4ef8_bb6d_6bb9_bd38_0a11)),
                NamedValue::new("raw", Value::Bytea(vec![0, 255])),
                NamedValue::new("amount", Value::Numeric("12.50".into())),
            ]),
            unchanged_toast: vec![],
        }
    }

    #[test]
    fn every_change_is_one_row_keyed_by_commit_lsn_and_position() {
        let tx = Transaction {
            source: "src".into(),
            xid: 9,
            commit_lsn: 0x1000,
            end_lsn: 0x1010,
            commit_time: 0,
            first_change: 3,
            last: true,
            changes: vec![change(ChangeOp::Insert), change(ChangeOp::Update)],
        };
        let plans = handle_transaction(&tx);
        assert_eq!(plans.len(), 1);
        let rows = &plans[0].rows;
        assert_eq!(rows.iter().map(|r| r.event).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(rows[1].values[0], Value::Int8(0x1000));
        assert_eq!(rows[1].values[1], Value::Int8(4));
        assert_eq!(rows[1].values[5], Value::Text("update".into()));
        assert_eq!(rows[1].values[8], Value::Text("orders:7".into()));
        assert_eq!(rows[1].values[10], Value::Null);
        assert_eq!(rows[1].values[12], Value::Jsonb("[]".into()));
        let Value::Jsonb(after) = &rows[0].values[11] else { panic!() };
        let after: Json = serde_json::from_str(after).unwrap();
        assert_eq!(
            after,
            serde_json::json!({"id": 7, "note": "hi", "doc": {"a": [1, 2]}, "at": "1970-01-01T00:00:01.5Z",
                "id2": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "raw": "\\x00ff", "amount": "12.50"})
        );
        for table in tables() {
            table.validate().unwrap();
        }
        let upsert = sluice_sdk::sql::Upsert::new("public", &tables()[0], &plans[0].columns, &plans[0].conflict);
        upsert.unwrap();
        let bootstrap = handle_transaction(&Transaction { xid: 0, ..tx.clone() });
        assert_eq!(bootstrap[0].rows[0].values[0], Value::Int8(-0x1000));
        assert!(handle_transaction(&Transaction { changes: vec![], ..tx }).is_empty());
    }
}
