//! The carehub binary's integration tests: one test binary, one module per area.

mod common;

mod audit_cli;
mod billing_cli;
mod billing_crash;
mod chart_boot;
mod chart_config;
mod chart_services;
mod demo;
mod health;
mod identity_on_vault;
mod keys_cli;
mod loadgen;
mod monitoring;
mod outbox_cli;
mod readme_evidence;
mod records_cli;
mod scratch_service;
