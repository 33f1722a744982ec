//! The audit event, aligned with FHIR AuditEvent (basic audit log patterns): when, who (user,
//! role, session, calling workload), what (action on an entity type and id), whose data (the
//! subject), why (purpose of use), how it ended (outcome), from where (source IP, user agent,
//! as forwarded by the trusted gateway) and which trace it belongs to.
//!
//! Only ids and codes: no PHI value may ever be put into an event. Free-text fields are bounded
//! codes checked by [`AuditEvent::validate`], so a caller cannot smuggle a name or a note in.

use chrono::{DateTime, SubsecRound as _, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::kind::Kind;
use crate::auth::Caller;

/// FHIR AuditEvent.action (C R U D E), plus `disclose` for HIPAA's accounting of disclosures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Read,
    Update,
    Delete,
    /// Perform a system or application function (log in, verify, export).
    Execute,
    /// Data left carehub for a third party (HIPAA 164.528).
    Disclose,
}

/// FHIR AuditEvent.outcome (0, 4, 8, 12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    /// The action was not successful (bad credentials, denied, invalid).
    MinorFailure,
    /// The action was stopped before it completed.
    SeriousFailure,
    /// The action made a resource or service unavailable (for example an account locked).
    MajorFailure,
}

/// Purpose of use (HL7 v3 PurposeOfUse codes in [`Purpose::hl7_code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Treatment,
    Payment,
    Operations,
    /// The patient (or their representative) asked for it.
    PatientRequest,
    /// Emergency access outside a care relationship; always flagged for review.
    BreakGlass,
    /// Account and access security (logins, MFA, password and session changes).
    Security,
    /// Required by law (subpoena, public-health reporting).
    Legal,
}

macro_rules! codes {
    ($ty:ty { $($variant:ident => $code:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $code),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($code => Some(Self::$variant),)+ _ => None }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

codes!(Action { Create => "create", Read => "read", Update => "update", Delete => "delete",
    Execute => "execute", Disclose => "disclose" });
codes!(Outcome { Success => "success", MinorFailure => "minor_failure",
    SeriousFailure => "serious_failure", MajorFailure => "major_failure" });
codes!(Purpose { Treatment => "treatment", Payment => "payment", Operations => "operations",
    PatientRequest => "patient_request", BreakGlass => "break_glass", Security => "security",
    Legal => "legal" });

impl Action {
    /// FHIR AuditEvent.action code.
    pub fn fhir_code(self) -> &'static str {
        match self {
            Action::Create => "C",
            Action::Read => "R",
            Action::Update => "U",
            Action::Delete => "D",
            Action::Execute | Action::Disclose => "E",
        }
    }
}

impl Purpose {
    pub fn hl7_code(self) -> &'static str {
        match self {
            Purpose::Treatment => "TREAT",
            Purpose::Payment => "HPAYMT",
            Purpose::Operations => "HOPERAT",
            Purpose::PatientRequest => "PATRQT",
            Purpose::BreakGlass => "ETREAT",
            Purpose::Security => "HSYSADMIN",
            Purpose::Legal => "HLEGAL",
        }
    }
}

/// One audit event, before it joins the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub event_id: Uuid,
    /// Microsecond precision, so that what Postgres stores hashes the same.
    pub occurred_at: DateTime<Utc>,
    /// What happened, a dotted code: `identity.login`, `records.note.read`.
    pub kind: String,
    pub action: Action,
    pub outcome: Outcome,
    /// A machine reason code for a failure (`INVALID_CREDENTIALS`), never free text.
    pub outcome_reason: Option<String>,
    pub purpose: Purpose,
    pub actor_user_id: Option<Uuid>,
    /// The role the user acted in.
    pub actor_role: Option<String>,
    pub actor_session_id: Option<Uuid>,
    pub actor_workload: Option<String>,
    pub entity_type: String,
    pub entity_id: String,
    /// The patient (or account holder) whose data this is.
    pub subject_id: Option<Uuid>,
    /// The client's address, in clear only in memory: stored, hashed and shipped sealed (see
    /// [`super::seal`]), never serialized.
    #[serde(skip)]
    pub source_ip: Option<String>,
    /// The client's user agent; like `source_ip`, never stored or serialized in clear.
    #[serde(skip)]
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    /// The sealer of the service whose RPC built the event (see [`super::seal`]); never stored.
    #[serde(skip)]
    pub sealer: Option<super::seal::CapturedSealer>,
}

/// Why an event was refused before it reached the database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit event field {field} {reason}")]
pub struct InvalidEvent {
    pub field: &'static str,
    pub reason: &'static str,
}

impl AuditEvent {
    /// A successful event at this instant, with the current span's trace and the current
    /// RPC's request id; set the rest with the builder methods.
    ///
    /// Services pass a [`Kind`] of their vocabulary (see [`super::kind`]); a plain string is
    /// accepted for tests and tools.
    pub fn new(
        kind: impl AsRef<str>,
        action: Action,
        purpose: Purpose,
        entity_type: &str,
        entity_id: impl ToString,
    ) -> Self {
        let (trace_id, span_id) = current_trace();
        AuditEvent {
            event_id: Uuid::now_v7(),
            occurred_at: Utc::now().trunc_subsecs(6),
            kind: kind.as_ref().to_owned(),
            action,
            outcome: Outcome::Success,
            outcome_reason: None,
            purpose,
            actor_user_id: None,
            actor_role: None,
            actor_session_id: None,
            actor_workload: None,
            entity_type: entity_type.to_owned(),
            entity_id: entity_id.to_string(),
            subject_id: None,
            source_ip: None,
            user_agent: None,
            request_id: crate::request::current_request_id(),
            trace_id,
            span_id,
            sealer: super::seal::current().map(super::seal::CapturedSealer),
        }
    }

    /// [`AuditEvent::new`] with the action the kind always records.
    pub fn of(kind: Kind, purpose: Purpose, entity_type: &str, entity_id: impl ToString) -> Self {
        Self::new(kind, kind.action(), purpose, entity_type, entity_id)
    }

    /// Who called: user, the role they act in (the first of theirs), session, workload, and
    /// the gateway-forwarded address and user agent.
    pub fn caller(mut self, caller: &Caller) -> Self {
        if let Some(user) = &caller.user {
            self.actor_user_id = Some(user.user_id);
            self.actor_session_id = Some(user.session_id);
            self.actor_role = user.roles.first().map(|r| r.as_str().to_owned());
        }
        // What the gateway forwards is not ours to trust blindly: an unusable value is dropped or
        // cleaned here rather than failing the audited change.
        let workload: String = caller
            .workload
            .chars()
            .take(128)
            .map(|c| if is_code_char(c) { c } else { '_' })
            .collect();
        self.actor_workload = (!workload.is_empty()).then_some(workload);
        self.source_ip = caller.client_ip.as_deref().and_then(parse_ip);
        self.user_agent = caller
            .user_agent
            .as_ref()
            .map(|ua| ua.chars().filter(|c| !c.is_control()).take(256).collect());
        if self.request_id.is_none() {
            self.request_id = caller.request_id.clone();
        }
        if self.sealer.is_none() {
            self.sealer = super::seal::current().map(super::seal::CapturedSealer);
        }
        self
    }

    /// A user acting without a token yet (login): the account that tried.
    pub fn actor_user(mut self, user_id: Uuid) -> Self {
        self.actor_user_id = Some(user_id);
        self
    }

    pub fn actor_role(mut self, role: &str) -> Self {
        self.actor_role = Some(role.to_owned());
        self
    }

    pub fn actor_session(mut self, session_id: Uuid) -> Self {
        self.actor_session_id = Some(session_id);
        self
    }

    pub fn subject(mut self, subject_id: Uuid) -> Self {
        self.subject_id = Some(subject_id);
        self
    }

    pub fn outcome(mut self, outcome: Outcome, reason: Option<&str>) -> Self {
        self.outcome = outcome;
        self.outcome_reason = reason.map(str::to_owned);
        self
    }

    /// Refuses values that cannot be ids or codes, so that PHI cannot slip in as "an id".
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        let bad = |field, reason| Err(InvalidEvent { field, reason });
        let code =
            |s: &str, max: usize| !s.is_empty() && s.len() <= max && s.chars().all(is_code_char);
        if !code(&self.kind, 64) {
            return bad("kind", "must be a dotted code of at most 64 characters");
        }
        if !code(&self.entity_type, 64) {
            return bad("entity_type", "must be a code of at most 64 characters");
        }
        if !code(&self.entity_id, 128) {
            return bad("entity_id", "must be an id of at most 128 characters");
        }
        for (field, value, max) in [
            ("outcome_reason", &self.outcome_reason, 64),
            ("actor_role", &self.actor_role, 32),
            ("actor_workload", &self.actor_workload, 128),
            ("request_id", &self.request_id, 128),
        ] {
            if value.as_deref().is_some_and(|v| !code(v, max)) {
                return bad(field, "must be a code of at most its maximum length");
            }
        }
        let hex = |v: &Option<String>, len: usize| {
            v.as_deref()
                .is_some_and(|s| s.len() != len || !s.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        if hex(&self.trace_id, 32) {
            return bad("trace_id", "must be 32 hex digits");
        }
        if hex(&self.span_id, 16) {
            return bad("span_id", "must be 16 hex digits");
        }
        if self
            .source_ip
            .as_deref()
            .is_some_and(|ip| ip.len() > 64 || ip.parse::<std::net::IpAddr>().is_err())
        {
            return bad("source_ip", "must be an IP address");
        }
        if self
            .user_agent
            .as_deref()
            .is_some_and(|ua| ua.chars().count() > 256 || ua.chars().any(char::is_control))
        {
            return bad("user_agent", "must be at most 256 printable characters");
        }
        if self.occurred_at != self.occurred_at.trunc_subsecs(6) {
            return bad("occurred_at", "must have microsecond precision");
        }
        Ok(())
    }
}

fn is_code_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')
}

/// An address as forwarded (`203.0.113.7`, `2001:db8::1`, `203.0.113.7:443`, `[2001:db8::1]:443`).
fn parse_ip(raw: &str) -> Option<String> {
    let raw = raw.trim();
    raw.parse::<std::net::IpAddr>()
        .or_else(|_| raw.parse::<std::net::SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_string())
}

/// The W3C trace id and span id of the current `tracing` span, when OpenTelemetry records it.
pub fn current_trace() -> (Option<String>, Option<String>) {
    match crate::telemetry::current_ids() {
        Some((trace, span)) => (Some(trace), Some(span)),
        None => (None, None),
    }
}

/// An event as stored: its place in the chain and the link to the previous one.
///
/// Loaded from the database, `event.source_ip` and `event.user_agent` are `None` until
/// [`super::seal::ClientSealer::open_event`] opens `client`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainedEvent {
    pub seq: i64,
    #[serde(flatten)]
    pub event: AuditEvent,
    /// The client fields as stored (sealed); the hash covers these bytes.
    #[serde(flatten)]
    pub client: super::seal::SealedClient,
    #[serde(with = "hex_bytes")]
    pub prev_hash: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
}

pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::to_hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        super::from_hex(&s).ok_or_else(|| serde::de::Error::custom("not hex"))
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// Lower- or upper-case hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    data_encoding::HEXLOWER_PERMISSIVE.decode(s.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn event() -> AuditEvent {
        AuditEvent::new(
            "records.note.read",
            Action::Read,
            Purpose::Treatment,
            "note",
            Uuid::nil(),
        )
    }

    #[test]
    fn codes_round_trip() {
        for a in [Action::Create, Action::Disclose, Action::Execute] {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Purpose::parse("break_glass"), Some(Purpose::BreakGlass));
        assert_eq!(Outcome::parse("minor_failure"), Some(Outcome::MinorFailure));
        assert_eq!(Outcome::parse("nope"), None);
    }

    #[test]
    fn free_text_is_refused() {
        assert!(event().validate().is_ok());
        let mut e = event();
        e.entity_id = "Jane Doe".into();
        assert_eq!(e.validate().unwrap_err().field, "entity_id");
        let mut e = event();
        e.outcome_reason = Some("patient said ...".into());
        assert_eq!(e.validate().unwrap_err().field, "outcome_reason");
        let mut e = event();
        e.source_ip = Some("not-an-ip".into());
        assert_eq!(e.validate().unwrap_err().field, "source_ip");
        let mut e = event();
        e.trace_id = Some("xyz".into());
        assert_eq!(e.validate().unwrap_err().field, "trace_id");
    }

    #[test]
    fn forwarded_values_are_cleaned_not_fatal() {
        let caller = Caller {
            workload: "gate way*".into(),
            user: None,
            client_ip: Some("unknown".into()),
            user_agent: Some("agent\u{7}/1.0".into()),
            request_id: None,
        };
        let e = event().caller(&caller);
        assert!(e.validate().is_ok(), "{:?}", e.validate());
        assert_eq!(e.source_ip, None);
        assert_eq!(e.actor_workload.as_deref(), Some("gate_way_"));
        assert_eq!(e.user_agent.as_deref(), Some("agent/1.0"));
        let with_port = Caller {
            client_ip: Some("[2001:db8::1]:443".into()),
            ..caller
        };
        assert_eq!(
            event().caller(&with_port).source_ip.as_deref(),
            Some("2001:db8::1")
        );
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(from_hex(&to_hex(&[0, 255, 16])).unwrap(), vec![0, 255, 16]);
        assert!(from_hex("abc").is_none());
        assert!(from_hex("zz").is_none());
    }
}
