//! Abuse: a participant reports a message, staff see it in the review queue and act — dismiss,
//! block the sender in the conversation, or ask identity to suspend the account, after which
//! the sender can send nowhere and their streams close.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use carehub_platform::auth::Role;
use carehub_proto::messaging::v1::*;
use tonic::Code;

use crate::common::{self, as_user, assert_status, keyed, send_request};

#[tokio::test]
async fn a_report_reaches_the_review_queue_once_and_is_resolved_once() {
    let suite = common::spawn().await;
    let (patient, provider, _staff, conversation) = suite.care().await;
    let reviewer = suite.user(Role::Staff, "reviewer").await;
    let mut api = suite.public().await;
    let rude = suite
        .send(&patient, &conversation, "You are useless, doctor")
        .await;
    let report = |details: &str| ReportMessageRequest {
        conversation_id: conversation.id.clone(),
        message_id: rude.id.clone(),
        reason: ReportReason::Harassment as i32,
        details: details.into(),
    };
    let filed = api
        .report_message(as_user(&provider, report("third time this week")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filed.status, ReportStatus::Open as i32);
    assert_eq!(filed.sender_id, patient.id);
    // The same reporter again: the same report.
    let again = api
        .report_message(as_user(&provider, report("again")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.id, filed.id);
    // Nobody reports their own message; the reason is required.
    let err = api
        .report_message(as_user(&patient, report("")))
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    let err = api
        .report_message(as_user(
            &provider,
            ReportMessageRequest {
                reason: 0,
                ..report("")
            },
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, None);

    let queue = api
        .list_reports(as_user(&reviewer, ListReportsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .reports;
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].details, "third time this week");
    assert_eq!(
        queue[0].message.as_ref().map(|m| m.body.as_str()),
        Some("You are useless, doctor"),
        "the reviewer sees what was reported"
    );
    // Patients and providers have no queue.
    let err = api
        .list_reports(as_user(&provider, ListReportsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let resolved = api
        .resolve_report(keyed(
            &reviewer,
            ResolveReportRequest {
                report_id: filed.id.clone(),
                action: ReportAction::BlockSender as i32,
            },
            "resolve-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (resolved.status, resolved.action),
        (
            ReportStatus::Actioned as i32,
            ReportAction::BlockSender as i32
        )
    );
    let err = api
        .resolve_report(as_user(
            &reviewer,
            ResolveReportRequest {
                report_id: filed.id.clone(),
                action: ReportAction::Dismiss as i32,
            },
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    let err = api
        .send_message(as_user(
            &patient,
            SendMessageRequest {
                conversation_id: conversation.id.clone(),
                client_message_id: "after-block".into(),
                body: "sorry".into(),
                attachment_ids: vec![],
            },
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, Some("SENDER_BLOCKED"));
    // The queue is empty again; the report is under "actioned". Details are sealed at rest.
    let open = api
        .list_reports(as_user(&reviewer, ListReportsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .reports;
    assert!(open.is_empty());
    let raw: Vec<(String,)> = sqlx::query_as("SELECT r::text FROM reports r")
        .fetch_all(suite.pool())
        .await
        .unwrap();
    assert!(raw.iter().all(|(r,)| !r.contains("third time")), "{raw:?}");
    // Unblocked, the patient sends again.
    api.unblock_sender(as_user(
        &reviewer,
        UnblockSenderRequest {
            conversation_id: conversation.id.clone(),
            user_id: patient.id.clone(),
        },
    ))
    .await
    .unwrap();
    suite.send(&patient, &conversation, "sorry, long day").await;
    suite.shutdown().await;
}

#[tokio::test]
async fn a_suspension_asked_of_identity_stops_the_sender_everywhere() {
    let suite = common::spawn().await;
    let (patient, provider, _staff, conversation) = suite.care().await;
    let second = suite.open_care(&patient).await;
    let reviewer = suite.user(Role::Staff, "reviewer").await;
    let mut api = suite.public().await;
    let threat = suite
        .send(&patient, &conversation, "I know where you park")
        .await;
    let mut stream = api
        .stream_events(as_user(
            &patient,
            StreamEventsRequest {
                conversation_id: second.id.clone(),
                after_seq: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let filed = api
        .report_message(as_user(
            &provider,
            ReportMessageRequest {
                conversation_id: conversation.id.clone(),
                message_id: threat.id.clone(),
                reason: ReportReason::Threat as i32,
                details: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    api.resolve_report(as_user(
        &reviewer,
        ResolveReportRequest {
            report_id: filed.id.clone(),
            action: ReportAction::SuspendAccount as i32,
        },
    ))
    .await
    .unwrap();
    // Messaging's outbox asks identity; identity suspends and its outbox tells messaging, which
    // then refuses the account's sends in every conversation and closes its streams.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sent = api
            .send_message(as_user(
                &patient,
                SendMessageRequest {
                    conversation_id: second.id.clone(),
                    client_message_id: uuid::Uuid::now_v7().simple().to_string(),
                    body: "still here".into(),
                    attachment_ids: vec![],
                },
            ))
            .await;
        match sent {
            Err(e) => {
                // Identity revokes the suspended account's sessions: its token may be refused
                // before messaging hears of the suspension.
                assert!(
                    e.code() == Code::PermissionDenied || e.code() == Code::Unauthenticated,
                    "{e:?}"
                );
                break;
            }
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "the suspension never reached messaging"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state: Option<(bool,)> =
            sqlx::query_as("SELECT active FROM account_states WHERE user_id = $1::uuid")
                .bind(&patient.id)
                .fetch_optional(suite.pool())
                .await
                .unwrap();
        if state == Some((false,)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "identity's account event never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream closes")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("closed without a status"),
            Err(status) => break status,
        }
    };
    assert_status(&end, Code::PermissionDenied, Some("SENDER_BLOCKED"));
    suite.shutdown().await;
}

/// What identity reports is enough: a suspended account's sends are refused by messaging
/// itself, even with a token that still verifies, in a storm as alone; reactivated, it sends
/// again.
#[tokio::test]
async fn a_suspended_account_cannot_send_even_while_its_token_still_verifies() {
    use carehub_proto::common::v1::account_events_client::AccountEventsClient;
    use carehub_proto::identity::v1::{AccountStatus, AccountStatusChanged};

    let suite = common::spawn().await;
    let (patient, provider, _staff, conversation) = suite.care().await;
    suite.send(&patient, &conversation, "before").await;
    let mut identity = AccountEventsClient::new(suite.channel("identity").await);
    let report = |status: AccountStatus| {
        tonic::Request::new(AccountStatusChanged {
            user_id: patient.id.clone(),
            status: status as i32,
            change_time: Some(carehub_platform::timestamps::to_proto(chrono::Utc::now())),
        })
    };
    identity
        .apply_account_event(report(AccountStatus::Suspended))
        .await
        .unwrap();
    let api = suite.public().await;
    let sends = (0..8).map(|i| {
        let sender = if i % 4 == 0 { &provider } else { &patient };
        let mut api = api.clone();
        let req = send_request(
            sender,
            &conversation,
            &format!("suspended-{i}"),
            &format!("try {i}"),
        );
        async move { (i, api.send_message(req).await) }
    });
    for (i, result) in futures::future::join_all(sends).await {
        if i % 4 == 0 {
            assert_eq!(result.unwrap().into_inner().sender_id, provider.id);
        } else {
            let err = result.unwrap_err();
            assert_status(&err, Code::PermissionDenied, Some("SENDER_BLOCKED"));
        }
    }
    assert_eq!(suite.messaging.count("messages").await, 3);
    // Reactivated (a later change), the account sends again.
    tokio::time::sleep(Duration::from_millis(5)).await;
    identity
        .apply_account_event(report(AccountStatus::Active))
        .await
        .unwrap();
    suite.send(&patient, &conversation, "after").await;
    suite.shutdown().await;
}
