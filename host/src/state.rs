//! The service's state, shared by every route: what a request reads to
//! find its tenant and reach the database.

use crate::config::Secret;
use crate::fleet::Fleet;
use crate::ingest::Tenant;
use crate::memory::MemoryLimiter;
use crate::metrics::{Metrics, MetricsConfig};
use crate::query::Queries;
use crate::runtime::Runtime;
use crate::spool::Spool;
use crate::tenants::Registry;
use deadpool_postgres::Pool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};

pub struct App {
    pub runtime: Arc<Runtime>,
    pub registry: Arc<Registry>,
    /// With `keyless_loopback` set and no tenant registered since the
    /// start, requests without a key go to this one, from loopback only.
    pub default_tenant: Arc<Tenant>,
    /// `keyless_loopback` of the configuration.
    pub keyless_loopback: bool,
    /// The service database, for readiness.
    pub pool: Pool,
    pub admin_token: Option<Secret>,
    /// Request bytes being processed now, across tenants.
    pub in_flight_bytes: AtomicUsize,
    /// The SQL query API's settings and connection pools.
    pub queries: Queries,
    /// Requests kept on disk while their destination cannot take them.
    pub spool: Spool,
    pub metrics: &'static Metrics,
    pub metrics_config: MetricsConfig,
    /// Refuses requests while resident memory is past its soft limit.
    pub memory: Arc<MemoryLimiter>,
    /// This host among the others on the service database.
    pub fleet: Fleet,
    /// Set on SIGTERM: `/readyz` answers 503 so balancers stop sending.
    pub draining: AtomicBool,
}

impl App {
    /// The default tenant, for a request without a tenant while none is
    /// registered: only with `keyless_loopback` set, from loopback, and
    /// only until a tenant is first registered (deleting the last one
    /// never opens the service to keyless requests); else why not.
    pub fn keyless(&self, peer: SocketAddr) -> Result<Arc<Tenant>, &'static str> {
        if !self.keyless_loopback {
            Err("no tenants are configured and keyless_loopback is off: add a tenant and send its key")
        } else if self.registry.had_tenants() {
            Err("no tenants are left; keyless requests stay off once a tenant was registered: add a tenant")
        } else if !peer.ip().is_loopback() {
            Err("no tenants are configured, so requests are accepted from loopback only")
        } else {
            Ok(self.default_tenant.clone())
        }
    }
}
