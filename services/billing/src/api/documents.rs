//! Receipts and statements for the patient: what was paid with which card, and the account
//! over a period with a running balance.

use carehub_platform::audit::Purpose;
use carehub_platform::call::Call;
use carehub_platform::errors::FieldViolations;
use carehub_platform::timestamps::{self, to_proto};
use carehub_proto::billing::v1::*;
use chrono::{Duration, Utc};

use crate::api::access::may_see;
use crate::api::convert::{invoice_number, line_to_pb, money, refund_to_pb};
use crate::api::kinds;
use crate::api::payment_methods::open_card;
use crate::api::validate;
use crate::error::{checked, BillingError, Result};
use crate::store::{customers, invoices, payments, refunds};
use crate::AppState;

pub async fn receipt(state: &AppState, call: &Call, r: GetReceiptRequest) -> Result<Receipt> {
    let mut v = FieldViolations::new();
    validate::no_card_data(&mut v, &[("payment_id", &r.payment_id)], &[]);
    let id = validate::id(&mut v, "payment_id", &r.payment_id);
    v.finish()?;
    let user = call.user()?;
    let id = checked(id)?;
    let not_found = || BillingError::NotFound {
        what: "payment",
        id: id.to_string(),
    };
    let mut conn = state.pool.acquire().await?;
    let p = payments::get(&mut conn, id).await?.ok_or_else(not_found)?;
    may_see(user, p.patient_id)?;
    if p.status != "succeeded" {
        return Err(BillingError::State {
            what: "payment",
            id: id.to_string(),
            state: "not succeeded",
            action: "give a receipt",
        });
    }
    let invoice = invoices::get(&mut conn, p.invoice_id)
        .await?
        .ok_or_else(not_found)?;
    let lines = invoices::lines(&mut conn, &[invoice.id]).await?;
    let method = customers::method(&mut conn, p.payment_method_id)
        .await?
        .ok_or_else(not_found)?;
    let refunds = refunds::of_payment(&mut conn, id).await?;
    drop(conn);
    let card = open_card(state, &method).await?;
    let number = invoice_number(&invoice);
    let id_text = id.simple().to_string();
    let receipt = Receipt {
        receipt_number: format!("R-{number}-{}", &id_text[id_text.len() - 8..]),
        payment_id: id.to_string(),
        invoice_id: invoice.id.to_string(),
        invoice_number: number,
        patient_id: p.patient_id.to_string(),
        amount: money(&p.currency, p.captured_minor),
        card_brand: card.brand,
        card_last4: card.last4,
        paid_time: p.succeeded_time.map(to_proto),
        lines: lines.iter().map(line_to_pb).collect(),
        refunds: refunds
            .iter()
            .filter(|r| r.status == "succeeded")
            .map(refund_to_pb)
            .collect(),
    };
    call.read(
        &state.pool,
        call.event(
            kinds::PAYMENT_READ,
            Purpose::Payment,
            "payment",
            id,
            p.patient_id,
        ),
        receipt,
    )
    .await
}

pub async fn statement(state: &AppState, call: &Call, r: GetStatementRequest) -> Result<Statement> {
    let mut v = FieldViolations::new();
    validate::no_card_data(
        &mut v,
        &[
            ("patient_id", &r.patient_id),
            ("currency_code", &r.currency_code),
        ],
        &[],
    );
    let patient = validate::id(&mut v, "patient_id", &r.patient_id);
    let end = timestamps::field(r.end_time.as_ref(), "end_time", &mut v).unwrap_or_else(Utc::now);
    let start = timestamps::field(r.start_time.as_ref(), "start_time", &mut v)
        .unwrap_or(end - Duration::days(90));
    v.check(start < end, "start_time", "must be before end_time");
    v.check(
        end - start <= Duration::days(366),
        "end_time",
        "the period must be at most 366 days",
    );
    let currency = validate::currency(&mut v, "currency_code", &r.currency_code, state.currency);
    v.finish()?;
    let user = call.user()?;
    let patient = checked(patient)?;
    may_see(user, patient)?;
    let code = currency.code;
    let mut conn = state.pool.acquire().await?;
    let opening = invoices::balance_before(&mut conn, patient, code, start).await?;
    let mut entries: Vec<StatementEntry> = Vec::new();
    for i in invoices::finalized_between(&mut conn, patient, code, start, end).await? {
        entries.push(StatementEntry {
            time: i.finalize_time.map(to_proto),
            kind: StatementEntryKind::Invoice as i32,
            reference_id: i.id.to_string(),
            invoice_number: invoice_number(&i),
            amount_minor: i.total_minor,
            balance_minor: 0,
        });
    }
    let mut numbers = std::collections::HashMap::new();
    for p in payments::succeeded_between(&mut conn, patient, code, start, end).await? {
        let number = match numbers.get(&p.invoice_id) {
            Some(n) => String::clone(n),
            None => {
                let n = invoices::get(&mut conn, p.invoice_id)
                    .await?
                    .map(|i| invoice_number(&i))
                    .unwrap_or_default();
                numbers.insert(p.invoice_id, n.clone());
                n
            }
        };
        entries.push(StatementEntry {
            time: p.succeeded_time.map(to_proto),
            kind: StatementEntryKind::Payment as i32,
            reference_id: p.id.to_string(),
            invoice_number: number,
            amount_minor: -p.captured_minor,
            balance_minor: 0,
        });
    }
    for rf in refunds::succeeded_between(&mut conn, patient, code, start, end).await? {
        entries.push(StatementEntry {
            time: rf.succeeded_time.map(to_proto),
            kind: StatementEntryKind::Refund as i32,
            reference_id: rf.id.to_string(),
            invoice_number: numbers.get(&rf.invoice_id).cloned().unwrap_or_default(),
            amount_minor: rf.amount_minor,
            balance_minor: 0,
        });
    }
    drop(conn);
    entries.sort_by_key(|e| e.time.map(|t| (t.seconds, t.nanos)));
    let mut balance = opening;
    for e in &mut entries {
        balance += e.amount_minor;
        e.balance_minor = balance;
    }
    let statement = Statement {
        patient_id: patient.to_string(),
        currency_code: code.to_owned(),
        start_time: Some(to_proto(start)),
        end_time: Some(to_proto(end)),
        opening_balance_minor: opening,
        entries,
        closing_balance_minor: balance,
    };
    call.read(
        &state.pool,
        call.event(
            kinds::PAYMENT_READ,
            Purpose::Payment,
            "statement",
            patient,
            patient,
        ),
        statement,
    )
    .await
}
