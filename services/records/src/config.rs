//! Records' settings, under `[records]`, on top of the platform's `[server]`.

use carehub_platform::config::{PlatformConfig, Validate};
use serde::{Deserialize, Serialize};

/// The whole configuration of `carehub serve records`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordsConfig {
    pub server: PlatformConfig,
    pub records: RecordsSettings,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordsSettings {
    /// Envelope encryption of the chart (data-key use limit, reservation batch, key cache).
    pub crypto: carehub_platform::crypto::CryptoConfig,
    /// How long a break-glass access stays open (1..=1440 minutes).
    pub break_glass_minutes: u32,
    /// Most entries one chart answer carries (GetChart refuses a larger chart with
    /// FAILED_PRECONDITION rather than building an unbounded answer).
    pub max_chart_entries: u32,
    /// Days between a terminated account (or an operator's request) and the destruction of
    /// the patient's data keys: the legal hold (0..=3650).
    pub erasure_hold_days: u32,
    /// How often due erasures are looked for.
    pub erasure_check_secs: u64,
    /// The audit trails the patient's access log merges beside records' own and identity's
    /// (which `server.auth.identity_endpoint` reaches): service name -> gRPC endpoint, the
    /// service's certificate naming it, e.g. `messaging = "https://carehub-messaging:50051"`.
    pub audit_sources: std::collections::BTreeMap<String, String>,
    /// Document uploads served at once (each holds a database connection and transaction while
    /// its chunks arrive); more are refused at once with UNAVAILABLE and RetryInfo (1..=64).
    pub max_concurrent_uploads: u32,
}

impl Default for RecordsSettings {
    fn default() -> Self {
        Self {
            crypto: carehub_platform::crypto::CryptoConfig::default(),
            break_glass_minutes: 60,
            max_chart_entries: 5_000,
            erasure_hold_days: 30,
            erasure_check_secs: 60,
            audit_sources: std::collections::BTreeMap::new(),
            max_concurrent_uploads: 4,
        }
    }
}

impl Validate for RecordsConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        self.server.validate(problems);
        let s = &self.records;
        if !(1..=1440).contains(&s.break_glass_minutes) {
            problems.push("records.break_glass_minutes must be within 1..=1440".to_owned());
        }
        if !(1..=100_000).contains(&s.max_chart_entries) {
            problems.push("records.max_chart_entries must be within 1..=100000".to_owned());
        }
        if !(1..=64).contains(&s.max_concurrent_uploads) {
            problems.push("records.max_concurrent_uploads must be within 1..=64".to_owned());
        }
        if s.erasure_hold_days > 3650 {
            problems.push("records.erasure_hold_days must be at most 3650".to_owned());
        }
        if !(1..=86_400).contains(&s.erasure_check_secs) {
            problems.push("records.erasure_check_secs must be within 1..=86400".to_owned());
        }
        if let Err(e) = s.crypto.validate() {
            problems.push(format!("records.crypto: {e}"));
        }
        if self.server.auth.identity_endpoint.is_none() {
            problems.push(
                "server.auth.identity_endpoint must be set: records verifies identity's tokens \
                 and looks care-team members up there"
                    .to_owned(),
            );
        }
    }
}
