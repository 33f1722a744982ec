//! The processor's webhook against billing on the Stripe adapter and the in-process Stripe
//! double: signatures (forged, stale, rotated), replays, and events out of order.

use carehub_billing::config::ProcessorKind;
use carehub_proto::billing::v1::*;
use carehub_testkit::stripe::{signed_event, StripeDouble};
use secrecy::SecretString;
use serde_json::Value;

use crate::common::*;

const WEBHOOK_SECRET: &str = "whsec_carehub_test_current";
const OLD_WEBHOOK_SECRET: &str = "whsec_carehub_test_previous";

async fn on_stripe(double: &StripeDouble) -> Suite {
    let url = double.url();
    spawn_with(move |c| {
        c.billing.processor.kind = ProcessorKind::Stripe;
        c.billing.processor.api_base = url;
        c.billing.processor.secret_key =
            Some(SecretString::from(StripeDouble::SECRET_KEY.to_owned()));
        c.billing.processor.webhook_secrets = vec![
            SecretString::from(WEBHOOK_SECRET.to_owned()),
            SecretString::from(OLD_WEBHOOK_SECRET.to_owned()),
        ];
        c.billing.processor.timeout_ms = 2_000;
    })
    .await
}

async fn deliver(s: &Suite, header: &str, body: &[u8]) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/webhooks/stripe", s.billing.admin_addr))
        .header("Stripe-Signature", header)
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    (code, response.text().await.unwrap_or_default())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn event_id(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn forged_stale_and_replayed_events_change_nothing() {
    let double = StripeDouble::start().await;
    let s = on_stripe(&double).await;
    let (office, patient, invoice) = s.ready_to_pay("pm_card_authenticationRequired").await;
    let payment = s
        .api()
        .await
        .pay_invoice(as_user(&patient, pay(&invoice, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(payment.status, PaymentStatus::RequiresAction as i32);
    let pi: String = sqlx::query_scalar("SELECT processor_payment_id FROM payments")
        .fetch_one(s.pool())
        .await
        .unwrap();
    let succeeded = double.authenticate(&pi, true);

    // Forged: signed with a secret billing does not hold.
    let (header, body) = signed_event(
        "payment_intent.succeeded",
        succeeded.clone(),
        "whsec_forged",
        now(),
    );
    assert_eq!(
        deliver(&s, &header, &body).await,
        (400, "no_matching_signature".to_owned())
    );
    // Tampered: a genuine signature over another body.
    let (header, mut body) = signed_event(
        "payment_intent.succeeded",
        succeeded.clone(),
        WEBHOOK_SECRET,
        now(),
    );
    body.push(b' ');
    assert_eq!(deliver(&s, &header, &body).await.0, 400);
    // Stale: a genuine event signed ten minutes ago (the tolerance is five).
    let (header, body) = signed_event(
        "payment_intent.succeeded",
        succeeded.clone(),
        WEBHOOK_SECRET,
        now() - 600,
    );
    assert_eq!(
        deliver(&s, &header, &body).await,
        (400, "timestamp_outside_tolerance".to_owned())
    );
    // No header at all.
    assert_eq!(deliver(&s, "", &body).await.0, 400);
    let still = s.get_invoice(&office, &invoice.id).await;
    assert_eq!(still.amount_paid_minor, 0, "refused events changed nothing");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM processor_events")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(recorded, 0);

    // Genuine, signed with the previous secret (rotation): applied once.
    let (header, body) = signed_event(
        "payment_intent.succeeded",
        succeeded,
        OLD_WEBHOOK_SECRET,
        now(),
    );
    assert_eq!(
        deliver(&s, &header, &body).await,
        (200, "applied".to_owned())
    );
    // The same delivery again (a replay within the tolerance, or a redelivery): ignored.
    assert_eq!(
        deliver(&s, &header, &body).await,
        (200, "duplicate".to_owned())
    );
    let paid = s.get_invoice(&office, &invoice.id).await;
    assert_eq!(
        (paid.status, paid.amount_paid_minor),
        (InvoiceStatus::Paid as i32, 5000)
    );
    let applied: String =
        sqlx::query_scalar("SELECT outcome FROM processor_events WHERE event_id = $1")
            .bind(event_id(&body))
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(applied, "applied");
}

#[tokio::test]
async fn out_of_order_events_end_in_the_right_state() {
    let double = StripeDouble::start().await;
    let s = on_stripe(&double).await;
    let (office, patient, invoice) = s.ready_to_pay("pm_card_authenticationRequired").await;
    let payment = s
        .api()
        .await
        .pay_invoice(as_user(&patient, pay(&invoice, 0)))
        .await
        .unwrap()
        .into_inner();
    let pi: String = sqlx::query_scalar("SELECT processor_payment_id FROM payments")
        .fetch_one(s.pool())
        .await
        .unwrap();
    let waiting = double.payment_intent_json(&pi);
    let succeeded = double.authenticate(&pi, true);
    let t = now();
    // Delivered newest first: succeeded (t), then the older requires_action (t - 20) and a
    // failure of an earlier attempt (t - 10).
    let (h1, b1) = signed_event(
        "payment_intent.succeeded",
        succeeded.clone(),
        WEBHOOK_SECRET,
        t,
    );
    let (h2, b2) = signed_event(
        "payment_intent.requires_action",
        waiting.clone(),
        WEBHOOK_SECRET,
        t - 20,
    );
    let mut failed = waiting.clone();
    failed["status"] = Value::from("requires_payment_method");
    failed["last_payment_error"] =
        serde_json::json!({"code": "payment_intent_authentication_failure", "type": "card_error"});
    let (h3, b3) = signed_event(
        "payment_intent.payment_failed",
        failed,
        WEBHOOK_SECRET,
        t - 10,
    );
    for (h, b) in [(&h1, &b1), (&h2, &b2), (&h3, &b3)] {
        assert_eq!(deliver(&s, h, b).await.0, 200);
    }
    let got = s
        .api()
        .await
        .get_payment(with_token(
            tonic::Request::new(GetPaymentRequest {
                payment_id: payment.id.clone(),
            }),
            &patient.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, PaymentStatus::Succeeded as i32);
    let paid = s.get_invoice(&office, &invoice.id).await;
    assert_eq!(
        (paid.status, paid.amount_paid_minor),
        (InvoiceStatus::Paid as i32, 5000)
    );

    // A refund whose final event arrives before its creation event ends succeeded, counted once.
    let refund = s
        .api()
        .await
        .refund_payment(as_user(
            &office,
            RefundPaymentRequest {
                payment_id: payment.id.clone(),
                amount_minor: 1500,
                reason: RefundReason::Duplicate as i32,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let re: String = sqlx::query_scalar("SELECT processor_refund_id FROM refunds")
        .fetch_one(s.pool())
        .await
        .unwrap();
    let mut object = double.refund_json(&re);
    object["status"] = Value::from("succeeded");
    let (h4, b4) = signed_event("refund.updated", object.clone(), WEBHOOK_SECRET, t + 5);
    object["status"] = Value::from("pending");
    let (h5, b5) = signed_event("refund.created", object, WEBHOOK_SECRET, t + 1);
    assert_eq!(deliver(&s, &h4, &b4).await.0, 200);
    assert_eq!(deliver(&s, &h5, &b5).await.0, 200);
    let status: String = sqlx::query_scalar("SELECT status FROM refunds")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(status, "succeeded", "refund {}", refund.id);
    let after = s.get_invoice(&office, &invoice.id).await;
    assert_eq!(
        (after.amount_paid_minor, after.amount_refunded_minor),
        (3500, 1500)
    );
    let report = carehub_billing::reconcile::pass(&s.billing.handle().state)
        .await
        .unwrap();
    assert!(report.is_clean(), "{report}");
    // An event about an object billing never made is recorded and ignored.
    let (h6, b6) = signed_event(
        "customer.created",
        serde_json::json!({"id": "cus_x", "object": "customer"}),
        WEBHOOK_SECRET,
        t,
    );
    assert_eq!(deliver(&s, &h6, &b6).await, (200, "ignored".to_owned()));
}

#[tokio::test]
async fn the_stripe_processor_fails_after_capture_and_the_retry_charges_once() {
    let double = StripeDouble::start().await;
    let s = on_stripe(&double).await;
    let (office, patient, invoice) = s.ready_to_pay("pm_card_visa").await;
    double.drop_next_charge_answers(1);
    let k = key();
    let lost = s
        .api()
        .await
        .pay_invoice(keyed(&patient, &k, pay(&invoice, 0)))
        .await
        .unwrap_err();
    assert_eq!(lost.code(), tonic::Code::Unavailable, "{lost:?}");
    assert_eq!(double.total_captured(), 5000, "the processor captured");
    let retried = s
        .api()
        .await
        .pay_invoice(keyed(&patient, &k, pay(&invoice, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.status, PaymentStatus::Succeeded as i32);
    assert_eq!(double.captured_for(&retried.id), 1);
    assert_eq!(double.intent_count(), 1);
    let paid = s.get_invoice(&office, &invoice.id).await;
    assert_eq!(paid.amount_paid_minor, 5000);
}
