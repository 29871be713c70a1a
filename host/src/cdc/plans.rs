//! What change handlers' plans can do beyond an upsert, for tables they
//! derive from the changes (aggregates): without changing the contract's
//! types, two forms that a normalizer's plan may not take.
//!
//! - **Accumulate**: `conflict = update(["+count", "+total"])`. A listed
//!   column prefixed with `+` is added to the stored value instead of
//!   overwriting it; rows of one key in the plan are summed first. Every
//!   non-key column of such a plan must be accumulated, and be int8, float8
//!   or numeric.
//! - **Empty the table**: a plan that lists no columns deletes every row of
//!   its table (a derived table's answer to a TRUNCATE, or to a bootstrap
//!   that rebuilds it).
//!
//! Both are written in the transaction of the change, with its checkpoint,
//! so they apply exactly once.

use anyhow::{Result, anyhow, bail};
use sluice_sdk::sql::{param_type, qualified, quote_ident};
use sluice_sdk::{ColumnType, Conflict, Table, UpsertPlan};
use tokio_postgres::types::ToSql;

use crate::db::encode::ColumnArray;

/// Whether `plan` accumulates (some `update` column starts with `+`).
pub fn accumulates(plan: &UpsertPlan) -> bool {
    matches!(&plan.conflict, Conflict::Update(set) if set.iter().any(|c| c.starts_with('+')))
}

/// Writes an accumulating plan, or empties the table for a plan without columns.
pub async fn write(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    table: &Table,
    plan: &UpsertPlan,
) -> Result<()> {
    if plan.columns.is_empty() {
        if !plan.rows.is_empty() {
            bail!("a plan for table {:?} lists no columns but has rows", plan.table);
        }
        tx.execute(&format!("DELETE FROM {}", qualified(schema, &table.name)), &[]).await?;
        return Ok(());
    }
    if plan.rows.is_empty() {
        return Ok(());
    }
    let (sql, types) = accumulate_sql(schema, table, plan).map_err(|e| anyhow!(e))?;
    let columns = column_arrays(plan, &types)?;
    let statement = tx.prepare_cached(&sql).await?;
    let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    tx.execute(&statement, &params).await.map_err(|e| anyhow!("accumulate into table {:?}: {e}", plan.table))?;
    Ok(())
}

/// A plan's rows as one parameter array per column, each value checked
/// against its column's declared type (`types`, in the plan's order).
pub fn column_arrays<'a>(plan: &'a UpsertPlan, types: &[ColumnType]) -> Result<Vec<ColumnArray<'a>>> {
    let mut columns: Vec<ColumnArray> =
        types.iter().map(|&ty| ColumnArray { param_type: param_type(ty), values: Vec::new() }).collect();
    for row in &plan.rows {
        if row.values.len() != plan.columns.len() {
            bail!(
                "a row for table {:?} has {} values for {} columns",
                plan.table,
                row.values.len(),
                plan.columns.len()
            );
        }
        for ((column, value), (name, ty)) in columns.iter_mut().zip(&row.values).zip(plan.columns.iter().zip(types)) {
            if value.column_type().is_some_and(|t| t != *ty) {
                bail!("a {:?} value for column {name:?} of table {:?}", value.column_type(), plan.table);
            }
            column.values.push(value);
        }
    }
    Ok(columns)
}

/// The statement of an accumulating plan and its columns' declared types.
pub fn accumulate_sql(schema: &str, table: &Table, plan: &UpsertPlan) -> Result<(String, Vec<ColumnType>), String> {
    let name = &table.name;
    let Conflict::Update(set) = &plan.conflict else { return Err(format!("a plan for table {name:?} adds nothing")) };
    let added: Vec<&str> = set
        .iter()
        .map(|c| {
            c.strip_prefix('+').ok_or_else(|| {
                format!("a plan for table {name:?} mixes added (+) and overwritten columns: {c:?} has no +")
            })
        })
        .collect::<Result<_, _>>()?;
    let mut types = Vec::with_capacity(plan.columns.len());
    for (i, column) in plan.columns.iter().enumerate() {
        let declared = table.column(column).ok_or_else(|| format!("table {name:?} has no column {column:?}"))?;
        if plan.columns[..i].contains(column) {
            return Err(format!("a plan for table {name:?} lists column {column:?} twice"));
        }
        let key = table.primary_key.contains(column);
        if key == added.contains(&column.as_str()) {
            return Err(if key {
                format!("a plan for table {name:?} adds to primary key column {column:?}")
            } else {
                format!("a plan for table {name:?} adds to some columns but lists {column:?} without +")
            });
        }
        if !key && !matches!(declared.data_type, ColumnType::Int8 | ColumnType::Float8 | ColumnType::Numeric) {
            return Err(format!("a plan for table {name:?} adds to column {column:?}, which is not a number"));
        }
        types.push(declared.data_type);
    }
    if let Some(missing) = table.primary_key.iter().find(|k| !plan.columns.contains(k)) {
        return Err(format!("a plan for table {name:?} that adds leaves out primary key column {missing:?}"));
    }
    if let Some(unknown) = added.iter().find(|c| !plan.columns.iter().any(|p| p == *c)) {
        return Err(format!("a plan for table {name:?} adds to column {unknown:?}, which it does not list"));
    }
    let alias = |i: usize| format!("c{}", i + 1);
    let value = |i: usize| match types[i] {
        ColumnType::Numeric => format!("{}::numeric", alias(i)),
        _ => alias(i),
    };
    let params = (0..types.len())
        .map(|i| format!("${}::{}[]", i + 1, param_type(types[i]).sql_name()))
        .collect::<Vec<_>>()
        .join(", ");
    let aliases = (0..types.len()).map(alias).collect::<Vec<_>>().join(", ");
    let keys: Vec<usize> = (0..types.len()).filter(|&i| table.primary_key.contains(&plan.columns[i])).collect();
    let selects = (0..types.len())
        .map(|i| if keys.contains(&i) { value(i) } else { format!("sum({})::{}", value(i), types[i].sql_name()) })
        .collect::<Vec<_>>()
        .join(", ");
    let group = keys.iter().map(|&i| value(i)).collect::<Vec<_>>().join(", ");
    let list = |names: &mut dyn Iterator<Item = &String>| names.map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let sets =
        added.iter().map(|c| format!("{0} = stored.{0} + EXCLUDED.{0}", quote_ident(c))).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "WITH input AS (SELECT * FROM unnest({params}) AS input({aliases})) \
         INSERT INTO {} AS stored ({}) SELECT {selects} FROM input GROUP BY {group} \
         ON CONFLICT ({}) DO UPDATE SET {sets}",
        qualified(schema, name),
        list(&mut plan.columns.iter()),
        list(&mut table.primary_key.iter()),
    );
    Ok((sql, types))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::Column;

    fn totals() -> Table {
        Table {
            name: "totals".into(),
            columns: vec![
                Column::new("customer", ColumnType::Text).not_null(),
                Column::new("n", ColumnType::Int8).not_null(),
                Column::new("sum", ColumnType::Numeric).not_null(),
                Column::new("note", ColumnType::Text),
            ],
            primary_key: vec!["customer".into()],
            indexes: vec![],
            template: false,
        }
    }

    fn plan(columns: &[&str], set: &[&str]) -> UpsertPlan {
        UpsertPlan {
            table: "totals".into(),
            template: None,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            conflict: Conflict::Update(set.iter().map(|c| c.to_string()).collect()),
            rows: vec![],
        }
    }

    #[test]
    fn accumulating_plans() {
        let p = plan(&["customer", "n", "sum"], &["+n", "+sum"]);
        assert!(accumulates(&p));
        let (sql, types) = accumulate_sql("s", &totals(), &p).unwrap();
        assert_eq!(types, [ColumnType::Text, ColumnType::Int8, ColumnType::Numeric]);
        assert!(sql.contains("SELECT c1, sum(c2)::bigint, sum(c3::numeric)::numeric FROM input GROUP BY c1"), "{sql}");
        assert!(sql.contains(r#"ON CONFLICT ("customer") DO UPDATE SET "n" = stored."n" + EXCLUDED."n""#), "{sql}");
        assert!(!accumulates(&plan(&["customer", "n"], &["n"])));

        let err = |columns: &[&str], set: &[&str]| accumulate_sql("s", &totals(), &plan(columns, set)).unwrap_err();
        assert!(err(&["customer", "n", "sum"], &["+n", "sum"]).contains("mixes"));
        assert!(err(&["customer", "n", "sum"], &["+n"]).contains("\"sum\" without +"));
        assert!(err(&["customer", "note"], &["+note"]).contains("not a number"));
        assert!(err(&["n"], &["+n"]).contains("leaves out primary key"));
        assert!(err(&["customer", "n"], &["+n", "+sum"]).contains("does not list"));
        assert!(err(&["customer", "n"], &["+customer", "+n"]).contains("primary key column"));
    }
}
