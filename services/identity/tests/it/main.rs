//! Identity's integration tests: one test binary, one module per area (a real identity server
//! on a real Postgres over mTLS per test, started by the test kit through [`common`]).

mod common;

mod accounts;
mod audit_events;
mod authz;
mod bad_input;
mod encryption;
mod jwks;
mod login_concurrency;
mod login_throttle_purge;
mod messaging;
mod outbox_events;
mod read_audit;
mod remote_verifier;
mod session_cache;
mod session_page_tokens;
mod sessions;
mod signing_rotation;
mod transport;
