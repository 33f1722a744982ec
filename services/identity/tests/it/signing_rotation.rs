#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Signing-key rotation: a new key is published before it signs (for the configured lead time,
//! counted from when a replica first saw it), and the replaced key stays published — so its
//! tokens keep verifying — until every token it signed has expired.
//!
//! Time is moved by back-dating `signing_key_versions.first_seen_at`, not by waiting.

use crate::common;

use std::collections::BTreeSet;

use carehub_platform::jwt;
use carehub_platform::keys::KeyName;
use carehub_proto::identity::v1::*;
use common::{assert_status, RotatingKeys, TestApp, PASSWORD};
use tonic::Code;

async fn published(app: &TestApp) -> BTreeSet<String> {
    app.public("gateway")
        .await
        .list_signing_keys(ListSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect()
}

/// Pretends version 2 was first seen `secs` ago, then lets identity reload the schedule.
async fn seen_ago(app: &TestApp, version: i32, secs: i64) {
    sqlx::query(
        "UPDATE signing_key_versions
         SET first_seen_at = now() - make_interval(secs => $2::double precision)
         WHERE version = $1",
    )
    .bind(version)
    .bind(secs as f64)
    .execute(app.pool())
    .await
    .unwrap();
    app.state().keys.sync(app.pool()).await.unwrap();
}

async fn profile(app: &TestApp, token: &str) -> Result<User, tonic::Status> {
    app.public("gateway")
        .await
        .get_profile(app.with_token(GetProfileRequest {}, token))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn rotation_publishes_before_signing_and_retires_after_the_last_token_expired() {
    let keys = RotatingKeys::new();
    let app = common::spawn_with_keys(keys.clone(), |c| {
        c.identity.signing_key_lead_secs = 600;
        c.identity.access_token_ttl_secs = 600;
    })
    .await;
    app.register_patient("rita@example.org", PASSWORD).await;
    let old = app.login("rita@example.org", PASSWORD).await.access_token;
    let kid1 = jwt::key_id(&old).unwrap();
    assert_eq!(published(&app).await, BTreeSet::from([kid1.clone()]));

    // Rotated in the key source and picked up: published at once, not yet signing.
    assert_eq!(keys.rotate(KeyName::Signing), 2);
    app.state().keys.sync(app.pool()).await.unwrap();
    let both = published(&app).await;
    assert_eq!(both.len(), 2);
    let kid2 = both.iter().find(|k| **k != kid1).unwrap().clone();
    let during_lead = app.login("rita@example.org", PASSWORD).await.access_token;
    assert_eq!(jwt::key_id(&during_lead).unwrap(), kid1);

    // Just before the lead time is over: still the old key.
    seen_ago(&app, 2, 590).await;
    let t = app.login("rita@example.org", PASSWORD).await.access_token;
    assert_eq!(jwt::key_id(&t).unwrap(), kid1);

    // Published for the lead time: the new key signs; the old one stays published.
    seen_ago(&app, 2, 601).await;
    let newer = app.login("rita@example.org", PASSWORD).await.access_token;
    assert_eq!(jwt::key_id(&newer).unwrap(), kid2);
    assert_eq!(published(&app).await, both);
    profile(&app, &old).await.unwrap();
    profile(&app, &newer).await.unwrap();

    // Still within the old key's last token lifetime (600 s + leeway after it stopped signing).
    seen_ago(&app, 2, 601 + 600).await;
    assert_eq!(published(&app).await, both);

    // Every token the old key signed has expired: it is no longer published or accepted.
    seen_ago(&app, 2, 601 + 600 + jwt::LEEWAY_SECS + 1).await;
    assert_eq!(published(&app).await, BTreeSet::from([kid2.clone()]));
    let e = profile(&app, &old).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("UNAUTHENTICATED_TOKEN"));
    profile(&app, &newer).await.unwrap();
    app.shutdown().await;
}

#[tokio::test]
async fn replicas_agree_on_when_a_key_was_first_seen() {
    let keys = RotatingKeys::new();
    let app = common::spawn_with_keys(keys.clone(), |_| {}).await;
    keys.rotate(KeyName::Signing);
    let state = app.state();
    state.keys.sync(app.pool()).await.unwrap();
    let first: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT first_seen_at FROM signing_key_versions WHERE version = 2")
            .fetch_one(app.pool())
            .await
            .unwrap();
    // A second replica (another SigningKeys over the same database) seeing it later keeps the
    // first sighting, so all replicas switch at the same moment.
    let other = carehub_identity::keys::SigningKeys::new(
        keys.clone(),
        chrono::Duration::seconds(600),
        chrono::Duration::seconds(630),
    );
    other.sync(app.pool()).await.unwrap();
    let again: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT first_seen_at FROM signing_key_versions WHERE version = 2")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(first, again);
    assert_eq!(
        other.current().unwrap().kid,
        state.keys.current().unwrap().kid
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_lagging_replica_publishes_the_new_key_and_stops_signing_with_the_old_one() {
    use carehub_identity::keys::SigningKeys;
    use carehub_platform::keys::{KeyError, KeySource, StaticKeys};
    use std::sync::Arc;

    let keys = RotatingKeys::new();
    let app = common::spawn_with_keys(keys.clone(), |c| {
        c.identity.signing_key_lead_secs = 600;
        c.identity.access_token_ttl_secs = 600;
    })
    .await;
    // A replica whose key source never caught up with the rotation (Vault unreachable).
    let only_v1 = keys.versions(KeyName::Signing).unwrap().as_ref().clone();
    let lagging = SigningKeys::new(
        Arc::new(StaticKeys::default().with(KeyName::Signing, only_v1)),
        chrono::Duration::seconds(600),
        chrono::Duration::seconds(630),
    );
    lagging.sync(app.pool()).await.unwrap();
    assert_eq!(keys.rotate(KeyName::Signing), 2);
    app.state().keys.sync(app.pool()).await.unwrap();
    lagging.sync(app.pool()).await.unwrap();

    // It publishes what the up-to-date replicas publish, version 2 included.
    let lagging_kids = |k: &SigningKeys| -> BTreeSet<String> {
        k.published().into_iter().map(|p| p.kid).collect()
    };
    assert_eq!(lagging_kids(&lagging), published(&app).await);
    assert_eq!(lagging_kids(&lagging).len(), 2);
    assert_eq!(
        lagging.current().unwrap().version,
        1,
        "within the lead time"
    );

    // When version 2 is due, version 1 stops signing on every replica: the lagging one refuses
    // rather than issue tokens that would outlive their published key.
    seen_ago(&app, 2, 601).await;
    lagging.sync(app.pool()).await.unwrap();
    assert!(matches!(
        lagging.current(),
        Err(KeyError::Unavailable(KeyName::Signing))
    ));
    assert_eq!(app.state().keys.current().unwrap().version, 2);
    app.shutdown().await;
}
