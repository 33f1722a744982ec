//! The patient's access log: who read or changed their data, in every service, newest first.
//!
//! Each service keeps its own audit trail and serves it through `AuditLog.ListEvents` (records
//! is one of its two allowed callers); this merges the trails of records (in process),
//! identity and the services in `records.audit_sources`, never reading another service's
//! tables. Merging newest first across sources is exact: a merged event is returned only once
//! every source that still has older events has been read past it, so no event of a slower
//! source can later turn out to be newer. The patient's own actions are left out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use carehub_platform::audit::service::AuditLogApi;
use carehub_platform::audit::Purpose;
use carehub_platform::auth::Caller;
use carehub_platform::call::Call;
use carehub_platform::client::ServiceChannel;
use carehub_platform::errors::FieldViolations;
use carehub_platform::paging::{self, Page};
use carehub_proto::audit::v1::audit_log_client::AuditLogClient;
use carehub_proto::audit::v1::audit_log_server::AuditLog;
use carehub_proto::audit::v1::{list_events_request, AuditEvent, ListEventsRequest};
use carehub_proto::common::v1::{PageRequest, PageResponse};
use carehub_proto::records::v1::*;
use chrono::{DateTime, Utc};
use tonic::Status;
use uuid::Uuid;

use super::kinds;
use crate::domain::access;
use crate::error::{RecordsError, Result};
use crate::AppState;

/// Events read from one source per round; a few rounds per page at most.
const FETCH: i32 = 100;
const MAX_ROUNDS: usize = 4;

/// Where a trail is read.
#[derive(Clone)]
pub enum Source {
    /// Records' own trail, through the same handler its AuditLog serves.
    Local(AuditLogApi),
    /// Another service's AuditLog over mTLS.
    Remote(String, AuditLogClient<ServiceChannel>),
}

impl Source {
    fn name(&self) -> &str {
        match self {
            Source::Local(api) => api.service,
            Source::Remote(name, _) => name,
        }
    }

    async fn list(
        &self,
        req: ListEventsRequest,
    ) -> std::result::Result<(Vec<AuditEvent>, String), Status> {
        let answer = match self {
            Source::Local(api) => {
                let mut request = tonic::Request::new(req);
                // The handler checks its caller as its route would: records, for the log.
                request.extensions_mut().insert(Caller {
                    workload: "records".to_owned(),
                    user: None,
                    client_ip: None,
                    user_agent: None,
                    request_id: None,
                });
                api.list_events(request).await?
            }
            Source::Remote(_, client) => client.clone().list_events(req).await?,
        }
        .into_inner();
        let token = answer.page.map(|p| p.next_page_token).unwrap_or_default();
        Ok((answer.events, token))
    }
}

/// The order of the log: newest first, ties broken by event id (unique across services).
type Key = (DateTime<Utc>, Uuid);

fn key(e: &AuditEvent) -> Option<Key> {
    let t = e.occurred_at.as_ref()?;
    let at = DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)?;
    Some((at, Uuid::parse_str(&e.event_id).ok()?))
}

fn page_filter(patient: Uuid) -> paging::Filter {
    paging::Filter::new("/carehub.records.v1.RecordsService/GetAccessLog")
        .field("patient_id", Some(patient.as_bytes()))
}

fn unavailable(source: &str, status: &Status) -> RecordsError {
    tracing::warn!(source, code = ?status.code(), "an audit trail could not be read");
    RecordsError::Status(carehub_platform::errors::retry_after(
        tonic::Code::Unavailable,
        carehub_proto::common::v1::ErrorReason::Unavailable,
        format!("the audit trail of {source} is unavailable; retry"),
        std::time::Duration::from_secs(1),
    ))
}

/// One source's progress within a request.
struct Reading {
    source: Source,
    token: String,
    /// The oldest key read so far.
    oldest: Option<Key>,
    exhausted: bool,
}

pub async fn get_access_log(
    state: &AppState,
    call: &Call,
    r: GetAccessLogRequest,
) -> Result<AccessLog> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    let filter = patient.map(page_filter);
    let page = filter
        .as_ref()
        .map(|f| Page::<Key>::read(r.page.as_ref(), f, "page", &mut v));
    v.finish()?;
    let (Some(patient), Some(filter), Some(page)) = (patient, filter, page) else {
        return Err(RecordsError::Internal(
            "a validated field is missing".into(),
        ));
    };
    access::own_chart(user, patient)?;
    let want = usize::try_from(page.size).unwrap_or(50);
    // Sources read from just after the cursor (their range end is exclusive: one microsecond
    // past it keeps events of the cursor's instant, filtered below).
    let end = page.after.map(|(at, _)| {
        carehub_platform::timestamps::to_proto(at + chrono::Duration::microseconds(1))
    });
    let mut readings: Vec<Reading> = state
        .audit_sources
        .iter()
        .cloned()
        .map(|source| Reading {
            source,
            token: String::new(),
            oldest: None,
            exhausted: false,
        })
        .collect();
    let mut seen = HashSet::new();
    let mut collected: Vec<(Key, String, AuditEvent)> = Vec::new();
    let mut complete_above: Option<Key> = None;
    for _ in 0..MAX_ROUNDS {
        for reading in readings.iter_mut().filter(|r| !r.exhausted) {
            let req = ListEventsRequest {
                filter: Some(list_events_request::Filter::SubjectId(patient.to_string())),
                start_time: None,
                end_time: end,
                page: Some(PageRequest {
                    page_size: FETCH,
                    page_token: reading.token.clone(),
                }),
                newest_first: true,
            };
            let name = reading.source.name().to_owned();
            let (events, token) = reading
                .source
                .list(req)
                .await
                .map_err(|s| unavailable(&name, &s))?;
            reading.exhausted = token.is_empty();
            reading.token = token;
            for e in events {
                let Some(k) = key(&e) else { continue };
                reading.oldest = Some(reading.oldest.map_or(k, |o| o.min(k)));
                if page.after.is_some_and(|c| k >= c) || !seen.insert(k.1) {
                    continue;
                }
                collected.push((k, name.clone(), e));
            }
        }
        // Every event at or above the newest "oldest read" of the sources that have more is
        // known: each source is read newest first without gaps.
        complete_above = readings
            .iter()
            .filter(|r| !r.exhausted)
            .filter_map(|r| r.oldest)
            .max();
        let known = collected
            .iter()
            .filter(|(k, _, e)| complete_above.is_none_or(|b| *k >= b) && !by_patient(e, patient))
            .count();
        if known > want || readings.iter().all(|r| r.exhausted) {
            break;
        }
    }
    let mut known: Vec<(Key, String, AuditEvent)> = collected
        .into_iter()
        .filter(|(k, _, _)| complete_above.is_none_or(|b| *k >= b))
        .collect();
    known.sort_by_key(|e| std::cmp::Reverse(e.0));
    // The page ends at `want` events of others; the patient's own are skipped past.
    let mut entries = Vec::new();
    let mut last: Option<Key> = None;
    let mut more = false;
    for (k, service, e) in known {
        if entries.len() == want {
            more = true;
            break;
        }
        last = Some(k);
        if !by_patient(&e, patient) {
            entries.push((service, e));
        }
    }
    // A full page continues after its last event; one cut short by the round limit after
    // the bound down to which the merge was known complete (all of it was returned).
    let next = if more { last } else { complete_above };
    let next_page_token = next
        .map(|k| paging::encode(&filter, &k))
        .unwrap_or_default();
    let names = names(state, &entries).await;
    let answer = AccessLog {
        entries: entries
            .into_iter()
            .map(|(service, e)| AccessLogEntry {
                time: e.occurred_at,
                service,
                actor_name: names.get(&e.actor_user_id).cloned().unwrap_or_default(),
                actor_user_id: e.actor_user_id,
                actor_role: e.actor_role,
                actor_workload: e.actor_workload,
                action: e.action,
                kind: e.kind,
                purpose: e.purpose,
                entity_type: e.entity_type,
                entity_id: e.entity_id,
            })
            .collect(),
        page: Some(PageResponse { next_page_token }),
    };
    let read = call.event(
        kinds::ACCESS_LOG_READ,
        Purpose::PatientRequest,
        "access_log",
        patient,
        patient,
    );
    call.read(&state.pool, read, answer).await
}

fn by_patient(e: &AuditEvent, patient: Uuid) -> bool {
    Uuid::parse_str(&e.actor_user_id).is_ok_and(|a| a == patient)
}

/// Display names of the acting users, from identity (unknown ones left out).
async fn names(state: &AppState, entries: &[(String, AuditEvent)]) -> HashMap<String, String> {
    let ids: HashSet<Uuid> = entries
        .iter()
        .filter_map(|(_, e)| Uuid::parse_str(&e.actor_user_id).ok())
        .collect();
    let lookups = ids
        .into_iter()
        .map(|id| async move { (id, state.directory.person(id, "user").await.ok()) });
    futures::future::join_all(lookups)
        .await
        .into_iter()
        .filter_map(|(id, p)| Some((id.to_string(), p?.display_name)))
        .collect()
}

/// The trails the log merges: records' own, identity's, and the configured others.
pub fn sources(
    local: AuditLogApi,
    identity: ServiceChannel,
    others: Vec<(String, ServiceChannel)>,
) -> Arc<Vec<Source>> {
    let mut out = vec![
        Source::Local(local),
        Source::Remote("identity".to_owned(), AuditLogClient::new(identity)),
    ];
    out.extend(
        others
            .into_iter()
            .map(|(name, channel)| Source::Remote(name, AuditLogClient::new(channel))),
    );
    Arc::new(out)
}
