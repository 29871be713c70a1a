//! The destination's record of completed bootstraps, which the runner
//! creates with its checkpoints and the bootstrap and the CLI read.

use anyhow::{Result, anyhow};
use sluice_replication::Lsn;
use sluice_sdk::sql::qualified;

/// Completed bootstraps, one row per source, in the destination schema.
pub const BOOTSTRAPS: &str = "sluice_cdc_bootstraps";

/// A completed bootstrap, as recorded in the destination.
#[derive(Debug, Clone)]
pub struct Completed {
    pub slot: String,
    pub consistent_point: Lsn,
    pub tables: i32,
    pub rows: i64,
    pub completed_at: String,
}

/// Creates the table of completed bootstraps.
pub async fn create_table(client: &tokio_postgres::Client, schema: &str) -> Result<()> {
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (source text PRIMARY KEY, slot text NOT NULL, \
             consistent_point pg_lsn NOT NULL, tables int NOT NULL, rows bigint NOT NULL, \
             completed_at timestamptz NOT NULL DEFAULT now())",
            qualified(schema, BOOTSTRAPS)
        ))
        .await?;
    Ok(())
}

/// The source's completed bootstrap, if any (none either when the table is missing).
pub async fn completed(client: &tokio_postgres::Client, schema: &str, source: &str) -> Result<Option<Completed>> {
    let exists: bool =
        client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified(schema, BOOTSTRAPS)]).await?.get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt(
            &format!(
                "SELECT slot, consistent_point::text, tables, rows, \
                 to_char(completed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                 FROM {} WHERE source = $1",
                qualified(schema, BOOTSTRAPS)
            ),
            &[&source],
        )
        .await?;
    row.map(|row| {
        Ok(Completed {
            slot: row.get(0),
            consistent_point: row.get::<_, String>(1).parse().map_err(|e| anyhow!("{e}"))?,
            tables: row.get(2),
            rows: row.get(3),
            completed_at: row.get(4),
        })
    })
    .transpose()
}
