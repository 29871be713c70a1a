//! The logins tenants' queries run as. PostgreSQL's privileges are the
//! query API's boundary: a tenant's queries log in as a role that can read
//! that tenant's schema and nothing else, so SQL that slips past the checks
//! still reads nothing it should not.
//!
//! By default Sluice makes that role itself (its login needs `CREATEROLE`
//! or to be a superuser): one per database and tenant, named
//! `sluice_q_<tenant>_<hash>` (role names are the cluster's, not the
//! database's), with a random password kept in `_sluice.query_roles`, a
//! table only Sluice's own login (and superusers) can read, so every
//! Sluice host sharing the database logs in with the same one. Or the
//! operator names a reader login of their own (`[query] reader_user`).
//! Either way, before a login is used Sluice checks it holds no privilege
//! beyond reading.

use super::config::QueryConfig;
use crate::db::{self, PgSettings};
use crate::hex::hex;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use sluice_sdk::sql::{quote_ident, quote_literal};

/// Sluice's own schema in a tenant's database, for what it must keep there.
pub use crate::db::INTERNAL_SCHEMA;

/// Predefined roles whose membership lets a login reach past its tables:
/// a reader must have none of them.
const PRIVILEGED_ROLES: &[&str] = &[
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_read_all_data",
    "pg_write_all_data",
    "pg_read_all_settings",
    "pg_read_all_stats",
    "pg_stat_scan_tables",
    "pg_monitor",
    "pg_signal_backend",
    "pg_checkpoint",
    "pg_create_subscription",
    "pg_use_reserved_connections",
];

/// Why a tenant's queries cannot run: said to the client (503) and logged.
/// Never holds a secret.
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

/// The role Sluice makes for `tenant` in database `dbname`: unique in the
/// cluster per database and tenant, at most 63 bytes, readable.
pub fn role_name(dbname: &str, tenant: &str) -> String {
    let digest = Sha256::digest(format!("{dbname}\0{tenant}").as_bytes());
    let readable: String =
        tenant.chars().take(32).map(|c| if c == '-' { '_' } else { c.to_ascii_lowercase() }).collect();
    format!("sluice_q_{readable}_{}", &hex(&digest)[..16])
}

/// The settings a tenant's query connections log in with: the service's
/// database (host, TLS, database name) as `user` with `password`.
fn as_login(service: &PgSettings, user: &str, password: &str) -> PgSettings {
    let mut settings = PgSettings::new(service.pg.clone(), service.tls.clone(), None);
    settings.pg.user(user).password(password);
    // Tell query sessions from ingest ones in pg_stat_activity, unless the
    // operator named them.
    if matches!(settings.pg.get_application_name(), None | Some("sluice")) {
        settings.pg.application_name("sluice query");
    }
    settings
}

/// The login `tenant`'s queries run as: made (or brought up to date) by
/// Sluice, or the operator's `[query] reader_user`; checked either way.
pub async fn login(
    service: &PgSettings,
    tenant: &str,
    schema: &str,
    config: &QueryConfig,
) -> Result<PgSettings, Unavailable> {
    let settings = match &config.reader_user {
        Some(user) => {
            let user = user.replace("{tenant}", tenant);
            let password = config.reader_password.as_deref().unwrap_or("").replace("{tenant}", tenant);
            if service.get_user() == Some(user.as_str()) {
                return Err(Unavailable(format!(
                    "[query] reader_user {user:?} is the login Sluice writes with; queries need a login of their own \
                     that can only read tenant {tenant}'s schema"
                )));
            }
            as_login(service, &user, &password)
        }
        None => {
            let (role, password) = make_role(service, tenant, schema, config).await?;
            as_login(service, &role, &password)
        }
    };
    check_login(&settings, tenant).await?;
    Ok(settings)
}

/// Refuses a login that could do more than read: a superuser, one that
/// creates roles or databases, replicates, bypasses row security, or is a
/// member of a predefined role that reads files, settings or all data
/// (a member at all, even without inheriting: it could `SET ROLE`).
async fn check_login(settings: &PgSettings, tenant: &str) -> Result<(), Unavailable> {
    let user = settings.get_user().unwrap_or_default().to_owned();
    let client = db::connect(settings).await.map_err(|e| {
        Unavailable(format!("the query login {user:?} of tenant {tenant} cannot connect to the database: {e:#}"))
    })?;
    let query = "SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls, \
                        ARRAY(SELECT p.rolname::text FROM pg_roles p WHERE p.rolname = ANY($1) \
                              AND pg_has_role(r.oid, p.oid, 'MEMBER')) \
                 FROM pg_roles r WHERE r.rolname = current_user";
    let roles: Vec<&str> = PRIVILEGED_ROLES.to_vec();
    let row = client
        .query_one(query, &[&roles])
        .await
        .map_err(|e| Unavailable(format!("the query login {user:?} of tenant {tenant} could not be checked: {e}")))?;
    let mut powers: Vec<String> = ["SUPERUSER", "CREATEROLE", "CREATEDB", "REPLICATION", "BYPASSRLS"]
        .iter()
        .enumerate()
        .filter(|(i, _)| row.get::<_, bool>(*i))
        .map(|(_, name)| name.to_string())
        .collect();
    powers.extend(row.get::<_, Vec<String>>(5).into_iter().map(|role| format!("member of {role}")));
    if !powers.is_empty() {
        return Err(Unavailable(format!(
            "the query login {user:?} of tenant {tenant} may do more than read ({}); queries are off for this tenant \
             until its login can only read its schema",
            powers.join(", ")
        )));
    }
    Ok(())
}

/// Makes (or brings up to date) the reader role of `tenant` as `sluice
/// migrate` does, with an admin's connection, and returns its name.
pub async fn make(
    service: &PgSettings,
    tenant: &str,
    schema: &str,
    config: &QueryConfig,
) -> Result<String, Unavailable> {
    make_role(service, tenant, schema, config).await.map(|(role, _)| role)
}

/// Drops the role Sluice made for `tenant` (its grants with it) and its
/// kept password, once the tenant is deleted: a deleted tenant's login must
/// not outlive it. Nothing to do for a role never made; a login that may
/// not drop roles leaves it, and says so.
pub async fn drop_role(service: &PgSettings, tenant: &str) -> Result<bool> {
    let mut client = db::connect(service).await?;
    let dbname: String = client.query_one("SELECT current_database()::text", &[]).await?.get(0);
    let role = role_name(&dbname, tenant);
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('sluice:query-roles'))", &[]).await?;
    if tx.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role]).await?.is_none() {
        return Ok(false);
    }
    let quoted = quote_ident(&role);
    // DROP OWNED takes back its grants (the role owns nothing); its
    // sessions, if any, end with their next statement's privilege check.
    tx.batch_execute(&format!("DROP OWNED BY {quoted}; DROP ROLE {quoted}"))
        .await
        .with_context(|| format!("drop role {role}"))?;
    let internal = quote_ident(INTERNAL_SCHEMA);
    let kept = format!(
        "SELECT 1 FROM pg_tables WHERE schemaname = {} AND tablename = 'query_roles'",
        quote_literal(INTERNAL_SCHEMA)
    );
    if tx.query_opt(&kept, &[]).await?.is_some() {
        tx.execute(&format!("DELETE FROM {internal}.query_roles WHERE role = $1"), &[&role]).await?;
    }
    db::CommitChecked::commit_checked(tx).await?;
    Ok(true)
}

/// Makes (or brings up to date) the role of `tenant`, and returns its name
/// and password; where Sluice's login may not make roles, one made before.
async fn make_role(
    service: &PgSettings,
    tenant: &str,
    schema: &str,
    config: &QueryConfig,
) -> Result<(String, String), Unavailable> {
    if schema == INTERNAL_SCHEMA {
        return Err(Unavailable(format!(
            "tenant {tenant}'s schema is {INTERNAL_SCHEMA}, Sluice's own; queries are off"
        )));
    }
    let mut client = db::connect(service)
        .await
        .map_err(|e| Unavailable(format!("the database of tenant {tenant} is unreachable: {e:#}")))?;
    let row = client
        .query_one(
            "SELECT current_database()::text, current_user::text, rolsuper OR rolcreaterole FROM pg_roles \
             WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| Unavailable(format!("the database of tenant {tenant} could not be asked: {e}")))?;
    let (dbname, user, may): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
    let role = role_name(&dbname, tenant);
    if !may {
        // A role made before by a login that could (`sluice migrate` as an
        // admin) is used as it is, if this login may read its password.
        if let Some(password) = made_before(&client, &role).await {
            return Ok((role, password));
        }
        return Err(Unavailable(format!(
            "queries are off for tenant {tenant}: they run as a login that can only read the tenant's schema, \
             which Sluice makes itself, but its database user {user:?} may not create roles (it has neither \
             CREATEROLE nor SUPERUSER). The operator can grant it CREATEROLE, run `sluice migrate` as an admin \
             (it makes the roles) and grant {user:?} SELECT on {INTERNAL_SCHEMA}.query_roles, or create a reader \
             login and name it in [query] reader_user and reader_password (see docs/query.md)"
        )));
    }
    match provision(&mut client, &role, &user, schema, config).await {
        Ok(password) => Ok((role, password)),
        Err(e) => {
            // Made by another login (with PostgreSQL 16, only the role's
            // maker may alter it): used as it is, if it can be.
            if let Some(password) = made_before(&client, &role).await {
                tracing::warn!(%role, "query role kept as it is: bringing it up to date failed: {e:#}");
                return Ok((role, password));
            }
            Err(Unavailable(format!(
                "queries are off for tenant {tenant}: making its reader role {role} failed: {e:#}"
            )))
        }
    }
}

/// The password of `role` as kept by whoever made it, if the role exists
/// and this login may read it.
async fn made_before(client: &tokio_postgres::Client, role: &str) -> Option<String> {
    let sql = format!(
        "SELECT q.password FROM {}.query_roles q JOIN pg_roles r ON r.rolname = q.role WHERE q.role = $1",
        quote_ident(INTERNAL_SCHEMA)
    );
    client.query_opt(&sql, &[&role]).await.ok().flatten().map(|row| row.get(0))
}

/// In one transaction (hosts take turns): the role, its password, its
/// settings and its grants, each made or set again.
async fn provision(
    client: &mut tokio_postgres::Client,
    role: &str,
    service_user: &str,
    schema: &str,
    config: &QueryConfig,
) -> Result<String> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('sluice:query-roles'))", &[]).await?;
    let internal = quote_ident(INTERNAL_SCHEMA);
    let exists = |name: &str| format!("SELECT 1 FROM pg_namespace WHERE nspname = {}", quote_literal(name));
    if tx.query_opt(&exists(INTERNAL_SCHEMA), &[]).await?.is_none() {
        // Created by Sluice's login, so only it (and superusers) may use it:
        // PUBLIC has no USAGE on a new schema.
        tx.batch_execute(&format!("CREATE SCHEMA {internal}")).await.context("create schema _sluice")?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {internal}.query_roles (role text PRIMARY KEY, password text NOT NULL, \
         created_at timestamptz NOT NULL DEFAULT now()); \
         REVOKE ALL ON SCHEMA {internal} FROM PUBLIC; REVOKE ALL ON {internal}.query_roles FROM PUBLIC"
    ))
    .await
    .context("create table _sluice.query_roles")?;
    let stored =
        tx.query_opt(&format!("SELECT password FROM {internal}.query_roles WHERE role = $1"), &[&role]).await?;
    let password = match stored {
        Some(row) => row.get::<_, String>(0),
        None => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("the OS random source: {e}"))?;
            let password = hex(&bytes);
            tx.execute(
                &format!("INSERT INTO {internal}.query_roles (role, password) VALUES ($1, $2)"),
                &[&role, &password],
            )
            .await?;
            password
        }
    };
    // The password goes to PostgreSQL as a SCRAM verifier, so the text of
    // the statement (in a log, say) never holds it.
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let quoted = quote_ident(role);
    let attributes = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT";
    let found = tx.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role]).await?.is_some();
    let verb = if found { "ALTER" } else { "CREATE" };
    tx.batch_execute(&format!("{verb} ROLE {quoted} WITH {attributes} PASSWORD {}", quote_literal(&verifier)))
        .await
        .with_context(|| format!("{} role {role}", verb.to_lowercase()))?;
    // Member of nothing: whatever someone granted it is taken back.
    let memberships: Vec<String> = tx
        .query(
            "SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
             JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = $1",
            &[&role],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for group in memberships {
        tx.batch_execute(&format!("REVOKE {} FROM {quoted}", quote_ident(&group)))
            .await
            .with_context(|| format!("role {role} is a member of {group}, and revoking that"))?;
    }
    tx.batch_execute(&format!(
        "ALTER ROLE {quoted} SET default_transaction_read_only = on; \
         ALTER ROLE {quoted} SET statement_timeout = {}; \
         ALTER ROLE {quoted} SET idle_in_transaction_session_timeout = {}; \
         ALTER ROLE {quoted} SET work_mem = {}",
        quote_literal(&format!("{}ms", config.statement_timeout_ms)),
        quote_literal(&format!("{}ms", config.statement_timeout_ms.saturating_mul(2).max(1000))),
        quote_literal(&format!("{}kB", config.work_mem_kb)),
    ))
    .await
    .context("set the role's settings")?;
    // Only a superuser may set temp_file_limit for a role; elsewhere the
    // server's own limit holds.
    optional(
        &tx,
        &format!(
            "ALTER ROLE {quoted} SET temp_file_limit = {}",
            quote_literal(&format!("{}kB", config.temp_file_limit_kb))
        ),
    )
    .await;
    // PUBLIC may connect by default; where the operator revoked that, the
    // role needs it (granted where Sluice's login may).
    optional(&tx, &format!("GRANT CONNECT ON DATABASE {} TO {quoted}", quote_ident(&current_database(&tx).await?)))
        .await;
    let schema_q = quote_ident(schema);
    if tx.query_opt(&exists(schema), &[]).await?.is_none() {
        // As the first ingest would: the tenant's tables come later.
        tx.batch_execute(&format!("CREATE SCHEMA {schema_q}"))
            .await
            .with_context(|| format!("create schema {schema}"))?;
    }
    tx.batch_execute(&format!(
        "GRANT USAGE ON SCHEMA {schema_q} TO {quoted}; \
         ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {schema_q} GRANT SELECT ON TABLES TO {quoted}",
        quote_ident(service_user)
    ))
    .await
    .with_context(|| format!("grant {role} the use of schema {schema}"))?;
    // Tables made by another owner may refuse the grant: the role cannot
    // read those, and the rest still can.
    optional(&tx, &format!("GRANT SELECT ON ALL TABLES IN SCHEMA {schema_q} TO {quoted}")).await;
    tx.commit().await?;
    Ok(password)
}

async fn current_database(tx: &tokio_postgres::Transaction<'_>) -> Result<String> {
    Ok(tx.query_one("SELECT current_database()::text", &[]).await?.get(0))
}

/// Runs `sql` in a savepoint; a failure is logged and undone.
async fn optional(tx: &tokio_postgres::Transaction<'_>, sql: &str) {
    let result = tx.batch_execute(&format!("SAVEPOINT optional; {sql}; RELEASE SAVEPOINT optional")).await;
    if let Err(e) = result {
        tracing::info!("query roles: skipped ({sql}): {e}");
        let _ = tx.batch_execute("ROLLBACK TO SAVEPOINT optional; RELEASE SAVEPOINT optional").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_short_readable_and_unique_per_database_and_tenant() {
        let a = role_name("shop", "acme");
        assert!(a.starts_with("sluice_q_acme_") && a.len() == "sluice_q_acme_".len() + 16, "{a}");
        assert_ne!(a, role_name("shop2", "acme"));
        assert_ne!(a, role_name("shop", "acme2"));
        let long = role_name("db", &"Very-Long-".repeat(7));
        assert!(long.len() <= 63, "{long}");
        assert!(long.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{long}");
    }
}
