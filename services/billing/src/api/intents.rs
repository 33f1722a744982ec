//! What PayInvoice and RefundPayment share: both store their intent before the processor is
//! called, and a call whose idempotency key names a stored intent is answered from it (it has
//! an outcome), takes it over (pending, its lease ran out) or is refused (another call holds
//! it).

use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{BillingError, Result};
use crate::store::intents::{self, Intents};
use crate::store::payments::PaymentRow;
use crate::store::refunds::RefundRow;

/// What the first transaction decided.
pub enum Begin<R> {
    /// A stored intent to answer with (a retry of a call that got an outcome).
    Answer(R),
    /// An intent this call now holds: ask the processor.
    Drive(R),
}

/// A stored payment or refund, as the idempotency rules see it.
pub trait Intent {
    const KIND: Intents;
    fn id(&self) -> Uuid;
    fn request_hash(&self) -> &[u8];
    /// Whether the processor's answer is recorded (a pending refund the processor reported
    /// pending has one: its events settle it).
    fn answered(&self) -> bool;
}

impl Intent for PaymentRow {
    const KIND: Intents = Intents::Payments;
    fn id(&self) -> Uuid {
        self.id
    }
    fn request_hash(&self) -> &[u8] {
        &self.request_hash
    }
    fn answered(&self) -> bool {
        self.status != "pending"
    }
}

impl Intent for RefundRow {
    const KIND: Intents = Intents::Refunds;
    fn id(&self) -> Uuid {
        self.id
    }
    fn request_hash(&self) -> &[u8] {
        &self.request_hash
    }
    fn answered(&self) -> bool {
        self.status != "pending" || self.processor_refund_id.is_some()
    }
}

/// What a stored intent under the call's key (`found`, locked) means for the call sending
/// `hash`, if there is one: the same key with another request is refused, an answered intent is
/// the answer, a pending one is taken over when its lease ran out and refused as in use
/// otherwise.
pub async fn existing<R: Intent>(
    tx: &mut PgConnection,
    found: Option<R>,
    hash: &[u8],
    lease: u64,
) -> Result<Option<Result<Begin<R>>>> {
    let Some(existing) = found else {
        return Ok(None);
    };
    if existing.request_hash() != hash {
        return Ok(Some(Err(BillingError::KeyReused)));
    }
    if existing.answered() {
        return Ok(Some(Ok(Begin::Answer(existing))));
    }
    if intents::claim(tx, R::KIND, existing.id(), lease).await? {
        return Ok(Some(Ok(Begin::Drive(existing))));
    }
    Ok(Some(Err(BillingError::KeyInUse)))
}
