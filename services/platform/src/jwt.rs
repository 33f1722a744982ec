//! Access tokens: compact JWS with EdDSA (Ed25519), RFC 7519 / RFC 8037.
//!
//! Written out rather than pulled from a general JWT crate so that exactly one algorithm is
//! accepted: a token whose header says anything but `EdDSA` is rejected before any key is used.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Tolerated clock difference between identity and a verifying service.
pub const LEEWAY_SECS: i64 = 30;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// User id.
    pub sub: String,
    /// Session id.
    pub sid: String,
    pub roles: Vec<String>,
    /// Authentication methods (RFC 8176): "pwd", "otp", "rc", "pin".
    pub amr: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    /// The password must be changed before anything else is allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pcr: bool,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    kid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm is not EdDSA")]
    UnsupportedAlgorithm,
    #[error("token signed by unknown key {0}")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer or audience is wrong")]
    WrongIssuerOrAudience,
}

/// Signs `claims` with `key`, naming it `kid` in the header.
pub fn sign(
    claims: &AccessClaims,
    kid: &str,
    key: &SigningKey,
) -> Result<String, serde_json::Error> {
    let header = Header {
        alg: "EdDSA".to_owned(),
        typ: Some("JWT".to_owned()),
        kid: kid.to_owned(),
    };
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
    );
    let signature = key.sign(signing_input.as_bytes());
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    ))
}

/// The key id a token names, read without verifying anything (to pick or fetch the key).
pub fn key_id(token: &str) -> Result<String, JwtError> {
    let header_b64 = token.split('.').next().ok_or(JwtError::Malformed)?;
    let header: Header = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| JwtError::Malformed)?,
    )
    .map_err(|_| JwtError::Malformed)?;
    if header.alg != "EdDSA" {
        return Err(JwtError::UnsupportedAlgorithm);
    }
    Ok(header.kid)
}

/// Verifies signature, algorithm, issuer, audience and lifetime at `now` (unix seconds).
pub fn verify(
    token: &str,
    key: &VerifyingKey,
    issuer: &str,
    audience: &str,
    now: i64,
) -> Result<AccessClaims, JwtError> {
    if token.len() > 8 * 1024 {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    key_id(token)?;
    let sig_bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed)?;
    let signature = Signature::from_slice(&sig_bytes).map_err(|_| JwtError::Malformed)?;
    key.verify(format!("{h}.{p}").as_bytes(), &signature)
        .map_err(|_| JwtError::BadSignature)?;
    let claims: AccessClaims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).map_err(|_| JwtError::Malformed)?)
            .map_err(|_| JwtError::Malformed)?;
    if claims.iss != issuer || claims.aud != audience {
        return Err(JwtError::WrongIssuerOrAudience);
    }
    if now > claims.exp + LEEWAY_SECS {
        return Err(JwtError::Expired);
    }
    if claims.iat > now + LEEWAY_SECS {
        return Err(JwtError::NotYetValid);
    }
    Ok(claims)
}

/// The JWK `x` of a public key (base64url, no padding).
pub fn jwk_x(key: &VerifyingKey) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

/// Parses a JWK `x` back into a key.
pub fn key_from_jwk_x(x: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(x).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn claims(now: i64) -> AccessClaims {
        AccessClaims {
            iss: "iss".into(),
            aud: "aud".into(),
            sub: "u".into(),
            sid: "s".into(),
            roles: vec!["patient".into()],
            amr: vec!["pwd".into()],
            iat: now,
            exp: now + 600,
            jti: "j".into(),
            pcr: false,
        }
    }

    #[test]
    fn round_trip_and_rejections() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let other = SigningKey::generate(&mut rand::rngs::OsRng);
        let t = sign(&claims(1000), "k1", &key).unwrap();
        assert_eq!(key_id(&t).unwrap(), "k1");
        assert_eq!(
            verify(&t, &key.verifying_key(), "iss", "aud", 1000).unwrap(),
            claims(1000)
        );
        assert_eq!(
            verify(&t, &other.verifying_key(), "iss", "aud", 1000),
            Err(JwtError::BadSignature)
        );
        assert_eq!(
            verify(
                &t,
                &key.verifying_key(),
                "iss",
                "aud",
                1000 + 600 + LEEWAY_SECS + 1
            ),
            Err(JwtError::Expired)
        );
        assert_eq!(
            verify(&t, &key.verifying_key(), "other", "aud", 1000),
            Err(JwtError::WrongIssuerOrAudience)
        );
        // A tampered payload fails the signature check.
        let mut parts: Vec<&str> = t.split('.').collect();
        let mut c = claims(1000);
        c.roles = vec!["admin".into()];
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        parts[1] = &forged;
        assert_eq!(
            verify(&parts.join("."), &key.verifying_key(), "iss", "aud", 1000),
            Err(JwtError::BadSignature)
        );
        // alg=none is refused before any key is consulted.
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#);
        let none = format!("{none_header}.{}.", parts[1]);
        assert_eq!(key_id(&none), Err(JwtError::UnsupportedAlgorithm));
    }
}
