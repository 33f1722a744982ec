//! Accounts: the user record, its lifecycle, verification codes, one-time passwords,
//! consents and communication preferences.

use carehub_platform::auth::Role;
use chrono::{DateTime, NaiveDate, Utc};
use rand::Rng as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

/// Lifecycle of an account: active ⇄ suspended → terminated (final).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    Suspended,
    Terminated,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Suspended => "suspended",
            AccountStatus::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(AccountStatus::Active),
            "suspended" => Some(AccountStatus::Suspended),
            "terminated" => Some(AccountStatus::Terminated),
            _ => None,
        }
    }
}

/// An admin action on an account's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusAction {
    Suspend,
    Reactivate,
    Terminate,
}

impl StatusAction {
    /// The status after the action, or why it is not allowed from `from`.
    pub fn apply(self, from: AccountStatus) -> Result<AccountStatus, &'static str> {
        use AccountStatus::*;
        match (self, from) {
            (_, Terminated) => Err("the account is terminated; that is final"),
            (StatusAction::Suspend, Active) => Ok(Suspended),
            (StatusAction::Suspend, Suspended) => Err("the account is already suspended"),
            (StatusAction::Reactivate, Suspended) => Ok(Active),
            (StatusAction::Reactivate, Active) => Err("the account is already active"),
            (StatusAction::Terminate, Active | Suspended) => Ok(Terminated),
        }
    }

    /// The status the action leads to.
    pub fn target(self) -> AccountStatus {
        match self {
            StatusAction::Suspend => AccountStatus::Suspended,
            StatusAction::Reactivate => AccountStatus::Active,
            StatusAction::Terminate => AccountStatus::Terminated,
        }
    }

    /// Whether the action ends every session of the account.
    pub fn revokes_sessions(self) -> bool {
        !matches!(self, StatusAction::Reactivate)
    }

    /// The revoke reason recorded on the sessions it ends.
    pub fn revoke_reason(self) -> &'static str {
        match self {
            StatusAction::Suspend => "account_suspended",
            StatusAction::Reactivate => "account_reactivated",
            StatusAction::Terminate => "account_terminated",
        }
    }
}

/// A user account as stored.
#[derive(Clone, Debug)]
pub struct Account {
    pub id: Uuid,
    pub role: Role,
    pub status: AccountStatus,
    pub email: String,
    pub email_verified_at: Option<DateTime<Utc>>,
    pub phone: Option<String>,
    pub phone_verified_at: Option<DateTime<Utc>>,
    pub given_name: String,
    pub family_name: String,
    pub date_of_birth: Option<NaiveDate>,
    pub time_zone: String,
    pub mfa_enabled: bool,
    pub password_change_required: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Account {
    pub fn display_name(&self) -> String {
        format!("{} {}", self.given_name, self.family_name)
    }
}

/// A new account to insert.
#[derive(Clone, Debug)]
pub struct NewAccount {
    pub id: Uuid,
    pub role: Role,
    pub email: String,
    pub phone: Option<String>,
    pub given_name: String,
    pub family_name: String,
    pub date_of_birth: Option<NaiveDate>,
    pub time_zone: String,
    pub password_hash: String,
    pub password_change_required: bool,
}

/// A contact channel that can be verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact {
    Email,
    Phone,
}

impl Contact {
    pub fn as_str(self) -> &'static str {
        match self {
            Contact::Email => "email",
            Contact::Phone => "phone",
        }
    }
}

/// Attempts allowed per verification code before it stops working.
pub const MAX_CODE_ATTEMPTS: i32 = 5;

/// A fresh six-digit code (uniform over 000000..=999999).
pub fn new_verification_code() -> String {
    let n: u32 = rand::rngs::OsRng.gen_range(0..1_000_000);
    format!("{n:06}")
}

/// What is stored of a code or token: its SHA-256.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Constant-time comparison of two stored hashes.
pub fn hashes_match(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Length of generated one-time passwords.
pub const ONE_TIME_PASSWORD_LEN: usize = 20;

/// A random one-time password of 20 characters from an unambiguous alphabet (~115 bits).
pub fn new_one_time_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    (0..ONE_TIME_PASSWORD_LEN)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// The latest consent state.
#[derive(Clone, Debug, Default)]
pub struct ConsentState {
    pub user_id: Uuid,
    pub terms_version: Option<String>,
    pub terms_accepted_at: Option<DateTime<Utc>>,
    pub privacy_version: Option<String>,
    pub privacy_accepted_at: Option<DateTime<Utc>>,
    pub marketing_opt_in: bool,
    pub marketing_updated_at: Option<DateTime<Utc>>,
    pub sms_opt_in: bool,
    pub sms_updated_at: Option<DateTime<Utc>>,
}

/// Consent decisions to record; `None` leaves a decision unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsentChange {
    pub terms_version: Option<String>,
    pub privacy_version: Option<String>,
    pub marketing_opt_in: Option<bool>,
    pub sms_opt_in: Option<bool>,
}

impl ConsentChange {
    /// The consent_events rows (kind, value) this change appends, in a stable order.
    pub fn events(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(v) = &self.terms_version {
            out.push(("terms", v.clone()));
        }
        if let Some(v) = &self.privacy_version {
            out.push(("privacy", v.clone()));
        }
        if let Some(b) = self.marketing_opt_in {
            out.push(("marketing", b.to_string()));
        }
        if let Some(b) = self.sms_opt_in {
            out.push(("sms", b.to_string()));
        }
        out
    }
}

/// How the user wants to be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommPrefs {
    pub user_id: Uuid,
    pub email_notifications: bool,
    pub sms_notifications: bool,
    pub push_notifications: bool,
    pub language: String,
    pub quiet_hours_start: i16,
    pub quiet_hours_end: i16,
    /// When `sms_notifications` was last decided (by the user or messaging's SMS ledger); `None`
    /// for preferences older than the record.
    pub sms_notifications_changed_at: Option<DateTime<Utc>>,
}

impl CommPrefs {
    /// Whether an SMS-consent change the ledger made at `change_time` is newer than the
    /// standing decision (a later or equal decision wins; an unknown one loses).
    pub fn sms_change_is_newer(&self, change_time: DateTime<Utc>) -> bool {
        self.sms_notifications_changed_at
            .is_none_or(|decided| change_time > decided)
    }
}

/// Paths UpdateProfile accepts in its field mask.
pub const PROFILE_MASK_PATHS: [&str; 5] =
    ["given_name", "family_name", "phone", "time_zone", "email"];

/// Paths UpdateCommunicationPreferences accepts in its field mask.
pub const PREFS_MASK_PATHS: [&str; 6] = [
    "email_notifications",
    "sms_notifications",
    "push_notifications",
    "language",
    "quiet_hours_start",
    "quiet_hours_end",
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn status_machine() {
        use AccountStatus::*;
        assert_eq!(StatusAction::Suspend.apply(Active), Ok(Suspended));
        assert_eq!(StatusAction::Reactivate.apply(Suspended), Ok(Active));
        assert_eq!(StatusAction::Terminate.apply(Active), Ok(Terminated));
        assert_eq!(StatusAction::Terminate.apply(Suspended), Ok(Terminated));
        assert!(StatusAction::Suspend.apply(Suspended).is_err());
        assert!(StatusAction::Reactivate.apply(Active).is_err());
        for a in [
            StatusAction::Suspend,
            StatusAction::Reactivate,
            StatusAction::Terminate,
        ] {
            assert!(a.apply(Terminated).is_err());
        }
        for a in [
            StatusAction::Suspend,
            StatusAction::Reactivate,
            StatusAction::Terminate,
        ] {
            let from = if a == StatusAction::Reactivate {
                Suspended
            } else {
                Active
            };
            assert_eq!(a.apply(from), Ok(a.target()));
        }
        assert!(StatusAction::Suspend.revokes_sessions());
        assert!(!StatusAction::Reactivate.revokes_sessions());
        for s in [Active, Suspended, Terminated] {
            assert_eq!(AccountStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn codes_and_passwords() {
        for _ in 0..100 {
            let c = new_verification_code();
            assert_eq!(c.len(), 6);
            assert!(c.bytes().all(|b| b.is_ascii_digit()));
        }
        let h = hash_secret("123456");
        assert_eq!(h.len(), 32);
        assert!(hashes_match(&h, &hash_secret("123456")));
        assert!(!hashes_match(&h, &hash_secret("123457")));
        let p = new_one_time_password();
        assert!(p.len() >= 16);
        assert!(crate::domain::password::policy_violation(&p).is_none());
        assert_ne!(p, new_one_time_password());
    }

    #[test]
    fn only_a_newer_ledger_change_applies() {
        let t = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap();
        let mut p = CommPrefs {
            user_id: Uuid::nil(),
            email_notifications: true,
            sms_notifications: true,
            push_notifications: true,
            language: "en-US".into(),
            quiet_hours_start: 0,
            quiet_hours_end: 0,
            sms_notifications_changed_at: None,
        };
        assert!(p.sms_change_is_newer(t(1)));
        p.sms_notifications_changed_at = Some(t(100));
        assert!(p.sms_change_is_newer(t(101)));
        assert!(!p.sms_change_is_newer(t(100)));
        assert!(!p.sms_change_is_newer(t(99)));
    }

    #[test]
    fn consent_events() {
        let c = ConsentChange {
            terms_version: Some("t2".into()),
            privacy_version: None,
            marketing_opt_in: Some(false),
            sms_opt_in: Some(true),
        };
        assert_eq!(
            c.events(),
            vec![
                ("terms", "t2".to_owned()),
                ("marketing", "false".to_owned()),
                ("sms", "true".to_owned())
            ]
        );
        assert!(ConsentChange::default().events().is_empty());
    }
}
