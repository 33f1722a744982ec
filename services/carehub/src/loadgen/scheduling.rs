//! Scheduling scenarios, and the provider directory they need, seeded through the services'
//! public RPCs as the gateway workload:
//!
//! - a staff member: the admin (the messaging scenarios' `--admin-email`,
//!   `LOADGEN_ADMIN_PASSWORD`, signed in once per run) creates them with CreateUser; they sign
//!   in with the one-time password, change it and refresh their session, then create the run's
//!   visit type (CreateVisitType: 30 minutes, telehealth, no buffer) and keep the providers'
//!   calendars;
//! - providers: the admin creates them with CreateUser (active providers in identity; they
//!   never sign in), staff put them in the directory (PutProvider) and give them weekly windows
//!   (SetWeeklyAvailability). `slot-search`'s `--search-providers` (50) work 08:00-18:00 Monday
//!   to Friday in five US zones, all licensed in NY besides their home state; `booking-storm`'s
//!   one provider works around the clock (00:00-24:00 every day, UTC) and is licensed in AK
//!   only, so that no search finds it;
//! - existing appointments: patients of the identity seed book [`BOOKED_PER_PROVIDER`] slots of
//!   each search provider in the week searched (SearchSlots for that provider, then
//!   BookAppointment), so that every search subtracts busy time.
//!
//! Every seeding call carries an idempotency key kept across its retries; emails are the run's
//! own (`loadgen-<run>-...@example.org`) and so is the visit type, so a run's searches never
//! meet an earlier run's providers. Nothing is deleted afterwards (scheduling keeps cancelled
//! appointments too).
//!
//! `booking-storm`: every call books (BookAppointment, directly, as the patient) a slot of the
//! one storm provider. Call `n` picks at random among [`Storm::spread`] slots from slot
//! `n / attempts_per_slot`, so calls advance through the provider's slots (never running out)
//! while most of them collide: a refusal (FAILED_PRECONDITION, reason SLOT_TAKEN) is an
//! expected outcome, counted apart and not as an error. A patient about to keep more than
//! [`STORM_KEEP`] storm appointments cancels their oldest (scheduling limits a patient's upcoming
//! appointments), so the storm runs at any length. The storm's slots begin past the week
//! searched, so a patient's storm bookings never overlap their search appointments. Afterwards
//! the provider's active appointments are checked for overlaps: with SQL on scheduling's
//! database when it can be read, otherwise through ListAppointments as the staff member.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use anyhow::Context as _;
use carehub_proto::common::v1::{ErrorReason, PageRequest};
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::{CreateUserRequest, Role};
use carehub_proto::scheduling::v1::scheduling_service_client::SchedulingServiceClient;
use carehub_proto::scheduling::v1::{
    AppointmentStatus, BookAppointmentRequest, CancelAppointmentRequest, CancelReason,
    CreateVisitTypeRequest, ListAppointmentsRequest, LocalTime, Modality, Provider,
    PutProviderRequest, SearchSlotsRequest, SetWeeklyAvailabilityRequest, VisitType, Weekday,
    WeeklyWindow,
};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::engine::{Op, OpFuture, TimedOp};
use super::identity::{bearer, retrying, SeededUser, PASSWORD};
use super::messaging::{keyed, new_key, pick, short_id, sign_in, Party};

/// The run's visit type: 30-minute telehealth visits, no buffer.
pub const VISIT_MINUTES: i64 = 30;
/// The search providers' zones, each with the state they are licensed in besides NY.
const ZONES: [(&str, &str); 5] = [
    ("America/New_York", "NJ"),
    ("America/Chicago", "IL"),
    ("America/Denver", "CO"),
    ("America/Los_Angeles", "CA"),
    ("America/Phoenix", "AZ"),
];
/// The search: a patient in New York.
pub const SEARCH_STATE: &str = "NY";
pub const PATIENT_ZONE: &str = "America/New_York";
/// The range searched, from now.
pub const SEARCH_DAYS: i64 = 7;
/// Slots asked for per search (the first page, what a patient sees first).
pub const SEARCH_PAGE: i32 = 50;
/// Appointments booked per search provider before the searches (busy time to subtract).
pub const BOOKED_PER_PROVIDER: usize = 4;
/// The storm's first slot: the first UTC midnight this many days after the seed, past the week
/// searched.
const STORM_OFFSET_DAYS: i64 = 8;
const STORM_ZONE: &str = "UTC";
const STORM_STATE: &str = "AK";
/// Largest ListAppointments page.
const LIST_PAGE: i32 = 500;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn clients(channels: &[Channel]) -> Vec<SchedulingServiceClient<Channel>> {
    channels
        .iter()
        .map(|c| SchedulingServiceClient::new(c.clone()))
        .collect()
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn from_ts(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let t = t?;
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

fn time(hours: i32) -> Option<LocalTime> {
    Some(LocalTime { hours, minutes: 0 })
}

/// Whether `status` is a refusal of the slot (FAILED_PRECONDITION, reason SLOT_TAKEN).
pub fn slot_taken(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition
        && carehub_platform::errors::details_of(status)
            .reason
            .as_deref()
            == Some(ErrorReason::SlotTaken.as_str_name())
}

/// The search providers' data.
pub struct SearchSeed {
    pub providers: Vec<String>,
    /// Appointments booked among them.
    pub booked: usize,
}

/// The storm provider's data.
pub struct StormSeed {
    pub provider_id: String,
    /// Slot `k` starts [`VISIT_MINUTES`] × `k` after this UTC midnight.
    pub first_slot: DateTime<Utc>,
}

/// Seeded data shared by the scheduling scenarios.
pub struct Seed {
    pub visit_type_id: String,
    /// The staff member (signed in again to check the storm through the API).
    pub staff_email: String,
    /// The identity seed's patients, in its order.
    pub patients: Vec<Party>,
    pub search: Option<SearchSeed>,
    pub storm: Option<StormSeed>,
}

/// Connections to the services the seed goes through.
pub struct Channels<'a> {
    pub identity: &'a [Channel],
    pub scheduling: &'a [Channel],
}

/// CreateUser of `email` with `role`, as the admin: the new user's id and one-time password.
async fn create_user(
    client: &IdentityServiceClient<Channel>,
    admin: &Party,
    email: &str,
    role: Role,
    family_name: &str,
    time_zone: &str,
) -> anyhow::Result<(String, String)> {
    let key = new_key();
    let created = retrying("CreateUser", || {
        let mut client = client.clone();
        let msg = CreateUserRequest {
            email: email.to_owned(),
            role: role as i32,
            given_name: "Load".to_owned(),
            family_name: family_name.to_owned(),
            phone: String::new(),
            time_zone: time_zone.to_owned(),
            date_of_birth: None,
        };
        let req = keyed(msg, &admin.access_token, &key);
        async move { client.create_user(req?).await }
    })
    .await?
    .into_inner();
    let user = created
        .user
        .context("CreateUser answered without the user")?;
    // A replayed answer never carries the one-time password (it is a credential).
    anyhow::ensure!(
        !created.one_time_password.is_empty(),
        "CreateUser of {email} answered without its one-time password"
    );
    anyhow::ensure!(
        !user.user_id.is_empty(),
        "CreateUser of {email} answered without an id"
    );
    Ok((user.user_id, created.one_time_password))
}

/// A provider's directory entry and weekly windows, as staff.
struct Listing {
    time_zone: &'static str,
    states: Vec<String>,
    weekdays: Vec<Weekday>,
    hours: (i32, i32),
}

async fn list_provider(
    client: &SchedulingServiceClient<Channel>,
    staff: &Party,
    provider_id: &str,
    visit_type_id: &str,
    l: &Listing,
) -> anyhow::Result<()> {
    let key = new_key();
    retrying("PutProvider", || {
        let mut client = client.clone();
        let msg = PutProviderRequest {
            provider: Some(Provider {
                provider_id: provider_id.to_owned(),
                time_zone: l.time_zone.to_owned(),
                specialties: vec!["family-medicine".to_owned()],
                license_states: l.states.clone(),
                languages: vec!["en".to_owned(), "es".to_owned()],
                accepting_new_patients: true,
                visit_type_ids: vec![visit_type_id.to_owned()],
                update_time: None,
            }),
        };
        let req = keyed(msg, &staff.access_token, &key);
        async move { client.put_provider(req?).await }
    })
    .await?;
    let key = new_key();
    retrying("SetWeeklyAvailability", || {
        let mut client = client.clone();
        let msg = SetWeeklyAvailabilityRequest {
            provider_id: provider_id.to_owned(),
            windows: l
                .weekdays
                .iter()
                .map(|d| WeeklyWindow {
                    weekday: *d as i32,
                    start: time(l.hours.0),
                    end: time(l.hours.1),
                    visit_type_ids: Vec::new(),
                })
                .collect(),
        };
        let req = keyed(msg, &staff.access_token, &key);
        async move { client.set_weekly_availability(req?).await }
    })
    .await?;
    Ok(())
}

/// The free slots of `provider_id` in [from, to) (first page of up to 500), as staff.
async fn provider_slots(
    client: &SchedulingServiceClient<Channel>,
    staff: &Party,
    provider_id: &str,
    visit_type_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<Vec<DateTime<Utc>>> {
    let answer = retrying("SearchSlots", || {
        let mut client = client.clone();
        let req = bearer(
            SearchSlotsRequest {
                start_time: Some(ts(from)),
                end_time: Some(ts(to)),
                visit_type_id: visit_type_id.to_owned(),
                provider_ids: vec![provider_id.to_owned()],
                time_zone: PATIENT_ZONE.to_owned(),
                page: Some(PageRequest {
                    page_size: LIST_PAGE,
                    page_token: String::new(),
                }),
                ..SearchSlotsRequest::default()
            },
            &staff.access_token,
        );
        async move { client.search_slots(req?).await }
    })
    .await?
    .into_inner();
    Ok(answer
        .slots
        .iter()
        .filter_map(|s| from_ts(s.start_time.as_ref()))
        .collect())
}

/// Books one of `slots` for `patient`, from index `first` on: a slot taken (or the patient
/// busy then) moves on to the next one.
async fn book_one(
    client: &SchedulingServiceClient<Channel>,
    patient: &Party,
    provider_id: &str,
    visit_type_id: &str,
    slots: &[DateTime<Utc>],
    first: usize,
) -> anyhow::Result<()> {
    for start in slots.iter().skip(first).take(12) {
        // One key per slot, kept across its retries: a retry never books twice.
        let key = new_key();
        let mut delay = std::time::Duration::from_millis(50);
        for attempt in 1.. {
            let msg = BookAppointmentRequest {
                provider_id: provider_id.to_owned(),
                visit_type_id: visit_type_id.to_owned(),
                start_time: Some(ts(*start)),
                ..BookAppointmentRequest::default()
            };
            let mut c = client.clone();
            let answer = match keyed(msg, &patient.access_token, &key) {
                Ok(req) => c.book_appointment(req).await,
                Err(s) => Err(s),
            };
            match answer {
                Ok(_) => return Ok(()),
                Err(s) if s.code() == Code::FailedPrecondition => break,
                Err(s)
                    if attempt < 8
                        && matches!(s.code(), Code::Unavailable | Code::ResourceExhausted) =>
                {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(2));
                }
                Err(s) => anyhow::bail!("BookAppointment: {} {}", s.code(), s.message()),
            }
        }
    }
    anyhow::bail!("BookAppointment: no free slot of provider {provider_id} from slot {first} on")
}

/// Creates the staff member, the run's visit type and the providers the scenarios asked for
/// (`search`: that many search providers, each with [`BOOKED_PER_PROVIDER`] appointments
/// booked by the patients; `storm`: the storm's provider), `parallel` calls at a time.
pub async fn seed(
    ch: Channels<'_>,
    patients: &[SeededUser],
    admin: &Party,
    search: Option<usize>,
    storm: bool,
    parallel: usize,
) -> anyhow::Result<Seed> {
    anyhow::ensure!(!patients.is_empty(), "no seeded patients");
    let run = short_id();
    let identity = IdentityServiceClient::new(pick(ch.identity, 0)?);
    let scheduling = SchedulingServiceClient::new(pick(ch.scheduling, 0)?);

    let staff_email = format!("loadgen-{run}-staff@example.org");
    let (_, one_time) = create_user(
        &identity,
        admin,
        &staff_email,
        Role::Staff,
        "Staff",
        "America/New_York",
    )
    .await?;
    let staff = sign_in(&identity, &staff_email, &one_time, Some(PASSWORD))
        .await
        .with_context(|| format!("signing in the staff member {staff_email}"))?;

    let key = new_key();
    let visit_type = retrying("CreateVisitType", || {
        let mut client = scheduling.clone();
        let msg = CreateVisitTypeRequest {
            visit_type: Some(VisitType {
                name: format!("Telehealth visit ({run})"),
                duration_minutes: i32::try_from(VISIT_MINUTES).unwrap_or(30),
                buffer_minutes: 0,
                modality: Modality::Telehealth as i32,
                price_code: "loadgen-telehealth-30".to_owned(),
                ..VisitType::default()
            }),
        };
        let req = keyed(msg, &staff.access_token, &key);
        async move { client.create_visit_type(req?).await }
    })
    .await?
    .into_inner();
    let visit_type_id = visit_type.id;

    // The providers' listings: the search providers', then the storm's.
    let mut listings: Vec<Listing> = Vec::new();
    for i in 0..search.unwrap_or(0) {
        let (zone, home) = ZONES[i % ZONES.len()];
        listings.push(Listing {
            time_zone: zone,
            states: vec![SEARCH_STATE.to_owned(), home.to_owned()],
            weekdays: vec![
                Weekday::Monday,
                Weekday::Tuesday,
                Weekday::Wednesday,
                Weekday::Thursday,
                Weekday::Friday,
            ],
            hours: (8, 18),
        });
    }
    if storm {
        listings.push(Listing {
            time_zone: STORM_ZONE,
            states: vec![STORM_STATE.to_owned()],
            weekdays: vec![
                Weekday::Monday,
                Weekday::Tuesday,
                Weekday::Wednesday,
                Weekday::Thursday,
                Weekday::Friday,
                Weekday::Saturday,
                Weekday::Sunday,
            ],
            hours: (0, 24),
        });
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let staff = Arc::new(staff);
    let admin = Arc::new(admin.clone());
    let visit = Arc::new(visit_type_id.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for (i, listing) in listings.into_iter().enumerate() {
        let identity = IdentityServiceClient::new(pick(ch.identity, i)?);
        let scheduling = SchedulingServiceClient::new(pick(ch.scheduling, i)?);
        let (sem, staff, admin, visit) = (sem.clone(), staff.clone(), admin.clone(), visit.clone());
        let email = format!("loadgen-{run}-scheduling-provider-{i}@example.org");
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let (provider_id, _) = create_user(
                &identity,
                &admin,
                &email,
                Role::Provider,
                "Provider",
                listing.time_zone,
            )
            .await?;
            list_provider(&scheduling, &staff, &provider_id, &visit, &listing).await?;
            Ok::<_, anyhow::Error>((i, provider_id))
        });
    }
    let mut providers = Vec::new();
    while let Some(r) = tasks.join_next().await {
        providers.push(r.context("seeding task")??);
    }
    providers.sort_by_key(|(i, _)| *i);
    let mut providers: Vec<String> = providers.into_iter().map(|(_, p)| p).collect();
    let now = Utc::now();
    let storm = if storm {
        let provider_id = providers.pop().context("no storm provider")?;
        let day = (now + Duration::days(STORM_OFFSET_DAYS))
            .timestamp()
            .div_euclid(86_400)
            + 1;
        Some(StormSeed {
            provider_id,
            first_slot: DateTime::from_timestamp(day * 86_400, 0).context("storm start")?,
        })
    } else {
        None
    };

    let patients: Vec<Party> = patients
        .iter()
        .map(|p| Party {
            user_id: p.user_id.clone(),
            access_token: p.access_token.clone(),
        })
        .collect();
    let search = if search.is_some() {
        // Existing appointments: booking n (provider n / BOOKED_PER_PROVIDER) by patient n
        // modulo their number, at every third slot of the provider's week from its first.
        let (from, to) = (now, now + Duration::days(SEARCH_DAYS));
        let mut tasks = tokio::task::JoinSet::new();
        for (p, provider_id) in providers.iter().enumerate() {
            let client = SchedulingServiceClient::new(pick(ch.scheduling, p)?);
            let (sem, staff, visit) = (sem.clone(), staff.clone(), visit.clone());
            let provider_id = provider_id.clone();
            let booking: Vec<Party> = (0..BOOKED_PER_PROVIDER)
                .map(|k| patients[(p * BOOKED_PER_PROVIDER + k) % patients.len()].clone())
                .collect();
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await?;
                let slots = provider_slots(&client, &staff, &provider_id, &visit, from, to).await?;
                anyhow::ensure!(
                    !slots.is_empty(),
                    "SearchSlots found no slot of provider {provider_id} in the coming week"
                );
                for (k, patient) in booking.iter().enumerate() {
                    book_one(&client, patient, &provider_id, &visit, &slots, k * 3).await?;
                }
                Ok::<_, anyhow::Error>(booking.len())
            });
        }
        let mut booked = 0;
        while let Some(r) = tasks.join_next().await {
            booked += r.context("seeding task")??;
        }
        Some(SearchSeed { providers, booked })
    } else {
        None
    };
    Ok(Seed {
        visit_type_id,
        staff_email,
        patients,
        search,
        storm,
    })
}

/// `slot-search`: SearchSlots by patient `seq` modulo their number over the coming week, the
/// run's visit type, state NY, the patient's zone America/New_York, the first page (50 slots).
/// An answer without a slot fails (NOT_FOUND): the seed leaves plenty free.
pub fn search_op(channels: &[Channel], seed: Arc<Seed>) -> Op {
    let clients = Arc::new(clients(channels));
    Arc::new(move |seq| -> OpFuture {
        let mut client = clients[(seq as usize) % clients.len().max(1)].clone();
        let seed = seed.clone();
        Box::pin(async move {
            let n = seed.patients.len().max(1) as u64;
            let patient = seed
                .patients
                .get((seq % n) as usize)
                .ok_or_else(|| Status::internal("no seeded patients"))?;
            let now = Utc::now();
            let msg = SearchSlotsRequest {
                start_time: Some(ts(now)),
                end_time: Some(ts(now + Duration::days(SEARCH_DAYS))),
                visit_type_id: seed.visit_type_id.clone(),
                state: SEARCH_STATE.to_owned(),
                time_zone: PATIENT_ZONE.to_owned(),
                page: Some(PageRequest {
                    page_size: SEARCH_PAGE,
                    page_token: String::new(),
                }),
                ..SearchSlotsRequest::default()
            };
            let answer = client
                .search_slots(bearer(msg, &patient.access_token)?)
                .await?
                .into_inner();
            if answer.slots.is_empty() {
                return Err(Status::not_found("SearchSlots found no free slot"));
            }
            Ok(())
        })
    })
}

/// A booking storm's bookkeeping, shared by its calls.
pub struct Storm {
    seed: Arc<Seed>,
    clients: Vec<SchedulingServiceClient<Channel>>,
    /// Calls advance one slot per this many calls (on average, attempts per slot).
    attempts_per_slot: f64,
    /// A call picks at random among this many slots from where the storm stands.
    spread: u64,
    salt: u64,
    calls: AtomicU64,
    /// The steady state: (opened, closed).
    window: Mutex<(Option<Instant>, Option<Instant>)>,
    /// Calls started inside the steady state.
    booked: AtomicU64,
    refused: AtomicU64,
    /// Every call of the scenario (warm-up and drain included).
    booked_total: AtomicU64,
    refused_total: AtomicU64,
    /// The furthest slot index tried.
    furthest: AtomicU64,
    /// Per patient: the slots they booked (never tried again by them).
    held: Vec<Mutex<HashSet<u64>>>,
    /// Per patient: their storm appointments still booked, oldest first. Scheduling allows a
    /// patient `max_upcoming_appointments` (20); a patient who would pass [`STORM_KEEP`]
    /// cancels their oldest first, as a real patient would have to.
    kept: Vec<Mutex<std::collections::VecDeque<String>>>,
    /// Storm appointments cancelled so (whole scenario).
    cancelled_total: AtomicU64,
}

/// Storm appointments one patient keeps booked at most (below scheduling's default limit of 20
/// upcoming appointments, which the seed's existing appointments also count against).
const STORM_KEEP: usize = 12;

/// splitmix64: a cheap, well-mixed pseudo-random number from a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Storm {
    pub fn new(
        channels: &[Channel],
        seed: Arc<Seed>,
        attempts_per_slot: f64,
        spread: u64,
    ) -> Arc<Storm> {
        let patients = seed.patients.len().max(1);
        Arc::new(Storm {
            seed,
            clients: clients(channels),
            attempts_per_slot: if attempts_per_slot.is_finite() {
                attempts_per_slot.max(0.01)
            } else {
                1.0
            },
            spread: spread.max(1),
            salt: (uuid::Uuid::new_v4().as_u128() & u128::from(u64::MAX)) as u64,
            calls: AtomicU64::new(0),
            window: Mutex::new((None, None)),
            booked: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            booked_total: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
            furthest: AtomicU64::new(0),
            held: (0..patients).map(|_| Mutex::new(HashSet::new())).collect(),
            kept: (0..patients)
                .map(|_| Mutex::new(Default::default()))
                .collect(),
            cancelled_total: AtomicU64::new(0),
        })
    }

    /// Whether a call started at `t` belongs to the steady state.
    fn counts(&self, t: Instant) -> bool {
        let (open, close) = *lock(&self.window);
        open.is_some_and(|o| t >= o) && close.is_none_or(|c| t < c)
    }

    /// The slot call `n` of `patient` tries.
    fn pick(&self, n: u64, patient: usize) -> u64 {
        let base = (n as f64 / self.attempts_per_slot) as u64;
        let mut slot = base + mix(n ^ self.salt) % self.spread;
        if let Some(held) = self.held.get(patient) {
            let held = lock(held);
            while held.contains(&slot) {
                slot += 1;
            }
        }
        self.furthest.fetch_max(slot, Ordering::Relaxed);
        slot
    }

    /// `booking-storm`: BookAppointment of the storm provider's slot [`Storm::pick`] chooses,
    /// by patient `seq` modulo their number; SLOT_TAKEN is a refusal (counted, and a success
    /// for the engine: its latency is in the percentiles), anything else an error.
    pub fn op(self: &Arc<Self>) -> TimedOp {
        let storm = self.clone();
        Arc::new(move |seq, started| -> OpFuture {
            let storm = storm.clone();
            Box::pin(async move {
                let s = storm
                    .seed
                    .storm
                    .as_ref()
                    .ok_or_else(|| Status::internal("no storm provider seeded"))?;
                let n = storm.seed.patients.len().max(1);
                let p = (seq % n as u64) as usize;
                let patient = storm
                    .seed
                    .patients
                    .get(p)
                    .ok_or_else(|| Status::internal("no seeded patients"))?;
                let call = storm.calls.fetch_add(1, Ordering::Relaxed);
                let slot = storm.pick(call, p);
                let offset = i64::try_from(slot).unwrap_or(i64::MAX / 2) * VISIT_MINUTES;
                let start = s.first_slot + Duration::minutes(offset);
                let msg = BookAppointmentRequest {
                    provider_id: s.provider_id.clone(),
                    visit_type_id: storm.seed.visit_type_id.clone(),
                    start_time: Some(ts(start)),
                    ..BookAppointmentRequest::default()
                };
                let mut client = storm.clients[(seq as usize) % storm.clients.len().max(1)].clone();
                let answer = client
                    .book_appointment(keyed(msg, &patient.access_token, &new_key())?)
                    .await;
                let counted = storm.counts(started);
                match answer {
                    Ok(booked) => {
                        if let Some(held) = storm.held.get(p) {
                            lock(held).insert(slot);
                        }
                        storm.booked_total.fetch_add(1, Ordering::Relaxed);
                        if counted {
                            storm.booked.fetch_add(1, Ordering::Relaxed);
                        }
                        let oldest = storm.kept.get(p).and_then(|kept| {
                            let mut kept = lock(kept);
                            kept.push_back(booked.into_inner().id);
                            (kept.len() > STORM_KEEP)
                                .then(|| kept.pop_front())
                                .flatten()
                        });
                        if let Some(id) = oldest {
                            let cancel = CancelAppointmentRequest {
                                appointment_id: id,
                                reason: CancelReason::PatientRequest as i32,
                                note: String::new(),
                            };
                            client
                                .cancel_appointment(keyed(
                                    cancel,
                                    &patient.access_token,
                                    &new_key(),
                                )?)
                                .await?;
                            storm.cancelled_total.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(())
                    }
                    Err(status) if slot_taken(&status) => {
                        storm.refused_total.fetch_add(1, Ordering::Relaxed);
                        if counted {
                            storm.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(())
                    }
                    Err(status) => Err(status),
                }
            })
        })
    }

    /// Checks the storm provider's active appointments for overlaps: with SQL on `database`
    /// when it can be read and holds at least the bookings answered, otherwise through
    /// ListAppointments as the staff member.
    pub async fn verify(
        &self,
        database: Option<&str>,
        identity: Option<&[Channel]>,
        scheduling: &[Channel],
    ) -> Verdict {
        let Some(s) = self.seed.storm.as_ref() else {
            return Verdict::failed("no storm provider seeded".to_owned());
        };
        let booked = self
            .booked_total
            .load(Ordering::Relaxed)
            .saturating_sub(self.cancelled_total.load(Ordering::Relaxed));
        let mut notes = Vec::new();
        if let Some(url) = database {
            match verify_sql(url, &s.provider_id).await {
                Ok((active, overlaps)) if active >= booked => {
                    return Verdict {
                        method: "sql".to_owned(),
                        active_appointments: Some(active),
                        double_bookings: Some(overlaps),
                        note: None,
                    };
                }
                Ok((active, _)) => notes.push(format!(
                    "the SQL check found {active} active appointments of the provider, fewer than \
                     the {booked} booked: not scheduling's database"
                )),
                Err(e) => notes.push(format!("SQL check not possible: {e:#}")),
            }
        }
        let Some(identity) = identity else {
            notes.push("no identity connection to sign staff in".to_owned());
            return Verdict::failed(notes.join("; "));
        };
        match verify_api(&self.seed, &s.provider_id, identity, scheduling).await {
            Ok((active, overlaps)) => Verdict {
                method: "api".to_owned(),
                active_appointments: Some(active),
                double_bookings: Some(overlaps),
                note: (!notes.is_empty()).then(|| notes.join("; ")),
            },
            Err(e) => {
                notes.push(format!("API check failed: {e:#}"));
                Verdict::failed(notes.join("; "))
            }
        }
    }

    /// The figures of the steady state that lasted `elapsed`, with `verdict`.
    pub fn stats(&self, elapsed: std::time::Duration, verdict: Verdict) -> BookingStats {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let booked = self.booked.load(Ordering::Relaxed);
        let refused = self.refused.load(Ordering::Relaxed);
        BookingStats {
            bookings: booked,
            refusals: refused,
            bookings_per_sec: booked as f64 / secs,
            refusals_per_sec: refused as f64 / secs,
            booked_total: self
                .booked_total
                .load(Ordering::Relaxed)
                .saturating_sub(self.cancelled_total.load(Ordering::Relaxed)),
            cancelled_total: self.cancelled_total.load(Ordering::Relaxed),
            refused_total: self.refused_total.load(Ordering::Relaxed),
            slots_spanned: self.furthest.load(Ordering::Relaxed) + 1,
            attempts_per_slot: self.attempts_per_slot,
            spread: self.spread,
            verified_by: verdict.method,
            active_appointments: verdict.active_appointments,
            double_bookings: verdict.double_bookings,
            verify_note: verdict.note,
        }
    }
}

/// What the final check found.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// "sql", "api" or "none".
    pub method: String,
    pub active_appointments: Option<u64>,
    /// None: could not be checked.
    pub double_bookings: Option<u64>,
    pub note: Option<String>,
}

impl Verdict {
    fn failed(note: String) -> Verdict {
        Verdict {
            method: "none".to_owned(),
            active_appointments: None,
            double_bookings: None,
            note: Some(note),
        }
    }
}

/// Active appointments of `provider` and how many of them overlap an earlier one.
const OVERLAPS_SQL: &str = "
    SELECT count(*), count(*) FILTER (WHERE start_time < earlier_end)
      FROM (SELECT start_time,
                   max(end_time) OVER (ORDER BY start_time, id
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                       AS earlier_end
              FROM appointments
             WHERE provider_id = $1
               AND status IN ('requested', 'booked', 'checked_in', 'in_progress')) AS active";

async fn verify_sql(url: &str, provider: &str) -> anyhow::Result<(u64, u64)> {
    use sqlx::Connection as _;
    let provider = uuid::Uuid::parse_str(provider).context("the provider's id")?;
    let mut conn = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sqlx::PgConnection::connect(url),
    )
    .await
    .context("connecting to scheduling's database timed out")?
    .context("connecting to scheduling's database")?;
    let (active, overlaps): (i64, i64) = sqlx::query_as(OVERLAPS_SQL)
        .bind(provider)
        .fetch_one(&mut conn)
        .await
        .context("reading the provider's appointments")?;
    let _ = conn.close().await;
    Ok((
        u64::try_from(active).unwrap_or(0),
        u64::try_from(overlaps).unwrap_or(0),
    ))
}

/// How many of `spans` (any order) overlap an earlier-starting one.
pub fn overlaps(mut spans: Vec<(DateTime<Utc>, DateTime<Utc>)>) -> u64 {
    spans.sort_unstable();
    let mut furthest: Option<DateTime<Utc>> = None;
    let mut n = 0;
    for (start, end) in spans {
        if furthest.is_some_and(|f| start < f) {
            n += 1;
        }
        furthest = Some(furthest.map_or(end, |f| f.max(end)));
    }
    n
}

async fn verify_api(
    seed: &Seed,
    provider: &str,
    identity: &[Channel],
    scheduling: &[Channel],
) -> anyhow::Result<(u64, u64)> {
    let identity = IdentityServiceClient::new(pick(identity, 0)?);
    let staff = sign_in(&identity, &seed.staff_email, PASSWORD, None)
        .await
        .with_context(|| format!("signing in the staff member {}", seed.staff_email))?;
    let client = SchedulingServiceClient::new(pick(scheduling, 0)?);
    let active = [
        AppointmentStatus::Requested,
        AppointmentStatus::Booked,
        AppointmentStatus::CheckedIn,
        AppointmentStatus::InProgress,
    ]
    .map(|s| s as i32);
    let mut spans = Vec::new();
    let mut token = String::new();
    loop {
        let page = retrying("ListAppointments", || {
            let mut client = client.clone();
            let req = bearer(
                ListAppointmentsRequest {
                    provider_id: provider.to_owned(),
                    page: Some(PageRequest {
                        page_size: LIST_PAGE,
                        page_token: token.clone(),
                    }),
                    ..ListAppointmentsRequest::default()
                },
                &staff.access_token,
            );
            async move { client.list_appointments(req?).await }
        })
        .await?
        .into_inner();
        for a in page
            .appointments
            .iter()
            .filter(|a| active.contains(&a.status))
        {
            let start = from_ts(a.start_time.as_ref()).context("an appointment without start")?;
            let end = from_ts(a.end_time.as_ref()).context("an appointment without end")?;
            spans.push((start, end));
        }
        token = page.page.map(|p| p.next_page_token).unwrap_or_default();
        if token.is_empty() {
            break;
        }
    }
    let active = spans.len() as u64;
    Ok((active, overlaps(spans)))
}

/// The booking storm's figures.
#[derive(Clone, Debug, Serialize)]
pub struct BookingStats {
    /// Calls started in the steady state that booked / were refused (SLOT_TAKEN).
    pub bookings: u64,
    pub refusals: u64,
    pub bookings_per_sec: f64,
    pub refusals_per_sec: f64,
    /// The whole scenario's (warm-up and drain included) bookings still booked: what the check
    /// must find.
    pub booked_total: u64,
    /// Storm appointments the patients cancelled to stay under their limit.
    pub cancelled_total: u64,
    pub refused_total: u64,
    /// Slots of the provider the storm went through.
    pub slots_spanned: u64,
    pub attempts_per_slot: f64,
    pub spread: u64,
    /// How the double bookings were counted: "sql", "api" or "none" (not checked).
    pub verified_by: String,
    pub active_appointments: Option<u64>,
    pub double_bookings: Option<u64>,
    pub verify_note: Option<String>,
}

impl BookingStats {
    /// What fails the scenario: double bookings, no check, or fewer appointments than
    /// bookings answered.
    pub fn problems(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        match self.double_bookings {
            Some(0) => {}
            Some(n) => out.push(("DOUBLE_BOOKING".to_owned(), n)),
            None => out.push(("NOT_VERIFIED".to_owned(), 1)),
        }
        if let Some(active) = self.active_appointments {
            if active < self.booked_total {
                out.push(("LOST_BOOKING".to_owned(), self.booked_total - active));
            }
        }
        out
    }

    /// "double bookings: N" and how it was found.
    pub fn line(&self) -> String {
        let found = match (self.double_bookings, self.active_appointments) {
            (Some(n), Some(active)) => format!(
                "double bookings: {n} (checked by {}: {active} active appointments of the \
                 provider, {} booked by this run and kept, {} cancelled)",
                if self.verified_by == "sql" {
                    "SQL on scheduling's database"
                } else {
                    "ListAppointments as staff"
                },
                self.booked_total,
                self.cancelled_total
            ),
            _ => "double bookings: NOT CHECKED".to_owned(),
        };
        match &self.verify_note {
            Some(note) => format!("{found}; {note}"),
            None => found,
        }
    }
}

impl super::engine::Steady for Storm {
    fn steady_window(&self) -> &Mutex<(Option<Instant>, Option<Instant>)> {
        &self.window
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap() + Duration::minutes(minutes)
    }

    #[test]
    fn overlaps_count_every_span_that_starts_before_an_earlier_one_ends() {
        assert_eq!(overlaps(Vec::new()), 0);
        // Back to back: none.
        assert_eq!(
            overlaps(vec![(at(30), at(60)), (at(0), at(30)), (at(60), at(90))]),
            0
        );
        // The same slot twice, and one inside a long one.
        assert_eq!(
            overlaps(vec![
                (at(0), at(30)),
                (at(0), at(30)),
                (at(100), at(200)),
                (at(150), at(160)),
                (at(170), at(180)),
            ]),
            3
        );
    }

    #[test]
    fn a_storm_advances_through_the_slots_and_spreads_its_picks() {
        let seed = Arc::new(Seed {
            visit_type_id: String::new(),
            staff_email: String::new(),
            patients: Vec::new(),
            search: None,
            storm: None,
        });
        let storm = Storm::new(&[], seed, 4.0, 8);
        let picks: Vec<u64> = (0..4000).map(|n| storm.pick(n, 0)).collect();
        for (n, p) in picks.iter().enumerate() {
            let base = n as u64 / 4;
            assert!((base..base + 8).contains(p), "call {n} picked {p}");
        }
        let distinct: HashSet<u64> = picks[..400].iter().copied().collect();
        // 400 calls over about 108 slots: most calls collide, yet most slots are tried.
        assert!(
            distinct.len() > 80 && distinct.len() < 110,
            "{}",
            distinct.len()
        );
        // A patient never tries a slot they hold.
        lock(&storm.held[0]).extend(0..1000);
        assert!(storm.pick(0, 0) >= 1000);
    }
}
