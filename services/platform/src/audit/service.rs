//! `carehub.audit.v1.AuditLog`, mounted by every service through
//! [`crate::server::ServiceHost::with_audit`].
//!
//! Its policy is the platform's, not the service's: only the `records` workload (patients'
//! access log, accounting of disclosures) and the operators' `admin-cli` may call it, without a
//! user token. [`route`] sends the AuditLog paths through an [`Authorizer`] with that policy
//! and everything else through the service's own auth layer, so no service can forget or widen
//! it; the handlers check the workload once more.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use carehub_proto::audit::v1 as pb;
use carehub_proto::audit::v1::audit_log_server::{AuditLog, AuditLogServer};
use carehub_proto::common::v1::{ErrorReason, PageResponse};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use http::{Request, Response};
use sqlx::PgPool;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::util::BoxCloneSyncService;
use tower::{Layer as _, Service, ServiceExt as _};
use uuid::Uuid;

use super::event::{to_hex, AuditEvent, ChainedEvent, Purpose};
use super::seal::ClientSealer;
use super::verify::{self, VerifyRange};
use super::{chain, record_read};
use crate::auth::{AuthLayer, Authorizer, Policy, TokenVerifier, UserCaller, UserRule};
use crate::errors::{self, FieldViolations};
use crate::keys::KeySource;
use crate::paging::{Filter, Page};
use crate::request::BoxSvc;
use crate::tls::PeerInfo;

/// The workloads that may call AuditLog.
pub const AUDIT_CALLERS: &[&str] = &["records", "admin-cli"];

const SERVICE: &str = <AuditLogServer<AuditLogApi> as tonic::server::NamedService>::NAME;
/// The listing that page tokens of ListEvents are bound to.
const LIST_EVENTS: &str = "/carehub.audit.v1.AuditLog/ListEvents";
/// What a client field reads as when its key is gone.
pub const SEALED: &str = "[sealed: key unavailable]";

/// The AuditLog handlers of one service.
#[derive(Clone)]
pub struct AuditLogApi {
    pub pool: PgPool,
    pub keys: Arc<dyn KeySource>,
    pub service: &'static str,
    /// Opens the client fields of the events it lists (the service's one sealer).
    pub sealer: Arc<ClientSealer>,
}

/// The policy of the AuditLog paths.
pub fn policy() -> Policy {
    ["ListEvents", "VerifyChain"]
        .into_iter()
        .fold(Policy::new(), |p, m| {
            p.rule(SERVICE, m, AUDIT_CALLERS, UserRule::WorkloadOnly)
        })
}

/// AuditLog takes no user tokens; a rule asking for one would be a wiring bug.
struct NoUserTokens;

#[async_trait::async_trait]
impl TokenVerifier for NoUserTokens {
    async fn verify(&self, _token: &str) -> Result<UserCaller, Status> {
        Err(errors::permission_denied(
            "the audit log takes no user tokens",
        ))
    }
}

/// Sends AuditLog paths through the audit policy over `inner` (the routes below any auth), and
/// every other path to `rest` (the service's own auth over the same routes).
pub fn route(rest: BoxSvc, inner: BoxSvc) -> BoxSvc {
    let authorizer = Arc::new(Authorizer {
        policy: policy(),
        verifier: Arc::new(NoUserTokens),
        gateway_workloads: Vec::new(),
    });
    let audit = BoxCloneSyncService::new(AuthLayer::new(authorizer).layer(inner));
    BoxCloneSyncService::new(Route { audit, rest })
}

#[derive(Clone)]
struct Route {
    audit: BoxSvc,
    rest: BoxSvc,
}

impl Service<Request<Body>> for Route {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is awaited per request on the branch it takes (`oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let path = req.uri().path();
        let audit = path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(SERVICE))
            .is_some_and(|p| p.starts_with('/'));
        let svc = if audit {
            self.audit.clone()
        } else {
            self.rest.clone()
        };
        Box::pin(svc.oneshot(req))
    }
}

impl AuditLogApi {
    pub fn into_server(self) -> AuditLogServer<Self> {
        AuditLogServer::new(self)
    }
}

fn workload_of<T>(req: &tonic::Request<T>) -> Option<String> {
    req.extensions()
        .get::<crate::auth::Caller>()
        .map(|c| c.workload.clone())
        .or_else(|| PeerInfo::of(req).and_then(|p| p.workload.clone()))
}

/// Defense in depth: the route already applied the policy.
fn authorize<T>(req: &tonic::Request<T>) -> Result<String, Status> {
    let workload = workload_of(req).ok_or_else(|| {
        errors::status(
            Code::Unauthenticated,
            ErrorReason::WorkloadNotAllowed,
            "the client certificate names no workload",
        )
    })?;
    if AUDIT_CALLERS.contains(&workload.as_str()) {
        Ok(workload)
    } else {
        Err(errors::status(
            Code::PermissionDenied,
            ErrorReason::WorkloadNotAllowed,
            format!("workload {workload} may not read the audit log"),
        ))
    }
}

fn opt(s: Option<impl ToString>) -> String {
    s.map(|s| s.to_string()).unwrap_or_default()
}

/// The wire form of a stored event.
pub fn to_proto(service: &str, e: &ChainedEvent) -> pb::AuditEvent {
    let ev = &e.event;
    pb::AuditEvent {
        seq: e.seq,
        event_id: ev.event_id.to_string(),
        occurred_at: Some(crate::timestamps::to_proto(ev.occurred_at)),
        kind: ev.kind.clone(),
        action: ev.action.as_str().to_owned(),
        outcome: ev.outcome.as_str().to_owned(),
        outcome_reason: opt(ev.outcome_reason.as_ref()),
        purpose: ev.purpose.as_str().to_owned(),
        actor_user_id: opt(ev.actor_user_id),
        actor_role: opt(ev.actor_role.as_ref()),
        actor_session_id: opt(ev.actor_session_id),
        actor_workload: opt(ev.actor_workload.as_ref()),
        entity_type: ev.entity_type.clone(),
        entity_id: ev.entity_id.clone(),
        subject_id: opt(ev.subject_id),
        source_ip: opt(ev.source_ip.as_ref()),
        user_agent: opt(ev.user_agent.as_ref()),
        request_id: opt(ev.request_id.as_ref()),
        trace_id: opt(ev.trace_id.as_ref()),
        span_id: opt(ev.span_id.as_ref()),
        hash: to_hex(&e.hash),
        service: service.to_owned(),
    }
}

/// Year 1: the earliest instant both chrono and Postgres represent.
fn earliest() -> DateTime<Utc> {
    DateTime::from_timestamp(-62_135_596_800, 0).unwrap_or_default()
}

#[tonic::async_trait]
impl AuditLog for AuditLogApi {
    async fn list_events(
        &self,
        request: tonic::Request<pb::ListEventsRequest>,
    ) -> Result<tonic::Response<pb::ListEventsResponse>, Status> {
        authorize(&request)?;
        let caller = request.extensions().get::<crate::auth::Caller>().cloned();
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let (column, id) = match &req.filter {
            Some(pb::list_events_request::Filter::SubjectId(s)) => ("subject_id", s.as_str()),
            Some(pb::list_events_request::Filter::ActorUserId(s)) => ("actor_user_id", s.as_str()),
            None => {
                v.add("filter", "one of subject_id and actor_user_id is required");
                ("", "")
            }
        };
        let id = Uuid::parse_str(id).ok();
        if id.is_none() && !column.is_empty() {
            v.add(
                if column == "subject_id" {
                    "subject_id"
                } else {
                    "actor_user_id"
                },
                "must be a UUID",
            );
        }
        let start = crate::timestamps::field(req.start_time.as_ref(), "start_time", &mut v)
            .unwrap_or(earliest());
        let end = crate::timestamps::field(req.end_time.as_ref(), "end_time", &mut v)
            .unwrap_or_else(Utc::now);
        if start >= end {
            v.add("end_time", "must be after start_time");
        }
        // The filter as the client gave it: a defaulted end ("now") moves between pages.
        let time = |t: Option<&prost_types::Timestamp>| {
            t.map(|t| [t.seconds.to_be_bytes(), i64::from(t.nanos).to_be_bytes()].concat())
        };
        let filter = Filter::new(LIST_EVENTS)
            .field("column", Some(column.as_bytes()))
            .field("id", id.as_ref().map(|id| id.as_bytes().as_slice()))
            .field("start_time", time(req.start_time.as_ref()).as_deref())
            .field("end_time", time(req.end_time.as_ref()).as_deref())
            .field("newest_first", Some(&[u8::from(req.newest_first)]));
        let page = Page::<(DateTime<Utc>, i64)>::read(req.page.as_ref(), &filter, "page", &mut v);
        if !v.is_empty() {
            return Err(v.into_status());
        }
        // Oldest first resumes after the cursor, newest first before it.
        let (after_at, after_seq, order, cmp) = match (req.newest_first, page.after) {
            (false, after) => {
                let (at, seq) = after.unwrap_or((earliest(), 0));
                (at, seq, "ASC", ">")
            }
            (true, Some((at, seq))) => (at, seq, "DESC", "<"),
            (true, None) => (end, i64::MAX, "DESC", "<"),
        };
        let sql = format!(
            "SELECT {} FROM carehub_platform.audit_events
             WHERE {column} = $1 AND occurred_at >= $2 AND occurred_at < $3
               AND (occurred_at, seq) {cmp} ($4, $5)
             ORDER BY occurred_at {order}, seq {order} LIMIT $6",
            chain::COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(id)
            .bind(start)
            .bind(end)
            .bind(after_at)
            .bind(after_seq)
            .bind(page.fetch())
            .fetch_all(&self.pool)
            .await
            .map_err(chain::AuditError::from)?;
        let mut events = rows
            .iter()
            .map(chain::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_page_token = page.finish(&mut events, &filter, |e| (e.event.occurred_at, e.seq));
        // Authorized readers get the client fields opened; a value that does not open (its KEK
        // version destroyed) is shown as sealed rather than failing the whole page.
        for e in &mut events {
            if let Err(err) = self.sealer.open_event(e) {
                tracing::warn!(seq = e.seq, error = %err, "audit client fields do not open");
                e.event.source_ip = e.client.source_ip.as_ref().map(|_| SEALED.to_owned());
                e.event.user_agent = e.client.user_agent.as_ref().map(|_| SEALED.to_owned());
            }
        }
        // Reading the audit log is itself an access to be accounted for. Not filed under the
        // subject: the patient's own access log would otherwise grow with every look at it.
        let kind = if column == "subject_id" {
            super::kind::AUDIT_LIST_BY_SUBJECT
        } else {
            super::kind::AUDIT_LIST_BY_ACTOR
        };
        let mut read = AuditEvent::of(kind, Purpose::Operations, "audit_log", opt(id));
        if let Some(caller) = &caller {
            read = read.caller(caller);
        }
        record_read(&self.pool, &read).await?;
        Ok(tonic::Response::new(pb::ListEventsResponse {
            events: events.iter().map(|e| to_proto(self.service, e)).collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }

    async fn verify_chain(
        &self,
        request: tonic::Request<pb::VerifyChainRequest>,
    ) -> Result<tonic::Response<pb::VerifyChainResponse>, Status> {
        authorize(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        v.check(req.from_seq >= 0, "from_seq", "must not be negative");
        v.check(req.to_seq >= 0, "to_seq", "must not be negative");
        if req.to_seq > 0 && req.from_seq > req.to_seq {
            v.add("to_seq", "must not be below from_seq");
        }
        let range = VerifyRange {
            from_seq: (req.from_seq > 0).then_some(req.from_seq),
            to_seq: (req.to_seq > 0).then_some(req.to_seq),
            from_time: crate::timestamps::field(req.start_time.as_ref(), "start_time", &mut v),
            to_time: crate::timestamps::field(req.end_time.as_ref(), "end_time", &mut v),
        };
        if !v.is_empty() {
            return Err(v.into_status());
        }
        let report = verify::verify(&self.pool, self.keys.as_ref(), self.service, &range).await?;
        Ok(tonic::Response::new(pb::VerifyChainResponse {
            intact: report.is_intact(),
            service: report.service.clone(),
            from_seq: report.from_seq,
            to_seq: report.to_seq,
            rows_checked: i64::try_from(report.rows_checked).unwrap_or(i64::MAX),
            checkpoints_checked: i64::try_from(report.checkpoints_checked).unwrap_or(i64::MAX),
            head_seq: report.head_seq,
            last_checkpoint_seq: report.last_checkpoint_seq.unwrap_or(0),
            broken: report.problem.map(|p| pb::BrokenLink {
                seq: p.seq,
                kind: serde_json::to_value(p.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                detail: p.detail,
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn only_records_and_admin_cli_are_allowed() {
        let p = policy();
        let rule = p.get("/carehub.audit.v1.AuditLog/ListEvents").unwrap();
        assert_eq!(
            rule.workloads,
            vec!["records".to_owned(), "admin-cli".to_owned()]
        );
        assert!(p.get("/carehub.audit.v1.AuditLog/Other").is_none());
    }
}
