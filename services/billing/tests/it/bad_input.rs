//! Bad input to every billing RPC: INVALID_ARGUMENT with reason INVALID_FIELD naming each bad
//! field (the BadRequest's field paths), nothing written; FAILED_PRECONDITION for what the
//! invoice's or payment's state or balance does not allow; NOT_FOUND for unknown ids; and card
//! data, refused in whatever field it comes, naming the field, never echoed and never stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Debug;

use carehub_platform::auth::Role;
use carehub_platform::timestamps::to_proto;
use carehub_proto::billing::v1::*;
use carehub_proto::common::v1::appointment_events_client::AppointmentEventsClient;
use carehub_proto::common::v1::{Money, PageRequest};
use carehub_proto::scheduling::v1::{AppointmentEvent, AppointmentEventKind};
use chrono::{Duration, Utc};
use tonic::{Code, Response, Status};
use uuid::Uuid;

use crate::common::{self, as_user, assert_status, key, pay, with_key, with_token, Suite, User};

/// Billing's own tables and the stored idempotency answers: a refused request adds no row.
const TABLES: &[&str] = &[
    "customers",
    "payment_methods",
    "prices",
    "invoices",
    "invoice_lines",
    "appointment_events",
    "payments",
    "refunds",
    "carehub_platform.idempotency_keys",
];

async fn counts(suite: &Suite) -> Vec<(&'static str, i64)> {
    let mut out = Vec::new();
    for t in TABLES {
        out.push((*t, suite.billing.count(t).await));
    }
    out
}

/// Asserts INVALID_ARGUMENT with reason INVALID_FIELD naming exactly `fields` (in any order);
/// answers the status.
fn invalid<T: Debug>(case: &str, result: Result<Response<T>, Status>, fields: &[&str]) -> Status {
    let e = result.expect_err(case);
    assert_eq!(e.code(), Code::InvalidArgument, "{case}: {e:?}");
    let mut got = assert_status(&e, Code::InvalidArgument, Some("INVALID_FIELD"));
    got.sort();
    let mut want: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
    want.sort();
    assert_eq!(got, want, "{case}: {e:?}");
    e
}

/// Asserts `code` with `reason`.
fn refused<T: Debug>(case: &str, result: Result<Response<T>, Status>, code: Code, reason: &str) {
    let e = result.expect_err(case);
    assert_eq!(
        (e.code(), common::reason(&e).as_deref()),
        (code, Some(reason)),
        "{case}: {e:?}"
    );
}

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor,
    })
}

fn price_request() -> SetPriceRequest {
    SetPriceRequest {
        price_code: "derm-15".into(),
        price: usd(7500),
        description: "Skin check, 15 min".into(),
        late_cancellation_fee_minor: 0,
        no_show_fee_minor: 0,
    }
}

fn line(code: &str, quantity: i32) -> CreateInvoiceLine {
    CreateInvoiceLine {
        price_code: code.into(),
        quantity,
    }
}

fn page(token: &str) -> Option<PageRequest> {
    Some(PageRequest {
        page_size: 0,
        page_token: token.into(),
    })
}

/// A request without an idempotency key.
fn unkeyed<T>(user: &User, msg: T) -> tonic::Request<T> {
    with_token(tonic::Request::new(msg), &user.token)
}

/// An id nobody has. Each of its groups starts with a letter, so that no run of 12 digits
/// spans its dashes: billing's card-number detector mistakes such ids for card numbers (see
/// [`ids_are_never_mistaken_for_card_numbers`]), and these tests are about something else.
fn uuid() -> String {
    let mut id = Uuid::new_v4().to_string().into_bytes();
    for (at, letter) in [(0, b'c'), (9, b'd'), (19, b'a'), (24, b'e')] {
        id[at] = letter;
    }
    String::from_utf8(id).unwrap()
}

/// A well-formed UUID (version 7, RFC variant) whose first three groups, read across their
/// dashes, are 16 digits passing the Luhn check, as about one id in 200 to 300 is (UUIDv7 or
/// v4 alike; measured on random ids).
const LUHN_LOOKING_ID: &str = "01924823-4470-7128-a456-789abcdef012";

/// Every field check of every RPC, one table per RPC.
#[tokio::test]
async fn every_rpc_names_each_malformed_field() {
    let suite = common::spawn().await;
    let (office, patient, invoice) = suite.ready_to_pay("tok_visa").await;
    suite.price(&office, "video-60", 9000, 0, 0).await;
    suite.invoice(&office, &patient, "video-30", 2).await;
    let mut api = suite.api().await;

    // Genuine page tokens, to send back with other filters or altered.
    let invoices_token = api
        .list_invoices(as_user(
            &office,
            ListInvoicesRequest {
                patient_id: patient.id.clone(),
                status: 0,
                page: Some(PageRequest {
                    page_size: 1,
                    page_token: String::new(),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .page
        .unwrap()
        .next_page_token;
    let prices_token = api
        .list_prices(as_user(
            &office,
            ListPricesRequest {
                page: Some(PageRequest {
                    page_size: 1,
                    page_token: String::new(),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .page
        .unwrap()
        .next_page_token;
    assert!(!invoices_token.is_empty() && !prices_token.is_empty());
    let altered = |t: &str| {
        let mut b = t.as_bytes().to_vec();
        let i = b.len() / 2;
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    let before = counts(&suite).await;

    // AddPaymentMethod
    let ok = || AddPaymentMethodRequest {
        patient_id: patient.id.clone(),
        processor_token: "tok_visa".into(),
        make_default: false,
    };
    for (case, r, fields) in [
        (
            "empty",
            AddPaymentMethodRequest::default(),
            vec!["patient_id", "processor_token"],
        ),
        (
            "patient_id not a UUID",
            AddPaymentMethodRequest {
                patient_id: "patient-1".into(),
                ..ok()
            },
            vec!["patient_id"],
        ),
        (
            "patient_id in the simple UUID form",
            AddPaymentMethodRequest {
                patient_id: Uuid::now_v7().simple().to_string(),
                ..ok()
            },
            vec!["patient_id"],
        ),
        (
            "token with a space",
            AddPaymentMethodRequest {
                processor_token: "tok visa".into(),
                ..ok()
            },
            vec!["processor_token"],
        ),
        (
            "token too long",
            AddPaymentMethodRequest {
                processor_token: format!("pm_{}", "a".repeat(253)),
                ..ok()
            },
            vec!["processor_token"],
        ),
    ] {
        invalid(
            case,
            api.add_payment_method(as_user(&patient, r)).await,
            &fields,
        );
    }
    invalid(
        "AddPaymentMethod with a malformed idempotency-key",
        api.add_payment_method(with_key(unkeyed(&patient, ok()), "short"))
            .await,
        &["idempotency-key"],
    );

    // ListPaymentMethods
    for (case, id) in [("empty patient_id", ""), ("patient_id not a UUID", "me")] {
        invalid(
            case,
            api.list_payment_methods(as_user(
                &patient,
                ListPaymentMethodsRequest {
                    patient_id: id.into(),
                },
            ))
            .await,
            &["patient_id"],
        );
    }

    // RemovePaymentMethod
    for (case, id) in [
        ("empty payment_method_id", ""),
        ("payment_method_id not a UUID", "pm_123"),
        ("payment_method_id cut short", &uuid()[..35]),
    ] {
        invalid(
            case,
            api.remove_payment_method(as_user(
                &patient,
                RemovePaymentMethodRequest {
                    payment_method_id: id.into(),
                },
            ))
            .await,
            &["payment_method_id"],
        );
    }

    // SetPrice
    for (case, r, fields) in [
        (
            "empty",
            SetPriceRequest::default(),
            vec!["price_code", "price", "description"],
        ),
        (
            "price code with a space",
            SetPriceRequest {
                price_code: "video 30".into(),
                ..price_request()
            },
            vec!["price_code"],
        ),
        (
            "price code with a slash",
            SetPriceRequest {
                price_code: "video/30".into(),
                ..price_request()
            },
            vec!["price_code"],
        ),
        (
            "price code not ASCII",
            SetPriceRequest {
                price_code: "vidéo-30".into(),
                ..price_request()
            },
            vec!["price_code"],
        ),
        (
            "price code of 65",
            SetPriceRequest {
                price_code: "p".repeat(65),
                ..price_request()
            },
            vec!["price_code"],
        ),
        (
            "currency in lower case",
            SetPriceRequest {
                price: Some(Money {
                    currency_code: "usd".into(),
                    amount_minor: 7500,
                }),
                ..price_request()
            },
            vec!["price.currency_code"],
        ),
        (
            "currency XXX",
            SetPriceRequest {
                price: Some(Money {
                    currency_code: "XXX".into(),
                    amount_minor: 7500,
                }),
                ..price_request()
            },
            vec!["price.currency_code"],
        ),
        (
            "currency missing",
            SetPriceRequest {
                price: Some(Money {
                    currency_code: String::new(),
                    amount_minor: 7500,
                }),
                ..price_request()
            },
            vec!["price.currency_code"],
        ),
        (
            "amount 0",
            SetPriceRequest {
                price: usd(0),
                ..price_request()
            },
            vec!["price.amount_minor"],
        ),
        (
            "amount negative",
            SetPriceRequest {
                price: usd(-7500),
                ..price_request()
            },
            vec!["price.amount_minor"],
        ),
        (
            "amount over 100000000",
            SetPriceRequest {
                price: usd(100_000_001),
                ..price_request()
            },
            vec!["price.amount_minor"],
        ),
        (
            "description blank",
            SetPriceRequest {
                description: "   ".into(),
                ..price_request()
            },
            vec!["description"],
        ),
        (
            "description of 201",
            SetPriceRequest {
                description: "d".repeat(201),
                ..price_request()
            },
            vec!["description"],
        ),
        (
            "description with a control character",
            SetPriceRequest {
                description: "Video visit\u{7}".into(),
                ..price_request()
            },
            vec!["description"],
        ),
        (
            "fees negative and over 100000000",
            SetPriceRequest {
                late_cancellation_fee_minor: -1,
                no_show_fee_minor: 100_000_001,
                ..price_request()
            },
            vec!["late_cancellation_fee_minor", "no_show_fee_minor"],
        ),
        (
            "everything wrong",
            SetPriceRequest {
                price_code: String::new(),
                price: Some(Money {
                    currency_code: "usd".into(),
                    amount_minor: 0,
                }),
                description: String::new(),
                late_cancellation_fee_minor: -5,
                no_show_fee_minor: 0,
            },
            vec![
                "price_code",
                "price.currency_code",
                "price.amount_minor",
                "description",
                "late_cancellation_fee_minor",
            ],
        ),
    ] {
        invalid(case, api.set_price(as_user(&office, r)).await, &fields);
    }
    invalid(
        "SetPrice with a malformed idempotency-key",
        api.set_price(with_key(
            unkeyed(&office, price_request()),
            &"k".repeat(129),
        ))
        .await,
        &["idempotency-key"],
    );

    // ListPrices
    for (case, p, fields) in [
        (
            "page token not a token",
            page("not a token!"),
            vec!["page.page_token"],
        ),
        (
            "page token altered",
            page(&altered(&prices_token)),
            vec!["page.page_token"],
        ),
        (
            "page token of ListInvoices",
            page(&invoices_token),
            vec!["page.page_token"],
        ),
        (
            "negative page size",
            Some(PageRequest {
                page_size: -1,
                page_token: String::new(),
            }),
            vec!["page.page_size"],
        ),
    ] {
        invalid(
            case,
            api.list_prices(as_user(&patient, ListPricesRequest { page: p }))
                .await,
            &fields,
        );
    }

    // CreateInvoice
    let ok = || CreateInvoiceRequest {
        patient_id: patient.id.clone(),
        currency_code: String::new(),
        lines: vec![line("video-30", 1)],
    };
    for (case, r, fields) in [
        (
            "empty",
            CreateInvoiceRequest::default(),
            vec!["patient_id", "lines"],
        ),
        (
            "patient_id not a UUID",
            CreateInvoiceRequest {
                patient_id: "42".into(),
                ..ok()
            },
            vec!["patient_id"],
        ),
        (
            "currency in lower case",
            CreateInvoiceRequest {
                currency_code: "usd".into(),
                ..ok()
            },
            vec!["currency_code"],
        ),
        (
            "currency XXX",
            CreateInvoiceRequest {
                currency_code: "XXX".into(),
                ..ok()
            },
            vec!["currency_code"],
        ),
        (
            "no lines",
            CreateInvoiceRequest {
                lines: vec![],
                ..ok()
            },
            vec!["lines"],
        ),
        (
            "51 lines",
            CreateInvoiceRequest {
                lines: (0..51).map(|_| line("video-30", 1)).collect(),
                ..ok()
            },
            vec!["lines"],
        ),
        (
            "quantity 0",
            CreateInvoiceRequest {
                lines: vec![line("video-30", 0)],
                ..ok()
            },
            vec!["lines[0].quantity"],
        ),
        (
            "quantity negative and over 100",
            CreateInvoiceRequest {
                lines: vec![
                    line("video-30", 1),
                    line("video-30", -1),
                    line("video-60", 101),
                ],
                ..ok()
            },
            vec!["lines[1].quantity", "lines[2].quantity"],
        ),
        (
            "bad price code in the second line",
            CreateInvoiceRequest {
                lines: vec![line("video-30", 1), line("video 60", 1)],
                ..ok()
            },
            vec!["lines[1].price_code"],
        ),
        (
            "a price code without a price",
            CreateInvoiceRequest {
                lines: vec![line("video-30", 1), line("no-such-visit", 1)],
                ..ok()
            },
            vec!["lines[1].price_code"],
        ),
        (
            "a price code without a price in the currency",
            CreateInvoiceRequest {
                currency_code: "EUR".into(),
                ..ok()
            },
            vec!["lines[0].price_code"],
        ),
    ] {
        invalid(case, api.create_invoice(as_user(&office, r)).await, &fields);
    }

    // GetInvoice, VoidInvoice
    for (case, id) in [
        ("empty invoice_id", ""),
        ("invoice_id not a UUID", "2026-000001"),
    ] {
        invalid(
            case,
            api.get_invoice(as_user(
                &patient,
                GetInvoiceRequest {
                    invoice_id: id.into(),
                },
            ))
            .await,
            &["invoice_id"],
        );
        invalid(
            case,
            api.void_invoice(as_user(
                &office,
                VoidInvoiceRequest {
                    invoice_id: id.into(),
                },
            ))
            .await,
            &["invoice_id"],
        );
    }

    // ListInvoices
    let ok = || ListInvoicesRequest {
        patient_id: patient.id.clone(),
        status: 0,
        page: None,
    };
    for (case, who, r, fields) in [
        (
            "patient_id not a UUID",
            &office,
            ListInvoicesRequest {
                patient_id: "all".into(),
                ..ok()
            },
            vec!["patient_id"],
        ),
        (
            "a patient without patient_id",
            &patient,
            ListInvoicesRequest {
                patient_id: String::new(),
                ..ok()
            },
            vec!["patient_id"],
        ),
        (
            "unknown status",
            &office,
            ListInvoicesRequest { status: 99, ..ok() },
            vec!["status"],
        ),
        (
            "page token not a token",
            &office,
            ListInvoicesRequest {
                page: page("%%%"),
                ..ok()
            },
            vec!["page.page_token"],
        ),
        (
            "page token altered",
            &office,
            ListInvoicesRequest {
                page: page(&altered(&invoices_token)),
                ..ok()
            },
            vec!["page.page_token"],
        ),
        (
            "page token with another status",
            &office,
            ListInvoicesRequest {
                status: InvoiceStatus::Open as i32,
                page: page(&invoices_token),
                ..ok()
            },
            vec!["page.page_token"],
        ),
        (
            "page token with another patient",
            &office,
            ListInvoicesRequest {
                patient_id: office.id.clone(),
                page: page(&invoices_token),
                ..ok()
            },
            vec!["page.page_token"],
        ),
        (
            "page token of ListPrices",
            &office,
            ListInvoicesRequest {
                page: page(&prices_token),
                ..ok()
            },
            vec!["page.page_token"],
        ),
        (
            "negative page size and bad status",
            &patient,
            ListInvoicesRequest {
                status: -1,
                page: Some(PageRequest {
                    page_size: -10,
                    page_token: String::new(),
                }),
                ..ok()
            },
            vec!["status", "page.page_size"],
        ),
    ] {
        invalid(case, api.list_invoices(as_user(who, r)).await, &fields);
    }

    // PayInvoice
    let ok = || pay(&invoice, 0);
    for (case, r, fields) in [
        ("empty", PayInvoiceRequest::default(), vec!["invoice_id"]),
        (
            "invoice_id not a UUID",
            PayInvoiceRequest {
                invoice_id: "inv_1".into(),
                ..ok()
            },
            vec!["invoice_id"],
        ),
        (
            "payment_method_id not a UUID",
            PayInvoiceRequest {
                payment_method_id: "pm_card_visa".into(),
                ..ok()
            },
            vec!["payment_method_id"],
        ),
        (
            "amount negative",
            PayInvoiceRequest {
                amount_minor: -1,
                ..ok()
            },
            vec!["amount_minor"],
        ),
        (
            "amount over 100000000",
            PayInvoiceRequest {
                amount_minor: 100_000_001,
                ..ok()
            },
            vec!["amount_minor"],
        ),
        (
            "everything wrong",
            PayInvoiceRequest {
                invoice_id: "x".into(),
                payment_method_id: "y".into(),
                amount_minor: -5000,
            },
            vec!["invoice_id", "payment_method_id", "amount_minor"],
        ),
    ] {
        invalid(case, api.pay_invoice(as_user(&patient, r)).await, &fields);
    }
    invalid(
        "PayInvoice without an idempotency-key",
        api.pay_invoice(unkeyed(&patient, ok())).await,
        &["idempotency-key"],
    );
    invalid(
        "PayInvoice with a malformed idempotency-key",
        api.pay_invoice(with_key(unkeyed(&patient, ok()), "key with spaces"))
            .await,
        &["idempotency-key"],
    );

    // GetPayment, GetReceipt
    for (case, id) in [
        ("empty payment_id", ""),
        ("payment_id not a UUID", "pi_123"),
    ] {
        invalid(
            case,
            api.get_payment(as_user(
                &patient,
                GetPaymentRequest {
                    payment_id: id.into(),
                },
            ))
            .await,
            &["payment_id"],
        );
        invalid(
            case,
            api.get_receipt(as_user(
                &patient,
                GetReceiptRequest {
                    payment_id: id.into(),
                },
            ))
            .await,
            &["payment_id"],
        );
    }

    // RefundPayment
    let ok = || RefundPaymentRequest {
        payment_id: uuid(),
        amount_minor: 0,
        reason: RefundReason::RequestedByPatient as i32,
    };
    for (case, r, fields) in [
        (
            "empty",
            RefundPaymentRequest::default(),
            vec!["payment_id", "reason"],
        ),
        (
            "payment_id not a UUID",
            RefundPaymentRequest {
                payment_id: "ch_1".into(),
                ..ok()
            },
            vec!["payment_id"],
        ),
        (
            "reason UNSPECIFIED",
            RefundPaymentRequest {
                reason: RefundReason::Unspecified as i32,
                ..ok()
            },
            vec!["reason"],
        ),
        (
            "reason unknown",
            RefundPaymentRequest { reason: 42, ..ok() },
            vec!["reason"],
        ),
        (
            "amount negative",
            RefundPaymentRequest {
                amount_minor: -100,
                ..ok()
            },
            vec!["amount_minor"],
        ),
        (
            "amount over 100000000",
            RefundPaymentRequest {
                amount_minor: 100_000_001,
                ..ok()
            },
            vec!["amount_minor"],
        ),
    ] {
        invalid(case, api.refund_payment(as_user(&office, r)).await, &fields);
    }
    invalid(
        "RefundPayment without an idempotency-key",
        api.refund_payment(unkeyed(&office, ok())).await,
        &["idempotency-key"],
    );

    // GetStatement
    let now = Utc::now();
    let ok = || GetStatementRequest {
        patient_id: patient.id.clone(),
        start_time: Some(to_proto(now - Duration::days(30))),
        end_time: Some(to_proto(now)),
        currency_code: String::new(),
    };
    for (case, r, fields) in [
        (
            "empty patient_id",
            GetStatementRequest::default(),
            vec!["patient_id"],
        ),
        (
            "patient_id not a UUID",
            GetStatementRequest {
                patient_id: "me".into(),
                ..ok()
            },
            vec!["patient_id"],
        ),
        (
            "period reversed",
            GetStatementRequest {
                start_time: Some(to_proto(now)),
                end_time: Some(to_proto(now - Duration::days(1))),
                ..ok()
            },
            vec!["start_time"],
        ),
        (
            "period empty",
            GetStatementRequest {
                start_time: Some(to_proto(now)),
                end_time: Some(to_proto(now)),
                ..ok()
            },
            vec!["start_time"],
        ),
        (
            "period of 367 days",
            GetStatementRequest {
                start_time: Some(to_proto(now - Duration::days(367))),
                ..ok()
            },
            vec!["end_time"],
        ),
        (
            "start only, 400 days ago",
            GetStatementRequest {
                start_time: Some(to_proto(now - Duration::days(400))),
                end_time: None,
                ..ok()
            },
            vec!["end_time"],
        ),
        (
            "start not a timestamp",
            GetStatementRequest {
                start_time: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..ok()
            },
            vec!["start_time"],
        ),
        (
            "currency in lower case",
            GetStatementRequest {
                currency_code: "usd".into(),
                ..ok()
            },
            vec!["currency_code"],
        ),
        (
            "currency XXX",
            GetStatementRequest {
                currency_code: "XXX".into(),
                ..ok()
            },
            vec!["currency_code"],
        ),
    ] {
        invalid(case, api.get_statement(as_user(&patient, r)).await, &fields);
    }
    // 366 days is the longest period.
    api.get_statement(as_user(
        &patient,
        GetStatementRequest {
            start_time: Some(to_proto(now - Duration::days(366))),
            ..ok()
        },
    ))
    .await
    .expect("a period of 366 days");

    // ApplyAppointmentEvent (the scheduling workload)
    let mut events = AppointmentEventsClient::new(suite.billing.channel("scheduling").await);
    let ok = || AppointmentEvent {
        event_id: format!("evt-{}", uuid()),
        kind: AppointmentEventKind::Booked as i32,
        appointment_id: uuid(),
        patient_id: patient.id.clone(),
        provider_id: uuid(),
        visit_type_id: uuid(),
        price_code: "video-30".into(),
        start_time: Some(to_proto(now + Duration::days(2))),
        end_time: Some(to_proto(now + Duration::days(2) + Duration::minutes(30))),
        late_cancellation: false,
        occur_time: Some(to_proto(now)),
    };
    for (case, e, fields) in [
        (
            "empty",
            AppointmentEvent::default(),
            vec![
                "event_id",
                "appointment_id",
                "patient_id",
                "kind",
                "price_code",
            ],
        ),
        (
            "event_id of 129",
            AppointmentEvent {
                event_id: "e".repeat(129),
                ..ok()
            },
            vec!["event_id"],
        ),
        (
            "appointment_id not a UUID",
            AppointmentEvent {
                appointment_id: "appt-1".into(),
                ..ok()
            },
            vec!["appointment_id"],
        ),
        (
            "patient_id not a UUID",
            AppointmentEvent {
                patient_id: "pat".into(),
                ..ok()
            },
            vec!["patient_id"],
        ),
        (
            "kind unknown",
            AppointmentEvent { kind: 77, ..ok() },
            vec!["kind"],
        ),
        (
            "price code with a space",
            AppointmentEvent {
                price_code: "video 30".into(),
                ..ok()
            },
            vec!["price_code"],
        ),
    ] {
        invalid(
            case,
            events
                .apply_appointment_event(with_key(tonic::Request::new(e), &key()))
                .await,
            &fields,
        );
    }

    assert_eq!(
        counts(&suite).await,
        before,
        "a refused request writes nothing"
    );
    suite.billing.shutdown().await;
    suite.identity.shutdown().await;
}

/// What the state or the balance does not allow (FAILED_PRECONDITION with STATE_CONFLICT or
/// AMOUNT_EXCEEDS_BALANCE), and ids nobody knows (NOT_FOUND, RESOURCE_NOT_FOUND).
#[tokio::test]
async fn state_balance_and_unknown_ids() {
    let suite = common::spawn().await;
    let (office, patient, invoice) = suite.ready_to_pay("tok_visa").await;
    let mut api = suite.api().await;
    const STATE: &str = "STATE_CONFLICT";
    const BALANCE: &str = "AMOUNT_EXCEEDS_BALANCE";
    const FP: Code = Code::FailedPrecondition;

    // Paying more than due, then exactly what is left.
    refused(
        "pay 5001 of 5000",
        api.pay_invoice(as_user(&patient, pay(&invoice, 5001)))
            .await,
        FP,
        BALANCE,
    );
    let first = api
        .pay_invoice(as_user(&patient, pay(&invoice, 2000)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.status, PaymentStatus::Succeeded as i32);
    refused(
        "pay 3001 of 3000 left",
        api.pay_invoice(as_user(&patient, pay(&invoice, 3001)))
            .await,
        FP,
        BALANCE,
    );
    refused(
        "void a partly paid invoice",
        api.void_invoice(as_user(
            &office,
            VoidInvoiceRequest {
                invoice_id: invoice.id.clone(),
            },
        ))
        .await,
        FP,
        STATE,
    );
    api.pay_invoice(as_user(&patient, pay(&invoice, 3000)))
        .await
        .unwrap();
    refused(
        "pay a paid invoice",
        api.pay_invoice(as_user(&patient, pay(&invoice, 0))).await,
        FP,
        STATE,
    );
    refused(
        "pay 1 on a paid invoice",
        api.pay_invoice(as_user(&patient, pay(&invoice, 1))).await,
        FP,
        STATE,
    );
    refused(
        "void a paid invoice",
        api.void_invoice(as_user(
            &office,
            VoidInvoiceRequest {
                invoice_id: invoice.id.clone(),
            },
        ))
        .await,
        FP,
        STATE,
    );

    // A void invoice takes no payment, and is not voided twice.
    let voided = suite.invoice(&office, &patient, "video-30", 1).await;
    let void = VoidInvoiceRequest {
        invoice_id: voided.id.clone(),
    };
    api.void_invoice(as_user(&office, void.clone()))
        .await
        .unwrap();
    refused(
        "pay a void invoice",
        api.pay_invoice(as_user(&patient, pay(&voided, 0))).await,
        FP,
        STATE,
    );
    refused(
        "pay part of a void invoice",
        api.pay_invoice(as_user(&office, pay(&voided, 100))).await,
        FP,
        STATE,
    );
    refused(
        "void a void invoice",
        api.void_invoice(as_user(&office, void)).await,
        FP,
        STATE,
    );

    // Refunds: never more than captured less refunded.
    let refund = |amount_minor: i64| RefundPaymentRequest {
        payment_id: first.id.clone(),
        amount_minor,
        reason: RefundReason::BillingError as i32,
    };
    refused(
        "refund 2001 of 2000",
        api.refund_payment(as_user(&office, refund(2001))).await,
        FP,
        BALANCE,
    );
    refused(
        "refund more than any payment could be",
        api.refund_payment(as_user(&office, refund(100_000_000)))
            .await,
        FP,
        BALANCE,
    );
    api.refund_payment(as_user(&office, refund(1500)))
        .await
        .unwrap();
    refused(
        "refund 501 of 500 left",
        api.refund_payment(as_user(&office, refund(501))).await,
        FP,
        BALANCE,
    );
    let rest = api
        .refund_payment(as_user(&office, refund(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.amount.map(|m| m.amount_minor), Some(500));
    refused(
        "refund all of nothing left",
        api.refund_payment(as_user(&office, refund(0))).await,
        FP,
        BALANCE,
    );
    refused(
        "refund 1 of nothing left",
        api.refund_payment(as_user(&office, refund(1))).await,
        FP,
        BALANCE,
    );

    // A declined payment has no receipt and nothing to refund; a patient without a card has
    // nothing to pay with.
    let declined_patient = suite.user(Role::Patient, "declined").await;
    suite.card(&declined_patient, "tok_chargeDeclined").await;
    let declined_invoice = suite
        .invoice(&office, &declined_patient, "video-30", 1)
        .await;
    let declined = api
        .pay_invoice(as_user(&declined_patient, pay(&declined_invoice, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        declined.status,
        PaymentStatus::Failed as i32,
        "{declined:?}"
    );
    refused(
        "receipt of a declined payment",
        api.get_receipt(as_user(
            &declined_patient,
            GetReceiptRequest {
                payment_id: declined.id.clone(),
            },
        ))
        .await,
        FP,
        STATE,
    );
    refused(
        "refund a declined payment",
        api.refund_payment(as_user(
            &office,
            RefundPaymentRequest {
                payment_id: declined.id.clone(),
                amount_minor: 0,
                reason: RefundReason::Duplicate as i32,
            },
        ))
        .await,
        FP,
        STATE,
    );
    let cardless = suite.user(Role::Patient, "cardless").await;
    let cardless_invoice = suite.invoice(&office, &cardless, "video-30", 1).await;
    refused(
        "pay without a payment method",
        api.pay_invoice(as_user(&cardless, pay(&cardless_invoice, 0)))
            .await,
        FP,
        STATE,
    );

    // Unknown ids.
    const NF: Code = Code::NotFound;
    const GONE: &str = "RESOURCE_NOT_FOUND";
    refused(
        "GetInvoice of an unknown id",
        api.get_invoice(as_user(&office, GetInvoiceRequest { invoice_id: uuid() }))
            .await,
        NF,
        GONE,
    );
    refused(
        "GetInvoice of an unknown id, as a patient",
        api.get_invoice(as_user(&patient, GetInvoiceRequest { invoice_id: uuid() }))
            .await,
        NF,
        GONE,
    );
    refused(
        "VoidInvoice of an unknown id",
        api.void_invoice(as_user(&office, VoidInvoiceRequest { invoice_id: uuid() }))
            .await,
        NF,
        GONE,
    );
    refused(
        "PayInvoice of an unknown invoice",
        api.pay_invoice(as_user(
            &patient,
            PayInvoiceRequest {
                invoice_id: uuid(),
                ..Default::default()
            },
        ))
        .await,
        NF,
        GONE,
    );
    let open = suite.invoice(&office, &patient, "video-30", 1).await;
    refused(
        "PayInvoice with an unknown payment method",
        api.pay_invoice(as_user(
            &patient,
            PayInvoiceRequest {
                invoice_id: open.id.clone(),
                payment_method_id: uuid(),
                amount_minor: 0,
            },
        ))
        .await,
        NF,
        GONE,
    );
    let other_card = suite.card(&declined_patient, "tok_visa").await;
    refused(
        "PayInvoice with another patient's payment method (billing office)",
        api.pay_invoice(as_user(
            &office,
            PayInvoiceRequest {
                invoice_id: open.id.clone(),
                payment_method_id: other_card.id.clone(),
                amount_minor: 0,
            },
        ))
        .await,
        NF,
        GONE,
    );
    refused(
        "GetPayment of an unknown id",
        api.get_payment(as_user(&office, GetPaymentRequest { payment_id: uuid() }))
            .await,
        NF,
        GONE,
    );
    refused(
        "GetReceipt of an unknown id",
        api.get_receipt(as_user(&patient, GetReceiptRequest { payment_id: uuid() }))
            .await,
        NF,
        GONE,
    );
    refused(
        "RefundPayment of an unknown payment",
        api.refund_payment(as_user(
            &office,
            RefundPaymentRequest {
                payment_id: uuid(),
                amount_minor: 0,
                reason: RefundReason::Duplicate as i32,
            },
        ))
        .await,
        NF,
        GONE,
    );
    refused(
        "RemovePaymentMethod of an unknown id",
        api.remove_payment_method(as_user(
            &patient,
            RemovePaymentMethodRequest {
                payment_method_id: uuid(),
            },
        ))
        .await,
        NF,
        GONE,
    );
    let removed = RemovePaymentMethodRequest {
        payment_method_id: other_card.id.clone(),
    };
    api.remove_payment_method(as_user(&declined_patient, removed.clone()))
        .await
        .unwrap();
    refused(
        "RemovePaymentMethod twice",
        api.remove_payment_method(as_user(&declined_patient, removed))
            .await,
        NF,
        GONE,
    );
    let provider = suite.user(Role::Provider, "doc").await;
    for (case, who) in [
        ("an unknown patient", uuid()),
        ("a provider, not a patient", provider.id.clone()),
    ] {
        refused(
            &format!("CreateInvoice for {case}"),
            api.create_invoice(as_user(
                &office,
                CreateInvoiceRequest {
                    patient_id: who.clone(),
                    currency_code: String::new(),
                    lines: vec![line("video-30", 1)],
                },
            ))
            .await,
            NF,
            GONE,
        );
        refused(
            &format!("AddPaymentMethod for {case}"),
            api.add_payment_method(as_user(
                &office,
                AddPaymentMethodRequest {
                    patient_id: who,
                    processor_token: "tok_visa".into(),
                    make_default: true,
                },
            ))
            .await,
            NF,
            GONE,
        );
    }
    suite.billing.shutdown().await;
    suite.identity.shutdown().await;
}

const PAN: &str = "4242424242424242";
const PAN_SPACED: &str = "4242 4242 4242 4242";
const OTHER_PAN: &str = "4000056655665556";

/// Asserts INVALID_ARGUMENT / INVALID_FIELD naming only `field`, with a description that speaks
/// of card data, and repeating none of it (`digits`).
fn card_data<T: Debug>(case: &str, result: Result<Response<T>, Status>, field: &str, digits: &str) {
    let e = result.expect_err(case);
    assert_eq!(e.code(), Code::InvalidArgument, "{case}: {e:?}");
    let mut fields = assert_status(&e, Code::InvalidArgument, Some("INVALID_FIELD"));
    fields.dedup();
    assert_eq!(fields, [field], "{case}: {e:?}");
    let details = carehub_platform::errors::details_of(&e);
    assert!(
        details
            .field_violations
            .iter()
            .any(|(f, d)| f == field && d.contains("card") && d.contains("never card data")),
        "{case}: the violation says card data: {e:?}"
    );
    let echoed = |s: &str| s.contains(digits) || s.contains(&digits.replace(' ', ""));
    assert!(
        !echoed(e.message()),
        "{case}: the message repeats the card data: {e:?}"
    );
    assert!(
        details.field_violations.iter().all(|(_, d)| !echoed(d)),
        "{case}: a description repeats the card data: {e:?}"
    );
}

/// Card data in any request field is refused, named by field, never echoed, and never stored
/// anywhere in billing's database (the idempotency answers included).
#[tokio::test]
async fn card_data_is_refused_and_never_stored() {
    let suite = common::spawn().await;
    let (office, patient, invoice) = suite.ready_to_pay("tok_visa").await;
    let mut api = suite.api().await;
    let paid = api
        .pay_invoice(as_user(&patient, pay(&invoice, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paid.status, PaymentStatus::Succeeded as i32);

    for (token, digits) in [
        (PAN, PAN),
        (PAN_SPACED, PAN_SPACED),
        ("4242-4242-4242-4242", PAN),
        ("tok_4242424242424242", PAN),
        ("123", "123"),
        ("1234", "1234"),
        ("cvv 123", "123"),
    ] {
        card_data(
            &format!("AddPaymentMethod with processor_token {token:?}"),
            api.add_payment_method(as_user(
                &patient,
                AddPaymentMethodRequest {
                    patient_id: patient.id.clone(),
                    processor_token: token.into(),
                    make_default: true,
                },
            ))
            .await,
            "processor_token",
            digits,
        );
    }
    card_data(
        "SetPrice with a card number in the description",
        api.set_price(as_user(
            &office,
            SetPriceRequest {
                description: format!("card {OTHER_PAN}"),
                ..price_request()
            },
        ))
        .await,
        "description",
        OTHER_PAN,
    );
    card_data(
        "SetPrice with a security code in the description",
        api.set_price(as_user(
            &office,
            SetPriceRequest {
                description: "Video visit, CVC: 4321".into(),
                ..price_request()
            },
        ))
        .await,
        "description",
        "4321",
    );
    card_data(
        "SetPrice with a card number as the price code",
        api.set_price(as_user(
            &office,
            SetPriceRequest {
                price_code: OTHER_PAN.into(),
                ..price_request()
            },
        ))
        .await,
        "price_code",
        OTHER_PAN,
    );

    // Every other string field of every request.
    card_data(
        "AddPaymentMethod patient_id",
        api.add_payment_method(as_user(
            &patient,
            AddPaymentMethodRequest {
                patient_id: PAN.into(),
                processor_token: "tok_visa".into(),
                make_default: false,
            },
        ))
        .await,
        "patient_id",
        PAN,
    );
    card_data(
        "ListPaymentMethods patient_id",
        api.list_payment_methods(as_user(
            &patient,
            ListPaymentMethodsRequest {
                patient_id: PAN.into(),
            },
        ))
        .await,
        "patient_id",
        PAN,
    );
    card_data(
        "RemovePaymentMethod payment_method_id",
        api.remove_payment_method(as_user(
            &patient,
            RemovePaymentMethodRequest {
                payment_method_id: PAN_SPACED.into(),
            },
        ))
        .await,
        "payment_method_id",
        PAN_SPACED,
    );
    card_data(
        "CreateInvoice lines[0].price_code",
        api.create_invoice(as_user(
            &office,
            CreateInvoiceRequest {
                patient_id: patient.id.clone(),
                currency_code: String::new(),
                lines: vec![line("video-30", 1), line(OTHER_PAN, 1)],
            },
        ))
        .await,
        "lines[1].price_code",
        OTHER_PAN,
    );
    card_data(
        "CreateInvoice patient_id",
        api.create_invoice(as_user(
            &office,
            CreateInvoiceRequest {
                patient_id: PAN.into(),
                currency_code: String::new(),
                lines: vec![line("video-30", 1)],
            },
        ))
        .await,
        "patient_id",
        PAN,
    );
    card_data(
        "GetInvoice invoice_id",
        api.get_invoice(as_user(
            &patient,
            GetInvoiceRequest {
                invoice_id: PAN.into(),
            },
        ))
        .await,
        "invoice_id",
        PAN,
    );
    card_data(
        "ListInvoices patient_id",
        api.list_invoices(as_user(
            &office,
            ListInvoicesRequest {
                patient_id: PAN.into(),
                ..Default::default()
            },
        ))
        .await,
        "patient_id",
        PAN,
    );
    card_data(
        "VoidInvoice invoice_id",
        api.void_invoice(as_user(
            &office,
            VoidInvoiceRequest {
                invoice_id: PAN.into(),
            },
        ))
        .await,
        "invoice_id",
        PAN,
    );
    for (method, digits) in [(PAN, PAN), ("123", "123")] {
        card_data(
            &format!("PayInvoice payment_method_id {method:?}"),
            api.pay_invoice(as_user(
                &patient,
                PayInvoiceRequest {
                    invoice_id: invoice.id.clone(),
                    payment_method_id: method.into(),
                    amount_minor: 0,
                },
            ))
            .await,
            "payment_method_id",
            digits,
        );
    }
    card_data(
        "PayInvoice invoice_id",
        api.pay_invoice(as_user(
            &patient,
            PayInvoiceRequest {
                invoice_id: PAN.into(),
                ..Default::default()
            },
        ))
        .await,
        "invoice_id",
        PAN,
    );
    card_data(
        "GetPayment payment_id",
        api.get_payment(as_user(
            &patient,
            GetPaymentRequest {
                payment_id: PAN.into(),
            },
        ))
        .await,
        "payment_id",
        PAN,
    );
    card_data(
        "RefundPayment payment_id",
        api.refund_payment(as_user(
            &office,
            RefundPaymentRequest {
                payment_id: PAN.into(),
                amount_minor: 0,
                reason: RefundReason::Duplicate as i32,
            },
        ))
        .await,
        "payment_id",
        PAN,
    );
    card_data(
        "GetReceipt payment_id",
        api.get_receipt(as_user(
            &patient,
            GetReceiptRequest {
                payment_id: PAN.into(),
            },
        ))
        .await,
        "payment_id",
        PAN,
    );
    card_data(
        "GetStatement patient_id",
        api.get_statement(as_user(
            &patient,
            GetStatementRequest {
                patient_id: PAN.into(),
                ..Default::default()
            },
        ))
        .await,
        "patient_id",
        PAN,
    );
    // Card data under the key of a call that succeeded: refused, not answered from (nor
    // fingerprinted into) the idempotency store.
    let second = suite.invoice(&office, &patient, "video-30", 1).await;
    let k = key();
    api.pay_invoice(common::keyed(&patient, &k, pay(&second, 0)))
        .await
        .unwrap();
    card_data(
        "PayInvoice with card data under a used key",
        api.pay_invoice(common::keyed(
            &patient,
            &k,
            PayInvoiceRequest {
                invoice_id: second.id.clone(),
                payment_method_id: PAN.into(),
                amount_minor: 0,
            },
        ))
        .await,
        "payment_method_id",
        PAN,
    );

    // A real card still works, and is kept as the processor's token: brand and last four.
    let card = suite.card(&patient, "tok_visa").await;
    assert_eq!((card.brand.as_str(), card.last4.as_str()), ("visa", "4242"));

    let stored = common::all_text(suite.pool()).await;
    // The scan covers the stored idempotency answers, which hold the calls above.
    assert!(
        suite
            .billing
            .count("carehub_platform.idempotency_keys")
            .await
            > 0
    );
    for digits in [PAN, OTHER_PAN, PAN_SPACED, "4242-4242-4242-4242"] {
        assert!(
            !stored.contains(digits),
            "{digits} is stored in billing's database"
        );
    }
    suite.billing.shutdown().await;
    suite.identity.shutdown().await;
}

/// An id is an id: a well-formed UUID is looked up, whatever digits it happens to hold. Billing
/// runs its card-number detector (`validate::no_card_data`) over id fields too, and the detector
/// reads digit runs across dashes, so a UUID like [`LUHN_LOOKING_ID`] — about one id in 200 to
/// 300 that billing and identity mint — is refused as card data by every RPC that names it:
/// such an invoice can never be read, paid or voided, such a patient never adds a card or
/// lists their invoices.
#[tokio::test]
async fn ids_are_never_mistaken_for_card_numbers() {
    let suite = common::spawn().await;
    let office = suite.user(Role::Billing, "office").await;
    let mut api = suite.api().await;
    let id = LUHN_LOOKING_ID.to_owned();
    assert_eq!(Uuid::try_parse(&id).unwrap().get_version_num(), 7);
    let not_found = |case: &str, r: Result<(), Status>| {
        let e = r.expect_err(case);
        assert_eq!(
            (e.code(), common::reason(&e).as_deref()),
            (Code::NotFound, Some("RESOURCE_NOT_FOUND")),
            "{case}: a well-formed id must be looked up, not refused as card data: {e:?}"
        );
    };
    not_found(
        "GetInvoice",
        api.get_invoice(as_user(
            &office,
            GetInvoiceRequest {
                invoice_id: id.clone(),
            },
        ))
        .await
        .map(drop),
    );
    not_found(
        "GetPayment",
        api.get_payment(as_user(
            &office,
            GetPaymentRequest {
                payment_id: id.clone(),
            },
        ))
        .await
        .map(drop),
    );
    let listed = api
        .list_payment_methods(as_user(
            &office,
            ListPaymentMethodsRequest {
                patient_id: id.clone(),
            },
        ))
        .await;
    assert!(
        listed.is_ok(),
        "ListPaymentMethods of a patient without cards answers an empty list: {listed:?}"
    );
    suite.billing.shutdown().await;
    suite.identity.shutdown().await;
}

/// "Any request field that looks like a full card number ... is refused with INVALID_ARGUMENT,
/// and is neither logged nor stored" holds for the appointment events billing serves too: an
/// event (from scheduling, whose price codes and ids are free to hold digits) carrying a card
/// number is refused naming the field, and the number is stored nowhere.
#[tokio::test]
async fn appointment_events_refuse_card_data_too() {
    let suite = common::spawn().await;
    let mut events = AppointmentEventsClient::new(suite.billing.channel("scheduling").await);
    let now = Utc::now();
    let ok = || AppointmentEvent {
        event_id: format!("evt-{}", uuid()),
        kind: AppointmentEventKind::Booked as i32,
        appointment_id: uuid(),
        patient_id: uuid(),
        provider_id: uuid(),
        visit_type_id: uuid(),
        price_code: "video-30".into(),
        start_time: Some(to_proto(now + Duration::days(2))),
        end_time: Some(to_proto(now + Duration::days(2) + Duration::minutes(30))),
        late_cancellation: false,
        occur_time: Some(to_proto(now)),
    };
    let mut answers = Vec::new();
    for (field, e) in [
        (
            "event_id",
            AppointmentEvent {
                event_id: PAN.into(),
                ..ok()
            },
        ),
        (
            "price_code",
            AppointmentEvent {
                price_code: OTHER_PAN.into(),
                ..ok()
            },
        ),
    ] {
        let answer = events
            .apply_appointment_event(with_key(tonic::Request::new(e), &key()))
            .await;
        answers.push((
            field,
            answer
                .map(drop)
                .map_err(|s| (s.code(), s.message().to_owned())),
        ));
    }
    let stored = common::all_text(suite.pool()).await;
    let leaked: Vec<&str> = [PAN, OTHER_PAN]
        .into_iter()
        .filter(|d| stored.contains(d))
        .collect();
    suite.billing.shutdown().await;
    suite.identity.shutdown().await;
    let refused: Vec<&str> = answers
        .iter()
        .filter(|(field, answer)| {
            matches!(answer, Err((Code::InvalidArgument, m)) if m.contains(field) && m.contains("card"))
        })
        .map(|(field, _)| *field)
        .collect();
    assert!(
        refused.len() == answers.len() && leaked.is_empty(),
        "ApplyAppointmentEvent with card numbers: answers {answers:?}; stored in billing's \
         database: {leaked:?}"
    );
}
