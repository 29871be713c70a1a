//! The Spin HTTP component: every request runs through `sluice-spin-core`
//! (the normalizers, the batched upserts, the host's answer), written
//! through spin-sdk's outbound PostgreSQL.
//!
//! Variables (`spin.toml`): `db_url` (required, secret), `schema`,
//! `tenant`, `settings` (the tenant's settings for the normalizers, JSON).
//!
//! Natively this crate is empty: only its wasm32-wasip2 build is the
//! component (`cargo build --profile component --target wasm32-wasip2 -p sluice-spin`).

#[cfg(target_family = "wasm")]
mod component;
