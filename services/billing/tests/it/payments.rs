//! Charges that never happen twice: the processor's success lost on the way back, a crash
//! between the processor and our commit, the same key reused or sent twenty times at once,
//! declines, refunds bounded by what was captured, and the ledger after all of it.

use carehub_billing::reconcile;
use carehub_proto::billing::v1::*;
use tonic::Code;

use crate::common::*;

#[tokio::test]
async fn a_payment_marks_the_invoice_paid_and_gives_a_receipt() {
    let s = spawn().await;
    let (office, patient, invoice) = s.ready_to_pay("tok_visa").await;
    assert_eq!(invoice.status, InvoiceStatus::Open as i32);
    assert!(
        invoice
            .number
            .starts_with(&format!("{}-", chrono::Utc::now().format("%Y"))),
        "{}",
        invoice.number
    );
    let payment = s
        .api()
        .await
        .pay_invoice(as_user(&patient, pay(&invoice, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(payment.status, PaymentStatus::Succeeded as i32);
    assert_eq!(payment.amount.as_ref().map(|m| m.amount_minor), Some(5000));
    let after = s.get_invoice(&office, &invoice.id).await;
    assert_eq!(after.status, InvoiceStatus::Paid as i32);
    assert_eq!((after.amount_paid_minor, after.amount_due_minor), (5000, 0));
    let receipt = s
        .api()
        .await
        .get_receipt(with_token(
            tonic::Request::new(GetReceiptRequest {
                payment_id: payment.id.clone(),
            }),
            &patient.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (receipt.card_brand.as_str(), receipt.card_last4.as_str()),
        ("visa", "4242")
    );
    assert_eq!(receipt.invoice_number, invoice.number);
    let statement = s
        .api()
        .await
        .get_statement(with_token(
            tonic::Request::new(GetStatementRequest {
                patient_id: patient.id.clone(),
                ..Default::default()
            }),
            &patient.token,
        ))
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<i32> = statement.entries.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            StatementEntryKind::Invoice as i32,
            StatementEntryKind::Payment as i32
        ]
    );
    assert_eq!(statement.closing_balance_minor, 0);
    // A paid invoice takes no second payment.
    let again = s
        .api()
        .await
        .pay_invoice(as_user(&patient, pay(&invoice, 0)))
        .await
        .unwrap_err();
    assert_status(&again, Code::FailedPrecondition, Some("STATE_CONFLICT"));
}

#[tokio::test]
async fn the_processor_succeeds_then_the_call_fails_and_the_retry_yields_one_payment() {
    let s = spawn().await;
    let (office, patient, invoice) = s.ready_to_pay("tok_networkErrorAfterCapture").await;
    let k = key();
    let lost = s
        .api()
        .await
        .pay_invoice(keyed(&patient, &k, pay(&invoice, 0)))
        .await
        .unwrap_err();
    assert_status(&lost, Code::Unavailable, Some("UNAVAILABLE"));
    // The money moved; we do not know it yet.
    assert_eq!(s.sandbox().total_captured_minor(), 5000);
    let pending = s.get_invoice(&office, &invoice.id).await;
    assert_eq!(pending.amount_paid_minor, 0);
    let retried = s
        .api()
        .await
        .pay_invoice(keyed(&patient, &k, pay(&invoice, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.status, PaymentStatus::Succeeded as i32);
    let id: uuid::Uuid = retried.id.parse().unwrap();
    assert_eq!(s.sandbox().captures_for(id), 1);
    assert_eq!(s.sandbox().charge_count(), 1);
    assert_eq!(s.sandbox().total_captured_minor(), 5000);
    let paid = s.get_invoice(&office, &invoice.id).await;
    assert_eq!(
        (paid.status, paid.amount_paid_minor),
        (InvoiceStatus::Paid as i32, 5000)
    );
    // A third call with the key answers the stored payment.
    let third = s
        .api()
        .await
        .pay_invoice(keyed(&patient, &k, pay(&invoice, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(third.id, retried.id);
    assert_eq!(s.sandbox().charge_count(), 1);
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(payments, 1);
}

#[tokio::test]
async fn an_intent_left_pending_is_settled_once_by_the_reconciler() {
    let s = spawn_with(|c| c.billing.intent_lease_secs = 5).await;
    let (office, patient, invoice) = s.ready_to_pay("tok_networkErrorAfterCapture").await;
    let lost = s
        .api()
        .await
        .pay_invoice(as_user(&patient, pay(&invoice, 0)))
        .await
        .unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable);
    // The client gives up; the intent is pending, its lease given back.
    let status: String = sqlx::query_scalar("SELECT status FROM payments")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(status, "pending");
    let state = &s.billing.handle().state;
    let report = reconcile::pass(state).await.unwrap();
    assert_eq!(report.settled.len(), 1, "{report}");
    assert!(report.settled[0].ends_with("succeeded"), "{report}");
    assert!(report.is_clean(), "{report}");
    // A second pass finds nothing to do, and the processor holds one capture.
    let again = reconcile::pass(state).await.unwrap();
    assert!(again.settled.is_empty(), "{again}");
    assert_eq!(s.sandbox().charge_count(), 1);
    assert_eq!(s.sandbox().total_captured_minor(), 5000);
    let paid = s.get_invoice(&office, &invoice.id).await;
    assert_eq!(
        (paid.status, paid.amount_paid_minor),
        (InvoiceStatus::Paid as i32, 5000)
    );
}

#[tokio::test]
async fn the_same_key_with_another_amount_is_refused() {
    let s = spawn().await;
    let (_office, patient, invoice) = s.ready_to_pay("tok_visa").await;
    let k = key();
    s.api()
        .await
        .pay_invoice(keyed(&patient, &k, pay(&invoice, 1000)))
        .await
        .unwrap();
    let reused = s
        .api()
        .await
        .pay_invoice(keyed(&patient, &k, pay(&invoice, 2000)))
        .await
        .unwrap_err();
    assert_status(
        &reused,
        Code::InvalidArgument,
        Some("IDEMPOTENCY_KEY_REUSED"),
    );
    assert_eq!(s.sandbox().charge_count(), 1);
    // Without a key nothing is charged at all.
    let keyless = s
        .api()
        .await
        .pay_invoice(with_token(
            tonic::Request::new(pay(&invoice, 1000)),
            &patient.token,
        ))
        .await
        .unwrap_err();
    let fields = assert_status(&keyless, Code::InvalidArgument, Some("INVALID_FIELD"));
    assert_eq!(fields, ["idempotency-key"]);
    assert_eq!(s.sandbox().charge_count(), 1);
}

#[tokio::test]
async fn twenty_concurrent_requests_with_one_key_make_one_charge() {
    let s = spawn_with(|c| c.billing.processor.sandbox_latency_ms = 400).await;
    let (office, patient, invoice) = s.ready_to_pay("tok_visa").await;
    let k = key();
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut api = s.api().await;
        let req = keyed(&patient, &k, pay(&invoice, 0));
        calls.push(tokio::spawn(async move { api.pay_invoice(req).await }));
    }
    let (mut answers, mut in_use) = (Vec::new(), 0);
    for c in calls {
        match c.await.unwrap() {
            Ok(p) => answers.push(p.into_inner()),
            Err(e) => {
                assert_status(&e, Code::Aborted, Some("IDEMPOTENCY_KEY_IN_USE"));
                in_use += 1;
            }
        }
    }
    assert!(!answers.is_empty());
    assert!(answers
        .iter()
        .all(|p| p.id == answers[0].id && p.status == PaymentStatus::Succeeded as i32));
    assert_eq!(answers.len() + in_use, 20);
    assert_eq!(s.sandbox().charge_count(), 1);
    assert_eq!(s.sandbox().total_captured_minor(), 5000);
    let paid = s.get_invoice(&office, &invoice.id).await;
    assert_eq!(paid.amount_paid_minor, 5000);
}

#[tokio::test]
async fn concurrent_payments_with_different_keys_never_overpay() {
    let s = spawn_with(|c| c.billing.processor.sandbox_latency_ms = 200).await;
    let (office, patient, invoice) = s.ready_to_pay("tok_visa").await;
    let mut calls = Vec::new();
    for _ in 0..10 {
        let mut api = s.api().await;
        let req = as_user(&patient, pay(&invoice, 2000));
        calls.push(tokio::spawn(async move { api.pay_invoice(req).await }));
    }
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_status(&e, Code::FailedPrecondition, Some("AMOUNT_EXCEEDS_BALANCE"));
            }
        }
    }
    assert_eq!(ok, 2, "two payments of 2000 fit 5000");
    let after = s.get_invoice(&office, &invoice.id).await;
    assert_eq!(
        (after.amount_paid_minor, after.amount_due_minor),
        (4000, 1000)
    );
    assert_eq!(s.sandbox().total_captured_minor(), 4000);
}

#[tokio::test]
async fn declines_are_answers_and_leave_the_invoice_payable() {
    let s = spawn().await;
    let (office, patient, invoice) = s.ready_to_pay("tok_chargeDeclinedInsufficientFunds").await;
    let declined = s
        .api()
        .await
        .pay_invoice(as_user(&patient, pay(&invoice, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(declined.status, PaymentStatus::Failed as i32);
    assert_eq!(declined.failure_code, "insufficient_funds");
    let three_ds = s.card(&patient, "tok_threeDSecureRequired").await;
    let waiting = s
        .api()
        .await
        .pay_invoice(as_user(
            &patient,
            PayInvoiceRequest {
                invoice_id: invoice.id.clone(),
                payment_method_id: three_ds.id.clone(),
                amount_minor: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(waiting.status, PaymentStatus::RequiresAction as i32);
    // The amount waiting for authentication is held: nothing more can be paid meanwhile.
    s.card(&patient, "tok_visa").await;
    let held = s
        .api()
        .await
        .pay_invoice(as_user(&patient, pay(&invoice, 0)))
        .await
        .unwrap_err();
    assert_status(
        &held,
        Code::FailedPrecondition,
        Some("AMOUNT_EXCEEDS_BALANCE"),
    );
    let open = s.get_invoice(&office, &invoice.id).await;
    assert_eq!(
        (open.status, open.amount_paid_minor),
        (InvoiceStatus::Open as i32, 0)
    );
}

#[tokio::test]
async fn refunds_never_exceed_what_was_captured_and_the_ledger_holds() {
    let s = spawn().await;
    let (office, patient, invoice) = s.ready_to_pay("tok_visa").await;
    let payment = s
        .api()
        .await
        .pay_invoice(as_user(&patient, pay(&invoice, 0)))
        .await
        .unwrap()
        .into_inner();
    let refund = |amount: i64| RefundPaymentRequest {
        payment_id: payment.id.clone(),
        amount_minor: amount,
        reason: RefundReason::RequestedByPatient as i32,
    };
    let first = s
        .api()
        .await
        .refund_payment(as_user(&office, refund(2000)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.status, RefundStatus::Succeeded as i32);
    let too_much = s
        .api()
        .await
        .refund_payment(as_user(&office, refund(3001)))
        .await
        .unwrap_err();
    assert_status(
        &too_much,
        Code::FailedPrecondition,
        Some("AMOUNT_EXCEEDS_BALANCE"),
    );
    let rest = s
        .api()
        .await
        .refund_payment(as_user(&office, refund(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.amount.as_ref().map(|m| m.amount_minor), Some(3000));
    let nothing_left = s
        .api()
        .await
        .refund_payment(as_user(&office, refund(1)))
        .await
        .unwrap_err();
    assert_status(
        &nothing_left,
        Code::FailedPrecondition,
        Some("AMOUNT_EXCEEDS_BALANCE"),
    );
    let after = s.get_invoice(&office, &invoice.id).await;
    assert_eq!(
        (after.amount_paid_minor, after.amount_refunded_minor),
        (0, 5000)
    );
    assert_eq!(after.status, InvoiceStatus::Paid as i32);
    let id = s.sandbox().refunded_minor(
        &sqlx::query_scalar::<_, String>("SELECT processor_payment_id FROM payments")
            .fetch_one(s.pool())
            .await
            .unwrap(),
    );
    assert_eq!(id, 5000);
    let report = reconcile::pass(&s.billing.handle().state).await.unwrap();
    assert!(report.is_clean(), "{report}");
    // The check can fail: a paid amount that is not captured minus refunded is reported.
    sqlx::query("UPDATE invoices SET amount_paid_minor = 100")
        .execute(s.pool())
        .await
        .unwrap();
    let broken = reconcile::pass(&s.billing.handle().state).await.unwrap();
    assert_eq!(broken.ledger_violations.len(), 1, "{broken}");
}

#[tokio::test]
async fn a_storm_of_refunds_never_returns_more_than_was_captured() {
    let s = spawn_with(|c| c.billing.processor.sandbox_latency_ms = 200).await;
    let (office, patient, invoice) = s.ready_to_pay("tok_visa").await;
    let payment = s
        .api()
        .await
        .pay_invoice(as_user(&patient, pay(&invoice, 0)))
        .await
        .unwrap()
        .into_inner();
    let mut calls = Vec::new();
    for _ in 0..10 {
        let mut api = s.api().await;
        let req = as_user(
            &office,
            RefundPaymentRequest {
                payment_id: payment.id.clone(),
                amount_minor: 2000,
                reason: RefundReason::Duplicate as i32,
            },
        );
        calls.push(tokio::spawn(async move { api.refund_payment(req).await }));
    }
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.into_inner().status, RefundStatus::Succeeded as i32);
                ok += 1;
            }
            Err(e) => {
                assert_status(&e, Code::FailedPrecondition, Some("AMOUNT_EXCEEDS_BALANCE"));
            }
        }
    }
    assert_eq!(ok, 2, "two refunds of 2000 fit 5000");
    let after = s.get_invoice(&office, &invoice.id).await;
    assert_eq!(
        (after.amount_paid_minor, after.amount_refunded_minor),
        (1000, 4000)
    );
    let report = reconcile::pass(&s.billing.handle().state).await.unwrap();
    assert!(report.is_clean(), "{report}");
}

#[tokio::test]
async fn a_storm_of_new_cards_stays_within_the_cap_and_the_slots() {
    let s = spawn_with(|c| {
        c.billing.processor.sandbox_latency_ms = 100;
        c.billing.max_payment_methods = 3;
    })
    .await;
    let patient = s.user(carehub_platform::auth::Role::Patient, "pat").await;
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut api = s.api().await;
        let req = as_user(
            &patient,
            AddPaymentMethodRequest {
                patient_id: patient.id.clone(),
                processor_token: "tok_visa".into(),
                make_default: false,
            },
        );
        calls.push(tokio::spawn(
            async move { api.add_payment_method(req).await },
        ));
    }
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_status(&e, Code::ResourceExhausted, Some("RATE_LIMITED"));
            }
        }
    }
    assert_eq!(ok, 3, "the cap holds under the storm");
    let listed = s
        .api()
        .await
        .list_payment_methods(with_token(
            tonic::Request::new(ListPaymentMethodsRequest {
                patient_id: patient.id.clone(),
            }),
            &patient.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .payment_methods;
    assert_eq!(listed.len(), 3);
    assert_eq!(listed.iter().filter(|m| m.is_default).count(), 1);
}
