//! PostgreSQL: pool, embedded migrations, and a database per test.
//!
//! Each service owns one database. The platform's own tables (idempotency keys, later audit)
//! live in the `carehub_platform` schema of that database with their own migration history, so
//! that service migrations and platform migrations never collide.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::DatabaseConfig;

/// The platform's migrations, applied to every service database.
pub static PLATFORM_MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Schema holding the platform's tables.
pub const PLATFORM_SCHEMA: &str = "carehub_platform";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("server.database.url is not set")]
    MissingUrl,
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Opens the service's pool.
pub async fn connect(cfg: &DatabaseConfig) -> Result<PgPool, DbError> {
    let url = cfg.url.as_ref().ok_or(DbError::MissingUrl)?;
    let options: PgConnectOptions = url.expose_secret().parse()?;
    let options = options.log_statements(tracing::log::LevelFilter::Trace);
    Ok(pool_options(cfg.max_connections, cfg.min_connections)
        .acquire_timeout(Duration::from_secs(cfg.acquire_timeout_secs))
        .after_connect(|_, _| {
            Box::pin(async {
                crate::stats::db_connection_opened();
                Ok(())
            })
        })
        .connect_with(options)
        .await?)
}

/// A pooled connection idle for longer than this is pinged before it is handed out.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The pool settings every service database uses: `max` connections, `min` of them kept open.
///
/// sqlx pings every idle connection before handing it out by default: one more round trip, and
/// a wake-up of its backend, on every acquire — on a busy service that is most of the cost of a
/// short query (two of them per audited read). Like HikariCP's bypass window, only a connection
/// idle for over [`PING_AFTER_IDLE`] is pinged here: one the server or a proxy may have closed
/// meanwhile (a restart, a failover, an idle timeout) is dropped and replaced before use, while
/// one that was just returned goes straight back to work.
pub fn pool_options(max: u32, min: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(min.min(max))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// The database pool gauges: connections open, idle, in use, and the configured maximum.
pub const POOL_METRICS: [(&str, &str); 4] = [
    (
        "carehub_db_pool_connections",
        "Connections the pool holds open.",
    ),
    (
        "carehub_db_pool_idle_connections",
        "Open connections waiting in the pool.",
    ),
    (
        "carehub_db_pool_in_use_connections",
        "Connections checked out of the pool.",
    ),
    (
        "carehub_db_pool_max_connections",
        "The most connections the pool opens (server.database.max_connections).",
    ),
];

/// Open, idle, in-use and maximum connections of `pool`, as the gauges of [`POOL_METRICS`].
pub fn pool_occupancy(pool: &PgPool) -> [f64; 4] {
    let size = pool.size();
    let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX).min(size);
    [
        f64::from(size),
        f64::from(idle),
        f64::from(size - idle),
        f64::from(pool.options().get_max_connections()),
    ]
}

/// Exports the pool gauges of [`POOL_METRICS`], read at every scrape: saturation is in use over
/// maximum.
pub fn export_pool_metrics(metrics: &crate::admin::Metrics, pool: &PgPool) {
    for (name, help) in POOL_METRICS {
        metrics.describe(name, crate::admin::MetricKind::Gauge, help);
    }
    let pool = pool.clone();
    metrics.add_collector(std::sync::Arc::new(move |m: &crate::admin::Metrics| {
        for ((name, _), value) in POOL_METRICS.iter().zip(pool_occupancy(&pool)) {
            m.set_gauge(name, &[], value);
        }
    }));
}

/// Applies the platform migrations (in their own schema) and then the service's.
pub async fn migrate(pool: &PgPool, service: &Migrator) -> Result<(), DbError> {
    let mut conn = pool.acquire().await?;
    // Serializes concurrent migrators (several replicas starting at once) on this database.
    sqlx::query("SELECT pg_advisory_lock(7340211)")
        .execute(&mut *conn)
        .await?;
    let result = async {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {PLATFORM_SCHEMA}"))
            .execute(&mut *conn)
            .await?;
        sqlx::query(&format!("SET search_path TO {PLATFORM_SCHEMA}"))
            .execute(&mut *conn)
            .await?;
        PLATFORM_MIGRATOR.run(&mut *conn).await?;
        sqlx::query("SET search_path TO public")
            .execute(&mut *conn)
            .await?;
        service.run(&mut *conn).await?;
        Ok::<(), DbError>(())
    }
    .await;
    sqlx::query("RESET search_path").execute(&mut *conn).await?;
    sqlx::query("SELECT pg_advisory_unlock(7340211)")
        .execute(&mut *conn)
        .await?;
    result
}

/// The group role the platform migration grants the application's privileges to in database
/// `database`: DML on the service's tables, but no UPDATE, DELETE or TRUNCATE on the audit trail.
pub fn app_role(database: &str) -> String {
    format!("{database}_app")
}

/// Creates database `name` on the server of `admin_url` unless it exists.
pub async fn create_database_if_missing(admin_url: &str, name: &str) -> Result<(), DbError> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE \"{}\"", name.replace('"', "")))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}

/// Replaces the database name in a `postgres://` URL.
pub fn url_with_database(url: &str, database: &str) -> Result<String, DbError> {
    let options: PgConnectOptions = url.parse()?;
    let options = options.database(database);
    Ok(options.to_url_lossy().to_string())
}

/// A fresh database per test, created from `DATABASE_URL` (default: the local Postgres),
/// migrated, and dropped when [`TestDatabase::drop_database`] runs (tests call it at the end;
/// a crashed test leaves a `carehub_test_*` database that the test script sweeps).
pub struct TestDatabase {
    pub pool: PgPool,
    pub url: SecretString,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn new(service: &Migrator) -> Result<Self, DbError> {
        let base = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let admin_url = url_with_database(&base, "postgres")?;
        let name = format!("carehub_test_{}", uuid::Uuid::new_v4().simple());
        create_database_if_missing(&admin_url, &name).await?;
        let url = url_with_database(&base, &name)?;
        let pool = connect(&DatabaseConfig {
            url: Some(SecretString::from(url.clone())),
            max_connections: 20,
            ..DatabaseConfig::default()
        })
        .await?;
        migrate(&pool, service).await?;
        Ok(Self {
            pool,
            url: SecretString::from(url),
            name,
            admin_url,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn drop_database(self) -> Result<(), DbError> {
        self.pool.close().await;
        let mut conn = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await?;
        // The application role the platform migration made for this database.
        sqlx::query(&format!("DROP ROLE IF EXISTS \"{}\"", app_role(&self.name)))
            .execute(&mut conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn pool_gauges_render_from_startup_with_the_configured_maximum() {
        // Lazy: no connection is opened, so the pool is empty but its maximum is known.
        let pool = PgPoolOptions::new()
            .max_connections(7)
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        assert_eq!(pool_occupancy(&pool), [0.0, 0.0, 0.0, 7.0]);
        let metrics = crate::admin::Metrics::new("records");
        export_pool_metrics(&metrics, &pool);
        let text = metrics.render();
        for line in [
            "# TYPE carehub_db_pool_connections gauge\ncarehub_db_pool_connections{service=\"records\"} 0\n",
            "# TYPE carehub_db_pool_idle_connections gauge\ncarehub_db_pool_idle_connections{service=\"records\"} 0\n",
            "# TYPE carehub_db_pool_in_use_connections gauge\ncarehub_db_pool_in_use_connections{service=\"records\"} 0\n",
            "# TYPE carehub_db_pool_max_connections gauge\ncarehub_db_pool_max_connections{service=\"records\"} 7\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in {text}");
        }
    }
}
