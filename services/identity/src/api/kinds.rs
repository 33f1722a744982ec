//! Identity's audit event kinds: its part of the shared vocabulary (`platform::audit::kind`).
//! Every event identity writes has one of these kinds; the README's table is checked against
//! [`VOCABULARY`] by a test.

use carehub_platform::audit::{Action, Kind, Vocabulary};

const ACCOUNT: &str = "the account holder";

// ---- accounts ----
pub const ACCOUNT_REGISTER: Kind = Kind::new(
    "identity.account.register",
    Action::Create,
    "a patient registered (RegisterPatient)",
    "the new patient",
);
pub const ACCOUNT_CREATE: Kind = Kind::new(
    "identity.account.create",
    Action::Create,
    "an admin created a user (CreateUser)",
    "the new user",
);
pub const ACCOUNT_SUSPEND: Kind = Kind::new(
    "identity.account.suspend",
    Action::Update,
    "an admin suspended an account (SuspendUser), or messaging did for the staff member who \
     resolved an abuse report (RequestAccountAction)",
    ACCOUNT,
);
pub const ACCOUNT_REACTIVATE: Kind = Kind::new(
    "identity.account.reactivate",
    Action::Update,
    "an admin reactivated an account (ReactivateUser)",
    ACCOUNT,
);
pub const ACCOUNT_TERMINATE: Kind = Kind::new(
    "identity.account.terminate",
    Action::Update,
    "an admin terminated an account (TerminateUser), or messaging did for the staff member who \
     resolved an abuse report (RequestAccountAction)",
    ACCOUNT,
);
pub const USER_READ: Kind = Kind::new(
    "identity.user.read",
    Action::Read,
    "an account was read by its holder, an admin or staff (GetUser)",
    "the account read",
);
pub const USER_LOOKUP: Kind = Kind::new(
    "identity.user.lookup",
    Action::Read,
    "another carehub service looked a user up (IdentityInternal.LookupUser), messaging read their \
     verified contact data to notify them (GetContact) or the summary of an account already in \
     the state it asked for (RequestAccountAction)",
    "the user looked up",
);

// ---- the holder's own account ----
pub const PROFILE_READ: Kind = Kind::new(
    "identity.profile.read",
    Action::Read,
    "a user read their profile (GetProfile)",
    ACCOUNT,
);
pub const PROFILE_UPDATE: Kind = Kind::new(
    "identity.profile.update",
    Action::Update,
    "a user changed their name, email, phone or time zone (UpdateProfile)",
    ACCOUNT,
);
pub const CONSENT_READ: Kind = Kind::new(
    "identity.consent.read",
    Action::Read,
    "a user read their consents (GetConsents)",
    ACCOUNT,
);
pub const CONSENT_UPDATE: Kind = Kind::new(
    "identity.consent.update",
    Action::Update,
    "consents changed (UpdateConsents; SMS consent withdrawn when UpdateProfile removes the phone)",
    ACCOUNT,
);
pub const PREFERENCES_READ: Kind = Kind::new(
    "identity.preferences.read",
    Action::Read,
    "a user read their communication preferences (GetCommunicationPreferences)",
    ACCOUNT,
);
pub const PREFERENCES_UPDATE: Kind = Kind::new(
    "identity.preferences.update",
    Action::Update,
    "a user changed their communication preferences (UpdateCommunicationPreferences), or \
     messaging's SMS consent ledger changed sms_notifications (ApplySmsConsent)",
    ACCOUNT,
);
pub const CONTACT_CODE_SEND: Kind = Kind::new(
    "identity.contact.code_send",
    Action::Execute,
    "a verification code was sent to the account's email or phone (SendVerificationCode)",
    ACCOUNT,
);
pub const CONTACT_VERIFY: Kind = Kind::new(
    "identity.contact.verify",
    Action::Update,
    "an email address or phone number was proven with its code (VerifyContact)",
    ACCOUNT,
);

// ---- sign-in and credentials ----
pub const LOGIN: Kind = Kind::new(
    "identity.login",
    Action::Execute,
    "a session opened (password, MFA or PIN), or a login or PIN attempt failed",
    "the account that signed in or tried (none for an unknown email)",
);
pub const LOGIN_MFA_CHALLENGE: Kind = Kind::new(
    "identity.login.mfa_challenge",
    Action::Execute,
    "a correct password of an account with TOTP got an MFA challenge",
    ACCOUNT,
);
pub const LOGIN_MFA: Kind = Kind::new(
    "identity.login.mfa",
    Action::Execute,
    "the second factor of an MFA challenge was wrong",
    ACCOUNT,
);
pub const LOGIN_LOCKOUT: Kind = Kind::new(
    "identity.login.lockout",
    Action::Execute,
    "failed logins locked the account (one event per lock)",
    ACCOUNT,
);
pub const DEVICE_PIN_ENROLL: Kind = Kind::new(
    "identity.device_pin.enroll",
    Action::Create,
    "a device PIN was enrolled (EnrollDevicePin)",
    ACCOUNT,
);
pub const DEVICE_PIN_REVOKE: Kind = Kind::new(
    "identity.device_pin.revoke",
    Action::Execute,
    "repeated wrong PINs revoked a device credential",
    ACCOUNT,
);
pub const SESSIONS_LIST: Kind = Kind::new(
    "identity.sessions.list",
    Action::Read,
    "a user listed their sessions, with addresses and user agents (ListSessions)",
    ACCOUNT,
);
pub const SESSION_REVOKE: Kind = Kind::new(
    "identity.session.revoke",
    Action::Update,
    "a user revoked a session (RevokeSession), or a reused refresh token ended one",
    ACCOUNT,
);
pub const SESSION_LOGOUT: Kind = Kind::new(
    "identity.session.logout",
    Action::Update,
    "a user logged out (Logout)",
    ACCOUNT,
);
pub const MFA_ENROLL: Kind = Kind::new(
    "identity.mfa.enroll",
    Action::Update,
    "TOTP enrollment started (EnrollTotp)",
    ACCOUNT,
);
pub const MFA_ENABLE: Kind = Kind::new(
    "identity.mfa.enable",
    Action::Update,
    "TOTP was confirmed and recovery codes issued (ConfirmTotp)",
    ACCOUNT,
);
pub const MFA_DISABLE: Kind = Kind::new(
    "identity.mfa.disable",
    Action::Update,
    "TOTP was disabled (DisableTotp)",
    ACCOUNT,
);
pub const PASSWORD_RESET_REQUEST: Kind = Kind::new(
    "identity.password.reset_request",
    Action::Execute,
    "a reset token was sent for an active account (RequestPasswordReset)",
    ACCOUNT,
);
pub const PASSWORD_RESET: Kind = Kind::new(
    "identity.password.reset",
    Action::Update,
    "a password was reset with a token; every session revoked (ResetPassword)",
    ACCOUNT,
);
pub const PASSWORD_CHANGE: Kind = Kind::new(
    "identity.password.change",
    Action::Update,
    "a user changed their password; other sessions revoked (ChangePassword)",
    ACCOUNT,
);

/// Every kind identity writes.
pub const VOCABULARY: Vocabulary = Vocabulary {
    prefix: "identity",
    kinds: &[
        ACCOUNT_REGISTER,
        ACCOUNT_CREATE,
        ACCOUNT_SUSPEND,
        ACCOUNT_REACTIVATE,
        ACCOUNT_TERMINATE,
        USER_READ,
        USER_LOOKUP,
        PROFILE_READ,
        PROFILE_UPDATE,
        CONSENT_READ,
        CONSENT_UPDATE,
        PREFERENCES_READ,
        PREFERENCES_UPDATE,
        CONTACT_CODE_SEND,
        CONTACT_VERIFY,
        LOGIN,
        LOGIN_MFA_CHALLENGE,
        LOGIN_MFA,
        LOGIN_LOCKOUT,
        DEVICE_PIN_ENROLL,
        DEVICE_PIN_REVOKE,
        SESSIONS_LIST,
        SESSION_REVOKE,
        SESSION_LOGOUT,
        MFA_ENROLL,
        MFA_ENABLE,
        MFA_DISABLE,
        PASSWORD_RESET_REQUEST,
        PASSWORD_RESET,
        PASSWORD_CHANGE,
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vocabulary_is_well_formed() {
        assert_eq!(VOCABULARY.problems(), Vec::<String>::new());
    }

    /// The README's table lists every kind, with the action it records.
    #[test]
    fn the_readme_documents_every_kind() {
        let readme = include_str!("../../../../README.md");
        let mut missing = VOCABULARY.undocumented_in(readme);
        missing.extend(carehub_platform::audit::kind::PLATFORM.undocumented_in(readme));
        assert!(missing.is_empty(), "README lacks audit kinds {missing:?}");
    }
}
