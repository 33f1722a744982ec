//! One handler shape (DESIGN.md §3): the per-call context and the two helpers every handler
//! goes through.
//!
//! A service's generated-trait impl builds a [`Call`] once per RPC ([`Call::new`]) and hands
//! the handler the call and the decoded request; the handler returns the service's own error
//! enum, converted to `tonic::Status` in that one impl. Then:
//! - a **mutating** handler runs its change through [`Call::mutate`]: the change, its audit
//!   events ([`Change`]) and the stored answer commit in one transaction; a retry with the same
//!   idempotency key gets the stored answer back ([`Ran::replayed`]); the same key with another
//!   request is refused. An answer that carries a secret (tokens, TOTP secrets) is never stored:
//!   [`Call::mutate_secret`] runs the same transaction without the answer;
//! - a **reading** handler hands its answer through [`Call::read`], which records the read event
//!   durably first: a read that cannot be audited is refused, never answered.
//!
//! Each RPC declares once, where its trait method is implemented, whether its answers are
//! [`Audited::Always`] or [`Audited::Exempt`] (with the reason), and [`Call::check_audited`]
//! refuses a successful answer of an `Always` RPC that recorded no event: a handler that forgets
//! its event fails closed (INTERNAL) in its first test instead of answering unaudited.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prost::Message;
use sqlx::{PgConnection, PgPool};
use tonic::Status;
use uuid::Uuid;

use crate::audit::{self, AuditError, AuditEvent, Kind, Purpose};
use crate::auth::{Caller, UserCaller};
use crate::idempotency::{self, IdempotencyStore, Once};
use crate::request::RpcPath;

pub use crate::idempotency::Ran;

/// Whether an RPC's successful answers always leave an audit event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audited {
    /// Every successful answer recorded at least one event: a read, or its change's events.
    Always,
    /// The RPC returns and changes no personal data, or audits only some outcomes; says why.
    Exempt(&'static str),
}

/// What the platform knows about one RPC call, built once before its handler runs.
#[derive(Debug)]
pub struct Call {
    /// Who called: workload (mTLS), user (bearer token), gateway-forwarded address and agent.
    pub caller: Caller,
    /// The gRPC path, `/carehub.identity.v1.IdentityService/GetProfile`, as the server's
    /// request-id layer read it from the request ([`RpcPath`]): the idempotency scope.
    pub rpc: Arc<str>,
    /// `x-request-id` (generated when the client sent none).
    pub request_id: Option<String>,
    /// `idempotency-key`, checked only when a mutation asks for it (a reading RPC ignores it).
    idempotency_key: Result<Option<String>, Status>,
    /// Whether an event of this call was recorded (or a stored answer, whose events were
    /// recorded by the first call, was replayed).
    audited: AtomicBool,
}

impl Call {
    /// The context of `req`. INTERNAL when the server's layers did not run (a wiring bug:
    /// every served RPC passes them): no caller from the auth layer, or no [`RpcPath`].
    pub fn new<T>(req: &tonic::Request<T>) -> Result<Call, Status> {
        let caller = crate::auth::caller(req)?;
        let rpc = req
            .extensions()
            .get::<RpcPath>()
            .map(|path| path.0.clone())
            .ok_or_else(|| crate::errors::internal("the call's RPC path is unknown"))?;
        let request_id = caller
            .request_id
            .clone()
            .or_else(crate::server::current_request_id);
        Ok(Call {
            caller,
            rpc,
            request_id,
            idempotency_key: idempotency::key_of(req),
            audited: AtomicBool::new(false),
        })
    }

    /// For handlers that record their events in transactions of their own (attempt counters
    /// and failure events that commit although the call is refused): their events committed.
    pub fn mark_audited(&self) {
        self.audited.store(true, Ordering::Relaxed);
    }

    /// For changes another task committed on this call's behalf (messaging's group commit of
    /// sends): `event` committed. Marks the call audited and puts the event on its span, as
    /// the helpers do for what they record themselves.
    pub fn committed_elsewhere(&self, event: &AuditEvent) {
        self.mark_audited();
        audit::sink::emit_on_span(event);
    }

    /// Whether this call recorded an event through its helpers or [`Call::mark_audited`].
    pub fn was_audited(&self) -> bool {
        self.audited.load(Ordering::Relaxed)
    }

    /// `result`, unless it is a successful answer of an [`Audited::Always`] RPC that recorded no
    /// event: that one is refused (INTERNAL) and logged, never answered.
    pub fn check_audited<T, E: From<Status>>(
        &self,
        rule: Audited,
        result: Result<T, E>,
    ) -> Result<T, E> {
        match (rule, &result) {
            (Audited::Always, Ok(_)) if !self.was_audited() => {
                tracing::error!(rpc = %self.rpc, "answer without an audit event refused");
                Err(crate::errors::internal("answer not audited").into())
            }
            _ => result,
        }
    }

    /// The signed-in user (UNAUTHENTICATED without an access token).
    pub fn user(&self) -> Result<&UserCaller, Status> {
        self.caller.user()
    }

    /// The end user's address, only when forwarded by a trusted gateway.
    pub fn client_ip(&self) -> Option<&str> {
        self.caller.client_ip.as_deref()
    }

    /// The request's idempotency key, if it sent one (INVALID_ARGUMENT when malformed).
    /// [`Call::mutate`] reads it; a mutating handler may ask first, so that a malformed key is
    /// refused before the request's fields are checked.
    pub fn idempotency_key(&self) -> Result<Option<&str>, Status> {
        match &self.idempotency_key {
            Ok(key) => Ok(key.as_deref()),
            Err(status) => Err(status.clone()),
        }
    }

    /// An event of `kind` by this caller about `entity_type`/`entity_id`, filed under `subject`
    /// (whose data it is), for `purpose`.
    pub fn event(
        &self,
        kind: Kind,
        purpose: Purpose,
        entity_type: &str,
        entity_id: impl ToString,
        subject: Uuid,
    ) -> AuditEvent {
        AuditEvent::of(kind, purpose, entity_type, entity_id)
            .caller(&self.caller)
            .subject(subject)
    }

    /// Records `event` (a read) durably, then gives `answer` back: the answer leaves only once
    /// its access is on the audit trail. An unrecordable read fails with the audit error
    /// (UNAVAILABLE with reason UNAVAILABLE when the trail cannot be written). Concurrent reads
    /// of one database are committed together ([`reads`]).
    pub async fn read<T, E>(&self, pool: &PgPool, event: AuditEvent, answer: T) -> Result<T, E>
    where
        E: From<AuditError>,
    {
        reads::record(pool, event).await?;
        self.mark_audited();
        Ok(answer)
    }

    /// Runs `op` once per idempotency key of this call, in one transaction with its audit events
    /// and its stored answer (see the module doc). The idempotency actor is the caller
    /// ([`Caller::actor_key`]).
    pub async fn mutate<Req, Resp, E, F>(
        &self,
        store: &IdempotencyStore,
        request: &Req,
        op: F,
    ) -> Result<Ran<Resp>, E>
    where
        Req: Message,
        Resp: Message + Default,
        E: From<Status> + From<sqlx::Error> + From<AuditError>,
        F: AsyncFnOnce(&mut PgConnection) -> Result<Change<Resp>, E>,
    {
        self.mutate_as(store, &self.caller.actor_key(), request, op)
            .await
    }

    /// [`Call::mutate`] with answers kept under `actor` (public RPCs that no user signs, whose
    /// keys are shared by every caller of them, such as a password reset).
    pub async fn mutate_as<Req, Resp, E, F>(
        &self,
        store: &IdempotencyStore,
        actor: &str,
        request: &Req,
        op: F,
    ) -> Result<Ran<Resp>, E>
    where
        Req: Message,
        Resp: Message + Default,
        E: From<Status> + From<sqlx::Error> + From<AuditError>,
        F: AsyncFnOnce(&mut PgConnection) -> Result<Change<Resp>, E>,
    {
        let once = Once {
            scope: &self.rpc,
            actor,
            key: self.idempotency_key()?,
            request,
        };
        let mut recorded = false;
        let ran = idempotency::run_once(store, &once, async |tx: &mut PgConnection| {
            let change = op(tx).await?;
            change.record(tx).await?;
            recorded = !change.events.is_empty();
            Ok::<_, E>(change.answer)
        })
        .await?;
        // A replayed answer's events were recorded by the call that stored it.
        if recorded || ran.replayed {
            self.mark_audited();
        }
        Ok(ran)
    }

    /// A change whose answer carries a secret (tokens, a TOTP secret, recovery codes): one
    /// transaction with its audit events, but the answer is never stored, so a retry runs
    /// again (an idempotency key is not read).
    pub async fn mutate_secret<Resp, E, F>(&self, pool: &PgPool, op: F) -> Result<Resp, E>
    where
        E: From<sqlx::Error> + From<AuditError>,
        F: AsyncFnOnce(&mut PgConnection) -> Result<Change<Resp>, E>,
    {
        self.unstored(pool, op).await
    }

    /// A change whose request carries its own idempotency key — a client-chosen id under a
    /// unique constraint, which `op` looks up and answers from when it is already there
    /// (messaging's `client_message_id`): one transaction with its audit events, and no stored
    /// answer, since the table itself answers a retry. Cheaper than [`Call::mutate`] by the
    /// idempotency row and the sealed answer; the `idempotency-key` header is not read.
    pub async fn mutate_self_keyed<Resp, E, F>(&self, pool: &PgPool, op: F) -> Result<Resp, E>
    where
        E: From<sqlx::Error> + From<AuditError>,
        F: AsyncFnOnce(&mut PgConnection) -> Result<Change<Resp>, E>,
    {
        self.unstored(pool, op).await
    }

    async fn unstored<Resp, E, F>(&self, pool: &PgPool, op: F) -> Result<Resp, E>
    where
        E: From<sqlx::Error> + From<AuditError>,
        F: AsyncFnOnce(&mut PgConnection) -> Result<Change<Resp>, E>,
    {
        let mut tx = pool.begin().await?;
        let change = op(&mut tx).await?;
        change.record(&mut tx).await?;
        tx.commit().await?;
        if !change.events.is_empty() {
            self.mark_audited();
        }
        Ok(change.answer)
    }
}

/// What a mutation did: its answer and the audit events that describe it, queued by the
/// helper in the change's transaction just before the commit.
#[derive(Debug)]
pub struct Change<T> {
    pub answer: T,
    pub events: Vec<AuditEvent>,
}

impl<T> Change<T> {
    /// An answer with the one event that describes the change.
    pub fn new(answer: T, event: AuditEvent) -> Self {
        Change {
            answer,
            events: vec![event],
        }
    }

    /// An answer whose change needs no event of its own (nothing personal changed, or an
    /// event was already recorded by a step that shares the transaction).
    pub fn unaudited(answer: T) -> Self {
        Change {
            answer,
            events: Vec::new(),
        }
    }

    /// One more event.
    pub fn with(mut self, event: AuditEvent) -> Self {
        self.events.push(event);
        self
    }

    async fn record(&self, tx: &mut PgConnection) -> Result<(), AuditError> {
        for event in &self.events {
            audit::record(tx, event).await?;
        }
        Ok(())
    }
}

/// Group commit of read events (DESIGN.md §4): every read's event must be durable before its
/// answer leaves, and a commit per read would cost a round trip and a WAL flush each. Instead,
/// reads queue their events in process; a reader that gets a writer's turn appends every event
/// waiting (up to [`reads::MAX_BATCH`]) with one multi-row insert (one commit) and tells each
/// its outcome. Up to [`reads::MAX_CONCURRENT_BATCHES`] batches are written at once: the
/// queue table takes no shared lock, so one batch's commit (a WAL flush) need not wait for the
/// previous one's — a single writer would cap reads at `in flight / commit latency`. No timer
/// and no background task: a lone read is written at once, by itself, and a batch is as large
/// as the reads that arrived while the writers were busy. Batches are per database.
pub mod reads {
    use std::collections::{HashMap, VecDeque};
    use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

    use sqlx::PgPool;
    use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

    use crate::audit::{self, AuditError, AuditEvent};

    /// Most events one transaction appends.
    pub const MAX_BATCH: usize = 256;
    /// Most batches being written at once per database (each holds a pooled connection).
    pub const MAX_CONCURRENT_BATCHES: usize = 4;

    type Outcome = Result<(), String>;
    type Waiting = (u64, AuditEvent, oneshot::Sender<Outcome>);

    struct Group {
        /// Events not yet taken by a writer, oldest first, each with its ticket.
        pending: Mutex<(u64, VecDeque<Waiting>)>,
        /// A writer's turn.
        writers: Arc<Semaphore>,
    }

    type DatabaseKey = (String, u16, String);

    static GROUPS: LazyLock<Mutex<HashMap<DatabaseKey, Arc<Group>>>> =
        LazyLock::new(Mutex::default);

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn group(pool: &PgPool) -> Arc<Group> {
        let options = pool.connect_options();
        let key = (
            options.get_host().to_owned(),
            options.get_port(),
            options.get_database().unwrap_or_default().to_owned(),
        );
        lock(&GROUPS)
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Group {
                    pending: Mutex::default(),
                    writers: Arc::new(Semaphore::new(MAX_CONCURRENT_BATCHES)),
                })
            })
            .clone()
    }

    /// A batch that failed, as seen by the reads that were in it but did not write it.
    fn batch_failed(why: String) -> AuditError {
        AuditError::Db(sqlx::Error::Protocol(format!(
            "the batch of read events failed: {why}"
        )))
    }

    /// The outcome another reader's batch sent for this read's event.
    fn told(received: Result<Outcome, oneshot::error::RecvError>) -> Result<(), AuditError> {
        match received {
            Ok(result) => result.map_err(batch_failed),
            Err(_) => Err(batch_failed("its writer was cancelled".to_owned())),
        }
    }

    /// Records `event` with the other reads of its database that are waiting, and returns once
    /// it is committed (or refused).
    pub async fn record(pool: &PgPool, mut event: AuditEvent) -> Result<(), AuditError> {
        // Refused here, alone: an invalid event must not fail the reads batched with it.
        event.validate()?;
        // Another task may append it: it takes the sealer of this call's service along.
        if event.sealer.is_none() {
            event.sealer = audit::seal::current().map(audit::seal::CapturedSealer);
        }
        if (event.source_ip.is_some() || event.user_agent.is_some()) && event.sealer.is_none() {
            return Err(AuditError::NoSealer);
        }
        let group = group(pool);
        let (reply, mut outcome) = oneshot::channel();
        let ticket = {
            let mut pending = lock(&group.pending);
            let ticket = pending.0;
            pending.0 += 1;
            pending.1.push_back((ticket, event, reply));
            ticket
        };
        loop {
            let turn = tokio::select! {
                biased;
                received = &mut outcome => return told(received),
                turn = group.writers.clone().acquire_owned() => turn
                    .map_err(|_| batch_failed("the writers are closed".to_owned()))?,
            };
            let batch: Option<Vec<Waiting>> = {
                let mut pending = lock(&group.pending);
                if pending.1.front().is_none_or(|(first, ..)| *first > ticket) {
                    None
                } else {
                    let n = pending.1.len().min(MAX_BATCH);
                    Some(pending.1.drain(..n).collect())
                }
            };
            let Some(batch) = batch else {
                // Another writer took this event: its outcome is on the way.
                drop(turn);
                return told(outcome.await);
            };
            let includes_mine = batch.last().is_some_and(|(last, ..)| *last >= ticket);
            let written = write(pool.clone(), batch, turn).await;
            if includes_mine {
                // This reader wrote its own event: its error keeps its kind.
                return match (outcome.try_recv(), written) {
                    (Ok(Ok(())), _) => Ok(()),
                    (_, Err(e)) => Err(e),
                    (Ok(Err(why)), Ok(())) => Err(batch_failed(why)),
                    (Err(_), Ok(())) => Err(batch_failed("no outcome was sent".to_owned())),
                };
            }
            // Its event was past this batch: another turn.
        }
    }

    /// Appends `batch` on a task of its own, so that its readers get their outcome even if the
    /// writing reader's call is cancelled meanwhile (the client went away); the writer's turn
    /// ends with the task.
    async fn write(
        pool: PgPool,
        batch: Vec<Waiting>,
        turn: OwnedSemaphorePermit,
    ) -> Result<(), AuditError> {
        tokio::spawn(async move {
            let written = append(&pool, &batch).await;
            drop(turn);
            let shared = written.as_ref().map(|_| ()).map_err(ToString::to_string);
            for (_, _, reply) in batch {
                // A reader that gave up no longer listens; its event is committed anyway.
                let _ = reply.send(shared.clone());
            }
            written
        })
        .await
        .unwrap_or_else(|e| Err(batch_failed(e.to_string())))
    }

    async fn append(pool: &PgPool, batch: &[Waiting]) -> Result<(), AuditError> {
        let events: Vec<&AuditEvent> = batch.iter().map(|(_, event, _)| event).collect();
        let mut conn = pool.acquire().await?;
        audit::record_all(&mut conn, &events).await
    }
}
