//! Identity's settings, under `[identity]`, on top of the platform's `[server]`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use carehub_platform::config::{PlatformConfig, Validate};
use serde::{Deserialize, Serialize};

/// The whole configuration of `carehub serve identity`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    pub server: PlatformConfig,
    pub identity: IdentitySettings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifierKind {
    /// Codes and reset links go to messaging (`MessagingInternal.SendNotification`) through the
    /// transactional outbox, written with the code (target `messaging` under
    /// `[server.outbox.targets]`; pending until it is configured). For deployments.
    Messaging,
    /// Development sandbox: writes notifications (codes included) to the log. Never in production.
    LogSandbox,
    /// Test sandbox: keeps notifications in memory for tests to read.
    MemorySandbox,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentitySettings {
    /// No longer read: signing keys come from `server.keys` (Vault `carehub/identity/signing`
    /// or the development key file). Accepted so that older configs still load; warned about.
    pub signing_key_file: Option<PathBuf>,
    /// How long a new signing-key version is published before it signs: at least the JWKS
    /// cache lifetime (300 s) plus `server.keys.refresh_interval_secs`.
    pub signing_key_lead_secs: u64,
    /// How often the replica records newly seen signing-key versions and reloads the schedule.
    pub signing_key_sync_secs: u64,
    /// Envelope encryption of PHI (data-key use limit, reservation batch, key cache).
    pub crypto: carehub_platform::crypto::CryptoConfig,
    /// Access-token lifetime, at most 600 s.
    pub access_token_ttl_secs: u64,
    /// Absolute session lifetime.
    pub session_lifetime_secs: u64,
    /// Idle timeout per role name; a session unused (no refresh) for longer ends.
    pub idle_timeout_secs: BTreeMap<String, u64>,
    /// Maximum password age per role name, in days (absent: no periodic change).
    pub password_max_age_days: BTreeMap<String, u32>,
    /// Consecutive failures before the exponential delay starts.
    pub lockout_free_attempts: u32,
    /// Longest lockout delay caused by consecutive failures.
    pub lockout_max_delay_secs: u64,
    /// Failed attempts per account per hour at which the account locks for the rest of the hour (≤ 100).
    pub max_failures_per_hour: u32,
    /// Failed attempts per source address per minute before that source is throttled.
    pub max_failures_per_source_per_minute: u32,
    /// How often stale `login_throttle` rows are purged (in batches; see
    /// [`crate::store::sessions::purge_login_throttle`]).
    pub login_throttle_purge_secs: u64,
    /// How long an account key's consecutive-failure streak is remembered after its last
    /// attempt (at least the hour of the account window): an idle streak older than this is
    /// forgotten by the purge. Windows still counting and locks in force are never purged.
    pub login_throttle_retention_secs: u64,
    pub verification_code_ttl_secs: u64,
    pub password_reset_ttl_secs: u64,
    pub mfa_challenge_ttl_secs: u64,
    /// argon2id memory cost in KiB (≥ 19456), iterations (≥ 2), parallelism (≥ 1).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Password hashes that run at once, each on its own dedicated thread (0: one per core).
    /// Each holds `argon2_memory_kib` of memory while it runs.
    pub password_hash_threads: u32,
    /// Requests that may wait for a hashing thread; beyond `password_hash_threads` +
    /// `password_hash_queue`, logins (and other password checks) are refused at once with
    /// UNAVAILABLE and RetryInfo.
    pub password_hash_queue: u32,
    pub notifier: NotifierKind,
    /// The password-reset link messaging sends (notifier `messaging`): the page of the patient
    /// app that takes the token, with `{token}` where it goes. A fragment (`#token=`) keeps the
    /// token out of web-server logs and Referer headers.
    pub password_reset_link: String,
    /// How long a positive session check may answer from memory before the session is read
    /// again (milliseconds, at most 10 000; 0 turns the cache off). It bounds how late this
    /// replica sees a revocation made by another replica when the notification listener is
    /// down, and how stale the cached `last_seen_at` can be (a stale one only ends an entry
    /// early). See [`crate::session_cache`].
    pub session_cache_ttl_ms: u64,
    /// Most sessions held in the cache (0 turns it off); when full, an entry is evicted.
    pub session_cache_max_entries: u64,
    /// Listen for other replicas' revocations (`LISTEN identity_revocations`) and evict at
    /// once. Turn it off behind a pooler that cannot hold a LISTEN (PgBouncer in transaction
    /// mode): other replicas' revocations are then seen within `session_cache_ttl_ms`.
    pub session_cache_listen: bool,
}

/// A placeholder: deployments set `identity.password_reset_link` to their app's page (warned
/// about at start while it is this).
pub const DEFAULT_RESET_LINK: &str = "https://localhost/reset-password#token={token}";

impl Default for IdentitySettings {
    fn default() -> Self {
        let idle = [
            ("patient", 1800),
            ("provider", 900),
            ("staff", 900),
            ("billing", 900),
            ("admin", 900),
        ];
        Self {
            signing_key_file: None,
            signing_key_lead_secs: 600,
            signing_key_sync_secs: 30,
            crypto: carehub_platform::crypto::CryptoConfig::default(),
            access_token_ttl_secs: 600,
            session_lifetime_secs: 12 * 3600,
            idle_timeout_secs: idle.iter().map(|(r, s)| ((*r).to_owned(), *s)).collect(),
            password_max_age_days: BTreeMap::new(),
            lockout_free_attempts: 5,
            lockout_max_delay_secs: 900,
            max_failures_per_hour: 100,
            max_failures_per_source_per_minute: 300,
            login_throttle_purge_secs: 300,
            login_throttle_retention_secs: 24 * 3600,
            verification_code_ttl_secs: 600,
            password_reset_ttl_secs: 900,
            mfa_challenge_ttl_secs: 300,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            password_hash_threads: 0,
            password_hash_queue: 8,
            notifier: NotifierKind::Messaging,
            password_reset_link: DEFAULT_RESET_LINK.to_owned(),
            session_cache_ttl_ms: 1000,
            session_cache_max_entries: 100_000,
            session_cache_listen: true,
        }
    }
}

impl Validate for IdentityConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        self.server.validate(problems);
        let s = &self.identity;
        let mut need = |ok: bool, msg: &str| {
            if !ok {
                problems.push(msg.to_owned());
            }
        };
        need(
            (1..=600).contains(&s.access_token_ttl_secs),
            "identity.access_token_ttl_secs must be within 1..=600",
        );
        need(
            s.session_lifetime_secs >= s.access_token_ttl_secs,
            "identity.session_lifetime_secs must be at least the access-token lifetime",
        );
        need(
            s.signing_key_sync_secs > 0,
            "identity.signing_key_sync_secs must be > 0",
        );
        need(
            (1..=100).contains(&s.max_failures_per_hour),
            "identity.max_failures_per_hour must be within 1..=100",
        );
        need(
            s.login_throttle_purge_secs > 0,
            "identity.login_throttle_purge_secs must be > 0",
        );
        need(
            s.login_throttle_retention_secs
                >= crate::domain::throttle::ACCOUNT_WINDOW_SECS.unsigned_abs(),
            "identity.login_throttle_retention_secs must be at least 3600 (the account window)",
        );
        need(
            s.argon2_memory_kib >= 19 * 1024
                && s.argon2_iterations >= 2
                && s.argon2_parallelism >= 1,
            "identity.argon2_* must be at least m=19456 KiB, t=2, p=1",
        );
        need(
            s.password_hash_threads <= 256 && s.password_hash_queue <= 4096,
            "identity.password_hash_threads must be at most 256 and password_hash_queue at most 4096",
        );
        need(
            s.verification_code_ttl_secs > 0,
            "identity.verification_code_ttl_secs must be > 0",
        );
        need(
            (1..=900).contains(&s.password_reset_ttl_secs),
            "identity.password_reset_ttl_secs must be within 1..=900",
        );
        need(
            s.password_reset_link.starts_with("https://")
                && s.password_reset_link.matches("{token}").count() == 1,
            "identity.password_reset_link must be an https:// URL with {token} exactly once",
        );
        need(
            s.session_cache_ttl_ms <= 10_000,
            "identity.session_cache_ttl_ms must be at most 10000 (0 turns the cache off)",
        );
        need(
            s.session_cache_max_entries <= 10_000_000,
            "identity.session_cache_max_entries must be at most 10000000 (0 turns the cache off)",
        );
        for role in s
            .idle_timeout_secs
            .keys()
            .chain(s.password_max_age_days.keys())
        {
            if carehub_platform::auth::Role::parse(role).is_none() {
                problems.push(format!(
                    "identity: unknown role {role:?} (patient, provider, staff, billing, admin)"
                ));
            }
        }
        if let Err(e) = s.crypto.validate() {
            problems.push(format!("identity.crypto: {e}"));
        }
    }
}

impl IdentitySettings {
    pub fn idle_timeout_for(&self, role: carehub_platform::auth::Role) -> u64 {
        self.idle_timeout_secs
            .get(role.as_str())
            .copied()
            .unwrap_or(900)
    }
}
