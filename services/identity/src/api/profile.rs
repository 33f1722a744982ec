//! The signed-in user's own account: profile, consents and communication preferences.

use carehub_platform::audit::Purpose;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::identity::v1::*;

use super::accounts::{checked, lock_account, Outbox};
use super::kinds;
use super::registration::issue_code;
use crate::api::convert::{opt_timestamp, user_to_pb};
use crate::domain::account::{
    CommPrefs, ConsentChange, ConsentState, Contact, PREFS_MASK_PATHS, PROFILE_MASK_PATHS,
};
use crate::domain::validation as val;
use crate::error::{IdentityError, Result};
use crate::store::accounts::{self as store, PrefsUpdate, ProfileUpdate};
use crate::AppState;

/// The update_mask paths, checked against `allowed` (each unknown or missing path is a
/// violation of "update_mask").
fn mask_paths(
    v: &mut FieldViolations,
    mask: Option<&prost_types::FieldMask>,
    allowed: &[&str],
) -> Vec<String> {
    let paths: Vec<String> = mask.map(|m| m.paths.clone()).unwrap_or_default();
    if paths.is_empty() {
        v.add("update_mask", "is required (name the fields to update)");
        return Vec::new();
    }
    if paths.len() > 32 {
        v.add("update_mask", "has too many paths");
        return Vec::new();
    }
    for p in &paths {
        if !allowed.contains(&p.as_str()) {
            let shown: String = p.chars().take(64).collect();
            v.add(
                "update_mask",
                format!("unknown path {shown:?}; allowed: {}", allowed.join(", ")),
            );
        }
    }
    paths
}

fn consents_to_pb(c: &ConsentState) -> Consents {
    Consents {
        user_id: c.user_id.to_string(),
        accepted_terms_version: c.terms_version.clone().unwrap_or_default(),
        terms_accept_time: opt_timestamp(c.terms_accepted_at),
        accepted_privacy_version: c.privacy_version.clone().unwrap_or_default(),
        privacy_accept_time: opt_timestamp(c.privacy_accepted_at),
        marketing_opt_in: c.marketing_opt_in,
        marketing_update_time: opt_timestamp(c.marketing_updated_at),
        sms_opt_in: c.sms_opt_in,
        sms_update_time: opt_timestamp(c.sms_updated_at),
    }
}

pub(super) fn prefs_to_pb(p: &CommPrefs) -> CommunicationPreferences {
    CommunicationPreferences {
        user_id: p.user_id.to_string(),
        email_notifications: p.email_notifications,
        sms_notifications: p.sms_notifications,
        push_notifications: p.push_notifications,
        language: p.language.clone(),
        quiet_hours_start: i32::from(p.quiet_hours_start),
        quiet_hours_end: i32::from(p.quiet_hours_end),
    }
}

// ---- profile ----
//
// The holder reads and changes their own account: purpose PATIENT_REQUEST.

pub async fn get_profile(state: &AppState, call: &Call, _r: GetProfileRequest) -> Result<User> {
    let user_id = call.user()?.user_id;
    let a = {
        let mut conn = state.pool.acquire().await?;
        store::require_user(&mut conn, &state.crypto, user_id).await?
    };
    let read = call.event(
        kinds::PROFILE_READ,
        Purpose::PatientRequest,
        "user",
        user_id,
        user_id,
    );
    call.read(&state.pool, read, user_to_pb(&a)).await
}

pub async fn update_profile(
    state: &AppState,
    call: &Call,
    r: UpdateProfileRequest,
) -> Result<User> {
    let user_id = call.user()?.user_id;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let paths = mask_paths(&mut v, r.update_mask.as_ref(), &PROFILE_MASK_PATHS);
    let mut update = ProfileUpdate::default();
    match &r.user {
        None if !paths.is_empty() => v.add("user", "is required"),
        None => {}
        Some(u) => {
            for p in &paths {
                match p.as_str() {
                    "given_name" => {
                        update.given_name =
                            val::check_name(&mut v, "user.given_name", &u.given_name)
                    }
                    "family_name" => {
                        update.family_name =
                            val::check_name(&mut v, "user.family_name", &u.family_name);
                    }
                    "phone" => {
                        update.phone = val::check_optional_phone(&mut v, "user.phone", &u.phone)
                    }
                    "time_zone" => {
                        update.time_zone =
                            val::check_time_zone(&mut v, "user.time_zone", &u.time_zone)
                    }
                    "email" => update.email = val::check_email(&mut v, "user.email", &u.email),
                    _ => {}
                }
            }
        }
    }
    v.finish()?;
    let ttl = state.settings.verification_code_ttl_secs;
    let outbox = Outbox::new(state);
    let crypto = &state.crypto;
    let changed = call.event(
        kinds::PROFILE_UPDATE,
        Purpose::PatientRequest,
        "user",
        user_id,
        user_id,
    );
    let consent_withdrawn = super::security::account(&call.caller, kinds::CONSENT_UPDATE, user_id);
    let user = call
        .mutate(&state.idempotency, &r, async |tx| {
            let before = lock_account(tx, &state.crypto, user_id).await?;
            let after = store::update_profile(tx, crypto, user_id, &update).await?;
            let mut change = Change::new(user_to_pb(&after), changed);
            if after.email != before.email {
                store::expire_codes(tx, user_id, Contact::Email).await?;
                issue_code(
                    tx,
                    crypto,
                    &outbox,
                    user_id,
                    Contact::Email,
                    &after.email,
                    ttl,
                )
                .await?;
            }
            if after.phone != before.phone {
                store::expire_codes(tx, user_id, Contact::Phone).await?;
                match &after.phone {
                    Some(p) => {
                        issue_code(tx, crypto, &outbox, user_id, Contact::Phone, p, ttl).await?;
                    }
                    None => {
                        // No phone, no SMS consent.
                        if store::get_consents(tx, user_id).await?.sms_opt_in {
                            let withdraw = ConsentChange {
                                sms_opt_in: Some(false),
                                ..ConsentChange::default()
                            };
                            store::update_consents(tx, user_id, &withdraw).await?;
                            change = change.with(consent_withdrawn);
                        }
                    }
                }
            }
            Ok::<_, IdentityError>(change)
        })
        .await?;
    outbox.deliver(state).await;
    Ok(user.answer)
}

// ---- consents ----

pub async fn get_consents(
    state: &AppState,
    call: &Call,
    _r: GetConsentsRequest,
) -> Result<Consents> {
    let user_id = call.user()?.user_id;
    let c = {
        let mut conn = state.pool.acquire().await?;
        store::get_consents(&mut conn, user_id).await?
    };
    let read = call.event(
        kinds::CONSENT_READ,
        Purpose::PatientRequest,
        "user",
        user_id,
        user_id,
    );
    call.read(&state.pool, read, consents_to_pb(&c)).await
}

pub async fn update_consents(
    state: &AppState,
    call: &Call,
    r: UpdateConsentsRequest,
) -> Result<Consents> {
    let user_id = call.user()?.user_id;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let terms = val::check_version(
        &mut v,
        "accept_terms_version",
        &r.accept_terms_version,
        false,
    );
    let privacy = val::check_version(
        &mut v,
        "accept_privacy_version",
        &r.accept_privacy_version,
        false,
    );
    v.finish()?;
    let change = ConsentChange {
        terms_version: checked(terms)?,
        privacy_version: checked(privacy)?,
        marketing_opt_in: r.marketing_opt_in,
        sms_opt_in: r.sms_opt_in,
    };
    let event = super::security::account(&call.caller, kinds::CONSENT_UPDATE, user_id);
    let consents = call
        .mutate(&state.idempotency, &r, async |tx| {
            let a = lock_account(tx, &state.crypto, user_id).await?;
            if change.sms_opt_in == Some(true) && a.phone.is_none() {
                return Err(IdentityError::Conflict {
                    kind: "PHONE",
                    subject: user_id.to_string(),
                    description: "SMS consent needs a phone number on the account".to_owned(),
                });
            }
            let c = store::update_consents(tx, user_id, &change).await?;
            Ok(Change::new(consents_to_pb(&c), event))
        })
        .await?;
    Ok(consents.answer)
}

// ---- communication preferences ----

pub async fn get_communication_preferences(
    state: &AppState,
    call: &Call,
    _r: GetCommunicationPreferencesRequest,
) -> Result<CommunicationPreferences> {
    let user_id = call.user()?.user_id;
    let p = {
        let mut conn = state.pool.acquire().await?;
        store::get_prefs(&mut conn, user_id).await?
    };
    let read = call.event(
        kinds::PREFERENCES_READ,
        Purpose::PatientRequest,
        "user",
        user_id,
        user_id,
    );
    call.read(&state.pool, read, prefs_to_pb(&p)).await
}

pub async fn update_communication_preferences(
    state: &AppState,
    call: &Call,
    r: UpdateCommunicationPreferencesRequest,
) -> Result<CommunicationPreferences> {
    let user_id = call.user()?.user_id;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let paths = mask_paths(&mut v, r.update_mask.as_ref(), &PREFS_MASK_PATHS);
    let mut update = PrefsUpdate::default();
    match &r.preferences {
        None if !paths.is_empty() => v.add("preferences", "is required"),
        None => {}
        Some(p) => {
            for path in &paths {
                match path.as_str() {
                    "email_notifications" => {
                        update.email_notifications = Some(p.email_notifications)
                    }
                    "sms_notifications" => update.sms_notifications = Some(p.sms_notifications),
                    "push_notifications" => update.push_notifications = Some(p.push_notifications),
                    "language" => {
                        update.language =
                            val::check_language(&mut v, "preferences.language", &p.language)
                    }
                    "quiet_hours_start" => {
                        update.quiet_hours_start = val::check_hour(
                            &mut v,
                            "preferences.quiet_hours_start",
                            p.quiet_hours_start,
                        );
                    }
                    "quiet_hours_end" => {
                        update.quiet_hours_end = val::check_hour(
                            &mut v,
                            "preferences.quiet_hours_end",
                            p.quiet_hours_end,
                        );
                    }
                    _ => {}
                }
            }
        }
    }
    v.finish()?;
    let event = call.event(
        kinds::PREFERENCES_UPDATE,
        Purpose::PatientRequest,
        "user",
        user_id,
        user_id,
    );
    let prefs = call
        .mutate(&state.idempotency, &r, async |tx| {
            lock_account(tx, &state.crypto, user_id).await?;
            let before = store::lock_prefs(tx, &[user_id]).await?;
            let p = store::update_prefs(tx, user_id, &update).await?;
            // Messaging's SMS ledger follows the user's choice, and only an actual change: an
            // update that leaves it as it was (or that ApplySmsConsent made, which never comes
            // through here) would only echo.
            let was = before.first().map(|b| b.sms_notifications);
            if was != Some(p.sms_notifications) {
                crate::events::sms_preference_changed(tx, &state.outbox, &p).await?;
            }
            Ok::<_, IdentityError>(Change::new(prefs_to_pb(&p), event))
        })
        .await?;
    Ok(prefs.answer)
}
