//! The one list of services this binary serves. `carehub serve|migrate <service>`,
//! `carehub health --service`, `carehub up` (ports, databases, certificates, keys) and
//! `carehub services` (which the chart's check compares with `services:` in
//! charts/carehub/values.yaml) all come from it: adding a service is its crate plus one line
//! here (and its block in the chart).

use carehub_platform::kit::ServiceDef;

/// In `carehub up` order: a service gets gRPC port `--grpc-port` + its index here.
pub static SERVICES: &[&dyn ServiceDef] = &[
    &carehub_identity::SERVICE,
    &carehub_records::SERVICE,
    &carehub_messaging::SERVICE,
    &carehub_scheduling::SERVICE,
    &carehub_billing::SERVICE,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A name is a DNS label: it names a Kubernetes Service, a certificate and a database.
    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn names_are_unique_dns_labels() {
        for label in ["identity", "a-1"] {
            assert!(is_dns_label(label), "{label}");
        }
        for label in ["Identity", "", "-x", "x-", "a/b", "a_b"] {
            assert!(!is_dns_label(label), "{label}");
        }
        let names: Vec<&str> = SERVICES.iter().map(|s| s.name()).collect();
        for name in &names {
            assert!(is_dns_label(name), "{name:?} is not a DNS label");
            assert_eq!(
                names.iter().filter(|n| *n == name).count(),
                1,
                "{name} twice"
            );
        }
        assert_eq!(names.first(), Some(&"identity"), "identity starts first");
    }
}
