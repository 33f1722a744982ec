//! Clinical notes: a care-team provider writes a draft only they see and change, then signs
//! it; a signed note never changes (the database refuses it too) and corrections are addenda,
//! each signed as it is written. The patient reads the signed notes of their chart; the care
//! team reads them as it reads entries (labels included).

use carehub_platform::auth::UserCaller;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::records::v1::*;
use sqlx::PgConnection;
use uuid::Uuid;

use super::chart::{self, Sight};
use super::convert::{check_etag, etag, ts};
use super::kinds;
use crate::domain::access::{self, Access, TeamRole};
use crate::domain::sensitivity::{self, Label};
use crate::error::{checked, RecordsError, Result};
use crate::store::notes::{self as store, AddendumRow, NoteRow};
use crate::store::sealed::{self, StoredNote};
use crate::AppState;

const TITLE_MAX: usize = 200;
const TEXT_MAX: usize = 20_000;

fn labels_of(body: &StoredNote) -> Vec<Label> {
    body.labels
        .iter()
        .filter_map(|l| Label::from_pb(*l))
        .collect()
}

async fn to_pb(
    state: &AppState,
    row: &NoteRow,
    body: StoredNote,
    addenda: &[AddendumRow],
) -> Result<Note> {
    let mut out = Vec::with_capacity(addenda.len());
    for a in addenda.iter().filter(|a| a.note_id == row.id) {
        out.push(NoteAddendum {
            id: a.id.to_string(),
            author_id: a.author_id.to_string(),
            text: sealed::open_text(
                &state.crypto,
                row.patient_id,
                ("note_addenda", "body", a.id),
                &a.body,
            )
            .await?,
            sign_time: Some(ts(a.signed_at)),
        });
    }
    Ok(Note {
        id: row.id.to_string(),
        patient_id: row.patient_id.to_string(),
        author_id: row.author_id.to_string(),
        status: if row.status == "signed" {
            NoteStatus::Signed
        } else {
            NoteStatus::Draft
        } as i32,
        title: body.title,
        text: body.text,
        labels: body.labels,
        create_time: Some(ts(row.created_at)),
        update_time: Some(ts(row.updated_at)),
        sign_time: row.signed_at.map(ts),
        content_sha256: row
            .content_sha256
            .as_deref()
            .map(|h| data_encoding::HEXLOWER.encode(h))
            .unwrap_or_default(),
        etag: etag(row.version),
        addenda: out,
    })
}

/// Only a provider on the patient's care team writes notes.
async fn as_team_provider(conn: &mut PgConnection, user: &UserCaller, patient: Uuid) -> Result<()> {
    if chart::reach(conn, user, patient).await? == Access::Team(TeamRole::Provider) {
        Ok(())
    } else {
        Err(RecordsError::PermissionDenied(
            "notes are written by providers on the care team".to_owned(),
        ))
    }
}

fn check_body(v: &mut FieldViolations, title: &str, text: &str, labels: &[i32]) -> StoredNote {
    v.require_len(title.trim(), "title", 1, TITLE_MAX);
    v.require_len(text, "text", 1, TEXT_MAX);
    let labels = sensitivity::check_labels(v, "labels", labels);
    StoredNote {
        title: title.trim().to_owned(),
        text: text.to_owned(),
        labels: labels.iter().map(|l| l.to_pb() as i32).collect(),
    }
}

pub async fn create(state: &AppState, call: &Call, r: CreateNoteRequest) -> Result<Note> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    let body = check_body(&mut v, &r.title, &r.text, &r.labels);
    v.finish()?;
    let patient = checked(patient)?;
    let id = Uuid::now_v7();
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            as_team_provider(conn, &user, patient).await?;
            let sealed = sealed::seal_note(&state.crypto, patient, (id, 1), &body).await?;
            let row = store::insert(conn, id, patient, user.user_id, &sealed).await?;
            let event = call.event(
                kinds::NOTE_CREATE,
                carehub_platform::audit::Purpose::Treatment,
                "note",
                id,
                patient,
            );
            Ok::<_, RecordsError>(Change::new(
                to_pb(state, &row, body.clone(), &[]).await?,
                event,
            ))
        })
        .await?;
    Ok(ran.answer)
}

/// The author's draft at the version `expected` names, locked.
async fn own_draft(
    conn: &mut PgConnection,
    user: &UserCaller,
    (patient, id): (Uuid, Uuid),
    expected: i64,
) -> Result<NoteRow> {
    as_team_provider(conn, user, patient).await?;
    let row = store::lock(conn, patient, id).await?;
    // Someone else's draft does not exist for the caller.
    if row.author_id != user.user_id && row.status == "draft" {
        return Err(store::not_found(id));
    }
    if row.status == "signed" {
        return Err(RecordsError::Conflict {
            kind: "NOTE_SIGNED",
            subject: id.to_string(),
            description: format!("note {id} is signed and never changes; add an addendum"),
        });
    }
    if row.version != expected {
        return Err(RecordsError::EtagMismatch {
            entry: id.to_string(),
            current: row.version,
        });
    }
    Ok(row)
}

fn note_ids(
    patient_id: &str,
    note_id: &str,
    etag_value: &str,
    v: &mut FieldViolations,
) -> (Option<Uuid>, Option<Uuid>, Option<i64>) {
    (
        v.require_uuid("patient_id", patient_id),
        v.require_uuid("note_id", note_id),
        check_etag(v, "etag", etag_value),
    )
}

pub async fn update(state: &AppState, call: &Call, r: UpdateNoteRequest) -> Result<Note> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let (patient, id, expected) = note_ids(&r.patient_id, &r.note_id, &r.etag, &mut v);
    let body = check_body(&mut v, &r.title, &r.text, &r.labels);
    v.finish()?;
    let (patient, id, expected) = (checked(patient)?, checked(id)?, checked(expected)?);
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            own_draft(conn, &user, (patient, id), expected).await?;
            let sealed =
                sealed::seal_note(&state.crypto, patient, (id, expected + 1), &body).await?;
            let row = store::update_draft(conn, id, expected, &sealed).await?;
            let event = call.event(
                kinds::NOTE_UPDATE,
                carehub_platform::audit::Purpose::Treatment,
                "note",
                id,
                patient,
            );
            Ok::<_, RecordsError>(Change::new(
                to_pb(state, &row, body.clone(), &[]).await?,
                event,
            ))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn sign(state: &AppState, call: &Call, r: SignNoteRequest) -> Result<Note> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let (patient, id, expected) = note_ids(&r.patient_id, &r.note_id, &r.etag, &mut v);
    v.finish()?;
    let (patient, id, expected) = (checked(patient)?, checked(id)?, checked(expected)?);
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let draft = own_draft(conn, &user, (patient, id), expected).await?;
            let body =
                sealed::open_note(&state.crypto, patient, (id, draft.version), &draft.body).await?;
            let row = store::sign(conn, id, expected, &body.sha256()).await?;
            let event = call.event(
                kinds::NOTE_SIGN,
                carehub_platform::audit::Purpose::Treatment,
                "note",
                id,
                patient,
            );
            Ok::<_, RecordsError>(Change::new(to_pb(state, &row, body, &[]).await?, event))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn add_addendum(
    state: &AppState,
    call: &Call,
    r: AddNoteAddendumRequest,
) -> Result<Note> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    let id = v.require_uuid("note_id", &r.note_id);
    v.require_len(&r.text, "text", 1, TEXT_MAX);
    v.finish()?;
    let (patient, id) = (checked(patient)?, checked(id)?);
    let addendum = Uuid::now_v7();
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            as_team_provider(conn, &user, patient).await?;
            let sight = Sight::of(state, conn, &user, patient).await?;
            let note = store::lock(conn, patient, id).await?;
            let body =
                sealed::open_note(&state.crypto, patient, (id, note.version), &note.body).await?;
            let visible = note.status == "signed"
                && sight.sees_labels(&labels_of(&body), note.author_id == user.user_id);
            if !visible && note.author_id != user.user_id {
                return Err(store::not_found(id));
            }
            if note.status != "signed" {
                return Err(RecordsError::Conflict {
                    kind: "NOTE_DRAFT",
                    subject: id.to_string(),
                    description: format!("note {id} is a draft: change it instead"),
                });
            }
            let sealed = sealed::seal_text(
                &state.crypto,
                patient,
                ("note_addenda", "body", addendum),
                &r.text,
            )
            .await?;
            store::insert_addendum(conn, addendum, id, user.user_id, &sealed).await?;
            let addenda = store::addenda(conn, &[id]).await?;
            let event = call.event(
                kinds::NOTE_ADDENDUM,
                carehub_platform::audit::Purpose::Treatment,
                "note",
                id,
                patient,
            );
            Ok::<_, RecordsError>(Change::new(
                to_pb(state, &note, body, &addenda).await?,
                event,
            ))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn list(state: &AppState, call: &Call, r: ListNotesRequest) -> Result<ListNotesResponse> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    v.finish()?;
    let patient = checked(patient)?;
    let (sight, rows, addenda) = {
        let mut conn = state.pool.acquire().await?;
        let sight = Sight::of(state, &mut conn, user, patient).await?;
        let rows = store::list(&mut conn, patient, user.user_id).await?;
        let ids: Vec<Uuid> = rows.iter().map(|n| n.id).collect();
        let addenda = store::addenda(&mut conn, &ids).await?;
        (sight, rows, addenda)
    };
    let mut notes = Vec::with_capacity(rows.len());
    for row in &rows {
        let body =
            sealed::open_note(&state.crypto, patient, (row.id, row.version), &row.body).await?;
        if sight.sees_labels(&labels_of(&body), row.author_id == user.user_id) {
            notes.push(to_pb(state, row, body, &addenda).await?);
        }
    }
    let read = call.event(
        kinds::NOTES_READ,
        access::purpose(sight.access),
        "notes",
        patient,
        patient,
    );
    call.read(&state.pool, read, ListNotesResponse { notes })
        .await
}
