//! carehub billing: the patient's processor customer and payment methods (processor tokens
//! only), the price list, invoices that follow appointments, payments that never happen twice,
//! refunds, processor webhooks, receipts, statements and reconciliation.
//!
//! [`SERVICE`] describes billing to the platform's service kit (`carehub serve billing`,
//! `carehub migrate billing`, `carehub up`, and the test kit's `TestService::start`): its only
//! entry point. Billing verifies identity's tokens (`server.auth.identity_endpoint`) and asks
//! identity who patients are; scheduling's outbox delivers appointment events to it
//! (`carehub.common.v1.AppointmentEvents`); the processor sits behind [`processor::Processor`].

pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod processor;
pub mod reconcile;
pub mod store;

use std::sync::Arc;

use carehub_platform::config::PlatformConfig;
use carehub_platform::crypto::{CryptoConfig, Envelope};
use carehub_platform::directory::Directory;
use carehub_platform::idempotency::IdempotencyStore;
use carehub_platform::kit::{Api, Context, Service, ServiceConfig};
use carehub_platform::with_message_limits;
use carehub_proto::billing::v1::billing_service_server::BillingServiceServer;
use carehub_proto::common::v1::appointment_events_server::AppointmentEventsServer;
use secrecy::SecretString;
use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::config::{BillingConfig, BillingSettings};
use crate::domain::money::Currency;
use crate::processor::sandbox::SandboxProcessor;
use crate::processor::SharedProcessor;

/// Billing's embedded migrations.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Everything a handler needs.
pub struct AppState {
    pub pool: PgPool,
    pub settings: BillingSettings,
    /// The default currency (`billing.default_currency`, validated at start).
    pub currency: Currency,
    /// Envelope encryption under each patient's data key.
    pub crypto: Envelope,
    /// Answers of mutating RPCs kept for retries, sealed under the KEK.
    pub idempotency: IdempotencyStore,
    /// Identity, asked whether a patient exists.
    pub directory: Directory,
    /// The payment processor (sandbox or Stripe).
    pub processor: SharedProcessor,
    /// Secrets that sign the processor's webhook events (empty: the webhook is not mounted).
    pub webhook_secrets: Vec<SecretString>,
    /// Slots of AddPaymentMethod calls at the processor (`billing.attach_slots`).
    pub attach_slots: tokio::sync::Semaphore,
}

/// Billing's description for the platform's service kit.
pub struct BillingDef;

/// The one value the binary needs.
pub static SERVICE: BillingDef = BillingDef;

/// What a started billing hands back beside its server.
pub struct BillingHandle {
    pub state: Arc<AppState>,
    /// The sandbox processor, when that is the processor (tests inspect its charges).
    pub sandbox: Option<Arc<SandboxProcessor>>,
}

impl ServiceConfig for BillingConfig {
    fn server(&self) -> &PlatformConfig {
        &self.server
    }
    fn server_mut(&mut self) -> &mut PlatformConfig {
        &mut self.server
    }
}

impl Service for BillingDef {
    type Config = BillingConfig;
    type Handle = BillingHandle;
    const NAME: &'static str = "billing";
    const ABOUT: &'static str =
        "payment methods (processor tokens), price list, invoices, payments, refunds, processor webhooks, receipts, statements";

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn crypto(&self, config: &BillingConfig) -> CryptoConfig {
        config.billing.crypto.clone()
    }

    async fn build(
        &self,
        ctx: Context,
        config: &BillingConfig,
    ) -> anyhow::Result<Api<BillingHandle>> {
        let Context {
            pool,
            crypto,
            idempotency,
            server,
            tls,
            ..
        } = ctx;
        let identity = server.auth.identity_endpoint.as_deref().ok_or_else(|| {
            anyhow::anyhow!("server.auth.identity_endpoint must be set for billing")
        })?;
        let identity = carehub_platform::client::connect_lazy(identity, &tls, "identity")?;
        let currency = Currency::parse(&config.billing.default_currency).ok_or_else(|| {
            anyhow::anyhow!("billing.default_currency is not an ISO 4217 code billing knows")
        })?;
        let secrets = processor::secrets::load(&config.billing.processor, &server).await?;
        let (processor, sandbox) = processor::build(&config.billing.processor, &secrets)?;
        let state = Arc::new(AppState {
            directory: Directory::new(identity),
            pool,
            currency,
            crypto,
            idempotency,
            processor,
            webhook_secrets: secrets.webhook_secrets,
            attach_slots: tokio::sync::Semaphore::new(config.billing.attach_slots as usize),
            settings: config.billing.clone(),
        });
        reconcile::spawn(state.clone());
        let api = api::BillingApi {
            state: state.clone(),
        };
        let limits = &server.limits;
        let mut built = Api::new(
            api::policy::policy(),
            BillingHandle {
                state: state.clone(),
                sandbox,
            },
        );
        if !state.webhook_secrets.is_empty() {
            built = built.admin_routes(api::webhooks::routes(state.clone()));
        }
        Ok(built
            .grpc(with_message_limits!(
                BillingServiceServer::new(api.clone()),
                limits
            ))
            .grpc(with_message_limits!(
                AppointmentEventsServer::new(api),
                limits
            )))
    }
}
