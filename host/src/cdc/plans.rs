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

use std::task::Poll;

use anyhow::{Result, anyhow, bail};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use sluice_sdk::sql::{Upsert, param_type, qualified, quote_ident};
use sluice_sdk::{ColumnType, Conflict, Table, UpsertPlan};

use crate::db::encode::ColumnArray;

/// Whether `plan` accumulates (some `update` column starts with `+`).
pub fn accumulates(plan: &UpsertPlan) -> bool {
    matches!(&plan.conflict, Conflict::Update(set) if set.iter().any(|c| c.starts_with('+')))
}

/// The statement that writes `plan` into `table`, with the declared types
/// of the plan's columns: an upsert, an accumulation, or emptying the table.
/// `None`: there is nothing to write.
pub fn statement(schema: &str, table: &Table, plan: &UpsertPlan) -> Result<Option<(String, Vec<ColumnType>)>> {
    if plan.columns.is_empty() {
        if !plan.rows.is_empty() {
            bail!("a plan for table {:?} lists no columns but has rows", plan.table);
        }
        return Ok(Some((format!("DELETE FROM {}", qualified(schema, &table.name)), Vec::new())));
    }
    if plan.rows.is_empty() {
        return Ok(None);
    }
    if accumulates(plan) {
        return accumulate_sql(schema, table, plan).map(Some).map_err(|e| anyhow!(e));
    }
    if plan.template.is_some() {
        bail!("the handler's plan for {:?} names a template: change handlers cannot use templates yet", plan.table);
    }
    let upsert = Upsert::new(schema, table, &plan.columns, &plan.conflict).map_err(|e| anyhow!(e))?;
    let types = plan
        .columns
        .iter()
        .map(|name| table.column(name).map(|c| c.data_type))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("a plan for table {:?} names a column it does not have", plan.table))?;
    Ok(Some((upsert.write_sql, types)))
}

/// What the values of `plan` take, roughly as sent: a group of plans
/// closes by it (large rows make long statements).
pub fn value_bytes(plan: &UpsertPlan) -> usize {
    plan.rows.iter().flat_map(|row| &row.values).map(sluice_sdk::Value::wire_size).sum()
}

/// Rows a merged statement may carry.
const MERGED_ROWS: usize = 10_000;

/// The statements of one destination transaction, each sent without
/// waiting for the answers of those before it: PostgreSQL runs them in the
/// order sent, and the answers are read in that order, so the first failure
/// is the one reported.
///
/// Consecutive plans for the same table, columns and conflict are merged
/// into one statement where that writes the same as one statement each (a
/// backlog of small transactions is then a few large statements): `do
/// nothing` (the first row of a key wins either way), accumulations (sums
/// commute), and `update` of every non-key column (the last row wins
/// either way). Others, and emptying a table, go alone, in order.
pub struct Pipeline<'t> {
    tx: &'t deadpool_postgres::Transaction<'t>,
    schema: &'t str,
    merging: Option<Merging<'t>>,
    in_flight: FuturesOrdered<BoxFuture<'t, Result<()>>>,
}

/// A plan waiting for more rows to merge, with what its parts hold.
struct Merging<'t> {
    table: &'t Table,
    plan: UpsertPlan,
    holds: Vec<Box<dyn Send + 't>>,
}

impl<'t> Pipeline<'t> {
    pub fn new(tx: &'t deadpool_postgres::Transaction<'t>, schema: &'t str) -> Pipeline<'t> {
        Pipeline { tx, schema, merging: None, in_flight: FuturesOrdered::new() }
    }

    /// Writes `plan` into `table`, after everything pushed before it;
    /// `hold` is kept until it is answered.
    pub async fn push(&mut self, table: &'t Table, plan: UpsertPlan, hold: impl Send + 't) -> Result<()> {
        if let Some(Merging { plan: merged, holds, .. }) = &mut self.merging
            && merged.table == plan.table
            && merged.columns == plan.columns
            && merged.conflict == plan.conflict
            && merged.rows.len() + plan.rows.len() <= MERGED_ROWS
        {
            merged.rows.extend(plan.rows);
            holds.push(Box::new(hold));
            return Ok(());
        }
        self.flush().await?;
        if mergeable(table, &plan) {
            self.merging = Some(Merging { table, plan, holds: vec![Box::new(hold)] });
            return Ok(());
        }
        self.send(table, plan, hold).await
    }

    /// Sends the plan being merged, if any.
    pub async fn flush(&mut self) -> Result<()> {
        match self.merging.take() {
            Some(Merging { table, plan, holds }) => self.send(table, plan, holds).await,
            None => Ok(()),
        }
    }

    /// Sends the statement writing `plan` (prepared once per connection).
    async fn send(&mut self, table: &'t Table, plan: UpsertPlan, hold: impl Send + 't) -> Result<()> {
        let Some((sql, types)) = statement(self.schema, table, &plan)? else { return Ok(()) };
        let statement = self.tx.prepare_cached(&sql).await?;
        let tx = self.tx;
        self.in_flight.push_back(Box::pin(async move {
            let _hold = hold;
            let columns = column_arrays(&plan, &types)?;
            let write = |e| anyhow!("write to table {:?}: {e}", plan.table);
            tx.execute_raw(&statement, columns).await.map_err(write)?;
            Ok(())
        }));
        // The first poll sends it; answers already in are read.
        while let Poll::Ready(Some(done)) = futures_util::poll!(self.in_flight.next()) {
            done?;
        }
        Ok(())
    }

    /// The next answer, in order; `None` when none is awaited (a plan
    /// being merged is not sent: [`flush`](Self::flush) first).
    pub async fn next(&mut self) -> Option<Result<()>> {
        self.in_flight.next().await
    }

    /// Sends what is being merged and reads every answer still awaited.
    pub async fn finish(&mut self) -> Result<()> {
        self.flush().await?;
        while let Some(done) = self.in_flight.next().await {
            done?;
        }
        Ok(())
    }
}

/// Whether rows of `plan` written together with those of a plan like it
/// before it store the same as two statements one after the other.
fn mergeable(table: &Table, plan: &UpsertPlan) -> bool {
    if plan.columns.is_empty() || plan.template.is_some() {
        return false;
    }
    match &plan.conflict {
        Conflict::DoNothing => true,
        Conflict::Update(_) if accumulates(plan) => true,
        Conflict::Update(set) => plan.columns.iter().all(|c| set.contains(c) || table.primary_key.contains(c)),
    }
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
    use sluice_sdk::{Column, Value};

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
    fn plans_merge_only_where_one_statement_writes_the_same_as_two() {
        let t = totals();
        let mut keep_first = plan(&["customer", "note"], &[]);
        keep_first.conflict = Conflict::DoNothing;
        assert!(mergeable(&t, &keep_first), "do nothing: the first row of a key wins either way");
        assert!(mergeable(&t, &plan(&["customer", "n", "sum"], &["+n", "+sum"])), "sums commute");
        assert!(mergeable(&t, &plan(&["customer", "n", "note"], &["n", "note"])), "the last row wins either way");
        // Two statements: the first row inserts `note`, the second only
        // updates `n`; one statement would insert the second row's `note`.
        assert!(!mergeable(&t, &plan(&["customer", "n", "note"], &["n"])));
        assert!(!mergeable(&t, &plan(&[], &[])), "emptying a table goes alone");
        let mut templated = keep_first.clone();
        templated.template = Some("t".into());
        assert!(!mergeable(&t, &templated));
    }

    #[test]
    fn statements_for_each_kind_of_plan() {
        let t = totals();
        let (sql, types) = statement("s", &t, &plan(&[], &[])).unwrap().unwrap();
        assert_eq!((sql.as_str(), types.len()), (r#"DELETE FROM "s"."totals""#, 0));
        assert!(statement("s", &t, &plan(&["customer", "n"], &["n"])).unwrap().is_none(), "no rows: nothing to do");
        let mut upsert = plan(&["customer", "n", "sum"], &["n"]);
        let values = vec![Value::Text("a".into()), Value::Int8(1), Value::Numeric("2.5".into())];
        upsert.rows.push(sluice_sdk::Row { event: 0, values });
        let (sql, types) = statement("s", &t, &upsert).unwrap().unwrap();
        assert_eq!(types, [ColumnType::Text, ColumnType::Int8, ColumnType::Numeric]);
        assert!(sql.ends_with(r#"ON CONFLICT ("customer") DO UPDATE SET "n" = EXCLUDED."n""#), "no positions: {sql}");
        upsert.columns.push("missing".into());
        upsert.rows[0].values.push(Value::Null);
        assert!(statement("s", &t, &upsert).unwrap_err().to_string().contains("missing"));
    }

    #[test]
    fn value_bytes_counts_what_the_values_hold() {
        use sluice_sdk::Row;
        let mut p = plan(&["customer", "n", "sum"], &["+n", "+sum"]);
        assert_eq!(value_bytes(&p), 0);
        p.rows = vec![
            Row { event: 0, values: vec![Value::Text("abc".into()), Value::Int8(1), Value::Numeric("2.50".into())] },
            Row { event: 1, values: vec![Value::Null, Value::Uuid((1, 2)), Value::Bytea(vec![0; 5])] },
        ];
        assert_eq!(value_bytes(&p), 3 + 8 + 4 + 16 + 5);
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
