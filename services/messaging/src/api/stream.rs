//! StreamEvents: every event after the client's position, then each new one as it happens,
//! from whichever replica it was written on (`crate::live`). Per stream, one task reads from
//! the table what it has not delivered yet, in order, opens it, records the batch's read event
//! (a batch that cannot be audited is not delivered: the stream ends with the audit's error)
//! and hands it to a bounded buffer. A consumer that leaves the buffer full for
//! `messaging.slow_consumer_ms` is cut off: what is buffered is still delivered, then ABORTED
//! with reason STREAM_LAGGING and `resume-after-seq`, the last event it was given, so a new
//! stream from there misses nothing and repeats nothing. Before each batch the caller's
//! standing is checked again (a care team is at most `care_team_cache_secs` old); a kick
//! (block, suspension, termination) closes the stream at once.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use carehub_platform::audit::AuditEvent;
use carehub_platform::auth::{Caller, UserCaller};
use carehub_platform::call::Call;
use carehub_platform::errors::FieldViolations;
use carehub_proto::messaging::v1::*;
use futures::{Stream, StreamExt as _};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tonic::Status;

use super::conversations::{audit_subject, enter, standing};
use super::kinds;
use super::messages::events_to_pb;
use crate::domain::participants::Standing;
use crate::error::{checked, MessagingError, Result};
use crate::live::Kick;
use crate::store::conversations::ConversationRow;
use crate::store::{events as store, moderation};
use crate::AppState;

/// Events read from the table at once.
const BATCH: i64 = 100;

/// The stream StreamEvents answers with.
pub type EventStream =
    Pin<Box<dyn Stream<Item = std::result::Result<ConversationEvent, Status>> + Send>>;

/// The status a lagging stream ends with.
pub fn lagging(resume_after: i64) -> Status {
    let mut status = carehub_platform::errors::status(
        tonic::Code::Aborted,
        carehub_proto::common::v1::ErrorReason::StreamLagging,
        format!("the stream fell behind; resume after sequence number {resume_after}"),
    );
    if let Ok(v) = resume_after.to_string().parse() {
        status.metadata_mut().insert("resume-after-seq", v);
    }
    status
}

/// The status a stream ends with when its replica shuts down.
fn closing(resume_after: i64) -> Status {
    let mut status = carehub_platform::errors::retry_after(
        tonic::Code::Unavailable,
        carehub_proto::common::v1::ErrorReason::Unavailable,
        format!("this replica is shutting down; resume after sequence number {resume_after}"),
        Duration::from_secs(1),
    );
    if let Ok(v) = resume_after.to_string().parse() {
        status.metadata_mut().insert("resume-after-seq", v);
    }
    status
}

pub async fn open(
    state: &Arc<AppState>,
    call: &Call,
    r: StreamEventsRequest,
) -> Result<EventStream> {
    let user = call.user()?.clone();
    let mut v = FieldViolations::new();
    let id = v.require_uuid("conversation_id", &r.conversation_id);
    v.check(r.after_seq >= 0, "after_seq", "must not be negative");
    v.finish()?;
    let (row, standing) = enter(state, &user, checked(id)?).await?;
    {
        let mut conn = state.pool.acquire().await?;
        if moderation::barred(&mut conn, row.id, user.user_id).await? {
            return Err(MessagingError::SenderBlocked {
                conversation: row.id.to_string(),
                user: user.user_id.to_string(),
            });
        }
    }
    // Counted before the stream exists: a flood of streams is refused, never queued.
    let slot = state.streams.clone().try_acquire_owned().map_err(|_| {
        MessagingError::Status(carehub_platform::errors::retry_after(
            tonic::Code::Unavailable,
            carehub_proto::common::v1::ErrorReason::Unavailable,
            "too many live streams on this replica; retry shortly",
            Duration::from_secs(1),
        ))
    })?;
    // Subscribed before the first read: an event committed after it wakes the task.
    let (seen, kicks) = state.hub.subscribe(row.id);
    let closing_rx = state.hub.closing();
    // Opening the stream is itself on the trail; each batch it delivers is too.
    let opened = batch_event(&call.caller, standing, &row, (r.after_seq, r.after_seq));
    call.read::<_, MessagingError>(&state.pool, opened, ())
        .await?;

    let buffer = usize::try_from(state.settings.stream_buffer).unwrap_or(256);
    let (tx, rx) = mpsc::channel(buffer);
    let (end_tx, end_rx) = oneshot::channel::<Status>();
    let task = Delivery {
        state: state.clone(),
        caller: call.caller.clone(),
        user,
        row,
        standing,
        last: r.after_seq,
        tx,
        slow: Duration::from_millis(state.settings.slow_consumer_ms),
    };
    tokio::spawn(async move {
        let _slot = slot;
        let end = task.run(seen, kicks, closing_rx).await;
        if let Some(status) = end {
            let _ = end_tx.send(status);
        }
    });
    let items = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
    let end = futures::stream::once(end_rx).filter_map(|r| async move { r.ok().map(Err) });
    Ok(Box::pin(items.chain(end)))
}

/// The read event of a batch `(after, last]` delivered on a stream.
fn batch_event(
    caller: &Caller,
    standing: Standing,
    row: &ConversationRow,
    (after, last): (i64, i64),
) -> AuditEvent {
    let e = AuditEvent::of(
        kinds::EVENTS_READ,
        standing.purpose(),
        "conversation",
        format!("{}:{}..{}", row.id, after, last),
    )
    .caller(caller);
    match audit_subject(row) {
        Some(s) => e.subject(s),
        None => e,
    }
}

struct Delivery {
    state: Arc<AppState>,
    caller: Caller,
    user: UserCaller,
    row: ConversationRow,
    standing: Standing,
    /// The last sequence number handed to the buffer.
    last: i64,
    tx: mpsc::Sender<ConversationEvent>,
    slow: Duration,
}

impl Delivery {
    /// Delivers until the client leaves (`None`) or the stream must end (the status).
    async fn run(
        mut self,
        mut seen: watch::Receiver<i64>,
        mut kicks: broadcast::Receiver<Kick>,
        mut closing_rx: watch::Receiver<bool>,
    ) -> Option<Status> {
        loop {
            if *closing_rx.borrow_and_update() {
                return Some(closing(self.last));
            }
            match self.deliver_backlog().await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(status) => return Some(status),
            }
            tokio::select! {
                changed = seen.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                kick = kicks.recv() => match kick {
                    Ok(k) if k.hits(self.user.user_id, self.row.id) => {
                        return Some(MessagingError::SenderBlocked {
                            conversation: self.row.id.to_string(),
                            user: self.user.user_id.to_string(),
                        }.into());
                    }
                    Ok(_) => {}
                    // Kicks were missed: check this stream's standing from the table.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Err(status) = self.still_allowed().await {
                            return Some(status);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                () = self.tx.closed() => return None,
                _ = closing_rx.changed() => return Some(closing(self.last)),
            }
        }
    }

    /// Whether the user may still receive here (team, block, account).
    async fn still_allowed(&self) -> std::result::Result<(), Status> {
        if matches!(self.standing, Standing::TeamMember(_)) {
            standing(&self.state, &self.user, &self.row)
                .await
                .map_err(Status::from)?;
        }
        let mut conn = self
            .state
            .pool
            .acquire()
            .await
            .map_err(MessagingError::from)?;
        if moderation::barred(&mut conn, self.row.id, self.user.user_id)
            .await
            .map_err(Status::from)?
        {
            return Err(MessagingError::SenderBlocked {
                conversation: self.row.id.to_string(),
                user: self.user.user_id.to_string(),
            }
            .into());
        }
        Ok(())
    }

    /// Delivers everything after `last` that is in the table now; `false` when the client left.
    async fn deliver_backlog(&mut self) -> std::result::Result<bool, Status> {
        loop {
            let (rows, events) = {
                let mut conn = self
                    .state
                    .pool
                    .acquire()
                    .await
                    .map_err(MessagingError::from)?;
                let rows = store::after(&mut conn, self.row.id, self.last, BATCH)
                    .await
                    .map_err(Status::from)?;
                if rows.is_empty() {
                    return Ok(true);
                }
                let n = rows.len();
                (
                    n,
                    events_to_pb(&self.state, &mut conn, &self.row, rows)
                        .await
                        .map_err(Status::from)?,
                )
            };
            // A care-team member who left gets nothing more.
            if matches!(self.standing, Standing::TeamMember(_)) {
                standing(&self.state, &self.user, &self.row)
                    .await
                    .map_err(Status::from)?;
            }
            let last = events.last().map_or(self.last, |e| e.seq);
            let event = batch_event(&self.caller, self.standing, &self.row, (self.last, last));
            carehub_platform::call::reads::record(&self.state.pool, event)
                .await
                .map_err(Status::from)?;
            for e in events {
                let seq = e.seq;
                match tokio::time::timeout(self.slow, self.tx.send(e)).await {
                    Ok(Ok(())) => self.last = seq,
                    Ok(Err(_)) => return Ok(false),
                    Err(_) => {
                        tracing::info!(
                            conversation_id = %self.row.id,
                            resume_after = self.last,
                            "a slow stream was cut off"
                        );
                        return Err(lagging(self.last));
                    }
                }
            }
            if i64::try_from(rows).unwrap_or(0) < BATCH {
                return Ok(true);
            }
        }
    }
}
