//! New-message alerts: a participant with unread messages gets one alert ("You have a new
//! message from your care team", nothing more), the sender none, and no second one until they
//! have read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use carehub_messaging::notify::channels::SandboxMessage;
use carehub_proto::messaging::v1::*;

use crate::common::{self, as_user, Suite, User};

/// What the sandbox channels recorded for `user` (their verified addresses or, for push, their
/// id), after waiting up to 15 s for `n` of them.
async fn alerts_for(suite: &Suite, user: &User, n: usize) -> Vec<SandboxMessage> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sent: Vec<SandboxMessage> = suite
            .messaging
            .handle()
            .state
            .notifications
            .sandbox()
            .sent()
            .into_iter()
            .filter(|m| m.to == user.email || m.to == user.id)
            .collect();
        if sent.len() >= n || Instant::now() > deadline {
            return sent;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn unread_messages_raise_one_alert_per_reader_without_phi() {
    let suite = common::spawn_with(|c| c.messaging.new_message_alert_secs = 0).await;
    let (patient, provider, _staff, conversation) = suite.care().await;
    let first = suite
        .send(
            &patient,
            &conversation,
            "My blood sugar was 300 this morning",
        )
        .await;
    let got = alerts_for(&suite, &provider, 1).await;
    assert!(!got.is_empty(), "the provider is alerted");
    for m in &got {
        assert!(
            !m.body.contains("300") && !m.body.contains("blood") && !m.subject.contains("blood"),
            "no PHI in an alert: {m:?}"
        );
        assert!(m.body.contains("new message"), "{m:?}");
    }
    let per_channel = got.len();
    // The sender is not alerted of their own message.
    assert!(alerts_for(&suite, &patient, 0).await.is_empty());
    // A second message before the provider reads: no second alert.
    suite.send(&patient, &conversation, "and 280 now").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(alerts_for(&suite, &provider, 0).await.len(), per_channel);
    // Once they read, the next message alerts again.
    suite
        .public()
        .await
        .mark_read(as_user(
            &provider,
            MarkReadRequest {
                conversation_id: conversation.id.clone(),
                read_seq: first.seq + 1,
            },
        ))
        .await
        .unwrap();
    suite
        .send(&patient, &conversation, "never mind, it was the meter")
        .await;
    assert_eq!(
        alerts_for(&suite, &provider, 2 * per_channel).await.len(),
        2 * per_channel
    );
    suite.shutdown().await;
}
