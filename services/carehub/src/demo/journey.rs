//! The visit journey, step by step, through the five services' public RPCs (as the gateway
//! workload, with the users' bearer tokens): what `carehub demo` prints and what the whole-suite
//! test runs.
//!
//! Every step is one RPC (a step that waits for an effect another service applies through an
//! outbox calls it until the effect shows, at most [`WAIT`]); the first failure stops the run
//! and names the step, the RPC and the gRPC status.
//!
//! Times: the provider's weekly hours lie three days ahead, so that the visit's own hours are
//! extra hours (an availability exception) starting two minutes from now: the video join
//! window (15 minutes before the start) is open at once. The follow-up visit starts an hour and
//! [`FOLLOW_UP_LEAD_SECS`] seconds from its booking, so that its one-hour reminder falls due
//! within the run and is seen going out (in the patient's access log).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use carehub_platform::client::ServiceChannel;
use carehub_platform::timestamps::to_proto;
use carehub_proto::billing::v1::billing_service_client::BillingServiceClient;
use carehub_proto::billing::v1::{
    AddPaymentMethodRequest, InvoiceStatus, ListInvoicesRequest, PayInvoiceRequest, PaymentStatus,
    SetPriceRequest,
};
use carehub_proto::common::v1::{Date, Money, PageRequest};
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::{
    login_response, AuthTokens, ChangePasswordRequest, ContactChannel, CreateUserRequest,
    LoginRequest, RefreshSessionRequest, RegisterPatientRequest, Role, VerifyContactRequest,
};
use carehub_proto::messaging::v1::messaging_service_client::MessagingServiceClient;
use carehub_proto::messaging::v1::{
    conversation_event, ConversationKind, CreateConversationRequest, GetVideoJoinTokenRequest,
    ListEventsRequest, SendMessageRequest, StreamEventsRequest,
};
use carehub_proto::records::v1::records_service_client::RecordsServiceClient;
use carehub_proto::records::v1::{
    entry_content, AcceptAmendmentRequest, AccessLogEntry, Coding, Condition, ConditionStatus,
    CreateEntryRequest, EntryContent, ExportChartRequest, GetAccessLogRequest, ListCareTeamRequest,
    RequestAmendmentRequest, VerifyEntryRequest,
};
use carehub_proto::scheduling::v1::scheduling_service_client::SchedulingServiceClient;
use carehub_proto::scheduling::v1::{
    AddAvailabilityExceptionRequest, AppointmentActionRequest, AppointmentStatus,
    AvailabilityException, BookAppointmentRequest, CreateHoldRequest, CreateVisitTypeRequest,
    ExceptionKind, LocalTime, Modality, Provider, PutProviderRequest, SearchSlotsRequest,
    SetWeeklyAvailabilityRequest, SubmitIntakeRequest, VisitType, Weekday, WeeklyWindow,
};
use chrono::{DateTime, Datelike as _, SubsecRound as _, Utc};
use tonic::{Code, Status};

use super::{StepFailed, Target};

/// The longest wait for an effect delivered through an outbox.
pub const WAIT: Duration = Duration::from_secs(30);
/// How often a wait asks again.
const POLL: Duration = Duration::from_millis(200);
/// The follow-up visit starts this long after an hour from its booking: its one-hour reminder
/// falls due that many seconds later.
pub const FOLLOW_UP_LEAD_SECS: i64 = 10;
/// The visit: 10 minutes, telehealth.
const VISIT_MINUTES: i32 = 10;
/// The sandbox processor's test card that succeeds.
const TEST_CARD: &str = "tok_visa";
/// The visit's price, in cents.
const PRICE_MINOR: i64 = 7_500;
const CURRENCY: &str = "USD";

/// One step: the RPC it calls and what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub rpc: &'static str,
    pub what: &'static str,
}

const fn step(rpc: &'static str, what: &'static str) -> Step {
    Step { rpc, what }
}

const LOGIN: &str = "identity.v1.IdentityService/Login";
const ADD_EXCEPTION: &str = "scheduling.v1.SchedulingService/AddAvailabilityException";
const BOOK: &str = "scheduling.v1.SchedulingService/BookAppointment";
const SEND: &str = "messaging.v1.MessagingService/SendMessage";
const ACCESS_LOG: &str = "records.v1.RecordsService/GetAccessLog";

/// The journey, in order.
pub const STEPS: &[Step] = &[
    step(LOGIN, "the admin signs in (changing a one-time password)"),
    step(
        "identity.v1.IdentityService/CreateUser",
        "the admin creates a provider",
    ),
    step(LOGIN, "the provider signs in and sets a password"),
    step(
        "billing.v1.BillingService/SetPrice",
        "the admin prices the visit",
    ),
    step(
        "scheduling.v1.SchedulingService/CreateVisitType",
        "the admin creates the visit type",
    ),
    step(
        "scheduling.v1.SchedulingService/PutProvider",
        "the provider joins the directory",
    ),
    step(
        "scheduling.v1.SchedulingService/SetWeeklyAvailability",
        "the provider publishes weekly hours",
    ),
    step(
        ADD_EXCEPTION,
        "the provider adds extra hours from two minutes on",
    ),
    step(
        "identity.v1.IdentityService/RegisterPatient",
        "a patient registers",
    ),
    step(LOGIN, "the patient signs in"),
    step(
        "identity.v1.IdentityService/VerifyContact",
        "the patient verifies their email with the code sent",
    ),
    step(
        "scheduling.v1.SchedulingService/SearchSlots",
        "the patient finds a slot",
    ),
    step(
        "scheduling.v1.SchedulingService/CreateHold",
        "the patient holds it",
    ),
    step(BOOK, "the patient books from the hold (traced)"),
    step(
        "scheduling.v1.SchedulingService/SubmitIntake",
        "the patient completes intake",
    ),
    step(
        "records.v1.RecordsService/ListCareTeam",
        "the provider joins the care team (booking effect)",
    ),
    step(
        ADD_EXCEPTION,
        "the provider opens hours for a follow-up in an hour",
    ),
    step(
        BOOK,
        "the patient books the follow-up (its reminder is scheduled)",
    ),
    step(
        "messaging.v1.MessagingService/CreateConversation",
        "the patient opens a conversation with the care team",
    ),
    step(
        "messaging.v1.MessagingService/StreamEvents",
        "the provider listens live",
    ),
    step(
        SEND,
        "the patient writes; the provider receives it on the stream",
    ),
    step(SEND, "the provider answers"),
    step(
        "messaging.v1.MessagingService/ListEvents",
        "the patient reads the answer",
    ),
    step(
        "records.v1.RecordsService/CreateEntry",
        "the provider updates the chart",
    ),
    step(
        "records.v1.RecordsService/VerifyEntry",
        "the provider verifies the entry",
    ),
    step(
        "records.v1.RecordsService/RequestAmendment",
        "the patient requests an amendment",
    ),
    step(
        "records.v1.RecordsService/AcceptAmendment",
        "the provider accepts it",
    ),
    step(ACCESS_LOG, "the follow-up's reminder goes out"),
    step(
        "messaging.v1.MessagingService/GetVideoJoinToken",
        "the video token of the visit is issued",
    ),
    step(
        "scheduling.v1.SchedulingService/CheckInAppointment",
        "the patient checks in",
    ),
    step(
        "scheduling.v1.SchedulingService/StartAppointment",
        "the provider starts the visit",
    ),
    step(
        "scheduling.v1.SchedulingService/CompleteAppointment",
        "the provider completes it",
    ),
    step(
        "billing.v1.BillingService/ListInvoices",
        "the visit's invoice is open (completion effect)",
    ),
    step(
        "billing.v1.BillingService/AddPaymentMethod",
        "the patient adds a sandbox card",
    ),
    step(
        "billing.v1.BillingService/PayInvoice",
        "the patient pays the invoice",
    ),
    step(ACCESS_LOG, "the patient reads their access log"),
    step(
        "records.v1.RecordsService/ExportChart",
        "the patient exports the record as FHIR",
    ),
];

/// Receives each step as it succeeds: the command prints it, a test collects it.
pub trait Reporter: Send {
    /// Step `n` (1-based, of [`STEPS`]`.len()`) called `rpc` with this outcome (ids only).
    fn step(&mut self, n: usize, rpc: &str, outcome: &str);
}

/// A reporter that keeps every line.
#[derive(Debug, Default)]
pub struct Collect(pub Vec<(usize, String, String)>);

impl Reporter for Collect {
    fn step(&mut self, n: usize, rpc: &str, outcome: &str) {
        self.0.push((n, rpc.to_owned(), outcome.to_owned()));
    }
}

/// What the journey made: the ids (and the demo's own made-up credentials) a caller checks
/// further.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub admin_id: String,
    pub provider_id: String,
    pub provider_email: String,
    pub provider_password: String,
    pub patient_id: String,
    pub patient_email: String,
    pub patient_password: String,
    pub price_code: String,
    pub visit_type_id: String,
    pub hold_id: String,
    pub appointment_id: String,
    pub follow_up_appointment_id: String,
    pub conversation_id: String,
    pub entry_id: String,
    pub amendment_id: String,
    pub video_room: String,
    pub invoice_id: String,
    pub payment_id: String,
    /// The W3C trace id (32 hex) the BookAppointment call carried in `traceparent`.
    pub booking_trace_id: String,
    pub access_log_entries: usize,
    /// Resources in the exported FHIR Bundle.
    pub fhir_resources: usize,
}

/// Why a step failed: a status the service answered, or what the journey saw instead of the
/// expected answer.
enum Failure {
    Status(Status),
    Other(String),
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Failure::Status(s)
    }
}

fn fail<T>(why: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Other(why.into()))
}

type StepResult<T> = Result<(T, String), Failure>;

/// Runs the steps in order and reports them.
struct Progress<'r> {
    report: &'r mut dyn Reporter,
    done: usize,
}

impl Progress<'_> {
    async fn step<T>(
        &mut self,
        rpc: &'static str,
        work: impl Future<Output = StepResult<T>>,
    ) -> Result<T, StepFailed> {
        let n = self.done + 1;
        let step = STEPS.get(self.done).copied().unwrap_or(Step {
            rpc,
            what: "(unlisted step)",
        });
        debug_assert_eq!(step.rpc, rpc, "step {n} is listed with another RPC");
        match work.await {
            Ok((value, outcome)) => {
                self.report.step(n, rpc, &outcome);
                self.done = n;
                Ok(value)
            }
            Err(failure) => {
                let (code, reason, message) = match failure {
                    Failure::Status(s) => (
                        Some(s.code()),
                        carehub_platform::errors::details_of(&s).reason,
                        s.message().to_owned(),
                    ),
                    Failure::Other(m) => (None, None, m),
                };
                Err(StepFailed {
                    step: n,
                    total: STEPS.len(),
                    what: step.what,
                    rpc,
                    code,
                    reason,
                    message,
                })
            }
        }
    }
}

fn bearer<T>(msg: T, token: &str) -> Result<tonic::Request<T>, Failure> {
    let mut req = tonic::Request::new(msg);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| Failure::Other("the access token is not a header value".to_owned()))?;
    req.metadata_mut().insert("authorization", value);
    Ok(req)
}

/// `msg` with the bearer token and a fresh idempotency key.
fn keyed<T>(msg: T, token: &str) -> Result<tonic::Request<T>, Failure> {
    let mut req = bearer(msg, token)?;
    let key = uuid::Uuid::new_v4().to_string();
    req.metadata_mut().insert(
        "idempotency-key",
        key.parse()
            .map_err(|_| Failure::Other("idempotency key".to_owned()))?,
    );
    Ok(req)
}

/// A fresh W3C trace context: (traceparent header, trace id).
fn new_traceparent() -> (String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string();
    let span = span.get(..16).unwrap_or("00f067aa0ba902b7").to_owned();
    (format!("00-{trace}-{span}-01"), trace)
}

/// Calls `probe` every [`POLL`] until it answers `Some`, at most [`WAIT`]; `what` names the
/// effect in the failure.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> Result<(T, Duration), Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, Failure>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = probe().await? {
            return Ok((v, started.elapsed()));
        }
        if started.elapsed() >= WAIT {
            return fail(format!(
                "waited {} s for {what}: it did not happen",
                WAIT.as_secs()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The end of an id: UUIDv7s made close together share their beginning (the time).
fn short(id: &str) -> String {
    let n = id.chars().count();
    if n <= 8 {
        return id.to_owned();
    }
    let tail: String = id.chars().skip(n - 8).collect();
    format!("…{tail}")
}

fn hhmm(t: DateTime<Utc>) -> String {
    t.format("%H:%M:%SZ").to_string()
}

/// Signs `email` in; when identity demands a new password first, changes it to `new_password`
/// and continues the session (refreshed). Answers the tokens and whether it changed.
async fn sign_in(
    identity: &IdentityServiceClient<ServiceChannel>,
    email: &str,
    password: &str,
    new_password: &str,
) -> Result<(AuthTokens, bool), Failure> {
    let mut client = identity.clone();
    let answer = client
        .login(LoginRequest {
            email: email.to_owned(),
            password: password.to_owned(),
        })
        .await?
        .into_inner();
    let tokens = match answer.result {
        Some(login_response::Result::Tokens(t)) => t,
        Some(login_response::Result::MfaChallenge(_)) => {
            return fail("the account has a second factor: the demo signs in with a password only")
        }
        None => return fail("Login answered neither tokens nor a challenge"),
    };
    if !tokens.password_change_required {
        return Ok((tokens, false));
    }
    client
        .change_password(keyed(
            ChangePasswordRequest {
                current_password: password.to_owned(),
                new_password: new_password.to_owned(),
            },
            &tokens.access_token,
        )?)
        .await?;
    let refreshed = client
        .refresh_session(RefreshSessionRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await?
        .into_inner();
    if refreshed.password_change_required {
        return fail("the session still requires a password change after ChangePassword");
    }
    Ok((refreshed, true))
}

/// A made-up password for the demo's accounts (long, random, not on any common list).
fn new_password() -> String {
    format!("demo-{}", uuid::Uuid::new_v4().simple())
}

/// The whole journey against `target`; each step reported as it succeeds.
pub async fn run(target: &Target, report: &mut dyn Reporter) -> Result<Outcome, StepFailed> {
    let mut p = Progress { report, done: 0 };
    let identity = IdentityServiceClient::new(target.identity.clone());
    let records = RecordsServiceClient::new(target.records.clone());
    let messaging = MessagingServiceClient::new(target.messaging.clone());
    let scheduling = SchedulingServiceClient::new(target.scheduling.clone());
    let billing = BillingServiceClient::new(target.billing.clone());
    let tag = target.tag.as_str();
    let mut out = Outcome::default();

    // ---- the practice: admin, provider, price, visit type, availability ----
    let admin = p
        .step(LOGIN, async {
            let (t, changed) = sign_in(
                &identity,
                &target.admin.email,
                &target.admin.password,
                &new_password(),
            )
            .await?;
            let note = if changed {
                "one-time password changed, "
            } else {
                ""
            };
            let outcome = format!(
                "admin {} signed in ({note}session {})",
                short(&t.user_id),
                short(&t.session_id)
            );
            Ok((t, outcome))
        })
        .await?;
    out.admin_id = admin.user_id.clone();

    out.provider_email = format!("demo-{tag}-provider@example.org");
    let (provider_id, one_time) = p
        .step("identity.v1.IdentityService/CreateUser", async {
            let created = identity
                .clone()
                .create_user(keyed(
                    CreateUserRequest {
                        email: out.provider_email.clone(),
                        role: Role::Provider as i32,
                        given_name: "Demo".to_owned(),
                        family_name: "Provider".to_owned(),
                        phone: String::new(),
                        time_zone: "UTC".to_owned(),
                        date_of_birth: None,
                    },
                    &admin.access_token,
                )?)
                .await?
                .into_inner();
            let Some(user) = created.user else {
                return fail("CreateUser answered no user");
            };
            if created.one_time_password.is_empty() {
                return fail("CreateUser answered no one-time password");
            }
            let outcome = format!(
                "provider {} created with a one-time password",
                short(&user.user_id)
            );
            Ok(((user.user_id, created.one_time_password), outcome))
        })
        .await?;
    out.provider_id = provider_id;
    out.provider_password = new_password();
    let provider = p
        .step(LOGIN, async {
            let (t, changed) = sign_in(
                &identity,
                &out.provider_email,
                &one_time,
                &out.provider_password,
            )
            .await?;
            if !changed {
                return fail("identity did not ask the new provider to change a one-time password");
            }
            let outcome = format!("provider {} signed in, password set", short(&t.user_id));
            Ok((t, outcome))
        })
        .await?;

    out.price_code = format!("demo-{tag}-visit");
    p.step("billing.v1.BillingService/SetPrice", async {
        let price = billing
            .clone()
            .set_price(keyed(
                SetPriceRequest {
                    price_code: out.price_code.clone(),
                    price: Some(Money {
                        currency_code: CURRENCY.to_owned(),
                        amount_minor: PRICE_MINOR,
                    }),
                    description: "Video visit, 10 min".to_owned(),
                    late_cancellation_fee_minor: 0,
                    no_show_fee_minor: 0,
                },
                &admin.access_token,
            )?)
            .await?
            .into_inner();
        let amount = price.price.map_or(0, |m| m.amount_minor);
        let outcome = format!(
            "price {} = {amount} {CURRENCY} minor units",
            price.price_code
        );
        Ok(((), outcome))
    })
    .await?;

    out.visit_type_id = p
        .step("scheduling.v1.SchedulingService/CreateVisitType", async {
            let vt = scheduling
                .clone()
                .create_visit_type(keyed(
                    CreateVisitTypeRequest {
                        visit_type: Some(VisitType {
                            name: format!("Demo video visit {tag}"),
                            duration_minutes: VISIT_MINUTES,
                            buffer_minutes: 0,
                            modality: Modality::Telehealth as i32,
                            price_code: out.price_code.clone(),
                            intake_form: "demo-intake".to_owned(),
                            ..VisitType::default()
                        }),
                    },
                    &admin.access_token,
                )?)
                .await?
                .into_inner();
            let outcome = format!(
                "visit type {} ({VISIT_MINUTES} min, telehealth, intake form)",
                short(&vt.id)
            );
            Ok((vt.id, outcome))
        })
        .await?;

    p.step("scheduling.v1.SchedulingService/PutProvider", async {
        let entry = scheduling
            .clone()
            .put_provider(keyed(
                PutProviderRequest {
                    provider: Some(Provider {
                        provider_id: out.provider_id.clone(),
                        time_zone: "UTC".to_owned(),
                        specialties: vec!["family-medicine".to_owned()],
                        license_states: vec!["NY".to_owned()],
                        languages: vec!["en".to_owned()],
                        accepting_new_patients: true,
                        visit_type_ids: vec![out.visit_type_id.clone()],
                        update_time: None,
                    }),
                },
                &provider.access_token,
            )?)
            .await?
            .into_inner();
        let outcome = format!(
            "provider {} in the directory (family-medicine, NY)",
            short(&entry.provider_id)
        );
        Ok(((), outcome))
    })
    .await?;

    // Weekly hours three days ahead: never touching the extra hours below, whose slots then
    // start exactly where the exception does.
    let weekday = weekday_of(Utc::now() + chrono::Duration::days(3));
    p.step(
        "scheduling.v1.SchedulingService/SetWeeklyAvailability",
        async {
            let set = scheduling
                .clone()
                .set_weekly_availability(keyed(
                    SetWeeklyAvailabilityRequest {
                        provider_id: out.provider_id.clone(),
                        windows: vec![WeeklyWindow {
                            weekday: weekday as i32,
                            start: Some(LocalTime {
                                hours: 9,
                                minutes: 0,
                            }),
                            end: Some(LocalTime {
                                hours: 17,
                                minutes: 0,
                            }),
                            visit_type_ids: Vec::new(),
                        }],
                    },
                    &provider.access_token,
                )?)
                .await?
                .into_inner();
            let outcome = format!(
                "{} weekly window(s): {} 09:00-17:00 {}",
                set.windows.len(),
                weekday.as_str_name().trim_start_matches("WEEKDAY_"),
                set.time_zone
            );
            Ok(((), outcome))
        },
    )
    .await?;

    let visit_hours_start = Utc::now().trunc_subsecs(0) + chrono::Duration::minutes(2);
    p.step(ADD_EXCEPTION, async {
        let e = extra_hours(
            &scheduling,
            &provider.access_token,
            &out.provider_id,
            visit_hours_start,
            chrono::Duration::minutes(30),
        )
        .await?;
        let outcome = format!(
            "extra hours {} from {} for 30 min",
            short(&e.id),
            hhmm(visit_hours_start)
        );
        Ok(((), outcome))
    })
    .await?;

    // ---- the patient ----
    out.patient_email = format!("demo-{tag}-patient@example.org");
    out.patient_password = new_password();
    out.patient_id = p
        .step("identity.v1.IdentityService/RegisterPatient", async {
            let user = identity
                .clone()
                .register_patient(RegisterPatientRequest {
                    email: out.patient_email.clone(),
                    password: out.patient_password.clone(),
                    phone: String::new(),
                    given_name: "Demo".to_owned(),
                    family_name: "Patient".to_owned(),
                    date_of_birth: Some(Date {
                        year: 1985,
                        month: 6,
                        day: 15,
                    }),
                    time_zone: "UTC".to_owned(),
                    accepted_terms_version: "2025-01".to_owned(),
                    accepted_privacy_version: "2025-01".to_owned(),
                    marketing_opt_in: false,
                    sms_opt_in: false,
                })
                .await?
                .into_inner();
            let outcome = format!(
                "patient {} registered, email unverified",
                short(&user.user_id)
            );
            Ok((user.user_id, outcome))
        })
        .await?;
    let patient = p
        .step(LOGIN, async {
            let (t, _) = sign_in(&identity, &out.patient_email, &out.patient_password, "").await?;
            let outcome = format!(
                "patient {} signed in (session {})",
                short(&t.user_id),
                short(&t.session_id)
            );
            Ok((t, outcome))
        })
        .await?;
    p.step("identity.v1.IdentityService/VerifyContact", async {
        let code = target
            .inbox
            .verification_code(&out.patient_email)
            .await
            .map_err(|e| Failure::Other(format!("reading the verification code: {e:#}")))?;
        let user = identity
            .clone()
            .verify_contact(keyed(
                VerifyContactRequest {
                    channel: ContactChannel::Email as i32,
                    code,
                },
                &patient.access_token,
            )?)
            .await?
            .into_inner();
        if !user.email_verified {
            return fail("VerifyContact answered an unverified email");
        }
        Ok((
            (),
            "email verified with the code from the sandbox outbox".to_owned(),
        ))
    })
    .await?;

    // ---- finding, holding, booking the visit ----
    let slot_start = p
        .step("scheduling.v1.SchedulingService/SearchSlots", async {
            let now = Utc::now();
            let found = scheduling
                .clone()
                .search_slots(bearer(
                    SearchSlotsRequest {
                        start_time: Some(to_proto(now)),
                        end_time: Some(to_proto(now + chrono::Duration::minutes(40))),
                        visit_type_id: out.visit_type_id.clone(),
                        specialty: String::new(),
                        state: "NY".to_owned(),
                        language: String::new(),
                        provider_ids: vec![out.provider_id.clone()],
                        time_zone: "UTC".to_owned(),
                        page: None,
                    },
                    &patient.access_token,
                )?)
                .await?
                .into_inner();
            let Some(slot) = found.slots.first() else {
                return fail("SearchSlots found no slot in the provider's extra hours");
            };
            let Some(start) = slot
                .start_time
                .and_then(|t| carehub_platform::timestamps::from_proto(&t))
            else {
                return fail("the slot has no start time");
            };
            let outcome = format!("{} slot(s); first at {}", found.slots.len(), hhmm(start));
            Ok((start, outcome))
        })
        .await?;
    let hold_id = p
        .step("scheduling.v1.SchedulingService/CreateHold", async {
            let hold = scheduling
                .clone()
                .create_hold(keyed(
                    CreateHoldRequest {
                        provider_id: out.provider_id.clone(),
                        visit_type_id: out.visit_type_id.clone(),
                        start_time: Some(to_proto(slot_start)),
                        patient_id: String::new(),
                    },
                    &patient.access_token,
                )?)
                .await?
                .into_inner();
            let until = hold
                .expire_time
                .and_then(|t| carehub_platform::timestamps::from_proto(&t))
                .map_or_else(|| "?".to_owned(), hhmm);
            let outcome = format!("hold {} until {until}", short(&hold.id));
            Ok((hold.id, outcome))
        })
        .await?;
    out.hold_id = hold_id;

    let (traceparent, trace_id) = new_traceparent();
    out.booking_trace_id = trace_id;
    out.appointment_id = p
        .step(BOOK, async {
            // A plain channel: the traced one would replace this traceparent with the context
            // of the current span (in a process that traces).
            let mut client = SchedulingServiceClient::new(target.scheduling.clone().into_inner());
            let mut req = keyed(
                BookAppointmentRequest {
                    hold_id: out.hold_id.clone(),
                    reason: "Demo visit".to_owned(),
                    ..BookAppointmentRequest::default()
                },
                &patient.access_token,
            )?;
            req.metadata_mut().insert(
                "traceparent",
                traceparent
                    .parse()
                    .map_err(|_| Failure::Other("traceparent header".to_owned()))?,
            );
            let a = client.book_appointment(req).await?.into_inner();
            if a.status != AppointmentStatus::Booked as i32 {
                return fail(format!(
                    "the appointment is {:?}, not booked",
                    AppointmentStatus::try_from(a.status)
                ));
            }
            let outcome = format!(
                "appointment {} booked at {}  trace {}",
                short(&a.id),
                hhmm(slot_start),
                out.booking_trace_id
            );
            Ok((a.id, outcome))
        })
        .await?;

    p.step("scheduling.v1.SchedulingService/SubmitIntake", async {
        let answers: BTreeMap<String, String> = [
            ("visit-reason".to_owned(), "Demo follow-up".to_owned()),
            ("allergies-changed".to_owned(), "no".to_owned()),
        ]
        .into_iter()
        .collect();
        let a = scheduling
            .clone()
            .submit_intake(keyed(
                SubmitIntakeRequest {
                    appointment_id: out.appointment_id.clone(),
                    answers,
                },
                &patient.access_token,
            )?)
            .await?
            .into_inner();
        let outcome = format!(
            "intake {} for appointment {}",
            intake_name(a.intake_status),
            short(&a.id)
        );
        Ok(((), outcome))
    })
    .await?;

    p.step("records.v1.RecordsService/ListCareTeam", async {
        let ((), waited) = eventually(
            "the booked provider to join the patient's care team",
            || async {
                let team = records
                    .clone()
                    .list_care_team(bearer(
                        ListCareTeamRequest {
                            patient_id: out.patient_id.clone(),
                        },
                        &patient.access_token,
                    )?)
                    .await?
                    .into_inner();
                Ok(team
                    .members
                    .iter()
                    .any(|m| m.user_id == out.provider_id && m.end_time.is_none())
                    .then_some(()))
            },
        )
        .await?;
        let outcome = format!(
            "provider {} on the care team after {} ms",
            short(&out.provider_id),
            waited.as_millis()
        );
        Ok(((), outcome))
    })
    .await?;

    // ---- the follow-up, whose reminder falls due within the run ----
    let follow_up_start = Utc::now().trunc_subsecs(0)
        + chrono::Duration::hours(1)
        + chrono::Duration::seconds(FOLLOW_UP_LEAD_SECS);
    p.step(ADD_EXCEPTION, async {
        let e = extra_hours(
            &scheduling,
            &provider.access_token,
            &out.provider_id,
            follow_up_start,
            chrono::Duration::minutes(i64::from(VISIT_MINUTES)),
        )
        .await?;
        let outcome = format!("extra hours {} at {}", short(&e.id), hhmm(follow_up_start));
        Ok(((), outcome))
    })
    .await?;
    out.follow_up_appointment_id = p
        .step(BOOK, async {
            let a = scheduling
                .clone()
                .book_appointment(keyed(
                    BookAppointmentRequest {
                        provider_id: out.provider_id.clone(),
                        visit_type_id: out.visit_type_id.clone(),
                        start_time: Some(to_proto(follow_up_start)),
                        ..BookAppointmentRequest::default()
                    },
                    &patient.access_token,
                )?)
                .await?
                .into_inner();
            let due = follow_up_start - chrono::Duration::hours(1);
            // Scheduling writes only reminders still ahead at booking time.
            if Utc::now() >= due {
                return fail(format!(
                    "the follow-up was booked after its reminder's due time {} (more than {FOLLOW_UP_LEAD_SECS} s after its hours were opened): no reminder to show",
                    hhmm(due)
                ));
            }
            let outcome = format!(
                "follow-up {} at {}; 1-hour reminder due {}",
                short(&a.id),
                hhmm(follow_up_start),
                hhmm(due)
            );
            Ok((a.id, outcome))
        })
        .await?;

    // ---- messages ----
    out.conversation_id = p
        .step("messaging.v1.MessagingService/CreateConversation", async {
            let c = messaging
                .clone()
                .create_conversation(keyed(
                    CreateConversationRequest {
                        kind: ConversationKind::Care as i32,
                        patient_id: out.patient_id.clone(),
                        member_ids: Vec::new(),
                        subject: "Demo visit".to_owned(),
                    },
                    &patient.access_token,
                )?)
                .await?
                .into_inner();
            let outcome = format!("care conversation {}", short(&c.id));
            Ok((c.id, outcome))
        })
        .await?;
    let mut stream = p
        .step("messaging.v1.MessagingService/StreamEvents", async {
            let stream = messaging
                .clone()
                .stream_events(bearer(
                    StreamEventsRequest {
                        conversation_id: out.conversation_id.clone(),
                        after_seq: 0,
                    },
                    &provider.access_token,
                )?)
                .await?
                .into_inner();
            Ok((stream, "the provider's stream is open".to_owned()))
        })
        .await?;
    p.step(SEND, async {
        let sent_at = Instant::now();
        let m = messaging
            .clone()
            .send_message(bearer(
                SendMessageRequest {
                    conversation_id: out.conversation_id.clone(),
                    client_message_id: format!("demo-{tag}-1"),
                    body: "Hello doctor, this is the demo patient.".to_owned(),
                    attachment_ids: Vec::new(),
                },
                &patient.access_token,
            )?)
            .await?
            .into_inner();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, stream.message()).await;
            let event = match next {
                Err(_) => {
                    return fail(format!(
                        "message {} did not arrive on the provider's stream",
                        short(&m.id)
                    ))
                }
                Ok(Err(status)) => return Err(status.into()),
                Ok(Ok(None)) => return fail("the provider's stream ended"),
                Ok(Ok(Some(event))) => event,
            };
            if let Some(conversation_event::Event::Message(got)) = event.event {
                if got.id == m.id {
                    break;
                }
            }
        }
        let outcome = format!(
            "message {} seq {}; received live by the provider after {} ms",
            short(&m.id),
            m.seq,
            sent_at.elapsed().as_millis()
        );
        Ok(((), outcome))
    })
    .await?;
    drop(stream);
    let reply_seq = p
        .step(SEND, async {
            let m = messaging
                .clone()
                .send_message(bearer(
                    SendMessageRequest {
                        conversation_id: out.conversation_id.clone(),
                        client_message_id: format!("demo-{tag}-2"),
                        body: "Hello, see you at the video visit.".to_owned(),
                        attachment_ids: Vec::new(),
                    },
                    &provider.access_token,
                )?)
                .await?
                .into_inner();
            let outcome = format!("message {} seq {}", short(&m.id), m.seq);
            Ok((m.seq, outcome))
        })
        .await?;
    p.step("messaging.v1.MessagingService/ListEvents", async {
        let events = messaging
            .clone()
            .list_events(bearer(
                ListEventsRequest {
                    conversation_id: out.conversation_id.clone(),
                    after_seq: 0,
                    page_size: 0,
                },
                &patient.access_token,
            )?)
            .await?
            .into_inner();
        let seen = events.events.iter().any(|e| {
            e.seq == reply_seq
                && matches!(&e.event, Some(conversation_event::Event::Message(m)) if m.sender_id == out.provider_id)
        });
        if !seen {
            return fail(format!("the provider's answer (seq {reply_seq}) is not among the patient's events"));
        }
        let outcome = format!("{} event(s); the answer at seq {reply_seq}", events.events.len());
        Ok(((), outcome))
    })
    .await?;

    // ---- the chart ----
    let entry = p
        .step("records.v1.RecordsService/CreateEntry", async {
            let e = records
                .clone()
                .create_entry(keyed(
                    CreateEntryRequest {
                        patient_id: out.patient_id.clone(),
                        content: Some(condition(
                            "J06.9",
                            "Acute upper respiratory infection, unspecified",
                        )),
                        labels: Vec::new(),
                    },
                    &provider.access_token,
                )?)
                .await?
                .into_inner();
            let outcome = format!("entry {} version {} (condition)", short(&e.id), e.version);
            Ok((e, outcome))
        })
        .await?;
    out.entry_id = entry.id.clone();
    let verified = p
        .step("records.v1.RecordsService/VerifyEntry", async {
            let e = records
                .clone()
                .verify_entry(keyed(
                    VerifyEntryRequest {
                        patient_id: out.patient_id.clone(),
                        entry_id: out.entry_id.clone(),
                        etag: entry.etag.clone(),
                    },
                    &provider.access_token,
                )?)
                .await?
                .into_inner();
            let by = e.provenance.as_ref().map_or("", |p| p.verified_by.as_str());
            if by != out.provider_id {
                return fail("the entry's new version is not verified by the provider");
            }
            let outcome = format!(
                "entry {} version {} verified by the provider",
                short(&e.id),
                e.version
            );
            Ok((e, outcome))
        })
        .await?;
    out.amendment_id = p
        .step("records.v1.RecordsService/RequestAmendment", async {
            let a = records
                .clone()
                .request_amendment(keyed(
                    RequestAmendmentRequest {
                        patient_id: out.patient_id.clone(),
                        entry_id: out.entry_id.clone(),
                        reason: "The infection has resolved since.".to_owned(),
                    },
                    &patient.access_token,
                )?)
                .await?
                .into_inner();
            let due = a
                .due_time
                .and_then(|t| carehub_platform::timestamps::from_proto(&t))
                .map_or_else(|| "?".to_owned(), |t| t.format("%Y-%m-%d").to_string());
            let outcome = format!("amendment {} requested, due {due}", short(&a.id));
            Ok((a.id, outcome))
        })
        .await?;
    p.step("records.v1.RecordsService/AcceptAmendment", async {
        let mut content = condition("J06.9", "Acute upper respiratory infection, unspecified");
        if let Some(entry_content::Content::Condition(c)) = content.content.as_mut() {
            c.clinical_status = ConditionStatus::Resolved as i32;
        }
        let a = records
            .clone()
            .accept_amendment(keyed(
                AcceptAmendmentRequest {
                    patient_id: out.patient_id.clone(),
                    amendment_id: out.amendment_id.clone(),
                    content: Some(content),
                    etag: verified.etag.clone(),
                    labels: Vec::new(),
                },
                &provider.access_token,
            )?)
            .await?
            .into_inner();
        let outcome = format!(
            "amendment {} accepted: entry version {}",
            short(&a.id),
            a.amended_version
        );
        Ok(((), outcome))
    })
    .await?;

    // ---- the reminder went out (the scheduling worker's audit event, merged by records) ----
    p.step(ACCESS_LOG, async {
        let (entry, waited) = eventually(
            "the follow-up's reminder to be handed to messaging",
            || async {
                let log = access_log(&records, &patient.access_token, &out.patient_id).await?;
                Ok(log.into_iter().find(|e| {
                    e.kind == "scheduling.reminder.send"
                        && (e.entity_id.is_empty() || e.entity_id == out.follow_up_appointment_id)
                }))
            },
        )
        .await?;
        let outcome = format!(
            "reminder of {} sent by {} (found after {} ms)",
            short(&out.follow_up_appointment_id),
            if entry.actor_workload.is_empty() {
                "scheduling"
            } else {
                entry.actor_workload.as_str()
            },
            waited.as_millis()
        );
        Ok(((), outcome))
    })
    .await?;

    // ---- the visit ----
    out.video_room = p
        .step("messaging.v1.MessagingService/GetVideoJoinToken", async {
            let (token, waited) = eventually("messaging to learn of the video visit", || async {
                match messaging
                    .clone()
                    .get_video_join_token(bearer(
                        GetVideoJoinTokenRequest {
                            appointment_id: out.appointment_id.clone(),
                        },
                        &patient.access_token,
                    )?)
                    .await
                {
                    Ok(t) => Ok(Some(t.into_inner())),
                    // Not prepared yet: scheduling's outbox has not delivered the visit.
                    Err(s) if s.code() == Code::NotFound => Ok(None),
                    Err(s) => Err(s.into()),
                }
            })
            .await?;
            let until = token
                .expire_time
                .and_then(|t| carehub_platform::timestamps::from_proto(&t))
                .map_or_else(|| "?".to_owned(), hhmm);
            let outcome = format!(
                "join token for room {} valid until {until} ({} B JWT, after {} ms)",
                short(&token.room),
                token.token.len(),
                waited.as_millis()
            );
            Ok((token.room, outcome))
        })
        .await?;
    for (rpc, who, expect) in [
        (
            "scheduling.v1.SchedulingService/CheckInAppointment",
            &patient,
            AppointmentStatus::CheckedIn,
        ),
        (
            "scheduling.v1.SchedulingService/StartAppointment",
            &provider,
            AppointmentStatus::InProgress,
        ),
        (
            "scheduling.v1.SchedulingService/CompleteAppointment",
            &provider,
            AppointmentStatus::Completed,
        ),
    ] {
        p.step(rpc, async {
            let req = keyed(
                AppointmentActionRequest {
                    appointment_id: out.appointment_id.clone(),
                },
                &who.access_token,
            )?;
            let mut client = scheduling.clone();
            let a = match expect {
                AppointmentStatus::CheckedIn => client.check_in_appointment(req).await?,
                AppointmentStatus::InProgress => client.start_appointment(req).await?,
                _ => client.complete_appointment(req).await?,
            }
            .into_inner();
            if a.status != expect as i32 {
                return fail(format!(
                    "the appointment is {:?}, not {expect:?}",
                    AppointmentStatus::try_from(a.status)
                ));
            }
            let outcome = format!(
                "appointment {} {}",
                short(&a.id),
                expect
                    .as_str_name()
                    .trim_start_matches("APPOINTMENT_STATUS_")
                    .to_lowercase()
            );
            Ok(((), outcome))
        })
        .await?;
    }

    // ---- paying ----
    let invoice = p
        .step("billing.v1.BillingService/ListInvoices", async {
            let (invoice, waited) = eventually("billing to open the visit's invoice", || async {
                let list = billing
                    .clone()
                    .list_invoices(bearer(
                        ListInvoicesRequest {
                            patient_id: out.patient_id.clone(),
                            status: 0,
                            page: Some(PageRequest {
                                page_size: 50,
                                page_token: String::new(),
                            }),
                        },
                        &patient.access_token,
                    )?)
                    .await?
                    .into_inner();
                Ok(list.invoices.into_iter().find(|i| {
                    i.appointment_id == out.appointment_id && i.status == InvoiceStatus::Open as i32
                }))
            })
            .await?;
            let outcome = format!(
                "invoice {} ({}) open: {} {} minor units due (after {} ms)",
                short(&invoice.id),
                invoice.number,
                invoice.amount_due_minor,
                invoice.currency_code,
                waited.as_millis()
            );
            Ok((invoice, outcome))
        })
        .await?;
    out.invoice_id = invoice.id.clone();
    p.step("billing.v1.BillingService/AddPaymentMethod", async {
        let m = billing
            .clone()
            .add_payment_method(keyed(
                AddPaymentMethodRequest {
                    patient_id: out.patient_id.clone(),
                    processor_token: TEST_CARD.to_owned(),
                    make_default: true,
                },
                &patient.access_token,
            )?)
            .await?
            .into_inner();
        let outcome = format!(
            "payment method {} ({} ending {}, default)",
            short(&m.id),
            m.brand,
            m.last4
        );
        Ok(((), outcome))
    })
    .await?;
    out.payment_id = p
        .step("billing.v1.BillingService/PayInvoice", async {
            let pay = billing
                .clone()
                .pay_invoice(keyed(
                    PayInvoiceRequest {
                        invoice_id: out.invoice_id.clone(),
                        payment_method_id: String::new(),
                        amount_minor: 0,
                    },
                    &patient.access_token,
                )?)
                .await?
                .into_inner();
            if pay.status != PaymentStatus::Succeeded as i32 {
                return fail(format!(
                    "the payment is {:?} ({}), not succeeded",
                    PaymentStatus::try_from(pay.status),
                    pay.failure_code
                ));
            }
            let amount = pay.amount.as_ref().map_or(0, |m| m.amount_minor);
            let outcome = format!(
                "payment {} succeeded: {amount} {CURRENCY} minor units",
                short(&pay.id)
            );
            Ok((pay.id, outcome))
        })
        .await?;

    // ---- the patient's own view ----
    out.access_log_entries = p
        .step(ACCESS_LOG, async {
            let log = access_log(&records, &patient.access_token, &out.patient_id).await?;
            let mut by_service: BTreeMap<&str, usize> = BTreeMap::new();
            for e in &log {
                *by_service.entry(e.service.as_str()).or_default() += 1;
            }
            let provider_reads = log
                .iter()
                .filter(|e| e.actor_user_id == out.provider_id)
                .count();
            let services = by_service
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let outcome = format!(
                "{} entries on the first page ({services}); {provider_reads} by the provider",
                log.len()
            );
            Ok((log.len(), outcome))
        })
        .await?;
    out.fhir_resources = p
        .step("records.v1.RecordsService/ExportChart", async {
            let mut stream = records
                .clone()
                .export_chart(bearer(
                    ExportChartRequest {
                        patient_id: out.patient_id.clone(),
                        recipient: String::new(),
                        purpose: String::new(),
                    },
                    &patient.access_token,
                )?)
                .await?
                .into_inner();
            let mut json = Vec::new();
            while let Some(chunk) = stream.message().await? {
                json.extend_from_slice(&chunk.json);
            }
            let bundle: serde_json::Value = serde_json::from_slice(&json)
                .map_err(|e| Failure::Other(format!("the export is not JSON: {e}")))?;
            if bundle["resourceType"] != "Bundle" {
                return fail("the export is not a FHIR Bundle");
            }
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            let entries = bundle["entry"].as_array().map_or(&[][..], |v| v.as_slice());
            for e in entries {
                let kind = e["resource"]["resourceType"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned();
                *kinds.entry(kind).or_default() += 1;
            }
            let listed = kinds
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let outcome = format!(
                "FHIR R4 Bundle, {} B, {} resources ({listed})",
                json.len(),
                entries.len()
            );
            Ok((entries.len(), outcome))
        })
        .await?;
    Ok(out)
}

fn weekday_of(t: DateTime<Utc>) -> Weekday {
    match t.weekday() {
        chrono::Weekday::Mon => Weekday::Monday,
        chrono::Weekday::Tue => Weekday::Tuesday,
        chrono::Weekday::Wed => Weekday::Wednesday,
        chrono::Weekday::Thu => Weekday::Thursday,
        chrono::Weekday::Fri => Weekday::Friday,
        chrono::Weekday::Sat => Weekday::Saturday,
        chrono::Weekday::Sun => Weekday::Sunday,
    }
}

fn intake_name(status: i32) -> String {
    carehub_proto::scheduling::v1::IntakeStatus::try_from(status).map_or_else(
        |_| status.to_string(),
        |s| {
            s.as_str_name()
                .trim_start_matches("INTAKE_STATUS_")
                .to_lowercase()
        },
    )
}

fn condition(code: &str, display: &str) -> EntryContent {
    EntryContent {
        content: Some(entry_content::Content::Condition(Condition {
            code: Some(Coding {
                system: "http://hl7.org/fhir/sid/icd-10-cm".to_owned(),
                code: code.to_owned(),
                display: display.to_owned(),
            }),
            clinical_status: ConditionStatus::Active as i32,
            onset_date: None,
            note: String::new(),
        })),
    }
}

async fn extra_hours(
    scheduling: &SchedulingServiceClient<ServiceChannel>,
    token: &str,
    provider_id: &str,
    start: DateTime<Utc>,
    length: chrono::Duration,
) -> Result<AvailabilityException, Failure> {
    Ok(scheduling
        .clone()
        .add_availability_exception(keyed(
            AddAvailabilityExceptionRequest {
                exception: Some(AvailabilityException {
                    id: String::new(),
                    provider_id: provider_id.to_owned(),
                    kind: ExceptionKind::ExtraHours as i32,
                    start_time: Some(to_proto(start)),
                    end_time: Some(to_proto(start + length)),
                }),
            },
            token,
        )?)
        .await?
        .into_inner())
}

/// The first page (up to 500 entries, newest first) of the patient's access log.
async fn access_log(
    records: &RecordsServiceClient<ServiceChannel>,
    token: &str,
    patient_id: &str,
) -> Result<Vec<AccessLogEntry>, Failure> {
    Ok(records
        .clone()
        .get_access_log(bearer(
            GetAccessLogRequest {
                patient_id: patient_id.to_owned(),
                page: Some(PageRequest {
                    page_size: 500,
                    page_token: String::new(),
                }),
            },
            token,
        )?)
        .await?
        .into_inner()
        .entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_w3c_sampled_with_the_trace_id_it_answers() {
        let (header, trace) = new_traceparent();
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!(parts.len(), 4, "{header}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], trace);
        assert_eq!(trace.len(), 32);
        assert!(trace
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01");
        assert_ne!(new_traceparent().1, trace, "a fresh trace id per call");
    }

    #[test]
    fn every_step_names_a_carehub_rpc() {
        for s in STEPS {
            let (service, method) = s.rpc.split_once('/').unwrap_or(("", ""));
            assert!(
                ["identity", "records", "messaging", "scheduling", "billing"]
                    .iter()
                    .any(|p| service.starts_with(&format!("{p}.v1."))),
                "{s:?}"
            );
            assert!(!method.is_empty() && !s.what.is_empty(), "{s:?}");
        }
    }
}
