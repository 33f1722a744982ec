//! carehub-platform: the runtime every carehub service is built on (DESIGN.md §4).

pub mod auth;
pub mod config;
pub mod db;
pub mod errors;
pub mod idempotency;
pub mod jwt;
pub mod tls;
