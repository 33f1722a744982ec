//! The carehub test kit: what every service's integration tests share (a dev-dependency only).
//!
//! - [`service`] — any service of the platform's service kit (`carehub_platform::kit::Service`)
//!   started on 127.0.0.1:0 with its own database, development PKI, key file (or keys the test
//!   holds) and sandboxes: [`service::TestService`].
//! - [`db`], [`pki`], [`keys`] — the pieces on their own: a throwaway database on the Postgres at
//!   `DATABASE_URL`, a dev CA with workload certificates and mTLS clients, the development key
//!   file, rotatable keys and the Vault API double; [`vault`] sets Vault up through its API (the
//!   double, or a real Vault for the live tests) and declares a test for both
//!   (`both_backends!`).
//! - [`grpc`] — request metadata (bearer token, idempotency key), status assertions, plain HTTP.
//! - [`users`] — signing in through identity's public API; the roles to sign in.
//! - [`otlp`] — an in-process OTLP/gRPC trace receiver, for tests that assert on spans.
//! - [`promql`] — the metric names the chart's alerts and dashboard use, against what the
//!   services' `/metrics` export.
//! - [`process`] — running a test in a process of its own under `cargo test` too.
//! - [`authz`] — the authorization check: every RPC of a mounted service has a policy rule, and a
//!   table-driven runner compares allow/deny for each kind of caller with the table.
//!
//! Panics are the kit's way to fail a test: every helper here panics with a message instead of
//! returning an error the test would only unwrap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod authz;
pub mod db;
pub mod grpc;
pub mod keys;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod promql;
pub mod service;
pub mod stripe;
pub mod users;
pub mod vault;

pub use carehub_platform::vault_double;
pub use db::TestDb;
pub use grpc::{assert_status, with_key, with_token};
pub use pki::TestPki;
pub use service::{TestEnv, TestService, TRUST_DOMAIN};

/// A password that satisfies identity's policy.
pub const PASSWORD: &str = "correct horse battery staple";
