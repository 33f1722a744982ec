//! A development PKI: one CA and one certificate per workload, for `carehub up`, local runs
//! and tests. Production certificates come from cert-manager or Vault PKI instead.
//!
//! Every workload certificate carries the SPIFFE id `spiffe://<trust_domain>/service/<name>`
//! as a SAN URI, the DNS names `<name>` and `localhost` and the IP 127.0.0.1, and is valid
//! for both server and client authentication.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::Context as _;
use rand::RngCore as _;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// The SPIFFE id of a workload.
pub fn spiffe_id(trust_domain: &str, name: &str) -> String {
    format!("spiffe://{trust_domain}/service/{name}")
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// An in-memory development CA.
pub struct DevPki {
    trust_domain: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The CA private key, PEM.
    pub ca_key_pem: String,
    ca_cert: Certificate,
    ca_key: KeyPair,
}

impl std::fmt::Debug for DevPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPki")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn ca_params(trust_domain: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "carehub development");
    dn.push(
        DnType::CommonName,
        format!("carehub development CA ({trust_domain})"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, 10);
    params
}

/// Valid from yesterday for `years` years.
fn set_validity(params: &mut CertificateParams, years: i32) {
    use chrono::Datelike as _;
    let start = chrono::Utc::now().date_naive() - chrono::Days::new(1);
    // Day capped at 28 so that every month/year combination exists.
    let (y, m, d) = (start.year(), start.month() as u8, start.day().min(28) as u8);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    params.not_after = rcgen::date_time_ymd(y + years, m, d);
}

impl DevPki {
    /// A fresh CA for `trust_domain`.
    pub fn new(trust_domain: &str) -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut params = ca_params(trust_domain);
        params.serial_number = Some(random_serial());
        let ca_cert = params.self_signed(&ca_key).context("self-signing the CA")?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            ca_pem: ca_cert.pem(),
            ca_key_pem: ca_key.serialize_pem(),
            ca_cert,
            ca_key,
        })
    }

    /// Re-opens a CA written earlier by [`DevPki::write_to`] / [`generate_dev_pki`], so that
    /// new certificates chain to the same `ca.pem`.
    pub fn load(trust_domain: &str, ca_pem: &str, ca_key_pem: &str) -> anyhow::Result<Self> {
        let ca_key = KeyPair::from_pem(ca_key_pem).context("reading the CA key")?;
        // Signing needs the issuer's name and key only: rebuild the same subject with the same key.
        let ca_cert = ca_params(trust_domain)
            .self_signed(&ca_key)
            .context("rebuilding the CA")?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            ca_pem: ca_pem.to_owned(),
            ca_key_pem: ca_key_pem.to_owned(),
            ca_cert,
            ca_key,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Issues a workload certificate for `name` (server and client auth).
    pub fn issue(&self, name: &str) -> anyhow::Result<IssuedCert> {
        let key = KeyPair::generate().context("generating a workload key")?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "carehub development");
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.serial_number = Some(random_serial());
        params.subject_alt_names = vec![
            SanType::URI(
                spiffe_id(&self.trust_domain, name)
                    .try_into()
                    .context("SPIFFE id is not a valid URI")?,
            ),
            SanType::DnsName(name.try_into().context("service name is not a DNS name")?),
            SanType::DnsName("localhost".try_into().context("localhost")?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, 1);
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .with_context(|| format!("signing the certificate of {name}"))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem` and `ca-key.pem` into `dir` (created if missing; key mode 0600).
    pub fn write_ca_to(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_file(&dir.join("ca.pem"), &self.ca_pem, false)?;
        write_file(&dir.join("ca-key.pem"), &self.ca_key_pem, true)
    }

    /// Writes the CA and a fresh certificate per name: `<name>.pem`, `<name>-key.pem`.
    pub fn write_to(&self, dir: &Path, names: &[&str]) -> anyhow::Result<()> {
        self.write_ca_to(dir)?;
        for name in names {
            self.issue(name)?.write_to(dir, name)?;
        }
        Ok(())
    }
}

impl IssuedCert {
    /// Writes `<name>.pem` and `<name>-key.pem` (mode 0600) into `dir`.
    pub fn write_to(&self, dir: &Path, name: &str) -> anyhow::Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_file(&dir.join(format!("{name}.pem")), &self.cert_pem, false)?;
        write_file(&dir.join(format!("{name}-key.pem")), &self.key_pem, true)
    }
}

/// Writes atomically (temp file + rename), so a reloading server never sees half a file.
fn write_file(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("file name")?;
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut f = options
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(contents.as_bytes())
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().ok();
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Writes a development PKI into `out_dir`: `ca.pem`, `ca-key.pem` and, per service,
/// `<name>.pem` / `<name>-key.pem`. An existing CA in `out_dir` is kept (so certificates issued
/// earlier stay valid); workload certificates are always issued anew.
pub fn generate_dev_pki(
    out_dir: &Path,
    trust_domain: &str,
    services: &[&str],
) -> anyhow::Result<()> {
    let ca_path = out_dir.join("ca.pem");
    let ca_key_path = out_dir.join("ca-key.pem");
    let pki = if ca_path.exists() && ca_key_path.exists() {
        let ca_pem = fs::read_to_string(&ca_path)
            .with_context(|| format!("reading {}", ca_path.display()))?;
        let ca_key_pem = fs::read_to_string(&ca_key_path)
            .with_context(|| format!("reading {}", ca_key_path.display()))?;
        DevPki::load(trust_domain, &ca_pem, &ca_key_pem)?
    } else {
        let pki = DevPki::new(trust_domain)?;
        pki.write_ca_to(out_dir)?;
        pki
    };
    for name in services {
        pki.issue(name)?.write_to(out_dir, name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn writes_every_file_with_private_keys_0600_and_reuses_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        generate_dev_pki(dir.path(), "carehub.test", &["identity", "admin-cli"]).unwrap();
        for f in [
            "ca.pem",
            "ca-key.pem",
            "identity.pem",
            "identity-key.pem",
            "admin-cli.pem",
            "admin-cli-key.pem",
        ] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join("identity-key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = fs::metadata(dir.path().join("ca-key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let ca_before = fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        generate_dev_pki(dir.path(), "carehub.test", &["billing"]).unwrap();
        assert_eq!(
            ca_before,
            fs::read_to_string(dir.path().join("ca.pem")).unwrap()
        );
    }
}
