//! Video visits: join tokens for a LiveKit-compatible SFU.
//!
//! A join token is an HS256 JWT (RFC 7519) the SFU verifies with its API key and secret: `iss`
//! the API key, `sub` the participant's user id (no name: nothing about the person reaches the
//! SFU), `nbf`/`exp`, a `jti`, and a `video` grant for one room with every permission spelled
//! out, so that an SFU's defaults never decide what a participant may do.
//!
//! **The API secret.** The platform's key source holds a fixed set of named keys (KEK,
//! blind-index, audit-checkpoint, signing) and no room for a secret of another kind, so the
//! secret is derived: `base64url(HMAC-SHA-256(HMAC-SHA-256(KEK, label), api key))` under the
//! current KEK version — a key of its own per API key, which never wraps data and cannot be
//! turned back into the KEK. The SFU must be configured with the same value for the same API key
//! ([`api_secret`] computes it; the operator installs it in the SFU's `keys:`). Rotating
//! messaging's KEK, or changing `messaging.video.api_key`, changes the secret: the SFU's copy
//! must follow, or joins are refused until it does.
//!
//! **Room names** are derived from the appointment id under another keyed hash and stored with
//! the visit: the SFU sees neither the appointment id (a UUIDv7 carries its creation time) nor
//! anything about the patient.
//!
//! Tokens are secrets: they are never stored and never logged.

use std::sync::Arc;

use anyhow::Context as _;
use carehub_platform::crypto::service_seal::{context, SealError, ServiceSealer};
use carehub_platform::keys::KeySource;
use chrono::{DateTime, Duration, Utc};
use data_encoding::{BASE64URL_NOPAD, HEXLOWER};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::config::VideoSettings;

/// Names the API-secret derivation; part of the key, never changed once secrets are in use.
const SECRET_LABEL: &[u8] = b"carehub messaging video api secret v1";
/// Names the room-name derivation.
const ROOM_LABEL: &[u8] = b"carehub messaging video room names v1";
/// Room names are this prefix and 32 hex digits (128 bits of the keyed hash).
pub const ROOM_PREFIX: &str = "visit-";

/// The API secret the SFU must hold for `api_key`: what messaging signs join tokens with, under
/// the current version of messaging's KEK. For operators (to configure the SFU) and for the
/// signer; the caller must not log it.
pub fn api_secret(
    keys: &Arc<dyn KeySource>,
    api_key: &str,
) -> Result<Zeroizing<String>, SealError> {
    secret_with(&ServiceSealer::new(SECRET_LABEL, Arc::clone(keys)), api_key)
}

fn secret_with(sealer: &ServiceSealer, api_key: &str) -> Result<Zeroizing<String>, SealError> {
    let version = sealer.current_version()?;
    let mac = Zeroizing::new(sealer.mac(version, &context(b"api key", &[api_key.as_bytes()]))?);
    Ok(Zeroizing::new(BASE64URL_NOPAD.encode(mac.as_ref())))
}

/// Why a participant gets no token now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Cancelled,
    /// Before `start - window`.
    TooEarly {
        opens: DateTime<Utc>,
    },
    /// After `end + window`.
    Over,
}

/// A token's validity: from `not_before` until `expires`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: DateTime<Utc>,
    pub expires: DateTime<Utc>,
}

/// When a token asked for at `now` for a visit from `start` to `end` is valid: from now until
/// `now + ttl`, cut at the window's close (`end + window`); none for a cancelled visit or
/// outside `[start - window, end + window]`. Pure, so the rule is tested without a clock.
pub fn validity(
    (start, end, cancelled): (DateTime<Utc>, DateTime<Utc>, bool),
    now: DateTime<Utc>,
    window: Duration,
    ttl: Duration,
) -> Result<Validity, Refusal> {
    if cancelled {
        return Err(Refusal::Cancelled);
    }
    let (opens, closes) = (start - window, end + window);
    if now < opens {
        return Err(Refusal::TooEarly { opens });
    }
    // A token that would expire the moment it is issued is no token.
    if now >= closes {
        return Err(Refusal::Over);
    }
    Ok(Validity {
        not_before: now,
        expires: (now + ttl).min(closes),
    })
}

#[derive(Serialize)]
struct Header {
    alg: &'static str,
    typ: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VideoGrant<'a> {
    room: &'a str,
    room_join: bool,
    can_publish: bool,
    can_subscribe: bool,
    can_publish_data: bool,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: String,
    nbf: i64,
    exp: i64,
    jti: String,
    video: VideoGrant<'a>,
}

/// A signed join token. Its `Debug` leaves the token out.
pub struct JoinToken {
    pub token: String,
    pub id: Uuid,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("video api secret: {0}")]
    Key(#[from] SealError),
    #[error("encoding the token: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the token's HMAC key was refused")]
    Mac,
}

/// The SFU's settings and what signs join tokens and names rooms.
pub struct Video {
    settings: VideoSettings,
    secrets: ServiceSealer,
    rooms: ServiceSealer,
}

impl std::fmt::Debug for Video {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Video")
            .field("api_key", &self.settings.api_key)
            .field("url", &self.settings.url)
            .finish_non_exhaustive()
    }
}

impl Video {
    /// Fails when the KEK is not available now: better at start than at a patient's first join.
    pub fn new(settings: &VideoSettings, keys: &Arc<dyn KeySource>) -> anyhow::Result<Self> {
        let video = Video {
            settings: settings.clone(),
            secrets: ServiceSealer::new(SECRET_LABEL, Arc::clone(keys)),
            rooms: ServiceSealer::new(ROOM_LABEL, Arc::clone(keys)),
        };
        secret_with(&video.secrets, &video.settings.api_key)
            .context("deriving the video API secret from messaging's KEK")?;
        Ok(video)
    }

    pub fn url(&self) -> &str {
        &self.settings.url
    }

    /// How early before a visit and how late after it a participant may join.
    pub fn window(&self) -> Duration {
        Duration::minutes(i64::from(self.settings.window_minutes))
    }

    /// The longest lifetime of a token.
    pub fn ttl(&self) -> Duration {
        Duration::seconds(i64::from(self.settings.token_ttl_secs))
    }

    /// The SFU room of `appointment`'s visit (stored when the visit is first recorded).
    pub fn room_for(&self, appointment: Uuid) -> Result<String, SealError> {
        let version = self.rooms.current_version()?;
        let mac = self
            .rooms
            .mac(version, &context(b"appointment", &[appointment.as_bytes()]))?;
        Ok(format!("{ROOM_PREFIX}{}", HEXLOWER.encode(&mac[..16])))
    }

    /// A join token for `participant` in `room`, valid as `validity` says.
    pub fn sign(
        &self,
        participant: Uuid,
        room: &str,
        validity: Validity,
    ) -> Result<JoinToken, SignError> {
        let id = Uuid::now_v7();
        let claims = Claims {
            iss: &self.settings.api_key,
            sub: participant.to_string(),
            nbf: validity.not_before.timestamp(),
            exp: validity.expires.timestamp(),
            jti: id.to_string(),
            video: VideoGrant {
                room,
                room_join: true,
                can_publish: true,
                can_subscribe: true,
                can_publish_data: true,
            },
        };
        let header = Header {
            alg: "HS256",
            typ: "JWT",
        };
        let secret = secret_with(&self.secrets, &self.settings.api_key)?;
        Ok(JoinToken {
            token: jws(&header, &claims, secret.as_bytes())?,
            id,
        })
    }
}

/// The compact JWS of `claims` under `header`, HMAC-SHA-256 with `key` (RFC 7515 §3.1).
fn jws(header: &Header, claims: &Claims<'_>, key: &[u8]) -> Result<String, SignError> {
    let signing_input = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(&serde_json::to_vec(header)?),
        BASE64URL_NOPAD.encode(&serde_json::to_vec(claims)?)
    );
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| SignError::Mac)?;
    mac.update(signing_input.as_bytes());
    let signature = mac.finalize().into_bytes();
    Ok(format!(
        "{signing_input}.{}",
        BASE64URL_NOPAD.encode(&signature)
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use carehub_platform::keys::{KeyName, KeyVersions, StaticKeys};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn keys() -> Arc<dyn KeySource> {
        Arc::new(StaticKeys::generate())
    }

    const VISIT: (&str, &str) = ("2026-12-05T10:00:00Z", "2026-12-05T10:30:00Z");

    fn check(now: &str) -> Result<Validity, Refusal> {
        validity(
            (at(VISIT.0), at(VISIT.1), false),
            at(now),
            Duration::minutes(15),
            Duration::hours(1),
        )
    }

    #[test]
    fn tokens_only_within_the_window_and_never_past_its_close() {
        assert_eq!(
            check("2026-12-05T09:44:59Z"),
            Err(Refusal::TooEarly {
                opens: at("2026-12-05T09:45:00Z")
            })
        );
        // At the window's opening: a full hour.
        assert_eq!(
            check("2026-12-05T09:45:00Z"),
            Ok(Validity {
                not_before: at("2026-12-05T09:45:00Z"),
                expires: at("2026-12-05T10:45:00Z")
            })
        );
        // Later: cut at end + window.
        assert_eq!(
            check("2026-12-05T10:20:00Z").unwrap().expires,
            at("2026-12-05T10:45:00Z")
        );
        assert_eq!(check("2026-12-05T10:45:00Z"), Err(Refusal::Over));
        assert_eq!(
            validity(
                (at(VISIT.0), at(VISIT.1), true),
                at("2026-12-05T10:00:00Z"),
                Duration::minutes(15),
                Duration::hours(1),
            ),
            Err(Refusal::Cancelled)
        );
    }

    #[test]
    fn a_short_ttl_bounds_the_token() {
        let v = validity(
            (at(VISIT.0), at(VISIT.1), false),
            at("2026-12-05T09:50:00Z"),
            Duration::minutes(15),
            Duration::seconds(60),
        )
        .unwrap();
        assert_eq!(v.expires, at("2026-12-05T09:51:00Z"));
    }

    /// The token's parts decode to the header and grant we mean, and its signature is the
    /// HMAC-SHA-256 of `header.payload` (RFC 7515 §5.1) computed separately.
    #[test]
    fn hs256_matches_an_independent_hmac() {
        let key = b"a key for the test";
        let claims = Claims {
            iss: "k",
            sub: "s".into(),
            nbf: 1,
            exp: 2,
            jti: "j".into(),
            video: VideoGrant {
                room: "r",
                room_join: true,
                can_publish: true,
                can_subscribe: true,
                can_publish_data: true,
            },
        };
        let header = Header {
            alg: "HS256",
            typ: "JWT",
        };
        let token = jws(&header, &claims, key).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            BASE64URL_NOPAD.decode(parts[0].as_bytes()).unwrap(),
            br#"{"alg":"HS256","typ":"JWT"}"#
        );
        let payload: serde_json::Value =
            serde_json::from_slice(&BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap()).unwrap();
        assert_eq!(
            payload["video"],
            serde_json::json!({"room": "r", "roomJoin": true, "canPublish": true,
                               "canSubscribe": true, "canPublishData": true})
        );
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        mac.verify_slice(&BASE64URL_NOPAD.decode(parts[2].as_bytes()).unwrap())
            .unwrap();
    }

    #[test]
    fn secrets_and_rooms_are_keyed_and_distinct() {
        let keys = keys();
        let a = api_secret(&keys, "carehub").unwrap();
        assert_eq!(a.len(), 43);
        assert_eq!(a, api_secret(&keys, "carehub").unwrap());
        assert_ne!(a, api_secret(&keys, "other").unwrap());
        assert_ne!(a, api_secret(&self::keys(), "carehub").unwrap());

        let video = Video::new(&VideoSettings::default(), &keys).unwrap();
        let appointment = Uuid::now_v7();
        let room = video.room_for(appointment).unwrap();
        assert_eq!(room.len(), ROOM_PREFIX.len() + 32);
        assert!(!room.contains(&appointment.simple().to_string()[..8]));
        assert_eq!(room, video.room_for(appointment).unwrap());
        assert_ne!(room, video.room_for(Uuid::now_v7()).unwrap());
    }

    #[test]
    fn no_kek_no_video() {
        let empty: Arc<dyn KeySource> =
            Arc::new(StaticKeys::default().with(KeyName::BlindIndex, KeyVersions::generate()));
        assert!(Video::new(&VideoSettings::default(), &empty).is_err());
    }
}
