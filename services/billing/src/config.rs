//! Billing's settings, under `[billing]`, on top of the platform's `[server]`.
//!
//! The processor defaults to the sandbox (`processor.kind = "sandbox"`: test cards, no money
//! moves), so `carehub up` and the tests need no account anywhere; a deployment names Stripe on
//! purpose. The processor's secret key and webhook secret are `secrecy` types, read from Vault
//! (`processor.vault_path`) in production, never serialized, printed or logged.

use carehub_platform::config::{PlatformConfig, Validate};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The whole configuration of `carehub serve billing`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingConfig {
    pub server: PlatformConfig,
    pub billing: BillingSettings,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingSettings {
    /// Envelope encryption of processor references and card details (brand, last four, expiry).
    pub crypto: carehub_platform::crypto::CryptoConfig,
    /// The currency of invoices made from appointments, and the default of CreateInvoice and
    /// GetStatement (ISO 4217).
    pub default_currency: String,
    pub processor: ProcessorSettings,
    /// How long a PayInvoice or RefundPayment call owns its stored intent while it talks to the
    /// processor (5..=600 s): a retry with the same key meanwhile is refused as "in use"; after
    /// it a retry, or the reconciler, takes the intent over. Longer than `processor.timeout_ms`.
    pub intent_lease_secs: u64,
    /// How often each replica reconciles intents whose call died (crash, timeout) (1..=3600 s).
    pub reconcile_interval_secs: u64,
    /// Intents younger than this are re-sent to the processor with their idempotency key (which
    /// the processor answers from its own record); older ones are looked up instead, because a
    /// processor forgets keys (Stripe after 24 hours) (1..=23).
    pub resend_within_hours: u32,
    /// Webhook signatures older (or newer) than this are refused as replays (1..=3600 s).
    pub webhook_tolerance_secs: u64,
    /// Active payment methods one patient may have (1..=100), counted under the patient's
    /// customer row before the processor is asked to attach another.
    pub max_payment_methods: u32,
    /// AddPaymentMethod calls that may talk to the processor at once (1..=64); each holds a
    /// database transaction meanwhile, so a burst is refused (RESOURCE_EXHAUSTED with
    /// RetryInfo) instead of taking the pool from every other RPC.
    pub attach_slots: u32,
}

impl Default for BillingSettings {
    fn default() -> Self {
        Self {
            crypto: carehub_platform::crypto::CryptoConfig::default(),
            default_currency: "USD".to_owned(),
            processor: ProcessorSettings::default(),
            intent_lease_secs: 30,
            reconcile_interval_secs: 30,
            resend_within_hours: 23,
            webhook_tolerance_secs: 300,
            max_payment_methods: 10,
            attach_slots: 4,
        }
    }
}

/// Which payment processor billing talks to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessorKind {
    /// The local sandbox: documented test tokens, outcomes in memory, no money moves.
    #[default]
    Sandbox,
    /// Stripe's API (PaymentIntents, Refunds, Customers, PaymentMethods).
    Stripe,
}

/// `[billing.processor]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorSettings {
    pub kind: ProcessorKind,
    /// Stripe's API base (a test double's address in tests).
    pub api_base: String,
    /// The processor's secret API key. In production it comes from Vault (`vault_path`).
    #[serde(skip_serializing)]
    pub secret_key: Option<SecretString>,
    /// Secrets that sign webhook events (`whsec_...`); more than one during a rotation. The
    /// webhook (`POST /webhooks/stripe` on the admin port) is mounted only when one is set.
    #[serde(skip_serializing)]
    pub webhook_secrets: Vec<SecretString>,
    /// A KV path (in `server.vault`'s KV mount) holding `secret_key` and `webhook_secret`
    /// (optionally `webhook_secret_previous`), read at start: `carehub/billing/processor`.
    pub vault_path: Option<String>,
    /// One processor request's timeout (100..=60000 ms); an unanswered request's outcome is
    /// unknown until the retry or the reconciler asks again.
    pub timeout_ms: u64,
    /// The sandbox answers after this long (0..=10000 ms): lets a load test or a concurrency
    /// test see calls in flight.
    pub sandbox_latency_ms: u64,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        Self {
            kind: ProcessorKind::Sandbox,
            api_base: "https://api.stripe.com".to_owned(),
            secret_key: None,
            webhook_secrets: Vec::new(),
            vault_path: None,
            timeout_ms: 10_000,
            sandbox_latency_ms: 0,
        }
    }
}

impl Validate for BillingConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        self.server.validate(problems);
        let b = &self.billing;
        let mut within = |ok: bool, what: &str| {
            if !ok {
                problems.push(format!("billing.{what}"));
            }
        };
        within(
            crate::domain::money::Currency::parse(&b.default_currency).is_some(),
            "default_currency must be an ISO 4217 code billing knows (USD, EUR, ...)",
        );
        within(
            (5..=600).contains(&b.intent_lease_secs),
            "intent_lease_secs must be within 5..=600",
        );
        within(
            b.processor.timeout_ms / 1000 < b.intent_lease_secs,
            "processor.timeout_ms must be shorter than intent_lease_secs",
        );
        within(
            (1..=3600).contains(&b.reconcile_interval_secs),
            "reconcile_interval_secs must be within 1..=3600",
        );
        within(
            (1..=23).contains(&b.resend_within_hours),
            "resend_within_hours must be within 1..=23",
        );
        within(
            (1..=3600).contains(&b.webhook_tolerance_secs),
            "webhook_tolerance_secs must be within 1..=3600",
        );
        within(
            (1..=100).contains(&b.max_payment_methods),
            "max_payment_methods must be within 1..=100",
        );
        within(
            (1..=64).contains(&b.attach_slots),
            "attach_slots must be within 1..=64",
        );
        within(
            (100..=60_000).contains(&b.processor.timeout_ms),
            "processor.timeout_ms must be within 100..=60000",
        );
        within(
            b.processor.sandbox_latency_ms <= 10_000,
            "processor.sandbox_latency_ms must be at most 10000",
        );
        if b.processor.kind == ProcessorKind::Stripe {
            within(
                b.processor.api_base.starts_with("https://")
                    || b.processor.api_base.starts_with("http://127.0.0.1")
                    || b.processor.api_base.starts_with("http://localhost"),
                "processor.api_base must be an https URL (http only on the loopback, for tests)",
            );
            within(
                b.processor.secret_key.is_some() || b.processor.vault_path.is_some(),
                "processor.secret_key or processor.vault_path must be set for kind = \"stripe\"",
            );
        }
        if let Err(e) = b.crypto.validate() {
            problems.push(format!("billing.crypto: {e}"));
        }
        if self.server.auth.identity_endpoint.is_none() {
            problems.push(
                "server.auth.identity_endpoint must be set: billing verifies identity's tokens \
                 and looks patients up there"
                    .to_owned(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn secrets_are_never_serialized_or_printed() {
        let mut s = BillingSettings::default();
        s.processor.secret_key = Some(SecretString::from("sk_test_very-secret".to_owned()));
        s.processor.webhook_secrets = vec![SecretString::from("whsec_very-secret".to_owned())];
        let json = serde_json::to_string(&s).unwrap();
        let debug = format!("{s:?}");
        for text in [json, debug] {
            assert!(!text.contains("very-secret"), "{text}");
        }
    }

    #[test]
    fn stripe_needs_a_key_and_sane_bounds() {
        let mut c = BillingConfig::default();
        c.billing.processor.kind = ProcessorKind::Stripe;
        c.billing.default_currency = "XYZ".into();
        c.billing.intent_lease_secs = 1;
        let mut problems = Vec::new();
        c.validate(&mut problems);
        let all = problems.join("\n");
        for what in [
            "default_currency",
            "intent_lease_secs",
            "secret_key or processor.vault_path",
            "identity_endpoint",
        ] {
            assert!(all.contains(what), "{what} not reported in {all}");
        }
    }
}
