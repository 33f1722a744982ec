//! The payment processor behind one trait: billing's code never names a processor.
//!
//! Two implementations: [`sandbox::SandboxProcessor`] (documented test tokens, outcomes kept in
//! memory, no money moves; `carehub up` and the tests) and [`stripe::StripeProcessor`]
//! (PaymentIntents, Refunds, Customers and PaymentMethods over Stripe's REST API with the
//! `Idempotency-Key` header). [`secrets`] reads the processor's secrets from Vault.
//!
//! Every call that moves money carries an idempotency key that billing derives from its own
//! stored intent (`carehub-payment-<id>`, `carehub-refund-<id>`): the processor answers a
//! repeated key from its record of the first request, which is what makes a retry after a
//! timeout or a crash charge once.

pub mod sandbox;
pub mod secrets;
pub mod stripe;

use std::sync::Arc;

use uuid::Uuid;

/// The card a token stands for, as the processor reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardDetails {
    /// The processor's id of the attached payment method (`pm_...`).
    pub processor_method_id: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: u32,
    pub exp_year: u32,
}

/// One charge: confirm and capture `amount_minor` of `currency` on the customer's method.
#[derive(Clone, Debug)]
pub struct ChargeRequest<'a> {
    /// `carehub-payment-<payment id>`: the processor's idempotency key.
    pub idempotency_key: &'a str,
    /// Billing's payment id, sent as metadata (`carehub_payment_id`) so that a charge can be
    /// found again when its key has expired.
    pub payment_id: Uuid,
    pub customer: &'a str,
    pub payment_method: &'a str,
    pub amount_minor: i64,
    /// ISO 4217, upper case (processors that want lower case convert).
    pub currency: &'a str,
}

/// Where a charge stands at the processor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeStatus {
    Succeeded,
    /// Accepted; the outcome comes later as an event.
    Processing,
    /// The issuer wants the cardholder to authenticate; the outcome comes later as an event.
    RequiresAction,
    /// Declined (`card_declined`, `insufficient_funds`, ...) or cancelled.
    Failed {
        code: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeOutcome {
    /// The processor's id of the charge (`pi_...`).
    pub processor_payment_id: String,
    pub status: ChargeStatus,
    /// What was captured (0 unless succeeded).
    pub captured_minor: i64,
}

#[derive(Clone, Debug)]
pub struct RefundRequest<'a> {
    /// `carehub-refund-<refund id>`.
    pub idempotency_key: &'a str,
    pub refund_id: Uuid,
    pub processor_payment_id: &'a str,
    pub amount_minor: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Failed { code: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundOutcome {
    /// The processor's id of the refund (`re_...`).
    pub processor_refund_id: String,
    pub status: RefundStatus,
}

/// Why a processor call has no outcome.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProcessorError {
    /// The outcome is unknown (network error, timeout, 5xx, 429, or the processor's own "key in
    /// use"): ask again with the same idempotency key.
    #[error("processor unavailable: {0}")]
    Unavailable(String),
    /// The processor refused the request itself (an unknown or used token, a detached method):
    /// asking again will not help. `code` is the processor's error code.
    #[error("processor refused the request: {code}")]
    Rejected { code: String },
}

/// A payment processor. Implementations must be safe to call concurrently and must pass every
/// `idempotency_key` on, so that a repeated call is answered from the first.
#[async_trait::async_trait]
pub trait Processor: Send + Sync + 'static {
    /// `sandbox` or `stripe`: stored with each customer, shown by `carehub billing reconcile`.
    fn name(&self) -> &'static str;

    /// Creates the processor's customer for billing's customer `customer_id` (metadata only:
    /// no name, no email — the processor needs neither to charge a saved card).
    async fn create_customer(
        &self,
        idempotency_key: &str,
        customer_id: Uuid,
    ) -> Result<String, ProcessorError>;

    /// Attaches the card behind `token` (`pm_...` from Stripe.js, or a sandbox test token) to
    /// `customer` and reports what card it is.
    async fn attach_payment_method(
        &self,
        customer: &str,
        token: &str,
    ) -> Result<CardDetails, ProcessorError>;

    /// Detaches a payment method (removing an already detached one succeeds).
    async fn detach_payment_method(&self, processor_method_id: &str) -> Result<(), ProcessorError>;

    /// Creates, confirms and captures a charge (off-session, the saved card).
    async fn charge(&self, req: &ChargeRequest<'_>) -> Result<ChargeOutcome, ProcessorError>;

    /// The charge made for billing's `payment_id` (by its metadata), if any: how a pending
    /// intent older than the processor's key retention is settled without charging again.
    async fn find_charge(&self, payment_id: Uuid) -> Result<Option<ChargeOutcome>, ProcessorError>;

    /// The current state of a charge the processor knows.
    async fn get_charge(&self, processor_payment_id: &str)
        -> Result<ChargeOutcome, ProcessorError>;

    /// Refunds part or all of a captured charge.
    async fn refund(&self, req: &RefundRequest<'_>) -> Result<RefundOutcome, ProcessorError>;
}

pub type SharedProcessor = Arc<dyn Processor>;

/// A processor event (webhook), reduced to what billing acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessorEvent {
    /// The processor's event id (`evt_...`): applied once.
    pub id: String,
    /// The event's type as the processor names it (`payment_intent.succeeded`).
    pub kind: String,
    /// When the processor created the event (Unix seconds): orders events of one object.
    pub created: i64,
    pub object: EventObject,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventObject {
    /// A charge's new state (`payment_intent.*`).
    Charge {
        /// Billing's payment id from the metadata, when billing made the charge.
        payment_id: Option<Uuid>,
        outcome: ChargeOutcome,
    },
    /// A refund's new state (`refund.created`, `refund.updated`, `refund.failed`).
    Refund {
        /// Billing's refund id from the metadata, when billing asked for the refund.
        refund_id: Option<Uuid>,
        processor_payment_id: String,
        amount_minor: i64,
        outcome: RefundOutcome,
    },
    /// Anything else: recorded (so that it is applied once) and otherwise ignored.
    Other,
}

/// The configured processor, and the sandbox itself when that is it (tests inspect it).
pub fn build(
    settings: &crate::config::ProcessorSettings,
    secrets: &secrets::ProcessorSecrets,
) -> anyhow::Result<(SharedProcessor, Option<Arc<sandbox::SandboxProcessor>>)> {
    use crate::config::ProcessorKind;
    match settings.kind {
        ProcessorKind::Sandbox => {
            let sandbox = Arc::new(sandbox::SandboxProcessor::new(
                std::time::Duration::from_millis(settings.sandbox_latency_ms),
            ));
            Ok((sandbox.clone(), Some(sandbox)))
        }
        ProcessorKind::Stripe => {
            let key = secrets.secret_key.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "billing.processor: Stripe needs a secret key (secret_key or vault_path)"
                )
            })?;
            let stripe = stripe::StripeProcessor::new(
                &settings.api_base,
                key,
                std::time::Duration::from_millis(settings.timeout_ms),
            )?;
            Ok((Arc::new(stripe), None))
        }
    }
}
