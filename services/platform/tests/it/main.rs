//! The platform's integration tests: one test binary, one module per area.

mod common;
// First, so that `both_backends!` is in scope in the modules below.
#[macro_use]
mod vault_support;

mod audit;
mod audit_rpc;
mod audit_trace;
mod crypto;
mod crypto_rotation;
mod idempotency;
mod keys_file;
mod mtls;
mod probes;
mod trace_propagation;
mod vault_keys;
mod vault_outage;
mod vault_pki;
mod vault_request_path;
