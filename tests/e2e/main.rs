//! End-to-end tests: the real `sluice` binary, real HTTP, a real PostgreSQL.

mod support;

mod api_fuzz;
mod cdc;
mod cdc_crash;
mod cli;
mod clients;
mod connections;
mod delivery;
mod deploy;
mod events;
mod faults;
mod fleet;
mod layering;
mod lifecycle;
mod log_clients;
mod logs;
mod metrics;
mod migrations;
mod query;
mod query_boundary;
mod quotas;
mod spin;
mod status_page;
mod tenants;
mod write_modes;
