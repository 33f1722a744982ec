//! IdentityInternal: what other carehub services ask identity for — token-signing keys (also on
//! IdentityService), the revocation feed, and a user's summary.

use carehub_platform::audit::Purpose;
use carehub_platform::call::Call;
use carehub_platform::errors::FieldViolations;
use carehub_proto::identity::v1 as pb;
use carehub_proto::identity::v1::*;

use super::accounts::checked;
use super::credentials::secs;
use super::kinds;
use crate::api::convert::{summary_to_pb, timestamp};
use crate::domain::validation as val;
use crate::error::Result;
use crate::store::accounts as account_store;
use crate::store::sessions as store;
use crate::AppState;

/// Most revocations one ListRevocations answer carries.
const REVOCATIONS_MAX: i64 = 10_000;
/// `as_of` lags the database clock by this much, so that a revocation whose transaction was
/// still committing when the feed was read is not skipped by a client resuming from `as_of`.
const REVOCATION_FEED_LAG_SECS: i64 = 5;

pub async fn list_signing_keys(
    state: &AppState,
    _call: &Call,
    _r: ListSigningKeysRequest,
) -> Result<ListSigningKeysResponse> {
    let keys = state
        .keys
        .published()
        .iter()
        .map(|k| pb::SigningKey {
            kid: k.kid.clone(),
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            x: carehub_platform::jwt::jwk_x(&k.key),
            alg: "EdDSA".to_owned(),
            not_before_time: Some(timestamp(k.not_before)),
        })
        .collect();
    Ok(ListSigningKeysResponse { keys })
}

/// Ids and instants only (no personal data): not a read to audit.
pub async fn list_revocations(
    state: &AppState,
    _call: &Call,
    r: ListRevocationsRequest,
) -> Result<ListRevocationsResponse> {
    let mut v = FieldViolations::new();
    let since = carehub_platform::timestamps::field(r.since.as_ref(), "since", &mut v);
    v.finish()?;
    let mut conn = state.pool.acquire().await?;
    let now = store::db_now(&mut conn).await?;
    let lookback = secs(state.settings.access_token_ttl_secs) + carehub_platform::jwt::LEEWAY_SECS;
    let since = since.unwrap_or(now - chrono::Duration::seconds(lookback));
    let rows = store::revocations_since(&mut conn, since, REVOCATIONS_MAX).await?;
    let lagged = (now - chrono::Duration::seconds(REVOCATION_FEED_LAG_SECS)).max(since);
    // A full page may have left rows out: the client must resume from the last row it got, not
    // from "now", or those rows would never reach it.
    let as_of = match rows.last() {
        Some(last) if rows.len() as i64 >= REVOCATIONS_MAX => last.revoked_at.min(lagged),
        _ => lagged,
    };
    let revocations = rows
        .into_iter()
        .filter_map(|row| {
            let target = match (row.session_id, row.user_id) {
                (Some(s), _) => pb::revocation::Target::SessionId(s.to_string()),
                (None, Some(u)) => pb::revocation::Target::UserId(u.to_string()),
                (None, None) => return None,
            };
            Some(pb::Revocation {
                target: Some(target),
                revoke_time: Some(timestamp(row.revoked_at)),
            })
        })
        .collect();
    Ok(ListRevocationsResponse {
        revocations,
        as_of: Some(timestamp(as_of)),
    })
}

/// Another service reads a user's summary (name, role, status) for its own work: purpose
/// OPERATIONS, the calling workload as actor.
pub async fn lookup_user(
    state: &AppState,
    call: &Call,
    r: LookupUserRequest,
) -> Result<UserSummary> {
    let mut v = FieldViolations::new();
    let id = val::check_uuid(&mut v, "user_id", &r.user_id);
    v.finish()?;
    let id = checked(id)?;
    let a = {
        let mut conn = state.pool.acquire().await?;
        account_store::require_user(&mut conn, &state.crypto, id).await?
    };
    let summary = summary_to_pb(&a);
    let read = call.event(kinds::USER_LOOKUP, Purpose::Operations, "user", id, id);
    call.read(&state.pool, read, summary).await
}
