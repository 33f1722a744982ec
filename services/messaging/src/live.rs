//! Live delivery across replicas. A change that adds an event to a conversation is announced
//! once it committed ([`Hub::published`]): at once to this replica's streams, and to the others
//! with `pg_notify` on [`CHANNEL`] (`e:<conversation>:<seq>`), sent in batches from one
//! connection outside the business transactions — a NOTIFY inside them would take PostgreSQL's
//! database-wide notify lock at every commit and serialize all sends (measured: 1 295 sends/s
//! with it, see the commit). A block or an account suspension announces a kick
//! (`k:<user>[:<conversation>]`) in its own transaction: rare, and it must not be lost. Each replica keeps one listening
//! connection and a [`Hub`]: streams subscribe to their conversation's newest sequence number
//! (a `watch`) and to kicks, and read what they have not delivered from the database. The
//! notification only wakes them: what is delivered always comes from the table, so a lost
//! notification delays but never loses or reorders anything. Every `catch_up` interval (and
//! after the listening connection was lost) the hub reads the newest sequence numbers of the
//! conversations it streams and the blocks and suspensions of the last moments, and wakes or
//! kicks from those.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

use crate::store::CHANNEL;

/// Kicks that may wait for slow streams before the oldest are dropped (a stream that misses a
/// kick is still refused at its next check: blocks and account states are read at open).
const KICK_BACKLOG: usize = 1024;
/// Announcements waiting for the notifier; beyond it they are dropped (the catch-up delivers
/// what a lost announcement would have woken).
const OUTGOING_BACKLOG: usize = 10_000;
/// Announcements one NOTIFY round sends at most.
const OUTGOING_BATCH: usize = 500;

/// How far back the catch-up looks for blocks and suspensions it may have missed: a change
/// committed up to this long after its transaction took `now()` is still found.
const KICK_LOOKBACK_SECS: i64 = 30;

/// A participant to be cut off: everywhere, or in one conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kick {
    pub user: Uuid,
    pub conversation: Option<Uuid>,
}

impl Kick {
    /// Whether a stream of `user` in `conversation` must close.
    pub fn hits(&self, user: Uuid, conversation: Uuid) -> bool {
        self.user == user && self.conversation.is_none_or(|c| c == conversation)
    }
}

/// One replica's subscriptions.
pub struct Hub {
    conversations: Mutex<HashMap<Uuid, watch::Sender<i64>>>,
    kicks: broadcast::Sender<Kick>,
    /// Turns true when the replica starts draining: every stream ends, resumable elsewhere.
    closing: watch::Sender<bool>,
    /// Announcements of committed events, for the notifier task ([`spawn`]).
    outgoing: mpsc::Sender<String>,
    outgoing_rx: Mutex<Option<mpsc::Receiver<String>>>,
    /// Test hook: notifications to ignore, as if the network had lost them.
    drop_next: AtomicUsize,
    /// Notifications handled and catch-up rounds run (for `/metrics` and tests).
    pub notifications: AtomicU64,
    pub catch_ups: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        let (outgoing, outgoing_rx) = mpsc::channel(OUTGOING_BACKLOG);
        Hub {
            outgoing,
            outgoing_rx: Mutex::new(Some(outgoing_rx)),
            conversations: Mutex::new(HashMap::new()),
            kicks: broadcast::channel(KICK_BACKLOG).0,
            closing: watch::channel(false).0,
            drop_next: AtomicUsize::new(0),
            notifications: AtomicU64::new(0),
            catch_ups: AtomicU64::new(0),
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, watch::Sender<i64>>> {
        // The map stays valid whatever panicked while holding it.
        self.conversations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The newest sequence number of `conversation` this replica knows of, changing as events
    /// are announced; and the kicks.
    pub fn subscribe(
        &self,
        conversation: Uuid,
    ) -> (watch::Receiver<i64>, broadcast::Receiver<Kick>) {
        let rx = self
            .lock()
            .entry(conversation)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        (rx, self.kicks.subscribe())
    }

    /// Whether (and when) this replica is closing its streams.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends every stream of this replica (the server is draining).
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }

    /// Event `seq` of `conversation` committed here: this replica's streams wake now, the
    /// others' with the next NOTIFY round.
    pub fn published(&self, conversation: Uuid, seq: i64) {
        self.announce(conversation, seq);
        // A full backlog drops the announcement: the others' catch-up delivers it.
        let _ = self.outgoing.try_send(format!("e:{conversation}:{seq}"));
    }

    /// `conversation` has reached `seq`.
    pub fn announce(&self, conversation: Uuid, seq: i64) {
        if let Some(tx) = self.lock().get(&conversation) {
            tx.send_if_modified(|known| {
                let newer = seq > *known;
                if newer {
                    *known = seq;
                }
                newer
            });
        }
    }

    pub fn kick(&self, kick: Kick) {
        // No receiver is fine: no stream to close here.
        let _ = self.kicks.send(kick);
    }

    /// Test hook: the next `n` notifications this replica receives are ignored, as if lost.
    pub fn drop_next_notifications(&self, n: usize) {
        self.drop_next.store(n, Ordering::SeqCst);
    }

    /// Conversations with a live stream here; forgets those whose streams all ended.
    fn streamed(&self) -> Vec<Uuid> {
        let mut map = self.lock();
        map.retain(|_, tx| tx.receiver_count() > 0);
        map.keys().copied().collect()
    }

    /// Applies one notification payload.
    fn apply(&self, payload: &str) {
        if self
            .drop_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            tracing::info!("test hook: a notification dropped on purpose");
            return;
        }
        self.notifications.fetch_add(1, Ordering::Relaxed);
        let mut parts = payload.split(':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("e"), Some(c), Some(seq)) => {
                if let (Ok(c), Ok(seq)) = (c.parse(), seq.parse()) {
                    self.announce(c, seq);
                }
            }
            (Some("k"), Some(user), conversation) => {
                if let Ok(user) = user.parse() {
                    self.kick(Kick {
                        user,
                        conversation: conversation.and_then(|c| c.parse().ok()),
                    });
                }
            }
            _ => tracing::warn!("unrecognized notification on the messaging channel"),
        }
    }

    /// Reads what notifications may have missed: the newest sequence numbers of the streamed
    /// conversations, and blocks and suspensions since `since`. The database's clock of this
    /// round, for the next one.
    async fn catch_up(
        &self,
        pool: &PgPool,
        since: Option<DateTime<Utc>>,
    ) -> sqlx::Result<DateTime<Utc>> {
        self.catch_ups.fetch_add(1, Ordering::Relaxed);
        let ids = self.streamed();
        let mut conn = pool.acquire().await?;
        let (now,): (DateTime<Utc>,) = sqlx::query_as("SELECT now()").fetch_one(&mut *conn).await?;
        if !ids.is_empty() {
            let rows: Vec<(Uuid, i64)> =
                sqlx::query_as("SELECT id, last_seq FROM conversations WHERE id = ANY($1)")
                    .bind(&ids)
                    .fetch_all(&mut *conn)
                    .await?;
            for (id, seq) in rows {
                self.announce(id, seq);
            }
        }
        if let Some(since) = since {
            let since = since - chrono::Duration::seconds(KICK_LOOKBACK_SECS);
            let kicks: Vec<(Uuid, Option<Uuid>)> = sqlx::query_as(
                "SELECT user_id, conversation_id FROM blocks
                  WHERE lifted_at IS NULL AND created_at > $1
                 UNION ALL
                 SELECT user_id, NULL FROM account_states WHERE NOT active AND changed_at > $1",
            )
            .bind(since)
            .fetch_all(&mut *conn)
            .await?;
            for (user, conversation) in kicks {
                self.kick(Kick { user, conversation });
            }
        }
        Ok(now)
    }
}

/// Sends the announcements of committed events to every replica: whatever waits, in one
/// statement (one NOTIFY transaction per round, so one notify-lock acquisition for many events).
async fn notify_rounds(mut rx: mpsc::Receiver<String>, pool: PgPool) {
    let mut batch = Vec::with_capacity(OUTGOING_BATCH);
    while rx.recv_many(&mut batch, OUTGOING_BATCH).await > 0 {
        let sent = sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(CHANNEL)
            .bind(&batch)
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            // The other replicas' catch-up delivers these events a little later.
            tracing::warn!(error = %e, lost = batch.len(), "announcements not sent");
        }
        batch.clear();
    }
}

/// Keeps `hub` fed: announces what committed here, listens on the channel (reconnecting when
/// the connection drops) and catches up every `every`. Runs until the process ends.
pub fn spawn(hub: Arc<Hub>, pool: PgPool, every: Duration) {
    let outgoing = hub
        .outgoing_rx
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(rx) = outgoing {
        tokio::spawn(notify_rounds(rx, pool.clone()));
    }
    tokio::spawn(async move {
        let mut since = None;
        loop {
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "messaging cannot listen for events; retrying");
                    tokio::time::sleep(every).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %e, "messaging cannot listen for events; retrying");
                tokio::time::sleep(every).await;
                continue;
            }
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    received = listener.try_recv() => match received {
                        Ok(Some(n)) => hub.apply(n.payload()),
                        // The connection was lost and re-established: anything announced
                        // meanwhile is gone, so catch up at once.
                        Ok(None) => {
                            if let Ok(now) = hub.catch_up(&pool, since).await {
                                since = Some(now);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "messaging lost its listening connection");
                            break;
                        }
                    },
                    _ = tick.tick() => match hub.catch_up(&pool, since).await {
                        Ok(now) => since = Some(now),
                        Err(e) => tracing::warn!(error = %e, "messaging catch-up failed"),
                    },
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn notifications_wake_subscribers_only_forwards_and_kicks_reach_the_right_streams() {
        let hub = Hub::default();
        let (c, other, user) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (mut rx, mut kicks) = hub.subscribe(c);
        hub.apply(&format!("e:{c}:3"));
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 3);
        // An older announcement (a catch-up racing a notification) never moves it back.
        hub.apply(&format!("e:{c}:2"));
        assert!(!rx.has_changed().unwrap());
        // Another conversation's event wakes nobody here.
        hub.apply(&format!("e:{other}:9"));
        assert!(!rx.has_changed().unwrap());
        hub.apply(&format!("k:{user}:{c}"));
        let k = kicks.try_recv().unwrap();
        assert!(k.hits(user, c));
        assert!(!k.hits(user, other));
        assert!(!k.hits(Uuid::now_v7(), c));
        hub.apply(&format!("k:{user}"));
        assert!(kicks.try_recv().unwrap().hits(user, other));
        // The test hook loses exactly the notifications asked for.
        hub.drop_next_notifications(1);
        hub.apply(&format!("e:{c}:4"));
        assert!(!rx.has_changed().unwrap());
        hub.apply(&format!("e:{c}:5"));
        assert_eq!(*rx.borrow_and_update(), 5);
        hub.apply("garbage");
        drop(rx);
        assert!(
            hub.streamed().is_empty(),
            "a conversation nobody streams is forgotten"
        );
    }
}
