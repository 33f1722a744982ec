//! Records' authorization, checked through the test kit (`carehub_testkit::authz`): every RPC
//! records mounts has a policy rule, and the whole matrix — every RPC × the patient, another
//! patient, a care-team provider and staff member (on their patient's chart and on another
//! chart), a provider outside the team, billing, an admin, a provider through break-glass with
//! a reason and one whose break-glass had none, scheduling, and no user — comes to the table
//! below. Roles are necessary, never sufficient: the same provider is allowed on their
//! patient's chart and refused (NOT_ON_CARE_TEAM) on another. Every allowed call leaves an
//! audit event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use carehub_platform::auth::Role;
use carehub_proto::common::v1::account_events_client::AccountEventsClient;
use carehub_proto::identity::v1::{AccountStatus, AccountStatusChanged};
use carehub_proto::records::v1::records_internal_client::RecordsInternalClient;
use carehub_proto::records::v1::records_service_client::RecordsServiceClient;
use carehub_proto::records::v1::*;
use carehub_proto::FILE_DESCRIPTOR_SET;
use carehub_testkit::authz::{
    assert_every_rpc_has_a_rule, rpc_paths, CallerKind, Matrix, Outcome, Whose,
};
use tonic::Code;

use crate::common::{self, diabetes, with_token, User};

const PUBLIC: &str = "carehub.records.v1.RecordsService";
const INTERNAL: &str = "carehub.records.v1.RecordsInternal";
const AUDIT_LOG: &str = "carehub.audit.v1.AuditLog";
const ACCOUNT_EVENTS: &str = "carehub.common.v1.AccountEvents";

#[test]
fn every_rpc_records_mounts_has_a_policy_rule() {
    assert_every_rpc_has_a_rule(
        FILE_DESCRIPTOR_SET,
        &[PUBLIC, INTERNAL, ACCOUNT_EVENTS, AUDIT_LOG],
        &[
            &carehub_records::api::policy::policy(),
            &carehub_platform::audit::service::policy(),
        ],
    );
}

/// The columns: whose chart each caller asks about is fixed per column (the patient P's,
/// unless the label says "another").
fn callers() -> Vec<CallerKind> {
    use Whose::{Other, Own};
    vec![
        CallerKind::user("patient", "gateway", Role::Patient, Own),
        CallerKind::user("another patient", "gateway", Role::Patient, Other),
        CallerKind::user("team provider", "gateway", Role::Provider, Own),
        CallerKind::user("team provider on another", "gateway", Role::Provider, Other),
        CallerKind::user("team staff", "gateway", Role::Staff, Own),
        CallerKind::user("team staff on another", "gateway", Role::Staff, Other),
        CallerKind::user("provider off the team", "gateway", Role::Provider, Other),
        CallerKind::user("billing", "gateway", Role::Billing, Other),
        CallerKind::user("admin", "gateway", Role::Admin, Other),
        CallerKind::user("break-glass with reason", "gateway", Role::Provider, Other),
        CallerKind::user(
            "break-glass without reason",
            "gateway",
            Role::Provider,
            Other,
        ),
        CallerKind::workload("scheduling", "scheduling"),
        CallerKind::workload("gateway, no user", "gateway"),
    ]
}

/// `.` allowed, `N` not on the care team, `R` role not allowed (by the policy or, for a
/// break-glass write, by the handler), `W` workload, `T` no token, `F` allowed then
/// FAILED_PRECONDITION (break-glass while on the team), `I` allowed then INVALID_ARGUMENT
/// (break-glass without a reason). Rows run in order: BreakGlass is last but one, so that the
/// accesses it opens do not change the rows above.
fn matrix() -> Matrix {
    let chart = |m: &str| format!("/{PUBLIC}/{m}");
    let mut m = Matrix::new(callers())
        .legend(
            'N',
            Outcome::Deny(Code::PermissionDenied, "NOT_ON_CARE_TEAM"),
        )
        .legend('F', Outcome::Refused(Code::FailedPrecondition))
        .legend('I', Outcome::Refused(Code::InvalidArgument));
    //                       pat oth TP TPx TS TSx off bil adm BG NR sch none
    for rpc in ["GetChart", "GetEntry", "ListEntryVersions"] {
        m = m.row(&chart(rpc), ". N  . N  . N  N  R  R  .  N  W  T");
    }
    for rpc in ["CreateEntry", "UpdateEntry"] {
        m = m.row(&chart(rpc), ". N  . N  . N  N  R  R  R  N  W  T");
    }
    m = m.row(&chart("VerifyEntry"), "R R  . N  R R  N  R  R  R  N  W  T");
    for rpc in ["ListCareTeam", "AddCareTeamMember", "RemoveCareTeamMember"] {
        m = m.row(&chart(rpc), ". N  . N  . N  N  R  .  R  N  W  T");
    }
    for rpc in [
        "GrantSensitiveAccess",
        "RevokeSensitiveAccess",
        "ListSensitiveAccessGrants",
        "GetAccessLog",
        "RequestAmendment",
        "FileDisagreement",
        "ListDisclosures",
    ] {
        m = m.row(&chart(rpc), ". N  R R  R R  R  R  R  R  R  W  T");
    }
    for rpc in [
        "ExtendAmendment",
        "AcceptAmendment",
        "DenyAmendment",
        "FileRebuttal",
    ] {
        m = m.row(&chart(rpc), "R R  . N  R R  N  R  R  R  N  W  T");
    }
    m = m.row(
        &chart("ListAmendments"),
        ". N  . N  . N  N  R  R  .  N  W  T",
    );
    for rpc in ["CreateNote", "UpdateNote", "SignNote", "AddNoteAddendum"] {
        m = m.row(&chart(rpc), "R R  . N  R R  N  R  R  R  N  W  T");
    }
    m = m.row(&chart("ListNotes"), ". N  . N  . N  N  R  R  .  N  W  T");
    m = m.row(
        &chart("GetDemographics"),
        ". N  . N  . N  N  R  R  .  N  W  T",
    );
    m = m.row(
        &chart("UpdateDemographics"),
        ". N  R R  . N  R  R  R  R  R  W  T",
    );
    m = m.row(
        &chart("GetConditionAggregates"),
        "R R  R R  R R  R  R  .  R  R  W  T",
    );
    m = m.row(
        &chart("UploadDocument"),
        ". N  . N  . N  N  R  R  R  N  W  T",
    );
    for rpc in ["DownloadDocument", "ListDocuments", "ExportChart"] {
        m = m.row(&chart(rpc), ". N  . N  . N  N  R  R  .  N  W  T");
    }
    m = m.row(
        &chart("RecordDisclosure"),
        "R R  R R  . N  R  R  .  R  R  W  T",
    );
    m = m.row(
        &chart("ListBreakGlassAccesses"),
        "R R  R R  R R  R  R  .  R  R  W  T",
    );
    m = m.row(&chart("BreakGlass"), "R R  F .  R R  .  R  R  .  I  W  T");
    // Integration feeds only (the positive case: fhir.rs).
    m = m.row(
        &format!("/{INTERNAL}/ImportFhirBundle"),
        "W W  W W  W W  W  W  W  W  W  W  W",
    );
    // Identity's outbox only (its positive case: erasure.rs).
    m = m.row(
        &format!("/{ACCOUNT_EVENTS}/ApplyAccountEvent"),
        "W W  W W  W W  W  W  W  W  W  W  W",
    );
    // Messaging only (its positive case: messaging's tests).
    m = m.row(
        &format!("/{INTERNAL}/GetCareTeam"),
        "W W  W W  W W  W  W  W  W  W  W  W",
    );
    m = m.row(
        &format!("/{INTERNAL}/AddBookedProvider"),
        "W W  W W  W W  W  W  W  W  W  .  W",
    );
    // Scheduling's outbox only (the rest of its case: intake.rs).
    m.row(
        &format!("/{INTERNAL}/RecordIntakeResponse"),
        "W W  W W  W W  W  W  W  W  W  .  W",
    )
}

struct World {
    patient: User,
    another: User,
    team_provider: User,
    team_staff: User,
    outsider: User,
    billing: User,
    admin: User,
    glass: User,
    no_reason: User,
    /// A staff member on P's team that team RPCs add and remove.
    extra: User,
    /// A document in P's chart.
    document: Document,
    /// A note in P's chart by the team provider, signed.
    note: Note,
    /// An amendment request of P's, about `entry`.
    amendment: Amendment,
    /// An entry in P's chart and one in the other patient's.
    entry: Entry,
    other_entry: Entry,
}

impl World {
    /// The caller of a column, and whether it asks about P's chart (else the other's).
    fn column(&self, label: &str) -> (Option<&User>, bool) {
        match label {
            "patient" => (Some(&self.patient), true),
            "another patient" => (Some(&self.another), true),
            "team provider" => (Some(&self.team_provider), true),
            "team provider on another" => (Some(&self.team_provider), false),
            "team staff" => (Some(&self.team_staff), true),
            "team staff on another" => (Some(&self.team_staff), false),
            "provider off the team" => (Some(&self.outsider), true),
            "billing" => (Some(&self.billing), true),
            "admin" => (Some(&self.admin), true),
            "break-glass with reason" => (Some(&self.glass), true),
            "break-glass without reason" => (Some(&self.no_reason), true),
            _ => (None, true),
        }
    }
}

#[tokio::test]
async fn the_authorization_matrix_holds_and_every_allowed_call_is_audited() {
    let suite = common::spawn().await;
    let u = |role, name: &'static str| suite.user(role, name);
    let (patient, another, team_provider, team_staff) = (
        u(Role::Patient, "p").await,
        u(Role::Patient, "q").await,
        u(Role::Provider, "tp").await,
        u(Role::Staff, "ts").await,
    );
    let (outsider, billing, admin, glass, no_reason, extra) = (
        u(Role::Provider, "op").await,
        u(Role::Billing, "b").await,
        u(Role::Admin, "a").await,
        u(Role::Provider, "bg").await,
        u(Role::Provider, "nr").await,
        u(Role::Staff, "extra").await,
    );
    for member in [&team_provider, &team_staff, &extra] {
        suite.join_team(&patient, member).await;
    }
    let mut c = suite.public().await;
    let create = |who: &User, on: &User| {
        common::as_user(
            who,
            CreateEntryRequest {
                patient_id: on.id.clone(),
                content: Some(diabetes()),
                labels: vec![],
            },
        )
    };
    let entry = c
        .create_entry(create(&team_provider, &patient))
        .await
        .unwrap()
        .into_inner();
    let other_entry = c
        .create_entry(create(&another, &another))
        .await
        .unwrap()
        .into_inner();
    c.break_glass(common::as_user(
        &glass,
        BreakGlassRequest {
            patient_id: patient.id.clone(),
            reason: "found unresponsive at home".into(),
        },
    ))
    .await
    .unwrap();
    let amendment = c
        .request_amendment(common::as_user(
            &patient,
            RequestAmendmentRequest {
                patient_id: patient.id.clone(),
                entry_id: entry.id.clone(),
                reason: "this was my father's condition".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let draft = c
        .create_note(common::as_user(
            &team_provider,
            CreateNoteRequest {
                patient_id: patient.id.clone(),
                title: "Intake".into(),
                text: "History taken.".into(),
                labels: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let note = c
        .sign_note(common::as_user(
            &team_provider,
            SignNoteRequest {
                patient_id: patient.id.clone(),
                note_id: draft.id.clone(),
                etag: draft.etag.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let document = c
        .upload_document(common::as_user(
            &patient,
            tokio_stream::iter(text_document(&patient)),
        ))
        .await
        .unwrap()
        .into_inner();
    let world = World {
        document,
        note,
        amendment,
        patient,
        another,
        team_provider,
        team_staff,
        outsider,
        billing,
        admin,
        glass,
        no_reason,
        extra,
        entry,
        other_entry,
    };

    let m = matrix();
    let mut all = rpc_paths(FILE_DESCRIPTOR_SET, PUBLIC);
    all.extend(rpc_paths(FILE_DESCRIPTOR_SET, INTERNAL));
    all.extend(rpc_paths(FILE_DESCRIPTOR_SET, ACCOUNT_EVENTS));
    m.assert_covers(&all);
    let events = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM carehub_platform.audit_queue)
                  + (SELECT count(*) FROM carehub_platform.audit_events)",
        )
        .fetch_one(suite.pool())
        .await
        .unwrap();
        n
    };
    let unaudited = std::sync::Mutex::new(Vec::new());
    m.run(|rpc, caller| {
        let (world, suite, unaudited) = (&world, &suite, &unaudited);
        async move {
            let before = events().await;
            let result = call(suite, world, &rpc, &caller).await;
            if result.is_ok() && events().await <= before {
                unaudited
                    .lock()
                    .unwrap()
                    .push(format!("{rpc} as {}", caller.label));
            }
            result
        }
    })
    .await;
    let unaudited = unaudited.into_inner().unwrap();
    assert!(
        unaudited.is_empty(),
        "allowed but not audited: {unaudited:?}"
    );
    suite.shutdown().await;
}

/// Makes `rpc` as `caller`, on the chart its column names.
async fn call(
    suite: &common::Suite,
    w: &World,
    rpc: &str,
    caller: &CallerKind,
) -> Result<(), tonic::Status> {
    let (user, on_p) = w.column(caller.label);
    let (patient, entry) = if on_p {
        (&w.patient, &w.entry)
    } else {
        (&w.another, &w.other_entry)
    };
    let channel = suite.channel(caller.workload).await;
    let method = rpc.rsplit('/').next().unwrap_or_default();
    if rpc.contains(ACCOUNT_EVENTS) {
        return AccountEventsClient::new(channel)
            .apply_account_event(signed(
                user,
                AccountStatusChanged {
                    user_id: patient.id.clone(),
                    status: AccountStatus::Terminated as i32,
                    change_time: None,
                },
            ))
            .await
            .map(drop);
    }
    if rpc.ends_with("/ImportFhirBundle") {
        return RecordsInternalClient::new(channel)
            .import_fhir_bundle(signed(
                user,
                ImportFhirBundleRequest {
                    patient_id: patient.id.clone(),
                    bundle_json: b"{}".to_vec(),
                },
            ))
            .await
            .map(drop);
    }
    if rpc.ends_with("/GetCareTeam") {
        return RecordsInternalClient::new(channel)
            .get_care_team(signed(
                user,
                GetCareTeamRequest {
                    patient_id: patient.id.clone(),
                },
            ))
            .await
            .map(drop);
    }
    if rpc.ends_with("/RecordIntakeResponse") {
        return RecordsInternalClient::new(channel)
            .record_intake_response(signed(
                user,
                RecordIntakeResponseRequest {
                    patient_id: patient.id.clone(),
                    appointment_id: uuid::Uuid::now_v7().to_string(),
                    form: "new-patient".into(),
                    answers: [("reason".to_owned(), "a cough for the matrix".to_owned())].into(),
                    submit_time: Some(prost_types::Timestamp {
                        seconds: chrono::Utc::now().timestamp(),
                        nanos: 0,
                    }),
                },
            ))
            .await
            .map(drop);
    }
    if rpc.contains(INTERNAL) {
        return RecordsInternalClient::new(channel)
            .add_booked_provider(signed(
                user,
                AddBookedProviderRequest {
                    patient_id: patient.id.clone(),
                    provider_id: w.team_provider.id.clone(),
                    appointment_id: uuid::Uuid::now_v7().to_string(),
                },
            ))
            .await
            .map(drop);
    }
    let mut c = RecordsServiceClient::new(channel);
    let (pid, eid) = (patient.id.clone(), entry.id.clone());
    match method {
        "GetChart" => c
            .get_chart(signed(user, GetChartRequest { patient_id: pid }))
            .await
            .map(drop),
        "GetEntry" => c
            .get_entry(signed(
                user,
                GetEntryRequest {
                    patient_id: pid,
                    entry_id: eid,
                },
            ))
            .await
            .map(drop),
        "ListEntryVersions" => c
            .list_entry_versions(signed(
                user,
                ListEntryVersionsRequest {
                    patient_id: pid,
                    entry_id: eid,
                },
            ))
            .await
            .map(drop),
        "CreateEntry" => c
            .create_entry(signed(
                user,
                CreateEntryRequest {
                    patient_id: pid,
                    content: Some(diabetes()),
                    labels: vec![],
                },
            ))
            .await
            .map(drop),
        // A stale etag after the first update: still past authorization (ABORTED).
        "UpdateEntry" => c
            .update_entry(signed(
                user,
                UpdateEntryRequest {
                    patient_id: pid,
                    entry_id: eid,
                    content: Some(diabetes()),
                    etag: entry.etag.clone(),
                    labels: vec![],
                },
            ))
            .await
            .map(drop),
        "VerifyEntry" => c
            .verify_entry(signed(
                user,
                VerifyEntryRequest {
                    patient_id: pid,
                    entry_id: eid,
                    etag: entry.etag.clone(),
                },
            ))
            .await
            .map(drop),
        "ListCareTeam" => c
            .list_care_team(signed(user, ListCareTeamRequest { patient_id: pid }))
            .await
            .map(drop),
        "AddCareTeamMember" => c
            .add_care_team_member(signed(
                user,
                AddCareTeamMemberRequest {
                    patient_id: pid,
                    user_id: w.extra.id.clone(),
                },
            ))
            .await
            .map(drop),
        // The first allowed caller removes the extra member, the next ones re-add it first.
        "RemoveCareTeamMember" => {
            let removed = c
                .remove_care_team_member(signed(
                    user,
                    RemoveCareTeamMemberRequest {
                        patient_id: pid.clone(),
                        user_id: w.extra.id.clone(),
                    },
                ))
                .await
                .map(drop);
            if removed.is_ok() {
                suite.join_team(&w.patient, &w.extra).await;
            }
            removed
        }
        "BreakGlass" => c
            .break_glass(signed(
                user,
                BreakGlassRequest {
                    patient_id: pid,
                    reason: if caller.label == "break-glass without reason" {
                        String::new()
                    } else {
                        "an emergency for the matrix".into()
                    },
                },
            ))
            .await
            .map(drop),
        "GrantSensitiveAccess" => c
            .grant_sensitive_access(signed(
                user,
                GrantSensitiveAccessRequest {
                    patient_id: pid,
                    user_id: w.team_staff.id.clone(),
                    label: SensitivityLabel::Hiv as i32,
                },
            ))
            .await
            .map(drop),
        "RevokeSensitiveAccess" => c
            .revoke_sensitive_access(signed(
                user,
                RevokeSensitiveAccessRequest {
                    patient_id: pid,
                    user_id: w.team_staff.id.clone(),
                    label: SensitivityLabel::Hiv as i32,
                },
            ))
            .await
            .map(drop),
        "ListSensitiveAccessGrants" => c
            .list_sensitive_access_grants(signed(
                user,
                ListSensitiveAccessGrantsRequest { patient_id: pid },
            ))
            .await
            .map(drop),
        "RequestAmendment" => c
            .request_amendment(signed(
                user,
                RequestAmendmentRequest {
                    patient_id: pid,
                    entry_id: eid,
                    reason: "the dose on record is wrong".into(),
                },
            ))
            .await
            .map(drop),
        "ExtendAmendment" => c
            .extend_amendment(signed(
                user,
                ExtendAmendmentRequest {
                    patient_id: pid,
                    amendment_id: w.amendment.id.clone(),
                    reason: "waiting for the lab's answer".into(),
                },
            ))
            .await
            .map(drop),
        "AcceptAmendment" => c
            .accept_amendment(signed(
                user,
                AcceptAmendmentRequest {
                    patient_id: pid,
                    amendment_id: w.amendment.id.clone(),
                    content: Some(diabetes()),
                    etag: entry.etag.clone(),
                    labels: vec![],
                },
            ))
            .await
            .map(drop),
        "DenyAmendment" => c
            .deny_amendment(signed(
                user,
                DenyAmendmentRequest {
                    patient_id: pid,
                    amendment_id: w.amendment.id.clone(),
                    reason: "the record is accurate and complete".into(),
                },
            ))
            .await
            .map(drop),
        "FileDisagreement" => c
            .file_disagreement(signed(
                user,
                FileDisagreementRequest {
                    patient_id: pid,
                    amendment_id: w.amendment.id.clone(),
                    statement: "I disagree with the denial".into(),
                },
            ))
            .await
            .map(drop),
        "FileRebuttal" => c
            .file_rebuttal(signed(
                user,
                FileRebuttalRequest {
                    patient_id: pid,
                    amendment_id: w.amendment.id.clone(),
                    statement: "the record stands as written".into(),
                },
            ))
            .await
            .map(drop),
        "ListAmendments" => c
            .list_amendments(signed(user, ListAmendmentsRequest { patient_id: pid }))
            .await
            .map(drop),
        "RecordDisclosure" => c
            .record_disclosure(signed(
                user,
                RecordDisclosureRequest {
                    patient_id: pid,
                    recipient: "County public health department".into(),
                    purpose: "required reporting".into(),
                    description: "immunization record".into(),
                    entry_ids: vec![],
                    disclose_time: Some(prost_types::Timestamp {
                        seconds: chrono::Utc::now().timestamp() - 60,
                        nanos: 0,
                    }),
                },
            ))
            .await
            .map(drop),
        "ListDisclosures" => c
            .list_disclosures(signed(
                user,
                ListDisclosuresRequest {
                    patient_id: pid,
                    page: None,
                },
            ))
            .await
            .map(drop),
        "UploadDocument" => {
            let mut req = tonic::Request::new(tokio_stream::iter(text_document(patient)));
            if let Some(u) = user {
                req = with_token(req, &u.token);
            }
            c.upload_document(req).await.map(drop)
        }
        "DownloadDocument" => {
            let answer = c
                .download_document(signed(
                    user,
                    DownloadDocumentRequest {
                        patient_id: pid,
                        document_id: w.document.id.clone(),
                    },
                ))
                .await?;
            // Read to the end: the chunks come after the answer's headers.
            let mut stream = answer.into_inner();
            while stream.message().await?.is_some() {}
            Ok(())
        }
        "GetDemographics" => c
            .get_demographics(signed(user, GetDemographicsRequest { patient_id: pid }))
            .await
            .map(drop),
        "UpdateDemographics" => c
            .update_demographics(signed(
                user,
                UpdateDemographicsRequest {
                    demographics: Some(Demographics {
                        patient_id: pid,
                        birth_date: Some(carehub_proto::common::v1::Date {
                            year: 1980,
                            month: 5,
                            day: 17,
                        }),
                        state: "CA".into(),
                        zip: String::new(),
                    }),
                },
            ))
            .await
            .map(drop),
        "GetConditionAggregates" => c
            .get_condition_aggregates(signed(user, GetConditionAggregatesRequest {}))
            .await
            .map(drop),
        "ExportChart" => {
            let answer = c
                .export_chart(signed(
                    user,
                    ExportChartRequest {
                        patient_id: pid,
                        ..Default::default()
                    },
                ))
                .await?;
            let mut stream = answer.into_inner();
            while stream.message().await?.is_some() {}
            Ok(())
        }
        "ListDocuments" => c
            .list_documents(signed(user, ListDocumentsRequest { patient_id: pid }))
            .await
            .map(drop),
        "CreateNote" => c
            .create_note(signed(
                user,
                CreateNoteRequest {
                    patient_id: pid,
                    title: "Phone call".into(),
                    text: "Discussed results.".into(),
                    labels: vec![],
                },
            ))
            .await
            .map(drop),
        "UpdateNote" => c
            .update_note(signed(
                user,
                UpdateNoteRequest {
                    patient_id: pid,
                    note_id: w.note.id.clone(),
                    title: "Intake".into(),
                    text: "rewritten".into(),
                    labels: vec![],
                    etag: w.note.etag.clone(),
                },
            ))
            .await
            .map(drop),
        "SignNote" => c
            .sign_note(signed(
                user,
                SignNoteRequest {
                    patient_id: pid,
                    note_id: w.note.id.clone(),
                    etag: w.note.etag.clone(),
                },
            ))
            .await
            .map(drop),
        "AddNoteAddendum" => c
            .add_note_addendum(signed(
                user,
                AddNoteAddendumRequest {
                    patient_id: pid,
                    note_id: w.note.id.clone(),
                    text: "Addendum for the matrix.".into(),
                },
            ))
            .await
            .map(drop),
        "ListNotes" => c
            .list_notes(signed(user, ListNotesRequest { patient_id: pid }))
            .await
            .map(drop),
        "GetAccessLog" => c
            .get_access_log(signed(
                user,
                GetAccessLogRequest {
                    patient_id: pid,
                    page: None,
                },
            ))
            .await
            .map(drop),
        "ListBreakGlassAccesses" => c
            .list_break_glass_accesses(signed(user, ListBreakGlassAccessesRequest { page: None }))
            .await
            .map(drop),
        other => panic!("no call for {other}"),
    }
}

/// `msg` with `user`'s token, or none.
fn signed<T>(user: Option<&User>, msg: T) -> tonic::Request<T> {
    let r = tonic::Request::new(msg);
    match user {
        Some(u) => with_token(r, &u.token),
        None => r,
    }
}

/// A small text document of `patient`'s chart, as an upload's messages.
fn text_document(patient: &User) -> Vec<UploadDocumentRequest> {
    use sha2::Digest as _;
    let bytes = b"Discharge summary: stable.".to_vec();
    vec![
        UploadDocumentRequest {
            part: Some(upload_document_request::Part::Info(DocumentInfo {
                patient_id: patient.id.clone(),
                title: "Discharge summary".into(),
                content_type: "text/plain".into(),
                size_bytes: bytes.len() as i64,
                sha256: data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(&bytes)),
                labels: vec![],
            })),
        },
        UploadDocumentRequest {
            part: Some(upload_document_request::Part::Chunk(bytes)),
        },
    ]
}
