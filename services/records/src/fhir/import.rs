//! Reading a FHIR R4 Bundle an integration sends into chart entries. The whole bundle is
//! checked before anything is stored: every failing element is named by its path
//! (`entry[2].resource.code.coding[0].system`), and one failure refuses the bundle.

use carehub_platform::errors::FieldViolations;
use carehub_proto::common::v1::Date;
use carehub_proto::records::v1::{self as pb, entry_content::Content};
use serde_json::Value;

use crate::domain::content;

/// One resource of the bundle, as an entry's content.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// The resource's id in the sending system (`Resource.id`).
    pub resource_id: String,
    pub content: pb::EntryContent,
}

/// A checked bundle: its identifier and its resources.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    pub identifier: String,
    pub resources: Vec<Imported>,
}

/// The most resources one bundle brings.
pub const MAX_RESOURCES: usize = 1_000;

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The first coding of a CodeableConcept at `path`.
fn coding(v: &mut FieldViolations, path: &str, concept: Option<&Value>) -> Option<pb::Coding> {
    let Some(concept) = concept else {
        v.add(path, "is required");
        return None;
    };
    let Some(c) = concept
        .get("coding")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    else {
        v.add(
            &format!("{path}.coding"),
            "needs a coding with system and code",
        );
        return None;
    };
    let code = str_at(c, "code").unwrap_or_default();
    Some(pb::Coding {
        system: str_at(c, "system").unwrap_or_default().to_owned(),
        code: code.to_owned(),
        display: str_at(c, "display")
            .or_else(|| str_at(concept, "text"))
            .unwrap_or(code)
            .to_owned(),
    })
}

/// A status code at `path` (a plain code, or the first coding of a CodeableConcept), mapped by
/// `map` from the R4 value set; a violation naming the allowed codes otherwise.
fn code_of<T: Copy>(
    v: &mut FieldViolations,
    path: &str,
    value: Option<&Value>,
    map: &[(&str, T)],
) -> Option<T> {
    let code = match value {
        Some(Value::String(s)) => Some(s.as_str()),
        Some(concept) => concept
            .get("coding")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(|c| str_at(c, "code")),
        None => None,
    };
    let Some(code) = code else {
        v.add(path, "is required");
        return None;
    };
    match map.iter().find(|(c, _)| *c == code) {
        Some((_, t)) => Some(*t),
        None => {
            let allowed: Vec<&str> = map.iter().map(|(c, _)| *c).collect();
            v.add(
                path,
                format!("{code:?} is not in the value set ({})", allowed.join(", ")),
            );
            None
        }
    }
}

fn reference_required(v: &mut FieldViolations, path: &str, r: &Value, key: &str) {
    if r.get(key)
        .and_then(|s| s.get("reference"))
        .and_then(Value::as_str)
        .is_none()
    {
        v.add(
            &format!("{path}.{key}"),
            "is required (a reference to the patient)",
        );
    }
}

fn date(s: &str) -> Option<Date> {
    use chrono::Datelike as _;
    let d = chrono::NaiveDate::parse_from_str(s.get(..10)?, "%Y-%m-%d").ok()?;
    Some(Date {
        year: d.year(),
        month: i32::try_from(d.month()).ok()?,
        day: i32::try_from(d.day()).ok()?,
    })
}

fn first<'a>(r: &'a Value, key: &str) -> Option<&'a Value> {
    r.get(key).and_then(Value::as_array).and_then(|a| a.first())
}

fn resource(v: &mut FieldViolations, path: &str, r: &Value) -> Option<pb::EntryContent> {
    let at = |k: &str| format!("{path}.{k}");
    let content = match str_at(r, "resourceType").unwrap_or_default() {
        "Condition" => {
            reference_required(v, path, r, "subject");
            let code = coding(v, &at("code"), r.get("code"));
            let status = code_of(
                v,
                &at("clinicalStatus"),
                r.get("clinicalStatus"),
                &[
                    ("active", pb::ConditionStatus::Active),
                    ("recurrence", pb::ConditionStatus::Recurrence),
                    ("relapse", pb::ConditionStatus::Relapse),
                    ("inactive", pb::ConditionStatus::Inactive),
                    ("remission", pb::ConditionStatus::Remission),
                    ("resolved", pb::ConditionStatus::Resolved),
                ],
            );
            Content::Condition(pb::Condition {
                code,
                clinical_status: status.map_or(0, |s| s as i32),
                onset_date: str_at(r, "onsetDateTime").and_then(date),
                note: first(r, "note")
                    .and_then(|n| str_at(n, "text"))
                    .unwrap_or_default()
                    .chars()
                    .take(2_000)
                    .collect(),
            })
        }
        "MedicationStatement" => {
            reference_required(v, path, r, "subject");
            let status = code_of(
                v,
                &at("status"),
                r.get("status"),
                &[
                    ("active", pb::MedicationStatus::Active),
                    ("completed", pb::MedicationStatus::Completed),
                    ("stopped", pb::MedicationStatus::Stopped),
                    ("on-hold", pb::MedicationStatus::OnHold),
                ],
            );
            let code = coding(
                v,
                &at("medicationCodeableConcept"),
                r.get("medicationCodeableConcept"),
            );
            let dosage = first(r, "dosage");
            let text = dosage
                .and_then(|d| str_at(d, "text"))
                .unwrap_or("as directed");
            let route = dosage
                .and_then(|d| d.get("route"))
                .and_then(|x| str_at(x, "text"))
                .unwrap_or("unspecified");
            Content::Medication(pb::Medication {
                code,
                dose: text.chars().take(100).collect(),
                route: route.chars().take(100).collect(),
                frequency: "as directed".into(),
                status: status.map_or(0, |s| s as i32),
            })
        }
        "AllergyIntolerance" => {
            reference_required(v, path, r, "patient");
            let code = coding(v, &at("code"), r.get("code"));
            let status = code_of(
                v,
                &at("clinicalStatus"),
                r.get("clinicalStatus"),
                &[
                    ("active", pb::AllergyStatus::Active),
                    ("inactive", pb::AllergyStatus::Inactive),
                    ("resolved", pb::AllergyStatus::Resolved),
                ],
            );
            let reaction = first(r, "reaction");
            let severity = match reaction.and_then(|x| x.get("severity")) {
                None => Some(pb::AllergySeverity::Unspecified),
                Some(s) => code_of(
                    v,
                    &format!("{path}.reaction[0].severity"),
                    Some(s),
                    &[
                        ("mild", pb::AllergySeverity::Mild),
                        ("moderate", pb::AllergySeverity::Moderate),
                        ("severe", pb::AllergySeverity::Severe),
                    ],
                ),
            };
            Content::Allergy(pb::Allergy {
                substance: code,
                reaction: reaction
                    .and_then(|x| first(x, "manifestation"))
                    .and_then(|m| str_at(m, "text"))
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect(),
                severity: severity.map_or(0, |s| s as i32),
                status: status.map_or(0, |s| s as i32),
            })
        }
        "Observation" => {
            reference_required(v, path, r, "subject");
            code_of(
                v,
                &at("status"),
                r.get("status"),
                &[("final", ()), ("amended", ()), ("corrected", ())],
            );
            let code = coding(v, &at("code"), r.get("code"));
            let (value, unit) = match (r.get("valueQuantity"), str_at(r, "valueString")) {
                (Some(q), _) => (
                    q.get("value").map(|x| x.to_string()).unwrap_or_default(),
                    str_at(q, "unit")
                        .or_else(|| str_at(q, "code"))
                        .unwrap_or_default()
                        .to_owned(),
                ),
                (None, Some(s)) => (s.to_owned(), String::new()),
                (None, None) => {
                    v.add(
                        &at("value[x]"),
                        "is required (valueQuantity or valueString)",
                    );
                    (String::new(), String::new())
                }
            };
            let observed = str_at(r, "effectiveDateTime")
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            if observed.is_none() {
                v.add(
                    &at("effectiveDateTime"),
                    "is required (an instant with a time zone)",
                );
            }
            Content::LabResult(pb::LabResult {
                code,
                value,
                unit,
                reference_range: first(r, "referenceRange")
                    .and_then(|x| str_at(x, "text"))
                    .unwrap_or_default()
                    .chars()
                    .take(100)
                    .collect(),
                flag: 0,
                observed_time: observed.map(|t| prost_types::Timestamp {
                    seconds: t.timestamp(),
                    nanos: 0,
                }),
            })
        }
        other => {
            v.add(
                &at("resourceType"),
                format!("{other:?} is not imported (Condition, MedicationStatement, AllergyIntolerance, Observation)"),
            );
            return None;
        }
    };
    Some(pb::EntryContent {
        content: Some(content),
    })
}

/// Where a violation of an entry's own checks (`content.<kind>.<field>`) lies in the resource:
/// the coded field's first coding (`code.coding[0].system`), else the element of that name.
fn resource_path(path: &str, field: &str) -> String {
    let mut parts = field.splitn(3, '.');
    let (_, kind, rest) = (parts.next(), parts.next(), parts.next());
    let Some(rest) = rest else {
        return path.to_owned();
    };
    let coded = match kind {
        Some("medication") => "medicationCodeableConcept",
        _ => "code",
    };
    match rest.split_once('.') {
        Some(("code" | "substance", tail)) => format!("{path}.{coded}.coding[0].{tail}"),
        _ => format!("{path}.{rest}"),
    }
}

/// Reads and checks `json` (a Bundle) whole.
pub fn read(json: &[u8], now: chrono::DateTime<chrono::Utc>) -> Result<Bundle, tonic::Status> {
    let mut v = FieldViolations::new();
    let bundle: Value = match serde_json::from_slice(json) {
        Ok(b) => b,
        Err(e) => {
            v.add(
                "bundle_json",
                format!("is not JSON (line {}, column {})", e.line(), e.column()),
            );
            return Err(v.into_status());
        }
    };
    if str_at(&bundle, "resourceType") != Some("Bundle") {
        v.add("resourceType", "must be \"Bundle\"");
    }
    let identifier = bundle
        .get("identifier")
        .and_then(|i| str_at(i, "value"))
        .unwrap_or_default()
        .to_owned();
    v.require_len(&identifier, "identifier.value", 1, 256);
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if entries.is_empty() || entries.len() > MAX_RESOURCES {
        v.add("entry", "must hold 1 to 1000 resources");
    }
    let mut resources = Vec::new();
    for (i, e) in entries.iter().take(MAX_RESOURCES).enumerate() {
        let path = format!("entry[{i}].resource");
        let Some(r) = e.get("resource") else {
            v.add(&path, "is required");
            continue;
        };
        let id = str_at(r, "id").unwrap_or_default().to_owned();
        v.require_len(&id, &format!("{path}.id"), 1, 64);
        if let Some(content) = resource(&mut v, &path, r) {
            // The entry's own checks (terminologies, sizes), named where they lie.
            let mut inner = FieldViolations::new();
            content::check(&mut inner, "content", Some(&content), now);
            for (field, why) in inner.violations() {
                v.add(&resource_path(&path, field), why);
            }
            resources.push(Imported {
                resource_id: id,
                content,
            });
        }
    }
    v.finish()?;
    Ok(Bundle {
        identifier,
        resources,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn an_entrys_own_violations_are_named_where_they_lie_in_the_resource() {
        let p = "entry[3].resource";
        assert_eq!(
            resource_path(p, "content.condition.code.system"),
            "entry[3].resource.code.coding[0].system"
        );
        assert_eq!(
            resource_path(p, "content.medication.code.code"),
            "entry[3].resource.medicationCodeableConcept.coding[0].code"
        );
        assert_eq!(
            resource_path(p, "content.allergy.substance.display"),
            "entry[3].resource.code.coding[0].display"
        );
        assert_eq!(
            resource_path(p, "content.lab_result.value"),
            "entry[3].resource.value"
        );
        assert_eq!(resource_path(p, "content"), "entry[3].resource");
    }
}
