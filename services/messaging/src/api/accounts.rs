//! Identity's account events (its outbox calls AccountEvents/ApplyAccountEvent): a suspended or
//! terminated account can no longer send, and its streams close on every replica; a
//! reactivated one sends again. Deliveries may arrive out of order: the newest change wins.

use carehub_platform::call::Call;
use carehub_platform::errors::FieldViolations;
use carehub_proto::identity::v1::{AccountStatus, AccountStatusChanged};

use crate::error::{checked, Result};
use crate::store::moderation;
use crate::AppState;

pub async fn apply_account_event(
    state: &AppState,
    call: &Call,
    e: AccountStatusChanged,
) -> Result<()> {
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let user = v.require_uuid("user_id", &e.user_id);
    let status = AccountStatus::try_from(e.status)
        .ok()
        .filter(|s| *s != AccountStatus::Unspecified);
    v.check(
        status.is_some(),
        "status",
        "must be an ACCOUNT_STATUS other than UNSPECIFIED",
    );
    let at = carehub_platform::timestamps::field(e.change_time.as_ref(), "change_time", &mut v);
    v.check(at.is_some(), "change_time", "is required");
    v.finish()?;
    let (user, status, at) = (checked(user)?, checked(status)?, checked(at)?);
    let mut conn = state.pool.acquire().await?;
    let changed =
        moderation::set_account_state(&mut conn, user, status == AccountStatus::Active, at).await?;
    tracing::info!(user_id = %user, changed, "account event applied");
    Ok(())
}
