//! A throwaway database per test on the Postgres at `DATABASE_URL` (default the local one).

use carehub_platform::db::TestDatabase;
use sqlx::migrate::Migrator;
use sqlx::PgPool;

/// A fresh, migrated database (`carehub_test_<uuid>`); [`TestDb::drop`] removes it and its
/// application role. A crashed test leaves it behind for `scripts/test.sh` to sweep.
pub struct TestDb {
    inner: Option<TestDatabase>,
    pool: PgPool,
}

impl TestDb {
    /// Creates the database and runs the platform's and `migrator`'s migrations.
    pub async fn new(migrator: &Migrator) -> TestDb {
        let inner = TestDatabase::new(migrator)
            .await
            .expect("creating the test database (is Postgres at DATABASE_URL up?)");
        TestDb {
            pool: inner.pool.clone(),
            inner: Some(inner),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The database's URL (secret: it may carry a password).
    pub fn url(&self) -> &secrecy::SecretString {
        &self.inner.as_ref().expect("database dropped").url
    }

    pub fn name(&self) -> &str {
        self.inner.as_ref().expect("database dropped").name()
    }

    /// `SELECT count(*) FROM <table>` (table names are test constants).
    pub async fn count(&self, table: &str) -> i64 {
        count(&self.pool, table).await
    }

    /// Drops the database (closing the pool first).
    pub async fn drop(mut self) {
        if let Some(db) = self.inner.take() {
            db.drop_database()
                .await
                .expect("dropping the test database");
        }
    }
}

/// `SELECT count(*) FROM <table>` on `pool` (table names are test constants).
pub async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("count of {table}: {e}"))
}
