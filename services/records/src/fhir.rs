//! The chart as FHIR R4 resources (JSON), for ExportChart: coded fields map to CodeableConcepts
//! with their system, statuses to the R4 value sets, provenance to a Provenance per entry. Pure
//! functions over the proto types; references inside the Bundle are `urn:uuid:` full URLs.

pub mod import;

use carehub_proto::records::v1::{self as pb, entry_content::Content};
use serde_json::{json, Map, Value};

fn urn(id: &str) -> String {
    format!("urn:uuid:{id}")
}

fn reference(id: &str) -> Value {
    json!({ "reference": urn(id) })
}

fn concept(c: Option<&pb::Coding>) -> Value {
    let c = c.cloned().unwrap_or_default();
    json!({ "coding": [{ "system": c.system, "code": c.code, "display": c.display }], "text": c.display })
}

fn status(system: &str, code: &str) -> Value {
    json!({ "coding": [{ "system": system, "code": code }] })
}

fn instant(t: Option<&prost_types::Timestamp>) -> Option<String> {
    let t = t?;
    let at = chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)?;
    Some(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Every entry of the Bundle of `patient_id`'s chart: the Patient, each entry's resource and
/// Provenance, each document's DocumentReference.
pub fn bundle_entries(
    patient_id: &str,
    entries: &[pb::Entry],
    docs: &[pb::Document],
) -> Vec<Value> {
    let mut out = vec![entry(patient_id, patient(patient_id))];
    for e in entries {
        out.push(entry(&e.id, resource(e)));
        let id = uuid::Uuid::now_v7().to_string();
        out.push(entry(&id, provenance(&id, e)));
    }
    out.extend(docs.iter().map(|d| entry(&d.id, document(d))));
    out
}

/// The Bundle's opening, up to its first entry (the entries and `]}` follow).
pub fn bundle_opening() -> String {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        r#"{{"resourceType":"Bundle","id":"{}","type":"collection","timestamp":"{now}","entry":["#,
        uuid::Uuid::now_v7()
    )
}

/// A Bundle entry.
pub fn entry(id: &str, resource: Value) -> Value {
    json!({ "fullUrl": urn(id), "resource": resource })
}

pub fn patient(id: &str) -> Value {
    json!({ "resourceType": "Patient", "id": id, "active": true })
}

/// The resource of one chart entry (its current version).
pub fn resource(e: &pb::Entry) -> Value {
    let subject = reference(&e.patient_id);
    let verified = e
        .provenance
        .as_ref()
        .is_some_and(|p| !p.verified_by.is_empty());
    let recorded = instant(e.provenance.as_ref().and_then(|p| p.enter_time.as_ref()));
    let mut r = Map::new();
    match e.content.as_ref().and_then(|c| c.content.as_ref()) {
        Some(Content::Condition(c)) => {
            let clinical = match pb::ConditionStatus::try_from(c.clinical_status) {
                Ok(pb::ConditionStatus::Recurrence) => "recurrence",
                Ok(pb::ConditionStatus::Relapse) => "relapse",
                Ok(pb::ConditionStatus::Inactive) => "inactive",
                Ok(pb::ConditionStatus::Remission) => "remission",
                Ok(pb::ConditionStatus::Resolved) => "resolved",
                _ => "active",
            };
            r.insert("resourceType".into(), json!("Condition"));
            r.insert(
                "clinicalStatus".into(),
                status(
                    "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    clinical,
                ),
            );
            r.insert(
                "verificationStatus".into(),
                status(
                    "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    if verified { "confirmed" } else { "unconfirmed" },
                ),
            );
            r.insert("code".into(), concept(c.code.as_ref()));
            r.insert("subject".into(), subject);
            if let Some(d) = &c.onset_date {
                r.insert(
                    "onsetDateTime".into(),
                    json!(format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)),
                );
            }
            if let Some(at) = recorded {
                r.insert("recordedDate".into(), json!(at));
            }
            if !c.note.is_empty() {
                r.insert("note".into(), json!([{ "text": c.note }]));
            }
        }
        Some(Content::Medication(m)) => {
            let status_code = match pb::MedicationStatus::try_from(m.status) {
                Ok(pb::MedicationStatus::Completed) => "completed",
                Ok(pb::MedicationStatus::Stopped) => "stopped",
                Ok(pb::MedicationStatus::OnHold) => "on-hold",
                _ => "active",
            };
            r.insert("resourceType".into(), json!("MedicationStatement"));
            r.insert("status".into(), json!(status_code));
            r.insert("medicationCodeableConcept".into(), concept(m.code.as_ref()));
            r.insert("subject".into(), subject);
            if let Some(at) = recorded {
                r.insert("dateAsserted".into(), json!(at));
            }
            r.insert(
                "dosage".into(),
                json!([{
                    "text": format!("{} {} {}", m.dose, m.route, m.frequency),
                    "route": { "text": m.route }
                }]),
            );
        }
        Some(Content::Allergy(a)) => {
            let clinical = match pb::AllergyStatus::try_from(a.status) {
                Ok(pb::AllergyStatus::Inactive) => "inactive",
                Ok(pb::AllergyStatus::Resolved) => "resolved",
                _ => "active",
            };
            r.insert("resourceType".into(), json!("AllergyIntolerance"));
            r.insert(
                "clinicalStatus".into(),
                status(
                    "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                    clinical,
                ),
            );
            r.insert(
                "verificationStatus".into(),
                status(
                    "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                    if verified { "confirmed" } else { "unconfirmed" },
                ),
            );
            r.insert("code".into(), concept(a.substance.as_ref()));
            r.insert("patient".into(), subject);
            if let Some(at) = recorded {
                r.insert("recordedDate".into(), json!(at));
            }
            if !a.reaction.is_empty() {
                let mut reaction = Map::new();
                reaction.insert("manifestation".into(), json!([{ "text": a.reaction }]));
                let severity = match pb::AllergySeverity::try_from(a.severity) {
                    Ok(pb::AllergySeverity::Mild) => Some("mild"),
                    Ok(pb::AllergySeverity::Moderate) => Some("moderate"),
                    Ok(pb::AllergySeverity::Severe) => Some("severe"),
                    _ => None,
                };
                if let Some(s) = severity {
                    reaction.insert("severity".into(), json!(s));
                }
                r.insert("reaction".into(), json!([Value::Object(reaction)]));
            }
        }
        Some(Content::LabResult(l)) => {
            r.insert("resourceType".into(), json!("Observation"));
            r.insert("status".into(), json!("final"));
            r.insert(
                "category".into(),
                json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory" }] }]),
            );
            r.insert("code".into(), concept(l.code.as_ref()));
            r.insert("subject".into(), subject);
            if let Some(at) = instant(l.observed_time.as_ref()) {
                r.insert("effectiveDateTime".into(), json!(at));
            }
            match l.value.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && !l.unit.is_empty() => {
                    r.insert(
                        "valueQuantity".into(),
                        json!({ "value": v, "unit": l.unit, "system": "http://unitsofmeasure.org", "code": l.unit }),
                    );
                }
                _ => {
                    let text = if l.unit.is_empty() {
                        l.value.clone()
                    } else {
                        format!("{} {}", l.value, l.unit)
                    };
                    r.insert("valueString".into(), json!(text));
                }
            }
            let interpretation = match pb::AbnormalFlag::try_from(l.flag) {
                Ok(pb::AbnormalFlag::Normal) => Some("N"),
                Ok(pb::AbnormalFlag::Low) => Some("L"),
                Ok(pb::AbnormalFlag::High) => Some("H"),
                Ok(pb::AbnormalFlag::CriticalLow) => Some("LL"),
                Ok(pb::AbnormalFlag::CriticalHigh) => Some("HH"),
                Ok(pb::AbnormalFlag::Abnormal) => Some("A"),
                _ => None,
            };
            if let Some(code) = interpretation {
                r.insert(
                    "interpretation".into(),
                    json!([status(
                        "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        code
                    )]),
                );
            }
            if !l.reference_range.is_empty() {
                r.insert(
                    "referenceRange".into(),
                    json!([{ "text": l.reference_range }]),
                );
            }
        }
        None => {
            r.insert("resourceType".into(), json!("Basic"));
            r.insert("code".into(), json!({ "text": "empty entry" }));
            r.insert("subject".into(), subject);
        }
    }
    r.insert("id".into(), json!(e.id));
    Value::Object(r)
}

/// Who entered (and verified) an entry's current version.
pub fn provenance(id: &str, e: &pb::Entry) -> Value {
    let p = e.provenance.clone().unwrap_or_default();
    let source = match pb::Source::try_from(p.source) {
        Ok(pb::Source::Patient) => "patient",
        Ok(pb::Source::Provider) => "provider",
        Ok(pb::Source::Staff) => "staff",
        Ok(pb::Source::Integration) => "integration",
        _ => "unknown",
    };
    let agent = |code: &str, who: String| {
        json!({
            "type": status("http://terminology.hl7.org/CodeSystem/provenance-participant-type", code),
            "who": { "display": who }
        })
    };
    let author = if p.entered_by.is_empty() {
        source.to_owned()
    } else {
        format!("{source} {}", p.entered_by)
    };
    let mut agents = vec![agent("author", author)];
    if !p.verified_by.is_empty() {
        agents.push(agent("verifier", format!("provider {}", p.verified_by)));
    }
    json!({
        "resourceType": "Provenance",
        "id": id,
        "target": [reference(&e.id)],
        "recorded": instant(p.enter_time.as_ref()).unwrap_or_else(|| "1970-01-01T00:00:00.000Z".into()),
        "agent": agents
    })
}

pub fn document(d: &pb::Document) -> Value {
    let info = d.info.clone().unwrap_or_default();
    let mut attachment = Map::new();
    attachment.insert("contentType".into(), json!(info.content_type));
    attachment.insert("title".into(), json!(info.title));
    if let Ok(size) = u32::try_from(info.size_bytes) {
        attachment.insert("size".into(), json!(size));
    }
    if let Some(at) = instant(d.upload_time.as_ref()) {
        attachment.insert("creation".into(), json!(at));
    }
    json!({
        "resourceType": "DocumentReference",
        "id": d.id,
        "status": "current",
        "subject": reference(&info.patient_id),
        "description": info.title,
        "content": [{ "attachment": Value::Object(attachment) }]
    })
}
