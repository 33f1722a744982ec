//! Development PKI for tests: a fresh CA, certificates for workloads, and mTLS clients that
//! present them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use carehub_platform::client::{self, ServiceChannel};
use carehub_platform::config::TlsConfig;
use carehub_platform::devcerts::DevPki;
use carehub_platform::tls::TlsStore;

/// A fresh dev CA of `trust_domain` (certificates name `spiffe://<trust domain>/service/<name>`).
/// Clones share the CA: services started on clones trust each other (a suite under test).
#[derive(Clone)]
pub struct TestPki {
    pki: Arc<DevPki>,
}

impl TestPki {
    pub fn new(trust_domain: &str) -> TestPki {
        TestPki {
            pki: Arc::new(DevPki::new(trust_domain).expect("generating a dev CA")),
        }
    }

    /// The CA itself (to issue more certificates, or to write files).
    pub fn ca(&self) -> &DevPki {
        &self.pki
    }

    pub fn trust_domain(&self) -> &str {
        self.pki.trust_domain()
    }

    /// A client TLS store presenting a fresh certificate of `workload`.
    pub fn store(&self, workload: &str) -> Arc<TlsStore> {
        client_store(&self.pki, workload)
    }

    /// An mTLS channel to `addr` presenting a certificate of `workload`; the server's
    /// certificate must name `server_name` (its workload name, or "localhost").
    pub async fn channel(
        &self,
        addr: SocketAddr,
        workload: &str,
        server_name: &str,
    ) -> ServiceChannel {
        connect_as(&self.pki, addr, workload, server_name).await
    }

    /// Writes the CA and a certificate of `workload` into `dir` as `ca.pem`, `<file>.pem` and
    /// `<file>-key.pem`; returns the TLS settings that read them.
    pub fn write_server(&self, dir: &Path, workload: &str, file: &str) -> TlsConfig {
        self.pki.write_ca_to(dir).expect("writing the CA");
        self.pki
            .issue(workload)
            .expect("issuing a certificate")
            .write_to(dir, file)
            .expect("writing a certificate");
        TlsConfig {
            cert_file: dir.join(format!("{file}.pem")),
            key_file: dir.join(format!("{file}-key.pem")),
            ca_file: dir.join("ca.pem"),
            trust_domain: self.pki.trust_domain().to_owned(),
            ..TlsConfig::default()
        }
    }
}

/// A client TLS store presenting a fresh certificate of `workload` issued by `pki`.
pub fn client_store(pki: &DevPki, workload: &str) -> Arc<TlsStore> {
    let cert = pki.issue(workload).expect("issuing a certificate");
    TlsStore::from_pem(
        &cert.cert_pem,
        &cert.key_pem,
        &pki.ca_pem,
        pki.trust_domain(),
    )
    .expect("client TLS store")
}

/// An mTLS channel to `addr` presenting a fresh certificate of `workload` issued by `pki`; the
/// server's certificate must name `server_name`.
pub async fn connect_as(
    pki: &DevPki,
    addr: SocketAddr,
    workload: &str,
    server_name: &str,
) -> ServiceChannel {
    client::connect(
        &format!("https://{addr}"),
        &client_store(pki, workload),
        server_name,
    )
    .await
    .unwrap_or_else(|e| panic!("connecting to {addr} as {workload}: {e:#}"))
}
