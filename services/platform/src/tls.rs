//! mTLS for every gRPC connection, server and client side.
//!
//! [`TlsStore`] holds our certificate, its key and the CA bundle read from PEM files. It hands
//! out rustls [`ServerConfig`]s (client certificates required and verified against the CA, ALPN
//! `h2`) and [`ClientConfig`]s (our certificate presented, the server verified against the CA)
//! whose certificate resolver and verifiers read the store's current state, so that
//! [`TlsStore::reload_if_changed`] — run every `reload_interval_secs` by
//! [`TlsStore::spawn_reloader`] — rotates certificates and CA without a restart. A rotation that
//! fails to load (half-written files, key not matching the certificate) keeps the previous
//! material and is retried on the next tick.
//!
//! The peer's workload identity ([`PeerInfo::workload`]) is read from its leaf certificate:
//! the SAN URI `spiffe://<our trust domain>/service/<name>`, else its first DNS SAN.

use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::config::TlsConfig;

/// Who is on the other end of a gRPC connection; tonic puts it into every request's extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The workload name from the peer's certificate (`scheduling`, `gateway`, ...).
    pub workload: Option<String>,
}

impl PeerInfo {
    /// The `PeerInfo` of a tonic request (set by the platform server), if any.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&PeerInfo> {
        request.extensions().get::<PeerInfo>()
    }
}

/// The crypto provider used everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_certs(&pem).with_context(|| format!("parsing {}", path.display()))
}

/// Parses every certificate of a PEM document.
pub fn parse_certs(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut &pem[..]).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        bail!("no certificate found");
    }
    Ok(certs)
}

/// Parses the first private key of a PEM document (PKCS#8, SEC1 or PKCS#1).
pub fn parse_key(pem: &[u8]) -> anyhow::Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut &pem[..])?.context("no private key found")
}

/// The workload named by a certificate: SAN URI `spiffe://<trust_domain>/service/<name>`
/// (only for our trust domain), else the first DNS SAN.
pub fn workload_from_cert(der: &[u8], trust_domain: &str) -> Option<String> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let prefix = format!("spiffe://{trust_domain}/service/");
    let mut first_dns = None;
    for name in &san.value.general_names {
        match name {
            GeneralName::URI(uri) => {
                if let Some(rest) = uri.strip_prefix(&prefix) {
                    if !rest.is_empty() && !rest.contains('/') {
                        return Some(rest.to_owned());
                    }
                }
            }
            GeneralName::DNSName(dns) if first_dns.is_none() => {
                first_dns = Some((*dns).to_owned());
            }
            _ => {}
        }
    }
    first_dns
}

/// The serial number of a DER certificate, as lowercase hex (for logs and tests).
pub fn cert_serial_hex(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(data_encoding::HEXLOWER.encode(cert.raw_serial()))
}

/// `notBefore` and `notAfter` of a DER certificate, as seconds since the Unix epoch.
pub fn cert_validity_unix(der: &[u8]) -> Option<(i64, i64)> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// The gauges holding our serving certificate's `notBefore` and `notAfter` (Unix seconds): the
/// alerts compare the time left with the certificate's lifetime, since cert-manager and Vault
/// PKI both renew with a third of it left, whatever its length.
pub const CERT_NOT_BEFORE_METRIC: &str = "carehub_tls_cert_not_before_timestamp_seconds";
pub const CERT_NOT_AFTER_METRIC: &str = "carehub_tls_cert_not_after_timestamp_seconds";

struct Material {
    key: Arc<CertifiedKey>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<WebPkiServerVerifier>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

struct Files {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

struct State {
    material: Material,
    stamps: [Option<Stamp>; 3],
}

/// Our mTLS material; cheap to share, reloadable.
pub struct TlsStore {
    trust_domain: String,
    provider: Arc<CryptoProvider>,
    files: Option<Files>,
    state: RwLock<State>,
}

impl fmt::Debug for TlsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStore")
            .field("trust_domain", &self.trust_domain)
            .field("cert_file", &self.files.as_ref().map(|f| &f.cert))
            .finish_non_exhaustive()
    }
}

fn build_material(
    provider: &Arc<CryptoProvider>,
    cert_pem: &[u8],
    key_pem: &[u8],
    ca_pem: &[u8],
) -> anyhow::Result<Material> {
    let chain = parse_certs(cert_pem).context("certificate")?;
    let key = parse_key(key_pem).context("private key")?;
    let key = CertifiedKey::from_der(chain, key, provider)
        .context("the private key does not match the certificate")?;
    let mut roots = RootCertStore::empty();
    for ca in parse_certs(ca_pem).context("CA bundle")? {
        roots.add(ca).context("CA bundle")?;
    }
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .context("client certificate verifier")?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .context("server certificate verifier")?;
    Ok(Material {
        key: Arc::new(key),
        client_verifier,
        server_verifier,
    })
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

impl TlsStore {
    /// Loads the PEM files named by `cfg`; [`TlsStore::reload_if_changed`] re-reads them.
    pub fn from_config(cfg: &TlsConfig) -> anyhow::Result<Arc<Self>> {
        let files = Files {
            cert: cfg.cert_file.clone(),
            key: cfg.key_file.clone(),
            ca: cfg.ca_file.clone(),
        };
        let provider = provider();
        let stamps = [stamp(&files.cert), stamp(&files.key), stamp(&files.ca)];
        let material = build_material(
            &provider,
            &read(&files.cert)?,
            &read(&files.key)?,
            &read(&files.ca)?,
        )
        .with_context(|| {
            format!(
                "loading TLS material ({}, {}, {})",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            )
        })?;
        Ok(Arc::new(Self {
            trust_domain: cfg.trust_domain.clone(),
            provider,
            files: Some(files),
            state: RwLock::new(State { material, stamps }),
        }))
    }

    /// Fixed material from PEM strings (never reloaded); for clients and tests.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
        trust_domain: &str,
    ) -> anyhow::Result<Arc<Self>> {
        let provider = provider();
        let material = build_material(
            &provider,
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
            ca_pem.as_bytes(),
        )?;
        Ok(Arc::new(Self {
            trust_domain: trust_domain.to_owned(),
            provider,
            files: None,
            state: RwLock::new(State {
                material,
                stamps: [None; 3],
            }),
        }))
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    fn with_material<T>(&self, f: impl FnOnce(&Material) -> T) -> T {
        let guard = self.state.read().unwrap_or_else(|e| e.into_inner());
        f(&guard.material)
    }

    /// Our current certificate and key.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.with_material(|m| m.key.clone())
    }

    /// `notBefore` and `notAfter` of the certificate in use (the leaf), as Unix seconds.
    pub fn validity_unix(&self) -> Option<(i64, i64)> {
        let key = self.certified_key();
        key.cert
            .first()
            .and_then(|c| cert_validity_unix(c.as_ref()))
    }

    /// Exports [`CERT_NOT_BEFORE_METRIC`] and [`CERT_NOT_AFTER_METRIC`], read from the
    /// certificate in use at every scrape, so that a reloaded or renewed certificate shows at
    /// once.
    pub fn export_metrics(self: &Arc<Self>, metrics: &crate::admin::Metrics) {
        metrics.describe(
            CERT_NOT_BEFORE_METRIC,
            crate::admin::MetricKind::Gauge,
            "notBefore of the serving certificate in use, as Unix time.",
        );
        metrics.describe(
            CERT_NOT_AFTER_METRIC,
            crate::admin::MetricKind::Gauge,
            "notAfter of the serving certificate in use, as Unix time.",
        );
        let weak = Arc::downgrade(self);
        metrics.add_collector(Arc::new(move |m: &crate::admin::Metrics| {
            if let Some((from, until)) = weak.upgrade().and_then(|store| store.validity_unix()) {
                m.set_gauge(CERT_NOT_BEFORE_METRIC, &[], from as f64);
                m.set_gauge(CERT_NOT_AFTER_METRIC, &[], until as f64);
            }
        }));
    }

    /// Re-reads the files if any changed (mtime or size). `Ok(true)` when new material is now
    /// in use; on error the previous material stays in use.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let stamps = [stamp(&files.cert), stamp(&files.key), stamp(&files.ca)];
        {
            let guard = self.state.read().unwrap_or_else(|e| e.into_inner());
            if guard.stamps == stamps {
                return Ok(false);
            }
        }
        let material = build_material(
            &self.provider,
            &read(&files.cert)?,
            &read(&files.key)?,
            &read(&files.ca)?,
        )?;
        let mut guard = self.state.write().unwrap_or_else(|e| e.into_inner());
        guard.material = material;
        guard.stamps = stamps;
        Ok(true)
    }

    /// Swaps in new material from PEM strings (a certificate renewed through Vault PKI). On error
    /// the previous material stays in use.
    pub fn replace_pem(&self, cert_pem: &str, key_pem: &str, ca_pem: &str) -> anyhow::Result<()> {
        let material = build_material(
            &self.provider,
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
            ca_pem.as_bytes(),
        )?;
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .material = material;
        Ok(())
    }

    /// Checks the files every `interval` until the store is dropped.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let interval = interval.max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(store) = weak.upgrade() else { break };
                match store.reload_if_changed() {
                    Ok(true) => tracing::info!("TLS certificate or CA reloaded"),
                    Ok(false) => {}
                    Err(err) => tracing::warn!(
                        error = %format!("{err:#}"),
                        "TLS material changed on disk but could not be loaded; keeping the previous one"
                    ),
                }
            }
        })
    }

    /// A server config: client certificates required (verified against the current CA),
    /// ALPN `h2`, our current certificate.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(Arc::new(ReloadingClientVerifier(self.clone())))
            .with_cert_resolver(Arc::new(ReloadingResolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client config: our certificate presented, the server verified against the current CA
    /// (and the server name), ALPN `h2`.
    pub fn client_config(self: &Arc<Self>) -> anyhow::Result<Arc<ClientConfig>> {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ReloadingServerVerifier(self.clone())))
            .with_client_cert_resolver(Arc::new(ReloadingResolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// The workload named by a peer's leaf certificate (see [`workload_from_cert`]).
    pub fn workload_of(&self, leaf: &CertificateDer<'_>) -> Option<String> {
        workload_from_cert(leaf.as_ref(), &self.trust_domain)
    }
}

#[derive(Debug)]
struct ReloadingResolver(Arc<TlsStore>);

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }
}

impl ResolvesClientCert for ReloadingResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct ReloadingClientVerifier(Arc<TlsStore>);

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; our clients have exactly one certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verifier = self.0.with_material(|m| m.client_verifier.clone());
        verifier.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug)]
struct ReloadingServerVerifier(Arc<TlsStore>);

impl ServerCertVerifier for ReloadingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verifier = self.0.with_material(|m| m.server_verifier.clone());
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::devcerts::DevPki;

    #[test]
    fn workload_is_read_from_spiffe_uri_of_our_trust_domain_only() {
        let pki = DevPki::new("carehub.test").unwrap();
        let issued = pki.issue("scheduling").unwrap();
        let der = parse_certs(issued.cert_pem.as_bytes()).unwrap().remove(0);
        assert_eq!(
            workload_from_cert(der.as_ref(), "carehub.test").as_deref(),
            Some("scheduling")
        );
        // Another trust domain: the SPIFFE id is ignored, the first DNS SAN is used.
        let other = DevPki::new("evil.example").unwrap();
        let issued = other.issue("gateway-x").unwrap();
        let der = parse_certs(issued.cert_pem.as_bytes()).unwrap().remove(0);
        assert_eq!(
            workload_from_cert(der.as_ref(), "carehub.test").as_deref(),
            Some("gateway-x")
        );
        assert_eq!(workload_from_cert(b"not a cert", "carehub.test"), None);
    }

    #[test]
    fn the_certificate_expiry_gauge_is_the_leaf_not_after() {
        let pki = DevPki::new("carehub.test").unwrap();
        let issued = pki.issue("billing").unwrap();
        let store = TlsStore::from_pem(
            &issued.cert_pem,
            &issued.key_pem,
            &pki.ca_pem,
            "carehub.test",
        )
        .unwrap();
        let der = parse_certs(issued.cert_pem.as_bytes()).unwrap().remove(0);
        let (_, cert) =
            <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<
                x509_parser::error::X509Error,
            >>::from_der(der.as_ref())
            .unwrap();
        let (from, expected) = (
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        );
        assert_eq!(store.validity_unix(), Some((from, expected)));
        assert!(from < expected);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(expected > now, "a freshly issued dev certificate is valid");

        let metrics = crate::admin::Metrics::new("billing");
        let text = metrics.render();
        assert!(!text.contains(CERT_NOT_AFTER_METRIC), "{text}");
        store.export_metrics(&metrics);
        let text = metrics.render();
        assert!(
            text.contains(&format!(
                "# TYPE {CERT_NOT_AFTER_METRIC} gauge\n{CERT_NOT_AFTER_METRIC}{{service=\"billing\"}} {expected}\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{CERT_NOT_BEFORE_METRIC}{{service=\"billing\"}} {from}\n"
            )),
            "{text}"
        );
        // Once the store is gone, the family stays declared but carries no stale value.
        drop(store);
        let text = metrics.render();
        assert!(
            text.contains(&format!("# TYPE {CERT_NOT_AFTER_METRIC} gauge")),
            "{text}"
        );
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let pki = DevPki::new("carehub.test").unwrap();
        let a = pki.issue("a").unwrap();
        let b = pki.issue("b").unwrap();
        let Err(err) = TlsStore::from_pem(&a.cert_pem, &b.key_pem, &pki.ca_pem, "carehub.test")
        else {
            panic!("a key of another certificate was accepted");
        };
        assert!(format!("{err:#}").contains("does not match"), "{err:#}");
    }
}
