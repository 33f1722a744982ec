#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The services' pool against a real PostgreSQL: a pooled connection the server closed while it
//! sat idle (a restart, a failover, `pg_terminate_backend`) is found dead and replaced before a
//! query meets it, although connections are no longer pinged on every acquire; and a service
//! that keeps its pool warm has its envelope's key connections opened at start, not on the
//! request path when data-key reservations run out together mid-load.

use carehub_platform::config::DatabaseConfig;
use carehub_platform::db::{self, TestDatabase, PING_AFTER_IDLE};
use secrecy::ExposeSecret as _;
use sqlx::migrate::Migrator;

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

/// A service's pool (`db::connect`, as the services open theirs) on `db`.
async fn service_pool(db: &TestDatabase, max: u32, min: u32) -> sqlx::PgPool {
    db::connect(&DatabaseConfig {
        url: Some(db.url.expose_secret().to_owned().into()),
        max_connections: max,
        min_connections: min,
        ..DatabaseConfig::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_connection_closed_by_the_server_while_idle_is_replaced_before_use() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let pool = service_pool(&db, 1, DatabaseConfig::default().min_connections).await;
    let backend = || sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&pool);
    let first = backend().await.unwrap();

    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(terminated, "the pooled backend {first} was not terminated");
    tokio::time::sleep(PING_AFTER_IDLE + std::time::Duration::from_millis(300)).await;

    // The only connection of the pool is dead: the query succeeds only if it was checked and
    // replaced on the way out of the pool.
    let second = backend().await.expect("the dead connection was handed out");
    assert_ne!(
        second, first,
        "the query ran on the terminated backend's connection"
    );
    assert_eq!(pool.size(), 1);

    pool.close().await;
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_warm_service_pool_gets_its_key_connections_opened_at_start() {
    use std::sync::Arc;

    use carehub_platform::crypto::{CryptoConfig, Envelope};
    use carehub_platform::keys::{KeySource, StaticKeys};

    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let pool = service_pool(&db, 2, 2).await;
    let config = CryptoConfig::default();
    let keys: Arc<dyn KeySource> = Arc::new(StaticKeys::generate());
    let envelope = Envelope::new("records", pool.clone(), keys, config.clone()).unwrap();

    // No key operation yet: the key pool opens its connections by itself, so that none is
    // opened on the request path later.
    let expected = 2 + i64::from(config.key_pool_connections);
    let mut open = 0;
    for _ in 0..50 {
        open = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(db.name())
        .fetch_one(&db.pool)
        .await
        .unwrap()
            // the TestDatabase's own pool (one connection is running this query)
            - i64::from(db.pool.size());
        if open >= expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(open, expected, "service pool and key pool connections open");

    drop(envelope);
    pool.close().await;
    db.drop_database().await.unwrap();
}
