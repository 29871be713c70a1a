//! Write modes per table, as CloudQuery names them. A tenant may override
//! how its component's plans treat a row whose key is already stored:
//!
//! - `append`: keep the stored row (`ON CONFLICT DO NOTHING`);
//! - `overwrite`: replace its other columns (`ON CONFLICT DO UPDATE`);
//! - `overwrite-delete-stale`: overwrite, and stamp each row with the sync
//!   that wrote it (`_sluice_source`, `_sluice_synced_at`). A request that
//!   ends a sync deletes that source's rows the sync did not write.
//!
//! A request says which sync it belongs to with headers:
//! `x-sluice-sync-source` (default `default`), `x-sluice-sync-time` (RFC
//! 3339, the same on every request of one sync; default: when the request
//! arrived) and `x-sluice-sync-final: true` on the last one.

use serde::{Deserialize, Serialize};
use sluice_sdk::sql::{conflict_key, qualified, quote_ident};
use sluice_sdk::{Column, ColumnType, Conflict, Request, Table, UpsertPlan, Value};
use std::collections::BTreeMap;

pub const SOURCE_COLUMN: &str = "_sluice_source";
pub const SYNCED_AT_COLUMN: &str = "_sluice_synced_at";

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMode {
    Append,
    Overwrite,
    OverwriteDeleteStale,
}

/// A tenant's write modes: by table name, or by name prefix (`log_events_*`)
/// for tables made from templates. An exact name wins over a prefix, a
/// longer prefix over a shorter one.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(transparent)]
pub struct WriteModes(pub BTreeMap<String, WriteMode>);

impl WriteModes {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn of(&self, table: &str) -> Option<WriteMode> {
        if let Some(mode) = self.0.get(table) {
            return Some(*mode);
        }
        self.0
            .iter()
            .filter_map(|(pattern, mode)| Some((pattern.strip_suffix('*')?, mode)))
            .filter(|(prefix, _)| table.starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, mode)| *mode)
    }

    /// `table` as this tenant stores it: with the sync columns when its
    /// mode deletes stale rows.
    pub fn shape(&self, table: &Table) -> Option<Table> {
        (self.of(&table.name) == Some(WriteMode::OverwriteDeleteStale)).then(|| {
            let mut shaped = table.clone();
            shaped.columns.push(Column::new(SOURCE_COLUMN, ColumnType::Text));
            shaped.columns.push(Column::new(SYNCED_AT_COLUMN, ColumnType::Timestamptz));
            shaped
        })
    }

    /// The component's declared tables as this tenant migrates them.
    pub fn tables(&self, declared: &[Table]) -> Vec<Table> {
        declared.iter().map(|t| self.shape(t).unwrap_or_else(|| t.clone())).collect()
    }

    /// Applies the table's mode to `plan` (whose table is `table`, already
    /// shaped): its conflict action, and for delete-stale the sync columns.
    pub fn apply(&self, table: &Table, plan: &mut UpsertPlan, sync: &SyncRun) -> Result<(), String> {
        let Some(mode) = self.of(&plan.table) else { return Ok(()) };
        if mode == WriteMode::OverwriteDeleteStale && !plan.columns.iter().any(|c| c == SOURCE_COLUMN) {
            plan.columns.push(SOURCE_COLUMN.into());
            plan.columns.push(SYNCED_AT_COLUMN.into());
            for row in &mut plan.rows {
                row.values.push(Value::Text(sync.source.clone()));
                row.values.push(Value::Timestamptz(sync.time));
            }
        }
        plan.conflict = match mode {
            WriteMode::Append => Conflict::DoNothing,
            WriteMode::Overwrite | WriteMode::OverwriteDeleteStale => {
                let key = conflict_key(table, &plan.columns)?;
                Conflict::Update(plan.columns.iter().filter(|c| !key.contains(c)).cloned().collect())
            }
        };
        Ok(())
    }
}

/// The sync a request belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncRun {
    pub source: String,
    /// µs since the Unix epoch.
    pub time: i64,
    /// The request ends the sync: stale rows are deleted after it commits.
    pub last: bool,
}

impl SyncRun {
    pub fn of(request: &Request) -> Result<SyncRun, String> {
        let source = request.header("x-sluice-sync-source").unwrap_or("default").to_owned();
        let time = match request.header("x-sluice-sync-time") {
            None => request.received_at,
            Some(text) => {
                let at = time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
                    .map_err(|_| format!("x-sluice-sync-time must be an RFC 3339 time, not {text:?}"))?;
                (at.unix_timestamp_nanos() / 1000) as i64
            }
        };
        let last = match request.header("x-sluice-sync-final").map(str::trim) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(format!("x-sluice-sync-final must be true or false, not {other:?}")),
        };
        Ok(SyncRun { source, time, last })
    }
}

/// Deletes the rows of `sync.source` that an earlier sync wrote.
pub fn delete_stale_sql(schema: &str, table: &str) -> String {
    format!(
        "DELETE FROM {} WHERE {} = $1 AND {} < $2",
        qualified(schema, table),
        quote_ident(SOURCE_COLUMN),
        quote_ident(SYNCED_AT_COLUMN)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::Row;

    fn table() -> Table {
        Table {
            name: "items".into(),
            columns: vec![
                Column::new("id", ColumnType::Text).not_null(),
                Column::new("name", ColumnType::Text),
                Column::new("price", ColumnType::Int8),
            ],
            primary_key: vec!["id".into()],
            indexes: vec![],
            template: false,
        }
    }

    fn plan() -> UpsertPlan {
        UpsertPlan {
            table: "items".into(),
            template: None,
            columns: vec!["id".into(), "name".into(), "price".into()],
            conflict: Conflict::DoNothing,
            rows: vec![Row { event: 0, values: vec![Value::Text("a".into()), Value::Null, Value::Int8(1)] }],
        }
    }

    fn modes(pairs: &[(&str, WriteMode)]) -> WriteModes {
        WriteModes(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    #[test]
    fn exact_names_win_over_prefixes() {
        let modes = modes(&[
            ("log_*", WriteMode::Append),
            ("log_events_*", WriteMode::Overwrite),
            ("log_x", WriteMode::OverwriteDeleteStale),
        ]);
        assert_eq!(modes.of("log_events_1"), Some(WriteMode::Overwrite));
        assert_eq!(modes.of("log_other"), Some(WriteMode::Append));
        assert_eq!(modes.of("log_x"), Some(WriteMode::OverwriteDeleteStale));
        assert_eq!(modes.of("events"), None);
    }

    #[test]
    fn overwrite_updates_every_non_key_column() {
        let mut p = plan();
        let sync = SyncRun { source: "s".into(), time: 5, last: false };
        modes(&[("items", WriteMode::Overwrite)]).apply(&table(), &mut p, &sync).unwrap();
        assert_eq!(p.conflict, Conflict::Update(vec!["name".into(), "price".into()]));
        assert_eq!(p.columns.len(), 3);
    }

    #[test]
    fn delete_stale_stamps_rows_with_their_sync() {
        let modes = modes(&[("items", WriteMode::OverwriteDeleteStale)]);
        let shaped = modes.shape(&table()).unwrap();
        assert_eq!(shaped.columns.len(), 5);
        let mut p = plan();
        let sync = SyncRun { source: "crm".into(), time: 5, last: true };
        modes.apply(&shaped, &mut p, &sync).unwrap();
        assert_eq!(p.columns[3..], [SOURCE_COLUMN.to_string(), SYNCED_AT_COLUMN.to_string()]);
        assert_eq!(p.rows[0].values[3..], [Value::Text("crm".into()), Value::Timestamptz(5)]);
        assert!(matches!(&p.conflict, Conflict::Update(set) if set.contains(&SYNCED_AT_COLUMN.to_string())));
    }
}
