//! PKI secrets engine of the Vault double: a real CA (rcgen) that issues real certificates.

use std::collections::HashMap;

use axum::http::Method;
use rand::RngCore as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{Reply, Req};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: String,
}

#[derive(Clone, Debug, Default)]
struct Role {
    allowed_domains: Vec<String>,
    allow_bare_domains: bool,
    allow_subdomains: bool,
    allow_localhost: bool,
    allow_any_name: bool,
    allowed_uri_sans: Vec<String>,
    ttl: Option<u64>,
    max_ttl: Option<u64>,
}

#[derive(Default)]
pub(crate) struct Pki {
    ca: Option<Ca>,
    roles: HashMap<String, Role>,
}

fn serial() -> (SerialNumber, String) {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    let hex = bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    (SerialNumber::from_slice(&bytes), hex)
}

fn glob(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

impl Role {
    fn name_allowed(&self, name: &str) -> bool {
        if self.allow_any_name || (self.allow_localhost && name == "localhost") {
            return true;
        }
        self.allowed_domains.iter().any(|d| {
            (self.allow_bare_domains && glob(d, name))
                || (self.allow_subdomains && name.ends_with(&format!(".{d}")))
        })
    }
}

pub(crate) fn route(pki: &mut Pki, req: &Req, rest: &str) -> Reply {
    if req.method != Method::POST && req.method != Method::PUT {
        return Reply::unsupported(&req.path);
    }
    if rest == "root/generate/internal" {
        return generate_root(pki, req);
    }
    if let Some(name) = rest.strip_prefix("roles/") {
        let role = Role {
            allowed_domains: req.list("allowed_domains"),
            allow_bare_domains: req
                .body
                .get("allow_bare_domains")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            allow_subdomains: req
                .body
                .get("allow_subdomains")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            allow_localhost: req
                .body
                .get("allow_localhost")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            allow_any_name: req
                .body
                .get("allow_any_name")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            allowed_uri_sans: req.list("allowed_uri_sans"),
            ttl: req.duration("ttl"),
            max_ttl: req.duration("max_ttl"),
        };
        let data = json!({
            "allowed_domains": role.allowed_domains,
            "allowed_uri_sans": role.allowed_uri_sans,
            "allow_any_name": role.allow_any_name,
            "max_ttl": role.max_ttl.unwrap_or(0),
        });
        pki.roles.insert(name.to_owned(), role);
        return Reply::Data(data);
    }
    if let Some(role) = rest.strip_prefix("issue/") {
        return issue(pki, req, role);
    }
    Reply::unsupported(&req.path)
}

fn generate_root(pki: &mut Pki, req: &Req) -> Reply {
    let Some(cn) = req.str("common_name").filter(|c| !c.is_empty()) else {
        return Reply::bad_request("the common_name field is required");
    };
    let ttl = req.duration("ttl").unwrap_or(10 * 365 * 86_400);
    let Ok(key) = KeyPair::generate() else {
        return Reply::bad_request("key generation failed");
    };
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds(30);
    params.not_after = now + time::Duration::seconds(ttl as i64);
    let expiration = params.not_after.unix_timestamp();
    let (serial, serial_hex) = serial();
    params.serial_number = Some(serial);
    let Ok(cert) = params.self_signed(&key) else {
        return Reply::bad_request("self-signing failed");
    };
    let pem = cert.pem();
    let data = json!({
        "certificate": pem,
        "issuing_ca": pem,
        "serial_number": serial_hex,
        "expiration": expiration,
        "issuer_id": uuid::Uuid::new_v4().to_string(),
        "issuer_name": "",
        "key_id": uuid::Uuid::new_v4().to_string(),
        "key_name": "",
    });
    pki.ca = Some(Ca { cert, key, pem });
    Reply::Data(data)
}

fn issue(pki: &Pki, req: &Req, role_name: &str) -> Reply {
    let Some(role) = pki.roles.get(role_name) else {
        return Reply::bad_request(format!("unknown role: {role_name}"));
    };
    let Some(ca) = &pki.ca else {
        return Reply::bad_request("no default issuer currently configured on this mount");
    };
    let Some(cn) = req.str("common_name").filter(|c| !c.is_empty()) else {
        return Reply::bad_request(
            "the common_name field is required, or must be provided in a CSR with \"use_csr_common_name\" set to true, unless \"require_cn\" is set to false",
        );
    };
    let mut names = vec![cn.to_owned()];
    names.extend(req.list("alt_names"));
    for name in &names {
        if !role.name_allowed(name) {
            return Reply::bad_request(format!("common name {name} not allowed by this role"));
        }
    }
    let uris = req.list("uri_sans");
    for uri in &uris {
        if !role.allowed_uri_sans.iter().any(|p| glob(p, uri)) {
            return Reply::bad_request(format!(
                "URI Subject Alternative Names are not allowed in this role, but was provided \"{uri}\""
            ));
        }
    }
    let mut ttl = req.duration("ttl").or(role.ttl).unwrap_or(30 * 86_400);
    if let Some(max) = role.max_ttl.filter(|m| *m > 0) {
        ttl = ttl.min(max);
    }
    let Ok(key) = KeyPair::generate() else {
        return Reply::bad_request("key generation failed");
    };
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let mut sans = Vec::new();
    for name in names {
        if let Ok(dns) = name.clone().try_into() {
            sans.push(SanType::DnsName(dns));
        }
    }
    for uri in uris {
        if let Ok(uri) = uri.try_into() {
            sans.push(SanType::URI(uri));
        }
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds(30);
    params.not_after = now + time::Duration::seconds(ttl as i64);
    let expiration = params.not_after.unix_timestamp();
    let (serial, serial_hex) = serial();
    params.serial_number = Some(serial);
    let Ok(cert) = params.signed_by(&key, &ca.cert, &ca.key) else {
        return Reply::bad_request("signing failed");
    };
    Reply::Data(json!({
        "certificate": cert.pem(),
        "issuing_ca": ca.pem,
        "ca_chain": [ca.pem],
        "private_key": key.serialize_pem(),
        "private_key_type": "ec",
        "serial_number": serial_hex,
        "expiration": expiration,
    }))
}
