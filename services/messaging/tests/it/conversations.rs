//! Conversations and messages: who is in them, sending (idempotent, ordered, encrypted,
//! audited), retracting, reading, read positions and unread counts, and what the tables hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use carehub_platform::auth::Role;
use carehub_proto::messaging::v1::*;
use tonic::Code;

use crate::common::{self, as_user, assert_status, keyed, send_request};

#[tokio::test]
async fn a_care_conversation_is_its_patient_and_care_team_and_nobody_else() {
    let suite = common::spawn().await;
    let (patient, provider, staff, conversation) = suite.care().await;
    let outsider = suite.user(Role::Provider, "outsider").await;
    let other_patient = suite.user(Role::Patient, "other").await;
    let admin = suite.user(Role::Admin, "admin").await;
    let mut api = suite.public().await;

    assert_eq!(conversation.kind, ConversationKind::Care as i32);
    assert_eq!(conversation.patient_id, patient.id);
    assert_eq!(conversation.subject, "Question about my dosage");
    for member in [&patient, &provider, &staff] {
        let c = api
            .get_conversation(as_user(
                member,
                GetConversationRequest {
                    conversation_id: conversation.id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(c.subject, "Question about my dosage");
    }
    for stranger in [&outsider, &other_patient] {
        let err = api
            .get_conversation(as_user(
                stranger,
                GetConversationRequest {
                    conversation_id: conversation.id.clone(),
                },
            ))
            .await
            .unwrap_err();
        assert_status(&err, Code::PermissionDenied, Some("NOT_A_PARTICIPANT"));
        let err = api
            .send_message(as_user(
                stranger,
                SendMessageRequest {
                    conversation_id: conversation.id.clone(),
                    client_message_id: "x1".into(),
                    body: "let me in".into(),
                    attachment_ids: vec![],
                },
            ))
            .await
            .unwrap_err();
        assert_status(&err, Code::PermissionDenied, Some("NOT_A_PARTICIPANT"));
    }
    // An admin's role opens no conversation (the policy refuses it before the handler).
    let err = api
        .get_conversation(as_user(
            &admin,
            GetConversationRequest {
                conversation_id: conversation.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // A patient cannot open a care conversation about another patient.
    let err = api
        .create_conversation(as_user(
            &other_patient,
            CreateConversationRequest {
                kind: ConversationKind::Care as i32,
                patient_id: patient.id.clone(),
                member_ids: vec![],
                subject: "hello".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, Some("NOT_A_PARTICIPANT"));

    // A provider who leaves the team stops reading and sending.
    suite
        .send(&provider, &conversation, "Take it with food.")
        .await;
    suite.leave_team(&patient, &provider).await;
    let err = api
        .list_events(as_user(
            &provider,
            ListEventsRequest {
                conversation_id: conversation.id.clone(),
                after_seq: 0,
                page_size: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, Some("NOT_A_PARTICIPANT"));
    suite.shutdown().await;
}

#[tokio::test]
async fn sending_is_ordered_idempotent_retractable_within_the_window_and_stored_sealed() {
    let suite = common::spawn().await;
    let (patient, provider, _staff, conversation) = suite.care().await;
    let mut api = suite.public().await;
    let send = |body: &str, id: &str| SendMessageRequest {
        conversation_id: conversation.id.clone(),
        client_message_id: id.into(),
        body: body.into(),
        attachment_ids: vec![],
    };
    let first = api
        .send_message(as_user(
            &patient,
            send("My A1c was 7.2, should I worry?", "m-1"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.seq, 1);
    // A retry with the same client message id is the same message, not a second one.
    let again = api
        .send_message(as_user(
            &patient,
            send("My A1c was 7.2, should I worry?", "m-1"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.id.as_str(), again.seq), (first.id.as_str(), 1));
    // Eight racing retries of one send (a flaky network): one message.
    let racers = (0..8).map(|_| {
        let mut api = api.clone();
        let req = as_user(&patient, send("Also: can I take it at night?", "m-2"));
        async move { api.send_message(req).await.unwrap().into_inner() }
    });
    let raced = futures::future::join_all(racers).await;
    assert!(
        raced.iter().all(|m| m.id == raced[0].id && m.seq == 2),
        "{raced:?}"
    );
    let reply = suite
        .send(&provider, &conversation, "Not yet; let's talk Tuesday.")
        .await;
    assert_eq!(reply.seq, 3);
    assert_eq!(suite.messaging.count("messages").await, 3);

    // Nothing written is in clear in the tables.
    let raw: Vec<(Vec<u8>,)> = sqlx::query_as(
        "SELECT convert_to(t::text, 'UTF8') FROM
           (SELECT * FROM messages) t
         UNION ALL SELECT convert_to(c::text, 'UTF8') FROM conversations c",
    )
    .fetch_all(suite.pool())
    .await
    .unwrap();
    for (row,) in &raw {
        let text = String::from_utf8_lossy(row);
        for secret in ["A1c", "Tuesday", "dosage"] {
            assert!(!text.contains(secret), "{secret} in clear: {text}");
        }
    }

    // The sender retracts; the trace stays in the order, the body is gone.
    let retracted = api
        .retract_message(keyed(
            &patient,
            RetractMessageRequest {
                conversation_id: conversation.id.clone(),
                message_id: first.id.clone(),
            },
            "retract-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(retracted.retract_time.is_some());
    assert!(retracted.body.is_empty());
    // Only the sender retracts.
    let err = api
        .retract_message(as_user(
            &provider,
            RetractMessageRequest {
                conversation_id: conversation.id.clone(),
                message_id: reply.id.clone(),
            },
        ))
        .await;
    assert!(err.is_ok(), "the provider retracts their own");
    let err = api
        .retract_message(as_user(
            &provider,
            RetractMessageRequest {
                conversation_id: conversation.id.clone(),
                message_id: first.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let events = api
        .list_events(as_user(
            &provider,
            ListEventsRequest {
                conversation_id: conversation.id.clone(),
                after_seq: 0,
                page_size: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5],
        "messages and retractions share one order"
    );
    match &events[0].event {
        Some(conversation_event::Event::Message(m)) => {
            assert!(m.body.is_empty() && m.retract_time.is_some());
        }
        other => panic!("{other:?}"),
    }
    match &events[3].event {
        Some(conversation_event::Event::Retraction(r)) => {
            assert_eq!(
                (r.message_id.as_str(), r.message_seq),
                (first.id.as_str(), 1)
            );
        }
        other => panic!("{other:?}"),
    }
    suite.shutdown().await;
}

#[tokio::test]
async fn a_message_outside_the_retract_window_stays() {
    let suite = common::spawn_with(|c| c.messaging.retract_window_secs = 0).await;
    let (patient, _provider, _staff, conversation) = suite.care().await;
    let m = suite.send(&patient, &conversation, "sent for good").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let err = suite
        .public()
        .await
        .retract_message(as_user(
            &patient,
            RetractMessageRequest {
                conversation_id: conversation.id.clone(),
                message_id: m.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    suite.shutdown().await;
}

#[tokio::test]
async fn read_positions_move_forward_and_unread_counts_stay_right() {
    let suite = common::spawn().await;
    let (patient, provider, staff, conversation) = suite.care().await;
    let mut api = suite.public().await;
    for i in 0..3 {
        suite
            .send(&provider, &conversation, &format!("note {i}"))
            .await;
    }
    suite.send(&patient, &conversation, "thanks").await;
    let lister = api.clone();
    let unread = |user: &common::User| {
        let mut api = lister.clone();
        let user = user.clone();
        let id = conversation.id.clone();
        async move {
            api.list_conversations(as_user(&user, ListConversationsRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .conversations
                .into_iter()
                .find(|c| c.id == id)
                .map(|c| c.unread_count)
        }
    };
    // The patient has 3 from the provider; the provider 1 from the patient; staff all 4.
    assert_eq!(unread(&patient).await, Some(3));
    assert_eq!(unread(&provider).await, Some(1));
    assert_eq!(unread(&staff).await, Some(4));
    let state = api
        .mark_read(as_user(
            &patient,
            MarkReadRequest {
                conversation_id: conversation.id.clone(),
                read_seq: 2,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((state.read_seq, state.unread_count), (2, 1));
    // Backwards is a no-op, beyond the end is refused.
    let state = api
        .mark_read(as_user(
            &patient,
            MarkReadRequest {
                conversation_id: conversation.id.clone(),
                read_seq: 1,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.read_seq, 2);
    let err = api
        .mark_read(as_user(
            &patient,
            MarkReadRequest {
                conversation_id: conversation.id.clone(),
                read_seq: 99,
            },
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, None);
    // The receipt is an event in the order, after the 4 messages.
    let events = api
        .list_events(as_user(
            &provider,
            ListEventsRequest {
                conversation_id: conversation.id.clone(),
                after_seq: 4,
                page_size: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    match &events[0].event {
        Some(conversation_event::Event::Read(r)) => {
            assert_eq!((r.user_id.as_str(), r.read_seq), (patient.id.as_str(), 2));
        }
        other => panic!("{other:?}"),
    }
    // 20 racing MarkReads of different positions leave the highest.
    let racers = (1..=4).map(|seq| {
        let mut api = lister.clone();
        let (staff, id) = (staff.clone(), conversation.id.clone());
        async move {
            api.mark_read(as_user(
                &staff,
                MarkReadRequest {
                    conversation_id: id,
                    read_seq: seq,
                },
            ))
            .await
            .unwrap()
        }
    });
    futures::future::join_all(racers.cycle().take(20)).await;
    assert_eq!(unread(&staff).await, Some(0));
    suite.shutdown().await;
}

#[tokio::test]
async fn staff_conversations_take_active_providers_and_staff_only() {
    let suite = common::spawn().await;
    let provider = suite.user(Role::Provider, "doc").await;
    let nurse = suite.user(Role::Staff, "nurse").await;
    let patient = suite.user(Role::Patient, "pat").await;
    let other = suite.user(Role::Staff, "other").await;
    let mut api = suite.public().await;
    let create = |members: Vec<String>| CreateConversationRequest {
        kind: ConversationKind::Staff as i32,
        patient_id: String::new(),
        member_ids: members,
        subject: "Rota for December".into(),
    };
    let c = api
        .create_conversation(as_user(&provider, create(vec![nurse.id.clone()])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.member_ids, vec![provider.id.clone(), nurse.id.clone()]);
    suite.send(&nurse, &c, "I can take the 12th").await;
    let err = api
        .get_conversation(as_user(
            &other,
            GetConversationRequest {
                conversation_id: c.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, Some("NOT_A_PARTICIPANT"));
    // A patient cannot be added, nor open one.
    let err = api
        .create_conversation(as_user(&provider, create(vec![patient.id.clone()])))
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    let err = api
        .create_conversation(as_user(&patient, create(vec![nurse.id.clone()])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Bad input names its field.
    let err = api
        .create_conversation(as_user(
            &provider,
            CreateConversationRequest {
                kind: ConversationKind::Staff as i32,
                patient_id: String::new(),
                member_ids: vec!["nope".into()],
                subject: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, None);
    let fields: Vec<String> = carehub_platform::errors::details_of(&err)
        .field_violations
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert!(fields.contains(&"member_ids[0]".to_owned()), "{fields:?}");
    assert!(fields.contains(&"subject".to_owned()), "{fields:?}");
    suite.shutdown().await;
}

#[tokio::test]
async fn every_read_and_send_is_audited_under_the_patient() {
    let suite = common::spawn().await;
    let (patient, provider, _staff, conversation) = suite.care().await;
    suite.send(&provider, &conversation, "hello").await;
    suite
        .public()
        .await
        .list_events(as_user(
            &patient,
            ListEventsRequest {
                conversation_id: conversation.id.clone(),
                after_seq: 0,
                page_size: 0,
            },
        ))
        .await
        .unwrap();
    let audit = suite.audit().await;
    let find = |kind: &str, actor: &str| {
        audit
            .iter()
            .find(|(k, _, _, a)| k == kind && a.as_deref() == Some(actor))
            .cloned()
    };
    let create = find("messaging.conversation.create", &patient.id).expect("create audited");
    assert_eq!(create.1, "patient_request");
    assert_eq!(create.2.as_deref(), Some(patient.id.as_str()));
    let send = find("messaging.message.send", &provider.id).expect("send audited");
    assert_eq!(
        (send.1.as_str(), send.2.as_deref()),
        ("treatment", Some(patient.id.as_str()))
    );
    assert!(
        find("messaging.events.read", &patient.id).is_some(),
        "read audited"
    );
    suite.shutdown().await;
}

/// Sends are appended in batches (`carehub_messaging::sends`), several conversations in one
/// transaction: each conversation still gets its own gap-free order, and every stored event
/// is the message its sender was answered with.
#[tokio::test]
async fn a_storm_across_conversations_gives_each_its_own_gap_free_order() {
    let suite = common::spawn().await;
    let replica = suite.replica().await;
    let mut conversations = Vec::new();
    for _ in 0..3 {
        let (patient, _, _, conversation) = suite.care().await;
        conversations.push((patient, conversation));
    }
    let first = suite.public().await;
    let second = suite.public_of(&replica).await;
    let sends = (0..30).map(|i| {
        let (patient, conversation) = &conversations[i % 3];
        let mut api = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let req = send_request(
            patient,
            conversation,
            &format!("across-{i}"),
            &format!("note {i}"),
        );
        async move { api.send_message(req).await.unwrap().into_inner() }
    });
    let sent = futures::future::join_all(sends).await;
    let mut api = first.clone();
    for (patient, conversation) in &conversations {
        let mut answered: Vec<(i64, String, String)> = sent
            .iter()
            .filter(|m| m.conversation_id == conversation.id)
            .map(|m| (m.seq, m.id.clone(), m.body.clone()))
            .collect();
        answered.sort();
        assert_eq!(
            answered.iter().map(|(seq, ..)| *seq).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>(),
            "gap-free and unique in conversation {}",
            conversation.id
        );
        let stored: Vec<(i64, String, String)> = api
            .list_events(as_user(
                patient,
                ListEventsRequest {
                    conversation_id: conversation.id.clone(),
                    after_seq: 0,
                    page_size: 100,
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .events
            .into_iter()
            .map(|e| match e.event {
                Some(conversation_event::Event::Message(m)) => (e.seq, m.id, m.body),
                other => panic!("not a message: {other:?}"),
            })
            .collect();
        assert_eq!(stored, answered, "what is stored is what was answered");
    }
    assert_eq!(suite.messaging.count("messages").await, 30);
    let _ = replica.server.shutdown().await;
    suite.shutdown().await;
}

/// In a batch, each send is checked on its own: a blocked sender's sends are refused while the
/// others' sends in the same conversation, at the same moment, are appended in one order.
#[tokio::test]
async fn in_a_storm_a_blocked_senders_messages_are_refused_and_the_others_are_sent() {
    let suite = common::spawn().await;
    let (patient, provider, staff, conversation) = suite.care().await;
    let mut api = suite.public().await;
    api.block_sender(keyed(
        &staff,
        BlockSenderRequest {
            conversation_id: conversation.id.clone(),
            user_id: patient.id.clone(),
        },
        "block-in-storm",
    ))
    .await
    .unwrap();
    let sends = (0..24).map(|i| {
        let sender = if i % 2 == 0 { &patient } else { &provider };
        let mut api = api.clone();
        let req = send_request(
            sender,
            &conversation,
            &format!("mixed-{i}"),
            &format!("line {i}"),
        );
        async move { (i, api.send_message(req).await) }
    });
    let mut seqs = Vec::new();
    for (i, result) in futures::future::join_all(sends).await {
        if i % 2 == 0 {
            let err = result.unwrap_err();
            assert_status(&err, Code::PermissionDenied, Some("SENDER_BLOCKED"));
        } else {
            let m = result.unwrap().into_inner();
            assert_eq!(m.sender_id, provider.id);
            seqs.push(m.seq);
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=12).collect::<Vec<_>>());
    assert_eq!(suite.messaging.count("messages").await, 12);
    suite.shutdown().await;
}
