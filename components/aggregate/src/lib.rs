//! An example change handler that keeps a derived aggregate: for every
//! customer of table `orders` (columns `customer_id` and `amount`), the
//! number of orders and their total, in table `customer_order_totals`.
//!
//! Each change becomes signed deltas that the host adds to the stored
//! values (an accumulating plan, `update(["+order_count", "+total"])`):
//! an insert adds (1, amount), a delete subtracts the old row, an update
//! subtracts the old row and adds the new one (so a change of customer
//! moves the order). A TRUNCATE of `orders`, and the start of a bootstrap
//! (which delivers the whole table again), empty the aggregate first.
//!
//! The deltas are not idempotent by themselves: they count on the host's
//! exactly-once apply (plans and checkpoint in one transaction). Updates and
//! deletes need the old row, so `orders` must have `REPLICA IDENTITY FULL`.

use sluice_sdk::{
    ChangeOp, Column, ColumnType, Conflict, NamedValue, Row, RowChange, Table, Transaction, UpsertPlan, Value,
};

#[cfg(target_family = "wasm")]
sluice_sdk::export_change_handler!();

/// The source table (in any schema).
pub const SOURCE: &str = "orders";
pub const TABLE: &str = "customer_order_totals";

pub fn tables() -> Vec<Table> {
    vec![Table {
        name: TABLE.into(),
        columns: vec![
            Column::new("customer_id", ColumnType::Text).not_null(),
            Column::new("order_count", ColumnType::Int8).not_null(),
            Column::new("total", ColumnType::Numeric).not_null(),
        ],
        primary_key: vec!["customer_id".into()],
        indexes: vec![],
        template: false,
    }]
}

/// The plans of one transaction (or part): empty the table when it must be
/// rebuilt, then add each change's deltas.
pub fn handle_transaction(tx: &Transaction) -> Result<Vec<UpsertPlan>, String> {
    // xid 0 is a bootstrap: its first part starts the aggregate over.
    let mut clear = tx.xid == 0 && tx.first_change == 0;
    let mut rows = Vec::new();
    for (i, change) in tx.changes.iter().enumerate() {
        if change.table != SOURCE {
            continue;
        }
        let event = tx.first_change + i as u32;
        match change.op {
            ChangeOp::Insert => rows.extend(delta(event, order(change, change.after.as_deref(), None)?, false)),
            ChangeOp::Delete => rows.extend(delta(event, order(change, change.before.as_deref(), None)?, true)),
            ChangeOp::Update => {
                let old = order(change, change.before.as_deref(), None)?;
                let new = order(change, change.after.as_deref(), change.before.as_deref())?;
                rows.extend(delta(event, old, true));
                rows.extend(delta(event, new, false));
            }
            ChangeOp::Truncate => {
                // What came before in this part is gone with the table.
                rows.clear();
                clear = true;
            }
        }
    }
    let mut plans = Vec::new();
    if clear {
        plans.push(UpsertPlan {
            table: TABLE.into(),
            template: None,
            columns: vec![],
            conflict: Conflict::DoNothing,
            rows: vec![],
        });
    }
    if !rows.is_empty() {
        plans.push(UpsertPlan {
            table: TABLE.into(),
            template: None,
            columns: vec!["customer_id".into(), "order_count".into(), "total".into()],
            conflict: Conflict::Update(vec!["+order_count".into(), "+total".into()]),
            rows,
        });
    }
    Ok(plans)
}

/// An order's customer (none: not counted) and amount (numeric text).
type Order = (Option<String>, String);

/// The customer and amount of a row image. Columns the update did not
/// send (unchanged TOAST) are taken from `fallback`, the old row.
fn order(change: &RowChange, image: Option<&[NamedValue]>, fallback: Option<&[NamedValue]>) -> Result<Order, String> {
    let image = image.ok_or_else(|| {
        format!(
            "a{} {} of {}.{} carries no {} row: the table needs REPLICA IDENTITY FULL",
            if change.op == ChangeOp::Insert { "n" } else { "" },
            change.op.as_str(),
            change.schema,
            change.table,
            if change.op == ChangeOp::Insert { "new" } else { "old" }
        )
    })?;
    let get = |name: &str| -> Result<&Value, String> {
        image.iter().chain(fallback.unwrap_or_default()).find(|v| v.name == name).map(|v| &v.value).ok_or_else(|| {
            format!(
                "a {} of {}.{} has no column {name:?} (REPLICA IDENTITY FULL is needed for updates and deletes)",
                change.op.as_str(),
                change.schema,
                change.table
            )
        })
    };
    let customer = match get("customer_id")? {
        Value::Null => None,
        Value::Text(s) | Value::Numeric(s) => Some(s.clone()),
        Value::Int8(i) => Some(i.to_string()),
        Value::Uuid((hi, lo)) => Some(format!("{:032x}", (u128::from(*hi) << 64) | u128::from(*lo))),
        other => return Err(format!("customer_id of {}.{} is a {other:?}", change.schema, change.table)),
    };
    let amount = match get("amount")? {
        Value::Null => "0".to_owned(),
        Value::Numeric(s) => s.clone(),
        Value::Int8(i) => i.to_string(),
        Value::Float8(f) if f.is_finite() => f.to_string(),
        other => return Err(format!("amount of {}.{} is a {other:?}, not a number", change.schema, change.table)),
    };
    Ok((customer, amount))
}

/// The delta row of an order: +1 and its amount, or -1 and minus it.
fn delta(event: u32, (customer, amount): Order, subtract: bool) -> Option<Row> {
    let customer = customer?;
    let (count, amount) = if subtract {
        let negated = match amount.strip_prefix('-') {
            Some(positive) => positive.to_owned(),
            None => format!("-{amount}"),
        };
        (-1, negated)
    } else {
        (1, amount)
    };
    Some(Row { event, values: vec![Value::Text(customer), Value::Int8(count), Value::Numeric(amount)] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(customer: i64, amount: &str) -> Option<Vec<NamedValue>> {
        Some(vec![
            NamedValue::new("id", Value::Int8(1)),
            NamedValue::new("customer_id", Value::Int8(customer)),
            NamedValue::new("amount", Value::Numeric(amount.into())),
        ])
    }

    fn change(op: ChangeOp, before: Option<Vec<NamedValue>>, after: Option<Vec<NamedValue>>) -> RowChange {
        RowChange {
            op,
            schema: "public".into(),
            table: "orders".into(),
            element_id: Some("orders:1".into()),
            key: vec![],
            before,
            after,
            unchanged_toast: vec![],
        }
    }

    fn tx(xid: u32, changes: Vec<RowChange>) -> Transaction {
        Transaction {
            source: "s".into(),
            xid,
            commit_lsn: 1,
            end_lsn: 2,
            commit_time: 0,
            first_change: 0,
            last: true,
            changes,
        }
    }

    fn deltas(plan: &UpsertPlan) -> Vec<(String, i64, String)> {
        plan.rows
            .iter()
            .map(|r| match &r.values[..] {
                [Value::Text(c), Value::Int8(n), Value::Numeric(a)] => (c.clone(), *n, a.clone()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn inserts_updates_deletes_and_truncates_become_deltas() {
        let plans = handle_transaction(&tx(
            7,
            vec![
                change(ChangeOp::Insert, None, image(1, "10.50")),
                change(ChangeOp::Update, image(1, "10.50"), image(2, "3")),
                change(ChangeOp::Delete, image(2, "-3"), None),
            ],
        ))
        .unwrap();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].conflict, Conflict::Update(vec!["+order_count".into(), "+total".into()]));
        assert_eq!(
            deltas(&plans[0]),
            [
                ("1".into(), 1, "10.50".into()),
                ("1".into(), -1, "-10.50".into()),
                ("2".into(), 1, "3".into()),
                ("2".into(), -1, "3".into()),
            ]
        );

        // A truncate drops what came before it and empties the table first.
        let truncate = change(ChangeOp::Truncate, None, None);
        let plans = handle_transaction(&tx(
            7,
            vec![
                change(ChangeOp::Insert, None, image(1, "1")),
                truncate,
                change(ChangeOp::Insert, None, image(3, "2")),
            ],
        ))
        .unwrap();
        assert_eq!((plans.len(), plans[0].columns.len()), (2, 0));
        assert_eq!(deltas(&plans[1]), [("3".into(), 1, "2".into())]);

        // A bootstrap's first part starts over; its later parts do not.
        let boot = handle_transaction(&tx(0, vec![change(ChangeOp::Insert, None, image(1, "1"))])).unwrap();
        assert_eq!((boot.len(), boot[0].columns.len()), (2, 0));
        let later = Transaction { first_change: 5, ..tx(0, vec![change(ChangeOp::Insert, None, image(1, "1"))]) };
        assert_eq!(handle_transaction(&later).unwrap().len(), 1);

        // Other tables are ignored; an update without its old row is refused.
        let mut other = change(ChangeOp::Insert, None, image(1, "1"));
        other.table = "lines".into();
        assert!(handle_transaction(&tx(7, vec![other])).unwrap().is_empty());
        let err = handle_transaction(&tx(7, vec![change(ChangeOp::Update, None, image(1, "1"))])).unwrap_err();
        assert!(err.contains("REPLICA IDENTITY FULL"), "{err}");
        for table in tables() {
            table.validate().unwrap();
        }
    }
}
