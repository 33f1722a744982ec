//! Messaging's authorization, checked through the test kit (`carehub_testkit::authz`): every
//! RPC messaging mounts has a policy rule, and the whole matrix — every RPC × the patient,
//! another patient, a provider and a staff member on the patient's team, a provider off the
//! team, a reviewing staff member off the team, billing, an admin, the scheduling and identity
//! workloads, and no user — comes to the table below. Roles are necessary, never sufficient:
//! the same staff role is allowed in the conversation when on the team and refused
//! (NOT_A_PARTICIPANT) when not. Every allowed call that answers leaves an audit event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use carehub_platform::auth::Role;
use carehub_proto::common::v1::account_events_client::AccountEventsClient;
use carehub_proto::identity::v1::{AccountStatus, AccountStatusChanged};
use carehub_proto::messaging::v1::messaging_internal_client::MessagingInternalClient;
use carehub_proto::messaging::v1::messaging_service_client::MessagingServiceClient;
use carehub_proto::messaging::v1::*;
use carehub_proto::FILE_DESCRIPTOR_SET;
use carehub_testkit::authz::{
    assert_every_rpc_has_a_rule, rpc_paths, CallerKind, Matrix, Outcome, Whose,
};
use tonic::Code;

use crate::common::{self, with_token, User};

const PUBLIC: &str = "carehub.messaging.v1.MessagingService";
const INTERNAL: &str = "carehub.messaging.v1.MessagingInternal";
const AUDIT_LOG: &str = "carehub.audit.v1.AuditLog";
const ACCOUNT_EVENTS: &str = "carehub.common.v1.AccountEvents";

#[test]
fn every_rpc_messaging_mounts_has_a_policy_rule() {
    assert_every_rpc_has_a_rule(
        FILE_DESCRIPTOR_SET,
        &[PUBLIC, INTERNAL, ACCOUNT_EVENTS, AUDIT_LOG],
        &[
            &carehub_messaging::api::policy::policy(),
            &carehub_platform::audit::service::policy(),
        ],
    );
}

fn callers() -> Vec<CallerKind> {
    use Whose::{Other, Own};
    vec![
        CallerKind::user("patient", "gateway", Role::Patient, Own),
        CallerKind::user("another patient", "gateway", Role::Patient, Other),
        CallerKind::user("team provider", "gateway", Role::Provider, Own),
        CallerKind::user("team staff", "gateway", Role::Staff, Own),
        CallerKind::user("provider off the team", "gateway", Role::Provider, Other),
        CallerKind::user("reviewer", "gateway", Role::Staff, Other),
        CallerKind::user("billing", "gateway", Role::Billing, Other),
        CallerKind::user("admin", "gateway", Role::Admin, Other),
        CallerKind::workload("scheduling", "scheduling"),
        CallerKind::workload("identity", "identity"),
        CallerKind::workload("gateway, no user", "gateway"),
    ]
}

/// `.` allowed, `N` not a participant, `R` role, `W` workload, `T` no token, `P` allowed then
/// PERMISSION_DENIED by the handler for another reason (not the sender, not the visit's),
/// `F` allowed then FAILED_PRECONDITION, `-` not called.
fn matrix() -> Matrix {
    let public = |m: &str| format!("/{PUBLIC}/{m}");
    let internal = |m: &str| format!("/{INTERNAL}/{m}");
    let mut m = Matrix::new(callers())
        .legend(
            'N',
            Outcome::Deny(Code::PermissionDenied, "NOT_A_PARTICIPANT"),
        )
        .legend('P', Outcome::Refused(Code::PermissionDenied))
        .legend('F', Outcome::Refused(Code::FailedPrecondition));
    //                                  pat oth TP TS off rev bil adm sch idn none
    for rpc in [
        "GetConversation",
        "ListEvents",
        "MarkRead",
        "StreamEvents",
        "SendMessage",
        "UploadAttachment",
        "DownloadAttachment",
        "ReportMessage",
    ] {
        m = m.row(&public(rpc), ".  N  .  .  N   N   R   R   W   W   T");
    }
    m = m.row(
        &public("CreateConversation"),
        ".  N  .  .  N   N   R   R   W   W   T",
    );
    m = m.row(
        &public("ListConversations"),
        ".  .  .  .  .   .   R   R   W   W   T",
    );
    // Only the sender retracts (the patient's message here): others on the team are refused
    // by the handler after the policy.
    m = m.row(
        &public("RetractMessage"),
        ".  N  P  P  N   N   R   R   W   W   T",
    );
    for rpc in [
        "ListReports",
        "ResolveReport",
        "BlockSender",
        "UnblockSender",
    ] {
        m = m.row(&public(rpc), "R  R  R  .  R   .   R   .   W   W   T");
    }
    m = m.row(
        &public("GetVideoJoinToken"),
        "-  -  -  R  -   R   R   R   W   W   T",
    );
    for rpc in ["GetSmsConsent", "RecordSmsOptIn"] {
        m = m.row(&public(rpc), "-  -  -  -  -   -   R   -   W   W   T");
    }
    for rpc in ["SendNotification", "GetNotification"] {
        m = m.row(&internal(rpc), "W  W  W  W  W   W   W   W   -   -   W");
    }
    m = m.row(
        &internal("ApplySmsPreference"),
        "W  W  W  W  W   W   W   W   W   -   W",
    );
    m = m.row(
        &internal("UpsertVideoVisit"),
        "W  W  W  W  W   W   W   W   -   W   W",
    );
    m.row(
        &format!("/{ACCOUNT_EVENTS}/ApplyAccountEvent"),
        "W  W  W  W  W   W   W   W   W   .   W",
    )
}

struct World {
    patient: User,
    another: User,
    team_provider: User,
    team_staff: User,
    outsider: User,
    reviewer: User,
    billing: User,
    admin: User,
    conversation: Conversation,
    /// The patient's message in the conversation (reported, retracted last).
    message: Message,
    attachment: Attachment,
    report: Report,
}

impl World {
    fn user(&self, label: &str) -> Option<&User> {
        Some(match label {
            "patient" => &self.patient,
            "another patient" => &self.another,
            "team provider" => &self.team_provider,
            "team staff" => &self.team_staff,
            "provider off the team" => &self.outsider,
            "reviewer" => &self.reviewer,
            "billing" => &self.billing,
            "admin" => &self.admin,
            _ => return None,
        })
    }
}

fn signed<T>(user: Option<&User>, req: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(req);
    if let Some(u) = user {
        r = with_token(r, &u.token);
    }
    r.metadata_mut().insert(
        "idempotency-key",
        uuid::Uuid::now_v7().to_string().parse().unwrap(),
    );
    r
}

#[tokio::test]
async fn the_authorization_matrix_holds_and_every_allowed_call_is_audited() {
    let suite = common::spawn().await;
    let (patient, team_provider, team_staff, conversation) = suite.care().await;
    let another = suite.user(Role::Patient, "q").await;
    let outsider = suite.user(Role::Provider, "op").await;
    let reviewer = suite.user(Role::Staff, "rev").await;
    let billing = suite.user(Role::Billing, "b").await;
    let admin = suite.user(Role::Admin, "a").await;
    let message = suite.send(&patient, &conversation, "hello team").await;
    let reply = suite.send(&team_provider, &conversation, "hello").await;
    let text = b"some notes".to_vec();
    let attachment = {
        use sha2::Digest as _;
        let parts = vec![
            UploadAttachmentRequest {
                part: Some(upload_attachment_request::Part::Info(AttachmentInfo {
                    conversation_id: conversation.id.clone(),
                    file_name: "notes.txt".into(),
                    content_type: "text/plain".into(),
                    size_bytes: text.len() as i64,
                    sha256: data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(&text)),
                })),
            },
            UploadAttachmentRequest {
                part: Some(upload_attachment_request::Part::Chunk(text.clone())),
            },
        ];
        let a = suite
            .public()
            .await
            .upload_attachment(common::as_user(&patient, futures::stream::iter(parts)))
            .await
            .unwrap()
            .into_inner();
        suite
            .public()
            .await
            .send_message(common::as_user(
                &patient,
                SendMessageRequest {
                    conversation_id: conversation.id.clone(),
                    client_message_id: "with-attachment".into(),
                    body: String::new(),
                    attachment_ids: vec![a.id.clone()],
                },
            ))
            .await
            .unwrap();
        a
    };
    let report = suite
        .public()
        .await
        .report_message(common::as_user(
            &patient,
            ReportMessageRequest {
                conversation_id: conversation.id.clone(),
                message_id: reply.id.clone(),
                reason: ReportReason::Spam as i32,
                details: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let world = World {
        patient,
        another,
        team_provider,
        team_staff,
        outsider,
        reviewer,
        billing,
        admin,
        conversation,
        message,
        attachment,
        report,
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
            // Identity's account events answer nothing; an empty listing reads nothing (these
            // callers have no conversation and no report in their view).
            let exempt = rpc.ends_with("/ApplyAccountEvent")
                || (rpc.ends_with("/ListConversations")
                    && ["another patient", "provider off the team", "reviewer"]
                        .contains(&caller.label));
            if result.is_ok() && !exempt && events().await <= before {
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

/// Makes `rpc` as `caller`, in the patient's conversation.
async fn call(
    suite: &common::Suite,
    w: &World,
    rpc: &str,
    caller: &CallerKind,
) -> Result<(), tonic::Status> {
    let user = w.user(caller.label);
    let channel = suite.channel(caller.workload).await;
    let method = rpc.rsplit('/').next().unwrap_or_default();
    let conversation_id = w.conversation.id.clone();
    if rpc.contains(ACCOUNT_EVENTS) {
        // A reactivation of someone messaging never heard of: harmless to the rows below.
        return AccountEventsClient::new(channel)
            .apply_account_event(signed(
                user,
                AccountStatusChanged {
                    user_id: uuid::Uuid::now_v7().to_string(),
                    status: AccountStatus::Active as i32,
                    change_time: Some(carehub_platform::timestamps::to_proto(chrono::Utc::now())),
                },
            ))
            .await
            .map(drop);
    }
    if rpc.contains(INTERNAL) {
        let mut c = MessagingInternalClient::new(channel);
        return match method {
            "SendNotification" => c
                .send_notification(signed(
                    user,
                    SendNotificationRequest {
                        user_id: w.patient.id.clone(),
                        template: Template::NewMessage as i32,
                        idempotency_key: uuid::Uuid::now_v7().to_string(),
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
            "GetNotification" => c
                .get_notification(signed(
                    user,
                    GetNotificationRequest {
                        notification_id: uuid::Uuid::now_v7().to_string(),
                    },
                ))
                .await
                .map(drop),
            "ApplySmsPreference" => c
                .apply_sms_preference(signed(
                    user,
                    ApplySmsPreferenceRequest {
                        user_id: w.patient.id.clone(),
                        sms_allowed: true,
                        change_time: Some(carehub_platform::timestamps::to_proto(
                            chrono::Utc::now(),
                        )),
                    },
                ))
                .await
                .map(drop),
            _ => c
                .upsert_video_visit(signed(user, UpsertVideoVisitRequest { visit: None }))
                .await
                .map(drop),
        };
    }
    let mut c = MessagingServiceClient::new(channel);
    match method {
        "CreateConversation" => c
            .create_conversation(signed(
                user,
                CreateConversationRequest {
                    kind: ConversationKind::Care as i32,
                    patient_id: w.patient.id.clone(),
                    member_ids: vec![],
                    subject: "another question".into(),
                },
            ))
            .await
            .map(drop),
        "GetConversation" => c
            .get_conversation(signed(user, GetConversationRequest { conversation_id }))
            .await
            .map(drop),
        "ListConversations" => c
            .list_conversations(signed(user, ListConversationsRequest::default()))
            .await
            .map(drop),
        "SendMessage" => c
            .send_message(signed(
                user,
                SendMessageRequest {
                    conversation_id,
                    client_message_id: uuid::Uuid::now_v7().simple().to_string(),
                    body: "a note".into(),
                    attachment_ids: vec![],
                },
            ))
            .await
            .map(drop),
        "RetractMessage" => c
            .retract_message(signed(
                user,
                RetractMessageRequest {
                    conversation_id,
                    message_id: w.message.id.clone(),
                },
            ))
            .await
            .map(drop),
        "ListEvents" => c
            .list_events(signed(
                user,
                ListEventsRequest {
                    conversation_id,
                    after_seq: 0,
                    page_size: 0,
                },
            ))
            .await
            .map(drop),
        "MarkRead" => c
            .mark_read(signed(
                user,
                MarkReadRequest {
                    conversation_id,
                    read_seq: 1,
                },
            ))
            .await
            .map(drop),
        "StreamEvents" => c
            .stream_events(signed(
                user,
                StreamEventsRequest {
                    conversation_id,
                    after_seq: 0,
                },
            ))
            .await
            .map(drop),
        "UploadAttachment" => {
            let text = b"hello".to_vec();
            let sha = {
                use sha2::Digest as _;
                data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(&text))
            };
            let parts = vec![
                UploadAttachmentRequest {
                    part: Some(upload_attachment_request::Part::Info(AttachmentInfo {
                        conversation_id,
                        file_name: "hello.txt".into(),
                        content_type: "text/plain".into(),
                        size_bytes: 5,
                        sha256: sha,
                    })),
                },
                UploadAttachmentRequest {
                    part: Some(upload_attachment_request::Part::Chunk(text)),
                },
            ];
            c.upload_attachment(signed(user, futures::stream::iter(parts)))
                .await
                .map(drop)
        }
        "DownloadAttachment" => {
            let mut s = c
                .download_attachment(signed(
                    user,
                    DownloadAttachmentRequest {
                        conversation_id,
                        attachment_id: w.attachment.id.clone(),
                    },
                ))
                .await?
                .into_inner();
            while s.message().await?.is_some() {}
            Ok(())
        }
        "ReportMessage" => c
            .report_message(signed(
                user,
                ReportMessageRequest {
                    conversation_id,
                    message_id: w.message.id.clone(),
                    reason: ReportReason::Other as i32,
                    details: String::new(),
                },
            ))
            .await
            .map(drop),
        "ListReports" => c
            .list_reports(signed(user, ListReportsRequest::default()))
            .await
            .map(drop),
        "ResolveReport" => c
            .resolve_report(signed(
                user,
                ResolveReportRequest {
                    report_id: w.report.id.clone(),
                    action: ReportAction::Dismiss as i32,
                },
            ))
            .await
            .map(drop),
        "BlockSender" => c
            .block_sender(signed(
                user,
                BlockSenderRequest {
                    conversation_id,
                    user_id: w.another.id.clone(),
                },
            ))
            .await
            .map(drop),
        "UnblockSender" => c
            .unblock_sender(signed(
                user,
                UnblockSenderRequest {
                    conversation_id,
                    user_id: w.another.id.clone(),
                },
            ))
            .await
            .map(drop),
        "GetVideoJoinToken" => c
            .get_video_join_token(signed(
                user,
                GetVideoJoinTokenRequest {
                    appointment_id: uuid::Uuid::now_v7().to_string(),
                },
            ))
            .await
            .map(drop),
        "GetSmsConsent" => c
            .get_sms_consent(signed(
                user,
                GetSmsConsentRequest {
                    phone_number: "+15555550100".into(),
                },
            ))
            .await
            .map(drop),
        _ => c
            .record_sms_opt_in(signed(
                user,
                RecordSmsOptInRequest {
                    phone_number: "+15555550100".into(),
                    source: "web-form".into(),
                },
            ))
            .await
            .map(drop),
    }
}
