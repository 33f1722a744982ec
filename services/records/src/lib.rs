//! carehub records: the personal health record (the chart), care teams and break-glass access.
//!
//! [`SERVICE`] describes records to the platform's service kit (`carehub serve records`,
//! `carehub migrate records`, `carehub up`, and the test kit's `TestService::start`): its only
//! entry point. Records verifies identity's tokens (`server.auth.identity_endpoint`) and asks
//! identity who care-team members are.

pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod fhir;
pub mod store;

use std::sync::Arc;

use carehub_platform::config::PlatformConfig;
use carehub_platform::crypto::{CryptoConfig, Envelope};
use carehub_platform::idempotency::IdempotencyStore;
use carehub_platform::kit::{Api, Context, Service, ServiceConfig};
use carehub_platform::with_message_limits;
use carehub_proto::common::v1::account_events_server::AccountEventsServer;
use carehub_proto::records::v1::records_internal_server::RecordsInternalServer;
use carehub_proto::records::v1::records_service_server::RecordsServiceServer;
use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::config::{RecordsConfig, RecordsSettings};
use carehub_platform::directory::Directory;

/// Records' embedded migrations.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Everything a handler needs.
pub struct AppState {
    pub pool: PgPool,
    pub settings: RecordsSettings,
    /// Envelope encryption of the chart under each patient's data key.
    pub crypto: Envelope,
    /// Answers of mutating RPCs kept for retries, sealed under the KEK (they carry PHI).
    pub idempotency: IdempotencyStore,
    /// Identity, asked who care-team members and patients are.
    pub directory: Directory,
    /// The audit trails the patient's access log merges (records', identity's, others').
    pub audit_sources: Arc<Vec<api::access_log::Source>>,
    /// Slots for uploads in progress (`records.max_concurrent_uploads`).
    pub uploads: Arc<tokio::sync::Semaphore>,
}

/// Records' description for the platform's service kit.
pub struct RecordsDef;

/// The one value the binary needs.
pub static SERVICE: RecordsDef = RecordsDef;

/// What a started records hands back beside its server.
pub struct RecordsHandle {
    pub state: Arc<AppState>,
}

impl ServiceConfig for RecordsConfig {
    fn server(&self) -> &PlatformConfig {
        &self.server
    }
    fn server_mut(&mut self) -> &mut PlatformConfig {
        &mut self.server
    }
}

impl Service for RecordsDef {
    type Config = RecordsConfig;
    type Handle = RecordsHandle;
    const NAME: &'static str = "records";
    const ABOUT: &'static str = "the personal health record, care teams, break-glass access";

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn crypto(&self, config: &RecordsConfig) -> CryptoConfig {
        config.records.crypto.clone()
    }

    async fn build(
        &self,
        ctx: Context,
        config: &RecordsConfig,
    ) -> anyhow::Result<Api<RecordsHandle>> {
        let Context {
            pool,
            crypto,
            idempotency,
            server,
            tls,
            keys,
            ..
        } = ctx;
        let endpoint = server.auth.identity_endpoint.as_deref().ok_or_else(|| {
            anyhow::anyhow!("server.auth.identity_endpoint must be set for records")
        })?;
        let directory = Directory::new(carehub_platform::client::connect_lazy(
            endpoint, &tls, "identity",
        )?);
        let own_trail = carehub_platform::audit::service::AuditLogApi {
            pool: pool.clone(),
            keys: keys.clone(),
            service: Self::NAME,
            sealer: Arc::new(carehub_platform::audit::ClientSealer::new(Self::NAME, keys)),
        };
        let mut other_trails = Vec::new();
        for (name, endpoint) in &config.records.audit_sources {
            other_trails.push((
                name.clone(),
                carehub_platform::client::connect_lazy(endpoint, &tls, name)?,
            ));
        }
        let audit_sources = api::access_log::sources(own_trail, directory.channel(), other_trails);
        let state = Arc::new(AppState {
            pool,
            settings: config.records.clone(),
            crypto,
            idempotency,
            directory,
            audit_sources,
            uploads: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(config.records.max_concurrent_uploads).unwrap_or(1),
            )),
        });
        api::erasure::spawn_eraser(
            &state,
            std::time::Duration::from_secs(config.records.erasure_check_secs),
        );
        let api = api::RecordsApi {
            state: state.clone(),
        };
        let limits = &server.limits;
        Ok(Api::new(api::policy::policy(), RecordsHandle { state })
            .grpc(with_message_limits!(
                RecordsServiceServer::new(api.clone()),
                limits
            ))
            .grpc(with_message_limits!(
                RecordsInternalServer::new(api.clone()),
                limits
            ))
            .grpc(with_message_limits!(AccountEventsServer::new(api), limits)))
    }
}
