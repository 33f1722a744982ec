//! carehub-platform: the runtime every carehub service is built on (DESIGN.md §4).

pub mod admin;
pub mod audit;
pub mod auth;
pub mod call;
pub mod client;
pub mod config;
pub mod crypto;
pub mod db;
pub mod devcerts;
pub mod errors;
pub mod idempotency;
pub mod jwt;
pub mod keys;
pub mod kit;
pub mod lifecycle;
pub mod outbox;
pub mod paging;
pub mod request;
pub mod server;
pub mod stats;
pub mod telemetry;
pub mod timestamps;
pub mod tls;
#[cfg(feature = "test-support")]
pub mod vault_double;
