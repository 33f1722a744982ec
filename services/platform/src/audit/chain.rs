//! The hash chain: queueing events in the caller's transaction, the canonical encoding that is
//! hashed, and reading stored rows.
//!
//! Writers take no shared lock: [`record`] inserts into `audit_queue`, which has no sequence
//! number, no hash and no head row, so audited transactions of a database (across all its
//! replicas) commit concurrently. [`super::sequencer`] gives the committed events their place
//! in the chain.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::event::{Action, AuditEvent, ChainedEvent, InvalidEvent, Outcome, Purpose};
use super::seal::{ClientSealer, SealError, SealedClient};

/// `prev_hash` of the first event.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Domain separation: these bytes start every hashed event. v2: the client address and user
/// agent are hashed as their sealed bytes (v1 hashed them in clear).
pub const EVENT_DOMAIN: &[u8] = b"carehub.audit.event.v2\0";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
    #[error("audit storage: {0}")]
    Db(#[from] sqlx::Error),
    #[error("audit row {seq} is unreadable: {reason}")]
    Corrupt { seq: i64, reason: String },
    #[error("audit checkpoint key: {0}")]
    Key(#[from] crate::keys::KeyError),
    #[error("audit sink: {0}")]
    Sink(#[from] std::io::Error),
    /// The client address or user agent could not be sealed (no audit-trail key in scope, or
    /// the key is unavailable): the event is refused rather than stored in clear.
    #[error("audit client fields: {0}")]
    Seal(#[from] SealError),
    #[error("the event carries a client address or user agent but no audit-trail key is in scope to seal it")]
    NoSealer,
}

impl From<AuditError> for tonic::Status {
    fn from(err: AuditError) -> Self {
        match err {
            AuditError::Invalid(e) => {
                tracing::error!(field = e.field, "refused an invalid audit event");
                crate::errors::internal("audit event")
            }
            AuditError::NoSealer => {
                tracing::error!(
                    "an audit event with client fields was recorded outside a sealer's scope"
                );
                crate::errors::internal("audit event")
            }
            other => {
                tracing::error!(error = %other, "audit trail unavailable");
                crate::errors::status(
                    tonic::Code::Unavailable,
                    carehub_proto::common::v1::ErrorReason::Unavailable,
                    "the audit trail is unavailable; retry later",
                )
            }
        }
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_opt_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => buf.push(0),
        Some(s) => {
            buf.push(1);
            put_str(buf, s);
        }
    }
}

fn put_opt_bytes(buf: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => buf.push(0),
        Some(b) => {
            buf.push(1);
            buf.extend_from_slice(&(b.len() as u32).to_be_bytes());
            buf.extend_from_slice(b);
        }
    }
}

fn put_opt_uuid(buf: &mut Vec<u8>, id: Option<Uuid>) {
    match id {
        None => buf.push(0),
        Some(id) => {
            buf.push(1);
            buf.extend_from_slice(id.as_bytes());
        }
    }
}

/// The canonical encoding that is hashed: every field in a fixed order, length-prefixed, with
/// presence bytes for optional fields, so that no two different events encode alike. The
/// sequence number and the previous hash are part of it: moving a row breaks its link. The
/// client address and user agent enter as stored, sealed (`client`): `event.source_ip` and
/// `event.user_agent` are not read, so the chain verifies without the key that opens them.
pub fn canonical_bytes(
    seq: i64,
    event: &AuditEvent,
    client: &SealedClient,
    prev_hash: &[u8],
) -> Vec<u8> {
    let body = body_bytes(event, client);
    let mut buf = Vec::with_capacity(EVENT_DOMAIN.len() + 8 + body.len() + prev_hash.len());
    buf.extend_from_slice(EVENT_DOMAIN);
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&body);
    buf.extend_from_slice(prev_hash);
    buf
}

/// The part of [`canonical_bytes`] between the sequence number and the previous hash: what the
/// event itself says. Public for the load generator's baseline of the append that locked the
/// chain head in every writer's transaction (before the queue), which hashed in Postgres.
pub fn body_bytes(event: &AuditEvent, client: &SealedClient) -> Vec<u8> {
    let mut buf = Vec::with_capacity(512);
    buf.extend_from_slice(event.event_id.as_bytes());
    buf.extend_from_slice(&event.occurred_at.timestamp_micros().to_be_bytes());
    put_str(&mut buf, &event.kind);
    put_str(&mut buf, event.action.as_str());
    put_str(&mut buf, event.outcome.as_str());
    put_opt_str(&mut buf, event.outcome_reason.as_deref());
    put_str(&mut buf, event.purpose.as_str());
    put_opt_uuid(&mut buf, event.actor_user_id);
    put_opt_str(&mut buf, event.actor_role.as_deref());
    put_opt_uuid(&mut buf, event.actor_session_id);
    put_opt_str(&mut buf, event.actor_workload.as_deref());
    put_str(&mut buf, &event.entity_type);
    put_str(&mut buf, &event.entity_id);
    put_opt_uuid(&mut buf, event.subject_id);
    put_opt_bytes(&mut buf, client.source_ip.as_deref());
    put_opt_bytes(&mut buf, client.user_agent.as_deref());
    put_opt_str(&mut buf, event.request_id.as_deref());
    put_opt_str(&mut buf, event.trace_id.as_deref());
    put_opt_str(&mut buf, event.span_id.as_deref());
    put_str(&mut buf, "prev");
    buf
}

/// SHA-256 of [`canonical_bytes`].
pub fn event_hash(
    seq: i64,
    event: &AuditEvent,
    client: &SealedClient,
    prev_hash: &[u8],
) -> Vec<u8> {
    Sha256::digest(canonical_bytes(seq, event, client, prev_hash)).to_vec()
}

/// Queues `event` for the chain inside the caller's open transaction (`&mut *tx`): committing
/// the transaction commits the event, rolling back removes it. The sequencer
/// ([`super::sequencer`]) gives it its place in the chain shortly after the commit. No lock is
/// taken: concurrent writers do not wait for each other.
///
/// The client address and user agent are sealed with the sealer of the service whose RPC built
/// the event, else of the one handling the current RPC ([`super::seal`]); an event carrying them
/// built outside an RPC needs [`record_with`]. Also emits the event on the current span (so it
/// shows up in the trace of the RPC). Reads are recorded right after they succeed, with
/// [`record_read`].
pub async fn record(conn: &mut PgConnection, event: &AuditEvent) -> Result<(), AuditError> {
    let sealer = captured_or_current(event);
    record_with(conn, sealer.as_deref(), event).await
}

/// The sealer the event was built under, else the one of the RPC being handled.
fn captured_or_current(event: &AuditEvent) -> Option<std::sync::Arc<ClientSealer>> {
    event
        .sealer
        .as_ref()
        .map(|s| s.0.clone())
        .or_else(super::seal::current)
}

/// [`record`] with an explicit sealer for the client fields (`None`: the event must carry none).
pub async fn record_with(
    conn: &mut PgConnection,
    sealer: Option<&ClientSealer>,
    event: &AuditEvent,
) -> Result<(), AuditError> {
    let client = prepare(sealer, event)?;
    enqueue(conn, &[(event, client)]).await?;
    super::sink::emit_on_span(event);
    Ok(())
}

/// Queues several events with one statement (the group commit of reads): each is validated
/// and its client fields sealed with the sealer it was built under; one invalid event refuses
/// them all.
pub async fn record_all(conn: &mut PgConnection, events: &[&AuditEvent]) -> Result<(), AuditError> {
    let mut prepared = Vec::with_capacity(events.len());
    for &event in events {
        let sealer = captured_or_current(event);
        prepared.push((event, prepare(sealer.as_deref(), event)?));
    }
    enqueue(conn, &prepared).await
}

/// Validates the event and seals its client fields.
fn prepare(sealer: Option<&ClientSealer>, event: &AuditEvent) -> Result<SealedClient, AuditError> {
    event.validate()?;
    if event.source_ip.is_none() && event.user_agent.is_none() {
        Ok(SealedClient::default())
    } else {
        Ok(sealer.ok_or(AuditError::NoSealer)?.seal_event(event)?)
    }
}

/// One multi-row insert into the queue (column arrays, unnested by Postgres).
async fn enqueue(
    conn: &mut PgConnection,
    events: &[(&AuditEvent, SealedClient)],
) -> Result<(), AuditError> {
    if events.is_empty() {
        return Ok(());
    }
    let n = events.len();
    let mut event_id = Vec::with_capacity(n);
    let mut occurred_at = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut action = Vec::with_capacity(n);
    let mut outcome = Vec::with_capacity(n);
    let mut outcome_reason = Vec::with_capacity(n);
    let mut purpose = Vec::with_capacity(n);
    let mut actor_user_id = Vec::with_capacity(n);
    let mut actor_role = Vec::with_capacity(n);
    let mut actor_session_id = Vec::with_capacity(n);
    let mut actor_workload = Vec::with_capacity(n);
    let mut entity_type = Vec::with_capacity(n);
    let mut entity_id = Vec::with_capacity(n);
    let mut subject_id = Vec::with_capacity(n);
    let mut source_ip = Vec::with_capacity(n);
    let mut user_agent = Vec::with_capacity(n);
    let mut request_id = Vec::with_capacity(n);
    let mut trace_id = Vec::with_capacity(n);
    let mut span_id = Vec::with_capacity(n);
    for (e, client) in events {
        event_id.push(e.event_id);
        occurred_at.push(e.occurred_at);
        kind.push(e.kind.as_str());
        action.push(e.action.as_str());
        outcome.push(e.outcome.as_str());
        outcome_reason.push(e.outcome_reason.as_deref());
        purpose.push(e.purpose.as_str());
        actor_user_id.push(e.actor_user_id);
        actor_role.push(e.actor_role.as_deref());
        actor_session_id.push(e.actor_session_id);
        actor_workload.push(e.actor_workload.as_deref());
        entity_type.push(e.entity_type.as_str());
        entity_id.push(e.entity_id.as_str());
        subject_id.push(e.subject_id);
        source_ip.push(client.source_ip.as_deref());
        user_agent.push(client.user_agent.as_deref());
        request_id.push(e.request_id.as_deref());
        trace_id.push(e.trace_id.as_deref());
        span_id.push(e.span_id.as_deref());
    }
    sqlx::query(
        "INSERT INTO carehub_platform.audit_queue (event_id, occurred_at, kind, action, outcome,
            outcome_reason, purpose, actor_user_id, actor_role, actor_session_id, actor_workload,
            entity_type, entity_id, subject_id, source_ip, user_agent, request_id, trace_id,
            span_id)
         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
            $6::text[], $7::text[], $8::uuid[], $9::text[], $10::uuid[], $11::text[], $12::text[],
            $13::text[], $14::uuid[], $15::bytea[], $16::bytea[], $17::text[], $18::text[],
            $19::text[])",
    )
    .bind(event_id)
    .bind(occurred_at)
    .bind(kind)
    .bind(action)
    .bind(outcome)
    .bind(outcome_reason)
    .bind(purpose)
    .bind(actor_user_id)
    .bind(actor_role)
    .bind(actor_session_id)
    .bind(actor_workload)
    .bind(entity_type)
    .bind(entity_id)
    .bind(subject_id)
    .bind(source_ip)
    .bind(user_agent)
    .bind(request_id)
    .bind(trace_id)
    .bind(span_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records a read (or any event that has no change to join) in a transaction of its own.
pub async fn record_read(pool: &sqlx::PgPool, event: &AuditEvent) -> Result<(), AuditError> {
    let sealer = captured_or_current(event);
    record_read_with(pool, sealer.as_deref(), event).await
}

/// [`record_read`] with an explicit sealer, as [`record_with`].
pub async fn record_read_with(
    pool: &sqlx::PgPool,
    sealer: Option<&ClientSealer>,
    event: &AuditEvent,
) -> Result<(), AuditError> {
    let mut conn = pool.acquire().await?;
    record_with(&mut conn, sealer, event).await
}

/// Columns in the order [`from_row`] reads them.
pub(crate) const COLUMNS: &str = "seq, event_id, occurred_at, kind, action, outcome, \
    outcome_reason, purpose, actor_user_id, actor_role, actor_session_id, actor_workload, \
    entity_type, entity_id, subject_id, source_ip, user_agent, request_id, trace_id, span_id, \
    prev_hash, hash";

/// The columns of an event, in chain and queue rows alike.
pub(crate) const EVENT_COLUMNS: &str = "event_id, occurred_at, kind, action, outcome, \
    outcome_reason, purpose, actor_user_id, actor_role, actor_session_id, actor_workload, \
    entity_type, entity_id, subject_id, source_ip, user_agent, request_id, trace_id, span_id";

/// Decodes a stored row; an unknown code is corruption (nobody writes one but [`record`]).
pub(crate) fn from_row(row: &PgRow) -> Result<ChainedEvent, AuditError> {
    let seq: i64 = row.try_get("seq")?;
    let (event, client) = event_from_row(row, seq)?;
    Ok(ChainedEvent {
        seq,
        event,
        client,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// The event columns of a chain or queue row (client fields as stored, sealed); `position`
/// names the row in a corruption error (its sequence number, or its queue id).
pub(crate) fn event_from_row(
    row: &PgRow,
    position: i64,
) -> Result<(AuditEvent, SealedClient), AuditError> {
    let corrupt = |what: &str| AuditError::Corrupt {
        seq: position,
        reason: format!("unknown {what} code"),
    };
    let action: String = row.try_get("action")?;
    let outcome: String = row.try_get("outcome")?;
    let purpose: String = row.try_get("purpose")?;
    let occurred_at: DateTime<Utc> = row.try_get("occurred_at")?;
    Ok((
        AuditEvent {
            event_id: row.try_get("event_id")?,
            occurred_at,
            kind: row.try_get("kind")?,
            action: Action::parse(&action).ok_or_else(|| corrupt("action"))?,
            outcome: Outcome::parse(&outcome).ok_or_else(|| corrupt("outcome"))?,
            outcome_reason: row.try_get("outcome_reason")?,
            purpose: Purpose::parse(&purpose).ok_or_else(|| corrupt("purpose"))?,
            actor_user_id: row.try_get("actor_user_id")?,
            actor_role: row.try_get("actor_role")?,
            actor_session_id: row.try_get("actor_session_id")?,
            actor_workload: row.try_get("actor_workload")?,
            entity_type: row.try_get("entity_type")?,
            entity_id: row.try_get("entity_id")?,
            subject_id: row.try_get("subject_id")?,
            source_ip: None,
            user_agent: None,
            request_id: row.try_get("request_id")?,
            trace_id: row.try_get("trace_id")?,
            span_id: row.try_get("span_id")?,
            sealer: None,
        },
        SealedClient {
            source_ip: row.try_get("source_ip")?,
            user_agent: row.try_get("user_agent")?,
        },
    ))
}

/// The stored event at `seq`, if there is one.
pub async fn load(conn: &mut PgConnection, seq: i64) -> Result<Option<ChainedEvent>, AuditError> {
    let sql = format!("SELECT {COLUMNS} FROM carehub_platform.audit_events WHERE seq = $1");
    let row = sqlx::query(&sql).bind(seq).fetch_optional(conn).await?;
    row.as_ref().map(from_row).transpose()
}

/// Whose events [`events_of`] lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whose {
    Subject(Uuid),
    Actor(Uuid),
}

/// The newest `limit` events about a subject or by an actor, newest first, as stored (client
/// fields sealed).
pub async fn events_of(
    conn: &mut PgConnection,
    whose: Whose,
    limit: i64,
) -> Result<Vec<ChainedEvent>, AuditError> {
    let (column, id) = match whose {
        Whose::Subject(id) => ("subject_id", id),
        Whose::Actor(id) => ("actor_user_id", id),
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM carehub_platform.audit_events WHERE {column} = $1
         ORDER BY seq DESC LIMIT $2"
    );
    let rows = sqlx::query(&sql)
        .bind(id)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter().map(from_row).collect()
}

/// The chain head: the last sequence number and hash.
pub async fn head(conn: &mut PgConnection) -> Result<(i64, Vec<u8>), AuditError> {
    Ok(
        sqlx::query_as("SELECT seq, hash FROM carehub_platform.audit_chain_head WHERE one")
            .fetch_one(conn)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_field_and_the_position_change_the_hash() {
        let e = AuditEvent::new("x.y", Action::Update, Purpose::Operations, "t", "1");
        let none = SealedClient::default();
        let base = event_hash(1, &e, &none, &GENESIS_HASH);
        assert_ne!(base, event_hash(2, &e, &none, &GENESIS_HASH));
        assert_ne!(base, event_hash(1, &e, &none, &[1; 32]));
        let mut other = e.clone();
        other.subject_id = Some(Uuid::nil());
        assert_ne!(base, event_hash(1, &other, &none, &GENESIS_HASH));
        // The sealed client fields are hashed; the clear ones are not (they are never stored).
        let sealed = SealedClient {
            source_ip: Some(vec![1, 2, 3]),
            user_agent: None,
        };
        assert_ne!(base, event_hash(1, &e, &sealed, &GENESIS_HASH));
        let moved = SealedClient {
            source_ip: None,
            user_agent: Some(vec![1, 2, 3]),
        };
        assert_ne!(
            event_hash(1, &e, &sealed, &GENESIS_HASH),
            event_hash(1, &e, &moved, &GENESIS_HASH)
        );
        // Every optional text field is hashed, and unset differs from set-but-empty.
        type Set = fn(&mut AuditEvent, Option<String>);
        let optional: [(&str, Set); 6] = [
            ("outcome_reason", |e, v| e.outcome_reason = v),
            ("actor_role", |e, v| e.actor_role = v),
            ("actor_workload", |e, v| e.actor_workload = v),
            ("request_id", |e, v| e.request_id = v),
            ("trace_id", |e, v| e.trace_id = v),
            ("span_id", |e, v| e.span_id = v),
        ];
        for (name, set) in optional {
            let hashes: Vec<_> = [
                None,
                Some(String::new()),
                Some("a".into()),
                Some("b".into()),
            ]
            .into_iter()
            .map(|v| {
                let mut changed = e.clone();
                set(&mut changed, v);
                event_hash(1, &changed, &none, &GENESIS_HASH)
            })
            .collect();
            for (i, h) in hashes.iter().enumerate() {
                for other in &hashes[i + 1..] {
                    assert_ne!(h, other, "{name}");
                }
            }
        }
        let mut clear = e.clone();
        clear.source_ip = Some("203.0.113.7".into());
        assert_eq!(base, event_hash(1, &clear, &none, &GENESIS_HASH));
        // A value moved between adjacent fields does not collide.
        let mut a = e.clone();
        a.entity_type = "ab".into();
        a.entity_id = "c".into();
        let mut b = e.clone();
        b.entity_type = "a".into();
        b.entity_id = "bc".into();
        assert_ne!(
            event_hash(1, &a, &none, &GENESIS_HASH),
            event_hash(1, &b, &none, &GENESIS_HASH)
        );
    }
}
