//! Group commit of sends. A send's transaction is mostly fixed cost — a round trip per
//! statement, the lock, the commit's WAL flush — so sends wait in process and a writer appends
//! every send waiting in one transaction: one lock statement, one check, one multi-row append
//! and one audit statement for the whole batch. What each send must hold still holds per send:
//! its conversation's row lock to the commit (so events of a conversation commit in sequence
//! order), the checks made after that lock, its own sequence number, its audit event in the
//! same transaction, and its answer only once committed.
//!
//! Sends are spread over [`SHARDS`] writers by conversation, so two batches of one replica
//! never wait for each other's row locks; a batch locks its conversations in id order, so
//! batches of different replicas cannot deadlock. Anything a batch does not settle — a retry of
//! a stored message, the same client message id twice in one batch, a batch that failed — comes
//! back as [`Sent::Alone`], and the caller sends it by itself (`api::messages`), which answers
//! every such case.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use carehub_platform::audit::{self, AuditEvent};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::error::{MessagingError, Result};
use crate::live::Hub;

/// Writers per replica (each holds a pooled connection while it writes). Few, so that
/// batches are large: message-send at 64 in flight, A/B on one machine, made 5 172 and
/// 5 205/s with 2 writers, 4 243 and 4 317/s with 4, 3 109 and 3 086/s with 8 (one made
/// 5 916 and 5 308/s, but would let one slow batch hold up every send of the replica).
pub const SHARDS: usize = 2;
/// Most sends one transaction appends.
pub const MAX_BATCH: usize = 64;
/// Sends waiting per writer before new ones are sent alone.
const BACKLOG: usize = 1024;

/// A send, its body sealed and its event built, ready to append.
pub struct Outgoing {
    pub conversation: Uuid,
    /// A care conversation: the sender joins its participants.
    pub care: bool,
    pub message_id: Uuid,
    pub sender: Uuid,
    pub client_message_id: String,
    pub body: Vec<u8>,
    /// Its `message.send` event, built for the caller (`AuditEvent::caller` captures the
    /// sealer the writer seals its client fields with).
    pub event: AuditEvent,
}

/// What became of a send.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Committed as event `seq` of its conversation.
    Appended { seq: i64, sent_at: DateTime<Utc> },
    /// Not settled by a batch: the caller sends it alone.
    Alone,
}

type Waiting = (Outgoing, oneshot::Sender<Result<Sent>>);

/// The writers of this replica.
pub struct Sends {
    shards: Vec<mpsc::Sender<Waiting>>,
}

impl Sends {
    /// Starts the writers (on the current runtime).
    pub fn spawn(pool: PgPool, hub: Arc<Hub>, alert_after_secs: u32) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                let (tx, rx) = mpsc::channel(BACKLOG);
                tokio::spawn(write_batches(
                    rx,
                    pool.clone(),
                    hub.clone(),
                    alert_after_secs,
                ));
                tx
            })
            .collect();
        Sends { shards }
    }

    /// Appends `send` with the others waiting; returns once committed or refused.
    pub async fn send(&self, send: Outgoing) -> Result<Sent> {
        let shard = &self.shards[shard_of(send.conversation)];
        let (reply, outcome) = oneshot::channel();
        // A full backlog or a writer gone: sent alone.
        if shard.try_send((send, reply)).is_err() {
            return Ok(Sent::Alone);
        }
        outcome.await.unwrap_or(Ok(Sent::Alone))
    }
}

fn shard_of(conversation: Uuid) -> usize {
    (conversation.as_u128() % SHARDS as u128) as usize
}

async fn write_batches(
    mut rx: mpsc::Receiver<Waiting>,
    pool: PgPool,
    hub: Arc<Hub>,
    alert_after_secs: u32,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let sends: Vec<&Outgoing> = batch.iter().map(|(s, _)| s).collect();
        let outcomes = match append(&pool, &sends, alert_after_secs).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                tracing::warn!(error = %e, sends = batch.len(), "a batch of sends failed; each is sent alone");
                batch.iter().map(|_| Ok(Sent::Alone)).collect()
            }
        };
        let mut newest: HashMap<Uuid, i64> = HashMap::new();
        for ((send, reply), outcome) in batch.drain(..).zip(outcomes) {
            if let Ok(Sent::Appended { seq, .. }) = &outcome {
                let n = newest.entry(send.conversation).or_insert(*seq);
                *n = (*n).max(*seq);
            }
            // A caller that gave up no longer listens; its message is committed all the same.
            let _ = reply.send(outcome);
        }
        for (conversation, seq) in newest {
            hub.published(conversation, seq);
        }
    }
}

/// What the checks after the lock found for one send.
struct Found {
    existing: bool,
    blocked: bool,
    inactive: bool,
}

/// Appends `sends` in one transaction; each one's outcome, in order. An error fails them all
/// (nothing is written).
async fn append(
    pool: &PgPool,
    sends: &[&Outgoing],
    alert_after_secs: u32,
) -> std::result::Result<Vec<Result<Sent>>, MessagingError> {
    let mut tx = pool.begin().await?;
    let conversations: Vec<Uuid> = sends
        .iter()
        .map(|s| s.conversation)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    // In id order, so that batches of different replicas take their locks in one order.
    let last: BTreeMap<Uuid, i64> = sqlx::query_as::<_, (Uuid, i64)>(
        "SELECT id, last_seq FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&conversations)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    // After the lock, in a statement of its own (see `store::events::lock`). Scalar
    // subqueries, not EXISTS: a correlated EXISTS may be planned as a hash of the whole table,
    // built again for every batch.
    let found = check(&mut tx, sends).await?;

    let mut next = last.clone();
    let mut keys = HashSet::new();
    let mut outcomes = Vec::with_capacity(sends.len());
    let mut appended: Vec<(&Outgoing, i64)> = Vec::with_capacity(sends.len());
    for (send, found) in sends.iter().zip(found) {
        let Some(seq) = next.get_mut(&send.conversation) else {
            outcomes.push(Some(Err(MessagingError::NotFound {
                what: "conversation",
                id: send.conversation.to_string(),
            })));
            continue;
        };
        let first = keys.insert((send.conversation, send.sender, &send.client_message_id));
        if found.existing || !first {
            // A retry: the stored message is answered by the send alone.
            outcomes.push(Some(Ok(Sent::Alone)));
            continue;
        }
        if found.blocked || found.inactive {
            outcomes.push(Some(Err(MessagingError::SenderBlocked {
                conversation: send.conversation.to_string(),
                user: send.sender.to_string(),
            })));
            continue;
        }
        *seq += 1;
        appended.push((send, *seq));
        outcomes.push(None);
    }
    if appended.is_empty() {
        tx.rollback().await?;
        return Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Ok(Sent::Alone)))
            .collect());
    }
    let sent_at = write(&mut tx, &appended, &next, alert_after_secs).await?;
    let events: Vec<&AuditEvent> = appended.iter().map(|(s, _)| &s.event).collect();
    audit::record_all(&mut tx, &events).await?;
    tx.commit().await?;
    let mut seqs = appended.iter().map(|(_, seq)| *seq);
    Ok(outcomes
        .into_iter()
        .map(|o| match o {
            Some(decided) => decided,
            None => match seqs.next() {
                Some(seq) => Ok(Sent::Appended { seq, sent_at }),
                None => Ok(Sent::Alone),
            },
        })
        .collect())
}

/// For each send: whether its sender already sent this client message id here, is blocked
/// here, or has an account that is not active.
async fn check(conn: &mut sqlx::PgConnection, sends: &[&Outgoing]) -> Result<Vec<Found>> {
    let conversation: Vec<Uuid> = sends.iter().map(|s| s.conversation).collect();
    let sender: Vec<Uuid> = sends.iter().map(|s| s.sender).collect();
    let client: Vec<&str> = sends.iter().map(|s| s.client_message_id.as_str()).collect();
    let rows: Vec<(i64, bool, bool, bool)> = sqlx::query_as(
        "SELECT k.i,
                (SELECT m.id FROM messages m WHERE m.conversation_id = k.c
                    AND m.sender_id = k.s AND m.client_message_id = k.cm) IS NOT NULL,
                (SELECT 1 FROM blocks b WHERE b.conversation_id = k.c
                    AND b.user_id = k.s AND b.lifted_at IS NULL LIMIT 1) IS NOT NULL,
                COALESCE((SELECT NOT a.active FROM account_states a WHERE a.user_id = k.s), false)
           FROM unnest($1::uuid[], $2::uuid[], $3::text[]) WITH ORDINALITY AS k(c, s, cm, i)
          ORDER BY k.i",
    )
    .bind(&conversation)
    .bind(&sender)
    .bind(&client)
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() != sends.len() {
        return Err(MessagingError::Internal(
            "the checks of a batch of sends lost a row".into(),
        ));
    }
    Ok(rows
        .into_iter()
        .map(|(_, existing, blocked, inactive)| Found {
            existing,
            blocked,
            inactive,
        })
        .collect())
}

/// Appends each message as its event, moves each conversation's last sequence number, notes
/// the senders of care conversations as participants and queues the new-message alerts, in
/// one statement; when.
async fn write(
    conn: &mut sqlx::PgConnection,
    appended: &[(&Outgoing, i64)],
    last: &BTreeMap<Uuid, i64>,
    alert_after_secs: u32,
) -> Result<DateTime<Utc>> {
    let id: Vec<Uuid> = appended.iter().map(|(s, _)| s.message_id).collect();
    let conversation: Vec<Uuid> = appended.iter().map(|(s, _)| s.conversation).collect();
    let seq: Vec<i64> = appended.iter().map(|(_, seq)| *seq).collect();
    let sender: Vec<Uuid> = appended.iter().map(|(s, _)| s.sender).collect();
    let client: Vec<&str> = appended
        .iter()
        .map(|(s, _)| s.client_message_id.as_str())
        .collect();
    let body: Vec<&[u8]> = appended.iter().map(|(s, _)| s.body.as_slice()).collect();
    let care: Vec<bool> = appended.iter().map(|(s, _)| s.care).collect();
    let (moved, last_seq): (Vec<Uuid>, Vec<i64>) = last.iter().map(|(c, s)| (*c, *s)).unzip();
    let (sent_at,): (DateTime<Utc>,) = sqlx::query_as(
        "WITH n AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::uuid[],
                                         $5::text[], $6::bytea[], $7::bool[])
                             AS n(id, conversation_id, seq, sender_id, client_message_id, body, care)),
              c AS (UPDATE conversations SET last_seq = u.last_seq, last_activity_at = now()
                      FROM unnest($8::uuid[], $9::bigint[]) AS u(id, last_seq)
                     WHERE conversations.id = u.id AND conversations.last_seq <> u.last_seq),
              m AS (INSERT INTO messages (id, conversation_id, seq, sender_id, client_message_id, body)
                    SELECT id, conversation_id, seq, sender_id, client_message_id, body FROM n),
              e AS (INSERT INTO conversation_events (conversation_id, seq, kind, actor_id, message_id)
                    SELECT conversation_id, seq, 'message', sender_id, id FROM n),
              p AS (INSERT INTO conversation_participants (conversation_id, user_id)
                    SELECT DISTINCT conversation_id, sender_id FROM n WHERE care
                    ON CONFLICT DO NOTHING),
              a AS (INSERT INTO alert_queue (conversation_id, due_at)
                    SELECT DISTINCT conversation_id, now() + make_interval(secs => $10) FROM n
                    ON CONFLICT DO NOTHING)
         SELECT now()",
    )
    .bind(&id)
    .bind(&conversation)
    .bind(&seq)
    .bind(&sender)
    .bind(&client)
    .bind(&body)
    .bind(&care)
    .bind(&moved)
    .bind(&last_seq)
    .bind(f64::from(alert_after_secs))
    .fetch_one(&mut *conn)
    .await?;
    Ok(sent_at)
}
