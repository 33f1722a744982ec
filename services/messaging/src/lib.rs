//! carehub messaging: secure conversations between patients and their care teams (and among
//! staff), live delivery across replicas, abuse reports and blocks, notifications (SMS, email,
//! push) with the SMS consent ledger, and join tokens for video visits.
//!
//! [`SERVICE`] describes messaging to the platform's service kit (`carehub serve messaging`,
//! `carehub migrate messaging`, `carehub up`, and the test kit's `TestService::start`): its
//! only entry point. Messaging verifies identity's tokens (`server.auth.identity_endpoint`),
//! asks identity who users are, and asks records who is on a patient's care team
//! (`messaging.records_endpoint`).

pub mod alerts;
pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod live;
pub mod notify;
pub mod sends;
pub mod store;
pub mod teams;
pub mod video;

use std::sync::Arc;
use std::time::Duration;

use carehub_platform::config::PlatformConfig;
use carehub_platform::crypto::{CryptoConfig, Envelope};
use carehub_platform::directory::Directory;
use carehub_platform::idempotency::IdempotencyStore;
use carehub_platform::kit::{Api, Context, Service, ServiceConfig};
use carehub_platform::with_message_limits;
use carehub_proto::common::v1::account_events_server::AccountEventsServer;
use carehub_proto::messaging::v1::messaging_internal_server::MessagingInternalServer;
use carehub_proto::messaging::v1::messaging_service_server::MessagingServiceServer;
use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::config::{MessagingConfig, MessagingSettings};
use crate::live::Hub;
use crate::teams::CareTeams;

/// Messaging's embedded migrations.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Everything a handler needs.
pub struct AppState {
    pub pool: PgPool,
    pub settings: MessagingSettings,
    /// Envelope encryption under each conversation's subject (the patient, or the staff
    /// conversation itself).
    pub crypto: Envelope,
    /// Answers of mutating RPCs kept for retries, sealed under the KEK.
    pub idempotency: IdempotencyStore,
    /// Identity, asked who users are.
    pub directory: Directory,
    /// Records, asked who is on a patient's care team (cached briefly).
    pub teams: CareTeams,
    /// This replica's live subscriptions.
    pub hub: Arc<Hub>,
    /// The group commit of sends.
    pub sends: sends::Sends,
    /// Care conversations already read, for sends.
    pub care_conversations: store::conversations::CareConversations,
    /// Slots for live streams (`messaging.max_streams`).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Slots for uploads in progress (`messaging.max_concurrent_uploads`).
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// Queues cross-service calls (identity's account actions) in the caller's transaction.
    pub outbox: carehub_platform::outbox::Outbox,
    /// Notification channels and their delivery.
    pub notifications: notify::Notifications,
    /// Video visits' SFU and token signing.
    pub video: video::Video,
}

/// Messaging's description for the platform's service kit.
pub struct MessagingDef;

/// The one value the binary needs.
pub static SERVICE: MessagingDef = MessagingDef;

/// What a started messaging hands back beside its server.
pub struct MessagingHandle {
    pub state: Arc<AppState>,
}

impl ServiceConfig for MessagingConfig {
    fn server(&self) -> &PlatformConfig {
        &self.server
    }
    fn server_mut(&mut self) -> &mut PlatformConfig {
        &mut self.server
    }
}

fn slots(n: u32) -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(usize::try_from(n).unwrap_or(1)))
}

impl Service for MessagingDef {
    type Config = MessagingConfig;
    type Handle = MessagingHandle;
    const NAME: &'static str = "messaging";
    const ABOUT: &'static str =
        "secure conversations, live delivery, abuse handling, notifications, video visits";

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn crypto(&self, config: &MessagingConfig) -> CryptoConfig {
        config.messaging.crypto.clone()
    }

    async fn build(
        &self,
        ctx: Context,
        config: &MessagingConfig,
    ) -> anyhow::Result<Api<MessagingHandle>> {
        let Context {
            pool,
            crypto,
            idempotency,
            server,
            tls,
            keys,
            outbox,
            ..
        } = ctx;
        let identity = server.auth.identity_endpoint.as_deref().ok_or_else(|| {
            anyhow::anyhow!("server.auth.identity_endpoint must be set for messaging")
        })?;
        let records = config
            .messaging
            .records_endpoint
            .as_deref()
            .ok_or_else(|| {
                anyhow::anyhow!("messaging.records_endpoint must be set for messaging")
            })?;
        let identity = carehub_platform::client::connect_lazy(identity, &tls, "identity")?;
        let records = carehub_platform::client::connect_lazy(records, &tls, "records")?;
        let settings = config.messaging.clone();
        let hub = Arc::new(Hub::default());
        let notifications =
            notify::Notifications::new(&settings.notifications, identity.clone(), &keys)?;
        let video = video::Video::new(&settings.video, &keys)?;
        let state = Arc::new(AppState {
            directory: Directory::new(identity),
            teams: CareTeams::new(
                records,
                Duration::from_secs(u64::from(settings.care_team_cache_secs)),
            ),
            hub: hub.clone(),
            sends: sends::Sends::spawn(pool.clone(), hub.clone(), settings.new_message_alert_secs),
            care_conversations: Default::default(),
            streams: slots(settings.max_streams),
            uploads: slots(settings.max_concurrent_uploads),
            pool: pool.clone(),
            crypto,
            idempotency,
            outbox,
            notifications,
            video,
            settings,
        });
        live::spawn(
            hub,
            pool,
            Duration::from_millis(config.messaging.catch_up_ms),
        );
        notify::spawn_workers(&state);
        alerts::spawn(&state);
        let api = api::MessagingApi {
            state: state.clone(),
        };
        let limits = &server.limits;
        let drain_hub = state.hub.clone();
        Ok(Api::new(
            api::policy::policy(),
            MessagingHandle {
                state: state.clone(),
            },
        )
        .on_drain(move || drain_hub.close_all())
        .admin_routes(notify::routes(state))
        .grpc(with_message_limits!(
            MessagingServiceServer::new(api.clone()),
            limits
        ))
        .grpc(with_message_limits!(
            MessagingInternalServer::new(api.clone()),
            limits
        ))
        .grpc(with_message_limits!(AccountEventsServer::new(api), limits)))
    }
}
