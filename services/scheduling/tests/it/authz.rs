//! Scheduling's authorization, checked through the test kit (`carehub_testkit::authz`): every
//! RPC scheduling mounts has a policy rule, and the whole matrix — every RPC of
//! `SchedulingService` and `AccountEvents` × the patient whose appointments, holds, requests
//! and feed they are, another patient, the appointment's provider, another provider, staff,
//! billing, an admin (through the gateway), the records, messaging, billing and identity
//! workloads, and the gateway with no user — comes to the table below. Roles are necessary,
//! never sufficient: the policy lets patients and providers in, and the handlers
//! (`api::access`) narrow them to their own; the same provider role is allowed on their own
//! calendar and refused on another's. Every allowed call answers, and every answer of an RPC
//! that reads or changes personal data left an audit event carrying the call's request id and
//! the caller.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use carehub_platform::auth::Role;
use carehub_platform::client::ServiceChannel;
use carehub_platform::timestamps::to_proto;
use carehub_proto::common::v1::account_events_client::AccountEventsClient;
use carehub_proto::identity::v1::{AccountStatus, AccountStatusChanged};
use carehub_proto::scheduling::v1::scheduling_service_client::SchedulingServiceClient;
use carehub_proto::scheduling::v1::*;
use carehub_proto::FILE_DESCRIPTOR_SET;
use carehub_testkit::authz::{
    assert_every_rpc_has_a_rule, describe, rpc_paths, CallerKind, Matrix, Outcome, Whose,
};
use chrono::{DateTime, Duration, Utc};
use tonic::Code;
use uuid::Uuid;

use crate::common::{self, as_user, local, with_token, Suite, User, NEW_YORK};

const PUBLIC: &str = "carehub.scheduling.v1.SchedulingService";
const AUDIT_LOG: &str = "carehub.audit.v1.AuditLog";
const ACCOUNT_EVENTS: &str = "carehub.common.v1.AccountEvents";

#[test]
fn every_rpc_scheduling_mounts_has_a_policy_rule() {
    assert_eq!(rpc_paths(FILE_DESCRIPTOR_SET, PUBLIC).len(), 31);
    assert_every_rpc_has_a_rule(
        FILE_DESCRIPTOR_SET,
        &[PUBLIC, ACCOUNT_EVENTS, AUDIT_LOG],
        &[
            &carehub_scheduling::api::policy::policy(),
            &carehub_platform::audit::service::policy(),
        ],
    );
}

/// The columns. "another patient" and "another provider" ask about the patient's appointment,
/// hold, request and feed and the provider's calendar, as the two of them would; where an RPC
/// has no subject (search, the caller's own feeds) they act on their own.
fn callers() -> Vec<CallerKind> {
    use Whose::{Other, Own};
    vec![
        CallerKind::user("patient", "gateway", Role::Patient, Own),
        CallerKind::user("another patient", "gateway", Role::Patient, Other),
        CallerKind::user("provider", "gateway", Role::Provider, Own),
        CallerKind::user("another provider", "gateway", Role::Provider, Other),
        CallerKind::user("staff", "gateway", Role::Staff, Other),
        CallerKind::user("billing", "gateway", Role::Billing, Other),
        CallerKind::user("admin", "gateway", Role::Admin, Other),
        CallerKind::workload("records", "records"),
        CallerKind::workload("messaging", "messaging"),
        CallerKind::workload("billing workload", "billing"),
        CallerKind::workload("identity", "identity"),
        CallerKind::workload("gateway, no user", "gateway"),
    ]
}

/// The handler's refusal of someone else's data (`api::access`): PERMISSION_DENIED, past the
/// policy (the test also checks the message is not the policy's).
const NOT_THEIRS: Outcome = Outcome::Deny(Code::PermissionDenied, "NOT_A_PARTY");

/// Columns: the patient, another patient, the provider, another provider, staff, billing,
/// admin, the records, messaging, billing and identity workloads, the gateway without a user.
/// `.` allowed and answered, `R` role not allowed by the policy, `O` allowed by the policy
/// and refused by the handler for acting on someone else's data (PERMISSION_DENIED), `N`
/// allowed and answered NOT_FOUND (another user's calendar feed does not exist for them), `W`
/// workload not allowed, `T` no token. Rows run in order, columns left to right: the
/// appointment steps follow one another (confirm, check in, start, complete).
const TABLE: &str = "
    rpc                             pat oth prv oprv stf bil adm  rec msg blw idn  gw
    PutProvider                       R   R   .    O   .   R   .    W   W   W   W   T
    GetProvider                       .   .   .    .   .   .   .    W   W   W   W   T
    CreateVisitType                   R   R   R    R   .   R   .    W   W   W   W   T
    ListVisitTypes                    .   .   .    .   .   .   .    W   W   W   W   T
    SetWeeklyAvailability             R   R   .    O   .   R   .    W   W   W   W   T
    GetWeeklyAvailability             R   R   .    O   .   R   .    W   W   W   W   T
    AddAvailabilityException          R   R   .    O   .   R   .    W   W   W   W   T
    DeleteAvailabilityException       R   R   .    O   .   R   .    W   W   W   W   T
    ListAvailabilityExceptions        R   R   .    O   .   R   .    W   W   W   W   T
    SearchSlots                       .   .   .    .   .   R   R    W   W   W   W   T
    CreateHold                        .   O   R    R   .   R   R    W   W   W   W   T
    ReleaseHold                       .   O   R    R   .   R   R    W   W   W   W   T
    BookAppointment                   .   O   R    R   .   R   R    W   W   W   W   T
    GetAppointment                    .   O   .    O   .   R   R    W   W   W   W   T
    ListAppointments                  .   O   .    O   .   R   R    W   W   W   W   T
    CancelAppointment                 .   O   .    O   .   R   R    W   W   W   W   T
    RescheduleAppointment             .   O   .    O   .   R   R    W   W   W   W   T
    ConfirmAppointment                R   R   .    O   .   R   R    W   W   W   W   T
    CheckInAppointment                .   O   .    O   .   R   R    W   W   W   W   T
    StartAppointment                  R   R   .    O   .   R   R    W   W   W   W   T
    CompleteAppointment               R   R   .    O   .   R   R    W   W   W   W   T
    MarkNoShow                        R   R   .    O   .   R   R    W   W   W   W   T
    SubmitIntake                      .   O   R    R   R   R   R    W   W   W   W   T
    RequestConsultation               .   O   R    R   .   R   R    W   W   W   W   T
    GetConsultationRequest            .   O   R    R   .   R   R    W   W   W   W   T
    ListConsultationRequests          .   .   R    R   .   R   R    W   W   W   W   T
    AcceptConsultationRequest         R   R   R    R   .   R   R    W   W   W   W   T
    DeclineConsultationRequest        R   R   R    R   .   R   R    W   W   W   W   T
    CreateCalendarFeed                .   .   .    .   R   R   R    W   W   W   W   T
    ListCalendarFeeds                 .   .   .    .   R   R   R    W   W   W   W   T
    RevokeCalendarFeed                .   N   .    N   R   R   R    W   W   W   W   T
    AccountEvents/ApplyAccountEvent   W   W   W    W   W   W   W    W   W   W   .   W
";

/// RPCs whose answers carry no personal data (`Audited::Exempt` as directory reads); the
/// listings (`ListAppointments`, `ListConsultationRequests`) audit each item they return.
const DIRECTORY_READS: &[&str] = &[
    "GetProvider",
    "ListVisitTypes",
    "GetWeeklyAvailability",
    "ListAvailabilityExceptions",
    "SearchSlots",
    "ListCalendarFeeds",
];

fn matrix() -> Matrix {
    let mut m = Matrix::new(callers())
        .legend('O', NOT_THEIRS)
        .legend('N', Outcome::Refused(Code::NotFound));
    for (rpc, cells) in rows() {
        m = m.row(&path(rpc), cells);
    }
    m
}

/// The gRPC path of a row: `Method` of SchedulingService, or `Service/Method` of
/// `carehub.common.v1`.
fn path(row: &str) -> String {
    if row.contains('/') {
        format!("/carehub.common.v1.{row}")
    } else {
        format!("/{PUBLIC}/{row}")
    }
}

/// The rows of [`TABLE`]: each RPC and its cells.
fn rows() -> impl Iterator<Item = (&'static str, &'static str)> {
    TABLE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("rpc "))
        .map(|l| l.split_once(' ').unwrap())
}

/// The legend symbol of `rpc` (a path) for the column `label`.
fn symbol(rpc: &str, label: &str) -> char {
    let cells = rows()
        .find(|(r, _)| path(r) == rpc)
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("no row for {rpc}"));
    let column = callers()
        .iter()
        .position(|c| c.label == label)
        .unwrap_or_else(|| panic!("no column {label}"));
    cells
        .chars()
        .filter(|c| !c.is_whitespace())
        .nth(column)
        .unwrap()
}

struct World {
    patient: User,
    another: User,
    provider: User,
    other_provider: User,
    staff: User,
    billing: User,
    admin: User,
    visit: VisitType,
    intake_visit: VisitType,
    /// The patient's appointment with the provider (a visit type with an intake form): read,
    /// listed, its intake submitted; the target of every refused appointment call.
    appointment: Appointment,
    /// Booked appointments each allowed column cancels.
    cancels: HashMap<&'static str, String>,
    /// The appointment each allowed column moves to a slot of its own.
    to_move: String,
    /// Requested appointments the provider and staff confirm.
    requested: HashMap<&'static str, String>,
    /// Booked appointments checked in by each allowed column, then started and completed by
    /// the provider and staff.
    flow: HashMap<&'static str, String>,
    /// Booked appointments whose start has passed, marked no-show by the provider and staff.
    no_shows: HashMap<&'static str, String>,
    /// A live hold of the patient's.
    hold: Hold,
    /// Exceptions of the provider's calendar, one per column that reaches the handler.
    exceptions: HashMap<&'static str, String>,
    /// An open consultation request of the patient's (read), one to accept, one to decline.
    consultation: ConsultationRequest,
    to_accept: ConsultationRequest,
    to_decline: ConsultationRequest,
    /// The patient's and the provider's calendar feeds.
    feeds: HashMap<&'static str, String>,
    /// Channels to scheduling as each workload.
    channels: HashMap<&'static str, ServiceChannel>,
    /// The next free half-hour of the provider's availability (see [`World::next_slot`]).
    next: AtomicU32,
}

impl World {
    fn user(&self, label: &str) -> Option<&User> {
        Some(match label {
            "patient" => &self.patient,
            "another patient" => &self.another,
            "provider" => &self.provider,
            "another provider" => &self.other_provider,
            "staff" => &self.staff,
            "billing" => &self.billing,
            "admin" => &self.admin,
            _ => return None,
        })
    }

    /// Half-hour slots of the provider's availability (08:00-18:00 New York), from the day
    /// after tomorrow on, each handed out once: nothing the matrix books or holds overlaps.
    fn next_slot(&self) -> DateTime<Utc> {
        slot(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// The appointment `label` acts on in `targets`, else the patient's appointment.
    fn target(&self, targets: &HashMap<&'static str, String>, label: &str) -> String {
        targets
            .get(label)
            .cloned()
            .unwrap_or_else(|| self.appointment.id.clone())
    }
}

fn slot(n: u32) -> DateTime<Utc> {
    let day = 2 + i64::from(n / 20);
    let minutes = 8 * 60 + (n % 20) * 30;
    local(NEW_YORK, day, minutes / 60, minutes % 60)
}

/// `msg` with `user`'s token (or none), a fresh idempotency key and `request_id`.
fn signed<T>(user: Option<&User>, msg: T, request_id: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(u) = user {
        r = with_token(r, &u.token);
    }
    let headers = r.metadata_mut();
    headers.insert(
        "idempotency-key",
        Uuid::now_v7().to_string().parse().unwrap(),
    );
    headers.insert("x-request-id", request_id.parse().unwrap());
    r
}

fn every_day_8_to_18() -> Vec<WeeklyWindow> {
    (1..=7)
        .map(|d| WeeklyWindow {
            weekday: d,
            start: Some(LocalTime {
                hours: 8,
                minutes: 0,
            }),
            end: Some(LocalTime {
                hours: 18,
                minutes: 0,
            }),
            visit_type_ids: vec![],
        })
        .collect()
}

fn provider_entry(w: &World) -> Provider {
    Provider {
        provider_id: w.provider.id.clone(),
        time_zone: "America/New_York".into(),
        specialties: vec!["family-medicine".into()],
        license_states: vec!["NY".into(), "CA".into()],
        languages: vec!["en".into(), "es".into()],
        accepting_new_patients: true,
        visit_type_ids: vec![w.visit.id.clone(), w.intake_visit.id.clone()],
        update_time: None,
    }
}

/// An extra hour of the provider's, `days` from today at `hour` (far from every slot used).
fn extra_hour(provider: &User, days: i64, hour: u32) -> AvailabilityException {
    let start = local(NEW_YORK, days, hour, 0);
    AvailabilityException {
        provider_id: provider.id.clone(),
        kind: ExceptionKind::ExtraHours as i32,
        start_time: Some(to_proto(start)),
        end_time: Some(to_proto(start + Duration::hours(1))),
        ..Default::default()
    }
}

async fn book(
    suite: &Suite,
    patient: &User,
    provider: &User,
    visit: &VisitType,
    start: DateTime<Utc>,
    request_only: bool,
) -> Appointment {
    suite
        .public()
        .await
        .book_appointment(as_user(
            patient,
            BookAppointmentRequest {
                provider_id: provider.id.clone(),
                visit_type_id: visit.id.clone(),
                start_time: Some(to_proto(start)),
                reason: "persistent cough".into(),
                request_only,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn world(suite: &Suite) -> World {
    let staff = suite.user(Role::Staff, "desk").await;
    let visit = suite
        .visit_type(&staff, 30, 0, Modality::Telehealth, "")
        .await;
    let intake_visit = suite
        .visit_type(&staff, 30, 0, Modality::Telehealth, "new-patient")
        .await;
    let provider = suite
        .provider(&staff, "America/New_York", &[&visit, &intake_visit], 8, 18)
        .await;
    let other_provider = suite
        .provider(&staff, "America/New_York", &[&visit], 8, 18)
        .await;
    let patient = suite.user(Role::Patient, "pat").await;
    let another = suite.user(Role::Patient, "oth").await;
    let billing = suite.user(Role::Billing, "bil").await;
    let admin = suite.user(Role::Admin, "adm").await;
    let mut api = suite.public().await;

    let mut n = 0;
    let mut next = || {
        n += 1;
        slot(n - 1)
    };
    let appointment = book(suite, &patient, &provider, &intake_visit, next(), false).await;
    let mut booked = |labels: &[&'static str]| {
        labels
            .iter()
            .map(|l| (*l, next()))
            .collect::<Vec<(&'static str, DateTime<Utc>)>>()
    };
    let (cancel_at, flow_at, no_show_at, requested_at, move_at, hold_at) = (
        booked(&["patient", "provider", "staff"]),
        booked(&["patient", "provider", "staff"]),
        booked(&["provider", "staff"]),
        booked(&["provider", "staff"]),
        booked(&["patient"]),
        booked(&["patient"]),
    );
    let mut cancels = HashMap::new();
    for (l, at) in cancel_at {
        let a = book(suite, &patient, &provider, &visit, at, false).await;
        cancels.insert(l, a.id);
    }
    let mut flow = HashMap::new();
    for (l, at) in flow_at {
        let a = book(suite, &patient, &provider, &visit, at, false).await;
        flow.insert(l, a.id);
    }
    let mut no_shows = HashMap::new();
    for (l, at) in no_show_at {
        let a = book(suite, &patient, &provider, &visit, at, false).await;
        // Its start has passed (no booking can be made in the past).
        sqlx::query(
            "UPDATE appointments SET start_time = now() - interval '2 hours',
                    end_time = now() - interval '90 minutes' WHERE id = $1::uuid",
        )
        .bind(&a.id)
        .execute(suite.pool())
        .await
        .unwrap();
        no_shows.insert(l, a.id);
    }
    let mut requested = HashMap::new();
    for (l, at) in requested_at {
        let a = book(suite, &patient, &provider, &visit, at, true).await;
        assert_eq!(a.status, AppointmentStatus::Requested as i32);
        requested.insert(l, a.id);
    }
    let to_move = book(suite, &patient, &provider, &visit, move_at[0].1, false)
        .await
        .id;
    let hold = api
        .create_hold(as_user(
            &patient,
            CreateHoldRequest {
                provider_id: provider.id.clone(),
                visit_type_id: visit.id.clone(),
                start_time: Some(to_proto(hold_at[0].1)),
                patient_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();

    let mut exceptions = HashMap::new();
    for (i, l) in ["provider", "another provider", "staff", "admin"]
        .into_iter()
        .enumerate()
    {
        let e = api
            .add_availability_exception(as_user(
                &staff,
                AddAvailabilityExceptionRequest {
                    exception: Some(extra_hour(&provider, 60, 19 + u32::try_from(i).unwrap())),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        exceptions.insert(l, e.id);
    }

    let mut consult = Vec::new();
    for why in [
        "a rash that keeps coming back",
        "headaches in the morning",
        "a second opinion on my knee",
    ] {
        let c = api
            .request_consultation(as_user(
                &patient,
                RequestConsultationRequest {
                    reason: why.into(),
                    state: "NY".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        consult.push(c);
    }
    let [consultation, to_accept, to_decline]: [ConsultationRequest; 3] =
        consult.try_into().unwrap();

    let mut feeds = HashMap::new();
    for (l, u) in [("patient", &patient), ("provider", &provider)] {
        let f = api
            .create_calendar_feed(as_user(
                u,
                CreateCalendarFeedRequest {
                    time_zone: "America/New_York".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        feeds.insert(l, f.id);
    }

    let mut channels = HashMap::new();
    for workload in ["gateway", "records", "messaging", "billing", "identity"] {
        channels.insert(workload, suite.scheduling.channel(workload).await);
    }
    World {
        patient,
        another,
        provider,
        other_provider,
        staff,
        billing,
        admin,
        visit,
        intake_visit,
        appointment,
        cancels,
        to_move,
        requested,
        flow,
        no_shows,
        hold,
        exceptions,
        consultation,
        to_accept,
        to_decline,
        feeds,
        channels,
        next: AtomicU32::new(n),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_matrix_holds_and_every_allowed_call_is_audited() {
    let suite = common::spawn().await;
    let world = world(&suite).await;
    let m = matrix();
    let mut all = rpc_paths(FILE_DESCRIPTOR_SET, PUBLIC);
    all.extend(rpc_paths(FILE_DESCRIPTOR_SET, ACCOUNT_EVENTS));
    m.assert_covers(&all);

    // Events of one call: by its request id and its caller.
    let events = |request_id: String, user: String| {
        let pool = suite.pool().clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM (
                     SELECT request_id, actor_user_id FROM carehub_platform.audit_queue
                     UNION ALL
                     SELECT request_id, actor_user_id FROM carehub_platform.audit_events
                 ) e WHERE e.request_id = $1 AND e.actor_user_id = $2::uuid",
            )
            .bind(request_id)
            .bind(user)
            .fetch_one(&pool)
            .await
            .unwrap();
            n
        }
    };
    let problems = Mutex::new(Vec::new());
    m.run(|rpc, caller| {
        let (world, problems, events) = (&world, &problems, &events);
        async move {
            let request_id = Uuid::now_v7().to_string();
            let result = call(world, &rpc, &caller, &request_id).await;
            let what = format!("{rpc} as {}", caller.label);
            let problem = |p: String| problems.lock().unwrap().push(p);
            match (&result, symbol(&rpc, caller.label)) {
                (Ok(true), _) => {
                    let user = world.user(caller.label).unwrap();
                    if events(request_id, user.id.clone()).await == 0 {
                        problem(format!("{what}: answered without an audit event"));
                    }
                }
                (Err(s), '.') => problem(format!(
                    "{what}: allowed, but refused: {}",
                    describe(&Err(s.clone()))
                )),
                (Err(s), 'R') if !s.message().contains("lacks a role") => {
                    problem(format!("{what}: not refused by the policy: {s:?}"))
                }
                (Err(s), 'O') if s.message().contains("lacks a role") => {
                    problem(format!("{what}: refused by the policy, not the handler"))
                }
                _ => {}
            }
            result.map(drop)
        }
    })
    .await;
    let problems = problems.into_inner().unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    suite.shutdown().await;
}

/// Makes `rpc` as `caller`: `Ok(true)` when the answer read or changed personal data (an
/// audit event must exist), `Ok(false)` for directory reads and empty listings.
async fn call(
    w: &World,
    rpc: &str,
    caller: &CallerKind,
    request_id: &str,
) -> Result<bool, tonic::Status> {
    let label = caller.label;
    let user = w.user(label);
    let method = rpc.rsplit('/').next().unwrap_or_default();
    if rpc.contains(ACCOUNT_EVENTS) {
        // A reactivation of someone scheduling never heard of: it changes nothing (the
        // terminations are effects.rs's case).
        return AccountEventsClient::new(w.channels[caller.workload].clone())
            .apply_account_event(signed(
                user,
                AccountStatusChanged {
                    user_id: Uuid::now_v7().to_string(),
                    status: AccountStatus::Active as i32,
                    change_time: Some(to_proto(Utc::now())),
                },
                request_id,
            ))
            .await
            .map(|_| false);
    }
    let mut c = SchedulingServiceClient::new(w.channels[caller.workload].clone());
    macro_rules! s {
        ($msg:expr) => {
            signed(user, $msg, request_id)
        };
    }
    let audited = !DIRECTORY_READS.contains(&method);
    let provider_id = w.provider.id.clone();
    let patient_id = w.patient.id.clone();
    // Booking-type requests name the patient: patients leave it empty (themselves); the other
    // patient names the patient (refused); staff name the patient they act for.
    let for_patient = if label == "patient" {
        String::new()
    } else {
        patient_id.clone()
    };
    match method {
        "PutProvider" => c
            .put_provider(s!(PutProviderRequest {
                provider: Some(provider_entry(w)),
            }))
            .await
            .map(drop),
        "GetProvider" => c
            .get_provider(s!(GetProviderRequest { provider_id }))
            .await
            .map(drop),
        "CreateVisitType" => c
            .create_visit_type(s!(CreateVisitTypeRequest {
                visit_type: Some(VisitType {
                    name: "Skin check".into(),
                    duration_minutes: 20,
                    modality: Modality::InPerson as i32,
                    price_code: "EM-99212".into(),
                    ..Default::default()
                }),
            }))
            .await
            .map(drop),
        "ListVisitTypes" => c
            .list_visit_types(s!(ListVisitTypesRequest::default()))
            .await
            .map(drop),
        "SetWeeklyAvailability" => c
            .set_weekly_availability(s!(SetWeeklyAvailabilityRequest {
                provider_id,
                windows: every_day_8_to_18(),
            }))
            .await
            .map(drop),
        "GetWeeklyAvailability" => c
            .get_weekly_availability(s!(GetWeeklyAvailabilityRequest { provider_id }))
            .await
            .map(drop),
        "AddAvailabilityException" => c
            .add_availability_exception(s!(AddAvailabilityExceptionRequest {
                exception: Some(extra_hour(&w.provider, 70, 19)),
            }))
            .await
            .map(drop),
        "DeleteAvailabilityException" => c
            .delete_availability_exception(s!(DeleteAvailabilityExceptionRequest {
                id: w
                    .exceptions
                    .get(label)
                    .cloned()
                    .unwrap_or_else(|| Uuid::now_v7().to_string()),
            }))
            .await
            .map(drop),
        "ListAvailabilityExceptions" => c
            .list_availability_exceptions(s!(ListAvailabilityExceptionsRequest {
                provider_id,
                ..Default::default()
            }))
            .await
            .map(drop),
        "SearchSlots" => {
            let from = local(NEW_YORK, 10, 0, 0);
            c.search_slots(s!(SearchSlotsRequest {
                start_time: Some(to_proto(from)),
                end_time: Some(to_proto(from + Duration::days(1))),
                visit_type_id: w.visit.id.clone(),
                provider_ids: vec![provider_id],
                time_zone: "America/Chicago".into(),
                ..Default::default()
            }))
            .await
            .map(drop)
        }
        "CreateHold" => c
            .create_hold(s!(CreateHoldRequest {
                provider_id,
                visit_type_id: w.visit.id.clone(),
                start_time: Some(to_proto(w.next_slot())),
                patient_id: for_patient,
            }))
            .await
            .map(drop),
        "ReleaseHold" => c
            .release_hold(s!(ReleaseHoldRequest {
                hold_id: w.hold.id.clone(),
            }))
            .await
            .map(drop),
        "BookAppointment" => c
            .book_appointment(s!(BookAppointmentRequest {
                provider_id,
                visit_type_id: w.visit.id.clone(),
                start_time: Some(to_proto(w.next_slot())),
                patient_id: for_patient,
                reason: "persistent cough".into(),
                ..Default::default()
            }))
            .await
            .map(drop),
        "GetAppointment" => c
            .get_appointment(s!(GetAppointmentRequest {
                appointment_id: w.appointment.id.clone(),
            }))
            .await
            .map(drop),
        "ListAppointments" => {
            // Patients and staff list the patient's appointments; providers the provider's.
            let by_provider = matches!(label, "provider" | "another provider");
            let answer = c
                .list_appointments(s!(ListAppointmentsRequest {
                    patient_id: if by_provider {
                        String::new()
                    } else {
                        patient_id
                    },
                    provider_id: if by_provider {
                        provider_id
                    } else {
                        String::new()
                    },
                    ..Default::default()
                }))
                .await?
                .into_inner();
            return Ok(!answer.appointments.is_empty());
        }
        "CancelAppointment" => c
            .cancel_appointment(s!(CancelAppointmentRequest {
                appointment_id: w.target(&w.cancels, label),
                reason: CancelReason::PatientRequest as i32,
                note: "feeling better".into(),
            }))
            .await
            .map(drop),
        "RescheduleAppointment" => c
            .reschedule_appointment(s!(RescheduleAppointmentRequest {
                appointment_id: if matches!(label, "patient" | "provider" | "staff") {
                    w.to_move.clone()
                } else {
                    w.appointment.id.clone()
                },
                start_time: Some(to_proto(w.next_slot())),
                hold_id: String::new(),
            }))
            .await
            .map(drop),
        "ConfirmAppointment" => c
            .confirm_appointment(s!(AppointmentActionRequest {
                appointment_id: w.target(&w.requested, label),
            }))
            .await
            .map(drop),
        "CheckInAppointment" => c
            .check_in_appointment(s!(AppointmentActionRequest {
                appointment_id: w.target(&w.flow, label),
            }))
            .await
            .map(drop),
        "StartAppointment" => c
            .start_appointment(s!(AppointmentActionRequest {
                appointment_id: w.target(&w.flow, label),
            }))
            .await
            .map(drop),
        "CompleteAppointment" => c
            .complete_appointment(s!(AppointmentActionRequest {
                appointment_id: w.target(&w.flow, label),
            }))
            .await
            .map(drop),
        "MarkNoShow" => c
            .mark_no_show(s!(AppointmentActionRequest {
                appointment_id: w.target(&w.no_shows, label),
            }))
            .await
            .map(drop),
        "SubmitIntake" => c
            .submit_intake(s!(SubmitIntakeRequest {
                appointment_id: w.appointment.id.clone(),
                answers: [("symptoms".to_owned(), "a cough at night".to_owned())].into(),
            }))
            .await
            .map(drop),
        "RequestConsultation" => c
            .request_consultation(s!(RequestConsultationRequest {
                patient_id: for_patient,
                reason: "a mole that changed colour".into(),
                state: "NY".into(),
                ..Default::default()
            }))
            .await
            .map(drop),
        "GetConsultationRequest" => c
            .get_consultation_request(s!(GetConsultationRequestRequest {
                id: w.consultation.id.clone(),
            }))
            .await
            .map(drop),
        "ListConsultationRequests" => {
            let answer = c
                .list_consultation_requests(s!(ListConsultationRequestsRequest::default()))
                .await?
                .into_inner();
            return Ok(!answer.requests.is_empty());
        }
        "AcceptConsultationRequest" => c
            .accept_consultation_request(s!(AcceptConsultationRequestRequest {
                id: w.to_accept.id.clone(),
                provider_id,
                visit_type_id: w.visit.id.clone(),
                start_time: Some(to_proto(w.next_slot())),
            }))
            .await
            .map(drop),
        "DeclineConsultationRequest" => c
            .decline_consultation_request(s!(DeclineConsultationRequestRequest {
                id: w.to_decline.id.clone(),
                reason: "please see an orthopedic surgeon".into(),
            }))
            .await
            .map(drop),
        "CreateCalendarFeed" => c
            .create_calendar_feed(s!(CreateCalendarFeedRequest {
                time_zone: "Europe/Paris".into(),
            }))
            .await
            .map(drop),
        "ListCalendarFeeds" => c
            .list_calendar_feeds(s!(ListCalendarFeedsRequest {}))
            .await
            .map(drop),
        "RevokeCalendarFeed" => {
            // The other patient and provider ask for the patient's and the provider's feed.
            let owner = match label {
                "another patient" => "patient",
                "another provider" => "provider",
                l => l,
            };
            c.revoke_calendar_feed(s!(RevokeCalendarFeedRequest {
                id: w
                    .feeds
                    .get(owner)
                    .cloned()
                    .unwrap_or_else(|| Uuid::now_v7().to_string()),
            }))
            .await
            .map(drop)
        }
        other => panic!("no call for {other}"),
    }
    .map(|()| audited)
}
