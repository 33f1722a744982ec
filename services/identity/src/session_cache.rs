//! Positive session checks kept in memory, so that an authenticated call to identity costs one
//! database round trip (the handler's) instead of two (the session check, then the handler's).
//!
//! # What is cached, and what is never answered from memory
//!
//! An entry holds what [`crate::store::sessions::session_check`] read of a session and its user
//! (user id, role, status, created_at, expires_at, last_seen_at, revoked_at,
//! sessions_revoked_before) and the database's clock at the read. Only a check that *passed* is
//! stored, and memory only ever answers "this session is usable": the verifier applies the same
//! rules ([`crate::token::session_verdict`]) to the entry, with the database's clock advanced by
//! the monotonic time since the read began (so never behind the database's clock), and anything
//! that would reject (expired, idle past the role's timeout, revoked, account not active, another
//! user, a token issued before the user's sessions were revoked) goes back to the database. A
//! stale entry can therefore cost an extra round trip, never a wrong rejection; and since every
//! change that makes a usable session unusable evicts (below), it cannot make a wrong acceptance
//! in the replica that made the change either.
//!
//! - An entry answers for at most `identity.session_cache_ttl_ms` (default 1 000 ms) after its
//!   read began, and never past the session's `expires_at` (nor past its idle deadline as of the
//!   read: `last_seen_at` only moves forward, so the cached one ends an entry early, never late).
//! - Revocations in this replica (logout, RevokeSession, a reused refresh token, an admin
//!   suspension or termination, a password change or reset) evict the session, or every session
//!   of the user, right after their transaction ends and before the RPC answers. A check whose
//!   read began before an eviction does not store its answer ([`Ticket`]), so a read racing with
//!   the revocation cannot put the old state back.
//! - Other replicas: the same changes `pg_notify('identity_revocations', ...)` in their
//!   transaction ([`notify_session`], [`notify_user`]; delivered when it commits) and every
//!   replica's listener ([`start_listener`]) evicts, typically within milliseconds. When the
//!   listener is down or disabled (`identity.session_cache_listen = false`), or a notification
//!   is lost while it reconnects (it clears the whole cache when it notices), an entry still
//!   answers for at most `session_cache_ttl_ms` after its read began, so **another replica's
//!   revocation is seen by this one at most `session_cache_ttl_ms` after it commits** (1 s by
//!   default). Changes made straight in the database (not through identity) are seen within the
//!   same bound.
//! - Memory is bounded: at most `identity.session_cache_max_entries` entries (default 100 000,
//!   about 150 bytes each); when a shard is full, expired entries are swept (at most once per
//!   TTL) and otherwise an arbitrary entry is evicted, so a storm of distinct valid tokens only
//!   lowers the hit rate.
//!
//! Metrics: `carehub_identity_session_checks_total{source="memory"|"db"}` (checks answered from
//! memory / that read the database), `carehub_identity_session_cache_entries`, and
//! `carehub_identity_session_cache_evictions_total{reason="full"|"revoked"|"reset"}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use carehub_platform::admin::Metrics;
use carehub_platform::auth::Role;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::store::sessions::SessionCheck;

/// The channel identity's revocations are notified on.
pub const CHANNEL: &str = "identity_revocations";

/// Metric names (see the module documentation).
pub const CHECKS_METRIC: &str = "carehub_identity_session_checks_total";
pub const ENTRIES_METRIC: &str = "carehub_identity_session_cache_entries";
pub const EVICTIONS_METRIC: &str = "carehub_identity_session_cache_evictions_total";

/// Shards: a verification holds one shard's lock for a hash lookup only, so a few suffice on
/// the few cores a replica has.
const MAX_SHARDS: usize = 16;

/// What a session check read, compactly: only checks that passed are kept, and the role is
/// parsed already (an unknown role never passes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionFacts {
    pub user_id: Uuid,
    pub role: Role,
    /// `users.status = 'active'`.
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub sessions_revoked_before: Option<DateTime<Utc>>,
}

impl SessionFacts {
    /// `None` when the user's role is unknown (the verifier answers INTERNAL then).
    pub fn from_check(c: &SessionCheck) -> Option<Self> {
        Some(Self {
            user_id: c.user_id,
            role: Role::parse(&c.role)?,
            active: c.status == "active",
            created_at: c.created_at,
            expires_at: c.expires_at,
            last_seen_at: c.last_seen_at,
            revoked_at: c.revoked_at,
            sessions_revoked_before: c.sessions_revoked_before,
        })
    }
}

/// A cached check.
#[derive(Clone, Debug)]
struct Entry {
    facts: SessionFacts,
    /// The database's clock during the read.
    db_now: DateTime<Utc>,
    /// When the read began (before the query was sent): the database's clock at any later
    /// moment is at most `db_now + (that moment - read_started)`.
    read_started: Instant,
    /// The entry answers until then: `read_started` + min(TTL, time left to `expires_at` and
    /// to the idle deadline as of the read).
    until: Instant,
}

/// A cached check handed to the verifier, with the database's clock estimated from above.
#[derive(Clone, Debug)]
pub struct Cached {
    pub facts: SessionFacts,
    /// Never behind the database's clock at the moment of the lookup.
    pub db_now: DateTime<Utc>,
}

/// Taken before a check's read: [`SessionCache::fill`] stores the answer only if nothing was
/// evicted since.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    generation: u64,
    started: Instant,
}

struct Shard {
    map: HashMap<Uuid, Entry>,
    last_sweep: Option<Instant>,
}

/// The cache (one per replica, in [`crate::AppState`]).
pub struct SessionCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    ttl: Duration,
    /// Bumped by every eviction, before the entries go.
    generation: AtomicU64,
    len: AtomicU64,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("ttl", &self.ttl)
            .field("per_shard", &self.per_shard)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl SessionCache {
    /// A cache answering for `ttl` and holding at most `max_entries` (either 0: nothing is
    /// ever stored).
    pub fn new(ttl: Duration, max_entries: usize, metrics: Option<Arc<Metrics>>) -> Self {
        let shards = max_entries.clamp(1, MAX_SHARDS);
        // Rounded down: the total never exceeds `max_entries`.
        let per_shard = if ttl.is_zero() {
            0
        } else {
            max_entries / shards
        };
        Self {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        last_sweep: None,
                    })
                })
                .collect(),
            per_shard,
            ttl,
            generation: AtomicU64::new(0),
            len: AtomicU64::new(0),
            metrics,
        }
    }

    /// Whether anything is ever stored.
    pub fn enabled(&self) -> bool {
        self.per_shard > 0
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        usize::try_from(self.len.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, session_id: Uuid) -> MutexGuard<'_, Shard> {
        // Session ids are UUIDv7: their last bytes are random.
        let b = session_id.as_bytes();
        let i = usize::from(u16::from_le_bytes([b[14], b[15]])) % self.shards.len();
        // A panic while holding a shard cannot leave a map half-updated in a way that matters
        // (at worst an entry is missing): keep serving.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached check of `session_id`, while its entry answers.
    pub fn get(&self, session_id: Uuid) -> Option<Cached> {
        if !self.enabled() {
            return None;
        }
        let now = Instant::now();
        let mut shard = self.shard(session_id);
        let entry = shard.map.get(&session_id)?;
        if now >= entry.until {
            shard.map.remove(&session_id);
            drop(shard);
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.publish_len();
            return None;
        }
        let elapsed = chrono::Duration::from_std(now.duration_since(entry.read_started)).ok()?;
        Some(Cached {
            facts: entry.facts.clone(),
            db_now: entry.db_now + elapsed,
        })
    }

    /// To take right before a session check's read.
    pub fn ticket(&self) -> Ticket {
        Ticket {
            generation: self.generation.load(Ordering::SeqCst),
            started: Instant::now(),
        }
    }

    /// Stores a check that passed, read after `ticket` was taken with the database's clock at
    /// `db_now`; `idle` is the role's idle timeout. Not stored when anything was evicted since
    /// the ticket (the read may predate a revocation), or when the entry would end at once.
    pub fn fill(
        &self,
        ticket: Ticket,
        session_id: Uuid,
        facts: SessionFacts,
        db_now: DateTime<Utc>,
        idle: chrono::Duration,
    ) {
        if !self.enabled() {
            return;
        }
        let left = |deadline: DateTime<Utc>| (deadline - db_now).to_std().unwrap_or_default();
        let life = self
            .ttl
            .min(left(facts.expires_at))
            .min(left(facts.last_seen_at + idle));
        if life.is_zero() {
            return;
        }
        let entry = Entry {
            facts,
            db_now,
            read_started: ticket.started,
            until: ticket.started + life,
        };
        let mut evicted_full = false;
        let mut added = false;
        {
            let mut shard = self.shard(session_id);
            // Checked under the shard's lock: an eviction bumps the generation before it takes
            // the locks, so either it is seen here or the eviction removes this entry after.
            if self.generation.load(Ordering::SeqCst) != ticket.generation {
                return;
            }
            if !shard.map.contains_key(&session_id) && shard.map.len() >= self.per_shard {
                let now = Instant::now();
                if shard
                    .last_sweep
                    .is_none_or(|at| now.duration_since(at) >= self.ttl)
                {
                    shard.last_sweep = Some(now);
                    let before = shard.map.len();
                    shard.map.retain(|_, e| e.until > now);
                    let swept = before - shard.map.len();
                    self.len.fetch_sub(swept as u64, Ordering::Relaxed);
                }
                if shard.map.len() >= self.per_shard {
                    // Full of live entries: any one goes (it is re-read on its next use).
                    if let Some(victim) = shard.map.keys().next().copied() {
                        shard.map.remove(&victim);
                        self.len.fetch_sub(1, Ordering::Relaxed);
                        evicted_full = true;
                    }
                }
            }
            if shard.map.insert(session_id, entry).is_none() {
                self.len.fetch_add(1, Ordering::Relaxed);
                added = true;
            }
        }
        if evicted_full {
            self.count_evictions("full", 1);
        }
        if added || evicted_full {
            self.publish_len();
        }
    }

    /// Forgets `session_id` (it was revoked).
    pub fn evict_session(&self, session_id: Uuid) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let removed = self.shard(session_id).map.remove(&session_id).is_some();
        if removed {
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.count_evictions("revoked", 1);
            self.publish_len();
        }
    }

    /// Forgets every session of `user_id` (sessions revoked, status changed, password changed).
    /// A scan of every entry: revocations are rare next to verifications, and an index by user
    /// would cost memory and work on every fill.
    pub fn evict_user(&self, user_id: Uuid) {
        self.evict_where("revoked", |e| e.facts.user_id == user_id);
    }

    /// Forgets everything (the listener may have missed notifications).
    pub fn clear(&self) {
        self.evict_where("reset", |_| true);
    }

    fn evict_where(&self, reason: &str, doomed: impl Fn(&Entry) -> bool) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut removed = 0u64;
        for i in 0..self.shards.len() {
            let mut shard = self.lock(i);
            let before = shard.map.len();
            shard.map.retain(|_, e| !doomed(e));
            removed += (before - shard.map.len()) as u64;
        }
        if removed > 0 {
            self.len.fetch_sub(removed, Ordering::Relaxed);
            self.count_evictions(reason, removed);
            self.publish_len();
        }
    }

    /// Counts a session check by where it was answered (`"memory"` or `"db"`).
    pub fn count_check(&self, source: &'static str) {
        if let Some(m) = &self.metrics {
            m.inc_counter(CHECKS_METRIC, &[("source", source)], 1.0);
        }
    }

    fn count_evictions(&self, reason: &str, n: u64) {
        if let Some(m) = &self.metrics {
            m.inc_counter(EVICTIONS_METRIC, &[("reason", reason)], n as f64);
        }
    }

    fn publish_len(&self) {
        if let Some(m) = &self.metrics {
            m.set_gauge(ENTRIES_METRIC, &[], self.len() as f64);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Between replicas

/// Tells every replica, when the caller's transaction commits, that `session_id` was revoked.
pub async fn notify_session(conn: &mut PgConnection, session_id: Uuid) -> Result<(), sqlx::Error> {
    notify(conn, &format!("session:{session_id}")).await
}

/// Tells every replica, when the caller's transaction commits, that `user_id`'s sessions or
/// status changed.
pub async fn notify_user(conn: &mut PgConnection, user_id: Uuid) -> Result<(), sqlx::Error> {
    notify(conn, &format!("user:{user_id}")).await
}

async fn notify(conn: &mut PgConnection, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// Applies one notification; false when the payload is not one of ours.
pub fn apply_notification(cache: &SessionCache, payload: &str) -> bool {
    let parsed = payload
        .split_once(':')
        .and_then(|(kind, id)| Some((kind, Uuid::parse_str(id).ok()?)));
    match parsed {
        Some(("session", id)) => cache.evict_session(id),
        Some(("user", id)) => cache.evict_user(id),
        _ => return false,
    }
    true
}

/// Listens on [`CHANNEL`] and evicts what other replicas (and this one) revoke, on a connection
/// of its own (not one of the service pool's), until the cache is dropped. The first LISTEN is
/// awaited (a replica starts serving with its listener up; if it cannot connect it serves
/// anyway and keeps trying). Whenever the connection is lost the listener reconnects and clears
/// the cache, since notifications sent meanwhile are gone; while it cannot listen, entries
/// still end after the TTL.
pub async fn start_listener(cache: &Arc<SessionCache>, pool: &PgPool) {
    let weak: Weak<SessionCache> = Arc::downgrade(cache);
    let options = (*pool.connect_options()).clone();
    let listen_pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|_, _| {
            Box::pin(async {
                carehub_platform::stats::db_connection_opened();
                Ok(())
            })
        })
        .connect_lazy_with(options);
    let first = listen(&listen_pool).await;
    tokio::spawn(async move {
        let mut next = Some(first);
        let mut retry = Duration::from_millis(250);
        loop {
            let attempt = match next.take() {
                Some(a) => a,
                None => listen(&listen_pool).await,
            };
            let Some(cache) = weak.upgrade() else { break };
            let mut listener = match attempt {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "session cache: cannot listen for revocations; entries end after the TTL");
                    drop(cache);
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            // Anything revoked before LISTEN took effect may be cached: start afresh.
            cache.clear();
            drop(cache);
            retry = Duration::from_millis(250);
            loop {
                let received = listener.try_recv().await;
                let Some(cache) = weak.upgrade() else { return };
                match received {
                    Ok(Some(n)) => {
                        if !apply_notification(&cache, n.payload()) {
                            tracing::warn!(
                                payload = n.payload(),
                                "session cache: unknown notification"
                            );
                        }
                    }
                    // Lost and (eagerly) reconnected: notifications in between are gone.
                    Ok(None) => {
                        tracing::warn!(
                            "session cache: revocation listener reconnected; cache cleared"
                        );
                        cache.clear();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "session cache: revocation listener failed; reconnecting");
                        cache.clear();
                        break;
                    }
                }
            }
            tokio::time::sleep(retry).await;
        }
    });
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut l = PgListener::connect_with(pool).await?;
    l.listen(CHANNEL).await?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn facts(user_id: Uuid, expires_in: i64) -> (SessionFacts, DateTime<Utc>) {
        let now = Utc::now();
        (
            SessionFacts {
                user_id,
                role: Role::Patient,
                active: true,
                created_at: now,
                expires_at: now + chrono::Duration::seconds(expires_in),
                last_seen_at: now,
                revoked_at: None,
                sessions_revoked_before: None,
            },
            now,
        )
    }

    const IDLE: chrono::Duration = chrono::Duration::seconds(1800);

    #[test]
    fn a_fill_is_served_and_evictions_forget_it() {
        let cache = SessionCache::new(Duration::from_secs(5), 100, None);
        let (sid, uid) = (Uuid::now_v7(), Uuid::now_v7());
        let (f, now) = facts(uid, 3600);
        cache.fill(cache.ticket(), sid, f.clone(), now, IDLE);
        let got = cache.get(sid).expect("cached");
        assert_eq!(got.facts, f);
        assert!(got.db_now >= now);
        cache.evict_session(sid);
        assert!(cache.get(sid).is_none());
        cache.fill(cache.ticket(), sid, f, now, IDLE);
        cache.evict_user(uid);
        assert!(cache.get(sid).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn a_read_that_began_before_an_eviction_is_not_stored() {
        let cache = SessionCache::new(Duration::from_secs(5), 100, None);
        let (sid, uid) = (Uuid::now_v7(), Uuid::now_v7());
        let (f, now) = facts(uid, 3600);
        let ticket = cache.ticket();
        // The revocation commits and evicts while the read is in flight.
        cache.evict_user(Uuid::now_v7());
        cache.fill(ticket, sid, f, now, IDLE);
        assert!(cache.get(sid).is_none());
    }

    #[test]
    fn entries_end_at_the_ttl_and_never_outlive_the_session() {
        let cache = SessionCache::new(Duration::from_millis(50), 100, None);
        let (sid, uid) = (Uuid::now_v7(), Uuid::now_v7());
        let (f, now) = facts(uid, 3600);
        cache.fill(cache.ticket(), sid, f, now, IDLE);
        assert!(cache.get(sid).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get(sid).is_none(), "past the TTL");

        let cache = SessionCache::new(Duration::from_secs(60), 100, None);
        let (mut f, now) = facts(uid, 3600);
        f.expires_at = now + chrono::Duration::milliseconds(30);
        cache.fill(cache.ticket(), sid, f, now, IDLE);
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get(sid).is_none(), "past expires_at");

        let (f, now) = facts(uid, 3600);
        cache.fill(
            cache.ticket(),
            sid,
            f,
            now,
            chrono::Duration::milliseconds(30),
        );
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get(sid).is_none(), "past the idle deadline");

        let (f, now) = facts(uid, -1);
        cache.fill(cache.ticket(), sid, f, now, IDLE);
        assert!(cache.is_empty(), "an expired session is never stored");
    }

    #[test]
    fn the_size_is_bounded() {
        let cache = SessionCache::new(Duration::from_secs(60), 10, None);
        let mut last = Uuid::nil();
        for _ in 0..1000 {
            let (f, now) = facts(Uuid::now_v7(), 3600);
            last = Uuid::now_v7();
            cache.fill(cache.ticket(), last, f, now, IDLE);
            assert!(cache.len() <= 10);
        }
        let held: usize = (0..cache.shards.len())
            .map(|i| cache.lock(i).map.len())
            .sum();
        assert_eq!(held, cache.len());
        assert!(
            cache.get(last).is_some(),
            "a full cache still takes new entries"
        );
    }

    #[test]
    fn off_stores_nothing() {
        for cache in [
            SessionCache::new(Duration::ZERO, 100, None),
            SessionCache::new(Duration::from_secs(1), 0, None),
        ] {
            let (f, now) = facts(Uuid::now_v7(), 3600);
            let sid = Uuid::now_v7();
            cache.fill(cache.ticket(), sid, f, now, IDLE);
            assert!(cache.get(sid).is_none());
        }
    }

    #[test]
    fn notifications_evict() {
        let cache = SessionCache::new(Duration::from_secs(5), 100, None);
        let (s1, s2, uid) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (f, now) = facts(uid, 3600);
        cache.fill(cache.ticket(), s1, f.clone(), now, IDLE);
        cache.fill(cache.ticket(), s2, f, now, IDLE);
        assert!(apply_notification(&cache, &format!("session:{s1}")));
        assert!(cache.get(s1).is_none() && cache.get(s2).is_some());
        assert!(apply_notification(&cache, &format!("user:{uid}")));
        assert!(cache.get(s2).is_none());
        assert!(!apply_notification(&cache, "user:not-a-uuid"));
        assert!(!apply_notification(&cache, "other"));
    }
}
