//! PostgreSQL: the connection pool, binary parameters, migrations and the
//! batching writer.

pub mod encode;
pub mod migrate;
pub mod writer;

use anyhow::Result;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;

/// A pool of `size` connections. Connections are opened lazily, so this
/// succeeds while the server is down.
pub fn pool(config: tokio_postgres::Config, size: usize, wait: Duration) -> Result<Pool> {
    let manager =
        Manager::from_config(config, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Ok(Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(wait))
        .recycle_timeout(Some(wait))
        .build()?)
}
