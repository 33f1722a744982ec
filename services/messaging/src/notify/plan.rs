//! Where a notification goes, decided once when it is accepted: for each channel, the address
//! and whether it is due (now, or at the end of the recipient's quiet hours) or skipped, and
//! why. Pure: the handler brings what identity said about the recipient and what the ledger
//! says about their number.

use chrono::{DateTime, Utc};

use super::channels::Channel;
use super::ledger::Consent;
use super::quiet::QuietHours;
use super::templates::Template;

/// Why a delivery was skipped, or why a pending one waits: the codes stored and answered.
pub mod reason {
    pub const ACCOUNT_INACTIVE: &str = "account_inactive";
    pub const PREFERENCE_OFF: &str = "preference_off";
    pub const NO_VERIFIED_PHONE: &str = "no_verified_phone";
    pub const NO_VERIFIED_EMAIL: &str = "no_verified_email";
    pub const SMS_OPTED_OUT: &str = "sms_opted_out";
    pub const SMS_NO_OPT_IN: &str = "sms_no_opt_in";
    pub const QUIET_HOURS: &str = "quiet_hours";
}

/// What identity says about the recipient.
#[derive(Clone, Debug)]
pub struct Recipient {
    pub user_id: String,
    pub active: bool,
    /// Verified only; empty when none.
    pub email: String,
    /// Verified only (E.164); empty when none.
    pub phone: String,
    pub sms: bool,
    pub email_on: bool,
    pub push: bool,
    pub quiet: QuietHours,
}

/// What the caller asked for.
#[derive(Clone, Debug)]
pub struct Ask<'a> {
    pub template: Template,
    /// Empty: every channel.
    pub channels: &'a [Channel],
    pub urgent: bool,
    /// A direct address (E.164 or email) for a code or link to an address not verified yet.
    pub direct: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Pending, first attempt at `at`; `waits` says why not now (quiet hours).
    Due {
        at: DateTime<Utc>,
        waits: Option<&'static str>,
    },
    Skipped(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub channel: Channel,
    pub address: Option<String>,
    pub outcome: Outcome,
}

/// The address of `channel`: the caller's direct one when it fits the channel (a code goes to
/// the number being verified, not to the one verified before), else identity's verified one;
/// push goes to the user's devices, named by the user id.
pub fn address(ask: &Ask<'_>, r: &Recipient, channel: Channel) -> Option<String> {
    let direct = ask.direct.filter(|_| ask.template.requested_by_user());
    let pick = |fits: bool, verified: &str| match direct {
        Some(d) if fits => Some(d.to_owned()),
        _ => (!verified.is_empty()).then(|| verified.to_owned()),
    };
    match channel {
        Channel::Sms => pick(direct.is_some_and(super::phone::is_e164), &r.phone),
        Channel::Email => pick(direct.is_some_and(|d| d.contains('@')), &r.email),
        Channel::Push => Some(r.user_id.clone()),
    }
}

/// One planned delivery per channel asked for (every channel when none was named); the SMS
/// one judged against `sms_consent`, the ledger's state of its number.
pub fn plan(
    ask: &Ask<'_>,
    r: &Recipient,
    sms_consent: Consent,
    now: DateTime<Utc>,
) -> Vec<Planned> {
    let channels: &[Channel] = if ask.channels.is_empty() {
        &Channel::ALL
    } else {
        ask.channels
    };
    let template = ask.template;
    // A code or reset link the user just asked for is not a notification they can mute; the
    // account's standing is identity's call (it issued the code).
    let user_asked = template.requested_by_user();
    let due = if ask.urgent {
        Outcome::Due {
            at: now,
            waits: None,
        }
    } else {
        match r.quiet.deferred_until(now) {
            Some(at) => Outcome::Due {
                at,
                waits: Some(reason::QUIET_HOURS),
            },
            None => Outcome::Due {
                at: now,
                waits: None,
            },
        }
    };
    channels
        .iter()
        .map(|&channel| {
            let address = address(ask, r, channel);
            let wanted = match channel {
                Channel::Sms => r.sms,
                Channel::Email => r.email_on,
                Channel::Push => r.push,
            };
            let skip = if !r.active && !user_asked {
                Some(reason::ACCOUNT_INACTIVE)
            } else if !wanted && !user_asked {
                Some(reason::PREFERENCE_OFF)
            } else if address.is_none() {
                Some(match channel {
                    Channel::Email => reason::NO_VERIFIED_EMAIL,
                    _ => reason::NO_VERIFIED_PHONE,
                })
            } else if channel == Channel::Sms {
                sms_refusal(template, sms_consent)
            } else {
                None
            };
            Planned {
                channel,
                address: if skip.is_some() { None } else { address },
                outcome: match skip {
                    Some(why) => Outcome::Skipped(why),
                    None => due.clone(),
                },
            }
        })
        .collect()
}

/// Why the ledger forbids texting `template` to a number in state `consent`, if it does:
/// promotions need an opt-in; after an opt-out only what the law requires still goes.
pub fn sms_refusal(template: Template, consent: Consent) -> Option<&'static str> {
    match consent {
        Consent::OptedOut if !template.legally_required() => Some(reason::SMS_OPTED_OUT),
        Consent::OptedIn => None,
        _ if template.promotional() => Some(reason::SMS_NO_OPT_IN),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn recipient() -> Recipient {
        Recipient {
            user_id: "u1".into(),
            active: true,
            email: "ann@example.org".into(),
            phone: "+15550100001".into(),
            sms: true,
            email_on: true,
            push: true,
            quiet: QuietHours::new("UTC", 22, 7),
        }
    }

    fn noon() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-08T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn ask(template: Template, channels: &[Channel]) -> Ask<'_> {
        Ask {
            template,
            channels,
            urgent: false,
            direct: None,
        }
    }

    #[test]
    fn every_channel_when_none_named() {
        let p = plan(
            &ask(Template::NewMessage, &[]),
            &recipient(),
            Consent::None,
            noon(),
        );
        assert_eq!(p.len(), 3);
        assert!(p
            .iter()
            .all(|d| matches!(d.outcome, Outcome::Due { waits: None, .. })));
    }

    #[test]
    fn opted_out_numbers_get_no_service_texts_and_promotions_need_opt_in() {
        let r = recipient();
        let p = plan(
            &ask(Template::AppointmentReminder, &[Channel::Sms]),
            &r,
            Consent::OptedOut,
            noon(),
        );
        assert_eq!(p[0].outcome, Outcome::Skipped(reason::SMS_OPTED_OUT));
        assert_eq!(p[0].address, None);
        let p = plan(
            &ask(Template::Promotion, &[Channel::Sms]),
            &r,
            Consent::None,
            noon(),
        );
        assert_eq!(p[0].outcome, Outcome::Skipped(reason::SMS_NO_OPT_IN));
        let p = plan(
            &ask(Template::Promotion, &[Channel::Sms]),
            &r,
            Consent::OptedIn,
            noon(),
        );
        assert!(matches!(p[0].outcome, Outcome::Due { .. }));
    }

    #[test]
    fn preferences_and_addresses() {
        let mut r = recipient();
        r.email_on = false;
        r.phone.clear();
        let p = plan(
            &ask(Template::NewMessage, &[Channel::Email, Channel::Sms]),
            &r,
            Consent::None,
            noon(),
        );
        assert_eq!(p[0].outcome, Outcome::Skipped(reason::PREFERENCE_OFF));
        assert_eq!(p[1].outcome, Outcome::Skipped(reason::NO_VERIFIED_PHONE));
        // A code to a number being verified goes there, whatever the preferences say.
        let mut a = ask(Template::VerificationCode, &[Channel::Sms]);
        a.urgent = true;
        a.direct = Some("+15550100009");
        r.sms = false;
        let p = plan(&a, &r, Consent::None, noon());
        assert_eq!(p[0].address.as_deref(), Some("+15550100009"));
        // Only codes and links may name an address.
        let mut a = ask(Template::NewMessage, &[Channel::Email]);
        a.direct = Some("someone@else.org");
        r.email_on = true;
        let p = plan(&a, &r, Consent::None, noon());
        assert_eq!(p[0].address.as_deref(), Some("ann@example.org"));
    }

    #[test]
    fn quiet_hours_defer_all_but_urgent() {
        let r = recipient();
        let night = DateTime::parse_from_rfc3339("2026-12-08T23:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let p = plan(
            &ask(Template::NewMessage, &[Channel::Push]),
            &r,
            Consent::None,
            night,
        );
        assert_eq!(
            p[0].outcome,
            Outcome::Due {
                at: DateTime::parse_from_rfc3339("2026-12-09T07:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc),
                waits: Some(reason::QUIET_HOURS)
            }
        );
        let mut a = ask(Template::VerificationCode, &[Channel::Push]);
        a.urgent = true;
        let p = plan(&a, &r, Consent::None, night);
        assert_eq!(
            p[0].outcome,
            Outcome::Due {
                at: night,
                waits: None
            }
        );
    }

    #[test]
    fn inactive_accounts_get_only_what_they_asked_for() {
        let mut r = recipient();
        r.active = false;
        let p = plan(
            &ask(Template::NewMessage, &[Channel::Push]),
            &r,
            Consent::None,
            noon(),
        );
        assert_eq!(p[0].outcome, Outcome::Skipped(reason::ACCOUNT_INACTIVE));
        let p = plan(
            &ask(Template::PasswordReset, &[Channel::Email]),
            &r,
            Consent::None,
            noon(),
        );
        assert!(matches!(p[0].outcome, Outcome::Due { .. }));
    }
}
