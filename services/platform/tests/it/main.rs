//! The platform's integration tests: one test binary, one module per area.

// `both_backends!` (the Vault tests against the double and a live Vault) for every module.
#[macro_use]
extern crate carehub_testkit;

mod common;

mod audit;
mod audit_page_tokens;
mod audit_rpc;
mod audit_sequencer;
mod audit_trace;
mod call;
mod crypto;
mod crypto_rotation;
mod db_pool;
mod idempotency;
mod keys_file;
mod mtls;
mod outbox;
mod probes;
mod trace_propagation;
mod vault_keys;
mod vault_outage;
mod vault_pki;
mod vault_request_path;
