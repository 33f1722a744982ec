//! The chart: reading it (whole, one entry, one entry's history) and changing it (create,
//! update with an etag, verify). Every handler first finds how the caller reaches the chart
//! (`domain::access`); writes check it again inside their transaction, so that a member
//! removed meanwhile cannot write.

use carehub_platform::auth::{Role, UserCaller};
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::records::v1::*;
use sqlx::PgConnection;
use uuid::Uuid;

use super::convert::{check_etag, entry_to_pb};
use super::kinds;
use crate::domain::access::{self, Access, Relation, TeamRole};
use crate::domain::content;
use crate::domain::sensitivity::{self, Label};
use crate::error::{checked, RecordsError, Result};
use crate::store::entries::{self, Entered, Source, VersionRow};
use crate::store::{self, grants, sealed};
use crate::AppState;

/// How `user` reaches `patient`'s chart, read on `conn`.
pub(super) async fn reach(
    conn: &mut PgConnection,
    user: &UserCaller,
    patient: Uuid,
) -> Result<Access> {
    let relation = if user.user_id == patient && user.has_role(Role::Patient) {
        Relation::default()
    } else {
        store::relation(conn, user.user_id, patient).await?
    };
    access::access(user, patient, relation)
}

pub(crate) fn source_of(access: Access) -> Source {
    match access {
        Access::Patient => Source::Patient,
        Access::Team(TeamRole::Provider) | Access::BreakGlass => Source::Provider,
        Access::Team(TeamRole::Staff) => Source::Staff,
    }
}

/// A version's proto and labels, opened.
async fn open(state: &AppState, row: &VersionRow) -> Result<(Entry, Vec<Label>)> {
    let (content, labels) = sealed::open_version(
        &state.crypto,
        row.patient_id,
        (row.entry_id, row.version),
        &row.content,
    )
    .await?;
    Ok((entry_to_pb(row, content, &labels)?, labels))
}

/// The labels the patient granted `user` (only a care-team member's grants matter).
async fn granted(
    state: &AppState,
    conn: &mut PgConnection,
    access: Access,
    user: Uuid,
    patient: Uuid,
) -> Result<Vec<Label>> {
    if !matches!(access, Access::Team(_)) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for g in grants::active(conn, patient, Some(user)).await? {
        out.push(sealed::open_label(&state.crypto, patient, g.id, &g.label).await?);
    }
    Ok(out)
}

/// How a caller sees a chart: their way in and the labels granted to them.
pub(crate) struct Sight {
    pub access: Access,
    granted: Vec<Label>,
    user: Uuid,
}

impl Sight {
    pub(crate) async fn of(
        state: &AppState,
        conn: &mut PgConnection,
        user: &UserCaller,
        patient: Uuid,
    ) -> Result<Sight> {
        let access = reach(conn, user, patient).await?;
        let granted = granted(state, conn, access, user.user_id, patient).await?;
        Ok(Sight {
            access,
            granted,
            user: user.user_id,
        })
    }

    fn sees(&self, row: &VersionRow, labels: &[Label]) -> bool {
        self.sees_labels(labels, row.authored_by(self.user))
    }

    /// Whether content with `labels` is visible, `authored` by the caller or not.
    pub(crate) fn sees_labels(&self, labels: &[Label], authored: bool) -> bool {
        sensitivity::visible(self.access, labels, &self.granted, authored)
    }
}

pub async fn get_chart(state: &AppState, call: &Call, r: GetChartRequest) -> Result<Chart> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    v.finish()?;
    let patient = checked(patient)?;
    let max = i64::from(state.settings.max_chart_entries);
    let (sight, entries) = visible_entries(state, user, patient, max).await?;
    let chart = Chart {
        patient_id: patient.to_string(),
        entries,
    };
    let read = call.event(
        kinds::CHART_READ,
        access::purpose(sight.access),
        "chart",
        patient,
        patient,
    );
    call.read(&state.pool, read, chart).await
}

/// The current version of every entry of `patient`'s chart that `user` sees, and how they
/// see it (their way in and their grants); FAILED_PRECONDITION (CHART_SIZE) beyond `max` entries.
pub(crate) async fn visible_entries(
    state: &AppState,
    user: &UserCaller,
    patient: Uuid,
    max: i64,
) -> Result<(Sight, Vec<Entry>)> {
    let (sight, rows) = {
        let mut conn = state.pool.acquire().await?;
        let sight = Sight::of(state, &mut conn, user, patient).await?;
        (sight, entries::chart(&mut conn, patient, max + 1).await?)
    };
    if rows.len() > usize::try_from(max).unwrap_or(usize::MAX) {
        return Err(RecordsError::Conflict {
            kind: "CHART_SIZE",
            subject: patient.to_string(),
            description: format!("chart of patient {patient} has more than {max} entries"),
        });
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let (entry, labels) = open(state, row).await?;
        if sight.sees(row, &labels) {
            out.push(entry);
        }
    }
    Ok((sight, out))
}

/// Whether `entry` of `patient` is there for `user` (exists and is not hidden from them).
pub(crate) async fn entry_visible(
    state: &AppState,
    conn: &mut PgConnection,
    user: &UserCaller,
    (patient, entry): (Uuid, Uuid),
) -> Result<bool> {
    match current_for_change(state, conn, user, (patient, entry)).await {
        Ok(_) => Ok(true),
        Err(RecordsError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The patient and entry ids of a request naming one entry.
fn entry_ids(patient_id: &str, entry_id: &str) -> Result<(Uuid, Uuid)> {
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", patient_id);
    let entry = v.require_uuid("entry_id", entry_id);
    v.finish()?;
    Ok((checked(patient)?, checked(entry)?))
}

pub async fn get_entry(state: &AppState, call: &Call, r: GetEntryRequest) -> Result<Entry> {
    let user = call.user()?;
    let (patient, entry) = entry_ids(&r.patient_id, &r.entry_id)?;
    let (sight, row) = {
        let mut conn = state.pool.acquire().await?;
        let sight = Sight::of(state, &mut conn, user, patient).await?;
        let row = entries::current(&mut conn, patient, entry)
            .await?
            .ok_or_else(|| entries::not_found(entry))?;
        (sight, row)
    };
    let (answer, labels) = open(state, &row).await?;
    // A hidden entry does not exist for the caller.
    if !sight.sees(&row, &labels) {
        return Err(entries::not_found(entry));
    }
    let read = call.event(
        kinds::ENTRY_READ,
        access::purpose(sight.access),
        "entry",
        entry,
        patient,
    );
    call.read(&state.pool, read, answer).await
}

pub async fn list_entry_versions(
    state: &AppState,
    call: &Call,
    r: ListEntryVersionsRequest,
) -> Result<ListEntryVersionsResponse> {
    let user = call.user()?;
    let (patient, entry) = entry_ids(&r.patient_id, &r.entry_id)?;
    let (sight, rows) = {
        let mut conn = state.pool.acquire().await?;
        let sight = Sight::of(state, &mut conn, user, patient).await?;
        (sight, entries::history(&mut conn, patient, entry).await?)
    };
    // Each version is judged by its own labels; an entry none of whose versions the caller
    // may see does not exist for them.
    let mut versions = Vec::with_capacity(rows.len());
    for row in &rows {
        let (version, labels) = open(state, row).await?;
        if sight.sees(row, &labels) {
            versions.push(version);
        }
    }
    if versions.is_empty() {
        return Err(entries::not_found(entry));
    }
    let read = call.event(
        kinds::ENTRY_HISTORY_READ,
        access::purpose(sight.access),
        "entry",
        entry,
        patient,
    );
    call.read(&state.pool, read, ListEntryVersionsResponse { versions })
        .await
}

pub async fn create_entry(state: &AppState, call: &Call, r: CreateEntryRequest) -> Result<Entry> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    let kind = content::check(&mut v, "content", r.content.as_ref(), chrono::Utc::now());
    let labels = sensitivity::check_labels(&mut v, "labels", &r.labels);
    v.finish()?;
    let (patient, kind, content) = (
        checked(patient)?,
        checked(kind)?,
        checked(r.content.clone())?,
    );
    let id = Uuid::now_v7();
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let access = reach(conn, &user, patient).await?;
            access::may_write(access, kind)?;
            let sealed =
                sealed::seal_version(&state.crypto, patient, (id, 1), &content, &labels).await?;
            let entered = Entered {
                source: source_of(access),
                by: Some(user.user_id),
                verified_by: None,
            };
            let row = entries::insert(conn, id, patient, kind, &sealed, entered).await?;
            let event = call.event(
                kinds::ENTRY_CREATE,
                access::purpose(access),
                "entry",
                id,
                patient,
            );
            Ok::<_, RecordsError>(Change::new(entry_to_pb(&row, content, &labels)?, event))
        })
        .await?;
    Ok(ran.answer)
}

/// The current version of `entry` as the caller may change it: NOT_FOUND when it does not
/// exist or is hidden from them, else its row and content.
pub(crate) async fn current_for_change(
    state: &AppState,
    conn: &mut PgConnection,
    user: &UserCaller,
    (patient, entry): (Uuid, Uuid),
) -> Result<(Sight, VersionRow, EntryContent, Vec<Label>)> {
    let sight = Sight::of(state, conn, user, patient).await?;
    let row = entries::current(conn, patient, entry)
        .await?
        .ok_or_else(|| entries::not_found(entry))?;
    let (content, labels) =
        sealed::open_version(&state.crypto, patient, (entry, row.version), &row.content).await?;
    if !sight.sees(&row, &labels) {
        return Err(entries::not_found(entry));
    }
    Ok((sight, row, content, labels))
}

pub async fn update_entry(state: &AppState, call: &Call, r: UpdateEntryRequest) -> Result<Entry> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    let entry = v.require_uuid("entry_id", &r.entry_id);
    let kind = content::check(&mut v, "content", r.content.as_ref(), chrono::Utc::now());
    let expected = check_etag(&mut v, "etag", &r.etag);
    let labels = sensitivity::check_labels(&mut v, "labels", &r.labels);
    v.finish()?;
    let (patient, entry, kind, expected) = (
        checked(patient)?,
        checked(entry)?,
        checked(kind)?,
        checked(expected)?,
    );
    let content = checked(r.content.clone())?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let change = NewVersion {
                content: &content,
                labels: &labels,
                kind,
                expected,
            };
            let (row, access) = write_version(state, conn, &user, (patient, entry), change).await?;
            let event = call.event(
                kinds::ENTRY_UPDATE,
                access::purpose(access),
                "entry",
                entry,
                patient,
            );
            Ok::<_, RecordsError>(Change::new(
                entry_to_pb(&row, content.clone(), &labels)?,
                event,
            ))
        })
        .await?;
    Ok(ran.answer)
}

/// A new version of an entry, as UpdateEntry and AcceptAmendment write it.
pub(crate) struct NewVersion<'a> {
    pub content: &'a EntryContent,
    pub labels: &'a [Label],
    /// The content's kind (must be the entry's).
    pub kind: content::Kind,
    /// The version the caller's etag names.
    pub expected: i64,
}

/// Writes `change` as the next version of `entry` in the caller's transaction, as `user`:
/// NOT_FOUND when the entry is not there for them, INVALID_ARGUMENT for another kind,
/// PERMISSION_DENIED when their way in does not write this kind, ABORTED for a stale etag.
pub(crate) async fn write_version(
    state: &AppState,
    conn: &mut PgConnection,
    user: &UserCaller,
    (patient, entry): (Uuid, Uuid),
    change: NewVersion<'_>,
) -> Result<(VersionRow, Access)> {
    let (sight, current, _, _) = current_for_change(state, conn, user, (patient, entry)).await?;
    let stored_kind = content::Kind::parse(&current.kind)
        .ok_or_else(|| RecordsError::Internal(format!("entry {entry} has an unknown kind")))?;
    if stored_kind != change.kind {
        return Err(RecordsError::Status(
            carehub_platform::errors::invalid_field(
                &format!("content.{}", change.kind.as_str()),
                &format!("entry {entry} is a {}", stored_kind.as_str()),
            ),
        ));
    }
    access::may_write(sight.access, change.kind)?;
    let sealed = sealed::seal_version(
        &state.crypto,
        patient,
        (entry, change.expected + 1),
        change.content,
        change.labels,
    )
    .await?;
    let entered = Entered {
        source: source_of(sight.access),
        by: Some(user.user_id),
        verified_by: None,
    };
    let row = entries::advance(conn, patient, entry, change.expected, &sealed, entered).await?;
    Ok((row, sight.access))
}

pub async fn verify_entry(state: &AppState, call: &Call, r: VerifyEntryRequest) -> Result<Entry> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    let entry = v.require_uuid("entry_id", &r.entry_id);
    let expected = check_etag(&mut v, "etag", &r.etag);
    v.finish()?;
    let (patient, entry, expected) = (checked(patient)?, checked(entry)?, checked(expected)?);
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let (sight, current, content, labels) =
                current_for_change(state, conn, &user, (patient, entry)).await?;
            access::may_verify(sight.access)?;
            if current.version != expected {
                return Err(RecordsError::EtagMismatch {
                    entry: entry.to_string(),
                    current: current.version,
                });
            }
            let sealed = sealed::seal_version(
                &state.crypto,
                patient,
                (entry, expected + 1),
                &content,
                &labels,
            )
            .await?;
            // The content is unchanged: so is who entered it.
            let entered = Entered {
                source: Source::parse(&current.source).ok_or_else(|| {
                    RecordsError::Internal(format!("entry {entry} has an unknown source"))
                })?,
                by: current.entered_by,
                verified_by: Some(user.user_id),
            };
            let row = entries::advance(conn, patient, entry, expected, &sealed, entered).await?;
            let event = call.event(
                kinds::ENTRY_VERIFY,
                access::purpose(sight.access),
                "entry",
                entry,
                patient,
            );
            Ok::<_, RecordsError>(Change::new(entry_to_pb(&row, content, &labels)?, event))
        })
        .await?;
    Ok(ran.answer)
}
