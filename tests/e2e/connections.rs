//! Connections as an operator configures them: every connection-string
//! form against the real server, TLS with each sslmode against a server with
//! a certificate made here, the replication client over TLS, least privilege
//! (`sluice migrate` as admin, `sluice serve` as a writer role), and secrets
//! that never show in logs, answers or `Debug` output.

use crate::support::{EXAMPLE, Sluice, TestDb, cache_dir, http, post};
use sluice::config::DatabaseConfig;
use sluice::config_file::Config;
use sluice::embedded::{Cluster, ClusterOptions};
use sluice_replication::{ReplicationClient, ReplicationConfig, SslMode, StartOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A password with every character a URI or DSN must escape.
const AWKWARD_PASSWORD: &str = "p@ss w:rd/%?&='\\";

fn tmp() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// The parts of a test database's URL.
fn parts(db: &TestDb) -> (String, u16, String, String) {
    let pg: tokio_postgres::Config = db.url.parse().unwrap();
    let host = match &pg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("{other:?}"),
    };
    let password = String::from_utf8(pg.get_password().unwrap().to_vec()).unwrap();
    (host, pg.get_ports()[0], pg.get_user().unwrap().to_owned(), password)
}

/// Connects with Sluice's own settings and says where it landed.
async fn landed(
    database: &DatabaseConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<(String, String, String, bool)> {
    let settings = database.pg_config_with(env)?;
    let client = sluice::db::connect(&settings).await?;
    let row = client
        .query_one(
            "SELECT current_database(), current_user, current_setting('search_path'), \
             coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
}

fn url(database: &str) -> DatabaseConfig {
    DatabaseConfig { url: Some(database.to_owned()), ..Default::default() }
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// A role with an awkward password, on `db`.
async fn awkward_role(db: &TestDb, role: &str) {
    let escaped = AWKWARD_PASSWORD.replace('\'', "''");
    db.client()
        .await
        .batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD '{escaped}'; CREATE SCHEMA ingest;"))
        .await
        .unwrap();
}

#[tokio::test]
async fn every_connection_string_form_reaches_the_server() {
    let db = TestDb::new().await;
    let role = format!("{}_app", db.name);
    awkward_role(&db, &role).await;
    let (host, port, _, _) = parts(&db);
    let encoded: String = percent_encode(AWKWARD_PASSWORD);
    let dsn_password = AWKWARD_PASSWORD.replace('\\', "\\\\").replace('\'', "\\'");

    // A postgres:// URI: percent-encoded password, options libpq knows and search_path.
    for scheme in ["postgres", "postgresql"] {
        let uri = format!(
            "{scheme}://{role}:{encoded}@{host}:{port}/{}?application_name=conn-test&connect_timeout=5&sslmode=prefer&search_path=ingest,public",
            db.name
        );
        let (database, user, search_path, ssl) = landed(&url(&uri), &no_env).await.unwrap();
        assert_eq!((database.as_str(), user.as_str()), (db.name.as_str(), role.as_str()));
        assert_eq!(search_path, "ingest,public");
        assert!(!ssl, "the test server has no TLS: prefer connects in plain");
    }

    // A libpq key=value DSN with a quoted password.
    let dsn = format!(
        "host={host} port={port} user={role} password='{dsn_password}' dbname={} sslmode=disable search_path=ingest",
        db.name
    );
    let (database, user, search_path, _) = landed(&url(&dsn), &no_env).await.unwrap();
    assert_eq!((database, user, search_path), (db.name.clone(), role.clone(), "ingest".to_owned()));

    // Logflare's split fields, read from TOML.
    let config = Config::parse(
        &format!(
            "[database]\nhostname = \"{host}\"\nport = {port}\nusername = \"{role}\"\npassword = \"${{APP_PW}}\"\n\
             database = \"{}\"\nschema = \"ingest\"\npool_size = 2\n[batch]\nwriters = 1",
            db.name
        ),
        &|name| (name == "APP_PW").then(|| AWKWARD_PASSWORD.to_owned()),
    )
    .unwrap();
    let (database, user, _, _) = landed(&config.database, &no_env).await.unwrap();
    assert_eq!((database, user), (db.name.clone(), role.clone()));

    // Nothing configured but the libpq PG* variables.
    let pg_env = |name: &str| {
        Some(match name {
            "PGHOST" => host.clone(),
            "PGPORT" => port.to_string(),
            "PGUSER" => role.clone(),
            "PGPASSWORD" => AWKWARD_PASSWORD.to_owned(),
            "PGDATABASE" => db.name.clone(),
            "PGSSLMODE" => "disable".to_owned(),
            _ => return None,
        })
    };
    let (database, user, _, _) = landed(&DatabaseConfig::default(), &pg_env).await.unwrap();
    assert_eq!((database, user), (db.name.clone(), role.clone()));

    // stogger's %PASSWORD% placeholder, in a URI and in a DSN.
    let password_env = |name: &str| (name == sluice::config::PASSWORD_VAR).then(|| AWKWARD_PASSWORD.to_owned());
    for form in [
        format!("postgres://{role}:%PASSWORD%@{host}:{port}/{}", db.name),
        format!("host={host} port={port} user={role} password=%PASSWORD% dbname={}", db.name),
    ] {
        let (_, user, _, _) = landed(&url(&form), &password_env).await.unwrap();
        assert_eq!(user, role);
        let e = format!("{:#}", landed(&url(&form), &no_env).await.unwrap_err());
        assert!(e.contains(sluice::config::PASSWORD_VAR), "{e}");
    }

    // A wrong password is refused by the server, and the error names no secret.
    let wrong = format!("postgres://{role}:not-the-password-{}@{host}:{port}/{}", db.name, db.name);
    let e = format!("{:#}", landed(&url(&wrong), &no_env).await.unwrap_err());
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("not-the-password"), "{e}");
}

#[tokio::test]
async fn a_unix_socket_in_a_uri_and_in_a_dsn() {
    let server = tls_server();
    let socket_dir = server.socket_dir.display().to_string();
    let password = server.cluster.password().to_owned();
    let encoded = percent_encode(&password);
    let dir = percent_encode(&socket_dir);
    let port = server.cluster.port();
    for form in [
        format!("postgres://sluice:{encoded}@/sluice?host={dir}&port={port}"),
        format!("postgresql:///sluice?host={dir}&port={port}&user=sluice&password={encoded}&sslmode=require"),
        format!("host={socket_dir} port={port} user=sluice password='{password}' dbname=sluice sslmode=verify-full"),
    ] {
        let (database, _, _, ssl) = landed(&url(&form), &no_env).await.unwrap_or_else(|e| panic!("{form}: {e:#}"));
        assert_eq!(database, "sluice");
        // As libpq: a unix socket is never encrypted, whatever sslmode says.
        assert!(!ssl);
    }
}

#[tokio::test]
async fn url_and_split_credentials_together_are_refused_by_name() {
    let config = temp_config(&format!(
        "data_dir = {:?}\n[database]\nurl = \"postgres://app:hunter2-split@127.0.0.1:1/app\"\nhost = \"127.0.0.1\"\n",
        tmp().join("conn-refused-data")
    ));
    let out = sluice_command(&["migrate", "--config"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("database.url and the split credentials"), "{stderr}");
    assert!(stderr.contains("use one or the other"), "{stderr}");
    assert!(!stderr.contains("hunter2-split"), "{stderr}");
}

/// A PostgreSQL of its own with `ssl = on` and a certificate for
/// `localhost` only, from a CA made here; also listening on a unix socket.
struct TlsServer {
    cluster: Cluster,
    ca: PathBuf,
    other_ca: PathBuf,
    socket_dir: PathBuf,
}

fn tls_server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let dir = tmp().join(format!("tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let issuer = ca("Sluice test CA");
        let other = ca("Another CA");
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &issuer).unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
            path
        };
        let ca_path = write("ca.pem", &issuer.pem(), 0o644);
        let other_ca = write("other-ca.pem", &other.pem(), 0o644);
        let cert_path = write("server.crt", &cert.pem(), 0o644);
        let key_path = write("server.key", &key.serialize_pem(), 0o600);
        let socket_dir = dir.join("socket");
        std::fs::create_dir_all(&socket_dir).unwrap();
        // The server runs as postgres when the tests run as root: the key
        // and the socket folder must be its own.
        if nix::unistd::geteuid().is_root() {
            let owner = nix::unistd::User::from_name("postgres").unwrap().expect("a postgres user");
            for path in [&dir, &key_path, &cert_path, &socket_dir] {
                std::os::unix::fs::chown(path, Some(owner.uid.as_raw()), Some(owner.gid.as_raw())).unwrap();
            }
        }
        let options = ClusterOptions {
            fsync: false,
            template: Some(tmp().join("pg-template")),
            remove_on_stop: true,
            settings: vec![
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), cert_path.display().to_string()),
                ("ssl_key_file".into(), key_path.display().to_string()),
                ("unix_socket_directories".into(), socket_dir.display().to_string()),
            ],
            ..ClusterOptions::new(dir.join("pg"))
        };
        let cluster = Cluster::start(options).expect("start a PostgreSQL with TLS");
        TlsServer { cluster, ca: ca_path, other_ca, socket_dir }
    })
}

/// The TLS server's URL for `host`, with `query` appended.
fn tls_url(host: &str, query: &str) -> DatabaseConfig {
    let server = tls_server();
    url(&format!(
        "postgres://sluice:{}@{host}:{}/sluice?{query}",
        percent_encode(server.cluster.password()),
        server.cluster.port()
    ))
}

#[tokio::test]
async fn tls_with_each_sslmode() {
    let server = tls_server();
    let ca = server.ca.display().to_string();

    // require: encrypted, the certificate not checked (its name says localhost).
    let (_, _, _, ssl) = landed(&tls_url("127.0.0.1", "sslmode=require"), &no_env).await.unwrap();
    assert!(ssl, "require must encrypt");
    // prefer: encrypted when the server offers it.
    let (_, _, _, ssl) = landed(&tls_url("127.0.0.1", "sslmode=prefer"), &no_env).await.unwrap();
    assert!(ssl);
    // disable: plain.
    let (_, _, _, ssl) = landed(&tls_url("127.0.0.1", "sslmode=disable"), &no_env).await.unwrap();
    assert!(!ssl);

    // verify-ca: the chain is checked, the name is not.
    let (_, _, _, ssl) =
        landed(&tls_url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")), &no_env).await.unwrap();
    assert!(ssl);
    // require with a root certificate is verify-ca (as libpq): another CA fails.
    let other = server.other_ca.display().to_string();
    let e = format!(
        "{:#}",
        landed(&tls_url("127.0.0.1", &format!("sslmode=require&sslrootcert={other}")), &no_env).await.unwrap_err()
    );
    assert!(e.contains("invalid peer certificate") && e.contains("UnknownIssuer"), "{e}");

    // verify-full: the chain and the name.
    let (_, _, _, ssl) =
        landed(&tls_url("localhost", &format!("sslmode=verify-full&sslrootcert={ca}")), &no_env).await.unwrap();
    assert!(ssl);
    let e = format!(
        "{:#}",
        landed(&tls_url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}")), &no_env).await.unwrap_err()
    );
    assert!(e.contains("not valid for name") && e.contains("127.0.0.1"), "{e}");

    // The split fields and PGSSLROOTCERT say the same.
    let split = DatabaseConfig {
        host: Some("localhost".into()),
        port: Some(server.cluster.port()),
        user: Some("sluice".into()),
        password: Some(server.cluster.password().into()),
        dbname: Some("sluice".into()),
        sslmode: Some("verify-full".into()),
        ..Default::default()
    };
    let env = |name: &str| (name == "PGSSLROOTCERT").then(|| ca.clone());
    assert!(landed(&split, &env).await.unwrap().3);

    // A pool, as the writer uses, over TLS.
    let settings = tls_url("localhost", &format!("sslmode=verify-full&sslrootcert={ca}")).pg_config().unwrap();
    let pool = sluice::db::pool(settings, 2, Duration::from_secs(5)).unwrap();
    let client = pool.get().await.unwrap();
    let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap();
    assert!(row.get::<_, bool>(0));

    // A server without TLS: require says so.
    let db = TestDb::new().await;
    let mut plain = url(&db.url);
    plain.sslmode = Some("require".into());
    let e = format!("{:#}", landed(&plain, &no_env).await.unwrap_err());
    assert!(e.contains("server does not support TLS"), "{e}");
}

#[tokio::test]
async fn the_replication_client_streams_over_tls() {
    let server = tls_server();
    let admin = sluice::db::connect(&tls_url("127.0.0.1", "sslmode=require").pg_config().unwrap()).await.unwrap();
    admin.batch_execute("CREATE TABLE IF NOT EXISTS tls_orders (id int PRIMARY KEY, note text)").await.unwrap();
    let mut config = ReplicationConfig::new("sluice", "sluice");
    config.host = "127.0.0.1".into();
    config.port = server.cluster.port();
    config.password = Some(server.cluster.password().into());
    config.slot_name = "tls_slot".into();
    config.publication_name = "tls_pub".into();
    config.tables = vec!["tls_orders".into()];
    config.ssl_mode = SslMode::Require;

    let mut client = ReplicationClient::connect(&config).await.unwrap();
    let rows = client.simple_query("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await.unwrap();
    assert_eq!(rows[0].get(0), Some("true"), "the replication connection is encrypted");
    client.ensure_publication(&config.publication_name, &config.tables).await.unwrap();
    client.ensure_slot(&config.slot_name).await.unwrap();
    let mut stream = client.start_replication(StartOptions::new("tls_slot", "tls_pub")).await.unwrap();
    admin.execute("INSERT INTO tls_orders VALUES (1, 'over tls')", &[]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut inserted = false;
    while !inserted && Instant::now() < deadline {
        if let Ok(Ok(Some(sluice_replication::Event::Data { message, .. }))) =
            tokio::time::timeout(Duration::from_secs(1), stream.recv()).await
        {
            inserted = matches!(message, sluice_replication::pgoutput::Message::Insert(_));
        }
    }
    assert!(inserted, "the insert came through the TLS stream");
    drop(stream);

    // verify-full checks the replication connection's certificate too.
    config.ssl_mode = SslMode::VerifyFull;
    config.ssl_root_cert = Some(server.ca.clone());
    let e = ReplicationClient::connect(&config).await.unwrap_err().to_string();
    assert!(e.contains("not valid for name"), "{e}");
    config.host = "localhost".into();
    let mut client = ReplicationClient::connect(&config).await.unwrap();
    client.identify_system().await.unwrap();
    // A server without TLS: require refuses to go on in plain.
    let db = TestDb::new().await;
    let (host, port, user, password) = parts(&db);
    let mut plain = ReplicationConfig::new(db.name.clone(), user);
    plain.host = host;
    plain.port = port;
    plain.password = Some(password);
    plain.ssl_mode = SslMode::Require;
    let e = ReplicationClient::connect(&plain).await.unwrap_err().to_string();
    assert!(e.contains("does not accept TLS"), "{e}");
    plain.ssl_mode = SslMode::Prefer;
    ReplicationClient::connect(&plain).await.unwrap().identify_system().await.unwrap();
}

#[tokio::test]
async fn migrate_as_admin_then_serve_as_a_writer_that_cannot_create() {
    let db = TestDb::new().await;
    let writer = format!("{}_writer", db.name);
    let (host, port, _, _) = parts(&db);
    let data = tmp().join(format!("migrate-{}", db.name));
    let config = temp_config(&format!(
        "data_dir = {data:?}\n[components]\ncache_dir = {:?}\n[database]\nschema = \"ingest\"\n",
        cache_dir()
    ));

    // migrate: the DDL with the admin (superuser) connection, then exit.
    let out = sluice_command(&["migrate", "--config"]).arg(&config).args(["--database-url", &db.url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrated schema ingest"));
    let admin = db.client().await;
    for table in ["events", "sluice_dead_letters"] {
        let found: bool =
            admin.query_one("SELECT to_regclass($1) IS NOT NULL", &[&format!("ingest.{table}")]).await.unwrap().get(0);
        assert!(found, "migrate created ingest.{table}");
    }

    // The writer role of docs/operations.md: no CREATE anywhere.
    admin
        .batch_execute(&format!(
            "CREATE ROLE {writer} LOGIN PASSWORD 'writer-pw'; \
             REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
             REVOKE CREATE, TEMPORARY ON DATABASE {db} FROM PUBLIC; \
             GRANT CONNECT ON DATABASE {db} TO {writer}; \
             GRANT USAGE ON SCHEMA ingest TO {writer}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ingest TO {writer}; \
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA ingest TO {writer}; \
             GRANT USAGE ON SCHEMA _sluice TO {writer}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON _sluice.registry, _sluice.tenants, _sluice.components, \
               _sluice.hosts TO {writer};",
            db = db.name
        ))
        .await
        .unwrap();
    let writer_url = format!("postgres://{writer}:writer-pw@{host}:{port}/{}", db.name);
    let as_writer = sluice::db::connect(&url(&writer_url).pg_config().unwrap()).await.unwrap();
    let e = as_writer.batch_execute("CREATE TABLE ingest.nope (a int)").await.unwrap_err();
    assert!(e.as_db_error().unwrap().message().contains("permission denied"), "{e}");

    // serve as the writer: it starts (no DDL needed) and ingests.
    let sluice =
        Sluice::start_with_env("[database]\nschema = \"ingest\"\n", &[("SLUICE_DATABASE_URL", writer_url.as_str())]);
    let (status, answer) = post(&sluice.url("/v1/events"), "application/json", EXAMPLE).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["inserted"], 1, "{answer}");
    let count: i64 = admin.query_one("SELECT count(*) FROM ingest.events", &[]).await.unwrap().get(0);
    assert_eq!(count, 1);

    // A request that needs a new table (a Logflare source) is refused with
    // the reason, and the service goes on.
    let (status, answer) = post(
        &sluice.url("/api/logs?source_name=brand_new_source"),
        "application/json",
        r#"{"message": "needs a table"}"#,
    )
    .await;
    let text = answer.to_string();
    assert!(status == 200 || status >= 400, "{status} {text}");
    assert!(text.contains("permission denied"), "{status} {text}");
    let created: bool =
        admin.query_one("SELECT to_regclass('ingest.brand_new_source') IS NOT NULL", &[]).await.unwrap().get(0);
    assert!(!created);
    let again = EXAMPLE.replace("order_38a91f-completed", "order_38a91f-again");
    let (status, answer) = post(&sluice.url("/v1/events"), "application/json", again).await;
    assert_eq!((status, answer["inserted"].as_i64()), (200, Some(1)), "{answer}");
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test]
async fn secrets_never_show() {
    let db = TestDb::new().await;
    let (host, port, _, _) = parts(&db);
    let role = format!("{}_app", db.name);
    const DB_PASSWORD: &str = "db-password-5ecret-a1";
    const WRONG_PASSWORD: &str = "wrong-password-5ecret-b2";
    const UNREACHABLE_PASSWORD: &str = "unreachable-password-5ecret-c3";
    const API_KEY: &str = "api-key-5ecret-d4-0123456789";
    const QUERY_TOKEN: &str = "query-token-5ecret-e5-0123456789";
    const ADMIN_TOKEN: &str = "admin-token-5ecret-f6-0123456789";
    const AWS_SECRET: &str = "aws-secret-5ecret-g7/K7MDENG+bPxRfiCY";
    let secrets = [DB_PASSWORD, WRONG_PASSWORD, UNREACHABLE_PASSWORD, API_KEY, QUERY_TOKEN, ADMIN_TOKEN, AWS_SECRET];
    db.client()
        .await
        .batch_execute(&format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{DB_PASSWORD}'"))
        .await
        .unwrap();
    let service_url = format!("postgres://{role}:{DB_PASSWORD}@{host}:{port}/{}", db.name);
    let toml = format!(
        "admin_token = \"{ADMIN_TOKEN}\"\n\
         [[tenants]]\nid = \"acme\"\nkeys = [\"{API_KEY}\"]\nquery_tokens = [\"{QUERY_TOKEN}\"]\n\
         database = {{ schema = \"acme\" }}\n"
    );

    // Debug output of the parsed configuration.
    let parsed = Config::parse(
        &format!(
            "{toml}[database]\nurl = \"{service_url}\"\n\
             [[cdc]]\ndatabase = \"d\"\nuser = \"u\"\npassword = \"{WRONG_PASSWORD}\"\n"
        ),
        &|_| None,
    )
    .unwrap();
    let iam = DatabaseConfig {
        url: Some(format!("postgres://iam@{host}:{port}/{}", db.name)),
        auth: Some("rds-iam".into()),
        aws_region: Some("eu-west-1".into()),
        ..Default::default()
    }
    .pg_config_with(&|name| match name {
        "AWS_ACCESS_KEY_ID" => Some("AKIDEXAMPLE".into()),
        "AWS_SECRET_ACCESS_KEY" => Some(AWS_SECRET.into()),
        _ => None,
    })
    .unwrap();
    let debug =
        format!("{parsed:?} {parsed:#?} {:?} {iam:?} {:?}", parsed.database.pg_config().unwrap(), parsed.cdc[0].source);
    for secret in secrets {
        assert!(!debug.contains(secret), "Debug shows {secret}: {debug}");
    }

    // The service, with AWS credentials in its environment.
    let sluice = Sluice::start_with_env(
        &toml,
        &[
            ("SLUICE_DATABASE_URL", service_url.as_str()),
            ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ],
    );
    let mut answers = String::new();
    // Normal traffic: ingest, query, admin.
    let response = http()
        .post(sluice.url("/v1/events"))
        .header("x-api-key", API_KEY)
        .header("content-type", "application/json")
        .body(EXAMPLE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    answers.push_str(&response.text().await.unwrap());
    let response = http()
        .post(sluice.url("/api/query"))
        .bearer_auth(QUERY_TOKEN)
        .json(&serde_json::json!({"sql": "SELECT count(*) AS n FROM events"}))
        .send()
        .await
        .unwrap();
    answers.push_str(&response.text().await.unwrap());
    // Failing connections: tenants whose databases refuse the password, are
    // unreachable, or need an IAM token from an unreachable host.
    let failing = [
        format!("postgres://{role}:{WRONG_PASSWORD}@{host}:{port}/{}", db.name),
        format!("postgres://{role}:{UNREACHABLE_PASSWORD}@127.0.0.1:1/{}?connect_timeout=2", db.name),
    ];
    for (i, database) in failing.iter().enumerate() {
        let response = http()
            .post(sluice.url("/admin/tenants"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({"id": format!("broken{i}"), "database": {"url": database}}))
            .send()
            .await
            .unwrap();
        answers.push_str(&format!("{} {}\n", response.status(), response.text().await.unwrap()));
    }
    let response = http()
        .post(sluice.url("/admin/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"id": "iam", "keys": [], "database": {
            "url": "postgres://iam@127.0.0.1:1/db?connect_timeout=2", "auth": "rds-iam", "aws_region": "eu-west-1"}}))
        .send()
        .await
        .unwrap();
    answers.push_str(&format!("{} {}\n", response.status(), response.text().await.unwrap()));
    for path in ["/admin/tenants", "/admin/tenants/acme"] {
        let response = http().get(sluice.url(path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        answers.push_str(&response.text().await.unwrap());
    }
    // Wrong credentials are refused without being echoed.
    let response = http().get(sluice.url("/admin/tenants")).bearer_auth(WRONG_PASSWORD).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    answers.push_str(&response.text().await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = sluice.log();
    assert!(
        answers.contains("password authentication failed") || log.contains("password authentication failed"),
        "the wrong password was tried: {answers}\n{log}"
    );
    for secret in secrets {
        assert!(!answers.contains(secret), "an answer shows {secret}: {answers}");
        assert!(!log.contains(secret), "the log shows {secret}: {log}");
    }

    // A service that cannot start: the wrong password at startup, logged.
    let out = sluice_command(&["serve", "--config"])
        .arg(temp_config(&format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[components]\ncache_dir = {:?}\n",
            tmp().join(format!("conn-fail-{}", db.name)),
            cache_dir()
        )))
        .env("SLUICE_DATABASE_URL", &failing[0])
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .output()
        .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("password authentication failed"), "{all}");
    for secret in secrets {
        assert!(!all.contains(secret), "startup output shows {secret}: {all}");
    }
}

fn sluice_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.args(args).env_remove("SLUICE_DATABASE_URL").stdin(Stdio::null());
    command
}

fn temp_config(toml: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = tmp().join(format!("conn-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    path
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_from_a_source_checked_with_verify_full() {
    let server = tls_server();
    let source_url = tls_url("127.0.0.1", "sslmode=require&application_name=conn-test");
    let source = sluice::db::connect(&source_url.pg_config().unwrap()).await.unwrap();
    source.batch_execute("CREATE TABLE IF NOT EXISTS tls_cdc_orders (id int PRIMARY KEY, note text)").await.unwrap();
    let db = TestDb::new().await;
    let toml = format!(
        "[[cdc]]\nname = \"tls\"\nhost = \"localhost\"\nport = {}\ndatabase = \"sluice\"\nuser = \"sluice\"\n\
         password = {:?}\nslotName = \"tls_cdc\"\npublicationName = \"tls_cdc\"\ntables = [\"tls_cdc_orders\"]\n\
         sslMode = \"verify-full\"\nsslRootCert = {:?}\napplicationName = \"tls-cdc-stream\"\n",
        server.cluster.port(),
        server.cluster.password(),
        server.ca
    );
    let sluice = Sluice::start(Some(&db), &toml);
    // Both of the source's connections (the slot's lock and the stream) are
    // encrypted. Other tests share this server, so the stream has a name of
    // its own, and every session under a name must be encrypted.
    let deadline = Instant::now() + Duration::from_secs(60);
    let encrypted = |name: &'static str| {
        let source = &source;
        async move {
            let rows = source
                .query(
                    "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = $1",
                    &[&name],
                )
                .await
                .unwrap();
            (!rows.is_empty()).then(|| rows.iter().all(|row| row.get::<_, bool>(0)))
        }
    };
    // The change below counts only once the slot has its consistent point
    // (a slot being created is already active, and its stream session
    // already up).
    let streaming = || async {
        source
            .query_opt(
                "SELECT active AND confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = 'tls_cdc'",
                &[],
            )
            .await
            .unwrap()
            .is_some_and(|row| row.get::<_, bool>(0))
    };
    while encrypted("tls-cdc-stream").await.is_none()
        || encrypted("sluice-cdc-lock").await.is_none()
        || !streaming().await
    {
        assert!(Instant::now() < deadline, "the stream never started; log:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(encrypted("tls-cdc-stream").await, Some(true));
    assert_eq!(encrypted("sluice-cdc-lock").await, Some(true));
    source.execute("INSERT INTO tls_cdc_orders VALUES (1, 'streamed over verify-full')", &[]).await.unwrap();
    let destination = db.client().await;
    loop {
        let rows = match destination.query_one("SELECT count(*) FROM cdc_audit", &[]).await {
            Ok(row) => row.get::<_, i64>(0),
            Err(_) => 0,
        };
        if rows >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the change never arrived; log:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_binary_reads_pg_variables_and_the_password_placeholder_from_its_environment() {
    let db = TestDb::new().await;
    let (host, port, user, password) = parts(&db);
    let data = tmp().join(format!("pgenv-{}", db.name));
    let config = |database: &str| {
        temp_config(&format!(
            "data_dir = {data:?}\n[components]\ncache_dir = {:?}\n[database]\nschema = \"from_env\"\n{database}",
            cache_dir()
        ))
    };
    // Nothing in the file but the schema: PG* names the database.
    let out = sluice_command(&["migrate", "--config"])
        .arg(config(""))
        .env("PGHOST", &host)
        .env("PGPORT", port.to_string())
        .env("PGUSER", &user)
        .env("PGPASSWORD", &password)
        .env("PGDATABASE", &db.name)
        .env("PGSSLMODE", "disable")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let admin = db.client().await;
    let created = |table: &'static str| {
        let admin = &admin;
        async move { admin.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table]).await.unwrap().get::<_, bool>(0) }
    };
    assert!(created("from_env.events").await);

    // %PASSWORD% in the file's URL, the password in SLUICE_DATABASE_PASSWORD.
    let out = sluice_command(&["migrate", "--config"])
        .arg(config(&format!(
            "url = \"postgres://{user}:%PASSWORD%@{host}:{port}/{}?search_path=from_env\"\n",
            db.name
        )))
        .env(sluice::config::PASSWORD_VAR, &password)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = sluice_command(&["migrate", "--config"])
        .arg(config(&format!("url = \"postgres://{user}:%PASSWORD%@{host}:{port}/{}\"\n", db.name)))
        .env_remove(sluice::config::PASSWORD_VAR)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("SLUICE_DATABASE_PASSWORD is not set"), "{stderr}");
    let _ = std::fs::remove_dir_all(&data);
}
