//! The price list: a price per price code (scheduling's visit types name theirs) and currency,
//! with the late-cancellation and no-show fees of the cancellation policy.

use carehub_platform::audit::{AuditEvent, Purpose};
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_platform::paging;
use carehub_proto::billing::v1::*;
use carehub_proto::common::v1::PageResponse;

use crate::api::convert::price_to_pb;
use crate::api::kinds;
use crate::api::validate;
use crate::domain::money::MAX_AMOUNT_MINOR;
use crate::error::{BillingError, Result};
use crate::store::prices::{self as store, PriceRow};
use crate::AppState;

pub async fn set(state: &AppState, call: &Call, r: SetPriceRequest) -> Result<Price> {
    let mut v = FieldViolations::new();
    validate::no_card_data(
        &mut v,
        &[
            ("price_code", &r.price_code),
            ("description", &r.description),
        ],
        &[],
    );
    if !v.is_empty() {
        return Err(v.into_status().into());
    }
    call.user()?;
    call.idempotency_key()?;
    validate::price_code(&mut v, "price_code", &r.price_code);
    let (currency, amount) = match &r.price {
        Some(m) => (
            validate::currency(
                &mut v,
                "price.currency_code",
                &m.currency_code,
                state.currency,
            ),
            m.amount_minor,
        ),
        None => {
            v.add("price", "is required");
            (state.currency, 1)
        }
    };
    if r.price.as_ref().is_some_and(|m| m.currency_code.is_empty()) {
        v.add("price.currency_code", "is required");
    }
    validate::amount(&mut v, "price.amount_minor", amount, false);
    validate::description(&mut v, "description", &r.description);
    for (field, fee) in [
        ("late_cancellation_fee_minor", r.late_cancellation_fee_minor),
        ("no_show_fee_minor", r.no_show_fee_minor),
    ] {
        v.check(
            (0..=MAX_AMOUNT_MINOR).contains(&fee),
            field,
            "must be 0 (none) to 100000000 minor units",
        );
    }
    v.finish()?;
    let row = PriceRow {
        price_code: r.price_code.clone(),
        currency: currency.code.to_owned(),
        amount_minor: amount,
        description: r.description.trim().to_owned(),
        late_cancellation_fee_minor: r.late_cancellation_fee_minor,
        no_show_fee_minor: r.no_show_fee_minor,
        update_time: chrono::Utc::now(),
    };
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let stored = store::upsert(conn, &row).await?;
            Ok::<_, BillingError>(Change::new(
                price_to_pb(&stored),
                AuditEvent::of(
                    kinds::PRICE_SET,
                    Purpose::Operations,
                    "price",
                    format!("{}.{}", stored.price_code, stored.currency),
                )
                .caller(&call.caller),
            ))
        })
        .await?;
    Ok(ran.answer)
}

/// Pages are offsets into the list's (code, currency) order: the list is short and changes
/// rarely.
type Cursor = (i64, bool);

pub async fn list(
    state: &AppState,
    call: &Call,
    r: ListPricesRequest,
) -> Result<ListPricesResponse> {
    call.user()?;
    let mut v = FieldViolations::new();
    let filter = paging::Filter::new("billing.ListPrices");
    let page = paging::Page::<Cursor>::read(r.page.as_ref(), &filter, "page", &mut v);
    v.finish()?;
    let offset = page.after.map_or(0, |(o, _)| o);
    let mut rows = {
        let mut conn = state.pool.acquire().await?;
        store::list(&mut conn, offset, page.fetch()).await?
    };
    let size = page.size;
    let next = page.finish(&mut rows, &filter, |_| (offset + size, true));
    Ok(ListPricesResponse {
        prices: rows.iter().map(price_to_pb).collect(),
        page: Some(PageResponse {
            next_page_token: next,
        }),
    })
}
