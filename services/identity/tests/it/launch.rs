//! How the test kit starts identity (shared with the carehub binary's tests, which include this
//! file by path: a dependency from the kit on identity would be a cycle).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use carehub_identity::config::{IdentityConfig, IdentitySettings, NotifierKind};
use carehub_identity::Identity;
use carehub_platform::config::PlatformConfig;
use carehub_platform::keys::KeySource;
use carehub_testkit::service::Launch;

pub const TRUST_DOMAIN: &str = "carehub.local";

/// How the kit starts identity. Today through `carehub_identity::serve[_with_keys]`; when the
/// platform's `Service` description lands, the kit starts identity through it and this impl
/// goes away (see `carehub_testkit::service`).
pub struct IdentityUnderTest;

impl Launch for IdentityUnderTest {
    type Config = IdentityConfig;
    type Running = Identity;
    const NAME: &'static str = "identity";

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &carehub_identity::MIGRATOR
    }

    /// The in-memory notification sandbox and argon2 at its minimum allowed costs.
    fn config(server: PlatformConfig) -> IdentityConfig {
        IdentityConfig {
            server,
            identity: IdentitySettings {
                notifier: NotifierKind::MemorySandbox,
                argon2_memory_kib: 19 * 1024,
                argon2_iterations: 2,
                argon2_parallelism: 1,
                ..IdentitySettings::default()
            },
        }
    }

    async fn start(
        config: IdentityConfig,
        keys: Option<Arc<dyn KeySource>>,
    ) -> anyhow::Result<Identity> {
        match keys {
            Some(keys) => {
                carehub_identity::serve_with_keys(config, keys, std::future::pending()).await
            }
            None => carehub_identity::serve(config, std::future::pending()).await,
        }
    }

    fn addrs(identity: &Identity) -> (SocketAddr, SocketAddr) {
        (identity.server.grpc_addr, identity.server.admin_addr)
    }

    async fn stop(identity: Identity) {
        let _ = identity.server.shutdown().await;
        identity.state.pool.close().await;
    }
}
