//! Every service's audit chain, verified the way `carehub audit verify` does it: from the
//! service's database with its audit-checkpoint keys (from Vault), once the sequencer has
//! sealed everything queued.

use std::time::Duration;

use carehub_platform::audit::{self, VerifyRange, VerifyReport};
use carehub_platform::kit::Service;

use crate::{Node, Suite};

/// Waits (up to 30 s) until nothing is queued for `node`'s chain, then verifies the whole
/// chain and its checkpoints.
pub async fn verify_node<S: Service>(node: &Node<S>) -> VerifyReport {
    let pool = node.pool();
    crate::eventually(
        &format!("{}'s audit queue sealed", S::NAME),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let lag = audit::sequencer::sealing_lag(pool, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("{}'s audit queue: {e}", S::NAME));
            if lag.queued == 0 {
                Ok(())
            } else {
                Err(format!("{lag:?}"))
            }
        },
    )
    .await;
    let keys = carehub_platform::keys::from_config(S::NAME, node.server_config())
        .await
        .unwrap_or_else(|e| panic!("{}'s keys: {e:#}", S::NAME));
    audit::verify(pool, keys.as_ref(), S::NAME, &VerifyRange::default())
        .await
        .unwrap_or_else(|e| panic!("reading {}'s audit chain: {e}", S::NAME))
}

impl Suite {
    /// The audit verification of every service, in [`crate::suite::SERVICES`] order.
    pub async fn verify_audit(&self) -> Vec<VerifyReport> {
        vec![
            verify_node(&self.identity).await,
            verify_node(&self.records).await,
            verify_node(&self.messaging).await,
            verify_node(&self.scheduling).await,
            verify_node(&self.billing).await,
        ]
    }
}
