//! What notifications say. The text of every template is fixed here and carries no PHI: an SMS,
//! an email or a push notification leaves carehub for carriers, mail relays and lock screens,
//! so none names a person, a condition, a message's content or a provider. Only the parameters
//! below fill a template in, and none of them is health information: a one-time code, a reset
//! link, a visit's time.

use std::collections::BTreeMap;

use carehub_platform::errors::FieldViolations;
use carehub_proto::messaging::v1 as pb;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::channels::Channel;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Template {
    NewMessage,
    AppointmentReminder,
    VerificationCode,
    PasswordReset,
    Promotion,
    PasswordChanged,
    AccountCreated,
}

/// One row per template: its stored code, whether it is promotional (SMS only after an
/// explicit opt-in), whether the user just asked for it (codes, reset links: their preferences
/// do not silence it and it may go to an address identity has not verified yet), and whether a
/// law requires it to reach the user even after STOP (none today; a template that ever needs
/// it says so here, nowhere else).
struct Traits {
    code: &'static str,
    promotional: bool,
    requested_by_user: bool,
    legally_required: bool,
    params: &'static [Param],
}

#[derive(Clone, Copy)]
struct Param {
    name: &'static str,
    required: bool,
}

const TRAITS: [(Template, Traits); 7] = [
    (
        Template::NewMessage,
        Traits {
            code: "new_message",
            promotional: false,
            requested_by_user: false,
            legally_required: false,
            params: &[],
        },
    ),
    (
        Template::AppointmentReminder,
        Traits {
            code: "appointment_reminder",
            promotional: false,
            requested_by_user: false,
            legally_required: false,
            params: &[
                Param {
                    name: "start_time",
                    required: true,
                },
                Param {
                    name: "time_zone",
                    required: false,
                },
            ],
        },
    ),
    (
        Template::VerificationCode,
        Traits {
            code: "verification_code",
            promotional: false,
            requested_by_user: true,
            legally_required: false,
            params: &[Param {
                name: "code",
                required: true,
            }],
        },
    ),
    (
        Template::PasswordReset,
        Traits {
            code: "password_reset",
            promotional: false,
            requested_by_user: true,
            legally_required: false,
            params: &[Param {
                name: "link",
                required: true,
            }],
        },
    ),
    (
        Template::Promotion,
        Traits {
            code: "promotion",
            promotional: true,
            requested_by_user: false,
            legally_required: false,
            params: &[],
        },
    ),
    // Security notices about the account itself: the user's preferences do not silence them
    // (a password changed by someone else must reach the owner), an SMS opt-out still does.
    (
        Template::PasswordChanged,
        Traits {
            code: "password_changed",
            promotional: false,
            requested_by_user: true,
            legally_required: false,
            params: &[],
        },
    ),
    (
        Template::AccountCreated,
        Traits {
            code: "account_created",
            promotional: false,
            requested_by_user: true,
            legally_required: false,
            params: &[],
        },
    ),
];

impl Template {
    fn traits(self) -> &'static Traits {
        // The table lists every variant (a unit test checks it); the fallback is unreachable.
        TRAITS
            .iter()
            .find(|(t, _)| *t == self)
            .map_or(&TRAITS[0].1, |(_, traits)| traits)
    }

    pub fn from_pb(value: i32) -> Option<Template> {
        Some(match pb::Template::try_from(value).ok()? {
            pb::Template::NewMessage => Template::NewMessage,
            pb::Template::AppointmentReminder => Template::AppointmentReminder,
            pb::Template::VerificationCode => Template::VerificationCode,
            pb::Template::PasswordReset => Template::PasswordReset,
            pb::Template::Promotion => Template::Promotion,
            pb::Template::PasswordChanged => Template::PasswordChanged,
            pb::Template::AccountCreated => Template::AccountCreated,
            pb::Template::Unspecified => return None,
        })
    }

    pub fn to_pb(self) -> pb::Template {
        match self {
            Template::NewMessage => pb::Template::NewMessage,
            Template::AppointmentReminder => pb::Template::AppointmentReminder,
            Template::VerificationCode => pb::Template::VerificationCode,
            Template::PasswordReset => pb::Template::PasswordReset,
            Template::Promotion => pb::Template::Promotion,
            Template::PasswordChanged => pb::Template::PasswordChanged,
            Template::AccountCreated => pb::Template::AccountCreated,
        }
    }

    /// The stored code.
    pub fn as_str(self) -> &'static str {
        self.traits().code
    }

    /// Every template, in the order of the list of traits.
    pub fn all() -> impl Iterator<Item = Template> {
        TRAITS.iter().map(|(template, _)| *template)
    }

    pub fn parse(code: &str) -> Option<Template> {
        TRAITS
            .iter()
            .find(|(_, t)| t.code == code)
            .map(|(template, _)| *template)
    }

    /// A promotional text: sent by SMS only to a number that opted in.
    pub fn promotional(self) -> bool {
        self.traits().promotional
    }

    /// The user asked for it a moment ago (a code, a reset link).
    pub fn requested_by_user(self) -> bool {
        self.traits().requested_by_user
    }

    /// A law requires it to reach the user even after they opted out.
    pub fn legally_required(self) -> bool {
        self.traits().legally_required
    }
}

/// A template's parameters, checked.
pub type Params = BTreeMap<String, String>;

/// Longest reset link accepted.
const MAX_LINK: usize = 2048;

/// Checks `params` against `template` (every required one present and well-formed, no
/// other); the checked parameters, or `None` with the problems added to `v`.
pub fn check_params(
    template: Template,
    params: &BTreeMap<String, String>,
    v: &mut FieldViolations,
) -> Option<Params> {
    let mut ok = true;
    let mut bad = |v: &mut FieldViolations, field: String, why: &str| {
        ok = false;
        v.add(&field, why);
    };
    let known = template.traits().params;
    for key in params.keys() {
        if !known.iter().any(|p| p.name == key) {
            // The key is the caller's code, never PHI; bounded so that a long one stays short.
            let key: String = key.chars().take(32).collect();
            bad(
                v,
                format!("params[{key}]"),
                "is not a parameter of this template",
            );
        }
    }
    for p in known {
        let field = format!("params[{}]", p.name);
        let Some(value) = params.get(p.name) else {
            if p.required {
                bad(v, field, "is required by this template");
            }
            continue;
        };
        let problem = match p.name {
            "code" => (!(4..=12).contains(&value.len())
                || !value.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then_some("must be 4 to 12 letters or digits"),
            "link" => (value.len() > MAX_LINK
                || !(value.starts_with("https://") || value.starts_with("http://"))
                || !value.bytes().all(|b| b.is_ascii_graphic()))
            .then_some("must be an http(s) URL of at most 2048 visible ASCII characters"),
            "start_time" => DateTime::parse_from_rfc3339(value)
                .is_err()
                .then_some("must be an RFC 3339 instant"),
            "time_zone" => value
                .parse::<Tz>()
                .is_err()
                .then_some("must be an IANA time zone"),
            _ => None,
        };
        if let Some(why) = problem {
            bad(v, field, why);
        }
    }
    ok.then(|| {
        params
            .iter()
            .map(|(k, val)| (k.clone(), val.clone()))
            .collect()
    })
}

/// What one channel sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The email subject and push title (empty for SMS).
    pub subject: String,
    pub body: String,
}

/// How the visit time reads in a reminder: in `params.time_zone`, else the recipient's.
fn visit_time(params: &Params, recipient: Tz) -> String {
    let tz = params
        .get("time_zone")
        .and_then(|t| t.parse::<Tz>().ok())
        .unwrap_or(recipient);
    match params
        .get("start_time")
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
    {
        Some(at) => {
            let local = at.with_timezone(&Utc).with_timezone(&tz);
            format!("{} ({})", local.format("%a %-d %b %Y at %H:%M"), tz.name())
        }
        // Checked when the notification was accepted; kept vague rather than failing a send.
        None => "your scheduled time".to_owned(),
    }
}

/// The text of `template` for `channel`, filled in with `params`; `recipient` is the time zone
/// a visit's time is shown in unless the caller named one.
pub fn render(template: Template, params: &Params, channel: Channel, recipient: Tz) -> Rendered {
    let param = |name: &str| params.get(name).cloned().unwrap_or_default();
    let (subject, body) = match template {
        Template::NewMessage => (
            "New message from your care team".to_owned(),
            "You have a new message from your care team. Sign in to carehub to read it.".to_owned(),
        ),
        Template::AppointmentReminder => (
            "Visit reminder".to_owned(),
            format!(
                "Reminder: you have a visit on {}. Sign in to carehub for details.",
                visit_time(params, recipient)
            ),
        ),
        Template::VerificationCode => (
            "Your carehub verification code".to_owned(),
            format!(
                "Your carehub verification code is {}. Do not share it with anyone.",
                param("code")
            ),
        ),
        Template::PasswordReset => (
            "Reset your carehub password".to_owned(),
            format!(
                "Reset your carehub password: {} If you did not ask for this, ignore this \
                 message.",
                param("link")
            ),
        ),
        Template::Promotion => (
            "News from carehub".to_owned(),
            "News from carehub: see what is new in the app.".to_owned(),
        ),
        Template::PasswordChanged => (
            "Your carehub password was changed".to_owned(),
            "Your carehub password was changed. If this was not you, contact the practice at \
             once."
                .to_owned(),
        ),
        Template::AccountCreated => (
            "Your carehub account".to_owned(),
            "A carehub account was created for you. Sign in to carehub to set it up.".to_owned(),
        ),
    };
    match channel {
        // A promotional text must say how to stop them; a subject line means nothing in an SMS.
        Channel::Sms if template.promotional() => Rendered {
            subject: String::new(),
            body: format!("{body} Reply STOP to opt out."),
        },
        Channel::Sms => Rendered {
            subject: String::new(),
            body,
        },
        Channel::Email | Channel::Push => Rendered { subject, body },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const ALL: [Template; 7] = [
        Template::NewMessage,
        Template::AppointmentReminder,
        Template::VerificationCode,
        Template::PasswordReset,
        Template::Promotion,
        Template::PasswordChanged,
        Template::AccountCreated,
    ];

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_template_has_its_row_and_round_trips() {
        for t in ALL {
            assert!(TRAITS.iter().any(|(x, _)| *x == t), "{t:?} has no traits");
            assert_eq!(Template::parse(t.as_str()), Some(t));
            assert_eq!(Template::from_pb(t.to_pb() as i32), Some(t));
        }
        assert_eq!(Template::from_pb(0), None);
        assert!(ALL.iter().all(|t| !t.legally_required()));
        assert!(Template::Promotion.promotional());
    }

    #[test]
    fn params_are_checked_per_template() {
        let mut v = FieldViolations::new();
        assert!(check_params(
            Template::VerificationCode,
            &params(&[("code", "123456")]),
            &mut v
        )
        .is_some());
        assert!(v.is_empty());
        for (t, p, field) in [
            (Template::VerificationCode, vec![], "params[code]"),
            (
                Template::VerificationCode,
                vec![("code", "12 34")],
                "params[code]",
            ),
            (
                Template::NewMessage,
                vec![("name", "Ann Smith")],
                "params[name]",
            ),
            (
                Template::PasswordReset,
                vec![("link", "javascript:alert(1)")],
                "params[link]",
            ),
            (
                Template::AppointmentReminder,
                vec![("start_time", "tomorrow")],
                "params[start_time]",
            ),
            (
                Template::AppointmentReminder,
                vec![
                    ("start_time", "2026-12-08T14:30:00Z"),
                    ("time_zone", "Mars/Olympus"),
                ],
                "params[time_zone]",
            ),
        ] {
            let mut v = FieldViolations::new();
            assert!(
                check_params(t, &params(&p), &mut v).is_none(),
                "{t:?} {p:?}"
            );
            assert!(v.fields().any(|f| f == field), "{t:?} {p:?}");
        }
    }

    #[test]
    fn reminder_shows_the_visit_in_the_right_zone() {
        let p: Params = [("start_time".to_owned(), "2026-12-08T14:30:00Z".to_owned())]
            .into_iter()
            .collect();
        let r = render(
            Template::AppointmentReminder,
            &p,
            Channel::Sms,
            chrono_tz::America::New_York,
        );
        assert_eq!(
            r.body,
            "Reminder: you have a visit on Tue 8 Dec 2026 at 09:30 (America/New_York). Sign in \
             to carehub for details."
        );
        let mut p = p;
        p.insert("time_zone".into(), "Europe/Paris".into());
        let r = render(Template::AppointmentReminder, &p, Channel::Email, Tz::UTC);
        assert!(r.body.contains("at 15:30 (Europe/Paris)"), "{}", r.body);
        assert_eq!(r.subject, "Visit reminder");
    }

    #[test]
    fn promotions_say_how_to_stop_by_sms_only() {
        let p = Params::new();
        let sms = render(Template::Promotion, &p, Channel::Sms, Tz::UTC);
        assert!(sms.body.ends_with("Reply STOP to opt out."));
        assert!(sms.subject.is_empty());
        let email = render(Template::Promotion, &p, Channel::Email, Tz::UTC);
        assert!(!email.body.contains("STOP"));
    }

    #[test]
    fn new_message_alert_is_the_fixed_text() {
        let r = render(Template::NewMessage, &Params::new(), Channel::Push, Tz::UTC);
        assert!(r
            .body
            .starts_with("You have a new message from your care team."));
    }
}
