//! From pgoutput row changes to the contract's `row-change`: typed values,
//! key columns and Drasi's element ids.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_replication::pgoutput::{self as pg, OldTuple, Relation, ReplicaIdentity, Tuple, format_uuid};
use sluice_sdk::{ChangeOp, NamedValue, RowChange, Value};

/// Which columns key each table: `tableKeys`, else the primary key, else
/// the replica identity index; none is warned about once per table and
/// counted for every change.
pub struct Keys {
    /// From `tableKeys`: (schema, table) → columns.
    configured: HashMap<(String, String), Vec<String>>,
    /// Primary keys read from the catalog: (schema, table) → columns.
    primary: HashMap<(String, String), Vec<String>>,
    /// Per relation id: the relation seen and its key column positions.
    resolved: HashMap<u32, (Arc<Relation>, Option<Vec<usize>>)>,
    warned: HashSet<(String, String)>,
    /// Changes delivered without an element id (no key, or a null key value).
    pub without_key: Arc<AtomicU64>,
}

impl Keys {
    pub fn new(
        configured: HashMap<(String, String), Vec<String>>,
        primary: HashMap<(String, String), Vec<String>>,
        without_key: Arc<AtomicU64>,
    ) -> Keys {
        Keys { configured, primary, resolved: HashMap::new(), warned: HashSet::new(), without_key }
    }

    /// The positions of the key columns of `relation`, if it has a key.
    fn columns(&mut self, relation: &Arc<Relation>) -> Option<Vec<usize>> {
        if let Some((seen, columns)) = self.resolved.get(&relation.id)
            && Arc::ptr_eq(seen, relation)
        {
            return columns.clone();
        }
        let id = (relation.schema().to_owned(), relation.name.clone());
        let by_name = |names: &[String]| -> Option<Vec<usize>> {
            names.iter().map(|n| relation.columns.iter().position(|c| &c.name == n)).collect()
        };
        let columns = if let Some(names) = self.configured.get(&id) {
            let found = by_name(names);
            if found.is_none() && self.warned.insert(id.clone()) {
                tracing::warn!(
                    table = %format!("{}.{}", id.0, id.1),
                    "tableKeys names columns the table does not have: its changes get no element id"
                );
            }
            found
        } else if let Some(names) = self.primary.get(&id) {
            by_name(names)
        } else if matches!(relation.replica_identity, ReplicaIdentity::Default | ReplicaIdentity::Index)
            && relation.columns.iter().any(|c| c.is_key)
        {
            Some(relation.key_columns().collect())
        } else {
            None
        };
        if columns.is_none() && !self.configured.contains_key(&id) && self.warned.insert(id.clone()) {
            tracing::warn!(
                table = %format!("{}.{}", id.0, id.1),
                "the table has no primary key and no tableKeys entry: its changes get no element id"
            );
        }
        self.resolved.insert(relation.id, (relation.clone(), columns.clone()));
        columns
    }

    /// The key and the element id of a row of `relation`, read from `tuple`.
    fn key(&mut self, relation: &Arc<Relation>, tuple: &Tuple) -> (Vec<NamedValue>, Option<String>) {
        let Some(columns) = self.columns(relation) else {
            self.without_key.fetch_add(1, Ordering::Relaxed);
            return (Vec::new(), None);
        };
        let key: Vec<NamedValue> =
            columns.iter().map(|&i| NamedValue::new(&relation.columns[i].name, to_value(&tuple.0[i]))).collect();
        let texts: Option<Vec<String>> = columns.iter().map(|&i| key_text(&tuple.0[i])).collect();
        let element_id = texts.map(|texts| format!("{}:{}", element_prefix(relation), texts.join("_")));
        if element_id.is_none() {
            self.without_key.fetch_add(1, Ordering::Relaxed);
        }
        (key, element_id)
    }

    pub fn insert(&mut self, insert: pg::Insert) -> RowChange {
        let (key, element_id) = self.key(&insert.relation, &insert.new);
        let (after, unchanged_toast) = image(&insert.relation, insert.new);
        change(ChangeOp::Insert, &insert.relation, element_id, key, None, Some(after), unchanged_toast)
    }

    pub fn update(&mut self, update: pg::Update) -> RowChange {
        let relation = &update.relation;
        // The new row's key, unless one of its key values was not sent.
        let mut keyed = self.key(relation, &update.new);
        if keyed.1.is_none()
            && let Some(old) = &update.old
        {
            self.without_key.fetch_sub(1, Ordering::Relaxed);
            keyed = self.key(relation, old.tuple());
        }
        let before = update.old.map(|old| old_image(relation, old));
        let (after, unchanged_toast) = image(relation, update.new);
        change(ChangeOp::Update, relation, keyed.1, keyed.0, before, Some(after), unchanged_toast)
    }

    pub fn delete(&mut self, delete: pg::Delete) -> RowChange {
        let relation = &delete.relation;
        let (key, element_id) = self.key(relation, delete.old.tuple());
        let before = old_image(relation, delete.old);
        change(ChangeOp::Delete, relation, element_id, key, Some(before), None, Vec::new())
    }

    pub fn truncate(&mut self, truncate: &pg::Truncate) -> Vec<RowChange> {
        truncate
            .relations
            .iter()
            .map(|relation| change(ChangeOp::Truncate, relation, None, Vec::new(), None, None, Vec::new()))
            .collect()
    }
}

fn change(
    op: ChangeOp,
    relation: &Relation,
    element_id: Option<String>,
    key: Vec<NamedValue>,
    before: Option<Vec<NamedValue>>,
    after: Option<Vec<NamedValue>>,
    unchanged_toast: Vec<String>,
) -> RowChange {
    RowChange {
        op,
        schema: relation.schema().to_owned(),
        table: relation.name.clone(),
        element_id,
        key,
        before,
        after,
        unchanged_toast,
    }
}

/// `table` in `public`, `schema.table` elsewhere (Drasi's element id prefix).
pub fn element_prefix(relation: &Relation) -> String {
    match relation.schema() {
        "public" => relation.name.clone(),
        schema => format!("{schema}.{}", relation.name),
    }
}

/// A row image, leaving out (and naming) unchanged TOASTed columns. The
/// decoded values move into it: a change's text is never copied twice.
fn image(relation: &Relation, tuple: Tuple) -> (Vec<NamedValue>, Vec<String>) {
    let mut values = Vec::with_capacity(tuple.0.len());
    let mut unchanged = Vec::new();
    for (column, value) in relation.columns.iter().zip(tuple.0) {
        if value.is_unchanged() {
            unchanged.push(column.name.clone());
        } else {
            values.push(NamedValue::new(&column.name, into_value(value)));
        }
    }
    (values, unchanged)
}

/// The old row: all of it with `REPLICA IDENTITY FULL`, else only its
/// identity columns (the others are not sent).
fn old_image(relation: &Relation, old: OldTuple) -> Vec<NamedValue> {
    match old {
        OldTuple::Full(tuple) => image(relation, tuple).0,
        OldTuple::Key(tuple) => relation
            .columns
            .iter()
            .zip(tuple.0)
            .filter(|(column, value)| column.is_key && !value.is_unchanged())
            .map(|(column, value)| NamedValue::new(&column.name, into_value(value)))
            .collect(),
    }
}

/// The contract's value of a decoded column value. Integers widen to
/// int8, floats to float8, timestamps become timestamptz (UTC); dates,
/// and every type the contract has no variant for, travel as the server's
/// text. An unchanged TOASTed value never gets here (see [`image`]).
pub fn into_value(value: pg::Value) -> Value {
    match value {
        pg::Value::Null | pg::Value::Unchanged => Value::Null,
        pg::Value::Bool(b) => Value::Boolean(b),
        pg::Value::Int2(i) => Value::Int8(i64::from(i)),
        pg::Value::Int4(i) => Value::Int8(i64::from(i)),
        pg::Value::Int8(i) => Value::Int8(i),
        pg::Value::Float4(f) => Value::Float8(f64::from(f)),
        pg::Value::Float8(f) => Value::Float8(f),
        pg::Value::Numeric(s) => Value::Numeric(s),
        pg::Value::Text(s) => Value::Text(s),
        pg::Value::Json(s) => Value::Jsonb(s),
        pg::Value::Uuid(bytes) => Value::uuid(u128::from_be_bytes(bytes)),
        pg::Value::Timestamp(us) | pg::Value::TimestampTz(us) => Value::Timestamptz(us),
        pg::Value::Date(days) => Value::Text(format_date(days)),
        pg::Value::Bytea(bytes) => Value::Bytea(bytes),
        pg::Value::Other { text, .. } => Value::Text(text),
        pg::Value::Binary { bytes, .. } => Value::Bytea(bytes.to_vec()),
    }
}

/// [`into_value`] of a value that stays where it is (a key's).
pub fn to_value(value: &pg::Value) -> Value {
    into_value(value.clone())
}

/// A key value as element id text, as PostgreSQL prints it; none for a
/// null or unsent value.
pub fn key_text(value: &pg::Value) -> Option<String> {
    Some(match value {
        pg::Value::Null | pg::Value::Unchanged => return None,
        pg::Value::Bool(b) => b.to_string(),
        pg::Value::Int2(i) => i.to_string(),
        pg::Value::Int4(i) => i.to_string(),
        pg::Value::Int8(i) => i.to_string(),
        pg::Value::Float4(f) => f.to_string(),
        pg::Value::Float8(f) => f.to_string(),
        pg::Value::Numeric(s) | pg::Value::Text(s) | pg::Value::Json(s) => s.clone(),
        pg::Value::Uuid(bytes) => format_uuid(bytes),
        pg::Value::Timestamp(us) | pg::Value::TimestampTz(us) => us.to_string(),
        pg::Value::Date(days) => format_date(*days),
        pg::Value::Bytea(bytes) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        pg::Value::Other { text, .. } => text.clone(),
        pg::Value::Binary { bytes, .. } => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// Days since 1970-01-01 as `YYYY-MM-DD` (`infinity`, `-infinity`).
pub fn format_date(days: i32) -> String {
    match days {
        i32::MAX => return "infinity".into(),
        i32::MIN => return "-infinity".into(),
        _ => {}
    }
    // H. Hinnant's civil_from_days.
    let z = i64::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    if y <= 0 { format!("{:04}-{m:02}-{d:02} BC", 1 - y) } else { format!("{y:04}-{m:02}-{d:02}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_replication::pgoutput::Column;

    fn relation(
        id: u32,
        schema: &str,
        name: &str,
        identity: ReplicaIdentity,
        columns: &[(&str, bool)],
    ) -> Arc<Relation> {
        Arc::new(Relation {
            id,
            namespace: schema.into(),
            name: name.into(),
            replica_identity: identity,
            columns: columns
                .iter()
                .map(|(n, key)| Column { name: (*n).into(), type_oid: 25, type_modifier: -1, is_key: *key })
                .collect(),
        })
    }

    fn keys(configured: &[((&str, &str), &[&str])], primary: &[((&str, &str), &[&str])]) -> Keys {
        let map = |entries: &[((&str, &str), &[&str])]| {
            entries
                .iter()
                .map(|((s, t), cols)| ((s.to_string(), t.to_string()), cols.iter().map(|c| c.to_string()).collect()))
                .collect()
        };
        Keys::new(map(configured), map(primary), Arc::new(AtomicU64::new(0)))
    }

    fn text(s: &str) -> pg::Value {
        pg::Value::Text(s.into())
    }

    #[test]
    fn element_ids_as_drasi() {
        let mut keys = keys(&[(("inv", "items"), &["sku", "site"])], &[(("public", "orders"), &["id"])]);
        let orders = relation(1, "public", "orders", ReplicaIdentity::Default, &[("id", true), ("note", false)]);
        let insert =
            pg::Insert { xid: None, relation: orders.clone(), new: Tuple(vec![pg::Value::Int4(7), text("a")]) };
        let change = keys.insert(insert);
        assert_eq!(change.element_id.as_deref(), Some("orders:7"));
        assert_eq!(change.key, [NamedValue::new("id", Value::Int8(7))]);
        assert_eq!(change.before, None);

        // Composite keys from tableKeys, outside public.
        let items = relation(2, "inv", "items", ReplicaIdentity::Full, &[("sku", true), ("site", true), ("n", true)]);
        let delete = pg::Delete {
            xid: None,
            relation: items.clone(),
            old: OldTuple::Full(Tuple(vec![text("A-1"), text("eu"), pg::Value::Int8(3)])),
        };
        let change = keys.delete(delete);
        assert_eq!(change.element_id.as_deref(), Some("inv.items:A-1_eu"));
        assert_eq!(change.before.as_ref().unwrap().len(), 3);
        assert_eq!(change.after, None);

        // The replica identity when there is no primary key in the catalog;
        // none at all (FULL without a key) is counted.
        let other = relation(3, "s", "t", ReplicaIdentity::Index, &[("a", true), ("b", false)]);
        let change = keys.insert(pg::Insert { xid: None, relation: other, new: Tuple(vec![text("x"), text("y")]) });
        assert_eq!(change.element_id.as_deref(), Some("s.t:x"));
        let keyless = relation(4, "public", "logs", ReplicaIdentity::Full, &[("a", true)]);
        let change = keys.insert(pg::Insert { xid: None, relation: keyless, new: Tuple(vec![text("x")]) });
        assert_eq!((change.element_id, change.key.len()), (None, 0));
        assert_eq!(keys.without_key.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn updates_keep_unchanged_toast_apart_and_old_keys() {
        let mut keys = keys(&[], &[(("public", "docs"), &["id"])]);
        let docs = relation(1, "public", "docs", ReplicaIdentity::Default, &[("id", true), ("body", false)]);
        let update = pg::Update {
            xid: None,
            relation: docs.clone(),
            old: Some(OldTuple::Key(Tuple(vec![pg::Value::Int8(1), pg::Value::Null]))),
            new: Tuple(vec![pg::Value::Int8(2), pg::Value::Unchanged]),
        };
        let change = keys.update(update);
        assert_eq!(change.element_id.as_deref(), Some("docs:2"));
        assert_eq!(change.before, Some(vec![NamedValue::new("id", Value::Int8(1))]));
        assert_eq!(change.after, Some(vec![NamedValue::new("id", Value::Int8(2))]));
        assert_eq!(change.unchanged_toast, ["body"]);
        let truncate = pg::Truncate { xid: None, cascade: false, restart_identity: false, relations: vec![docs] };
        let changes = keys.truncate(&truncate);
        assert_eq!((changes[0].op, changes[0].element_id.clone()), (ChangeOp::Truncate, None));
    }

    #[test]
    fn values_and_dates() {
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(format_date(11_017), "2000-03-01");
        assert_eq!(format_date(-1), "1969-12-31");
        assert_eq!(format_date(-719_528), "0001-01-01 BC");
        assert_eq!(to_value(&pg::Value::Int2(-3)), Value::Int8(-3));
        assert_eq!(to_value(&pg::Value::Date(0)), Value::Text("1970-01-01".into()));
        let uuid = pg::Value::from_text(pg::oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert_eq!(to_value(&uuid), Value::uuid(0xa0ee_bc99_9c0b_4ef8_bb6d_6bb9_bd38_0a11));
        assert_eq!(key_text(&uuid).unwrap(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert_eq!(key_text(&pg::Value::Null), None);
    }
}
