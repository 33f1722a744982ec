//! The carehub binary's integration tests: one test binary, one module per area.

mod common;
// How the kit starts identity: identity's own test module, shared by path (the kit cannot depend
// on identity without a cycle).
#[path = "../../../identity/tests/it/launch.rs"]
mod identity_launch;

mod audit_cli;
mod chart_boot;
mod chart_config;
mod chart_services;
mod health;
mod identity_on_vault;
mod keys_cli;
mod loadgen;
mod outbox_cli;
mod scratch_service;
