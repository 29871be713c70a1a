//! Mode `baseline`: the same events, normalized natively and written
//! straight to PostgreSQL with the statement and encoding the host uses, one
//! transaction per request on one connection per worker.

use crate::generate::{self, Format, Generator, Kind};
use crate::run::{Attempt, Failure, Worker};
use anyhow::{Context, Result, anyhow, bail};
use sluice::db::encode::ColumnArray;
use sluice_sdk::sql::{self, Upsert};
use sluice_sdk::{Request, Table, UpsertPlan};
use std::sync::Arc;
use std::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

/// Opens a connection; its I/O runs on a task of its own.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.with_context(|| format!("connecting to {}", redact(url)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("sluice-load: database connection: {e}");
        }
    });
    Ok(client)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((userinfo, host)) = rest.split_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// What a run writes: the kind of events, and the table they go to.
pub struct Target {
    pub kind: Kind,
    /// Logflare: the source's name (of the default tenant).
    source_name: String,
    /// The table, as the normalizer declares it (Logflare: the source's
    /// table, made from the template as the host makes it).
    pub table: Table,
    pub schema: String,
}

impl Target {
    pub fn new(kind: Kind, source_name: &str, schema: &str) -> Result<Target> {
        let mut target = Target {
            kind,
            source_name: source_name.to_owned(),
            table: sluice_events::tables().remove(0),
            schema: schema.to_owned(),
        };
        if kind == Kind::Logflare {
            // The source's table is named by the normalizer: ask it.
            let (_, plan) = target.normalize(Generator::new("probe", 0).logflare_body(1)).map_err(|e| anyhow!(e))?;
            let template = sluice_logflare::tables().remove(0);
            if plan.template.as_deref() != Some(template.name.as_str()) {
                bail!("the Logflare plan is not of template {}", template.name);
            }
            target.table = template.instance(&plan.table);
        }
        Ok(target)
    }

    /// The table, schema-qualified and quoted.
    pub fn qualified(&self) -> String {
        sql::qualified(&self.schema, &self.table.name)
    }

    fn request(&self, body: String) -> Request {
        let (path, query) = match self.kind {
            Kind::Events => ("/v1/events", String::new()),
            Kind::Logflare => ("/api/logs", format!("source_name={}", self.source_name)),
        };
        Request {
            tenant: "default".into(),
            method: "POST".into(),
            path: path.into(),
            query,
            headers: vec![("content-type".into(), Format::JsonArray.content_type().into())],
            body: body.into_bytes(),
            received_at: generate::now_micros(),
            settings: "{}".into(),
        }
    }

    /// Normalizes `body` natively into its one plan; every event must make
    /// a row.
    fn normalize(&self, body: String) -> Result<(u32, UpsertPlan), String> {
        let request = self.request(body);
        let outcome = match self.kind {
            Kind::Events => sluice_events::handle(&request),
            Kind::Logflare => sluice_logflare::handle(&request),
        }
        .map_err(|e| e.to_string())?;
        if let Some(rejection) = outcome.rejections.first() {
            return Err(format!("event {} rejected: {}", rejection.index, rejection.reason));
        }
        let mut plans = outcome.plans.into_iter();
        match (plans.next(), plans.next()) {
            (Some(plan), None) => Ok((outcome.events, plan)),
            _ => Err("expected exactly one plan".into()),
        }
    }

    /// The host's statement for the normalizer's plans, from one sample
    /// request.
    pub fn upsert(&self) -> Result<Arc<Upsert>> {
        let body = Generator::new("probe", 0).request_body(self.kind, 1, Format::JsonArray);
        let (_, plan) = self.normalize(body).map_err(|e| anyhow!(e))?;
        let upsert = Upsert::new(&self.schema, &self.table, &plan.columns, &plan.conflict).map_err(|e| anyhow!(e))?;
        Ok(Arc::new(upsert))
    }

    /// Creates the schema and table (as the host's migration, or its first
    /// use of a template, would) when missing.
    pub async fn prepare_table(&self, client: &Client) -> Result<()> {
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", sql::quote_ident(&self.schema)))
            .await
            .context("creating the schema")?;
        for statement in sql::create_table(&self.schema, &self.table).map_err(|e| anyhow!(e))? {
            client.batch_execute(&statement).await.with_context(|| format!("running {statement}"))?;
        }
        Ok(())
    }

    pub async fn truncate(&self, client: &Client) -> Result<()> {
        let target = self.qualified();
        client.batch_execute(&format!("TRUNCATE {target}")).await.with_context(|| format!("truncating {target}"))
    }

    pub async fn count_rows(&self, client: &Client) -> Result<i64> {
        let row = client.query_one(&format!("SELECT count(*) FROM {}", self.qualified()), &[]).await?;
        Ok(row.get(0))
    }
}

/// How the baseline writes a request's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// What the host does: a binary COPY of the rows (the upsert's
    /// `copy_sql`) and, when that meets a key already there, the upsert in a
    /// new transaction. Where a plan cannot be copied, the upsert alone.
    Host,
    /// The host's upsert statement alone: `INSERT … SELECT … FROM unnest($1,
    /// …) ON CONFLICT DO NOTHING`, returning the positions of new rows.
    Unnest,
    /// Binary COPY into a temporary staging table, then `INSERT … SELECT …
    /// ON CONFLICT DO NOTHING` from it.
    CopyUpsert,
    /// Raw binary COPY straight into the table: no conflict handling, the
    /// floor any idempotent write is measured against.
    Copy,
}

pub struct BaselineWorker {
    client: Client,
    target: Arc<Target>,
    upsert: Arc<Upsert>,
    statement: Statement,
    generator: Generator,
    events: usize,
    method: Method,
}

impl BaselineWorker {
    /// Opens the worker's connection and prepares the statement on it (the
    /// host's `prepare_cached` does the same once per pooled connection).
    pub async fn connect(
        url: &str,
        target: Arc<Target>,
        upsert: Arc<Upsert>,
        generator: Generator,
        events: usize,
        method: Method,
    ) -> Result<BaselineWorker> {
        let client = connect(url).await?;
        let statement = client.prepare(&upsert.sql).await.context("preparing the upsert")?;
        if statement.columns().len() != 1 {
            bail!("the upsert returns {} columns, not 1", statement.columns().len());
        }
        if method == Method::CopyUpsert {
            client
                .batch_execute(&format!("CREATE TEMP TABLE staging (LIKE {} INCLUDING DEFAULTS)", target.qualified()))
                .await
                .context("creating the staging table")?;
        }
        Ok(BaselineWorker { client, target, upsert, statement, generator, events, method })
    }

    /// Binary COPY of the plan's rows by `copy_sql`, encoded and sent as
    /// the host does.
    async fn copy(tx: &tokio_postgres::Transaction<'_>, copy_sql: &str, plan: &UpsertPlan) -> Result<u64> {
        let data = sluice::db::encode::copy_data(plan.rows.iter().map(|r| &r.values[..])).map_err(|e| anyhow!(e))?;
        Ok(sluice::db::writer::copy_in(tx, copy_sql, data.freeze()).await?)
    }

    /// `COPY` of the plan's columns into `target`.
    fn copy_sql(target: &str, plan: &UpsertPlan) -> String {
        let columns = plan.columns.iter().map(|c| sql::quote_ident(c)).collect::<Vec<_>>().join(", ");
        format!("COPY {target} ({columns}) FROM STDIN (FORMAT binary)")
    }

    /// One transaction writing the plan (two, when the host's COPY meets a
    /// key); returns how many rows were new.
    async fn write(&mut self, plan: &UpsertPlan) -> Result<u64> {
        let rows = plan.rows.len();
        let mut columns: Vec<ColumnArray> = self
            .upsert
            .param_types
            .iter()
            .map(|&param_type| ColumnArray { param_type, values: Vec::with_capacity(rows) })
            .collect();
        for row in &plan.rows {
            for (column, value) in columns.iter_mut().zip(&row.values) {
                column.values.push(value);
            }
        }
        let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        let tx = self.client.transaction().await?;
        let written = match self.method {
            Method::Host if let Some(copy_sql) = &self.upsert.copy_sql => match Self::copy(&tx, copy_sql, plan).await {
                Ok(written) => written,
                Err(e) if is_unique_violation(&e) => {
                    tx.rollback().await?;
                    let tx = self.client.transaction().await?;
                    let written = tx.query(&self.statement, &params).await?.len() as u64;
                    tx.commit().await?;
                    return Ok(written);
                }
                Err(e) => return Err(e),
            },
            Method::Host | Method::Unnest => tx.query(&self.statement, &params).await?.len() as u64,
            Method::Copy => Self::copy(&tx, &Self::copy_sql(&self.target.qualified(), plan), plan).await?,
            Method::CopyUpsert => {
                Self::copy(&tx, &Self::copy_sql("staging", plan), plan).await?;
                let target = self.target.qualified();
                let columns = plan.columns.iter().map(|c| sql::quote_ident(c)).collect::<Vec<_>>().join(", ");
                let key = self.upsert.conflict_key.iter().map(|c| sql::quote_ident(c)).collect::<Vec<_>>().join(", ");
                let written = tx
                    .execute(
                        &format!(
                            "INSERT INTO {target} ({columns}) SELECT {columns} FROM staging \
                             ON CONFLICT ({key}) DO NOTHING"
                        ),
                        &[],
                    )
                    .await?;
                tx.batch_execute("TRUNCATE staging").await?;
                written
            }
        };
        tx.commit().await?;
        Ok(written)
    }
}

impl Worker for BaselineWorker {
    async fn send(&mut self) -> Attempt {
        let body = self.generator.request_body(self.target.kind, self.events, Format::JsonArray);
        let bytes = body.len() as u64;
        let (events, plan) = match self.target.normalize(body) {
            Ok(normalized) => normalized,
            Err(e) => {
                return Attempt { result: Err(Failure::new("normalize", e)), latency: Default::default(), bytes };
            }
        };
        if plan.columns.len() != self.upsert.param_types.len() {
            let failure = Failure::new("normalize", "the plan's shape differs from the prepared statement's");
            return Attempt { result: Err(failure), latency: Default::default(), bytes };
        }
        let started = Instant::now();
        let result = self.write(&plan).await;
        let latency = started.elapsed();
        let result = match result {
            Ok(written) if written == u64::from(events) => Ok(written),
            Ok(written) => Err(Failure::new("not all inserted", format!("{written} of {events} rows were new"))),
            Err(e) => Err(match e.downcast_ref::<tokio_postgres::Error>() {
                Some(e) => db_failure(e),
                None => Failure::new("encode", e.to_string()),
            }),
        };
        Attempt { result, latency, bytes }
    }
}

fn is_unique_violation(e: &anyhow::Error) -> bool {
    e.downcast_ref::<tokio_postgres::Error>()
        .is_some_and(|e| e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION))
}

fn db_failure(e: &tokio_postgres::Error) -> Failure {
    match e.as_db_error() {
        Some(db) => Failure::new(format!("SQLSTATE {}", db.code().code()), db.message()),
        None => Failure::new("database", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://postgres@127.0.0.1/test"), "postgres://postgres@127.0.0.1/test");
    }

    #[test]
    fn the_statement_fits_the_plans() {
        let upsert = Target::new(Kind::Events, "bench", "loadtest").unwrap().upsert().unwrap();
        assert!(upsert.sql.contains(r#"INSERT INTO "loadtest"."events""#));
        assert_eq!(upsert.param_types.len(), 9);
    }

    #[test]
    fn logflare_rows_go_to_the_sources_table() {
        let target = Target::new(Kind::Logflare, "bench", "loadtest").unwrap();
        // The default tenant's source "bench", as the host names it:
        // UUIDv5(logflare namespace, "default/bench").
        assert_eq!(target.table.name, "log_events_10e64fb8_ea24_55d5_a02a_7e527abecb55");
        assert!(!target.table.template);
        let upsert = target.upsert().unwrap();
        assert!(upsert.sql.contains(&format!(r#"INSERT INTO "loadtest"."{}""#, target.table.name)), "{}", upsert.sql);
        assert_eq!(upsert.conflict_key, ["id"]);
        let mut generator = Generator::new("t", 0);
        let (events, plan) = target.normalize(generator.logflare_body(250)).unwrap();
        assert_eq!((events, plan.rows.len()), (250, 250));
    }
}
