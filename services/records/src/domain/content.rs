//! The clinical content of a chart entry: its kind, and the checks every entry passes before
//! it is stored (coded fields from a known terminology, statuses set, sizes bounded). The
//! content travels as the proto message it is; only a checked one is sealed and stored.

use carehub_platform::errors::FieldViolations;
use carehub_proto::records::v1::{self as pb, entry_content::Content};

/// ICD-10-CM (conditions).
pub const ICD10CM: &str = "http://hl7.org/fhir/sid/icd-10-cm";
/// SNOMED CT (conditions, allergy substances).
pub const SNOMED: &str = "http://snomed.info/sct";
/// RxNorm (medications, drug allergies).
pub const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
/// LOINC (lab results).
pub const LOINC: &str = "http://loinc.org";

const CODE_MAX: usize = 64;
const DISPLAY_MAX: usize = 256;
const NOTE_MAX: usize = 2_000;
const SHORT_MAX: usize = 100;
const REACTION_MAX: usize = 200;
const UNIT_MAX: usize = 50;

/// The kinds of chart entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Condition,
    Medication,
    Allergy,
    LabResult,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Condition,
        Kind::Medication,
        Kind::Allergy,
        Kind::LabResult,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Condition => "condition",
            Kind::Medication => "medication",
            Kind::Allergy => "allergy",
            Kind::LabResult => "lab_result",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn to_pb(self) -> pb::EntryKind {
        match self {
            Kind::Condition => pb::EntryKind::Condition,
            Kind::Medication => pb::EntryKind::Medication,
            Kind::Allergy => pb::EntryKind::Allergy,
            Kind::LabResult => pb::EntryKind::LabResult,
        }
    }

    /// What a patient may enter and change in their own chart.
    pub fn patient_editable(self) -> bool {
        !matches!(self, Kind::LabResult)
    }

    /// The terminologies a coded field of this kind may use.
    fn systems(self) -> &'static [&'static str] {
        match self {
            Kind::Condition => &[ICD10CM, SNOMED],
            Kind::Medication => &[RXNORM],
            Kind::Allergy => &[SNOMED, RXNORM],
            Kind::LabResult => &[LOINC],
        }
    }
}

/// The kind of `content`, if it holds one.
pub fn kind_of(content: &pb::EntryContent) -> Option<Kind> {
    Some(match content.content.as_ref()? {
        Content::Condition(_) => Kind::Condition,
        Content::Medication(_) => Kind::Medication,
        Content::Allergy(_) => Kind::Allergy,
        Content::LabResult(_) => Kind::LabResult,
    })
}

/// Checks `content` (at `field`, for example "content"), adding one violation per bad field;
/// the entry's kind when it holds one. `now` bounds observation times.
pub fn check(
    v: &mut FieldViolations,
    field: &str,
    content: Option<&pb::EntryContent>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Kind> {
    let Some(kind) = content.and_then(kind_of) else {
        v.add(
            field,
            "is required: one of condition, medication, allergy, lab_result",
        );
        return None;
    };
    let at = |name: &str| format!("{field}.{}.{name}", kind.as_str());
    match content.and_then(|c| c.content.as_ref()) {
        Some(Content::Condition(c)) => {
            check_coding(v, &at("code"), c.code.as_ref(), kind);
            v.check(
                pb::ConditionStatus::try_from(c.clinical_status)
                    .is_ok_and(|s| s != pb::ConditionStatus::Unspecified),
                &at("clinical_status"),
                "must be set",
            );
            if let Some(d) = &c.onset_date {
                check_past_date(v, &at("onset_date"), d, now.date_naive());
            }
            v.require_len(&c.note, &at("note"), 0, NOTE_MAX);
        }
        Some(Content::Medication(m)) => {
            check_coding(v, &at("code"), m.code.as_ref(), kind);
            v.require_len(&m.dose, &at("dose"), 1, SHORT_MAX);
            v.require_len(&m.route, &at("route"), 1, SHORT_MAX);
            v.require_len(&m.frequency, &at("frequency"), 1, SHORT_MAX);
            v.check(
                pb::MedicationStatus::try_from(m.status)
                    .is_ok_and(|s| s != pb::MedicationStatus::Unspecified),
                &at("status"),
                "must be set",
            );
        }
        Some(Content::Allergy(a)) => {
            check_coding(v, &at("substance"), a.substance.as_ref(), kind);
            v.require_len(&a.reaction, &at("reaction"), 0, REACTION_MAX);
            v.check(
                pb::AllergySeverity::try_from(a.severity).is_ok(),
                &at("severity"),
                "is not a known severity",
            );
            v.check(
                pb::AllergyStatus::try_from(a.status)
                    .is_ok_and(|s| s != pb::AllergyStatus::Unspecified),
                &at("status"),
                "must be set",
            );
        }
        Some(Content::LabResult(l)) => {
            check_coding(v, &at("code"), l.code.as_ref(), kind);
            v.require_len(&l.value, &at("value"), 1, SHORT_MAX);
            v.require_len(&l.unit, &at("unit"), 0, UNIT_MAX);
            v.require_len(&l.reference_range, &at("reference_range"), 0, SHORT_MAX);
            v.check(
                pb::AbnormalFlag::try_from(l.flag).is_ok(),
                &at("flag"),
                "is not a known flag",
            );
            match l.observed_time.as_ref() {
                None => v.add(&at("observed_time"), "is required"),
                Some(t) => match chrono::DateTime::from_timestamp(t.seconds, 0) {
                    Some(t) if t <= now + chrono::Duration::minutes(5) => {}
                    Some(_) => v.add(&at("observed_time"), "must not be in the future"),
                    None => v.add(&at("observed_time"), "is not a valid instant"),
                },
            }
        }
        None => {}
    }
    Some(kind)
}

fn check_coding(v: &mut FieldViolations, field: &str, coding: Option<&pb::Coding>, kind: Kind) {
    let Some(c) = coding else {
        v.add(field, "is required");
        return;
    };
    if !kind.systems().contains(&c.system.as_str()) {
        v.add(
            &format!("{field}.system"),
            format!("must be one of {}", kind.systems().join(", ")),
        );
    }
    if c.code.is_empty() {
        v.add(&format!("{field}.code"), "is required");
    } else if c.code.chars().count() > CODE_MAX
        || c.code
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
    {
        v.add(
            &format!("{field}.code"),
            format!("must be at most {CODE_MAX} characters without spaces"),
        );
    }
    v.require_len(&c.display, &format!("{field}.display"), 1, DISPLAY_MAX);
}

fn check_past_date(
    v: &mut FieldViolations,
    field: &str,
    d: &carehub_proto::common::v1::Date,
    today: chrono::NaiveDate,
) {
    let date = u32::try_from(d.month)
        .ok()
        .zip(u32::try_from(d.day).ok())
        .filter(|_| (1900..=9999).contains(&d.year))
        .and_then(|(m, day)| chrono::NaiveDate::from_ymd_opt(d.year, m, day));
    match date {
        None => v.add(field, "is not a valid date from 1900 on"),
        Some(date) if date > today => v.add(field, "must not be in the future"),
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use carehub_proto::common::v1::Date;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }

    fn fields(content: &pb::EntryContent) -> Vec<String> {
        let mut v = FieldViolations::new();
        check(&mut v, "content", Some(content), now());
        v.fields().map(str::to_owned).collect()
    }

    fn coding(system: &str, code: &str) -> Option<pb::Coding> {
        Some(pb::Coding {
            system: system.into(),
            code: code.into(),
            display: "something".into(),
        })
    }

    pub fn condition() -> pb::EntryContent {
        pb::EntryContent {
            content: Some(Content::Condition(pb::Condition {
                code: coding(ICD10CM, "E11.9"),
                clinical_status: pb::ConditionStatus::Active as i32,
                onset_date: Some(Date {
                    year: 2019,
                    month: 3,
                    day: 1,
                }),
                note: String::new(),
            })),
        }
    }

    #[test]
    fn a_well_formed_entry_passes() {
        assert_eq!(fields(&condition()), Vec::<String>::new());
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut v = FieldViolations::new();
        assert_eq!(check(&mut v, "content", None, now()), None);
        assert_eq!(v.fields().collect::<Vec<_>>(), vec!["content"]);

        let bad = pb::EntryContent {
            content: Some(Content::Condition(pb::Condition {
                code: coding(LOINC, "has space"),
                clinical_status: 0,
                onset_date: Some(Date {
                    year: 2999,
                    month: 1,
                    day: 1,
                }),
                note: "x".repeat(NOTE_MAX + 1),
            })),
        };
        assert_eq!(
            fields(&bad),
            vec![
                "content.condition.code.system",
                "content.condition.code.code",
                "content.condition.clinical_status",
                "content.condition.onset_date",
                "content.condition.note",
            ]
        );
        let lab = pb::EntryContent {
            content: Some(Content::LabResult(pb::LabResult {
                code: coding(RXNORM, "1"),
                value: String::new(),
                unit: String::new(),
                reference_range: String::new(),
                flag: 99,
                observed_time: Some(prost_types::Timestamp {
                    seconds: now().timestamp() + 86_400,
                    nanos: 0,
                }),
            })),
        };
        assert_eq!(
            fields(&lab),
            vec![
                "content.lab_result.code.system",
                "content.lab_result.value",
                "content.lab_result.flag",
                "content.lab_result.observed_time",
            ]
        );
    }

    #[test]
    fn kinds_round_trip_and_only_lab_results_are_closed_to_patients() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("note"), None);
        assert_eq!(
            Kind::ALL.map(Kind::patient_editable),
            [true, true, true, false]
        );
    }
}
