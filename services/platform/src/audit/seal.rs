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
//! This is the framed layout of [`crate::crypto::service_seal`], which does the derivation (with
//! the label `"carehub audit client fields v1"`), the sealing and a per-KEK-version cache of the
//! derived key; the bytes are the same as before it was shared (tested against values sealed by
//! the earlier code).
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

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::event::{AuditEvent, ChainedEvent};
use crate::crypto::service_seal::{self, ServiceSealer};
use crate::keys::{KeyError, KeySource};

pub use crate::crypto::service_seal::FORMAT_V1;
/// The derivation label of the audit-trail key: part of the key, never to change.
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
    service_seal::key_version(sealed)
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

impl SealError {
    fn of(err: service_seal::SealError, column: ClientColumn) -> Self {
        match err {
            service_seal::SealError::Key(e) => SealError::Key(e),
            service_seal::SealError::Malformed => SealError::Malformed(column.as_str()),
            service_seal::SealError::Authentication => SealError::Authentication(column.as_str()),
            service_seal::SealError::Seal => SealError::Seal,
        }
    }
}

/// Seals and opens client fields for one service: the framed layout of
/// [`crate::crypto::service_seal`] under the audit-trail label, with the associated data of the
/// module docs as context. Keys derived for one KEK version are kept for the next event.
#[derive(Clone)]
pub struct ClientSealer {
    service: String,
    sealer: ServiceSealer,
}

impl std::fmt::Debug for ClientSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSealer")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl ClientSealer {
    pub fn new(service: impl Into<String>, keys: Arc<dyn KeySource>) -> Self {
        ClientSealer {
            service: service.into(),
            sealer: ServiceSealer::new(KEY_LABEL, keys),
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    fn context(&self, column: ClientColumn, event_id: Uuid) -> Vec<u8> {
        service_seal::context(
            AAD_DOMAIN,
            &[
                self.service.as_bytes(),
                column.as_str().as_bytes(),
                event_id.as_bytes(),
            ],
        )
    }

    /// Seals `plain` under the current KEK version.
    pub fn seal(
        &self,
        column: ClientColumn,
        event_id: Uuid,
        plain: &str,
    ) -> Result<Vec<u8>, SealError> {
        self.sealer
            .seal_framed(&self.context(column, event_id), plain.as_bytes())
            .map_err(|e| SealError::of(e, column))
    }

    /// Opens a value sealed by [`ClientSealer::seal`] for the same service, column and event.
    pub fn open(
        &self,
        column: ClientColumn,
        event_id: Uuid,
        sealed: &[u8],
    ) -> Result<String, SealError> {
        let plain = self
            .sealer
            .open_framed(&self.context(column, event_id), sealed)
            .map_err(|e| SealError::of(e, column))?;
        String::from_utf8(plain).map_err(|_| SealError::Malformed(column.as_str()))
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
    use crate::crypto::service_seal::tests::{unhex, vector_keys};
    use crate::keys::{KeyName, KeyVersions, StaticKeys};

    /// Sealed by `ClientSealer` before it used the shared helper (d94bdee, its own copy of the
    /// derivation and layout), for service `identity` and event [`VECTOR_EVENT`], under
    /// `vector_keys()` (KEK v2 current). Stored audit rows hold such bytes and the hash chain
    /// covers them: they must open as they are.
    const VECTOR_EVENT: &str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    const VECTOR_SOURCE_IP: &str =
        "0100000002b32c371201250facddd36da1391a0d13c7fef09123a51ec957fd4b6108e79276ac167391911db1";
    const VECTOR_USER_AGENT: &str = "0100000002ac37028fc4bb4f492eea2f7e8516b4dae0251141e52067986114c52f4bb54c5e1c9feef4104adf9ce917b9d1";

    fn sample_chained(id: Uuid) -> ChainedEvent {
        use crate::audit::event::{Action, Purpose};
        let mut event = AuditEvent::new("x.y", Action::Update, Purpose::Operations, "t", "1");
        event.event_id = id;
        ChainedEvent {
            seq: 1,
            event,
            client: SealedClient::default(),
            prev_hash: vec![0; 32],
            hash: vec![0; 32],
        }
    }

    #[test]
    fn opens_values_sealed_by_the_previous_code() {
        let sealer = ClientSealer::new("identity", vector_keys());
        let id = Uuid::parse_str(VECTOR_EVENT).unwrap();
        let ip = unhex(VECTOR_SOURCE_IP);
        let ua = unhex(VECTOR_USER_AGENT);
        assert_eq!(key_version(&ip), Some(2));
        assert_eq!(
            sealer.open(ClientColumn::SourceIp, id, &ip).unwrap(),
            "203.0.113.7"
        );
        assert_eq!(
            sealer.open(ClientColumn::UserAgent, id, &ua).unwrap(),
            "carehub-test/1.0"
        );
        // And through a whole stored event, as the AuditLog RPC and `carehub audit` read it.
        let mut e = ChainedEvent {
            client: SealedClient {
                source_ip: Some(ip.clone()),
                user_agent: Some(ua),
            },
            ..sample_chained(id)
        };
        sealer.open_event(&mut e).unwrap();
        assert_eq!(e.event.source_ip.as_deref(), Some("203.0.113.7"));
        assert_eq!(e.event.user_agent.as_deref(), Some("carehub-test/1.0"));
        assert_eq!(e.client.key_version(), Some(2));
    }

    #[test]
    fn new_values_have_the_previous_layout() {
        // Byte-identical output is impossible to assert (random nonces); what is asserted: the
        // header, the length, and that the previous code's own derivation and associated data
        // (re-stated here by hand) open what the new code seals.
        use aes_gcm::aead::{Aead, KeyInit, Payload};
        use hmac::{Hmac, Mac};
        let sealer = ClientSealer::new("identity", vector_keys());
        let id = Uuid::parse_str(VECTOR_EVENT).unwrap();
        let sealed = sealer.seal(ClientColumn::UserAgent, id, "ua/2").unwrap();
        assert_eq!(&sealed[..5], &[FORMAT_V1, 0, 0, 0, 2]);
        assert_eq!(sealed.len(), 17 + 4 + 16);
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&[0x22; 32]).unwrap();
        mac.update(b"carehub audit client fields v1");
        let key: [u8; 32] = mac.finalize().into_bytes().into();
        let mut aad = b"carehub/audit-client/v1".to_vec();
        for part in [&b"identity"[..], b"user_agent", id.as_bytes()] {
            aad.extend_from_slice(&u32::try_from(part.len()).unwrap().to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad.extend_from_slice(&sealed[..5]);
        let plain = aes_gcm::Aes256Gcm::new(&key.into())
            .decrypt(
                aes_gcm::Nonce::from_slice(&sealed[5..17]),
                Payload {
                    msg: &sealed[17..],
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(plain, b"ua/2");
    }

    #[test]
    fn audit_values_do_not_open_for_other_uses_and_back() {
        // Same KEK, same framed layout: only the derivation label tells the uses apart.
        let keys = vector_keys();
        let audit = ClientSealer::new("identity", keys.clone());
        let outbox = ServiceSealer::new(b"carehub outbox payloads v1", keys.clone());
        let as_audit = ServiceSealer::new(KEY_LABEL, keys);
        let id = Uuid::parse_str(VECTOR_EVENT).unwrap();
        let ctx = audit.context(ClientColumn::SourceIp, id);
        let sealed = unhex(VECTOR_SOURCE_IP);
        assert_eq!(as_audit.open_framed(&ctx, &sealed).unwrap(), b"203.0.113.7");
        assert!(matches!(
            outbox.open_framed(&ctx, &sealed),
            Err(service_seal::SealError::Authentication)
        ));
        let foreign = outbox.seal_framed(&ctx, b"203.0.113.7").unwrap();
        assert!(matches!(
            audit.open(ClientColumn::SourceIp, id, &foreign),
            Err(SealError::Authentication("source_ip"))
        ));
    }

    #[test]
    fn sealed_values_open_only_where_they_belong_and_after_rotation() {
        let mut kek = KeyVersions::generate();
        let keys: Arc<dyn KeySource> =
            Arc::new(StaticKeys::generate().with(KeyName::Kek, kek.clone()));
        let sealer = ClientSealer::new("identity", keys.clone());
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
        let records = ClientSealer::new("records", keys);
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
