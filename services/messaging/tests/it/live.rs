//! Live delivery across replicas: a message sent through one messaging instance arrives on
//! streams held on another (same database; LISTEN/NOTIFY with catch-up), resuming misses nothing
//! and repeats nothing, concurrent senders give every subscriber one gap-free order, a lost
//! notification only delays, a slow consumer is cut off with a resumable position, and a
//! participant who is blocked, suspended or leaves the team stops receiving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use carehub_platform::auth::Role;
use carehub_platform::client::ServiceChannel;
use carehub_proto::messaging::v1::messaging_service_client::MessagingServiceClient;
use carehub_proto::messaging::v1::*;
use tonic::{Code, Streaming};

use crate::common::{self, as_user, assert_status, keyed, User};

async fn open(
    api: &mut MessagingServiceClient<ServiceChannel>,
    user: &User,
    conversation: &Conversation,
    after_seq: i64,
) -> Streaming<ConversationEvent> {
    api.stream_events(as_user(
        user,
        StreamEventsRequest {
            conversation_id: conversation.id.clone(),
            after_seq,
        },
    ))
    .await
    .unwrap()
    .into_inner()
}

/// The next event within 10 s.
async fn next(stream: &mut Streaming<ConversationEvent>) -> ConversationEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .expect("the stream is open")
        .expect("an event, not the end")
}

fn body(e: &ConversationEvent) -> Option<&str> {
    match &e.event {
        Some(conversation_event::Event::Message(m)) => Some(m.body.as_str()),
        _ => None,
    }
}

#[tokio::test]
async fn a_message_sent_through_one_instance_arrives_on_a_stream_held_on_the_other() {
    let suite = common::spawn().await;
    let replica = suite.replica().await;
    let (patient, provider, _staff, conversation) = suite.care().await;
    let mut on_replica = suite.public_of(&replica).await;
    let mut stream = open(&mut on_replica, &provider, &conversation, 0).await;
    // Sent through the first instance, after the stream on the second is open.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = suite
        .send(&patient, &conversation, "Is the clinic open Sunday?")
        .await;
    let got = next(&mut stream).await;
    assert_eq!(got.seq, sent.seq);
    assert_eq!(body(&got), Some("Is the clinic open Sunday?"));
    // And the reverse: sent through the replica, received on the first instance.
    let mut on_first = suite.public().await;
    let mut stream2 = open(&mut on_first, &patient, &conversation, sent.seq).await;
    on_replica
        .send_message(as_user(
            &provider,
            SendMessageRequest {
                conversation_id: conversation.id.clone(),
                client_message_id: "reply-1".into(),
                body: "Yes, 9 to 1.".into(),
                attachment_ids: vec![],
            },
        ))
        .await
        .unwrap();
    assert_eq!(body(&next(&mut stream2).await), Some("Yes, 9 to 1."));
    assert_eq!(body(&next(&mut stream).await), Some("Yes, 9 to 1."));
    let _ = replica.server.shutdown().await;
    suite.shutdown().await;
}

#[tokio::test]
async fn a_client_that_resumes_gets_no_gap_and_no_duplicate() {
    let suite = common::spawn().await;
    let (patient, provider, _staff, conversation) = suite.care().await;
    let mut api = suite.public().await;
    let mut stream = open(&mut api, &provider, &conversation, 0).await;
    for i in 1..=3 {
        suite
            .send(&patient, &conversation, &format!("before {i}"))
            .await;
    }
    let mut last = 0;
    for _ in 0..2 {
        last = next(&mut stream).await.seq;
    }
    assert_eq!(last, 2);
    drop(stream);
    // Sent while the client is away.
    for i in 4..=6 {
        suite
            .send(&patient, &conversation, &format!("away {i}"))
            .await;
    }
    let mut resumed = open(&mut api, &provider, &conversation, last).await;
    let mut seqs = Vec::new();
    for _ in 0..4 {
        seqs.push(next(&mut resumed).await.seq);
    }
    assert_eq!(seqs, vec![3, 4, 5, 6]);
    suite.shutdown().await;
}

#[tokio::test]
async fn twenty_concurrent_senders_give_every_subscriber_one_gap_free_order() {
    let suite = common::spawn().await;
    let replica = suite.replica().await;
    let (patient, provider, staff, conversation) = suite.care().await;
    let mut first = suite.public().await;
    let mut second = suite.public_of(&replica).await;
    let mut streams = vec![
        open(&mut first, &patient, &conversation, 0).await,
        open(&mut second, &provider, &conversation, 0).await,
        open(&mut second, &staff, &conversation, 0).await,
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let senders = [patient.clone(), provider.clone(), staff.clone()];
    let sends = (0..20).map(|i| {
        let sender = senders[i % 3].clone();
        // Half through each instance.
        let mut api = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let id = conversation.id.clone();
        async move {
            api.send_message(keyed(
                &sender,
                SendMessageRequest {
                    conversation_id: id,
                    client_message_id: format!("storm-{i}"),
                    body: format!("message {i}"),
                    attachment_ids: vec![],
                },
                &format!("storm-key-{i}"),
            ))
            .await
            .unwrap()
            .into_inner()
        }
    });
    let sent = futures::future::join_all(sends).await;
    let mut sent_seqs: Vec<i64> = sent.iter().map(|m| m.seq).collect();
    sent_seqs.sort_unstable();
    assert_eq!(
        sent_seqs,
        (1..=20).collect::<Vec<_>>(),
        "gap-free and unique"
    );
    let mut orders = Vec::new();
    for s in &mut streams {
        let mut order = Vec::new();
        for _ in 0..20 {
            let e = next(s).await;
            order.push((e.seq, body(&e).map(str::to_owned)));
        }
        orders.push(order);
    }
    assert_eq!(
        orders[0].iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(orders[0], orders[1], "one order on every subscriber");
    assert_eq!(orders[1], orders[2], "one order on every subscriber");
    let _ = replica.server.shutdown().await;
    suite.shutdown().await;
}

#[tokio::test]
async fn a_lost_notification_delays_but_never_loses_a_message() {
    let suite = common::spawn().await;
    let replica = suite.replica().await;
    let (patient, provider, _staff, conversation) = suite.care().await;
    // The stream is held on the replica; the message is sent through the first instance, so
    // only a notification (or the replica's catch-up) can tell the replica about it.
    let mut on_replica = suite.public_of(&replica).await;
    let mut stream = open(&mut on_replica, &provider, &conversation, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hub = &replica.handle.state.hub;
    let catch_ups = hub.catch_ups.load(std::sync::atomic::Ordering::Relaxed);
    let heard = hub.notifications.load(std::sync::atomic::Ordering::Relaxed);
    hub.drop_next_notifications(1);
    let sent = suite
        .send(&patient, &conversation, "lost in the network")
        .await;
    let got = next(&mut stream).await;
    assert_eq!(
        (got.seq, body(&got)),
        (sent.seq, Some("lost in the network"))
    );
    assert_eq!(
        hub.notifications.load(std::sync::atomic::Ordering::Relaxed),
        heard,
        "the notification was lost"
    );
    assert!(
        hub.catch_ups.load(std::sync::atomic::Ordering::Relaxed) > catch_ups,
        "delivered by a catch-up round"
    );
    let _ = replica.server.shutdown().await;
    suite.shutdown().await;
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_with_a_position_to_resume_from() {
    let suite = common::spawn_with(|c| {
        c.messaging.stream_buffer = 16;
        c.messaging.slow_consumer_ms = 100;
    })
    .await;
    let (patient, provider, _staff, conversation) = suite.care().await;
    // 4 MB in all: more than the buffer and the HTTP/2 windows hold.
    for i in 0..400 {
        suite
            .send(
                &patient,
                &conversation,
                &format!("{i} {}", "x".repeat(9_900)),
            )
            .await;
    }
    let mut api = suite.public().await;
    let mut stream = open(&mut api, &provider, &conversation, 0).await;
    // The client reads nothing for a while: the buffer and the HTTP/2 window fill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut seen = Vec::new();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream answers")
        {
            Ok(Some(e)) => seen.push(e.seq),
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_status(&end, Code::Aborted, Some("STREAM_LAGGING"));
    let resume: i64 = end
        .metadata()
        .get("resume-after-seq")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("resume-after-seq");
    assert!(resume < 400, "cut off before the end ({resume})");
    assert_eq!(
        seen,
        (1..=resume).collect::<Vec<_>>(),
        "everything up to the position"
    );
    let mut again = open(&mut api, &provider, &conversation, resume).await;
    assert_eq!(
        next(&mut again).await.seq,
        resume + 1,
        "resumes right after it"
    );
    suite.shutdown().await;
}

#[tokio::test]
async fn blocked_and_departed_participants_stop_receiving_on_every_replica() {
    let suite = common::spawn().await;
    let replica = suite.replica().await;
    let (patient, provider, staff, conversation) = suite.care().await;
    let reviewer = suite.user(Role::Staff, "reviewer").await;
    let mut first = suite.public().await;
    let mut second = suite.public_of(&replica).await;
    let mut patient_stream = open(&mut second, &patient, &conversation, 0).await;
    let mut provider_stream = open(&mut second, &provider, &conversation, 0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Staff block the patient through the first instance: the stream on the second closes.
    first
        .block_sender(as_user(
            &reviewer,
            BlockSenderRequest {
                conversation_id: conversation.id.clone(),
                user_id: patient.id.clone(),
            },
        ))
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), patient_stream.message())
        .await
        .expect("closed within 10 s")
        .unwrap_err();
    assert_status(&end, Code::PermissionDenied, Some("SENDER_BLOCKED"));
    let err = first
        .send_message(as_user(
            &patient,
            SendMessageRequest {
                conversation_id: conversation.id.clone(),
                client_message_id: "blocked-1".into(),
                body: "hello?".into(),
                attachment_ids: vec![],
            },
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, Some("SENDER_BLOCKED"));
    // The provider leaves the team: the next event is not delivered to them.
    suite.leave_team(&patient, &provider).await;
    replica
        .handle
        .state
        .teams
        .forget(patient.id.parse().unwrap());
    suite
        .send(&staff, &conversation, "Dr. Lee has moved on")
        .await;
    let end = tokio::time::timeout(Duration::from_secs(10), provider_stream.message())
        .await
        .expect("closed within 10 s")
        .unwrap_err();
    assert_status(&end, Code::PermissionDenied, Some("NOT_A_PARTICIPANT"));
    let _ = replica.server.shutdown().await;
    suite.shutdown().await;
}
