//! RecordIntakeResponse: scheduling, through its outbox, records the patient's answers to a
//! visit type's intake form for an appointment. Each delivery is applied once (its outbox id is
//! the idempotency key, as for AddBookedProvider); a resubmission — another delivery for the
//! same appointment and form — is stored as the next version, the earlier ones kept. The
//! answers are sealed under the patient's data key; the form's name is stored in clear.

use std::collections::BTreeMap;

use carehub_platform::audit::Purpose;
use carehub_platform::auth::Role;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_platform::timestamps;
use carehub_proto::records::v1::*;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::convert::ts;
use super::kinds;
use crate::error::{checked, RecordsError, Result};
use crate::store::intake::{self as store, IntakeRow, NewIntake};
use crate::store::sealed;
use crate::AppState;

const FORM_MAX: usize = 64;
const ANSWERS_MAX: usize = 100;
const QUESTION_MAX: usize = 64;
const ANSWER_MAX: usize = 2000;

/// A checked request.
struct Submission {
    patient: Uuid,
    appointment: Uuid,
    form: String,
    answers: BTreeMap<String, String>,
    submitted: DateTime<Utc>,
}

fn is_form_name(form: &str) -> bool {
    (1..=FORM_MAX).contains(&form.len())
        && form
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

fn check(r: &RecordIntakeResponseRequest) -> Result<Submission> {
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    let appointment = v.require_uuid("appointment_id", &r.appointment_id);
    if r.form.is_empty() {
        v.add("form", "is required");
    } else {
        v.check(
            is_form_name(&r.form),
            "form",
            "must be 1 to 64 characters: lowercase letters, digits, '.', '_', '-'",
        );
    }
    if r.answers.is_empty() {
        v.add("answers", "is required");
    } else if r.answers.len() > ANSWERS_MAX {
        v.add(
            "answers",
            format!("must hold at most {ANSWERS_MAX} answers"),
        );
    }
    let answers = r.answers.clone();
    let id_ok = |q: &str| (1..=QUESTION_MAX).contains(&q.chars().count());
    // One violation for every bad id: an id that long would make the field path unreadable.
    v.check(
        answers.keys().all(|q| id_ok(q)),
        "answers",
        "question ids must be 1 to 64 characters",
    );
    for (q, a) in answers.iter().filter(|(q, _)| id_ok(q)) {
        // The field path names the question (the caller's id, not health data), never the answer.
        if a.chars().count() > ANSWER_MAX {
            v.add(
                &format!("answers[{q}]"),
                format!("must be at most {ANSWER_MAX} characters"),
            );
        }
    }
    if r.submit_time.is_none() {
        v.add("submit_time", "is required");
    }
    let submitted = timestamps::field(r.submit_time.as_ref(), "submit_time", &mut v);
    v.finish()?;
    Ok(Submission {
        patient: checked(patient)?,
        appointment: checked(appointment)?,
        form: r.form.clone(),
        answers,
        submitted: checked(submitted)?,
    })
}

fn to_pb(row: &IntakeRow, answers: &BTreeMap<String, String>) -> IntakeResponse {
    IntakeResponse {
        id: row.id.to_string(),
        patient_id: row.patient_id.to_string(),
        appointment_id: row.appointment_id.to_string(),
        form: row.form.clone(),
        answers: answers
            .iter()
            .map(|(q, a)| (q.clone(), a.clone()))
            .collect(),
        version: row.version,
        submit_time: Some(ts(row.submitted_at)),
    }
}

/// Scheduling, through its outbox: stores the submission as the next version of the
/// appointment's form (treatment).
pub async fn record(
    state: &AppState,
    call: &Call,
    r: RecordIntakeResponseRequest,
) -> Result<IntakeResponse> {
    call.idempotency_key()?;
    let s = check(&r)?;
    // Only a patient has a chart to keep the answers in.
    if state.directory.person(s.patient, "patient").await?.role != Role::Patient {
        return Err(RecordsError::NotFound {
            what: "patient",
            id: s.patient.to_string(),
        });
    }
    let id = Uuid::now_v7();
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let sealed = sealed::seal_answers(&state.crypto, s.patient, id, &s.answers).await?;
            let row = store::insert_next(
                conn,
                &NewIntake {
                    id,
                    patient_id: s.patient,
                    appointment_id: s.appointment,
                    form: &s.form,
                    answers: &sealed,
                    submitted_at: s.submitted,
                },
            )
            .await?;
            let event = call.event(
                kinds::INTAKE_RECORD,
                Purpose::Treatment,
                "intake_response",
                id,
                s.patient,
            );
            Ok::<_, RecordsError>(Change::new(to_pb(&row, &s.answers), event))
        })
        .await?;
    Ok(ran.answer)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use prost::Message as _;

    fn request(answers: &[(&str, &str)]) -> RecordIntakeResponseRequest {
        RecordIntakeResponseRequest {
            patient_id: Uuid::now_v7().to_string(),
            appointment_id: Uuid::now_v7().to_string(),
            form: "new-patient".into(),
            answers: answers
                .iter()
                .map(|(q, a)| ((*q).to_owned(), (*a).to_owned()))
                .collect(),
            submit_time: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
        }
    }

    fn fields(r: &RecordIntakeResponseRequest) -> Vec<String> {
        match check(r) {
            Err(RecordsError::Status(s)) => {
                let mut f: Vec<String> = carehub_platform::errors::details_of(&s)
                    .field_violations
                    .into_iter()
                    .map(|(f, _)| f)
                    .collect();
                f.sort();
                f
            }
            Err(e) => panic!("{e}"),
            Ok(_) => Vec::new(),
        }
    }

    #[test]
    fn form_names_ids_and_answers_are_bounded() {
        assert_eq!(fields(&request(&[("q1", "yes")])), Vec::<String>::new());
        let mut r = request(&[("q1", &"x".repeat(ANSWER_MAX))]);
        assert_eq!(fields(&r), Vec::<String>::new());
        r.answers.insert("q2".into(), "x".repeat(ANSWER_MAX + 1));
        r.answers.insert(String::new(), "empty id".into());
        r.form = "New-Patient".into();
        assert_eq!(fields(&r), ["answers", "answers[q2]", "form"]);
        let mut r = request(&[]);
        r.patient_id = "nope".into();
        r.submit_time = None;
        r.form = "f".repeat(FORM_MAX + 1);
        assert_eq!(fields(&r), ["answers", "form", "patient_id", "submit_time"]);
        let many: Vec<(String, String)> = (0..=ANSWERS_MAX)
            .map(|i| (format!("q{i}"), String::new()))
            .collect();
        let mut r = request(&[]);
        r.answers = many.into_iter().collect();
        assert_eq!(fields(&r), ["answers"]);
        assert!(is_form_name(&"a".repeat(FORM_MAX)) && is_form_name("intake.v2_adult-1"));
    }

    /// The same request, decoded twice, encodes the same (maps are BTreeMaps: proto/build.rs), so
    /// a redelivery's idempotency fingerprint matches the first delivery's.
    #[test]
    fn a_redelivery_encodes_the_same() {
        let answers: Vec<(String, String)> = (0..50)
            .map(|i| (format!("q{i}"), format!("a{i}")))
            .collect();
        let r = request(
            &answers
                .iter()
                .map(|(q, a)| (q.as_str(), a.as_str()))
                .collect::<Vec<_>>(),
        );
        let bytes = r.encode_to_vec();
        let encode = |bytes: &[u8]| {
            let r = RecordIntakeResponseRequest::decode(bytes).unwrap();
            r.clone().encode_to_vec()
        };
        assert_eq!(encode(&bytes), encode(&bytes));
        // And it is still a RecordIntakeResponseRequest.
        let back = RecordIntakeResponseRequest::decode(encode(&bytes).as_slice()).unwrap();
        assert_eq!(back, r);
    }
}
