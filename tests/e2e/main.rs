//! End-to-end tests: the five services started separately (own tasks, ports, databases and
//! certificates, keys from the Vault API) in one process per test, over mTLS.
//!
//! Each test installs the process-wide tracer (spans go to its own OTLP receiver), so each
//! runs in a process of its own: nextest does that; under `cargo test` the test re-runs itself
//! as the only test of a child process (`carehub_testkit::process::in_own_process`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod journey;
mod restart;
mod suspension;
