//! The SMS consent ledger's rules, shared by the webhook (carrier keywords), the API
//! (RecordSmsOptIn, GetSmsConsent), identity's preference changes (ApplySmsPreference) and the
//! delivery worker (may this number be texted now?).
//!
//! Identity's `sms_notifications` preference and the ledger agree in both directions: a change
//! made here (a keyword, an opt-in) is queued for identity's `ApplySmsConsent` through the
//! outbox in the change's own transaction; a change identity reports is recorded here with the
//! source `identity-preferences` and not sent back (it came from there).

use carehub_proto::identity::v1::ApplySmsConsentRequest;
use carehub_proto::messaging::v1 as pb;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::phone;
use crate::error::{MessagingError, Result};
use crate::store::sealed;
use crate::store::sms::{self as store, NumberRow};
use crate::AppState;

/// Identity's RPC the ledger's changes are applied with.
pub const APPLY_SMS_CONSENT: &str = "/carehub.identity.v1.IdentityInternal/ApplySmsConsent";
/// The outbox target of those calls.
pub const IDENTITY: &str = "identity";
/// The source of changes identity reports.
pub const FROM_IDENTITY: &str = "identity-preferences";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consent {
    /// Never opted in or out: service texts only.
    None,
    OptedIn,
    OptedOut,
}

impl Consent {
    pub fn as_str(self) -> &'static str {
        match self {
            Consent::None => "none",
            Consent::OptedIn => "opted_in",
            Consent::OptedOut => "opted_out",
        }
    }

    pub fn parse(s: &str) -> Consent {
        match s {
            "opted_in" => Consent::OptedIn,
            "opted_out" => Consent::OptedOut,
            _ => Consent::None,
        }
    }

    pub fn to_pb(self) -> pb::SmsConsentState {
        match self {
            Consent::None => pb::SmsConsentState::None,
            Consent::OptedIn => pb::SmsConsentState::OptedIn,
            Consent::OptedOut => pb::SmsConsentState::OptedOut,
        }
    }
}

/// The number `phone`'s ledger row, if it has one.
pub async fn find(
    conn: &mut PgConnection,
    state: &AppState,
    phone: &str,
) -> Result<Option<NumberRow>> {
    let candidates = phone::candidates(&state.crypto, phone)?;
    store::find(conn, &candidates).await
}

/// The ledger's state of `phone` now.
pub async fn current(state: &AppState, phone: &str) -> Result<Consent> {
    let mut conn = state.pool.acquire().await?;
    Ok(find(&mut conn, state, phone)
        .await?
        .map_or(Consent::None, |n| Consent::parse(&n.state)))
}

/// The row of `phone`, locked until the transaction ends; added (in state `none`, the number
/// sealed under the row's own id) when the ledger has never heard of it.
async fn lock_or_add(conn: &mut PgConnection, state: &AppState, phone: &str) -> Result<NumberRow> {
    let candidates = phone::candidates(&state.crypto, phone)?;
    if let Some(row) = store::lock(conn, &candidates).await? {
        return Ok(row);
    }
    let id = Uuid::now_v7();
    let sealed = sealed::seal(&state.crypto, id, ("sms_numbers", "phone", id), phone).await?;
    store::insert(conn, id, &phone::index(&state.crypto, phone)?, &sealed).await?;
    store::lock(conn, &candidates)
        .await?
        .ok_or_else(|| MessagingError::Internal("an SMS number just added is gone".into()))
}

/// A decision about a number.
#[derive(Clone, Debug)]
pub struct Decision<'a> {
    /// `OptedIn` or `OptedOut`.
    pub consent: Consent,
    pub source: &'a str,
    pub at: DateTime<Utc>,
    /// The user who holds the number, when known.
    pub user: Option<Uuid>,
    /// Record it in the history even when the state stays (an explicit opt-in is evidence
    /// worth keeping; a carrier repeating STOP is not).
    pub record_repeat: bool,
    /// Ignore it when the ledger holds a decision at least as recent (identity's changes
    /// arrive through an outbox, in any order).
    pub only_if_newer: bool,
    /// Tell identity when the state changed (not for changes that came from identity).
    pub tell_identity: bool,
}

/// What a decision did.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The number's row as it now stands.
    pub number: NumberRow,
    /// The state changed.
    pub changed: bool,
    /// A history entry was written.
    pub recorded: bool,
}

/// Applies `d` to `phone` in the caller's transaction `conn`.
pub async fn decide(
    conn: &mut PgConnection,
    state: &AppState,
    phone: &str,
    d: &Decision<'_>,
) -> Result<Applied> {
    let mut number = lock_or_add(conn, state, phone).await?;
    if d.only_if_newer && number.changed_at.is_some_and(|t| d.at <= t) {
        return Ok(Applied {
            number,
            changed: false,
            recorded: false,
        });
    }
    let changed = Consent::parse(&number.state) != d.consent;
    let recorded = changed || d.record_repeat;
    if recorded {
        store::record_change(conn, number.id, d.consent.as_str(), d.source, d.at, d.user).await?;
    } else if d.only_if_newer {
        store::touch(conn, number.id, d.consent.as_str(), d.at, d.user).await?;
    }
    if changed && d.tell_identity {
        state
            .outbox
            .enqueue(
                conn,
                IDENTITY,
                APPLY_SMS_CONSENT,
                &ApplySmsConsentRequest {
                    phone_number: phone.to_owned(),
                    sms_allowed: d.consent == Consent::OptedIn,
                    change_time: Some(carehub_platform::timestamps::to_proto(d.at)),
                },
            )
            .await
            .map_err(tonic::Status::from)?;
    }
    if recorded || d.only_if_newer {
        number.state = d.consent.as_str().to_owned();
        number.changed_at = Some(number.changed_at.map_or(d.at, |t| t.max(d.at)));
        number.user_id = d.user.or(number.user_id);
    }
    Ok(Applied {
        number,
        changed,
        recorded,
    })
}

/// The ledger's answer for `phone`: its state and whole history (`none` and no history for a
/// number it never heard of).
pub async fn consent_pb(
    conn: &mut PgConnection,
    number: Option<&NumberRow>,
    phone: &str,
) -> Result<pb::SmsConsent> {
    let Some(number) = number else {
        return Ok(pb::SmsConsent {
            phone_number: phone.to_owned(),
            state: pb::SmsConsentState::None as i32,
            history: Vec::new(),
        });
    };
    let history = store::history(conn, number.id)
        .await?
        .into_iter()
        .map(|c| pb::SmsConsentChange {
            state: Consent::parse(&c.state).to_pb() as i32,
            source: c.source,
            change_time: Some(carehub_platform::timestamps::to_proto(c.changed_at)),
        })
        .collect();
    Ok(pb::SmsConsent {
        phone_number: phone.to_owned(),
        state: Consent::parse(&number.state).to_pb() as i32,
        history,
    })
}
