//! Card data never enters billing: a request field that looks like a card number or a security
//! code is refused (INVALID_ARGUMENT naming the field), and the value is in no table and in no
//! log line, whatever the log level.

use std::io::Write;
use std::sync::{Arc, Mutex};

use carehub_platform::auth::Role;
use carehub_proto::billing::v1::*;
use carehub_proto::common::v1::Money;
use tonic::Code;

use crate::common::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const NUMBERS: [&str; 4] = [
    "4242424242424242",
    "4000 0566 5566 5556",
    "5555-5555-5555-4444",
    "378282246310005",
];

#[tokio::test]
async fn card_numbers_are_refused_and_found_in_no_table_and_no_log() {
    if !carehub_testkit::process::in_own_process(
        "card_data::card_numbers_are_refused_and_found_in_no_table_and_no_log",
    ) {
        return;
    }
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let s = spawn().await;
    let office = s.user(Role::Billing, "office").await;
    let patient = s.user(Role::Patient, "pat").await;
    s.price(&office, "video-30", 5000, 0, 0).await;
    s.card(&patient, "tok_visa").await;
    let invoice = s.invoice(&office, &patient, "video-30", 1).await;
    let mut api = s.api().await;
    let refused = |status: tonic::Status, field: &str| {
        let fields = assert_status(&status, Code::InvalidArgument, Some("INVALID_FIELD"));
        assert_eq!(fields, [field], "{status:?}");
        assert!(
            status.message().contains("card")
                || carehub_platform::errors::details_of(&status)
                    .field_violations
                    .iter()
                    .any(|(_, d)| d.contains("card")),
            "{status:?}"
        );
    };
    for number in NUMBERS {
        let e = api
            .add_payment_method(as_user(
                &patient,
                AddPaymentMethodRequest {
                    patient_id: patient.id.clone(),
                    processor_token: number.into(),
                    make_default: false,
                },
            ))
            .await
            .unwrap_err();
        refused(e, "processor_token");
        let e = api
            .set_price(as_user(
                &office,
                SetPriceRequest {
                    price_code: "video-60".into(),
                    price: Some(Money {
                        currency_code: "USD".into(),
                        amount_minor: 100,
                    }),
                    description: format!("card {number}"),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        refused(e, "description");
        let e = api
            .pay_invoice(as_user(
                &patient,
                PayInvoiceRequest {
                    invoice_id: invoice.id.clone(),
                    payment_method_id: number.into(),
                    amount_minor: 0,
                },
            ))
            .await
            .unwrap_err();
        refused(e, "payment_method_id");
    }
    // A security code where a token belongs, or labelled anywhere.
    let e = api
        .add_payment_method(as_user(
            &patient,
            AddPaymentMethodRequest {
                patient_id: patient.id.clone(),
                processor_token: "737".into(),
                make_default: false,
            },
        ))
        .await
        .unwrap_err();
    refused(e, "processor_token");
    let e = api
        .create_invoice(as_user(
            &office,
            CreateInvoiceRequest {
                patient_id: patient.id.clone(),
                currency_code: String::new(),
                lines: vec![CreateInvoiceLine {
                    price_code: "cvv-737".into(),
                    quantity: 1,
                }],
            },
        ))
        .await
        .unwrap_err();
    refused(e, "lines[0].price_code");
    // Nothing of it anywhere: not in any table (the idempotency store included), not in logs.
    let tables = all_text(s.pool()).await;
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(
        logged.contains("billing"),
        "the capture works: {} bytes",
        logged.len()
    );
    for number in NUMBERS {
        let digits: String = number.chars().filter(char::is_ascii_digit).collect();
        for text in [&tables, &logged] {
            assert!(
                !text.contains(number) && !text.contains(&digits),
                "{number} was kept"
            );
        }
    }
    assert!(!tables.contains("cvv-737") && !logged.contains("cvv-737"));
}
