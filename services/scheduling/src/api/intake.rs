//! Intake: the patient's answers to the visit type's form. Scheduling keeps only the status;
//! the answers go to the patient's chart through records (outbox, RecordIntakeResponse), in
//! the same transaction that marks the intake submitted.

use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_platform::timestamps::to_proto;
use carehub_proto::records::v1::RecordIntakeResponseRequest;
use carehub_proto::scheduling::v1::*;
use chrono::Utc;

use super::access::party;
use super::appointments::{appointment_row, check_text, event, locked, open_reason, step};
use super::convert::appointment_to_pb;
use super::{effects, kinds};
use crate::domain::appointment::{Action, IntakeStatus};
use crate::error::{checked, Result, SchedulingError};
use crate::store::appointments as store;
use crate::AppState;

const MAX_ANSWERS: usize = 100;
const MAX_ANSWER: usize = 2000;

fn is_question_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub async fn submit(state: &AppState, call: &Call, r: SubmitIntakeRequest) -> Result<Appointment> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = v.require_uuid("appointment_id", &r.appointment_id);
    v.check(
        (1..=MAX_ANSWERS).contains(&r.answers.len()),
        "answers",
        "must hold 1 to 100 answers",
    );
    let mut questions: Vec<&String> = r.answers.keys().collect();
    questions.sort();
    for q in questions {
        if !is_question_id(q) {
            v.add(
                "answers",
                "question ids must be 1..=64 letters, digits, '-', '_' or '.'",
            );
            break;
        }
        check_text(
            &mut v,
            &format!("answers[{q}]"),
            &r.answers[q],
            0,
            MAX_ANSWER,
        );
    }
    v.finish()?;
    let id = checked(id)?;
    let current = appointment_row(state, id).await?;
    if current.patient_id != user.user_id {
        return Err(SchedulingError::PermissionDenied(
            "only the patient submits their intake".to_owned(),
        ));
    }
    let purpose = party(user, current.patient_id, Some(current.provider_id))?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let mut a = locked(conn, id).await?;
            step(&a, Action::SubmitIntake)?;
            let Some(form) = a.intake_form.clone() else {
                return Err(SchedulingError::State {
                    what: "appointment",
                    id: id.to_string(),
                    state: "without an intake form",
                    action: Action::SubmitIntake.verb(),
                });
            };
            state
                .outbox
                .enqueue(
                    conn,
                    effects::RECORDS,
                    effects::RECORD_INTAKE,
                    &RecordIntakeResponseRequest {
                        patient_id: a.patient_id.to_string(),
                        appointment_id: a.id.to_string(),
                        form,
                        answers: r.answers.clone(),
                        submit_time: Some(to_proto(Utc::now())),
                    },
                )
                .await?;
            a.intake_status = IntakeStatus::Submitted.as_str().to_owned();
            let a = store::save_appointment(conn, &a).await?;
            let reason = open_reason(state, &a).await?;
            Ok::<_, SchedulingError>(Change::new(
                appointment_to_pb(&a, reason),
                event(call, kinds::INTAKE_SUBMIT, purpose, &a),
            ))
        })
        .await?;
    Ok(ran.answer)
}
