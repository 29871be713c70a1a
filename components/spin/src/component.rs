use sluice_spin_core::{Config, DbError, Executor, Incoming};
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{FullBody, HeaderMap, HeaderValue, IntoResponse, Request, StatusCode};
use spin_sdk::pg::{self, DbValue, ParameterValue};

#[spin_sdk::http_service]
async fn handle(request: Request) -> impl IntoResponse {
    let answer = match serve(request).await {
        Ok(answer) => answer,
        Err(e) => sluice_spin_core::Answer::error(500, format!("{e:#}")),
    };
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(seconds) = answer.retry_after {
        headers.insert("retry-after", HeaderValue::from(seconds));
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, headers, FullBody::new(bytes::Bytes::from(answer.body_bytes())))
}

async fn serve(request: Request) -> anyhow::Result<sluice_spin_core::Answer> {
    let received_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    let (parts, body) = request.into_parts();
    let body = body.bytes().await.map_err(|e| anyhow::anyhow!("the body could not be read: {e:?}"))?;
    let incoming = Incoming {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        headers: parts
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
            .collect(),
        body: body.to_vec(),
        received_at,
    };
    let config = Config {
        tenant: variable("tenant", "default").await,
        schema: variable("schema", "public").await,
        settings: variable("settings", "{}").await,
    };
    let url =
        spin_sdk::variables::get("db_url").await.map_err(|e| anyhow::anyhow!("variable db_url is not set: {e}"))?;
    let mut executor = SpinPg { url, connection: None };
    Ok(sluice_spin_core::handle(&mut executor, &config, incoming).await)
}

/// A variable's value, or `default` when it is unset or empty.
async fn variable(name: &str, default: &str) -> String {
    match spin_sdk::variables::get(name).await {
        Ok(value) if !value.is_empty() => value,
        _ => default.to_owned(),
    }
}

/// The executor over Spin's outbound PostgreSQL; connects on first use, so
/// a request refused before any write opens no connection. Each call is one
/// statement: no transaction is ever left open on the pooled connection.
struct SpinPg {
    url: String,
    connection: Option<pg::Connection>,
}

impl SpinPg {
    async fn connection(&mut self) -> Result<&pg::Connection, DbError> {
        if self.connection.is_none() {
            let connection = pg::Connection::open(self.url.as_str()).await.map_err(error)?;
            self.connection = Some(connection);
        }
        Ok(self.connection.as_ref().expect("opened above"))
    }
}

impl Executor for SpinPg {
    async fn execute_ddl(&mut self, sql: &str) -> Result<(), DbError> {
        self.connection().await?.execute(sql, Vec::new()).await.map_err(error)?;
        Ok(())
    }

    async fn upsert(&mut self, sql: &str, columns: &[Vec<Option<String>>]) -> Result<Vec<i64>, DbError> {
        let params: Vec<ParameterValue> = columns.iter().map(|c| ParameterValue::ArrayStr(c.clone())).collect();
        let rows = self.connection().await?.query(sql, params).await.map_err(error)?.collect().await.map_err(error)?;
        let mut positions = Vec::with_capacity(rows.len());
        for row in rows {
            match &row[0] {
                DbValue::Int64(n) => positions.push(*n),
                other => {
                    return Err(DbError {
                        sqlstate: None,
                        message: format!("the upsert returned {other:?}, not a bigint"),
                    });
                }
            }
        }
        Ok(positions)
    }
}

fn error(e: pg::Error) -> DbError {
    match e {
        pg::Error::PgError(pg::PgError::QueryFailed(pg::QueryError::DbError(db))) => {
            DbError { sqlstate: Some(db.code), message: db.message }
        }
        other => DbError { sqlstate: None, message: other.to_string() },
    }
}
