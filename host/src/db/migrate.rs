//! Creating the tables components declare, and refusing changes that would
//! need a destructive migration.

use super::CommitChecked;
use anyhow::{Context, Result, bail};
use sluice_sdk::Table;
use sluice_sdk::sql::{add_column, create_table, index_name, qualified, quote_ident};
use tokio_postgres::Client;

/// Brings `tables` into being in `schema`: creates what is missing (tables,
/// added nullable or defaulted columns, indexes) and refuses what would
/// need data rewritten or dropped. Hosts starting together take turns.
/// Templates are skipped: their instances are created on first use.
pub async fn migrate(client: &mut Client, schema: &str, tables: &[Table]) -> Result<()> {
    migrate_counted(client, schema, tables, None).await
}

/// The tables Sluice may still create for a tenant on first use.
#[derive(Debug, Clone, Copy)]
pub struct Quota<'a> {
    pub tenant: &'a str,
    /// `[limits] max_tables`.
    pub max_tables: u64,
}

/// The comment Sluice puts on a table it made on first use for `tenant`:
/// how the quota counts them, from the catalog.
pub fn instance_comment(tenant: &str) -> String {
    format!("sluice: made on first use for tenant {tenant}")
}

/// Why a table was not created: the tenant is at its quota.
#[derive(Debug)]
pub struct QuotaReached(pub String);

impl std::fmt::Display for QuotaReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QuotaReached {}

/// [`migrate`]; with a `quota`, a table that must be created is created
/// only while the tenant has fewer than `max_tables` tables made on first
/// use in `schema` (counted from the catalog, under the migration lock, so
/// hosts sharing the database count the same tables), and is marked as
/// one of them. Tables that exist are migrated whatever the count.
pub async fn migrate_counted(
    client: &mut Client,
    schema: &str,
    tables: &[Table],
    quota: Option<Quota<'_>>,
) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('sluice:migrate'))", &[]).await?;
    let schema_exists = tx.query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema]).await?.is_some();
    if !schema_exists {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema)))
            .await
            .with_context(|| format!("create schema {schema:?}"))?;
    }
    for table in tables.iter().filter(|t| !t.template) {
        let name = qualified(schema, &table.name);
        let existing = tx
            .query(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull \
                 FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&name],
            )
            .await?;
        if existing.is_empty() {
            if let Some(quota) = quota {
                let made: i64 = tx
                    .query_one(
                        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                         JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass \
                         AND d.objsubid = 0 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND d.description = $2",
                        &[&schema, &instance_comment(quota.tenant)],
                    )
                    .await?
                    .get(0);
                if made as u64 >= quota.max_tables {
                    return Err(QuotaReached(format!(
                        "tenant {} has {made} tables made on first use, its limit ([limits] max_tables = {}); \
                         events that need a new table are rejected (tables that exist keep taking rows)",
                        quota.tenant, quota.max_tables
                    ))
                    .into());
                }
            }
            for statement in create_table(schema, table).map_err(anyhow::Error::msg)? {
                tx.batch_execute(&statement).await.with_context(|| format!("create table {name}"))?;
            }
            if let Some(quota) = quota {
                let comment = instance_comment(quota.tenant).replace('\'', "''");
                tx.batch_execute(&format!("COMMENT ON TABLE {name} IS '{comment}'")).await?;
            }
            tracing::info!(table = %name, "created table");
            continue;
        }
        for column in &table.columns {
            let found = existing.iter().find(|row| row.get::<_, &str>(0) == column.name);
            match found {
                None if column.nullable || column.default.is_some() => {
                    let sql = add_column(schema, &table.name, column).map_err(anyhow::Error::msg)?;
                    tx.batch_execute(&sql).await.with_context(|| format!("add column {:?} to {name}", column.name))?;
                    tracing::info!(table = %name, column = %column.name, "added column");
                }
                None => bail!(
                    "table {name} has no column {:?}, and it cannot be added: it is declared not null with no default",
                    column.name
                ),
                Some(row) => {
                    let found_type: &str = row.get(1);
                    if found_type != column.data_type.sql_name() {
                        bail!(
                            "column {:?} of table {name} is {found_type} in the database but the component declares {}; \
                             Sluice does not change column types: migrate it by hand or use another table",
                            column.name,
                            column.data_type.sql_name()
                        );
                    }
                    if !column.nullable && !row.get::<_, bool>(2) {
                        bail!(
                            "column {:?} of table {name} allows nulls in the database but the component declares it not null",
                            column.name
                        );
                    }
                }
            }
        }
        let key: Vec<String> = tx
            .query(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&name],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if key != table.primary_key {
            bail!(
                "table {name} has primary key ({}) in the database but the component declares ({}); \
                 Sluice does not change primary keys",
                key.join(", "),
                table.primary_key.join(", ")
            );
        }
        let statements = create_table(schema, table).map_err(anyhow::Error::msg)?;
        for (index, statement) in table.indexes.iter().zip(&statements[1..]) {
            let index_name = qualified(schema, &index_name(&table.name, &index.name));
            let exists = tx.query_one("SELECT to_regclass($1) IS NOT NULL", &[&index_name]).await?.get::<_, bool>(0);
            if !exists {
                tx.batch_execute(statement).await.with_context(|| format!("create index {index_name}"))?;
                tracing::info!(index = %index_name, "created index");
            }
        }
    }
    tx.commit_checked().await?;
    Ok(())
}
