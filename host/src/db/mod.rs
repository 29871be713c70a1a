//! PostgreSQL: the connection pool, binary parameters, migrations and the
//! batching writer.

pub mod dead_letters;
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

/// Whether `e` says the database could not be reached (or is starting or
/// stopping), rather than that it refused what was asked.
pub fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let pg = match cause.downcast_ref::<deadpool_postgres::PoolError>() {
            Some(deadpool_postgres::PoolError::Backend(pg)) => Some(pg),
            Some(_) => return true,
            None => cause.downcast_ref::<tokio_postgres::Error>(),
        };
        pg.is_some_and(|pg| writer::Failure::of(pg) == writer::Failure::Transient)
    })
}
