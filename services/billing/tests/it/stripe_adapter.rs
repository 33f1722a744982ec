//! Billing's Stripe adapter against the Stripe API double (`carehub_testkit::stripe`): the
//! requests it makes, how it reads Stripe's answers, and above all that a retry with the same
//! idempotency key after a lost answer or a timeout never charges twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use carehub_billing::processor::stripe::{parse_event, StripeProcessor};
use carehub_billing::processor::{
    ChargeOutcome, ChargeRequest, ChargeStatus, EventObject, Processor, ProcessorError,
    RefundRequest, RefundStatus,
};
use carehub_testkit::stripe::{signed_event, StripeDouble, SECRET_KEY};
use secrecy::SecretString;
use uuid::Uuid;

fn processor(double: &StripeDouble) -> StripeProcessor {
    processor_with(double, SECRET_KEY, Duration::from_secs(10))
}

fn processor_with(double: &StripeDouble, key: &str, timeout: Duration) -> StripeProcessor {
    StripeProcessor::new(&double.url(), SecretString::from(key), timeout)
        .expect("a Stripe client for the double")
}

/// A customer with `tok_visa` attached: (customer, payment method).
async fn customer_with_card(p: &StripeProcessor) -> (String, String) {
    let customer = p
        .create_customer(
            &format!("carehub-customer-{}", Uuid::now_v7()),
            Uuid::now_v7(),
        )
        .await
        .expect("customer");
    let card = p
        .attach_payment_method(&customer, "tok_visa")
        .await
        .expect("attach");
    (customer, card.processor_method_id)
}

struct Charge {
    key: String,
    payment_id: Uuid,
    customer: String,
    method: String,
    amount: i64,
}

impl Charge {
    fn new(customer: &str, method: &str, amount: i64) -> Charge {
        let payment_id = Uuid::now_v7();
        Charge {
            key: format!("carehub-payment-{payment_id}"),
            payment_id,
            customer: customer.to_owned(),
            method: method.to_owned(),
            amount,
        }
    }

    fn request(&self) -> ChargeRequest<'_> {
        ChargeRequest {
            idempotency_key: &self.key,
            payment_id: self.payment_id,
            customer: &self.customer,
            payment_method: &self.method,
            amount_minor: self.amount,
            currency: "USD",
        }
    }
}

fn refund_request<'a>(key: &'a str, pi: &'a str, amount: i64) -> RefundRequest<'a> {
    RefundRequest {
        idempotency_key: key,
        refund_id: Uuid::now_v7(),
        processor_payment_id: pi,
        amount_minor: amount,
    }
}

#[tokio::test]
async fn customer_attach_and_charge() {
    let double = StripeDouble::start().await;
    let p = processor(&double);
    assert_eq!(p.name(), "stripe");
    let customer_id = Uuid::now_v7();
    let customer = p
        .create_customer("carehub-customer-1", customer_id)
        .await
        .unwrap();
    assert!(customer.starts_with("cus_"), "{customer}");
    // Minimum necessary: billing's id as metadata, no name, no email.
    let at_stripe = double.customer_json(&customer);
    assert_eq!(
        at_stripe["metadata"],
        serde_json::json!({"carehub_customer_id": customer_id.to_string()})
    );
    assert!(at_stripe["email"].is_null() && at_stripe["name"].is_null());

    let visa = p
        .attach_payment_method(&customer, "tok_visa")
        .await
        .unwrap();
    assert!(visa.processor_method_id.starts_with("pm_"));
    assert_eq!((visa.brand.as_str(), visa.last4.as_str()), ("visa", "4242"));
    assert!((1..=12).contains(&visa.exp_month) && visa.exp_year >= 2026);
    assert_eq!(
        double.payment_method_json(&visa.processor_method_id)["customer"],
        customer.as_str()
    );
    // A test payment method attached becomes a new one of the customer's, as at Stripe.
    let mc = p
        .attach_payment_method(&customer, "pm_card_mastercard")
        .await
        .unwrap();
    assert!(
        mc.processor_method_id.starts_with("pm_") && mc.processor_method_id != "pm_card_mastercard"
    );
    assert_eq!(
        (mc.brand.as_str(), mc.last4.as_str()),
        ("mastercard", "4444")
    );

    let charge = Charge::new(&customer, &visa.processor_method_id, 4_500);
    let outcome = p.charge(&charge.request()).await.unwrap();
    assert!(outcome.processor_payment_id.starts_with("pi_"));
    assert_eq!(outcome.status, ChargeStatus::Succeeded);
    assert_eq!(outcome.captured_minor, 4_500);
    assert_eq!(double.captured_for(&charge.payment_id.to_string()), 1);
    assert_eq!(double.total_captured(), 4_500);
    let pi = double.payment_intent_json(&outcome.processor_payment_id);
    assert_eq!(pi["currency"], "usd");
    assert_eq!(pi["customer"], customer.as_str());
    assert_eq!(
        pi["metadata"]["carehub_payment_id"],
        charge.payment_id.to_string()
    );
    assert_eq!(
        p.get_charge(&outcome.processor_payment_id).await.unwrap(),
        outcome
    );

    // Every request is pinned to one API version; every create carries an idempotency key.
    for r in double.requests() {
        assert_eq!(
            r.stripe_version.as_deref(),
            Some("2024-06-20"),
            "{}",
            r.path
        );
        if r.method == "POST" && !r.path.ends_with("/detach") {
            assert!(r.idempotency_key.is_some(), "{} without a key", r.path);
            assert_eq!(
                r.content_type.as_deref(),
                Some("application/x-www-form-urlencoded")
            );
        }
    }
    let charge_request = double
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/payment_intents")
        .unwrap();
    assert_eq!(
        charge_request.idempotency_key.as_deref(),
        Some(charge.key.as_str())
    );
    let param = |k: &str| {
        charge_request
            .params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(param("confirm").as_deref(), Some("true"));
    assert_eq!(param("off_session").as_deref(), Some("true"));
    assert_eq!(param("currency").as_deref(), Some("usd"));
}

#[tokio::test]
async fn declines_are_failed_outcomes_with_the_decline_code() {
    let double = StripeDouble::start().await;
    let p = processor(&double);
    let (customer, _) = customer_with_card(&p).await;
    for (method, code) in [
        ("pm_card_chargeDeclined", "generic_decline"),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            "insufficient_funds",
        ),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
    ] {
        let charge = Charge::new(&customer, method, 2_000);
        let outcome = p.charge(&charge.request()).await.unwrap();
        assert_eq!(
            outcome.status,
            ChargeStatus::Failed { code: code.into() },
            "{method}"
        );
        assert_eq!(outcome.captured_minor, 0);
        assert!(outcome.processor_payment_id.starts_with("pi_"));
        // The same intent, as Stripe keeps it.
        let again = p.get_charge(&outcome.processor_payment_id).await.unwrap();
        assert_eq!(again, outcome);
        assert_eq!(double.captured_for(&charge.payment_id.to_string()), 0);
        // A retry replays the decline rather than trying the card again.
        assert_eq!(p.charge(&charge.request()).await.unwrap(), outcome);
    }
    // A token for a declining card attaches, and its charge is declined.
    let card = p
        .attach_payment_method(&customer, "tok_chargeDeclined")
        .await
        .unwrap();
    let outcome = p
        .charge(&Charge::new(&customer, &card.processor_method_id, 2_000).request())
        .await
        .unwrap();
    assert_eq!(
        outcome.status,
        ChargeStatus::Failed {
            code: "generic_decline".into()
        }
    );
    assert_eq!(double.total_captured(), 0);
    assert_eq!(double.intent_count(), 4);
}

#[tokio::test]
async fn authentication_required_is_requires_action() {
    let double = StripeDouble::start().await;
    let p = processor(&double);
    let (customer, _) = customer_with_card(&p).await;
    let charge = Charge::new(&customer, "pm_card_authenticationRequired", 3_000);
    let outcome = p.charge(&charge.request()).await.unwrap();
    assert_eq!(outcome.status, ChargeStatus::RequiresAction);
    assert_eq!(outcome.captured_minor, 0);

    // The outcome comes later as an event; the adapter reads it.
    let done = double.authenticate(&outcome.processor_payment_id, true);
    let (signature, body) = signed_event(
        "payment_intent.succeeded",
        done,
        "whsec_test",
        1_700_000_000,
    );
    // Signed as billing's webhook checks it.
    assert_eq!(
        carehub_billing::domain::webhook::verify(
            &signature,
            &body,
            &[SecretString::from("whsec_test")],
            1_700_000_000,
            300
        ),
        Ok(1_700_000_000)
    );
    let event = parse_event(&body).unwrap();
    assert!(event.id.starts_with("evt_"));
    assert_eq!(event.created, 1_700_000_000);
    assert_eq!(
        event.object,
        EventObject::Charge {
            payment_id: Some(charge.payment_id),
            outcome: ChargeOutcome {
                processor_payment_id: outcome.processor_payment_id.clone(),
                status: ChargeStatus::Succeeded,
                captured_minor: 3_000,
            },
        }
    );
    assert_eq!(
        p.get_charge(&outcome.processor_payment_id)
            .await
            .unwrap()
            .status,
        ChargeStatus::Succeeded
    );
}

#[tokio::test]
async fn the_same_key_charges_once_and_other_parameters_are_refused() {
    let double = StripeDouble::start().await;
    let p = processor(&double);
    let (customer, method) = customer_with_card(&p).await;
    let charge = Charge::new(&customer, &method, 5_000);
    let first = p.charge(&charge.request()).await.unwrap();
    let second = p.charge(&charge.request()).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(double.intent_count(), 1);
    assert_eq!(double.captured_for(&charge.payment_id.to_string()), 1);

    let mut other = charge.request();
    other.amount_minor = 6_000;
    assert_eq!(
        p.charge(&other).await,
        Err(ProcessorError::Rejected {
            code: "idempotency_error".into()
        })
    );
    assert_eq!(double.intent_count(), 1);
    assert_eq!(double.total_captured(), 5_000);
}

#[tokio::test]
async fn a_lost_answer_is_unavailable_and_the_retry_charges_once() {
    let double = StripeDouble::start().await;
    let p = processor(&double);
    let (customer, method) = customer_with_card(&p).await;
    let charge = Charge::new(&customer, &method, 7_000);
    double.drop_next_charge_answers(1);
    let lost = p.charge(&charge.request()).await;
    assert!(
        matches!(lost, Err(ProcessorError::Unavailable(_))),
        "{lost:?}"
    );
    // Stripe has the money already.
    assert_eq!(double.captured_for(&charge.payment_id.to_string()), 1);
    let retried = p.charge(&charge.request()).await.unwrap();
    assert_eq!(retried.status, ChargeStatus::Succeeded);
    assert_eq!(retried.captured_minor, 7_000);
    assert_eq!(double.captured_for(&charge.payment_id.to_string()), 1);
    assert_eq!(double.intent_count(), 1);
}

#[tokio::test]
async fn find_charge_finds_a_charge_by_payment_id() {
    let double = StripeDouble::start().await;
    let p = processor(&double);
    let (customer, method) = customer_with_card(&p).await;
    let charge = Charge::new(&customer, &method, 2_500);
    let made = p.charge(&charge.request()).await.unwrap();
    let _other = p
        .charge(&Charge::new(&customer, &method, 1_000).request())
        .await
        .unwrap();
    assert_eq!(p.find_charge(charge.payment_id).await.unwrap(), Some(made));
    assert_eq!(p.find_charge(Uuid::now_v7()).await.unwrap(), None);

    // A charge whose answer was lost is found too: how an old pending payment is settled.
    let lost = Charge::new(&customer, &method, 3_300);
    double.drop_next_charge_answers(1);
    assert!(p.charge(&lost.request()).await.is_err());
    let found = p.find_charge(lost.payment_id).await.unwrap().unwrap();
    assert_eq!(found.status, ChargeStatus::Succeeded);
    assert_eq!(found.captured_minor, 3_300);
}

#[tokio::test]
async fn refunds_partial_full_and_too_much() {
    let double = StripeDouble::start().await;
    let p = processor(&double);
    let (customer, method) = customer_with_card(&p).await;
    let pi = p
        .charge(&Charge::new(&customer, &method, 5_000).request())
        .await
        .unwrap()
        .processor_payment_id;

    let partial = p
        .refund(&refund_request("carehub-refund-1", &pi, 2_000))
        .await
        .unwrap();
    assert!(partial.processor_refund_id.starts_with("re_"));
    assert_eq!(partial.status, RefundStatus::Succeeded);
    assert_eq!(double.refunded(&pi), 2_000);
    let refund = double.refund_json(&partial.processor_refund_id);
    assert_eq!(refund["amount"], 2_000);
    assert_eq!(refund["payment_intent"], pi.as_str());
    assert!(refund["metadata"]["carehub_refund_id"].is_string());

    // A retry of the same refund is answered from the first.
    let mut retry = refund_request("carehub-refund-1", &pi, 2_000);
    retry.refund_id =
        Uuid::parse_str(refund["metadata"]["carehub_refund_id"].as_str().unwrap()).unwrap();
    assert_eq!(p.refund(&retry).await.unwrap(), partial);
    assert_eq!(double.refunded(&pi), 2_000);

    // More than is left is refused, and refunds nothing.
    let too_much = p
        .refund(&refund_request("carehub-refund-2", &pi, 3_001))
        .await;
    assert!(
        matches!(too_much, Err(ProcessorError::Rejected { .. })),
        "{too_much:?}"
    );
    let rest = p
        .refund(&refund_request("carehub-refund-3", &pi, 3_000))
        .await
        .unwrap();
    assert_eq!(rest.status, RefundStatus::Succeeded);
    assert_eq!(double.refunded(&pi), 5_000);
    assert_eq!(
        p.refund(&refund_request("carehub-refund-4", &pi, 1)).await,
        Err(ProcessorError::Rejected {
            code: "charge_already_refunded".into()
        })
    );

    // The refund's events read back into billing's terms.
    let (_sig, body) = signed_event(
        "refund.updated",
        double.refund_json(&rest.processor_refund_id),
        "whsec_test",
        1_700_000_001,
    );
    let EventObject::Refund {
        refund_id,
        processor_payment_id,
        amount_minor,
        outcome,
    } = parse_event(&body).unwrap().object
    else {
        panic!("a refund event");
    };
    assert!(refund_id.is_some());
    assert_eq!(processor_payment_id, pi);
    assert_eq!(amount_minor, 3_000);
    assert_eq!(outcome, rest);

    // A declined charge has nothing to refund.
    let declined = p
        .charge(&Charge::new(&customer, "pm_card_chargeDeclined", 5_000).request())
        .await
        .unwrap()
        .processor_payment_id;
    assert!(matches!(
        p.refund(&refund_request("carehub-refund-5", &declined, 100))
            .await,
        Err(ProcessorError::Rejected { .. })
    ));
}

#[tokio::test]
async fn a_wrong_api_key_is_rejected_as_unauthenticated() {
    let double = StripeDouble::start().await;
    let p = processor_with(&double, "sk_test_not_the_key", Duration::from_secs(5));
    assert_eq!(
        p.create_customer("carehub-customer-x", Uuid::now_v7())
            .await,
        Err(ProcessorError::Rejected {
            code: "authentication_error".into()
        })
    );
    assert_eq!(
        p.get_charge("pi_123").await,
        Err(ProcessorError::Rejected {
            code: "authentication_error".into()
        })
    );
}

#[tokio::test]
async fn a_timeout_is_unavailable_and_the_retry_after_it_charges_once() {
    let double = StripeDouble::start().await;
    let (customer, method) = customer_with_card(&processor(&double)).await;
    let p = processor_with(&double, SECRET_KEY, Duration::from_millis(300));
    let charge = Charge::new(&customer, &method, 9_900);
    double.hold_charges(true);
    let timed_out = p.charge(&charge.request()).await;
    assert!(
        matches!(&timed_out, Err(ProcessorError::Unavailable(msg)) if msg.contains("timed out")),
        "{timed_out:?}"
    );
    double.wait_for_held_charges(1).await;
    assert_eq!(double.captured_for(&charge.payment_id.to_string()), 1);
    // While Stripe still works on the first request, the key is in use: ask again later.
    let in_flight = p.charge(&charge.request()).await;
    assert!(
        matches!(in_flight, Err(ProcessorError::Unavailable(_))),
        "{in_flight:?}"
    );
    double.hold_charges(false);
    let mut retried = None;
    for _ in 0..50 {
        match p.charge(&charge.request()).await {
            Ok(outcome) => {
                retried = Some(outcome);
                break;
            }
            Err(ProcessorError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let retried = retried.expect("the retry is answered once the charge is released");
    assert_eq!(retried.status, ChargeStatus::Succeeded);
    assert_eq!(double.captured_for(&charge.payment_id.to_string()), 1);
    assert_eq!(double.intent_count(), 1);
}

#[tokio::test]
async fn no_answer_at_all_is_unavailable() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let p = StripeProcessor::new(
        &format!("http://{addr}"),
        SecretString::from(SECRET_KEY),
        Duration::from_secs(2),
    )
    .unwrap();
    let e = p.create_customer("k", Uuid::now_v7()).await;
    assert!(
        matches!(&e, Err(ProcessorError::Unavailable(msg)) if !msg.contains(SECRET_KEY)),
        "{e:?}"
    );
}

#[tokio::test]
async fn detach_and_unknown_objects() {
    let double = StripeDouble::start().await;
    let p = processor(&double);
    let (customer, method) = customer_with_card(&p).await;
    p.detach_payment_method(&method).await.unwrap();
    assert!(double.payment_method_json(&method)["customer"].is_null());
    // Removing an already detached method succeeds.
    p.detach_payment_method(&method).await.unwrap();
    p.detach_payment_method("pm_unknown").await.unwrap();
    // A detached method cannot be charged.
    assert!(matches!(
        p.charge(&Charge::new(&customer, &method, 1_000).request())
            .await,
        Err(ProcessorError::Rejected { .. })
    ));
    assert!(matches!(
        p.attach_payment_method(&customer, "tok_nonsense").await,
        Err(ProcessorError::Rejected { code }) if code == "resource_missing"
    ));
    assert!(matches!(
        p.attach_payment_method("cus_unknown", "pm_card_visa").await,
        Err(ProcessorError::Rejected { code }) if code == "resource_missing"
    ));
    assert_eq!(
        p.get_charge("pi_unknown").await,
        Err(ProcessorError::Rejected {
            code: "resource_missing".into()
        })
    );
    assert_eq!(double.intent_count(), 0);
}
