//! Service certificates from Vault PKI (`[server.tls] source = "vault_pki"`).
//!
//! At start the service asks `<pki_mount>/issue/<pki_role>` for a certificate naming it
//! (common name `<service>`, DNS SAN `carehub-<service>`, SAN URI
//! `spiffe://<trust domain>/service/<service>`); the CA bundle is the answer's `issuing_ca` and
//! `ca_chain`. A background task asks again at two thirds of the certificate's lifetime and swaps
//! the new one into the [`TlsStore`], so new handshakes use it without a restart; a failed
//! renewal is retried (the current certificate stays in use until it expires).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use super::vault::{IssuedCertificate, VaultConn, VaultError};
use crate::config::{PlatformConfig, TlsConfig, TlsSource};
use crate::tls::TlsStore;

/// The TLS material `cfg.tls` names: PEM files, or a certificate issued (and kept renewed) by
/// Vault PKI. For Vault PKI the renewal runs until the returned store is dropped.
pub async fn tls_store(service: &str, cfg: &PlatformConfig) -> anyhow::Result<Arc<TlsStore>> {
    match cfg.tls.source {
        TlsSource::Files => TlsStore::from_config(&cfg.tls),
        TlsSource::VaultPki => {
            let conn = VaultConn::connect(service, &cfg.vault)
                .await
                .context("connecting to Vault for the service certificate")?;
            let (store, _) = VaultPkiCert::start(service, &cfg.tls, conn).await?;
            Ok(store)
        }
    }
}

struct Current {
    serial: String,
    /// When the next renewal is due.
    renew_at: tokio::time::Instant,
    expires: SystemTime,
}

/// A certificate kept issued and renewed through Vault PKI.
pub struct VaultPkiCert {
    service: String,
    role: String,
    spiffe_id: String,
    ttl: Duration,
    conn: Arc<VaultConn>,
    current: Mutex<Current>,
    renewals: AtomicU64,
}

impl std::fmt::Debug for VaultPkiCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultPkiCert")
            .field("service", &self.service)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

fn ca_bundle(issued: &IssuedCertificate) -> String {
    let mut bundle: Vec<&str> = Vec::new();
    for pem in std::iter::once(&issued.issuing_ca).chain(issued.ca_chain.iter()) {
        let pem = pem.trim();
        if !pem.is_empty() && !bundle.contains(&pem) {
            bundle.push(pem);
        }
    }
    let mut out = bundle.join("\n");
    out.push('\n');
    out
}

/// Two thirds of the time left on a certificate expiring at `expires`, as an instant.
fn renewal_instant(expires: SystemTime) -> tokio::time::Instant {
    let left = expires
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left.mul_f64(2.0 / 3.0)
}

fn expiry(issued: &IssuedCertificate) -> anyhow::Result<SystemTime> {
    if let Some(secs) = issued.expiration {
        return Ok(UNIX_EPOCH + Duration::from_secs(secs));
    }
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let der = crate::tls::parse_certs(issued.certificate.as_bytes())?
        .into_iter()
        .next()
        .context("no certificate in the PKI answer")?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).context("parsing the certificate")?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

impl VaultPkiCert {
    /// Issues the first certificate, builds the store from it and starts renewing.
    pub async fn start(
        service: &str,
        tls: &TlsConfig,
        conn: Arc<VaultConn>,
    ) -> anyhow::Result<(Arc<TlsStore>, Arc<Self>)> {
        let role = tls
            .pki_role
            .clone()
            .unwrap_or_else(|| format!("carehub-{service}"));
        let this = Arc::new(VaultPkiCert {
            service: service.to_owned(),
            role,
            spiffe_id: crate::devcerts::spiffe_id(&tls.trust_domain, service),
            ttl: Duration::from_secs(tls.pki_ttl_secs.max(1)),
            conn,
            current: Mutex::new(Current {
                serial: String::new(),
                renew_at: tokio::time::Instant::now(),
                expires: SystemTime::now(),
            }),
            renewals: AtomicU64::new(0),
        });
        let issued = this.issue().await?;
        let store = TlsStore::from_pem(
            &issued.certificate,
            &issued.private_key,
            &ca_bundle(&issued),
            &tls.trust_domain,
        )
        .context("loading the certificate issued by Vault PKI")?;
        this.record(&issued)?;
        tracing::info!(service, serial = %issued.serial_number, "certificate issued by Vault PKI");
        tokio::spawn(renew_loop(this.clone(), Arc::downgrade(&store)));
        Ok((store, this))
    }

    async fn issue(&self) -> Result<IssuedCertificate, VaultError> {
        let dns = format!("carehub-{}", self.service);
        self.conn
            .pki_issue(&self.role, &self.service, &self.spiffe_id, &dns, self.ttl)
            .await
    }

    fn record(&self, issued: &IssuedCertificate) -> anyhow::Result<()> {
        let expires = expiry(issued)?;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        *current = Current {
            serial: issued.serial_number.clone(),
            renew_at: renewal_instant(expires),
            expires,
        };
        Ok(())
    }

    /// Issues a new certificate now and puts it into `store`.
    pub async fn renew_into(&self, store: &TlsStore) -> anyhow::Result<()> {
        let issued = self.issue().await?;
        store
            .replace_pem(
                &issued.certificate,
                &issued.private_key,
                &ca_bundle(&issued),
            )
            .context("loading the renewed certificate")?;
        self.record(&issued)?;
        self.renewals.fetch_add(1, Ordering::SeqCst);
        tracing::info!(service = %self.service, serial = %issued.serial_number, "certificate renewed through Vault PKI");
        Ok(())
    }

    /// Serial number (colon-separated hex, as Vault writes it) of the certificate in use.
    pub fn serial(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .serial
            .clone()
    }

    /// Renewals done since start.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::SeqCst)
    }
}

async fn renew_loop(cert: Arc<VaultPkiCert>, store: Weak<TlsStore>) {
    loop {
        let renew_at = cert
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .renew_at;
        tokio::time::sleep_until(renew_at).await;
        let Some(store) = store.upgrade() else { break };
        if let Err(err) = cert.renew_into(&store).await {
            let expires = cert
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .expires;
            let left = expires
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            // Retry well before expiry, but do not hammer Vault.
            let retry = (left / 10).clamp(Duration::from_millis(200), Duration::from_secs(30));
            tracing::warn!(
                service = %cert.service,
                error = %format!("{err:#}"),
                secs_left = left.as_secs(),
                "certificate renewal through Vault PKI failed; retrying"
            );
            cert.current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .renew_at = tokio::time::Instant::now() + retry;
        }
    }
}
