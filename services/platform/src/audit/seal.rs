//! The client's address and user agent in audit events, sealed under a key of the service's
//! audit trail (DESIGN.md §5: no identifier in clear).
//!
//! The key is the service's, not a patient's: it is derived (HMAC-SHA-256 with a fixed label)
//! from a version of the service's key-encryption key, so that shredding a patient's data keys
//! leaves the trail readable by whoever may read it (the service's AuditLog RPC for `records`
//! and `admin-cli`, the `carehub audit` command with the service's keys). The KEK itself only
//! ever wraps data keys. Rotating the KEK keeps older versions, so older rows stay readable.
//!
//! Layout of a sealed value (stored as `bytea`; the hash chain covers these bytes, so the chain
//! verifies without any key):
//!
//! ```text
//! [0]      format = 1
//! [1..5]   KEK version the sealing key was derived from, u32 big-endian
//! [5..17]  96-bit random nonce
//! [17..]   AES-256-GCM ciphertext, then the 16-byte tag
//! ```
//!
//! Associated data: `"carehub/audit-client/v1"`, then service, column and event id (each
//! length-prefixed), then the 5 header bytes: a value moved to another event, column or service
//! does not open.
//!
//! [`record`](super::record) finds the sealer of the service handling the current RPC in a
//! task-local that [`crate::server::ServiceHost::with_audit`] sets for every call
//! ([`SealerScope`]); an event built during the call keeps it ([`CapturedSealer`]), so it may be
//! recorded from another task. Code outside an RPC uses [`super::chain::record_with`]. An event
//! that carries a client address or user agent and finds no sealer is refused, never stored in
//! clear.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::event::{AuditEvent, ChainedEvent};
use crate::keys::{KeyError, KeyName, KeySource};

pub const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const KEY_LABEL: &[u8] = b"carehub audit client fields v1";
const AAD_DOMAIN: &[u8] = b"carehub/audit-client/v1";

/// The two sealed columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientColumn {
    SourceIp,
    UserAgent,
}

impl ClientColumn {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientColumn::SourceIp => "source_ip",
            ClientColumn::UserAgent => "user_agent",
        }
    }
}

/// The client fields of an event as stored: ciphertexts (see the module docs), hashed into the
/// chain as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedClient {
    #[serde(
        rename = "source_ip_sealed",
        with = "opt_hex",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub source_ip: Option<Vec<u8>>,
    #[serde(
        rename = "user_agent_sealed",
        with = "opt_hex",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub user_agent: Option<Vec<u8>>,
}

impl SealedClient {
    pub fn is_empty(&self) -> bool {
        self.source_ip.is_none() && self.user_agent.is_none()
    }

    /// The KEK version of the first sealed field, if its header is readable.
    pub fn key_version(&self) -> Option<u32> {
        self.source_ip
            .as_deref()
            .or(self.user_agent.as_deref())
            .and_then(key_version)
    }
}

/// The KEK version a sealed value names.
pub fn key_version(sealed: &[u8]) -> Option<u32> {
    if sealed.len() < HEADER_LEN + TAG_LEN || sealed[0] != FORMAT_V1 {
        return None;
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&sealed[1..5]);
    Some(u32::from_be_bytes(v))
}

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("audit-trail key: {0}")]
    Key(#[from] KeyError),
    #[error("the sealed {0} is malformed")]
    Malformed(&'static str),
    #[error("the sealed {0} does not open (wrong key, or moved from another event)")]
    Authentication(&'static str),
    #[error("sealing failed")]
    Seal,
}

/// Seals and opens client fields for one service.
#[derive(Clone)]
pub struct ClientSealer {
    service: String,
    keys: Arc<dyn KeySource>,
}

impl std::fmt::Debug for ClientSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSealer")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

fn push_part(aad: &mut Vec<u8>, part: &[u8]) {
    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
    aad.extend_from_slice(&len.to_be_bytes());
    aad.extend_from_slice(part);
}

impl ClientSealer {
    pub fn new(service: impl Into<String>, keys: Arc<dyn KeySource>) -> Self {
        ClientSealer {
            service: service.into(),
            keys,
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    fn key(&self, version: u32) -> Result<Zeroizing<[u8; 32]>, SealError> {
        let kek = self.keys.version(KeyName::Kek, version)?;
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(kek.as_bytes()).map_err(|_| SealError::Seal)?;
        mac.update(KEY_LABEL);
        Ok(Zeroizing::new(mac.finalize().into_bytes().into()))
    }

    fn aad(&self, column: ClientColumn, event_id: Uuid, header: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(AAD_DOMAIN.len() + self.service.len() + 64);
        aad.extend_from_slice(AAD_DOMAIN);
        push_part(&mut aad, self.service.as_bytes());
        push_part(&mut aad, column.as_str().as_bytes());
        push_part(&mut aad, event_id.as_bytes());
        aad.extend_from_slice(header);
        aad
    }

    /// Seals `plain` under the current KEK version.
    pub fn seal(
        &self,
        column: ClientColumn,
        event_id: Uuid,
        plain: &str,
    ) -> Result<Vec<u8>, SealError> {
        let version = self.keys.current(KeyName::Kek)?.0;
        let key = self.key(version)?;
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        out.push(FORMAT_V1);
        out.extend_from_slice(&version.to_be_bytes());
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        out.extend_from_slice(&nonce);
        let aad = self.aad(column, event_id, &out[..5]);
        let sealed = Aes256Gcm::new(key.as_ref().into())
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Seal)?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a value sealed by [`ClientSealer::seal`] for the same service, column and event.
    pub fn open(
        &self,
        column: ClientColumn,
        event_id: Uuid,
        sealed: &[u8],
    ) -> Result<String, SealError> {
        let what = column.as_str();
        let version = key_version(sealed).ok_or(SealError::Malformed(what))?;
        let key = self.key(version)?;
        let aad = self.aad(column, event_id, &sealed[..5]);
        let plain = Aes256Gcm::new(key.as_ref().into())
            .decrypt(
                Nonce::from_slice(&sealed[5..HEADER_LEN]),
                Payload {
                    msg: &sealed[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Authentication(what))?;
        String::from_utf8(plain).map_err(|_| SealError::Malformed(what))
    }

    /// The stored form of `event`'s client fields.
    pub fn seal_event(&self, event: &AuditEvent) -> Result<SealedClient, SealError> {
        let seal = |column, value: Option<&str>| {
            value
                .map(|v| self.seal(column, event.event_id, v))
                .transpose()
        };
        Ok(SealedClient {
            source_ip: seal(ClientColumn::SourceIp, event.source_ip.as_deref())?,
            user_agent: seal(ClientColumn::UserAgent, event.user_agent.as_deref())?,
        })
    }

    /// Fills in a stored event's `source_ip` and `user_agent` from its sealed fields.
    pub fn open_event(&self, e: &mut ChainedEvent) -> Result<(), SealError> {
        let id = e.event.event_id;
        e.event.source_ip = e
            .client
            .source_ip
            .as_deref()
            .map(|s| self.open(ClientColumn::SourceIp, id, s))
            .transpose()?;
        e.event.user_agent = e
            .client
            .user_agent
            .as_deref()
            .map(|s| self.open(ClientColumn::UserAgent, id, s))
            .transpose()?;
        Ok(())
    }
}

/// The sealer in scope when an event was built ([`AuditEvent::new`], [`AuditEvent::caller`]),
/// kept with the event so that recording it from another task (a batch writer, a spawned
/// task) still seals with the right service's key. Not part of what the event says: any two
/// compare equal.
#[derive(Clone)]
pub struct CapturedSealer(pub Arc<ClientSealer>);

impl PartialEq for CapturedSealer {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for CapturedSealer {}

impl std::fmt::Debug for CapturedSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

tokio::task_local! {
    static CURRENT: Arc<ClientSealer>;
}

/// The sealer of the service handling the current RPC, if any.
pub fn current() -> Option<Arc<ClientSealer>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Runs `fut` with `sealer` as the [`current`] one.
pub async fn scope<F: std::future::Future>(sealer: Arc<ClientSealer>, fut: F) -> F::Output {
    CURRENT.scope(sealer, fut).await
}

/// A tower layer's service that makes `sealer` the [`current`] one for each request it handles.
#[derive(Clone)]
pub struct SealerScope<S> {
    pub inner: S,
    pub sealer: Arc<ClientSealer>,
}

impl<S, Req> tower::Service<Req> for SealerScope<S>
where
    S: tower::Service<Req, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<S::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(CURRENT.scope(self.sealer.clone(), inner.call(req)))
    }
}

mod opt_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_str(&super::super::event::to_hex(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                super::super::event::from_hex(&s).ok_or_else(|| serde::de::Error::custom("not hex"))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::keys::{KeyVersions, StaticKeys};

    #[test]
    fn sealed_values_open_only_where_they_belong_and_after_rotation() {
        let mut kek = KeyVersions::generate();
        let keys = StaticKeys::generate().with(KeyName::Kek, kek.clone());
        let sealer = ClientSealer::new("identity", Arc::new(keys));
        let id = Uuid::now_v7();
        let sealed = sealer
            .seal(ClientColumn::SourceIp, id, "203.0.113.7")
            .unwrap();
        assert_eq!(key_version(&sealed), Some(1));
        assert!(!sealed.windows(11).any(|w| w == b"203.0.113.7"));
        assert_eq!(
            sealer.open(ClientColumn::SourceIp, id, &sealed).unwrap(),
            "203.0.113.7"
        );
        // Another event, column or service: refused.
        for err in [
            sealer.open(ClientColumn::SourceIp, Uuid::now_v7(), &sealed),
            sealer.open(ClientColumn::UserAgent, id, &sealed),
        ] {
            assert!(matches!(err, Err(SealError::Authentication(_))), "{err:?}");
        }
        let records = ClientSealer::new("records", sealer.keys.clone());
        assert!(records.open(ClientColumn::SourceIp, id, &sealed).is_err());
        // After a KEK rotation new values use version 2, old ones still open.
        kek.rotate();
        let rotated = ClientSealer::new(
            "identity",
            Arc::new(StaticKeys::generate().with(KeyName::Kek, kek)),
        );
        assert_eq!(
            rotated.open(ClientColumn::SourceIp, id, &sealed).unwrap(),
            "203.0.113.7"
        );
        let newer = rotated.seal(ClientColumn::UserAgent, id, "ua").unwrap();
        assert_eq!(key_version(&newer), Some(2));
        // Without the version: a key error, not garbage.
        let other = ClientSealer::new("identity", Arc::new(StaticKeys::generate()));
        assert!(matches!(
            other.open(ClientColumn::UserAgent, id, &newer),
            Err(SealError::Key(KeyError::UnknownVersion { .. }))
        ));
        assert!(matches!(
            sealer.open(ClientColumn::SourceIp, id, &[1, 2, 3]),
            Err(SealError::Malformed(_))
        ));
    }
}
