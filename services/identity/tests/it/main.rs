//! Identity's integration tests: one test binary, one module per area (a real identity server
//! on a real Postgres over mTLS per test, started through [`common`]).

mod common;
mod launch;

mod accounts;
mod audit_events;
mod authz;
mod bad_input;
mod encryption;
mod jwks;
mod login_concurrency;
mod remote_verifier;
mod sessions;
mod signing_rotation;
mod transport;
