//! Input rules for account fields: email, phone, names, dates of birth, age, time zones,
//! languages, reasons and ids. Each `check_*` adds a violation (naming the proto field) to a
//! [`FieldViolations`] and returns the normalized value when the input is good.

use carehub_platform::errors::FieldViolations;
use carehub_proto::common::v1 as common;
use carehub_proto::common::v1::ErrorReason;
use chrono::{Datelike as _, NaiveDate};
use uuid::Uuid;

pub const EMAIL_MIN: usize = 3;
pub const EMAIL_MAX: usize = 254;
pub const NAME_MAX: usize = 100;
pub const REASON_MAX: usize = 500;
pub const VERSION_MAX: usize = 32;
pub const TIME_ZONE_MAX: usize = 64;
pub const LANGUAGE_MIN: usize = 2;
pub const LANGUAGE_MAX: usize = 35;
pub const CODE_LEN: usize = 6;
/// Patients registering themselves must be at least this old.
pub const ADULT_AGE: u32 = 18;

/// A lower-cased email, or a violation: 3..=254 characters, exactly one '@' with something on
/// both sides, no whitespace or control characters.
pub fn check_email(v: &mut FieldViolations, field: &str, value: &str) -> Option<String> {
    let n = value.chars().count();
    if n == 0 {
        v.add(field, "is required");
        return None;
    }
    if !(EMAIL_MIN..=EMAIL_MAX).contains(&n) {
        v.add(
            field,
            format!("must be {EMAIL_MIN} to {EMAIL_MAX} characters"),
        );
        return None;
    }
    let ok_chars = !value.chars().any(|c| c.is_whitespace() || c.is_control());
    let ok_shape = match value.split_once('@') {
        Some((local, domain)) => !local.is_empty() && !domain.is_empty() && !domain.contains('@'),
        None => false,
    };
    if !(ok_chars && ok_shape) {
        v.add(field, "must be an email address");
        return None;
    }
    Some(value.to_lowercase())
}

/// Whether `value` is E.164: '+' then 8..=15 digits, the first not 0.
pub fn is_e164(value: &str) -> bool {
    let Some(digits) = value.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// An optional phone: `None` for empty, `Some(phone)` when valid E.164, else a violation.
pub fn check_optional_phone(
    v: &mut FieldViolations,
    field: &str,
    value: &str,
) -> Option<Option<String>> {
    if value.is_empty() {
        return Some(None);
    }
    if is_e164(value) {
        Some(Some(value.to_owned()))
    } else {
        v.add(
            field,
            "must be an E.164 phone number (+ and 8 to 15 digits)",
        );
        None
    }
}

/// A required name of 1..=100 characters without control characters, trimmed.
pub fn check_name(v: &mut FieldViolations, field: &str, value: &str) -> Option<String> {
    let trimmed = value.trim();
    let n = trimmed.chars().count();
    if n == 0 {
        v.add(field, "is required");
        None
    } else if n > NAME_MAX {
        v.add(field, format!("must be at most {NAME_MAX} characters"));
        None
    } else if trimmed.chars().any(char::is_control) {
        v.add(field, "must not contain control characters");
        None
    } else {
        Some(trimmed.to_owned())
    }
}

/// A required free-text reason, 1..=500 characters.
pub fn check_reason(v: &mut FieldViolations, field: &str, value: &str) -> Option<String> {
    let n = value.trim().chars().count();
    if n == 0 {
        v.add(field, "is required");
        None
    } else if value.chars().count() > REASON_MAX {
        v.add(field, format!("must be at most {REASON_MAX} characters"));
        None
    } else {
        Some(value.trim().to_owned())
    }
}

/// A document version (terms, privacy policy): 1..=32 visible characters.
pub fn check_version(
    v: &mut FieldViolations,
    field: &str,
    value: &str,
    required: bool,
) -> Option<Option<String>> {
    if value.is_empty() {
        if required {
            v.add(field, "is required");
            return None;
        }
        return Some(None);
    }
    if value.chars().count() > VERSION_MAX {
        v.add(field, format!("must be at most {VERSION_MAX} characters"));
        return None;
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        v.add(field, "must not contain spaces or control characters");
        return None;
    }
    Some(Some(value.to_owned()))
}

/// A UUID id.
pub fn check_uuid(v: &mut FieldViolations, field: &str, value: &str) -> Option<Uuid> {
    v.require_uuid(field, value)
}

/// An IANA time zone name; empty means "UTC".
pub fn check_time_zone(v: &mut FieldViolations, field: &str, value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("UTC".to_owned());
    }
    if value.len() > TIME_ZONE_MAX || value.parse::<chrono_tz::Tz>().is_err() {
        v.add(field, "must be an IANA time zone such as America/New_York");
        return None;
    }
    Some(value.to_owned())
}

/// A BCP 47-ish language tag: 2..=35 characters, subtags of 1..=8 ASCII letters or digits
/// separated by '-', the first 2..=8 letters.
pub fn check_language(v: &mut FieldViolations, field: &str, value: &str) -> Option<String> {
    let n = value.len();
    let mut parts = value.split('-');
    let first_ok = parts
        .next()
        .is_some_and(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    let rest_ok =
        parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if (LANGUAGE_MIN..=LANGUAGE_MAX).contains(&n) && first_ok && rest_ok {
        Some(value.to_owned())
    } else {
        v.add(field, "must be a BCP 47 language tag such as en-US");
        None
    }
}

/// A local hour, 0..=23.
pub fn check_hour(v: &mut FieldViolations, field: &str, value: i32) -> Option<i16> {
    match i16::try_from(value) {
        Ok(h) if (0..=23).contains(&h) => Some(h),
        _ => {
            v.add(field, "must be an hour from 0 to 23");
            None
        }
    }
}

/// A calendar date: year 1900..=9999, month 1..=12, a day that exists in that month.
pub fn check_date(
    v: &mut FieldViolations,
    field: &str,
    date: Option<&common::Date>,
) -> Option<NaiveDate> {
    let Some(d) = date else {
        v.add(field, "is required");
        return None;
    };
    if !(1900..=9999).contains(&d.year) {
        v.add(&format!("{field}.year"), "must be from 1900 to 9999");
        return None;
    }
    if !(1..=12).contains(&d.month) {
        v.add(&format!("{field}.month"), "must be from 1 to 12");
        return None;
    }
    let (Ok(m), Ok(day)) = (u32::try_from(d.month), u32::try_from(d.day)) else {
        v.add(&format!("{field}.day"), "is not a day of that month");
        return None;
    };
    match NaiveDate::from_ymd_opt(d.year, m, day) {
        Some(date) => Some(date),
        None => {
            v.add(&format!("{field}.day"), "is not a day of that month");
            None
        }
    }
}

/// Whole years between `dob` and `today` (0 when `dob` is in the future).
pub fn age_on(dob: NaiveDate, today: NaiveDate) -> u32 {
    today.years_since(dob).unwrap_or(0)
}

/// A date of birth: a valid date, not in the future; with `adult`, 18 or older `today`
/// (reason UNDERAGE otherwise).
pub fn check_date_of_birth(
    v: &mut FieldViolations,
    field: &str,
    date: Option<&common::Date>,
    today: NaiveDate,
    adult: bool,
) -> Option<NaiveDate> {
    let dob = check_date(v, field, date)?;
    if dob > today {
        v.add(field, "must not be in the future");
        return None;
    }
    if adult && age_on(dob, today) < ADULT_AGE {
        v.add_with_reason(
            field,
            "patients must be 18 or older to register",
            ErrorReason::Underage,
        );
        return None;
    }
    Some(dob)
}

/// The proto form of a date.
pub fn date_to_pb(d: NaiveDate) -> common::Date {
    common::Date {
        year: d.year(),
        month: i32::try_from(d.month()).unwrap_or(0),
        day: i32::try_from(d.day()).unwrap_or(0),
    }
}

/// A password under the policy (reason PASSWORD_POLICY otherwise).
pub fn check_password(v: &mut FieldViolations, field: &str, value: &str) -> bool {
    match crate::domain::password::policy_violation(value) {
        None => true,
        Some(why) => {
            v.add_with_reason(field, why, ErrorReason::PasswordPolicy);
            false
        }
    }
}

/// A one-time code of exactly six digits.
pub fn check_code(v: &mut FieldViolations, field: &str, value: &str) -> bool {
    let ok = value.len() == CODE_LEN && value.bytes().all(|b| b.is_ascii_digit());
    if value.is_empty() {
        v.add(field, "is required");
    } else if !ok {
        v.add(field, "must be 6 digits");
    }
    ok
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn fields(v: &FieldViolations) -> Vec<String> {
        v.fields().map(str::to_owned).collect()
    }

    #[test]
    fn emails() {
        let mut v = FieldViolations::new();
        assert_eq!(
            check_email(&mut v, "email", "Ann@Example.ORG").as_deref(),
            Some("ann@example.org")
        );
        assert!(v.is_empty());
        for bad in [
            "",
            "ab",
            "no-at-sign",
            "@x.org",
            "a@",
            "a b@x.org",
            "a@b@c",
            &format!("{}@x.org", "a".repeat(250)),
        ] {
            let mut v = FieldViolations::new();
            assert!(check_email(&mut v, "email", bad).is_none(), "{bad}");
            assert_eq!(fields(&v), ["email"]);
        }
    }

    #[test]
    fn phones() {
        assert!(is_e164("+15551234567"));
        assert!(is_e164("+4930123456"));
        for bad in [
            "15551234567",
            "+1555",
            "+1234567890123456",
            "+1555-123-4567",
            "+05551234567",
            "+",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
        let mut v = FieldViolations::new();
        assert_eq!(check_optional_phone(&mut v, "phone", ""), Some(None));
        assert!(check_optional_phone(&mut v, "phone", "555").is_none());
        assert_eq!(fields(&v), ["phone"]);
    }

    #[test]
    fn names_reasons_versions() {
        let mut v = FieldViolations::new();
        assert_eq!(
            check_name(&mut v, "given_name", "  Ann ").as_deref(),
            Some("Ann")
        );
        assert!(check_name(&mut v, "given_name", "   ").is_none());
        assert!(check_name(&mut v, "family_name", &"x".repeat(101)).is_none());
        assert!(check_name(&mut v, "family_name", "a\u{0}b").is_none());
        assert!(check_reason(&mut v, "reason", "").is_none());
        assert!(check_reason(&mut v, "reason", &"r".repeat(501)).is_none());
        assert_eq!(
            check_reason(&mut v, "reason", "abuse").as_deref(),
            Some("abuse")
        );
        assert_eq!(check_version(&mut v, "v", "", false), Some(None));
        assert!(check_version(&mut v, "v", "", true).is_none());
        assert!(check_version(&mut v, "v", &"1".repeat(33), true).is_none());
        assert_eq!(fields(&v).len(), 7);
    }

    #[test]
    fn dates_and_age() {
        let today = NaiveDate::from_ymd_opt(2026, 3, 10).unwrap();
        let d = |y, m, d| common::Date {
            year: y,
            month: m,
            day: d,
        };
        let mut v = FieldViolations::new();
        assert!(
            check_date_of_birth(&mut v, "date_of_birth", Some(&d(2008, 3, 10)), today, true)
                .is_some()
        );
        assert!(v.is_empty());
        assert!(
            check_date_of_birth(&mut v, "date_of_birth", Some(&d(2008, 3, 11)), today, true)
                .is_none()
        );
        let details = carehub_platform::errors::details_of(&v.into_status());
        assert_eq!(details.reason.as_deref(), Some("UNDERAGE"));

        let mut v = FieldViolations::new();
        assert!(check_date(&mut v, "dob", Some(&d(2023, 2, 29))).is_none());
        assert!(check_date(&mut v, "dob", Some(&d(2024, 13, 1))).is_none());
        assert!(check_date(&mut v, "dob", Some(&d(1800, 1, 1))).is_none());
        assert!(check_date(&mut v, "dob", None).is_none());
        assert!(check_date_of_birth(&mut v, "dob", Some(&d(2027, 1, 1)), today, false).is_none());
        assert_eq!(
            fields(&v),
            ["dob.day", "dob.month", "dob.year", "dob", "dob"]
        );
        assert_eq!(
            age_on(
                NaiveDate::from_ymd_opt(2000, 2, 29).unwrap(),
                NaiveDate::from_ymd_opt(2018, 2, 28).unwrap()
            ),
            17
        );
        assert_eq!(
            age_on(
                NaiveDate::from_ymd_opt(2000, 2, 29).unwrap(),
                NaiveDate::from_ymd_opt(2018, 3, 1).unwrap()
            ),
            18
        );
    }

    #[test]
    fn zones_languages_hours_codes() {
        let mut v = FieldViolations::new();
        assert_eq!(check_time_zone(&mut v, "tz", "").as_deref(), Some("UTC"));
        assert_eq!(
            check_time_zone(&mut v, "tz", "America/New_York").as_deref(),
            Some("America/New_York")
        );
        assert!(check_time_zone(&mut v, "tz", "Mars/Olympus").is_none());
        assert!(check_language(&mut v, "language", "en-US").is_some());
        assert!(check_language(&mut v, "language", "zh-Hant-TW").is_some());
        assert!(check_language(&mut v, "language", "e").is_none());
        assert!(check_language(&mut v, "language", "en--US").is_none());
        assert!(check_language(&mut v, "language", &"a".repeat(36)).is_none());
        assert_eq!(check_hour(&mut v, "h", 23), Some(23));
        assert!(check_hour(&mut v, "h", 24).is_none());
        assert!(check_hour(&mut v, "h", -1).is_none());
        assert!(check_code(&mut v, "code", "123456"));
        assert!(!check_code(&mut v, "code", "12345"));
        assert!(!check_code(&mut v, "code", "12345a"));
        assert!(check_uuid(&mut v, "id", "nope").is_none());
        assert!(check_uuid(&mut v, "id", &Uuid::now_v7().to_string()).is_some());
        assert!(!check_password(&mut v, "password", "short"));
        assert_eq!(fields(&v).len(), 10);
    }
}
