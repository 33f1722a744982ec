//! Invoices: read by their patient and the billing office; created by billing staff for
//! services outside scheduling (finalized at once) or from scheduling's events
//! (`api::appointments`); voided while nothing is paid on them.

use carehub_platform::audit::Purpose;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_platform::paging;
use carehub_proto::billing::v1::*;
use carehub_proto::common::v1::PageResponse;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::api::access::{is_office, may_see};
use crate::api::convert::invoice_to_pb;
use crate::api::kinds;
use crate::api::payment_methods::check_patient;
use crate::api::validate;
use crate::domain::invoice::{self, Line, LineKind, Status};
use crate::error::{checked, BillingError, Result};
use crate::store::invoices::{self as store, InvoiceRow};
use crate::store::prices;
use crate::AppState;

const MAX_LINES: usize = 50;

/// The invoice with its lines, as the proto.
pub async fn load_pb(conn: &mut PgConnection, row: &InvoiceRow) -> Result<Invoice> {
    let lines = store::lines(conn, &[row.id]).await?;
    Ok(invoice_to_pb(row, &lines))
}

pub fn status_of(row: &InvoiceRow) -> Result<Status> {
    Status::parse(&row.status)
        .ok_or_else(|| BillingError::Internal(format!("invoice {} has an unknown status", row.id)))
}

pub async fn create(state: &AppState, call: &Call, r: CreateInvoiceRequest) -> Result<Invoice> {
    let mut v = FieldViolations::new();
    let mut texts: Vec<(String, &str)> = vec![
        ("patient_id".to_owned(), r.patient_id.as_str()),
        ("currency_code".to_owned(), r.currency_code.as_str()),
    ];
    for (i, l) in r.lines.iter().enumerate() {
        texts.push((format!("lines[{i}].price_code"), l.price_code.as_str()));
    }
    let fields: Vec<(&str, &str)> = texts.iter().map(|(f, t)| (f.as_str(), *t)).collect();
    validate::no_card_data(&mut v, &fields, &[]);
    if !v.is_empty() {
        return Err(v.into_status().into());
    }
    call.user()?;
    call.idempotency_key()?;
    let patient = validate::id(&mut v, "patient_id", &r.patient_id);
    let currency = validate::currency(&mut v, "currency_code", &r.currency_code, state.currency);
    v.check(
        (1..=MAX_LINES).contains(&r.lines.len()),
        "lines",
        "must hold 1 to 50 lines",
    );
    for (i, l) in r.lines.iter().enumerate() {
        validate::price_code(&mut v, &format!("lines[{i}].price_code"), &l.price_code);
        v.check(
            (1..=100).contains(&l.quantity),
            &format!("lines[{i}].quantity"),
            "must be 1 to 100",
        );
    }
    v.finish()?;
    let patient = checked(patient)?;
    check_patient(state, true, patient).await?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let mut lines = Vec::with_capacity(r.lines.len());
            let mut missing = FieldViolations::new();
            for (i, l) in r.lines.iter().enumerate() {
                match prices::get(conn, &l.price_code, currency.code).await? {
                    Some(p) => lines.push(Line {
                        kind: LineKind::Manual,
                        price_code: p.price_code,
                        description: p.description,
                        quantity: l.quantity,
                        unit_amount_minor: p.amount_minor,
                    }),
                    None => missing.add(
                        &format!("lines[{i}].price_code"),
                        format!("has no price in {}", currency.code),
                    ),
                }
            }
            missing.finish()?;
            let total = invoice::total(&lines)
                .filter(|t| *t <= crate::domain::money::MAX_AMOUNT_MINOR * 50)
                .ok_or_else(|| {
                    BillingError::Status(carehub_platform::errors::invalid_field(
                        "lines",
                        "the invoice's total is too large",
                    ))
                })?;
            let id = Uuid::now_v7();
            store::insert(conn, id, patient, None, currency.code, &lines, total).await?;
            let row = store::finalize(conn, id, Utc::now()).await?;
            let answer = load_pb(conn, &row).await?;
            Ok::<_, BillingError>(Change::new(
                answer,
                call.event(
                    kinds::INVOICE_CREATE,
                    Purpose::Payment,
                    "invoice",
                    id,
                    patient,
                ),
            ))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn get(state: &AppState, call: &Call, r: GetInvoiceRequest) -> Result<Invoice> {
    let mut v = FieldViolations::new();
    validate::no_card_data(&mut v, &[("invoice_id", &r.invoice_id)], &[]);
    let id = validate::id(&mut v, "invoice_id", &r.invoice_id);
    v.finish()?;
    let user = call.user()?;
    let id = checked(id)?;
    let mut conn = state.pool.acquire().await?;
    let row = store::get(&mut conn, id)
        .await?
        .ok_or(BillingError::NotFound {
            what: "invoice",
            id: id.to_string(),
        })?;
    may_see(user, row.patient_id)?;
    let answer = load_pb(&mut conn, &row).await?;
    drop(conn);
    call.read(
        &state.pool,
        call.event(
            kinds::INVOICE_READ,
            Purpose::Payment,
            "invoice",
            id,
            row.patient_id,
        ),
        answer,
    )
    .await
}

type Cursor = (DateTime<Utc>, Uuid);

pub async fn list(
    state: &AppState,
    call: &Call,
    r: ListInvoicesRequest,
) -> Result<ListInvoicesResponse> {
    let mut v = FieldViolations::new();
    validate::no_card_data(&mut v, &[("patient_id", &r.patient_id)], &[]);
    let patient = validate::optional_id(&mut v, "patient_id", &r.patient_id);
    let status = match InvoiceStatus::try_from(r.status) {
        Ok(s) => Status::from_pb(s),
        Err(_) => {
            v.add("status", "is not an InvoiceStatus");
            None
        }
    };
    let filter = paging::Filter::new("billing.ListInvoices")
        .field("patient_id", Some(r.patient_id.as_bytes()))
        .field("status", Some(&r.status.to_be_bytes()));
    let page = paging::Page::<Cursor>::read(r.page.as_ref(), &filter, "page", &mut v);
    v.finish()?;
    let user = call.user()?;
    match patient {
        Some(p) => may_see(user, p)?,
        None if is_office(user) => {}
        None => {
            return Err(BillingError::Status(
                carehub_platform::errors::invalid_field(
                    "patient_id",
                    "is required: patients list their own invoices",
                ),
            ))
        }
    }
    let (mut rows, lines) = {
        let mut conn = state.pool.acquire().await?;
        let mut rows = store::list(
            &mut conn,
            patient,
            status.map(Status::as_str),
            page.after,
            page.fetch(),
        )
        .await?;
        rows.truncate(usize::try_from(page.fetch()).unwrap_or(usize::MAX));
        let ids: Vec<Uuid> = rows.iter().map(|i| i.id).collect();
        let lines = store::lines(&mut conn, &ids).await?;
        (rows, lines)
    };
    let next = page.finish(&mut rows, &filter, |i| (i.create_time, i.id));
    let mut invoices = Vec::with_capacity(rows.len());
    for i in &rows {
        carehub_platform::call::reads::record(
            &state.pool,
            call.event(
                kinds::INVOICE_READ,
                Purpose::Payment,
                "invoice",
                i.id,
                i.patient_id,
            ),
        )
        .await?;
        call.mark_audited();
        invoices.push(invoice_to_pb(i, &lines));
    }
    Ok(ListInvoicesResponse {
        invoices,
        page: Some(PageResponse {
            next_page_token: next,
        }),
    })
}

pub async fn void(state: &AppState, call: &Call, r: VoidInvoiceRequest) -> Result<Invoice> {
    let mut v = FieldViolations::new();
    validate::no_card_data(&mut v, &[("invoice_id", &r.invoice_id)], &[]);
    let id = validate::id(&mut v, "invoice_id", &r.invoice_id);
    v.finish()?;
    call.user()?;
    call.idempotency_key()?;
    let id = checked(id)?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let row = store::lock(conn, id).await?.ok_or(BillingError::NotFound {
                what: "invoice",
                id: id.to_string(),
            })?;
            let status = status_of(&row)?;
            let reserved = store::reserved(conn, id).await?;
            let voidable = status == Status::Draft
                || (status == Status::Open && row.amount_paid_minor == 0 && reserved == 0);
            if !voidable {
                return Err(BillingError::State {
                    what: "invoice",
                    id: id.to_string(),
                    state: if status == Status::Open {
                        "partly paid"
                    } else {
                        status.as_str()
                    },
                    action: "void it",
                });
            }
            let row = store::void(conn, id).await?;
            let answer = load_pb(conn, &row).await?;
            Ok::<_, BillingError>(Change::new(
                answer,
                call.event(
                    kinds::INVOICE_CHANGE,
                    Purpose::Payment,
                    "invoice",
                    id,
                    row.patient_id,
                ),
            ))
        })
        .await?;
    Ok(ran.answer)
}
