//! The FHIR R4 export of a filled chart passes two independent checkers, run from here: PyPI
//! fhir.resources 6.4.0 (structure and cardinality) and npm fhir 4.12.0 (`errorOnUnexpected`,
//! value sets) — installed pinned by scripts/fhir/install.sh on first use — and both refuse
//! the same bundle with a required element taken out, so they can fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use carehub_platform::auth::Role;
use carehub_proto::records::v1::*;
use serde_json::Value;

use crate::common::{self, as_user, coding, diabetes, hba1c, metformin, Suite, User};

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fhir")
}

/// Where the checkers are installed (once per test process).
fn checkers() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(scripts().join("install.sh")).output().unwrap();
        assert!(
            out.status.success(),
            "installing the FHIR checkers: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// Runs both checkers over `bundle`: (python's verdict, node's verdict), each with its output.
fn check(bundle: &Value) -> [(bool, String); 2] {
    let dir = checkers();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec_pretty(bundle).unwrap()).unwrap();
    let py = Command::new(dir.join("venv/bin/python"))
        .arg(scripts().join("validate.py"))
        .arg(file.path())
        .output()
        .unwrap();
    let js = Command::new("node")
        .arg(scripts().join("validate.js"))
        .arg(file.path())
        .env("NODE_PATH", dir.join("node_modules"))
        .output()
        .unwrap();
    [py, js].map(|o| {
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    })
}

async fn export(suite: &Suite, who: &User, patient: &User) -> Value {
    let mut stream = suite
        .public()
        .await
        .export_chart(as_user(
            who,
            ExportChartRequest {
                patient_id: patient.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut json = Vec::new();
    let mut pieces = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        json.extend_from_slice(&chunk.json);
        pieces += 1;
    }
    assert!(pieces > 3, "streamed in pieces, not whole");
    serde_json::from_slice(&json).unwrap()
}

#[tokio::test]
async fn a_filled_charts_export_passes_both_fhir_checkers_which_refuse_a_broken_one() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let doctor = suite.user(Role::Provider, "doc").await;
    suite.join_team(&patient, &doctor).await;
    let mut c = suite.public().await;
    let penicillin = EntryContent {
        content: Some(entry_content::Content::Allergy(Allergy {
            substance: coding(
                "http://www.nlm.nih.gov/research/umls/rxnorm",
                "7980",
                "Penicillin G",
            ),
            reaction: "hives".into(),
            severity: AllergySeverity::Moderate as i32,
            status: AllergyStatus::Active as i32,
        })),
    };
    let mut strep = hba1c();
    if let Some(entry_content::Content::LabResult(l)) = strep.content.as_mut() {
        l.code = coding(
            "http://loinc.org",
            "78012-2",
            "Streptococcus pyogenes Ag [Presence] in Throat",
        );
        l.value = "positive".into();
        l.unit = String::new();
        l.reference_range = "negative".into();
        l.flag = AbnormalFlag::Abnormal as i32;
    }
    let mut created = Vec::new();
    for (who, content) in [
        (&patient, diabetes()),
        (&patient, metformin("500 mg")),
        (&patient, penicillin),
        (&doctor, hba1c()),
        (&doctor, strep),
    ] {
        created.push(
            c.create_entry(as_user(
                who,
                CreateEntryRequest {
                    patient_id: patient.id.clone(),
                    content: Some(content),
                    labels: vec![],
                },
            ))
            .await
            .unwrap()
            .into_inner(),
        );
    }
    c.verify_entry(as_user(
        &doctor,
        VerifyEntryRequest {
            patient_id: patient.id.clone(),
            entry_id: created[0].id.clone(),
            etag: created[0].etag.clone(),
        },
    ))
    .await
    .unwrap();
    c.upload_document(as_user(
        &patient,
        tokio_stream::iter(crate::documents::text_upload(&patient)),
    ))
    .await
    .unwrap();

    let bundle = export(&suite, &patient, &patient).await;
    let types: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    for (t, n) in [
        ("Patient", 1),
        ("Condition", 1),
        ("MedicationStatement", 1),
        ("AllergyIntolerance", 1),
        ("Observation", 2),
        ("Provenance", 5),
        ("DocumentReference", 1),
    ] {
        assert_eq!(
            types.iter().filter(|x| **x == t).count(),
            n,
            "{t} in {types:?}"
        );
    }
    for (ok, out) in check(&bundle) {
        assert!(ok, "{out}\n{bundle:#}");
    }

    // The same bundle without a MedicationStatement's required status: both refuse it.
    let mut broken = bundle.clone();
    for e in broken["entry"].as_array_mut().unwrap() {
        if e["resource"]["resourceType"] == "MedicationStatement" {
            e["resource"].as_object_mut().unwrap().remove("status");
        }
    }
    for (ok, out) in check(&broken) {
        assert!(!ok, "a MedicationStatement without status passed: {out}");
    }
    suite.shutdown().await;
}

/// A feed's bundle about `patient`: a condition, a medication, a lab result, an allergy.
fn feed(patient: &str, identifier: &str, condition_status: &str) -> Value {
    let subject = serde_json::json!({ "reference": format!("Patient/{patient}") });
    serde_json::json!({
        "resourceType": "Bundle",
        "type": "collection",
        "identifier": { "system": "urn:ehr:feed", "value": identifier },
        "entry": [
            { "resource": {
                "resourceType": "Condition", "id": "cond-1",
                "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": condition_status }] },
                "code": { "coding": [{ "system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10", "display": "Essential hypertension" }] },
                "subject": subject
            }},
            { "resource": {
                "resourceType": "MedicationStatement", "id": "med-1", "status": "active",
                "medicationCodeableConcept": { "coding": [{ "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361", "display": "amlodipine 5 MG Oral Tablet" }] },
                "subject": subject,
                "dosage": [{ "text": "5 mg daily", "route": { "text": "oral" } }]
            }},
            { "resource": {
                "resourceType": "Observation", "id": "obs-1", "status": "final",
                "code": { "coding": [{ "system": "http://loinc.org", "code": "2345-7", "display": "Glucose" }] },
                "subject": subject,
                "effectiveDateTime": "2026-11-30T08:15:00Z",
                "valueQuantity": { "value": 5.4, "unit": "mmol/L" }
            }},
            { "resource": {
                "resourceType": "AllergyIntolerance", "id": "alg-1",
                "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active" }] },
                "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "300916003", "display": "Latex allergy" }] },
                "patient": subject,
                "reaction": [{ "manifestation": [{ "text": "rash" }], "severity": "mild" }]
            }}
        ]
    })
}

async fn import(
    suite: &Suite,
    workload: &str,
    patient: &User,
    bundle: &Value,
) -> Result<ImportFhirBundleResponse, tonic::Status> {
    suite
        .internal(workload)
        .await
        .import_fhir_bundle(ImportFhirBundleRequest {
            patient_id: patient.id.clone(),
            bundle_json: serde_json::to_vec(bundle).unwrap(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_feed_imports_once_per_bundle_updates_what_it_imported_and_refuses_a_bad_bundle_whole() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let first = import(
        &suite,
        "integration",
        &patient,
        &feed(&patient.id, "feed-0001", "active"),
    )
    .await
    .unwrap();
    assert_eq!(first.entries.len(), 4);
    assert!(first
        .entries
        .iter()
        .all(|e| e.provenance.as_ref().unwrap().source() == Source::Integration && e.version == 1));
    // The same bundle again: the first answer, nothing new.
    let again = import(
        &suite,
        "integration",
        &patient,
        &feed(&patient.id, "feed-0001", "active"),
    )
    .await
    .unwrap();
    assert_eq!(
        again.entries.iter().map(|e| &e.id).collect::<Vec<_>>(),
        first.entries.iter().map(|e| &e.id).collect::<Vec<_>>()
    );
    assert_eq!(suite.records.count("entries").await, 4);
    // A later bundle with the same resources: new versions of the same entries.
    let later = import(
        &suite,
        "integration",
        &patient,
        &feed(&patient.id, "feed-0002", "resolved"),
    )
    .await
    .unwrap();
    assert_eq!(later.entries[0].id, first.entries[0].id);
    assert_eq!(later.entries[0].version, 2);
    assert_eq!(suite.records.count("entries").await, 4);

    // A bad code and a missing required element: refused whole, each path named.
    let mut bad = feed(&patient.id, "feed-0003", "active");
    bad["entry"][0]["resource"]["code"]["coding"][0]["system"] =
        "http://example.org/made-up".into();
    bad["entry"][1]["resource"]
        .as_object_mut()
        .unwrap()
        .remove("status");
    bad["entry"][2]["resource"]["status"] = "bogus".into();
    let e = import(&suite, "integration", &patient, &bad)
        .await
        .unwrap_err();
    common::assert_status(&e, tonic::Code::InvalidArgument, Some("INVALID_FIELD"));
    let fields: Vec<String> = carehub_platform::errors::details_of(&e)
        .field_violations
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(
        fields,
        vec![
            "entry[0].resource.code.coding[0].system",
            "entry[1].resource.status",
            "entry[1].resource.status",
            "entry[2].resource.status",
        ],
        "{e:?}"
    );
    assert_eq!(
        suite.records.count("entries").await,
        4,
        "nothing of the bad bundle was kept"
    );
    let e = import(
        &suite,
        "gateway",
        &patient,
        &feed(&patient.id, "feed-0004", "active"),
    )
    .await
    .unwrap_err();
    common::assert_status(
        &e,
        tonic::Code::PermissionDenied,
        Some("WORKLOAD_NOT_ALLOWED"),
    );

    // What was imported exports again and passes both checkers.
    let bundle = export(&suite, &patient, &patient).await;
    for (ok, out) in check(&bundle) {
        assert!(ok, "{out}");
    }
    suite.shutdown().await;
}

/// An export to a third party: made by the team's staff only, without labelled information,
/// and recorded in the accounting of disclosures before it is sent.
#[tokio::test]
async fn an_export_to_a_third_party_leaves_labels_out_and_is_accounted_for() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let clerk = suite.user(Role::Staff, "him-clerk").await;
    let doctor = suite.user(Role::Provider, "doc").await;
    suite.join_team(&patient, &clerk).await;
    suite.join_team(&patient, &doctor).await;
    let mut c = suite.public().await;
    let mut ids = Vec::new();
    for labels in [vec![], vec![SensitivityLabel::SubstanceUseDisorder as i32]] {
        ids.push(
            c.create_entry(as_user(
                &patient,
                CreateEntryRequest {
                    patient_id: patient.id.clone(),
                    content: Some(diabetes()),
                    labels,
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .id,
        );
    }
    // The patient granted the clerk Part 2: their own export shows it, a third party's not.
    c.grant_sensitive_access(as_user(
        &patient,
        GrantSensitiveAccessRequest {
            patient_id: patient.id.clone(),
            user_id: clerk.id.clone(),
            label: SensitivityLabel::SubstanceUseDisorder as i32,
        },
    ))
    .await
    .unwrap();
    let to = |who: &User, recipient: &str| {
        as_user(
            who,
            ExportChartRequest {
                patient_id: patient.id.clone(),
                recipient: recipient.into(),
                purpose: if recipient.is_empty() {
                    String::new()
                } else {
                    "second opinion, authorized by the patient".into()
                },
            },
        )
    };
    let e = c
        .export_chart(to(&doctor, "St. Elsewhere Hospital"))
        .await
        .unwrap_err();
    common::assert_status(&e, tonic::Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));
    let read = |resp: tonic::Response<tonic::Streaming<FhirChunk>>| async move {
        let mut stream = resp.into_inner();
        let mut json = Vec::new();
        while let Some(c) = stream.message().await.unwrap() {
            json.extend_from_slice(&c.json);
        }
        let bundle: Value = serde_json::from_slice(&json).unwrap();
        let conditions: Vec<String> = bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Condition")
            .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
            .collect();
        (bundle, conditions)
    };
    let (_, own) = read(c.export_chart(to(&clerk, "")).await.unwrap()).await;
    assert_eq!(own, ids);
    let (bundle, shared) = read(
        c.export_chart(to(&clerk, "St. Elsewhere Hospital"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(shared, vec![ids[0].clone()]);
    for (ok, out) in check(&bundle) {
        assert!(ok, "{out}");
    }
    let accounting = c
        .list_disclosures(as_user(
            &patient,
            ListDisclosuresRequest {
                patient_id: patient.id.clone(),
                page: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .disclosures;
    assert_eq!(accounting.len(), 1);
    assert_eq!(accounting[0].recipient, "St. Elsewhere Hospital");
    assert_eq!(accounting[0].entry_ids, vec![ids[0].clone()]);
    assert_eq!(accounting[0].recorded_by, clerk.id);
    suite.shutdown().await;
}
