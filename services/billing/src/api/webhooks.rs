//! The processor's webhook (`POST /webhooks/stripe` on the admin port, mounted only when a
//! signing secret is configured): Stripe's signature scheme checked over the raw body with a
//! tolerance (`billing.webhook_tolerance_secs`), each event applied once by its id, and every
//! state change monotone (`payments::applies`, refunds' final states), so the right final
//! state is reached whatever order events arrive in. Forged or stale deliveries are refused
//! (400); replays of an applied event are answered 200 and change nothing.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use crate::api::{payments, refunds};
use crate::domain::webhook;
use crate::error::Result;
use crate::processor::{stripe, EventObject, ProcessorEvent};
use crate::store::{events, payments as payment_store, refunds as refund_store};
use crate::AppState;

/// Stripe's events are a few KiB; anything far larger is not one.
const MAX_BODY: usize = 256 * 1024;

pub fn routes(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/webhooks/stripe", post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn receive(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let header = headers
        .get(webhook::HEADER_NAME)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = webhook::verify(
        header,
        &body,
        &state.webhook_secrets,
        now,
        state.settings.webhook_tolerance_secs,
    ) {
        tracing::warn!(reason = e.reason(), "processor webhook refused");
        return (StatusCode::BAD_REQUEST, e.reason());
    }
    let event = match stripe::parse_event(&body) {
        Ok(e) => e,
        Err(_) => {
            tracing::warn!("processor webhook: a signed body that is not an event");
            return (StatusCode::BAD_REQUEST, "malformed_event");
        }
    };
    match apply(&state, &event).await {
        Ok(outcome) => {
            tracing::info!(event_id = %event.id, kind = %event.kind, outcome, "processor event");
            (StatusCode::OK, outcome)
        }
        Err(e) => {
            tracing::error!(event_id = %event.id, error = %e, "processor event not applied; the processor will redeliver");
            (StatusCode::INTERNAL_SERVER_ERROR, "retry")
        }
    }
}

/// Applies one verified event; what it did: `duplicate`, `applied`, `unknown` (an object
/// billing did not make), `ignored` (a type billing does not act on).
pub async fn apply(state: &AppState, event: &ProcessorEvent) -> Result<&'static str> {
    {
        let mut conn = state.pool.acquire().await?;
        if events::processor_event_seen(&mut conn, &event.id).await? {
            return Ok("duplicate");
        }
    }
    let outcome = match &event.object {
        EventObject::Charge {
            payment_id,
            outcome,
        } => {
            let found = {
                let mut conn = state.pool.acquire().await?;
                let by_processor = if outcome.processor_payment_id.is_empty() {
                    None
                } else {
                    payment_store::lock_by_processor_id(&mut conn, &outcome.processor_payment_id)
                        .await?
                };
                match (by_processor, payment_id) {
                    (Some(p), _) => Some(p.id),
                    (None, Some(id)) => payment_store::get(&mut conn, *id).await?.map(|p| p.id),
                    (None, None) => None,
                }
            };
            match found {
                Some(id) => {
                    payments::settle(state, id, outcome, Some(event.created), None).await?;
                    "applied"
                }
                None => "unknown",
            }
        }
        EventObject::Refund {
            refund_id, outcome, ..
        } => {
            let found = {
                let mut conn = state.pool.acquire().await?;
                let by_processor = if outcome.processor_refund_id.is_empty() {
                    None
                } else {
                    refund_store::lock_by_processor_id(&mut conn, &outcome.processor_refund_id)
                        .await?
                };
                match (by_processor, refund_id) {
                    (Some(r), _) => Some(r.id),
                    (None, Some(id)) => refund_store::lock(&mut conn, *id).await?.map(|r| r.id),
                    (None, None) => None,
                }
            };
            match found {
                Some(id) => {
                    refunds::settle(state, id, outcome, Some(event.created), None).await?;
                    "applied"
                }
                None => "unknown",
            }
        }
        EventObject::Other => "ignored",
    };
    let mut conn = state.pool.acquire().await?;
    events::record_processor_event(&mut conn, &event.id, &event.kind, event.created, outcome)
        .await?;
    Ok(outcome)
}
