//! A card processor that lives in memory: `carehub up` and the tests take payments without an
//! account anywhere, and no money moves.
//!
//! It exists to exercise billing's hardest promise, that a payment happens once, against the
//! same rules a real processor plays by: an idempotency key is answered from the record of its
//! first request (a repeat never captures twice, a key reused with other parameters is refused),
//! a charge carries billing's payment id as metadata so it can be found without its key, and
//! refunds never exceed what was captured. The test tokens below trigger the outcomes billing
//! has to survive, including the nastiest one: the money moved and the answer was lost. Every
//! call waits the configured latency first, so that tests and load runs have calls in flight
//! when they retry, race or crash. The inspection methods ([`SandboxProcessor::captures_for`]
//! and friends) let integration tests prove "exactly one payment" from the processor's side.
//!
//! # Test tokens
//!
//! Both Stripe spellings are accepted: `tok_<name>` and `pm_card_<name>`. Attaching one creates
//! a new payment method (`pm_sbx_...`) each time, as Stripe does.
//!
//! | Name (`tok_…` / `pm_card_…`)     | Card              | Charging it                                                       |
//! |----------------------------------|-------------------|-------------------------------------------------------------------|
//! | `visa`                           | visa 4242 12/2034 | succeeds                                                          |
//! | `mastercard`                     | mastercard 4444   | succeeds                                                          |
//! | `amex`                           | amex 8431         | succeeds                                                          |
//! | `chargeDeclined`                 | visa 0002         | `Failed { code: "card_declined" }`                                |
//! | `chargeDeclinedInsufficientFunds`| visa 9995         | `Failed { code: "insufficient_funds" }`                           |
//! | `threeDSecureRequired`           | visa 3220         | `RequiresAction`, nothing captured until [`SandboxProcessor::complete_authentication`] |
//! | `networkErrorAfterCapture`       | visa 0259         | the first call per idempotency key captures, then answers `Unavailable("connection reset after capture")`; repeats answer the recorded `Succeeded` |
//!
//! Every card expires 12/2034. Any other token is refused with `resource_missing`.
//!
//! # Errors (`ProcessorError::Rejected { code }`)
//!
//! | Code                        | When                                                          |
//! |-----------------------------|---------------------------------------------------------------|
//! | `resource_missing`          | unknown token, customer, payment method or charge             |
//! | `payment_method_unattached` | charging a detached payment method                            |
//! | `payment_method_invalid_parameter` | charging a method attached to another customer        |
//! | `idempotency_key_reused`    | a key repeated with other parameters                          |
//! | `amount_too_small`          | a charge or refund of 0 or less                               |
//! | `charge_not_refundable`     | refunding a charge that did not succeed                       |
//! | `charge_already_refunded`   | refunding a charge with nothing left to refund                |
//! | `amount_too_large`          | a refund larger than what is left of the charge               |
//!
//! Refused requests are not recorded against their key (as at Stripe, a request that fails
//! validation saves no idempotent result), so a corrected retry with the same key goes through.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::distributions::Alphanumeric;
use rand::Rng;
use uuid::Uuid;

use super::*;

/// What a card does when it is charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Succeeds,
    Declines(&'static str),
    RequiresAction,
    NetworkErrorAfterCapture,
}

/// A documented test token's card.
struct TestCard {
    brand: &'static str,
    last4: &'static str,
    behaviour: Behaviour,
}

const EXP_MONTH: u32 = 12;
const EXP_YEAR: u32 = 2034;

/// The card behind a test token, in either Stripe spelling.
fn test_card(token: &str) -> Option<TestCard> {
    let name = token
        .strip_prefix("tok_")
        .or_else(|| token.strip_prefix("pm_card_"))?;
    let (brand, last4, behaviour) = match name {
        "visa" => ("visa", "4242", Behaviour::Succeeds),
        "mastercard" => ("mastercard", "4444", Behaviour::Succeeds),
        "amex" => ("amex", "8431", Behaviour::Succeeds),
        "chargeDeclined" => ("visa", "0002", Behaviour::Declines("card_declined")),
        "chargeDeclinedInsufficientFunds" => {
            ("visa", "9995", Behaviour::Declines("insufficient_funds"))
        }
        "threeDSecureRequired" => ("visa", "3220", Behaviour::RequiresAction),
        "networkErrorAfterCapture" => ("visa", "0259", Behaviour::NetworkErrorAfterCapture),
        _ => return None,
    };
    Some(TestCard {
        brand,
        last4,
        behaviour,
    })
}

#[derive(Debug)]
struct Method {
    customer: String,
    behaviour: Behaviour,
    detached: bool,
}

/// What an idempotency key of a charge is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ChargeParams {
    customer: String,
    payment_method: String,
    amount_minor: i64,
    currency: String,
}

#[derive(Debug)]
struct Charge {
    /// Creation order, to pick the latest among several charges of one payment.
    seq: u64,
    /// Billing's payment id (the `carehub_payment_id` metadata).
    payment_id: Uuid,
    params: ChargeParams,
    /// Where the charge stands now.
    outcome: ChargeOutcome,
    /// What its idempotency key answers: the outcome as it was first recorded.
    first_answer: ChargeOutcome,
    refunded_minor: i64,
}

/// What an idempotency key of a refund is bound to, and what it answered.
#[derive(Debug)]
struct RefundRecord {
    processor_payment_id: String,
    amount_minor: i64,
    outcome: RefundOutcome,
}

#[derive(Debug, Default)]
struct State {
    /// Customer creation key → customer id.
    customer_keys: HashMap<String, String>,
    /// Customer id → billing's customer id (metadata).
    customers: HashMap<String, Uuid>,
    methods: HashMap<String, Method>,
    /// `pi_...` → charge.
    charges: HashMap<String, Charge>,
    /// Charge idempotency key → `pi_...`.
    charge_keys: HashMap<String, String>,
    /// Refund idempotency key → refund.
    refund_keys: HashMap<String, RefundRecord>,
    next_seq: u64,
}

fn new_id(prefix: &str) -> String {
    let random: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(20)
        .map(char::from)
        .collect();
    format!("{prefix}{random}")
}

fn rejected(code: &str) -> ProcessorError {
    ProcessorError::Rejected { code: code.into() }
}

/// The local stand-in for a card processor. See the module documentation for its test tokens.
#[derive(Debug)]
pub struct SandboxProcessor {
    latency: Duration,
    state: Mutex<State>,
}

impl SandboxProcessor {
    /// A sandbox whose every call first waits `latency`.
    pub fn new(latency: Duration) -> Self {
        SandboxProcessor {
            latency,
            state: Mutex::new(State::default()),
        }
    }

    /// The state. A panic while it was held leaves it consistent (every change is made after
    /// all checks), so a poisoned lock is taken over rather than propagated.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn wait(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }

    /// How many succeeded (captured) charges carry billing's `payment_id`.
    pub fn captures_for(&self, payment_id: Uuid) -> usize {
        self.state()
            .charges
            .values()
            .filter(|c| c.payment_id == payment_id && c.outcome.status == ChargeStatus::Succeeded)
            .count()
    }

    /// Everything captured, over all charges (refunds not deducted).
    pub fn total_captured_minor(&self) -> i64 {
        self.state()
            .charges
            .values()
            .map(|c| c.outcome.captured_minor)
            .sum()
    }

    /// How many charges were recorded, whatever their outcome.
    pub fn charge_count(&self) -> usize {
        self.state().charges.len()
    }

    /// What has been refunded of a charge (0 for an unknown charge).
    pub fn refunded_minor(&self, processor_payment_id: &str) -> i64 {
        self.state()
            .charges
            .get(processor_payment_id)
            .map_or(0, |c| c.refunded_minor)
    }

    /// The cardholder completes 3-D Secure: a `RequiresAction` charge succeeds and is captured.
    /// `None` when the charge is unknown or is not waiting for authentication.
    pub fn complete_authentication(&self, processor_payment_id: &str) -> Option<ChargeOutcome> {
        let mut state = self.state();
        let charge = state.charges.get_mut(processor_payment_id)?;
        if charge.outcome.status != ChargeStatus::RequiresAction {
            return None;
        }
        charge.outcome.status = ChargeStatus::Succeeded;
        charge.outcome.captured_minor = charge.params.amount_minor;
        Some(charge.outcome.clone())
    }

    /// The cardholder fails (or abandons) 3-D Secure: a `RequiresAction` charge fails with
    /// `payment_intent_authentication_failure`, capturing nothing. `None` when the charge is
    /// unknown or is not waiting for authentication.
    pub fn fail_authentication(&self, processor_payment_id: &str) -> Option<ChargeOutcome> {
        let mut state = self.state();
        let charge = state.charges.get_mut(processor_payment_id)?;
        if charge.outcome.status != ChargeStatus::RequiresAction {
            return None;
        }
        charge.outcome.status = ChargeStatus::Failed {
            code: "payment_intent_authentication_failure".into(),
        };
        Some(charge.outcome.clone())
    }

    fn create_customer_now(&self, idempotency_key: &str, customer_id: Uuid) -> String {
        let mut state = self.state();
        if let Some(existing) = state.customer_keys.get(idempotency_key) {
            return existing.clone();
        }
        let id = new_id("cus_sbx_");
        state.customers.insert(id.clone(), customer_id);
        state
            .customer_keys
            .insert(idempotency_key.to_string(), id.clone());
        id
    }

    fn attach_now(&self, customer: &str, token: &str) -> Result<CardDetails, ProcessorError> {
        let mut state = self.state();
        if !state.customers.contains_key(customer) {
            return Err(rejected("resource_missing"));
        }
        let card = test_card(token).ok_or_else(|| rejected("resource_missing"))?;
        let id = new_id("pm_sbx_");
        state.methods.insert(
            id.clone(),
            Method {
                customer: customer.to_string(),
                behaviour: card.behaviour,
                detached: false,
            },
        );
        Ok(CardDetails {
            processor_method_id: id,
            brand: card.brand.into(),
            last4: card.last4.into(),
            exp_month: EXP_MONTH,
            exp_year: EXP_YEAR,
        })
    }

    fn detach_now(&self, processor_method_id: &str) -> Result<(), ProcessorError> {
        let mut state = self.state();
        let method = state
            .methods
            .get_mut(processor_method_id)
            .ok_or_else(|| rejected("resource_missing"))?;
        method.detached = true;
        Ok(())
    }

    fn charge_now(&self, req: &ChargeRequest<'_>) -> Result<ChargeOutcome, ProcessorError> {
        let params = ChargeParams {
            customer: req.customer.to_string(),
            payment_method: req.payment_method.to_string(),
            amount_minor: req.amount_minor,
            currency: req.currency.to_string(),
        };
        let mut state = self.state();

        if let Some(pi) = state.charge_keys.get(req.idempotency_key) {
            let charge = state
                .charges
                .get(pi)
                .ok_or_else(|| ProcessorError::Unavailable("sandbox lost a charge".into()))?;
            if charge.params != params {
                return Err(rejected("idempotency_key_reused"));
            }
            return Ok(charge.first_answer.clone());
        }

        if req.amount_minor <= 0 {
            return Err(rejected("amount_too_small"));
        }
        if !state.customers.contains_key(req.customer) {
            return Err(rejected("resource_missing"));
        }
        let method = state
            .methods
            .get(req.payment_method)
            .ok_or_else(|| rejected("resource_missing"))?;
        if method.detached {
            return Err(rejected("payment_method_unattached"));
        }
        if method.customer != req.customer {
            return Err(rejected("payment_method_invalid_parameter"));
        }
        let behaviour = method.behaviour;

        let pi = new_id("pi_sbx_");
        let (status, captured_minor) = match behaviour {
            Behaviour::Succeeds | Behaviour::NetworkErrorAfterCapture => {
                (ChargeStatus::Succeeded, req.amount_minor)
            }
            Behaviour::Declines(code) => (ChargeStatus::Failed { code: code.into() }, 0),
            Behaviour::RequiresAction => (ChargeStatus::RequiresAction, 0),
        };
        let outcome = ChargeOutcome {
            processor_payment_id: pi.clone(),
            status,
            captured_minor,
        };
        let seq = state.next_seq;
        state.next_seq += 1;
        state.charges.insert(
            pi.clone(),
            Charge {
                seq,
                payment_id: req.payment_id,
                params,
                outcome: outcome.clone(),
                first_answer: outcome.clone(),
                refunded_minor: 0,
            },
        );
        state
            .charge_keys
            .insert(req.idempotency_key.to_string(), pi);

        if behaviour == Behaviour::NetworkErrorAfterCapture {
            return Err(ProcessorError::Unavailable(
                "connection reset after capture".into(),
            ));
        }
        Ok(outcome)
    }

    fn find_charge_now(&self, payment_id: Uuid) -> Option<ChargeOutcome> {
        // Several charges may carry one payment id (keys that expired, or a bug): report a
        // captured one first, since that is the one billing must not charge again for.
        self.state()
            .charges
            .values()
            .filter(|c| c.payment_id == payment_id)
            .max_by_key(|c| (c.outcome.status == ChargeStatus::Succeeded, c.seq))
            .map(|c| c.outcome.clone())
    }

    fn get_charge_now(&self, processor_payment_id: &str) -> Result<ChargeOutcome, ProcessorError> {
        self.state()
            .charges
            .get(processor_payment_id)
            .map(|c| c.outcome.clone())
            .ok_or_else(|| rejected("resource_missing"))
    }

    fn refund_now(&self, req: &RefundRequest<'_>) -> Result<RefundOutcome, ProcessorError> {
        let mut state = self.state();

        if let Some(record) = state.refund_keys.get(req.idempotency_key) {
            if record.processor_payment_id != req.processor_payment_id
                || record.amount_minor != req.amount_minor
            {
                return Err(rejected("idempotency_key_reused"));
            }
            return Ok(record.outcome.clone());
        }

        if req.amount_minor <= 0 {
            return Err(rejected("amount_too_small"));
        }
        let charge = state
            .charges
            .get_mut(req.processor_payment_id)
            .ok_or_else(|| rejected("resource_missing"))?;
        if charge.outcome.status != ChargeStatus::Succeeded {
            return Err(rejected("charge_not_refundable"));
        }
        let left = charge.outcome.captured_minor - charge.refunded_minor;
        if left <= 0 {
            return Err(rejected("charge_already_refunded"));
        }
        if req.amount_minor > left {
            return Err(rejected("amount_too_large"));
        }
        charge.refunded_minor += req.amount_minor;

        let outcome = RefundOutcome {
            processor_refund_id: new_id("re_sbx_"),
            status: RefundStatus::Succeeded,
        };
        state.refund_keys.insert(
            req.idempotency_key.to_string(),
            RefundRecord {
                processor_payment_id: req.processor_payment_id.to_string(),
                amount_minor: req.amount_minor,
                outcome: outcome.clone(),
            },
        );
        Ok(outcome)
    }
}

#[async_trait::async_trait]
impl Processor for SandboxProcessor {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    async fn create_customer(
        &self,
        idempotency_key: &str,
        customer_id: Uuid,
    ) -> Result<String, ProcessorError> {
        self.wait().await;
        Ok(self.create_customer_now(idempotency_key, customer_id))
    }

    async fn attach_payment_method(
        &self,
        customer: &str,
        token: &str,
    ) -> Result<CardDetails, ProcessorError> {
        self.wait().await;
        self.attach_now(customer, token)
    }

    async fn detach_payment_method(&self, processor_method_id: &str) -> Result<(), ProcessorError> {
        self.wait().await;
        self.detach_now(processor_method_id)
    }

    async fn charge(&self, req: &ChargeRequest<'_>) -> Result<ChargeOutcome, ProcessorError> {
        self.wait().await;
        self.charge_now(req)
    }

    async fn find_charge(&self, payment_id: Uuid) -> Result<Option<ChargeOutcome>, ProcessorError> {
        self.wait().await;
        Ok(self.find_charge_now(payment_id))
    }

    async fn get_charge(
        &self,
        processor_payment_id: &str,
    ) -> Result<ChargeOutcome, ProcessorError> {
        self.wait().await;
        self.get_charge_now(processor_payment_id)
    }

    async fn refund(&self, req: &RefundRequest<'_>) -> Result<RefundOutcome, ProcessorError> {
        self.wait().await;
        self.refund_now(req)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use super::*;

    fn sandbox() -> SandboxProcessor {
        SandboxProcessor::new(Duration::from_millis(1))
    }

    fn rejected_code(result: Result<impl std::fmt::Debug, ProcessorError>) -> String {
        match result {
            Err(ProcessorError::Rejected { code }) => code,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    /// A customer with `token` attached: (customer, method).
    async fn customer_with(sbx: &SandboxProcessor, token: &str) -> (String, String) {
        let customer = sbx
            .create_customer(&format!("cust-{}", Uuid::new_v4()), Uuid::new_v4())
            .await
            .unwrap();
        let card = sbx.attach_payment_method(&customer, token).await.unwrap();
        (customer, card.processor_method_id)
    }

    fn charge_req<'a>(
        key: &'a str,
        payment_id: Uuid,
        customer: &'a str,
        method: &'a str,
        amount_minor: i64,
    ) -> ChargeRequest<'a> {
        ChargeRequest {
            idempotency_key: key,
            payment_id,
            customer,
            payment_method: method,
            amount_minor,
            currency: "USD",
        }
    }

    fn refund_req<'a>(key: &'a str, pi: &'a str, amount_minor: i64) -> RefundRequest<'a> {
        RefundRequest {
            idempotency_key: key,
            refund_id: Uuid::new_v4(),
            processor_payment_id: pi,
            amount_minor,
        }
    }

    #[tokio::test]
    async fn name_is_sandbox() {
        assert_eq!(sandbox().name(), "sandbox");
    }

    #[tokio::test]
    async fn customers_are_idempotent_by_key() {
        let sbx = sandbox();
        let id = Uuid::new_v4();
        let a = sbx.create_customer("k1", id).await.unwrap();
        let b = sbx.create_customer("k1", id).await.unwrap();
        let c = sbx.create_customer("k2", id).await.unwrap();
        assert!(a.starts_with("cus_sbx_"));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[tokio::test]
    async fn test_tokens_attach_in_both_spellings() {
        let sbx = sandbox();
        let customer = sbx.create_customer("k", Uuid::new_v4()).await.unwrap();
        for (token, brand, last4) in [
            ("tok_visa", "visa", "4242"),
            ("pm_card_visa", "visa", "4242"),
            ("tok_mastercard", "mastercard", "4444"),
            ("pm_card_mastercard", "mastercard", "4444"),
            ("tok_amex", "amex", "8431"),
            ("pm_card_amex", "amex", "8431"),
            ("tok_chargeDeclined", "visa", "0002"),
            ("pm_card_chargeDeclinedInsufficientFunds", "visa", "9995"),
            ("pm_card_threeDSecureRequired", "visa", "3220"),
            ("tok_networkErrorAfterCapture", "visa", "0259"),
        ] {
            let card = sbx.attach_payment_method(&customer, token).await.unwrap();
            assert!(card.processor_method_id.starts_with("pm_sbx_"), "{token}");
            assert_eq!(card.brand, brand, "{token}");
            assert_eq!(card.last4, last4, "{token}");
            assert_eq!((card.exp_month, card.exp_year), (12, 2034), "{token}");
        }
        let first = sbx
            .attach_payment_method(&customer, "tok_visa")
            .await
            .unwrap();
        let second = sbx
            .attach_payment_method(&customer, "tok_visa")
            .await
            .unwrap();
        assert_ne!(first.processor_method_id, second.processor_method_id);
    }

    #[tokio::test]
    async fn unknown_tokens_and_customers_are_refused() {
        let sbx = sandbox();
        let customer = sbx.create_customer("k", Uuid::new_v4()).await.unwrap();
        for token in ["tok_unknown", "pm_card_", "visa", "4242424242424242", ""] {
            assert_eq!(
                rejected_code(sbx.attach_payment_method(&customer, token).await),
                "resource_missing",
                "{token}"
            );
        }
        assert_eq!(
            rejected_code(sbx.attach_payment_method("cus_nope", "tok_visa").await),
            "resource_missing"
        );
    }

    #[tokio::test]
    async fn detach_marks_the_method_and_charging_it_is_refused() {
        let sbx = sandbox();
        let (customer, method) = customer_with(&sbx, "tok_visa").await;
        sbx.detach_payment_method(&method).await.unwrap();
        sbx.detach_payment_method(&method).await.unwrap();
        assert_eq!(
            rejected_code(sbx.detach_payment_method("pm_sbx_nope").await),
            "resource_missing"
        );
        let req = charge_req("k", Uuid::new_v4(), &customer, &method, 100);
        assert_eq!(
            rejected_code(sbx.charge(&req).await),
            "payment_method_unattached"
        );
        assert_eq!(sbx.charge_count(), 0);
    }

    #[tokio::test]
    async fn a_successful_charge_captures_once_per_key() {
        let sbx = sandbox();
        let (customer, method) = customer_with(&sbx, "pm_card_visa").await;
        let payment = Uuid::new_v4();
        let req = charge_req("carehub-payment-1", payment, &customer, &method, 4500);
        let first = sbx.charge(&req).await.unwrap();
        assert!(first.processor_payment_id.starts_with("pi_sbx_"));
        assert_eq!(first.status, ChargeStatus::Succeeded);
        assert_eq!(first.captured_minor, 4500);
        let again = sbx.charge(&req).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(sbx.captures_for(payment), 1);
        assert_eq!(sbx.charge_count(), 1);
        assert_eq!(sbx.total_captured_minor(), 4500);
        assert_eq!(
            sbx.get_charge(&first.processor_payment_id).await.unwrap(),
            first
        );
        assert_eq!(sbx.find_charge(payment).await.unwrap(), Some(first));
        assert_eq!(sbx.find_charge(Uuid::new_v4()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_key_reused_with_other_parameters_is_refused() {
        let sbx = sandbox();
        let (customer, method) = customer_with(&sbx, "tok_visa").await;
        let (other_customer, other_method) = customer_with(&sbx, "tok_visa").await;
        let payment = Uuid::new_v4();
        sbx.charge(&charge_req("k", payment, &customer, &method, 100))
            .await
            .unwrap();
        for req in [
            charge_req("k", payment, &customer, &method, 101),
            charge_req("k", payment, &other_customer, &other_method, 100),
            ChargeRequest {
                currency: "EUR",
                ..charge_req("k", payment, &customer, &method, 100)
            },
        ] {
            assert_eq!(
                rejected_code(sbx.charge(&req).await),
                "idempotency_key_reused"
            );
        }
        assert_eq!(sbx.charge_count(), 1);
        assert_eq!(sbx.captures_for(payment), 1);
    }

    #[tokio::test]
    async fn charges_are_validated() {
        let sbx = sandbox();
        let (customer, method) = customer_with(&sbx, "tok_visa").await;
        let (other_customer, _) = customer_with(&sbx, "tok_visa").await;
        let p = Uuid::new_v4();
        assert_eq!(
            rejected_code(sbx.charge(&charge_req("a", p, &customer, &method, 0)).await),
            "amount_too_small"
        );
        assert_eq!(
            rejected_code(
                sbx.charge(&charge_req("b", p, &customer, &method, -5))
                    .await
            ),
            "amount_too_small"
        );
        assert_eq!(
            rejected_code(
                sbx.charge(&charge_req("c", p, "cus_nope", &method, 5))
                    .await
            ),
            "resource_missing"
        );
        assert_eq!(
            rejected_code(
                sbx.charge(&charge_req("d", p, &customer, "pm_nope", 5))
                    .await
            ),
            "resource_missing"
        );
        assert_eq!(
            rejected_code(
                sbx.charge(&charge_req("e", p, &other_customer, &method, 5))
                    .await
            ),
            "payment_method_invalid_parameter"
        );
        assert_eq!(sbx.charge_count(), 0);
        // A refused request records nothing against its key: a corrected retry goes through.
        let ok = sbx
            .charge(&charge_req("a", p, &customer, &method, 5))
            .await
            .unwrap();
        assert_eq!(ok.status, ChargeStatus::Succeeded);
        assert_eq!(
            rejected_code(sbx.get_charge("pi_sbx_nope").await),
            "resource_missing"
        );
    }

    #[tokio::test]
    async fn declines_capture_nothing() {
        let sbx = sandbox();
        for (token, code) in [
            ("tok_chargeDeclined", "card_declined"),
            ("pm_card_chargeDeclined", "card_declined"),
            ("tok_chargeDeclinedInsufficientFunds", "insufficient_funds"),
            (
                "pm_card_chargeDeclinedInsufficientFunds",
                "insufficient_funds",
            ),
        ] {
            let (customer, method) = customer_with(&sbx, token).await;
            let payment = Uuid::new_v4();
            let key = format!("k-{token}");
            let req = charge_req(&key, payment, &customer, &method, 700);
            let outcome = sbx.charge(&req).await.unwrap();
            assert_eq!(outcome.status, ChargeStatus::Failed { code: code.into() });
            assert_eq!(outcome.captured_minor, 0);
            assert_eq!(sbx.charge(&req).await.unwrap(), outcome);
            assert_eq!(sbx.captures_for(payment), 0);
            assert_eq!(
                rejected_code(
                    sbx.refund(&refund_req("r", &outcome.processor_payment_id, 1))
                        .await
                ),
                "charge_not_refundable"
            );
        }
        assert_eq!(sbx.total_captured_minor(), 0);
        assert_eq!(sbx.charge_count(), 4);
    }

    #[tokio::test]
    async fn three_d_secure_waits_for_the_cardholder() {
        let sbx = sandbox();
        let (customer, method) = customer_with(&sbx, "tok_threeDSecureRequired").await;
        let payment = Uuid::new_v4();
        let req = charge_req("k", payment, &customer, &method, 2500);
        let outcome = sbx.charge(&req).await.unwrap();
        assert_eq!(outcome.status, ChargeStatus::RequiresAction);
        assert_eq!(outcome.captured_minor, 0);
        assert_eq!(sbx.captures_for(payment), 0);
        let pi = outcome.processor_payment_id.clone();
        assert_eq!(
            rejected_code(sbx.refund(&refund_req("r", &pi, 1)).await),
            "charge_not_refundable"
        );

        let done = sbx.complete_authentication(&pi).unwrap();
        assert_eq!(done.status, ChargeStatus::Succeeded);
        assert_eq!(done.captured_minor, 2500);
        assert_eq!(done.processor_payment_id, pi);
        assert_eq!(sbx.complete_authentication(&pi), None);
        assert_eq!(sbx.complete_authentication("pi_sbx_nope"), None);
        assert_eq!(sbx.captures_for(payment), 1);
        assert_eq!(sbx.get_charge(&pi).await.unwrap(), done);
        assert_eq!(sbx.find_charge(payment).await.unwrap(), Some(done));
        // The key still answers what it first answered, and never captures again.
        assert_eq!(sbx.charge(&req).await.unwrap(), outcome);
        assert_eq!(sbx.captures_for(payment), 1);
        assert_eq!(sbx.total_captured_minor(), 2500);
    }

    #[tokio::test]
    async fn three_d_secure_can_fail() {
        let sbx = sandbox();
        let (customer, method) = customer_with(&sbx, "pm_card_threeDSecureRequired").await;
        let payment = Uuid::new_v4();
        let outcome = sbx
            .charge(&charge_req("k", payment, &customer, &method, 2500))
            .await
            .unwrap();
        let failed = sbx
            .fail_authentication(&outcome.processor_payment_id)
            .unwrap();
        assert_eq!(
            failed.status,
            ChargeStatus::Failed {
                code: "payment_intent_authentication_failure".into()
            }
        );
        assert_eq!(
            sbx.complete_authentication(&outcome.processor_payment_id),
            None
        );
        assert_eq!(sbx.captures_for(payment), 0);
    }

    #[tokio::test]
    async fn network_error_after_capture_loses_only_the_answer() {
        let sbx = sandbox();
        let (customer, method) = customer_with(&sbx, "tok_networkErrorAfterCapture").await;
        let payment = Uuid::new_v4();
        let req = charge_req("carehub-payment-x", payment, &customer, &method, 9900);
        assert_eq!(
            sbx.charge(&req).await,
            Err(ProcessorError::Unavailable(
                "connection reset after capture".into()
            ))
        );
        // The money moved although the caller heard nothing.
        assert_eq!(sbx.captures_for(payment), 1);
        let found = sbx.find_charge(payment).await.unwrap().unwrap();
        assert_eq!(found.status, ChargeStatus::Succeeded);

        let retry = sbx.charge(&req).await.unwrap();
        assert_eq!(retry.status, ChargeStatus::Succeeded);
        assert_eq!(retry.captured_minor, 9900);
        assert_eq!(retry.processor_payment_id, found.processor_payment_id);
        assert_eq!(sbx.charge(&req).await.unwrap(), retry);
        assert_eq!(sbx.captures_for(payment), 1);
        assert_eq!(sbx.charge_count(), 1);
        assert_eq!(sbx.total_captured_minor(), 9900);

        // A new key is a new first call: it captures again and loses the answer again.
        let req2 = charge_req("carehub-payment-y", payment, &customer, &method, 9900);
        assert!(matches!(
            sbx.charge(&req2).await,
            Err(ProcessorError::Unavailable(_))
        ));
        assert_eq!(sbx.captures_for(payment), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_charges_with_one_key_capture_once() {
        let sbx = Arc::new(SandboxProcessor::new(Duration::from_millis(20)));
        let (customer, method) = customer_with(&sbx, "tok_visa").await;
        let payment = Uuid::new_v4();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let sbx = sbx.clone();
                let customer = customer.clone();
                let method = method.clone();
                tokio::spawn(async move {
                    let req = charge_req("carehub-payment-c", payment, &customer, &method, 1234);
                    sbx.charge(&req).await
                })
            })
            .collect();
        let mut ids = std::collections::HashSet::new();
        for task in tasks {
            let outcome = task.await.unwrap().unwrap();
            assert_eq!(outcome.status, ChargeStatus::Succeeded);
            ids.insert(outcome.processor_payment_id);
        }
        assert_eq!(ids.len(), 1);
        assert_eq!(sbx.captures_for(payment), 1);
        assert_eq!(sbx.charge_count(), 1);
        assert_eq!(sbx.total_captured_minor(), 1234);
    }

    #[tokio::test]
    async fn refunds_never_exceed_the_capture() {
        let sbx = sandbox();
        let (customer, method) = customer_with(&sbx, "tok_mastercard").await;
        let pi = sbx
            .charge(&charge_req("k", Uuid::new_v4(), &customer, &method, 1000))
            .await
            .unwrap()
            .processor_payment_id;

        let first = sbx.refund(&refund_req("r1", &pi, 600)).await.unwrap();
        assert!(first.processor_refund_id.starts_with("re_sbx_"));
        assert_eq!(first.status, RefundStatus::Succeeded);
        // The same key answers the same refund and refunds nothing more.
        assert_eq!(
            sbx.refund(&refund_req("r1", &pi, 600)).await.unwrap(),
            first
        );
        assert_eq!(sbx.refunded_minor(&pi), 600);
        assert_eq!(
            rejected_code(sbx.refund(&refund_req("r1", &pi, 500)).await),
            "idempotency_key_reused"
        );

        assert_eq!(
            rejected_code(sbx.refund(&refund_req("r2", &pi, 401)).await),
            "amount_too_large"
        );
        assert_eq!(
            rejected_code(sbx.refund(&refund_req("r2", &pi, 0)).await),
            "amount_too_small"
        );
        let second = sbx.refund(&refund_req("r2", &pi, 400)).await.unwrap();
        assert_ne!(second.processor_refund_id, first.processor_refund_id);
        assert_eq!(sbx.refunded_minor(&pi), 1000);
        assert_eq!(
            rejected_code(sbx.refund(&refund_req("r3", &pi, 1)).await),
            "charge_already_refunded"
        );
        assert_eq!(
            rejected_code(sbx.refund(&refund_req("r4", "pi_sbx_nope", 1)).await),
            "resource_missing"
        );
        assert_eq!(sbx.refunded_minor(&pi), 1000);
        assert_eq!(sbx.refunded_minor("pi_sbx_nope"), 0);
        // Refunds do not undo the capture in the tally.
        assert_eq!(sbx.total_captured_minor(), 1000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_refunds_never_exceed_the_capture() {
        let sbx = Arc::new(SandboxProcessor::new(Duration::from_millis(10)));
        let (customer, method) = customer_with(&sbx, "tok_amex").await;
        let pi = sbx
            .charge(&charge_req("k", Uuid::new_v4(), &customer, &method, 1000))
            .await
            .unwrap()
            .processor_payment_id;
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let sbx = sbx.clone();
                let pi = pi.clone();
                tokio::spawn(async move {
                    let key = format!("r{i}");
                    sbx.refund(&refund_req(&key, &pi, 300)).await
                })
            })
            .collect();
        let mut succeeded = 0;
        for task in tasks {
            if task.await.unwrap().is_ok() {
                succeeded += 1;
            }
        }
        assert_eq!(succeeded, 3);
        assert_eq!(sbx.refunded_minor(&pi), 900);
    }

    #[tokio::test]
    async fn find_charge_prefers_the_captured_one() {
        let sbx = sandbox();
        let (customer, ok_method) = customer_with(&sbx, "tok_visa").await;
        let declined = sbx
            .attach_payment_method(&customer, "tok_chargeDeclined")
            .await
            .unwrap()
            .processor_method_id;
        let payment = Uuid::new_v4();
        let good = sbx
            .charge(&charge_req("k1", payment, &customer, &ok_method, 10))
            .await
            .unwrap();
        sbx.charge(&charge_req("k2", payment, &customer, &declined, 10))
            .await
            .unwrap();
        assert_eq!(sbx.find_charge(payment).await.unwrap(), Some(good));
    }

    #[tokio::test]
    async fn every_call_waits_the_latency() {
        let sbx = SandboxProcessor::new(Duration::from_millis(30));
        let started = std::time::Instant::now();
        sbx.create_customer("k", Uuid::new_v4()).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
