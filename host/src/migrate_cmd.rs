//! `sluice migrate`: the DDL `serve` would run, applied once with an admin
//! connection, so that `serve` can run as a writer role that cannot create
//! anything (see docs/operations.md, "Least privilege").
//!
//! It creates the schema and tables of the service's component and of every
//! tenant (configured or in the registry), each schema's dead-letter
//! table, and the query API's reader role of every tenant that may query.
//! `serve` then finds them in place and runs no DDL.

use crate::config::DatabaseConfig;
use crate::config_file::Config;
use crate::db;
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;

/// `sluice migrate`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  sluice migrate --config sluice.toml --database-url postgres://admin@db/app
  SLUICE_DATABASE_URL=postgres://admin@db/app sluice migrate --config sluice.toml

Then run `sluice serve` with a writer role (see docs/operations.md, Least privilege).")]
pub struct MigrateArgs {
    /// The configuration file (TOML): the schema, the tenants and their components.
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// The admin connection (URI or key=value DSN) that may create schemas and tables
    /// [default: SLUICE_DATABASE_URL, else [database] of the config file].
    #[arg(long)]
    pub database_url: Option<String>,
}

/// Runs `sluice migrate`.
pub async fn run(args: MigrateArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    migrate(config, args.database_url).await
}

/// Applies the DDL. The admin connection is `database_url`, else
/// `SLUICE_DATABASE_URL`, else the config file's `[database]`; schema and
/// pool settings come from the config file.
pub async fn migrate(config: Config, database_url: Option<String>) -> Result<()> {
    let url = database_url.or_else(|| std::env::var(crate::server::DATABASE_URL_VAR).ok());
    let database = match url {
        Some(url) => DatabaseConfig {
            url: Some(url),
            host: None,
            port: None,
            user: None,
            password: None,
            dbname: None,
            ..config.database.clone()
        },
        None if config.database.is_configured() || std::env::var_os("PGHOST").is_some() => config.database.clone(),
        None => bail!(
            "no database to migrate: give --database-url (an admin connection), set {}, or configure [database]",
            crate::server::DATABASE_URL_VAR
        ),
    };
    let settings = database.pg_config()?;
    // Fail early, and clearly, when the admin connection does not work.
    db::connect(&settings).await.context("connect with the admin credentials")?;

    let (registry, normalizer) = crate::server::registry(&config, &database).await?;
    let result = async {
        let service = registry.service_destination()?;
        registry
            .migrate(&service, &database.schema, &normalizer, &Default::default())
            .await
            .with_context(|| format!("migrate schema {:?}", database.schema))?;
        let mut schemas = BTreeSet::from([(String::new(), database.schema.clone())]);
        // Each tenant is built, so its tables are migrated, as serve does.
        registry.start(config.tenants.clone()).await?;
        let client = service.pool.get().await?;
        create_dead_letters(&client, &database.schema).await?;
        for tenant in registry.snapshot().tenants.values() {
            if schemas.insert((tenant.id().to_owned(), tenant.schema.clone())) {
                let client = tenant.destination.pool.get().await?;
                create_dead_letters(&client, &tenant.schema)
                    .await
                    .with_context(|| format!("tenant {}", tenant.id()))?;
            }
        }
        // The query API's reader roles, made here by the admin connection
        // so a `serve` whose login may not create roles can use them.
        if config.query.reader_user.is_none() {
            let snapshot = registry.snapshot();
            let mut readers: Vec<(String, String, DatabaseConfig)> = snapshot
                .tenants
                .values()
                .filter(|tenant| tenant.spec.apis.contains(&crate::tenants::spec::Api::Query))
                .map(|tenant| (tenant.id().to_owned(), tenant.schema.clone(), registry.database_of(&tenant.spec)))
                .collect();
            if readers.is_empty() && snapshot.tenants.is_empty() {
                readers.push(("default".into(), database.schema.clone(), database.clone()));
            }
            for (id, schema, tenant_database) in readers {
                // Not fatal: an admin that may not create roles still
                // migrates, and the query API says why it is off.
                match crate::query::roles::make(&tenant_database.pg_config()?, &id, &schema, &config.query).await {
                    Ok(role) => println!("query role {role} of tenant {id}"),
                    Err(e) => {
                        tracing::warn!(tenant = %id, "no query role: {}", e.0);
                        eprintln!("tenant {id}: no query role: {}", e.0);
                    }
                }
            }
        }
        let tenants = registry.snapshot().tenants.len();
        tracing::info!(schema = %database.schema, tenants, "migrated");
        println!("migrated schema {} and {tenants} tenant(s)", database.schema);
        anyhow::Ok(())
    }
    .await;
    registry.close().await;
    result
}

async fn create_dead_letters(client: &tokio_postgres::Client, schema: &str) -> Result<()> {
    client
        .batch_execute(&db::dead_letters::create_sql(schema))
        .await
        .with_context(|| format!("create {schema}.{}", db::dead_letters::TABLE))
}
