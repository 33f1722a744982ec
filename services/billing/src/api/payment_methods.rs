//! Payment methods: cards the client tokenized with the processor, kept as the processor's
//! references (sealed) with the brand, last four digits and expiry (sealed too). The processor
//! customer is made on the patient's first card, with no name or email.

use carehub_platform::audit::Purpose;
use carehub_platform::auth::Role;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::billing::v1::*;
use uuid::Uuid;

use crate::api::access::{is_office, may_see};
use crate::api::convert::{method_to_pb, Card};
use crate::api::kinds;
use crate::api::validate;
use crate::error::{checked, BillingError, Result};
use crate::processor::ProcessorError;
use crate::store::customers::{self as store, CustomerRow, MethodRow};
use crate::AppState;

/// A processor token: `pm_...`, `tok_...`, letters, digits and underscores, at most 255.
fn token(v: &mut FieldViolations, value: &str) {
    v.check(
        !value.is_empty()
            && value.len() <= 255
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "processor_token",
        "must be the processor's token for the card (pm_... or tok_...): letters, digits and underscores",
    );
}

/// The patient a billing-office caller names must be a patient.
pub async fn check_patient(state: &AppState, user_is_office: bool, patient: Uuid) -> Result<()> {
    if !user_is_office {
        return Ok(());
    }
    let person = state.directory.person(patient, "patient").await?;
    if person.role != Role::Patient {
        return Err(BillingError::NotFound {
            what: "patient",
            id: patient.to_string(),
        });
    }
    Ok(())
}

pub async fn add(
    state: &AppState,
    call: &Call,
    r: AddPaymentMethodRequest,
) -> Result<PaymentMethod> {
    let mut v = FieldViolations::new();
    validate::no_card_data(
        &mut v,
        &[
            ("patient_id", &r.patient_id),
            ("processor_token", &r.processor_token),
        ],
        &["processor_token"],
    );
    if !v.is_empty() {
        return Err(v.into_status().into());
    }
    let user = call.user()?;
    call.idempotency_key()?;
    let patient = validate::id(&mut v, "patient_id", &r.patient_id);
    token(&mut v, &r.processor_token);
    v.finish()?;
    let patient = checked(patient)?;
    may_see(user, patient)?;
    check_patient(state, is_office(user), patient).await?;
    let customer = customer(state, patient).await?;
    let processor_customer = state
        .crypto
        .open_cell(
            patient,
            ("customers", "processor_customer_id", customer.id),
            &customer.processor_customer_id,
        )
        .await?;
    // The transaction below stays open while the processor attaches the card: a fixed number
    // of slots, the rest refused at once.
    let _slot = state
        .attach_slots
        .try_acquire()
        .map_err(|_| BillingError::Busy)?;
    let limit = state.settings.max_payment_methods;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            if store::lock_and_count_methods(conn, patient).await? >= i64::from(limit) {
                return Err(BillingError::TooManyMethods(limit));
            }
            let card = state
                .processor
                .attach_payment_method(&processor_customer, &r.processor_token)
                .await
                .map_err(|e| match e {
                    ProcessorError::Rejected { code } => {
                        BillingError::Status(carehub_platform::errors::invalid_field(
                            "processor_token",
                            &format!("the processor refused the token ({code})"),
                        ))
                    }
                    other => other.into(),
                })?;
            let id = Uuid::now_v7();
            let details = Card {
                brand: card.brand,
                last4: card.last4,
                exp_month: card.exp_month,
                exp_year: card.exp_year,
            };
            let json = serde_json::to_string(&details)
                .map_err(|e| BillingError::Internal(format!("card details: {e}")))?;
            let row = MethodRow {
                id,
                patient_id: patient,
                processor_method_id: state
                    .crypto
                    .seal_cell(
                        patient,
                        ("payment_methods", "processor_method_id", id),
                        &card.processor_method_id,
                    )
                    .await?,
                card: state
                    .crypto
                    .seal_cell(patient, ("payment_methods", "card", id), &json)
                    .await?,
                is_default: false,
                create_time: chrono::Utc::now(),
                removed_time: None,
            };
            let stored = store::insert_method(conn, &row, r.make_default).await?;
            Ok::<_, BillingError>(Change::new(
                method_to_pb(&stored, &details),
                call.event(
                    kinds::PAYMENT_METHOD_ADD,
                    Purpose::Payment,
                    "payment_method",
                    id,
                    patient,
                ),
            ))
        })
        .await?;
    Ok(ran.answer)
}

/// The patient's processor customer, made on first use. The processor's idempotency key is
/// derived from the patient, so two first cards at once make one processor customer.
async fn customer(state: &AppState, patient: Uuid) -> Result<CustomerRow> {
    let mut conn = state.pool.acquire().await?;
    if let Some(c) = store::customer(&mut conn, patient).await? {
        return Ok(c);
    }
    drop(conn);
    let id = Uuid::now_v7();
    let processor_id = state
        .processor
        .create_customer(&format!("carehub-customer-{patient}"), id)
        .await?;
    let sealed = state
        .crypto
        .seal_cell(
            patient,
            ("customers", "processor_customer_id", id),
            &processor_id,
        )
        .await?;
    let mut conn = state.pool.acquire().await?;
    Ok(store::insert_customer(
        &mut conn,
        &CustomerRow {
            patient_id: patient,
            id,
            processor: state.processor.name().to_owned(),
            processor_customer_id: sealed,
        },
    )
    .await?)
}

pub async fn open_card(state: &AppState, m: &MethodRow) -> Result<Card> {
    let json = state
        .crypto
        .open_cell(m.patient_id, ("payment_methods", "card", m.id), &m.card)
        .await?;
    serde_json::from_str(&json).map_err(|e| BillingError::Internal(format!("card details: {e}")))
}

pub async fn list(
    state: &AppState,
    call: &Call,
    r: ListPaymentMethodsRequest,
) -> Result<ListPaymentMethodsResponse> {
    let mut v = FieldViolations::new();
    validate::no_card_data(&mut v, &[("patient_id", &r.patient_id)], &[]);
    let patient = validate::id(&mut v, "patient_id", &r.patient_id);
    v.finish()?;
    let user = call.user()?;
    let patient = checked(patient)?;
    may_see(user, patient)?;
    let rows = {
        let mut conn = state.pool.acquire().await?;
        store::methods(&mut conn, patient).await?
    };
    let mut payment_methods = Vec::with_capacity(rows.len());
    for m in &rows {
        payment_methods.push(method_to_pb(m, &open_card(state, m).await?));
    }
    call.read(
        &state.pool,
        call.event(
            kinds::PAYMENT_METHOD_READ,
            Purpose::Payment,
            "patient",
            patient,
            patient,
        ),
        ListPaymentMethodsResponse { payment_methods },
    )
    .await
}

pub async fn remove(
    state: &AppState,
    call: &Call,
    r: RemovePaymentMethodRequest,
) -> Result<PaymentMethod> {
    let mut v = FieldViolations::new();
    validate::no_card_data(&mut v, &[("payment_method_id", &r.payment_method_id)], &[]);
    let id = validate::id(&mut v, "payment_method_id", &r.payment_method_id);
    v.finish()?;
    let user = call.user()?;
    call.idempotency_key()?;
    let id = checked(id)?;
    let not_found = || BillingError::NotFound {
        what: "payment method",
        id: id.to_string(),
    };
    let current = {
        let mut conn = state.pool.acquire().await?;
        store::method(&mut conn, id).await?.ok_or_else(not_found)?
    };
    may_see(user, current.patient_id)?;
    if current.removed_time.is_some() {
        return Err(not_found());
    }
    let patient = current.patient_id;
    let card = open_card(state, &current).await?;
    let processor_method = state
        .crypto
        .open_cell(
            patient,
            ("payment_methods", "processor_method_id", id),
            &current.processor_method_id,
        )
        .await?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let removed = store::remove_method(conn, id)
                .await?
                .ok_or_else(not_found)?;
            match state
                .processor
                .detach_payment_method(&processor_method)
                .await
            {
                // Detached already (at the processor, or by a call that did not commit here).
                Ok(()) | Err(ProcessorError::Rejected { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            Ok::<_, BillingError>(Change::new(
                method_to_pb(&removed, &card),
                call.event(
                    kinds::PAYMENT_METHOD_REMOVE,
                    Purpose::Payment,
                    "payment_method",
                    id,
                    patient,
                ),
            ))
        })
        .await?;
    Ok(ran.answer)
}
