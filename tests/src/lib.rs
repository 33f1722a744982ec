//! The end-to-end harness: the five carehub services started separately in one test process,
//! as a deployment runs them.
//!
//! - [`suite::Suite`] starts identity, records, messaging, scheduling and billing through the
//!   platform's service kit, each on its own ports (reserved up front: the outbox targets and
//!   the other services' settings name them), its own database, its own certificate from one
//!   test CA, and its keys from the Vault API (the in-process double, or a real Vault when
//!   `VAULT_ADDR` and `VAULT_TOKEN` are set). It wires them as `carehub up` does and exports
//!   every span to an in-process OTLP receiver. One service can be stopped and started again on
//!   the same ports and database ([`suite::Node::stop`], [`suite::Node::start`]).
//! - [`flows`] — signed-in users and the few direct RPC steps the tests take beside the
//!   journey (a clinic with a bookable provider, a booking with a chosen trace id).
//! - [`inbox`] — where the journey reads the verification codes: messaging's sandbox.
//! - [`audit`] — waits for the sequencers and verifies every service's audit chain.
//!
//! Panics are the harness's way to fail a test, as in the test kit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod audit;
pub mod flows;
pub mod inbox;
pub mod suite;

pub use suite::{Node, Suite};

/// Polls `check` every `every` until it answers `Ok`, or panics after `within` naming `what`
/// was awaited and what the last look saw (the `Err` text).
pub async fn eventually<T, F, Fut>(
    what: &str,
    within: std::time::Duration,
    every: std::time::Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(found) => return found,
            Err(last) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}: not within {within:?}; last seen: {last}"
                );
            }
        }
        tokio::time::sleep(every).await;
    }
}
