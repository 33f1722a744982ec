//! Bad input to every scheduling RPC, table-driven: each bad request gets INVALID_ARGUMENT with
//! exactly the fields at fault named in `google.rpc.BadRequest`, or the precise code and
//! `ErrorInfo` reason of what it asks (NOT_FOUND, PERMISSION_DENIED, FAILED_PRECONDITION with
//! SLOT_UNAVAILABLE, HOLD_EXPIRED or STATE_CONFLICT). Every case also checks that the refused
//! call left nothing behind (appointments, holds, claims, requests, exceptions, feeds, the
//! directory and the windows as they were) and that no error echoes the free text it was sent
//! (every reason, note and answer below says "cough").
//!
//! ListCalendarFeeds takes no input: there is nothing to refuse.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use carehub_platform::auth::Role;
use carehub_platform::errors::details_of;
use carehub_platform::timestamps::to_proto;
use carehub_proto::common::v1::PageRequest;
use carehub_proto::scheduling::v1::*;
use chrono::{DateTime, Duration, Utc};
use futures::future::BoxFuture;
use prost_types::Timestamp;
use tonic::{Code, Status};
use uuid::Uuid;

use crate::common::{self, as_user, keyed, local, reason, Suite, User, NEW_YORK};

/// One call's answer, reduced to whether it was refused and how.
type Answer = BoxFuture<'static, Result<(), Status>>;

/// `$api.$method($req)` as an [`Answer`], made when the case runs.
macro_rules! rpc {
    ($api:expr, $method:ident, $req:expr) => {{
        let mut client = $api.clone();
        let req = $req;
        let answer: Answer = Box::pin(async move { client.$method(req).await.map(drop) });
        answer
    }};
}

enum Want {
    /// INVALID_ARGUMENT (reason INVALID_FIELD) naming exactly these fields.
    Fields(&'static [&'static str]),
    /// This code and `ErrorInfo` reason, and no field violations.
    Refused(Code, &'static str),
}

struct Case {
    name: &'static str,
    answer: Answer,
    want: Want,
}

fn bad(name: &'static str, answer: Answer, fields: &'static [&'static str]) -> Case {
    Case {
        name,
        answer,
        want: Want::Fields(fields),
    }
}

fn refused(name: &'static str, answer: Answer, code: Code, reason: &'static str) -> Case {
    Case {
        name,
        answer,
        want: Want::Refused(code, reason),
    }
}

fn not_found(name: &'static str, answer: Answer) -> Case {
    refused(name, answer, Code::NotFound, "RESOURCE_NOT_FOUND")
}

fn denied(name: &'static str, answer: Answer) -> Case {
    refused(name, answer, Code::PermissionDenied, "NOT_A_PARTY")
}

fn precondition(name: &'static str, answer: Answer, reason: &'static str) -> Case {
    refused(name, answer, Code::FailedPrecondition, reason)
}

/// Everything a refused call must leave as it was. Holds and claims are counted only: the
/// sweeper may release a lapsed hold at any time.
async fn snapshot(suite: &Suite) -> String {
    sqlx::query_scalar(
        "SELECT concat_ws(' | ',
            (SELECT count(*) FROM appointments),
            (SELECT string_agg(id::text || ':' || status || ':' || intake_status || ':' || revision
                               || ':' || start_time::text, ',' ORDER BY id) FROM appointments),
            (SELECT count(*) FROM holds),
            (SELECT count(*) FROM slot_claims),
            (SELECT count(*) FROM consultation_requests),
            (SELECT string_agg(id::text || ':' || status, ',' ORDER BY id)
               FROM consultation_requests),
            (SELECT count(*) FROM availability_exceptions),
            (SELECT count(*) FROM calendar_feeds),
            (SELECT count(*) FROM calendar_feeds WHERE revoked_at IS NULL),
            (SELECT count(*) FROM visit_types),
            (SELECT string_agg(provider_id::text || ':' || updated_at::text, ','
                               ORDER BY provider_id) FROM providers),
            (SELECT count(*) FROM weekly_windows))",
    )
    .fetch_one(suite.pool())
    .await
    .unwrap()
}

/// What is wrong with `result` for `want`, if anything.
fn judge(want: &Want, result: Result<(), Status>) -> Option<String> {
    let s = match result {
        Ok(()) => return Some("accepted".to_owned()),
        Err(s) => s,
    };
    let d = details_of(&s);
    if s.message().contains("cough") || d.field_violations.iter().any(|(_, w)| w.contains("cough"))
    {
        return Some(format!("the error echoes the free text sent: {s:?}"));
    }
    let mut got: Vec<&str> = d.field_violations.iter().map(|(f, _)| f.as_str()).collect();
    got.sort_unstable();
    got.dedup();
    match want {
        Want::Fields(fields) => {
            let mut want: Vec<&str> = fields.to_vec();
            want.sort_unstable();
            let ok = s.code() == Code::InvalidArgument
                && d.reason.as_deref() == Some("INVALID_FIELD")
                && got == want;
            (!ok).then(|| {
                format!(
                    "expected INVALID_ARGUMENT naming {want:?}, got {:?} {:?} naming {got:?} ({})",
                    s.code(),
                    d.reason,
                    s.message()
                )
            })
        }
        Want::Refused(code, reason) => {
            let ok = s.code() == *code && d.reason.as_deref() == Some(*reason) && got.is_empty();
            (!ok).then(|| {
                format!(
                    "expected {code:?} {reason}, got {:?} {:?} naming {got:?} ({})",
                    s.code(),
                    d.reason,
                    s.message()
                )
            })
        }
    }
}

/// Runs the cases one after the other and fails with every case that went wrong.
async fn run(suite: &Suite, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in cases {
        let before = snapshot(suite).await;
        let result = case.answer.await;
        if let Some(why) = judge(&case.want, result) {
            failures.push(format!("{}: {why}", case.name));
        }
        let after = snapshot(suite).await;
        if before != after {
            failures.push(format!(
                "{}: the refused call changed something:\n  before {before}\n  after  {after}",
                case.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad-input cases went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn ts(t: DateTime<Utc>) -> Option<Timestamp> {
    Some(to_proto(t))
}

/// A timestamp no instant has (negative nanos).
fn broken_ts() -> Option<Timestamp> {
    Some(Timestamp {
        seconds: 1_900_000_000,
        nanos: -1,
    })
}

fn random_id() -> String {
    Uuid::now_v7().to_string()
}

fn page(size: i32, token: &str) -> Option<PageRequest> {
    Some(PageRequest {
        page_size: size,
        page_token: token.to_owned(),
    })
}

fn window(weekday: i32, from: (i32, i32), to: Option<(i32, i32)>) -> WeeklyWindow {
    WeeklyWindow {
        weekday,
        start: Some(LocalTime {
            hours: from.0,
            minutes: from.1,
        }),
        end: to.map(|(hours, minutes)| LocalTime { hours, minutes }),
        visit_type_ids: vec![],
    }
}

/// Bookings, holds and the directory share one visit type offered by one provider; these are
/// the provider, the visit type and a patient.
struct Clinic {
    staff: User,
    visit: VisitType,
    provider: User,
    patient: User,
    other: User,
}

async fn clinic(suite: &Suite) -> Clinic {
    let (staff, visit, provider) = suite.clinic().await;
    Clinic {
        staff,
        visit,
        provider,
        patient: suite.user(Role::Patient, "pat").await,
        other: suite.user(Role::Patient, "oth").await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_availability_search_and_feeds_refuse_bad_input() {
    let suite = common::spawn().await;
    let Clinic {
        staff,
        visit,
        provider,
        patient,
        ..
    } = clinic(&suite).await;
    let not_offered = suite
        .visit_type(&staff, 45, 0, Modality::InPerson, "")
        .await;
    let api = suite.public().await;
    let mut c = api.clone();
    // Two exceptions, to get a page token of the exception listing.
    for days in [40, 41] {
        let start = local(NEW_YORK, days, 9, 0);
        c.add_availability_exception(as_user(
            &staff,
            AddAvailabilityExceptionRequest {
                exception: Some(AvailabilityException {
                    provider_id: provider.id.clone(),
                    kind: ExceptionKind::TimeOff as i32,
                    start_time: ts(start),
                    end_time: ts(start + Duration::hours(2)),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap();
    }
    let exceptions_token = c
        .list_availability_exceptions(as_user(
            &staff,
            ListAvailabilityExceptionsRequest {
                provider_id: provider.id.clone(),
                page: page(1, ""),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .page
        .unwrap()
        .next_page_token;
    assert!(!exceptions_token.is_empty());
    let search = |start: DateTime<Utc>, end: DateTime<Utc>| SearchSlotsRequest {
        start_time: ts(start),
        end_time: ts(end),
        visit_type_id: visit.id.clone(),
        time_zone: "America/New_York".into(),
        ..Default::default()
    };
    let day = local(NEW_YORK, 3, 0, 0);
    let slots_token = c
        .search_slots(as_user(
            &patient,
            SearchSlotsRequest {
                page: page(1, ""),
                ..search(day, day + Duration::days(1))
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .page
        .unwrap()
        .next_page_token;
    assert!(!slots_token.is_empty());
    let windows_before = c
        .get_weekly_availability(as_user(
            &staff,
            GetWeeklyAvailabilityRequest {
                provider_id: provider.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();

    let entry = || Provider {
        provider_id: provider.id.clone(),
        time_zone: "America/New_York".into(),
        specialties: vec!["family-medicine".into()],
        license_states: vec!["NY".into()],
        languages: vec!["en".into()],
        accepting_new_patients: true,
        visit_type_ids: vec![visit.id.clone()],
        update_time: None,
    };
    let put = |p: Provider| {
        rpc!(
            api,
            put_provider,
            as_user(&staff, PutProviderRequest { provider: Some(p) })
        )
    };
    let visit_type = |t: VisitType| {
        rpc!(
            api,
            create_visit_type,
            as_user(
                &staff,
                CreateVisitTypeRequest {
                    visit_type: Some(t)
                }
            )
        )
    };
    let good_type = || VisitType {
        name: "Annual physical".into(),
        duration_minutes: 60,
        buffer_minutes: 10,
        modality: Modality::InPerson as i32,
        price_code: "EM-99396".into(),
        ..Default::default()
    };
    let set = |provider_id: &str, windows: Vec<WeeklyWindow>| {
        rpc!(
            api,
            set_weekly_availability,
            as_user(
                &staff,
                SetWeeklyAvailabilityRequest {
                    provider_id: provider_id.to_owned(),
                    windows,
                }
            )
        )
    };
    let p = provider.id.as_str();
    let add = |e: AvailabilityException| {
        rpc!(
            api,
            add_availability_exception,
            as_user(
                &staff,
                AddAvailabilityExceptionRequest { exception: Some(e) }
            )
        )
    };
    let off = local(NEW_YORK, 20, 12, 0);
    let time_off = || AvailabilityException {
        provider_id: provider.id.clone(),
        kind: ExceptionKind::TimeOff as i32,
        start_time: ts(off),
        end_time: ts(off + Duration::hours(1)),
        ..Default::default()
    };
    let list_exceptions = |provider_id: &str, end_after: Option<Timestamp>, token: &str| {
        rpc!(
            api,
            list_availability_exceptions,
            as_user(
                &staff,
                ListAvailabilityExceptionsRequest {
                    provider_id: provider_id.to_owned(),
                    end_after,
                    page: page(1, token),
                }
            )
        )
    };
    let find = |r: SearchSlotsRequest| rpc!(api, search_slots, as_user(&patient, r));
    let base = || search(day, day + Duration::days(1));
    let feed = |zone: &str| {
        rpc!(
            api,
            create_calendar_feed,
            as_user(
                &patient,
                CreateCalendarFeedRequest {
                    time_zone: zone.to_owned(),
                }
            )
        )
    };
    let many_windows: Vec<WeeklyWindow> = (0..71)
        .map(|i| window(1 + i % 7, (i / 7, 0), Some((i / 7, 30))))
        .collect();
    let some_ids: Vec<String> = (0..101).map(|_| random_id()).collect();

    let cases = vec![
        // ---- PutProvider ----
        bad(
            "PutProvider: nothing",
            rpc!(
                api,
                put_provider,
                as_user(&staff, PutProviderRequest { provider: None })
            ),
            &[
                "provider.provider_id",
                "provider.time_zone",
                "provider.specialties",
                "provider.license_states",
                "provider.languages",
                "provider.visit_type_ids",
            ],
        ),
        bad(
            "PutProvider: unknown time zone",
            put(Provider {
                time_zone: "Mars/Olympus_Mons".into(),
                ..entry()
            }),
            &["provider.time_zone"],
        ),
        bad(
            "PutProvider: time zone with a space",
            put(Provider {
                time_zone: "America/New York".into(),
                ..entry()
            }),
            &["provider.time_zone"],
        ),
        bad(
            "PutProvider: state codes in lower case and unknown",
            put(Provider {
                license_states: vec!["NY".into(), "ny".into(), "XX".into()],
                ..entry()
            }),
            &["provider.license_states[1]", "provider.license_states[2]"],
        ),
        bad(
            "PutProvider: a state twice",
            put(Provider {
                license_states: vec!["NY".into(), "NY".into()],
                ..entry()
            }),
            &["provider.license_states"],
        ),
        bad(
            "PutProvider: specialty not a code",
            put(Provider {
                specialties: vec!["Family Medicine".into()],
                ..entry()
            }),
            &["provider.specialties[0]"],
        ),
        bad(
            "PutProvider: 21 specialties",
            put(Provider {
                specialties: (0..21).map(|i| format!("specialty-{i}")).collect(),
                ..entry()
            }),
            &["provider.specialties"],
        ),
        bad(
            "PutProvider: language not a tag",
            put(Provider {
                languages: vec!["english".into(), "en_US".into()],
                ..entry()
            }),
            &["provider.languages[0]", "provider.languages[1]"],
        ),
        bad(
            "PutProvider: malformed provider id",
            put(Provider {
                provider_id: "dr-who".into(),
                ..entry()
            }),
            &["provider.provider_id"],
        ),
        bad(
            "PutProvider: malformed visit type id",
            put(Provider {
                visit_type_ids: vec![visit.id.clone(), "follow-up".into()],
                ..entry()
            }),
            &["provider.visit_type_ids[1]"],
        ),
        bad(
            "PutProvider: no visit type",
            put(Provider {
                visit_type_ids: vec![],
                ..entry()
            }),
            &["provider.visit_type_ids"],
        ),
        bad(
            "PutProvider: a visit type that does not exist",
            put(Provider {
                visit_type_ids: vec![visit.id.clone(), random_id()],
                ..entry()
            }),
            &["provider.visit_type_ids[1]"],
        ),
        not_found(
            "PutProvider: no such user",
            put(Provider {
                provider_id: random_id(),
                ..entry()
            }),
        ),
        precondition(
            "PutProvider: a patient listed as a provider",
            put(Provider {
                provider_id: patient.id.clone(),
                ..entry()
            }),
            "STATE_CONFLICT",
        ),
        // ---- GetProvider ----
        bad(
            "GetProvider: no id",
            rpc!(
                api,
                get_provider,
                as_user(&patient, GetProviderRequest::default())
            ),
            &["provider_id"],
        ),
        bad(
            "GetProvider: malformed id",
            rpc!(
                api,
                get_provider,
                as_user(
                    &patient,
                    GetProviderRequest {
                        provider_id: format!("{{{}}}", provider.id),
                    }
                )
            ),
            &["provider_id"],
        ),
        not_found(
            "GetProvider: a user who is not in the directory",
            rpc!(
                api,
                get_provider,
                as_user(
                    &patient,
                    GetProviderRequest {
                        provider_id: patient.id.clone(),
                    }
                )
            ),
        ),
        // ---- CreateVisitType ----
        bad(
            "CreateVisitType: nothing",
            rpc!(
                api,
                create_visit_type,
                as_user(&staff, CreateVisitTypeRequest { visit_type: None })
            ),
            &[
                "visit_type.name",
                "visit_type.duration_minutes",
                "visit_type.modality",
                "visit_type.price_code",
            ],
        ),
        bad(
            "CreateVisitType: blank name",
            visit_type(VisitType {
                name: "   ".into(),
                ..good_type()
            }),
            &["visit_type.name"],
        ),
        bad(
            "CreateVisitType: name too long",
            visit_type(VisitType {
                name: "n".repeat(101),
                ..good_type()
            }),
            &["visit_type.name"],
        ),
        bad(
            "CreateVisitType: name with a control character",
            visit_type(VisitType {
                name: "Annual\u{0}physical".into(),
                ..good_type()
            }),
            &["visit_type.name"],
        ),
        bad(
            "CreateVisitType: durations out of range",
            visit_type(VisitType {
                duration_minutes: 4,
                buffer_minutes: 121,
                ..good_type()
            }),
            &["visit_type.duration_minutes", "visit_type.buffer_minutes"],
        ),
        bad(
            "CreateVisitType: eight hours and a minute, negative buffer",
            visit_type(VisitType {
                duration_minutes: 481,
                buffer_minutes: -1,
                ..good_type()
            }),
            &["visit_type.duration_minutes", "visit_type.buffer_minutes"],
        ),
        bad(
            "CreateVisitType: unknown modality",
            visit_type(VisitType {
                modality: 9,
                ..good_type()
            }),
            &["visit_type.modality"],
        ),
        bad(
            "CreateVisitType: price code and form with spaces",
            visit_type(VisitType {
                price_code: "EM 99396".into(),
                intake_form: "new patient".into(),
                ..good_type()
            }),
            &["visit_type.price_code", "visit_type.intake_form"],
        ),
        // ---- ListVisitTypes ----
        bad(
            "ListVisitTypes: a token that is no token",
            rpc!(
                api,
                list_visit_types,
                as_user(
                    &patient,
                    ListVisitTypesRequest {
                        page: page(0, "not-a-token!"),
                    }
                )
            ),
            &["page.page_token"],
        ),
        bad(
            "ListVisitTypes: the exception listing's token",
            rpc!(
                api,
                list_visit_types,
                as_user(
                    &patient,
                    ListVisitTypesRequest {
                        page: page(0, &exceptions_token),
                    }
                )
            ),
            &["page.page_token"],
        ),
        bad(
            "ListVisitTypes: negative page size",
            rpc!(
                api,
                list_visit_types,
                as_user(&patient, ListVisitTypesRequest { page: page(-1, "") })
            ),
            &["page.page_size"],
        ),
        // ---- SetWeeklyAvailability ----
        bad(
            "SetWeeklyAvailability: overlapping windows",
            set(
                p,
                vec![
                    window(1, (8, 0), Some((12, 0))),
                    window(2, (8, 0), Some((12, 0))),
                    window(1, (11, 30), Some((13, 0))),
                ],
            ),
            &["windows[0]", "windows[2]"],
        ),
        bad(
            "SetWeeklyAvailability: end before start, and empty",
            set(
                p,
                vec![
                    window(1, (12, 0), Some((8, 0))),
                    window(2, (9, 0), Some((9, 0))),
                ],
            ),
            &["windows[0]", "windows[1]"],
        ),
        bad(
            "SetWeeklyAvailability: no weekday, and day 8",
            set(
                p,
                vec![
                    window(0, (8, 0), Some((12, 0))),
                    window(8, (8, 0), Some((12, 0))),
                ],
            ),
            &["windows[0].weekday", "windows[1].weekday"],
        ),
        bad(
            "SetWeeklyAvailability: times of day that do not exist",
            set(
                p,
                vec![
                    window(1, (24, 0), Some((24, 0))),
                    window(2, (8, 60), Some((24, 1))),
                    window(3, (-1, 0), None),
                ],
            ),
            &[
                "windows[0].start",
                "windows[1].start",
                "windows[1].end",
                "windows[2].start",
                "windows[2].end",
            ],
        ),
        bad(
            "SetWeeklyAvailability: a visit type the provider does not offer",
            set(
                p,
                vec![WeeklyWindow {
                    visit_type_ids: vec![visit.id.clone(), not_offered.id.clone()],
                    ..window(1, (8, 0), Some((12, 0)))
                }],
            ),
            &["windows[0].visit_type_ids[1]"],
        ),
        bad(
            "SetWeeklyAvailability: a malformed visit type id",
            set(
                p,
                vec![WeeklyWindow {
                    visit_type_ids: vec!["follow-up".into()],
                    ..window(1, (8, 0), Some((12, 0)))
                }],
            ),
            &["windows[0].visit_type_ids[0]"],
        ),
        bad(
            "SetWeeklyAvailability: 71 windows",
            set(p, many_windows),
            &["windows"],
        ),
        bad(
            "SetWeeklyAvailability: malformed provider id",
            set("provider-1", vec![window(1, (8, 0), Some((12, 0)))]),
            &["provider_id"],
        ),
        not_found(
            "SetWeeklyAvailability: unknown provider",
            set(&random_id(), vec![window(1, (8, 0), Some((12, 0)))]),
        ),
        // ---- GetWeeklyAvailability ----
        bad(
            "GetWeeklyAvailability: malformed provider id",
            rpc!(
                api,
                get_weekly_availability,
                as_user(
                    &staff,
                    GetWeeklyAvailabilityRequest {
                        provider_id: provider.id.replace('-', ""),
                    }
                )
            ),
            &["provider_id"],
        ),
        not_found(
            "GetWeeklyAvailability: unknown provider",
            rpc!(
                api,
                get_weekly_availability,
                as_user(
                    &staff,
                    GetWeeklyAvailabilityRequest {
                        provider_id: random_id(),
                    }
                )
            ),
        ),
        // ---- AddAvailabilityException ----
        bad(
            "AddAvailabilityException: nothing",
            rpc!(
                api,
                add_availability_exception,
                as_user(&staff, AddAvailabilityExceptionRequest { exception: None })
            ),
            &[
                "exception.provider_id",
                "exception.kind",
                "exception.start_time",
                "exception.end_time",
            ],
        ),
        bad(
            "AddAvailabilityException: end before start",
            add(AvailabilityException {
                end_time: ts(off - Duration::minutes(1)),
                ..time_off()
            }),
            &["exception.end_time"],
        ),
        bad(
            "AddAvailabilityException: end at start",
            add(AvailabilityException {
                end_time: ts(off),
                ..time_off()
            }),
            &["exception.end_time"],
        ),
        bad(
            "AddAvailabilityException: over 31 days",
            add(AvailabilityException {
                end_time: ts(off + Duration::days(31) + Duration::seconds(1)),
                ..time_off()
            }),
            &["exception.end_time"],
        ),
        bad(
            "AddAvailabilityException: no kind, and kind 7",
            add(AvailabilityException {
                kind: 7,
                ..time_off()
            }),
            &["exception.kind"],
        ),
        bad(
            "AddAvailabilityException: a start no instant has",
            add(AvailabilityException {
                start_time: broken_ts(),
                ..time_off()
            }),
            &["exception.start_time"],
        ),
        bad(
            "AddAvailabilityException: malformed provider id",
            add(AvailabilityException {
                provider_id: "someone".into(),
                ..time_off()
            }),
            &["exception.provider_id"],
        ),
        not_found(
            "AddAvailabilityException: unknown provider",
            add(AvailabilityException {
                provider_id: random_id(),
                ..time_off()
            }),
        ),
        // ---- DeleteAvailabilityException ----
        bad(
            "DeleteAvailabilityException: no id",
            rpc!(
                api,
                delete_availability_exception,
                as_user(&staff, DeleteAvailabilityExceptionRequest::default())
            ),
            &["id"],
        ),
        bad(
            "DeleteAvailabilityException: malformed id",
            rpc!(
                api,
                delete_availability_exception,
                as_user(
                    &staff,
                    DeleteAvailabilityExceptionRequest { id: "42".into() }
                )
            ),
            &["id"],
        ),
        not_found(
            "DeleteAvailabilityException: unknown id",
            rpc!(
                api,
                delete_availability_exception,
                as_user(
                    &staff,
                    DeleteAvailabilityExceptionRequest { id: random_id() }
                )
            ),
        ),
        // ---- ListAvailabilityExceptions ----
        bad(
            "ListAvailabilityExceptions: malformed provider id",
            list_exceptions("everyone", None, ""),
            &["provider_id"],
        ),
        bad(
            "ListAvailabilityExceptions: end_after no instant has",
            list_exceptions(p, broken_ts(), ""),
            &["end_after"],
        ),
        bad(
            "ListAvailabilityExceptions: token reused with another end_after",
            list_exceptions(p, ts(off), &exceptions_token),
            &["page.page_token"],
        ),
        bad(
            "ListAvailabilityExceptions: token reused for another provider",
            list_exceptions(&random_id(), None, &exceptions_token),
            &["page.page_token"],
        ),
        bad(
            "ListAvailabilityExceptions: token with one character changed",
            list_exceptions(
                p,
                None,
                &format!(
                    "{}{}",
                    &exceptions_token[..exceptions_token.len() - 1],
                    if exceptions_token.ends_with('A') {
                        'B'
                    } else {
                        'A'
                    }
                ),
            ),
            &["page.page_token"],
        ),
        // ---- SearchSlots ----
        bad(
            "SearchSlots: nothing",
            find(SearchSlotsRequest::default()),
            &["start_time", "end_time", "visit_type_id", "time_zone"],
        ),
        bad(
            "SearchSlots: end before start",
            find(search(day, day - Duration::hours(1))),
            &["end_time"],
        ),
        bad(
            "SearchSlots: over 31 days",
            find(search(day, day + Duration::days(31) + Duration::minutes(1))),
            &["end_time"],
        ),
        bad(
            "SearchSlots: unknown time zone",
            find(SearchSlotsRequest {
                time_zone: "Atlantis/Capital".into(),
                ..base()
            }),
            &["time_zone"],
        ),
        bad(
            "SearchSlots: bad state, specialty and language",
            find(SearchSlotsRequest {
                state: "ny".into(),
                specialty: "Cardiology".into(),
                language: "e".into(),
                ..base()
            }),
            &["state", "specialty", "language"],
        ),
        bad(
            "SearchSlots: malformed visit type and provider ids",
            find(SearchSlotsRequest {
                visit_type_id: "follow-up".into(),
                provider_ids: vec![provider.id.clone(), "dr-who".into()],
                ..base()
            }),
            &["visit_type_id", "provider_ids[1]"],
        ),
        bad(
            "SearchSlots: 101 providers",
            find(SearchSlotsRequest {
                provider_ids: some_ids,
                ..base()
            }),
            &["provider_ids"],
        ),
        bad(
            "SearchSlots: a start no instant has",
            find(SearchSlotsRequest {
                start_time: broken_ts(),
                ..base()
            }),
            &["start_time"],
        ),
        not_found(
            "SearchSlots: unknown visit type",
            find(SearchSlotsRequest {
                visit_type_id: random_id(),
                ..base()
            }),
        ),
        bad(
            "SearchSlots: token reused with another state",
            find(SearchSlotsRequest {
                state: "CA".into(),
                page: page(1, &slots_token),
                ..base()
            }),
            &["page.page_token"],
        ),
        bad(
            "SearchSlots: token reused over another range",
            find(SearchSlotsRequest {
                page: page(1, &slots_token),
                ..search(day, day + Duration::days(2))
            }),
            &["page.page_token"],
        ),
        bad(
            "SearchSlots: negative page size",
            find(SearchSlotsRequest {
                page: page(-5, ""),
                ..base()
            }),
            &["page.page_size"],
        ),
        // ---- calendar feeds ----
        bad("CreateCalendarFeed: no time zone", feed(""), &["time_zone"]),
        bad(
            "CreateCalendarFeed: unknown time zone",
            feed("Europe/Gotham"),
            &["time_zone"],
        ),
        bad(
            "CreateCalendarFeed: time zone with a trailing space",
            feed("UTC "),
            &["time_zone"],
        ),
        bad(
            "RevokeCalendarFeed: malformed id",
            rpc!(
                api,
                revoke_calendar_feed,
                as_user(
                    &patient,
                    RevokeCalendarFeedRequest {
                        id: "my-feed".into()
                    }
                )
            ),
            &["id"],
        ),
        not_found(
            "RevokeCalendarFeed: unknown id",
            rpc!(
                api,
                revoke_calendar_feed,
                as_user(&patient, RevokeCalendarFeedRequest { id: random_id() })
            ),
        ),
    ];
    run(&suite, cases).await;

    // The windows are the ones set before the refused replacements.
    let windows_after = c
        .get_weekly_availability(as_user(
            &staff,
            GetWeeklyAvailabilityRequest {
                provider_id: provider.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(windows_after, windows_before);
    suite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_and_bookings_refuse_bad_input_and_leave_nothing_behind() {
    let suite = common::spawn().await;
    let Clinic {
        staff,
        visit,
        provider,
        patient,
        other,
    } = clinic(&suite).await;
    let not_offered = suite
        .visit_type(&staff, 45, 0, Modality::InPerson, "")
        .await;
    let api = suite.public().await;
    let mut c = api.clone();
    let hold_at = |days, h, m| local(NEW_YORK, days, h, m);
    let free = hold_at(3, 10, 0);
    let hold = |who: &User, start: DateTime<Utc>| {
        let mut c = api.clone();
        let (who, provider_id, visit_type_id) =
            (who.clone(), provider.id.clone(), visit.id.clone());
        async move {
            c.create_hold(as_user(
                &who,
                CreateHoldRequest {
                    provider_id,
                    visit_type_id,
                    start_time: ts(start),
                    patient_id: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
        }
    };
    // A hold that lapsed, one released, and another patient's live one.
    let lapsed = hold(&patient, hold_at(4, 9, 0)).await;
    for sql in [
        "UPDATE slot_claims SET hold_expires_at = now() - interval '1 second' WHERE id = $1::uuid",
        "UPDATE holds SET expires_at = now() - interval '1 second' WHERE id = $1::uuid",
    ] {
        sqlx::query(sql)
            .bind(&lapsed.id)
            .execute(suite.pool())
            .await
            .unwrap();
    }
    let released = hold(&patient, hold_at(4, 10, 0)).await;
    c.release_hold(as_user(
        &patient,
        ReleaseHoldRequest {
            hold_id: released.id.clone(),
        },
    ))
    .await
    .unwrap();
    let others = hold(&other, hold_at(4, 11, 0)).await;

    let create = |who: &User, r: CreateHoldRequest| rpc!(api, create_hold, as_user(who, r));
    let slot = |start: DateTime<Utc>| CreateHoldRequest {
        provider_id: provider.id.clone(),
        visit_type_id: visit.id.clone(),
        start_time: ts(start),
        patient_id: String::new(),
    };
    let book = |who: &User, r: BookAppointmentRequest| rpc!(api, book_appointment, as_user(who, r));
    let direct = |start: DateTime<Utc>| BookAppointmentRequest {
        provider_id: provider.id.clone(),
        visit_type_id: visit.id.clone(),
        start_time: ts(start),
        reason: "persistent cough".into(),
        ..Default::default()
    };
    let from_hold = |h: &Hold| BookAppointmentRequest {
        hold_id: h.id.clone(),
        reason: "persistent cough".into(),
        ..Default::default()
    };
    let release = |id: &str| {
        rpc!(
            api,
            release_hold,
            as_user(
                &patient,
                ReleaseHoldRequest {
                    hold_id: id.to_owned()
                }
            )
        )
    };
    let past = local(NEW_YORK, -1, 10, 0);
    // Beyond scheduling.max_booking_days (730 by default).
    let too_far = local(NEW_YORK, 800, 10, 0);
    let misaligned = hold_at(3, 10, 10);
    let after_hours = hold_at(3, 20, 0);

    let cases = vec![
        // ---- CreateHold ----
        bad(
            "CreateHold: nothing",
            create(&patient, CreateHoldRequest::default()),
            &["provider_id", "visit_type_id", "start_time"],
        ),
        bad(
            "CreateHold: malformed ids, a start no instant has",
            create(
                &patient,
                CreateHoldRequest {
                    provider_id: "dr-who".into(),
                    visit_type_id: visit.id.to_uppercase().replace('-', ""),
                    start_time: broken_ts(),
                    patient_id: String::new(),
                },
            ),
            &["provider_id", "visit_type_id", "start_time"],
        ),
        precondition(
            "CreateHold: a slot in the past",
            create(&patient, slot(past)),
            "SLOT_UNAVAILABLE",
        ),
        precondition(
            "CreateHold: a slot beyond the booking horizon",
            create(&patient, slot(too_far)),
            "SLOT_UNAVAILABLE",
        ),
        precondition(
            "CreateHold: a slot off the half-hours",
            create(&patient, slot(misaligned)),
            "SLOT_UNAVAILABLE",
        ),
        precondition(
            "CreateHold: outside the provider's windows",
            create(&patient, slot(after_hours)),
            "SLOT_UNAVAILABLE",
        ),
        precondition(
            "CreateHold: a visit type the provider does not offer",
            create(
                &patient,
                CreateHoldRequest {
                    visit_type_id: not_offered.id.clone(),
                    ..slot(free)
                },
            ),
            "SLOT_UNAVAILABLE",
        ),
        not_found(
            "CreateHold: unknown provider",
            create(
                &patient,
                CreateHoldRequest {
                    provider_id: random_id(),
                    ..slot(free)
                },
            ),
        ),
        not_found(
            "CreateHold: unknown visit type",
            create(
                &patient,
                CreateHoldRequest {
                    visit_type_id: random_id(),
                    ..slot(free)
                },
            ),
        ),
        denied(
            "CreateHold: a patient holding for another patient",
            create(
                &patient,
                CreateHoldRequest {
                    patient_id: other.id.clone(),
                    ..slot(free)
                },
            ),
        ),
        bad(
            "CreateHold: staff naming no patient",
            create(&staff, slot(free)),
            &["patient_id"],
        ),
        bad(
            "CreateHold: staff naming a malformed patient id",
            create(
                &staff,
                CreateHoldRequest {
                    patient_id: "patient-1".into(),
                    ..slot(free)
                },
            ),
            &["patient_id"],
        ),
        precondition(
            "CreateHold: staff holding for a provider",
            create(
                &staff,
                CreateHoldRequest {
                    patient_id: provider.id.clone(),
                    ..slot(free)
                },
            ),
            "STATE_CONFLICT",
        ),
        not_found(
            "CreateHold: staff holding for no such user",
            create(
                &staff,
                CreateHoldRequest {
                    patient_id: random_id(),
                    ..slot(free)
                },
            ),
        ),
        // ---- ReleaseHold ----
        bad("ReleaseHold: no id", release(""), &["hold_id"]),
        bad(
            "ReleaseHold: malformed id",
            release(&format!("urn:uuid:{}", lapsed.id)),
            &["hold_id"],
        ),
        not_found("ReleaseHold: unknown hold", release(&random_id())),
        denied("ReleaseHold: another patient's hold", release(&others.id)),
        // ---- BookAppointment ----
        bad(
            "BookAppointment: nothing",
            book(&patient, BookAppointmentRequest::default()),
            &["provider_id", "visit_type_id", "start_time"],
        ),
        bad(
            "BookAppointment: a hold and a slot",
            book(
                &patient,
                BookAppointmentRequest {
                    hold_id: others.id.clone(),
                    ..direct(free)
                },
            ),
            &["provider_id", "visit_type_id", "start_time"],
        ),
        bad(
            "BookAppointment: a hold and a start",
            book(
                &patient,
                BookAppointmentRequest {
                    start_time: ts(free),
                    ..from_hold(&lapsed)
                },
            ),
            &["start_time"],
        ),
        bad(
            "BookAppointment: malformed hold id",
            book(
                &patient,
                BookAppointmentRequest {
                    hold_id: "hold-1".into(),
                    ..from_hold(&lapsed)
                },
            ),
            &["hold_id"],
        ),
        bad(
            "BookAppointment: reason too long",
            book(
                &patient,
                BookAppointmentRequest {
                    reason: "a cough ".repeat(126),
                    ..direct(free)
                },
            ),
            &["reason"],
        ),
        bad(
            "BookAppointment: reason with control characters",
            book(
                &patient,
                BookAppointmentRequest {
                    reason: "a cough\u{1b}[31m that hurts".into(),
                    ..direct(free)
                },
            ),
            &["reason"],
        ),
        bad(
            "BookAppointment: everything wrong at once",
            book(
                &patient,
                BookAppointmentRequest {
                    provider_id: "x".into(),
                    visit_type_id: String::new(),
                    start_time: None,
                    reason: "cough\u{0}".into(),
                    ..Default::default()
                },
            ),
            &["provider_id", "visit_type_id", "start_time", "reason"],
        ),
        precondition(
            "BookAppointment: a slot in the past",
            book(&patient, direct(past)),
            "SLOT_UNAVAILABLE",
        ),
        precondition(
            "BookAppointment: a slot off the half-hours",
            book(&patient, direct(misaligned)),
            "SLOT_UNAVAILABLE",
        ),
        precondition(
            "BookAppointment: outside the provider's windows",
            book(&patient, direct(after_hours)),
            "SLOT_UNAVAILABLE",
        ),
        not_found(
            "BookAppointment: unknown provider",
            book(
                &patient,
                BookAppointmentRequest {
                    provider_id: random_id(),
                    ..direct(free)
                },
            ),
        ),
        not_found(
            "BookAppointment: unknown visit type",
            book(
                &patient,
                BookAppointmentRequest {
                    visit_type_id: random_id(),
                    ..direct(free)
                },
            ),
        ),
        not_found(
            "BookAppointment: unknown hold",
            book(
                &patient,
                BookAppointmentRequest {
                    hold_id: random_id(),
                    reason: "persistent cough".into(),
                    ..Default::default()
                },
            ),
        ),
        denied(
            "BookAppointment: a patient booking for another patient",
            book(
                &patient,
                BookAppointmentRequest {
                    patient_id: other.id.clone(),
                    ..direct(free)
                },
            ),
        ),
        denied(
            "BookAppointment: from another patient's hold",
            book(&patient, from_hold(&others)),
        ),
        precondition(
            "BookAppointment: staff booking for a user who is not a patient",
            book(
                &staff,
                BookAppointmentRequest {
                    patient_id: staff.id.clone(),
                    ..direct(free)
                },
            ),
            "STATE_CONFLICT",
        ),
        precondition(
            "BookAppointment: from a lapsed hold",
            book(&patient, from_hold(&lapsed)),
            "HOLD_EXPIRED",
        ),
        precondition(
            "BookAppointment: from a released hold",
            book(&patient, from_hold(&released)),
            "HOLD_EXPIRED",
        ),
    ];
    run(&suite, cases).await;

    // A refusal keeps nothing under its idempotency key: the same key books the slot every
    // refused call asked for, which is still free.
    let mut c = api.clone();
    let expired = c
        .book_appointment(keyed(&patient, from_hold(&lapsed), "retry-after-refusal"))
        .await
        .unwrap_err();
    assert_eq!(reason(&expired).as_deref(), Some("HOLD_EXPIRED"));
    let booked = c
        .book_appointment(keyed(&patient, direct(free), "retry-after-refusal"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(booked.status, AppointmentStatus::Booked as i32);
    assert_eq!(booked.reason, "persistent cough");
    assert_eq!(suite.overlaps().await, 0);
    suite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appointment_changes_intake_and_consultations_refuse_bad_input() {
    let suite = common::spawn().await;
    let staff = suite.user(Role::Staff, "desk").await;
    let plain = suite
        .visit_type(&staff, 30, 0, Modality::Telehealth, "")
        .await;
    let with_form = suite
        .visit_type(&staff, 30, 0, Modality::Telehealth, "new-patient")
        .await;
    let provider = suite
        .provider(&staff, "America/New_York", &[&plain, &with_form], 8, 18)
        .await;
    let patient = suite.user(Role::Patient, "pat").await;
    let other = suite.user(Role::Patient, "oth").await;
    let api = suite.public().await;
    let mut c = api.clone();
    let at = |h, m| local(NEW_YORK, 3, h, m);
    // Booked without a form, booked with one, cancelled (with a form).
    let booked = suite
        .book(&patient, &provider, &plain, at(9, 0))
        .await
        .unwrap();
    let intake = suite
        .book(&patient, &provider, &with_form, at(10, 0))
        .await
        .unwrap();
    let cancelled = suite
        .book(&patient, &provider, &with_form, at(11, 0))
        .await
        .unwrap();
    c.cancel_appointment(as_user(
        &patient,
        CancelAppointmentRequest {
            appointment_id: cancelled.id.clone(),
            reason: CancelReason::PatientRequest as i32,
            note: "the cough is gone".into(),
        },
    ))
    .await
    .unwrap();
    // A hold of the other patient's, and one of the patient's that lapsed.
    let other_hold = c
        .create_hold(as_user(
            &other,
            CreateHoldRequest {
                provider_id: provider.id.clone(),
                visit_type_id: plain.id.clone(),
                start_time: ts(at(14, 0)),
                patient_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let lapsed = c
        .create_hold(as_user(
            &patient,
            CreateHoldRequest {
                provider_id: provider.id.clone(),
                visit_type_id: plain.id.clone(),
                start_time: ts(at(15, 0)),
                patient_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    for sql in [
        "UPDATE slot_claims SET hold_expires_at = now() - interval '1 second' WHERE id = $1::uuid",
        "UPDATE holds SET expires_at = now() - interval '1 second' WHERE id = $1::uuid",
    ] {
        sqlx::query(sql)
            .bind(&lapsed.id)
            .execute(suite.pool())
            .await
            .unwrap();
    }
    let list_token = c
        .list_appointments(as_user(
            &patient,
            ListAppointmentsRequest {
                patient_id: patient.id.clone(),
                page: page(1, ""),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .page
        .unwrap()
        .next_page_token;
    assert!(!list_token.is_empty());
    // Consultation requests: two open ones (one in Texas, where the provider is not licensed),
    // one declined.
    let ask = |state: &'static str| {
        let mut c = api.clone();
        let patient = patient.clone();
        async move {
            c.request_consultation(as_user(
                &patient,
                RequestConsultationRequest {
                    reason: "a cough for three weeks".into(),
                    state: state.into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
        }
    };
    let open = ask("NY").await;
    let texas = ask("TX").await;
    let declined = ask("NY").await;
    c.decline_consultation_request(as_user(
        &staff,
        DeclineConsultationRequestRequest {
            id: declined.id.clone(),
            reason: "please see urgent care for the cough".into(),
        },
    ))
    .await
    .unwrap();
    let queue_token = c
        .list_consultation_requests(as_user(
            &patient,
            ListConsultationRequestsRequest {
                status: ConsultationStatus::Open as i32,
                page: page(1, ""),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .page
        .unwrap()
        .next_page_token;
    assert!(!queue_token.is_empty());

    let get = |id: &str| {
        rpc!(
            api,
            get_appointment,
            as_user(
                &patient,
                GetAppointmentRequest {
                    appointment_id: id.to_owned()
                }
            )
        )
    };
    let list = |r: ListAppointmentsRequest| rpc!(api, list_appointments, as_user(&patient, r));
    let cancel = |r: CancelAppointmentRequest| rpc!(api, cancel_appointment, as_user(&patient, r));
    let cancel_booked = || CancelAppointmentRequest {
        appointment_id: booked.id.clone(),
        reason: CancelReason::PatientRequest as i32,
        note: "the cough is better".into(),
    };
    let move_to =
        |r: RescheduleAppointmentRequest| rpc!(api, reschedule_appointment, as_user(&patient, r));
    let move_booked = |start: Option<DateTime<Utc>>, hold_id: &str| RescheduleAppointmentRequest {
        appointment_id: booked.id.clone(),
        start_time: start.and_then(ts),
        hold_id: hold_id.to_owned(),
    };
    let action = |id: &str| AppointmentActionRequest {
        appointment_id: id.to_owned(),
    };
    let submit = |id: &str, answers: Vec<(String, String)>| {
        rpc!(
            api,
            submit_intake,
            as_user(
                &patient,
                SubmitIntakeRequest {
                    appointment_id: id.to_owned(),
                    answers: answers.into_iter().collect(),
                }
            )
        )
    };
    let answer = |q: &str, a: &str| vec![(q.to_owned(), a.to_owned())];
    let ask_for = |who: &User, r: RequestConsultationRequest| {
        rpc!(api, request_consultation, as_user(who, r))
    };
    let consult = || RequestConsultationRequest {
        reason: "a cough that will not stop".into(),
        state: "NY".into(),
        ..Default::default()
    };
    let range = |from: DateTime<Utc>, to: Option<DateTime<Utc>>| TimeRange {
        start_time: ts(from),
        end_time: to.and_then(ts),
    };
    let accept = |r: AcceptConsultationRequestRequest| {
        rpc!(api, accept_consultation_request, as_user(&staff, r))
    };
    let accept_open = |start: DateTime<Utc>| AcceptConsultationRequestRequest {
        id: open.id.clone(),
        provider_id: provider.id.clone(),
        visit_type_id: plain.id.clone(),
        start_time: ts(start),
    };
    let decline = |id: &str, why: &str| {
        rpc!(
            api,
            decline_consultation_request,
            as_user(
                &staff,
                DeclineConsultationRequestRequest {
                    id: id.to_owned(),
                    reason: why.to_owned(),
                }
            )
        )
    };
    let queue = |r: ListConsultationRequestsRequest| {
        rpc!(api, list_consultation_requests, as_user(&patient, r))
    };
    let past = local(NEW_YORK, -1, 10, 0);
    let free = at(16, 0);

    let cases = vec![
        // ---- GetAppointment ----
        bad("GetAppointment: no id", get(""), &["appointment_id"]),
        bad(
            "GetAppointment: malformed id",
            get(&booked.id[1..]),
            &["appointment_id"],
        ),
        not_found("GetAppointment: unknown id", get(&random_id())),
        // ---- ListAppointments ----
        bad(
            "ListAppointments: neither patient nor provider",
            list(ListAppointmentsRequest::default()),
            &["patient_id"],
        ),
        bad(
            "ListAppointments: both patient and provider",
            list(ListAppointmentsRequest {
                patient_id: patient.id.clone(),
                provider_id: provider.id.clone(),
                ..Default::default()
            }),
            &["patient_id"],
        ),
        bad(
            "ListAppointments: malformed patient id",
            list(ListAppointmentsRequest {
                patient_id: "me".into(),
                ..Default::default()
            }),
            &["patient_id"],
        ),
        bad(
            "ListAppointments: malformed provider id",
            list(ListAppointmentsRequest {
                provider_id: "my-doctor".into(),
                ..Default::default()
            }),
            &["provider_id"],
        ),
        bad(
            "ListAppointments: end_after no instant has",
            list(ListAppointmentsRequest {
                patient_id: patient.id.clone(),
                end_after: broken_ts(),
                ..Default::default()
            }),
            &["end_after"],
        ),
        bad(
            "ListAppointments: token reused with an end_after",
            list(ListAppointmentsRequest {
                patient_id: patient.id.clone(),
                end_after: ts(at(0, 0)),
                page: page(1, &list_token),
                ..Default::default()
            }),
            &["page.page_token"],
        ),
        bad(
            "ListAppointments: token reused for another patient",
            list(ListAppointmentsRequest {
                patient_id: other.id.clone(),
                page: page(1, &list_token),
                ..Default::default()
            }),
            &["page.page_token"],
        ),
        bad(
            "ListAppointments: negative page size",
            list(ListAppointmentsRequest {
                patient_id: patient.id.clone(),
                page: page(-1, ""),
                ..Default::default()
            }),
            &["page.page_size"],
        ),
        // ---- CancelAppointment ----
        bad(
            "CancelAppointment: no reason",
            cancel(CancelAppointmentRequest {
                reason: CancelReason::Unspecified as i32,
                ..cancel_booked()
            }),
            &["reason"],
        ),
        bad(
            "CancelAppointment: reason 42",
            cancel(CancelAppointmentRequest {
                reason: 42,
                ..cancel_booked()
            }),
            &["reason"],
        ),
        bad(
            "CancelAppointment: note too long",
            cancel(CancelAppointmentRequest {
                note: "no more cough ".repeat(36),
                ..cancel_booked()
            }),
            &["note"],
        ),
        bad(
            "CancelAppointment: note with control characters",
            cancel(CancelAppointmentRequest {
                note: "cough\u{7}\u{7}".into(),
                ..cancel_booked()
            }),
            &["note"],
        ),
        bad(
            "CancelAppointment: malformed id",
            cancel(CancelAppointmentRequest {
                appointment_id: "tomorrow".into(),
                ..cancel_booked()
            }),
            &["appointment_id"],
        ),
        not_found(
            "CancelAppointment: unknown id",
            cancel(CancelAppointmentRequest {
                appointment_id: random_id(),
                ..cancel_booked()
            }),
        ),
        precondition(
            "CancelAppointment: cancel a cancelled appointment",
            cancel(CancelAppointmentRequest {
                appointment_id: cancelled.id.clone(),
                ..cancel_booked()
            }),
            "STATE_CONFLICT",
        ),
        // ---- RescheduleAppointment ----
        bad(
            "RescheduleAppointment: neither start nor hold",
            move_to(move_booked(None, "")),
            &["start_time"],
        ),
        bad(
            "RescheduleAppointment: both start and hold",
            move_to(move_booked(Some(free), &lapsed.id)),
            &["start_time"],
        ),
        bad(
            "RescheduleAppointment: malformed hold id",
            move_to(move_booked(None, "the-10am-hold")),
            &["hold_id"],
        ),
        bad(
            "RescheduleAppointment: a start no instant has",
            move_to(RescheduleAppointmentRequest {
                start_time: broken_ts(),
                ..move_booked(None, "")
            }),
            &["start_time"],
        ),
        bad(
            "RescheduleAppointment: malformed appointment id",
            move_to(RescheduleAppointmentRequest {
                appointment_id: "1".into(),
                ..move_booked(Some(free), "")
            }),
            &["appointment_id"],
        ),
        not_found(
            "RescheduleAppointment: unknown appointment",
            move_to(RescheduleAppointmentRequest {
                appointment_id: random_id(),
                ..move_booked(Some(free), "")
            }),
        ),
        not_found(
            "RescheduleAppointment: unknown hold",
            move_to(move_booked(None, &random_id())),
        ),
        precondition(
            "RescheduleAppointment: into the past",
            move_to(move_booked(Some(past), "")),
            "SLOT_UNAVAILABLE",
        ),
        precondition(
            "RescheduleAppointment: off the half-hours",
            move_to(move_booked(Some(at(16, 5)), "")),
            "SLOT_UNAVAILABLE",
        ),
        precondition(
            "RescheduleAppointment: to where it is",
            move_to(move_booked(Some(at(9, 0)), "")),
            "STATE_CONFLICT",
        ),
        precondition(
            "RescheduleAppointment: a cancelled appointment",
            move_to(RescheduleAppointmentRequest {
                appointment_id: cancelled.id.clone(),
                ..move_booked(Some(free), "")
            }),
            "STATE_CONFLICT",
        ),
        denied(
            "RescheduleAppointment: into another patient's hold",
            move_to(move_booked(None, &other_hold.id)),
        ),
        precondition(
            "RescheduleAppointment: into a lapsed hold",
            move_to(move_booked(None, &lapsed.id)),
            "HOLD_EXPIRED",
        ),
        // ---- the state machine ----
        bad(
            "ConfirmAppointment: malformed id",
            rpc!(api, confirm_appointment, as_user(&provider, action("x"))),
            &["appointment_id"],
        ),
        not_found(
            "ConfirmAppointment: unknown id",
            rpc!(
                api,
                confirm_appointment,
                as_user(&provider, action(&random_id()))
            ),
        ),
        precondition(
            "ConfirmAppointment: a booked appointment",
            rpc!(
                api,
                confirm_appointment,
                as_user(&provider, action(&booked.id))
            ),
            "STATE_CONFLICT",
        ),
        bad(
            "CheckInAppointment: no id",
            rpc!(api, check_in_appointment, as_user(&patient, action(""))),
            &["appointment_id"],
        ),
        not_found(
            "CheckInAppointment: unknown id",
            rpc!(
                api,
                check_in_appointment,
                as_user(&patient, action(&random_id()))
            ),
        ),
        precondition(
            "CheckInAppointment: a cancelled appointment",
            rpc!(
                api,
                check_in_appointment,
                as_user(&patient, action(&cancelled.id))
            ),
            "STATE_CONFLICT",
        ),
        bad(
            "StartAppointment: malformed id",
            rpc!(api, start_appointment, as_user(&provider, action("now"))),
            &["appointment_id"],
        ),
        precondition(
            "StartAppointment: a booked appointment not checked in",
            rpc!(
                api,
                start_appointment,
                as_user(&provider, action(&booked.id))
            ),
            "STATE_CONFLICT",
        ),
        bad(
            "CompleteAppointment: malformed id",
            rpc!(
                api,
                complete_appointment,
                as_user(&provider, action("done"))
            ),
            &["appointment_id"],
        ),
        precondition(
            "CompleteAppointment: a booked appointment",
            rpc!(
                api,
                complete_appointment,
                as_user(&provider, action(&booked.id))
            ),
            "STATE_CONFLICT",
        ),
        bad(
            "MarkNoShow: malformed id",
            rpc!(api, mark_no_show, as_user(&staff, action("nobody"))),
            &["appointment_id"],
        ),
        precondition(
            "MarkNoShow: before the start",
            rpc!(api, mark_no_show, as_user(&staff, action(&booked.id))),
            "STATE_CONFLICT",
        ),
        precondition(
            "MarkNoShow: a cancelled appointment",
            rpc!(api, mark_no_show, as_user(&staff, action(&cancelled.id))),
            "STATE_CONFLICT",
        ),
        // ---- SubmitIntake ----
        bad(
            "SubmitIntake: no answers",
            submit(&intake.id, vec![]),
            &["answers"],
        ),
        bad(
            "SubmitIntake: 101 answers",
            submit(
                &intake.id,
                (0..101)
                    .map(|i| (format!("q{i}"), "a cough".to_owned()))
                    .collect(),
            ),
            &["answers"],
        ),
        bad(
            "SubmitIntake: a question id with spaces",
            submit(&intake.id, answer("what hurts?", "a cough")),
            &["answers"],
        ),
        bad(
            "SubmitIntake: an answer too long",
            submit(&intake.id, answer("symptoms", &"cough ".repeat(334))),
            &["answers[symptoms]"],
        ),
        bad(
            "SubmitIntake: an answer with control characters",
            submit(&intake.id, answer("symptoms", "cough\u{8}\u{8}")),
            &["answers[symptoms]"],
        ),
        bad(
            "SubmitIntake: malformed appointment id",
            submit("my-visit", answer("symptoms", "a cough")),
            &["appointment_id"],
        ),
        not_found(
            "SubmitIntake: unknown appointment",
            submit(&random_id(), answer("symptoms", "a cough")),
        ),
        precondition(
            "SubmitIntake: a visit type without a form",
            submit(&booked.id, answer("symptoms", "a cough")),
            "STATE_CONFLICT",
        ),
        precondition(
            "SubmitIntake: a cancelled appointment",
            submit(&cancelled.id, answer("symptoms", "a cough")),
            "STATE_CONFLICT",
        ),
        // ---- RequestConsultation ----
        bad(
            "RequestConsultation: nothing",
            ask_for(&patient, RequestConsultationRequest::default()),
            &["reason", "state"],
        ),
        bad(
            "RequestConsultation: blank reason",
            ask_for(
                &patient,
                RequestConsultationRequest {
                    reason: " \n ".into(),
                    ..consult()
                },
            ),
            &["reason"],
        ),
        bad(
            "RequestConsultation: reason too long",
            ask_for(
                &patient,
                RequestConsultationRequest {
                    reason: "cough ".repeat(334),
                    ..consult()
                },
            ),
            &["reason"],
        ),
        bad(
            "RequestConsultation: reason with control characters",
            ask_for(
                &patient,
                RequestConsultationRequest {
                    reason: "cough\u{0}".into(),
                    ..consult()
                },
            ),
            &["reason"],
        ),
        bad(
            "RequestConsultation: bad state and specialty",
            ask_for(
                &patient,
                RequestConsultationRequest {
                    state: "New York".into(),
                    specialty: "Pulmonology".into(),
                    ..consult()
                },
            ),
            &["state", "specialty"],
        ),
        bad(
            "RequestConsultation: preferred times that end before they start, or never",
            ask_for(
                &patient,
                RequestConsultationRequest {
                    preferred_times: vec![
                        range(at(12, 0), Some(at(13, 0))),
                        range(at(12, 0), Some(at(11, 0))),
                        range(at(12, 0), None),
                    ],
                    ..consult()
                },
            ),
            &["preferred_times[1].end_time", "preferred_times[2]"],
        ),
        bad(
            "RequestConsultation: eleven preferred times",
            ask_for(
                &patient,
                RequestConsultationRequest {
                    preferred_times: (0..11)
                        .map(|d| {
                            let from = local(NEW_YORK, 3 + d, 9, 0);
                            range(from, Some(from + Duration::hours(1)))
                        })
                        .collect(),
                    ..consult()
                },
            ),
            &["preferred_times"],
        ),
        denied(
            "RequestConsultation: a patient asking for another patient",
            ask_for(
                &patient,
                RequestConsultationRequest {
                    patient_id: other.id.clone(),
                    ..consult()
                },
            ),
        ),
        precondition(
            "RequestConsultation: staff asking for a provider",
            ask_for(
                &staff,
                RequestConsultationRequest {
                    patient_id: provider.id.clone(),
                    ..consult()
                },
            ),
            "STATE_CONFLICT",
        ),
        // ---- GetConsultationRequest ----
        bad(
            "GetConsultationRequest: malformed id",
            rpc!(
                api,
                get_consultation_request,
                as_user(
                    &patient,
                    GetConsultationRequestRequest {
                        id: open.id.replace('-', "_"),
                    }
                )
            ),
            &["id"],
        ),
        not_found(
            "GetConsultationRequest: unknown id",
            rpc!(
                api,
                get_consultation_request,
                as_user(&patient, GetConsultationRequestRequest { id: random_id() })
            ),
        ),
        // ---- ListConsultationRequests ----
        bad(
            "ListConsultationRequests: status 9",
            queue(ListConsultationRequestsRequest {
                status: 9,
                page: None,
            }),
            &["status"],
        ),
        bad(
            "ListConsultationRequests: token reused for declined ones",
            queue(ListConsultationRequestsRequest {
                status: ConsultationStatus::Declined as i32,
                page: page(1, &queue_token),
            }),
            &["page.page_token"],
        ),
        bad(
            "ListConsultationRequests: the appointment listing's token",
            queue(ListConsultationRequestsRequest {
                status: ConsultationStatus::Open as i32,
                page: page(1, &list_token),
            }),
            &["page.page_token"],
        ),
        // ---- AcceptConsultationRequest ----
        bad(
            "AcceptConsultationRequest: nothing",
            accept(AcceptConsultationRequestRequest::default()),
            &["id", "provider_id", "visit_type_id", "start_time"],
        ),
        not_found(
            "AcceptConsultationRequest: unknown request",
            accept(AcceptConsultationRequestRequest {
                id: random_id(),
                ..accept_open(free)
            }),
        ),
        not_found(
            "AcceptConsultationRequest: unknown provider",
            accept(AcceptConsultationRequestRequest {
                provider_id: random_id(),
                ..accept_open(free)
            }),
        ),
        precondition(
            "AcceptConsultationRequest: a slot in the past",
            accept(accept_open(past)),
            "SLOT_UNAVAILABLE",
        ),
        precondition(
            "AcceptConsultationRequest: a declined request",
            accept(AcceptConsultationRequestRequest {
                id: declined.id.clone(),
                ..accept_open(free)
            }),
            "STATE_CONFLICT",
        ),
        precondition(
            "AcceptConsultationRequest: a provider not licensed in the patient's state",
            accept(AcceptConsultationRequestRequest {
                id: texas.id.clone(),
                ..accept_open(free)
            }),
            "STATE_CONFLICT",
        ),
        // ---- DeclineConsultationRequest ----
        bad(
            "DeclineConsultationRequest: nothing",
            decline("", ""),
            &["id", "reason"],
        ),
        bad(
            "DeclineConsultationRequest: reason too long",
            decline(&open.id, &"see a cough clinic ".repeat(53)),
            &["reason"],
        ),
        bad(
            "DeclineConsultationRequest: reason with control characters",
            decline(&open.id, "cough\u{1b}"),
            &["reason"],
        ),
        not_found(
            "DeclineConsultationRequest: unknown request",
            decline(&random_id(), "see a cough clinic"),
        ),
        precondition(
            "DeclineConsultationRequest: a declined request",
            decline(&declined.id, "see a cough clinic"),
            "STATE_CONFLICT",
        ),
    ];
    run(&suite, cases).await;
    suite.shutdown().await;
}
