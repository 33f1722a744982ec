//! carehub scheduling: providers' availability, DST-correct slot search, holds, appointments
//! that cannot overlap, consultation requests, intake, reminders and calendar feeds.
//!
//! [`SERVICE`] describes scheduling to the platform's service kit (`carehub serve scheduling`,
//! `carehub migrate scheduling`, `carehub up`, and the test kit's `TestService::start`): its
//! only entry point. Scheduling verifies identity's tokens (`server.auth.identity_endpoint`)
//! and asks identity who users are; everything it means for other services goes through its
//! outbox: the booked provider joins the care team and intake answers reach the chart
//! (`records`), reminders and video visits (`messaging`), appointment events (`billing`).

pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod reminders;
pub mod store;

use std::sync::Arc;

use carehub_platform::config::PlatformConfig;
use carehub_platform::crypto::{CryptoConfig, Envelope};
use carehub_platform::directory::Directory;
use carehub_platform::idempotency::IdempotencyStore;
use carehub_platform::kit::{Api, Context, Service, ServiceConfig};
use carehub_platform::with_message_limits;
use carehub_proto::common::v1::account_events_server::AccountEventsServer;
use carehub_proto::scheduling::v1::scheduling_service_server::SchedulingServiceServer;
use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::config::{SchedulingConfig, SchedulingSettings};

/// Scheduling's embedded migrations.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Everything a handler needs.
pub struct AppState {
    pub pool: PgPool,
    pub settings: SchedulingSettings,
    /// Envelope encryption under each patient's data key.
    pub crypto: Envelope,
    /// Answers of mutating RPCs kept for retries, sealed under the KEK.
    pub idempotency: IdempotencyStore,
    /// Identity, asked who users are (a patient booked for, a provider listed).
    pub directory: Directory,
    /// Queues effects on records, messaging and billing in the caller's transaction.
    pub outbox: carehub_platform::outbox::Outbox,
    /// How often each calendar feed is served, and how many are rendered at once.
    pub feed_gate: api::feeds::FeedGate,
}

/// Scheduling's description for the platform's service kit.
pub struct SchedulingDef;

/// The one value the binary needs.
pub static SERVICE: SchedulingDef = SchedulingDef;

/// What a started scheduling hands back beside its server.
pub struct SchedulingHandle {
    pub state: Arc<AppState>,
}

impl ServiceConfig for SchedulingConfig {
    fn server(&self) -> &PlatformConfig {
        &self.server
    }
    fn server_mut(&mut self) -> &mut PlatformConfig {
        &mut self.server
    }
}

impl Service for SchedulingDef {
    type Config = SchedulingConfig;
    type Handle = SchedulingHandle;
    const NAME: &'static str = "scheduling";
    const ABOUT: &'static str =
        "availability, slot search, holds, appointments, consultation requests, reminders, calendar feeds";

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn crypto(&self, config: &SchedulingConfig) -> CryptoConfig {
        config.scheduling.crypto.clone()
    }

    async fn build(
        &self,
        ctx: Context,
        config: &SchedulingConfig,
    ) -> anyhow::Result<Api<SchedulingHandle>> {
        let Context {
            pool,
            crypto,
            idempotency,
            server,
            tls,
            outbox,
            ..
        } = ctx;
        let identity = server.auth.identity_endpoint.as_deref().ok_or_else(|| {
            anyhow::anyhow!("server.auth.identity_endpoint must be set for scheduling")
        })?;
        let identity = carehub_platform::client::connect_lazy(identity, &tls, "identity")?;
        let state = Arc::new(AppState {
            directory: Directory::new(identity),
            pool,
            crypto,
            idempotency,
            outbox,
            feed_gate: api::feeds::FeedGate::new(config.scheduling.feed_fetches_per_minute),
            settings: config.scheduling.clone(),
        });
        reminders::spawn(state.clone());
        let api = api::SchedulingApi {
            state: state.clone(),
        };
        let limits = &server.limits;
        Ok(Api::new(
            api::policy::policy(),
            SchedulingHandle {
                state: state.clone(),
            },
        )
        .admin_routes(api::feeds::routes(state))
        .grpc(with_message_limits!(
            SchedulingServiceServer::new(api.clone()),
            limits
        ))
        .grpc(with_message_limits!(AccountEventsServer::new(api), limits)))
    }
}
