//! Messaging scenarios, and the care conversations they need, seeded through the services'
//! public RPCs as the gateway workload:
//!
//! - providers: an admin (`--admin-email`, its password from `LOADGEN_ADMIN_PASSWORD`) creates
//!   them with CreateUser; each signs in with its one-time password, changes it
//!   (ChangePassword) and refreshes its session, so that its tokens work everywhere;
//! - teams and conversations: each patient of the identity seed puts one provider on their
//!   care team (records' AddCareTeamMember, as the patient) and opens a care conversation
//!   with the team (CreateConversation).
//!
//! Every seeding call carries an idempotency key kept across its retries, and the providers'
//! emails are the run's own (`loadgen-<run>-provider-<n>@example.org`), so a retry creates
//! nothing twice and a run never meets an earlier run's data. Nothing is deleted afterwards
//! (as for the patients: identity keeps terminated accounts, messaging keeps conversations).
//!
//! Delivery is measured at the recipient: one reader per StreamEvents stream notes when each
//! message arrives, matched to its send by `client_message_id`; the latency is the arrival
//! minus the send's *intended* time (open loop: no coordinated omission), one sample per
//! stream that was to get the message.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::{
    login_response, AuthTokens, ChangePasswordRequest, CreateUserRequest, LoginRequest,
    RefreshSessionRequest, Role,
};
use carehub_proto::messaging::v1::conversation_event::Event;
use carehub_proto::messaging::v1::messaging_service_client::MessagingServiceClient;
use carehub_proto::messaging::v1::{
    ConversationEvent, ConversationKind, CreateConversationRequest, GetConversationRequest,
    SendMessageRequest, StreamEventsRequest,
};
use carehub_proto::records::v1::records_service_client::RecordsServiceClient;
use carehub_proto::records::v1::AddCareTeamMemberRequest;
use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use super::engine::{self, Op, OpFuture, TimedOp, NOT_DELIVERED};
use super::identity::{bearer, retrying, SeededUser, PASSWORD};

/// How long a sent message may take to reach every stream waiting for it before the rest
/// count as never delivered.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Live streams per HTTP/2 connection (a scenario's streams get connections of their own,
/// opened before its warm-up).
pub const STREAMS_PER_CONNECTION: usize = 100;

/// What a patient writes to their care team (about 110 characters).
const BODY: &str = "Hello, my blood pressure readings this week averaged 128/82. \
                    Should I keep taking the same lisinopril dose?";

/// The admin who creates the providers.
pub struct Admin {
    pub email: String,
    pub password: Option<String>,
    /// What a pending one-time password is changed to (a fresh `carehub up`'s first admin).
    pub new_password: Option<String>,
}

/// A signed-in user: their id and access token.
#[derive(Clone, Debug)]
pub struct Party {
    pub user_id: String,
    pub access_token: String,
}

/// A care conversation between a seeded patient and the provider on their team.
#[derive(Clone, Debug)]
pub struct Conversation {
    pub id: String,
    pub patient: Party,
    /// Index into [`Seed::providers`].
    pub provider: usize,
}

/// Seeded data shared by the messaging scenarios.
pub struct Seed {
    pub providers: Vec<Party>,
    /// One per patient of the identity seed, in its order.
    pub conversations: Vec<Conversation>,
}

/// Connections to the services the seed goes through.
pub struct Channels<'a> {
    pub identity: &'a [Channel],
    pub records: &'a [Channel],
    pub messaging: &'a [Channel],
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn clients(channels: &[Channel]) -> Vec<MessagingServiceClient<Channel>> {
    channels
        .iter()
        .map(|c| MessagingServiceClient::new(c.clone()))
        .collect()
}

pub(super) fn pick<T: Clone>(items: &[T], i: usize) -> anyhow::Result<T> {
    anyhow::ensure!(!items.is_empty(), "no connections");
    Ok(items[i % items.len()].clone())
}

/// `msg` with `token` and the idempotency key `key`.
pub(super) fn keyed<T>(msg: T, token: &str, key: &str) -> Result<tonic::Request<T>, Status> {
    let mut req = bearer(msg, token)?;
    req.metadata_mut().insert(
        "idempotency-key",
        key.parse()
            .map_err(|_| Status::internal("idempotency key"))?,
    );
    Ok(req)
}

pub(super) fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A short random tag: the run's (provider emails) or a scenario's (client message ids).
pub(super) fn short_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id.get(..10).unwrap_or(&id).to_owned()
}

fn party(t: AuthTokens) -> Party {
    Party {
        user_id: t.user_id,
        access_token: t.access_token,
    }
}

/// Signs `email` in with `password`. A session that must change its password first (a
/// one-time password) changes it to `new_password` and is refreshed, so that its tokens are
/// accepted everywhere, not only by ChangePassword.
pub(super) async fn sign_in(
    client: &IdentityServiceClient<Channel>,
    email: &str,
    password: &str,
    new_password: Option<&str>,
) -> anyhow::Result<Party> {
    let answer = retrying("Login", || {
        let mut client = client.clone();
        let req = LoginRequest {
            email: email.to_owned(),
            password: password.to_owned(),
        };
        async move { client.login(req).await }
    })
    .await?
    .into_inner();
    let tokens = match answer.result {
        Some(login_response::Result::Tokens(t)) => t,
        _ => anyhow::bail!(
            "{email} has a second factor: the load generator signs in with a password only"
        ),
    };
    if !tokens.password_change_required {
        return Ok(party(tokens));
    }
    let new_password = new_password.with_context(|| {
        format!(
            "{email} must change its one-time password first: give the new one in \
             LOADGEN_ADMIN_NEW_PASSWORD (--admin-new-password)"
        )
    })?;
    // One key for every retry: a retry after a lost answer gets the stored one.
    let key = new_key();
    retrying("ChangePassword", || {
        let mut client = client.clone();
        let req = keyed(
            ChangePasswordRequest {
                current_password: password.to_owned(),
                new_password: new_password.to_owned(),
            },
            &tokens.access_token,
            &key,
        );
        async move { client.change_password(req?).await }
    })
    .await?;
    let refreshed = retrying("RefreshSession", || {
        let mut client = client.clone();
        let req = RefreshSessionRequest {
            refresh_token: tokens.refresh_token.clone(),
        };
        async move { client.refresh_session(req).await }
    })
    .await?
    .into_inner();
    anyhow::ensure!(
        !refreshed.password_change_required,
        "{email}: the session still requires a password change after ChangePassword"
    );
    Ok(party(refreshed))
}

/// Signs the admin in (`--admin-email`, `LOADGEN_ADMIN_PASSWORD`), changing a pending one-time
/// password to `LOADGEN_ADMIN_NEW_PASSWORD` first: once per run, for every seed that needs it
/// (the messaging and the scheduling scenarios').
pub async fn admin_session(identity: &[Channel], admin: &Admin) -> anyhow::Result<Party> {
    let password = admin.password.as_deref().context(
        "the messaging and scheduling scenarios need an admin to create providers: set \
         LOADGEN_ADMIN_PASSWORD (the password of --admin-email)",
    )?;
    let identity = IdentityServiceClient::new(pick(identity, 0)?);
    sign_in(
        &identity,
        &admin.email,
        password,
        admin.new_password.as_deref(),
    )
    .await
    .with_context(|| format!("signing in the admin {}", admin.email))
}

/// Creates `providers` providers (as the signed-in admin, `admin_party`), puts one on each
/// patient's care team (as the patient) and opens a care conversation per patient, `parallel`
/// calls at a time.
pub async fn seed(
    ch: Channels<'_>,
    patients: &[SeededUser],
    admin_party: &Party,
    providers: usize,
    parallel: usize,
) -> anyhow::Result<Seed> {
    anyhow::ensure!(!patients.is_empty(), "no seeded patients");
    let run = short_id();
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));

    let n = providers.clamp(1, patients.len());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = IdentityServiceClient::new(pick(ch.identity, i)?);
        let token = admin_party.access_token.clone();
        let email = format!("loadgen-{run}-provider-{i}@example.org");
        let sem = sem.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let key = new_key();
            let created = retrying("CreateUser", || {
                let mut client = client.clone();
                let msg = CreateUserRequest {
                    email: email.clone(),
                    role: Role::Provider as i32,
                    given_name: "Load".to_owned(),
                    family_name: "Provider".to_owned(),
                    phone: String::new(),
                    time_zone: "UTC".to_owned(),
                    date_of_birth: None,
                };
                let req = keyed(msg, &token, &key);
                async move { client.create_user(req?).await }
            })
            .await?
            .into_inner();
            // A replayed answer never carries the one-time password (it is a credential).
            anyhow::ensure!(
                !created.one_time_password.is_empty(),
                "CreateUser of {email} answered without its one-time password"
            );
            let provider =
                sign_in(&client, &email, &created.one_time_password, Some(PASSWORD)).await?;
            Ok::<_, anyhow::Error>((i, provider))
        });
    }
    let mut created = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        created.push(r.context("seeding task")??);
    }
    created.sort_by_key(|(i, _)| *i);
    let providers: Vec<Party> = created.into_iter().map(|(_, p)| p).collect();

    let mut tasks = tokio::task::JoinSet::new();
    for (p, patient) in patients.iter().enumerate() {
        let records = RecordsServiceClient::new(pick(ch.records, p)?);
        let messaging = MessagingServiceClient::new(pick(ch.messaging, p)?);
        let provider = p % providers.len();
        let provider_id = providers[provider].user_id.clone();
        let patient = Party {
            user_id: patient.user_id.clone(),
            access_token: patient.access_token.clone(),
        };
        let sem = sem.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let key = new_key();
            retrying("AddCareTeamMember", || {
                let msg = AddCareTeamMemberRequest {
                    patient_id: patient.user_id.clone(),
                    user_id: provider_id.clone(),
                };
                let req = keyed(msg, &patient.access_token, &key);
                let mut records = records.clone();
                async move { records.add_care_team_member(req?).await }
            })
            .await?;
            let key = new_key();
            let conversation = retrying("CreateConversation", || {
                let msg = CreateConversationRequest {
                    kind: ConversationKind::Care as i32,
                    patient_id: patient.user_id.clone(),
                    member_ids: Vec::new(),
                    subject: "Questions about my medication".to_owned(),
                };
                let req = keyed(msg, &patient.access_token, &key);
                let mut messaging = messaging.clone();
                async move { messaging.create_conversation(req?).await }
            })
            .await?
            .into_inner();
            Ok::<_, anyhow::Error>((
                p,
                Conversation {
                    id: conversation.id,
                    patient,
                    provider,
                },
            ))
        });
    }
    let mut conversations = Vec::with_capacity(patients.len());
    while let Some(r) = tasks.join_next().await {
        conversations.push(r.context("seeding task")??);
    }
    conversations.sort_by_key(|(p, _)| *p);
    Ok(Seed {
        providers,
        conversations: conversations.into_iter().map(|(_, c)| c).collect(),
    })
}

/// SendMessage as the conversation's patient, `client_id` doubling as the idempotency key.
async fn send(
    mut client: MessagingServiceClient<Channel>,
    c: &Conversation,
    client_id: &str,
) -> Result<(), Status> {
    let msg = SendMessageRequest {
        conversation_id: c.id.clone(),
        client_message_id: client_id.to_owned(),
        body: BODY.to_owned(),
        attachment_ids: Vec::new(),
    };
    client
        .send_message(keyed(msg, &c.patient.access_token, client_id)?)
        .await
        .map(|_| ())
}

/// `message-send`: SendMessage in conversation `seq` modulo their number (a closed loop's
/// slot `w` keeps to its own conversations), each with a fresh client message id.
pub fn send_op(channels: &[Channel], seed: Arc<Seed>) -> Op {
    let clients = Arc::new(clients(channels));
    let tag = format!("lgs{}", short_id());
    Arc::new(move |seq| -> OpFuture {
        let client = clients[(seq as usize) % clients.len().max(1)].clone();
        let seed = seed.clone();
        let id = format!("{tag}-{seq}");
        Box::pin(async move {
            let n = seed.conversations.len().max(1) as u64;
            let c = seed
                .conversations
                .get((seq % n) as usize)
                .ok_or_else(|| Status::internal("no conversations seeded"))?;
            send(client, c, &id).await
        })
    })
}

/// Streams to open: (conversation, who holds it).
pub type Plan = Vec<(usize, Holder)>;
/// Conversations to send in: (conversation, how many streams are to deliver each message).
pub type Targets = Vec<(usize, usize)>;

/// Who holds a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    Patient,
    Provider,
}

/// A message waiting for its arrivals.
struct Pending {
    intended: Instant,
    /// Streams that have not delivered it yet.
    remaining: usize,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

/// One delivery scenario's bookkeeping, shared by its senders and its stream readers.
pub struct Live {
    /// Prefix of this scenario's client message ids.
    tag: String,
    pending: Mutex<HashMap<String, Pending>>,
    /// The steady state, as intended send times: (opened, closed).
    window: Mutex<(Option<Instant>, Option<Instant>)>,
    /// Arrival − intended send time of each counted message on each stream, µs.
    histogram: Mutex<Histogram<u64>>,
    events: AtomicU64,
    undelivered: AtomicU64,
    duplicates: AtomicU64,
    late: AtomicU64,
    restarts: AtomicU64,
    stream_errors: Mutex<BTreeMap<String, u64>>,
}

/// What a delivery scenario measured beyond the engine's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeliveryStats {
    /// Messages per second offered (open loop).
    pub rate: f64,
    /// Live streams held by the recipients.
    pub streams: usize,
    pub conversations: usize,
    /// Arrivals of the steady state's messages, one per stream that got one.
    pub subscriber_events: u64,
    pub events_per_sec: f64,
    /// Arrivals of the steady state's messages that never came (within 10 s of the send).
    pub undelivered: u64,
    /// Events a stream delivered a second time (by sequence number).
    pub duplicates: u64,
    /// Messages that arrived after they were given up on (or after their send failed).
    pub late: u64,
    /// Streams reopened from their last event (ABORTED lagging, UNAVAILABLE closing).
    pub stream_restarts: u64,
    /// Streams that ended with another status, by code (errors of the scenario).
    pub stream_errors: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Live {
    pub fn new(kind: &str) -> Arc<Self> {
        Arc::new(Self {
            tag: format!("lg{kind}{}", short_id()),
            pending: Mutex::new(HashMap::new()),
            window: Mutex::new((None, None)),
            histogram: Mutex::new(engine::new_histogram()),
            events: AtomicU64::new(0),
            undelivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            late: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            stream_errors: Mutex::new(BTreeMap::new()),
        })
    }

    /// Whether a message meant to be sent at `t` belongs to the steady state.
    fn counts(&self, t: Instant) -> bool {
        let (open, close) = *lock(&self.window);
        open.is_some_and(|o| t >= o) && close.is_none_or(|c| t < c)
    }

    /// Registers a message before it is sent (it may arrive before SendMessage answers).
    fn expect(
        &self,
        id: &str,
        intended: Instant,
        streams: usize,
    ) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.pending).insert(
            id.to_owned(),
            Pending {
                intended,
                remaining: streams.max(1),
                done: Some(tx),
            },
        );
        rx
    }

    /// Its send failed: nothing is expected.
    fn forget(&self, id: &str) {
        lock(&self.pending).remove(id);
    }

    /// It was sent but did not reach every stream in time.
    fn give_up(&self, id: &str) {
        let gone = lock(&self.pending).remove(id);
        if let Some(p) = gone {
            if self.counts(p.intended) {
                self.undelivered
                    .fetch_add(p.remaining as u64, Ordering::Relaxed);
            }
        }
    }

    /// A stream delivered the message `id` at `at`.
    fn arrived(&self, id: &str, at: Instant) {
        let mut pending = lock(&self.pending);
        let Some(p) = pending.get_mut(id) else {
            if id.starts_with(&self.tag) {
                self.late.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        if self.counts(p.intended) {
            let us = u64::try_from(at.saturating_duration_since(p.intended).as_micros())
                .unwrap_or(u64::MAX)
                .clamp(1, engine::MAX_LATENCY_US);
            let _ = lock(&self.histogram).record(us);
            self.events.fetch_add(1, Ordering::Relaxed);
        }
        p.remaining = p.remaining.saturating_sub(1);
        if p.remaining == 0 {
            if let Some(done) = pending.remove(id).and_then(|p| p.done) {
                let _ = done.send(());
            }
        }
    }

    fn stream_error(&self, code: Code) {
        let name = format!("STREAM_{}", carehub_platform::admin::code_name(code));
        *lock(&self.stream_errors).entry(name).or_default() += 1;
    }

    /// The figures of the steady state that lasted `elapsed`.
    pub fn stats(
        &self,
        rate: f64,
        streams: usize,
        conversations: usize,
        elapsed: Duration,
    ) -> DeliveryStats {
        let h = lock(&self.histogram);
        let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let events = self.events.load(Ordering::Relaxed);
        DeliveryStats {
            rate,
            streams,
            conversations,
            subscriber_events: events,
            events_per_sec: events as f64 / elapsed.as_secs_f64().max(1e-9),
            undelivered: self.undelivered.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            late: self.late.load(Ordering::Relaxed),
            stream_restarts: self.restarts.load(Ordering::Relaxed),
            stream_errors: lock(&self.stream_errors).clone(),
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

impl super::engine::Steady for Live {
    fn steady_window(&self) -> &Mutex<(Option<Instant>, Option<Instant>)> {
        &self.window
    }
}

/// Live streams held for a scenario; dropping it closes them.
pub struct Subscribers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Subscribers {
    pub fn streams(&self) -> usize {
        self.tasks.len()
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn holder_of<'a>(seed: &'a Seed, c: &'a Conversation, holder: Holder) -> anyhow::Result<&'a Party> {
    match holder {
        Holder::Patient => Ok(&c.patient),
        Holder::Provider => seed
            .providers
            .get(c.provider)
            .context("a conversation without its provider"),
    }
}

fn stream_request(
    conversation_id: &str,
    after_seq: i64,
    token: &str,
) -> Result<tonic::Request<StreamEventsRequest>, Status> {
    bearer(
        StreamEventsRequest {
            conversation_id: conversation_id.to_owned(),
            after_seq,
        },
        token,
    )
}

/// Opens one StreamEvents stream per `(conversation, holder)` of `plan` over `channels`, each
/// after the conversation's newest event, `parallel` at a time, and starts reading them into
/// `live`. Returns once every stream is open (the server subscribed it before answering).
pub async fn subscribe(
    channels: &[Channel],
    seed: &Seed,
    plan: &[(usize, Holder)],
    live: &Arc<Live>,
    parallel: usize,
) -> anyhow::Result<Subscribers> {
    let clients = clients(channels);
    // Where each conversation stands now: its streams start after that.
    let mut after: HashMap<usize, i64> = HashMap::new();
    for &(conv, _) in plan {
        if after.contains_key(&conv) {
            continue;
        }
        let c = seed
            .conversations
            .get(conv)
            .context("a stream of a conversation that was not seeded")?;
        let client = pick(&clients, conv)?;
        let found = retrying("GetConversation", || {
            let mut client = client.clone();
            let req = bearer(
                GetConversationRequest {
                    conversation_id: c.id.clone(),
                },
                &c.patient.access_token,
            );
            async move { client.get_conversation(req?).await }
        })
        .await?
        .into_inner();
        after.insert(conv, found.last_seq);
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut opening = tokio::task::JoinSet::new();
    for (j, &(conv, holder)) in plan.iter().enumerate() {
        let c = seed
            .conversations
            .get(conv)
            .context("a stream of a conversation that was not seeded")?;
        let token = holder_of(seed, c, holder)?.access_token.clone();
        let conversation_id = c.id.clone();
        let after_seq = after.get(&conv).copied().unwrap_or(0);
        let client = pick(&clients, j)?;
        let sem = sem.clone();
        let live = live.clone();
        opening.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let stream = retrying("StreamEvents", || {
                let mut client = client.clone();
                let req = stream_request(&conversation_id, after_seq, &token);
                async move { client.stream_events(req?).await }
            })
            .await?
            .into_inner();
            Ok::<_, anyhow::Error>(tokio::spawn(read(
                Reader {
                    client,
                    token,
                    conversation_id,
                    last: after_seq,
                    live,
                },
                stream,
            )))
        });
    }
    let mut subscribers = Subscribers {
        tasks: Vec::with_capacity(plan.len()),
    };
    while let Some(r) = opening.join_next().await {
        // On an error the streams opened so far close as `subscribers` drops.
        subscribers.tasks.push(r.context("opening a stream")??);
    }
    Ok(subscribers)
}

/// One stream's reader.
struct Reader {
    client: MessagingServiceClient<Channel>,
    token: String,
    conversation_id: String,
    /// The sequence number of the last event received.
    last: i64,
    live: Arc<Live>,
}

/// Reads `stream` until the task is aborted, noting arrivals; a stream that ends is reopened
/// after the last event received (nothing missed, nothing repeated).
async fn read(mut r: Reader, mut stream: Streaming<ConversationEvent>) {
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                let at = Instant::now();
                if event.seq <= r.last {
                    r.live.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                r.last = event.seq;
                if let Some(Event::Message(m)) = event.event {
                    r.live.arrived(&m.client_message_id, at);
                }
                continue;
            }
            // Lagging (ABORTED, resume-after-seq) and a replica closing (UNAVAILABLE) are
            // resumable by design; anything else is an error of the scenario.
            Ok(None) => {
                r.live.restarts.fetch_add(1, Ordering::Relaxed);
            }
            Err(s) if matches!(s.code(), Code::Aborted | Code::Unavailable) => {
                r.live.restarts.fetch_add(1, Ordering::Relaxed);
            }
            Err(s) => r.live.stream_error(s.code()),
        }
        let mut delay = Duration::from_millis(50);
        loop {
            let Ok(req) = stream_request(&r.conversation_id, r.last, &r.token) else {
                return;
            };
            match r.client.stream_events(req).await {
                Ok(answer) => {
                    stream = answer.into_inner();
                    break;
                }
                Err(s) => {
                    if !matches!(s.code(), Code::Unavailable | Code::ResourceExhausted) {
                        r.live.stream_error(s.code());
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// `message-delivery` / `stream-fanout`: the patient of `targets[seq mod len].0` sends a
/// message, and the call completes when all `targets[..].1` streams of that conversation
/// have delivered it (or fails with NOT_DELIVERED after [`DELIVERY_TIMEOUT`]). The latencies
/// that count are the readers' (arrival − `intended`), in `live`.
pub fn delivery_op(
    channels: &[Channel],
    seed: Arc<Seed>,
    live: Arc<Live>,
    targets: Targets,
) -> TimedOp {
    let clients = Arc::new(clients(channels));
    let targets = Arc::new(targets);
    Arc::new(move |seq, intended| -> OpFuture {
        let client = clients[(seq as usize) % clients.len().max(1)].clone();
        let (seed, live, targets) = (seed.clone(), live.clone(), targets.clone());
        Box::pin(async move {
            let n = targets.len().max(1) as u64;
            let &(conv, streams) = targets
                .get((seq % n) as usize)
                .ok_or_else(|| Status::internal("no conversations to send in"))?;
            let c = seed
                .conversations
                .get(conv)
                .ok_or_else(|| Status::internal("a conversation that was not seeded"))?;
            let id = format!("{}-{seq}", live.tag);
            let arrived = live.expect(&id, intended, streams);
            if let Err(status) = send(client, c, &id).await {
                live.forget(&id);
                return Err(status);
            }
            match tokio::time::timeout(DELIVERY_TIMEOUT, arrived).await {
                Ok(Ok(())) => Ok(()),
                _ => {
                    live.give_up(&id);
                    Err(Status::deadline_exceeded(NOT_DELIVERED))
                }
            }
        })
    })
}

/// `stream-fanout`'s streams: `streams` over the first `conversations` conversations, held in
/// turn by each one's provider and patient (one person's several devices); and how many
/// streams each conversation has.
pub fn fanout_plan(streams: usize, conversations: usize) -> (Plan, Targets) {
    let f = conversations.max(1);
    let plan: Plan = (0..streams.max(1))
        .map(|j| {
            let holder = if (j / f).is_multiple_of(2) {
                Holder::Provider
            } else {
                Holder::Patient
            };
            (j % f, holder)
        })
        .collect();
    let targets = (0..f.min(plan.len()))
        .map(|c| (c, plan.iter().filter(|(pc, _)| *pc == c).count()))
        .collect();
    (plan, targets)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn fanout_spreads_streams_over_conversations_and_both_participants() {
        let (plan, targets) = fanout_plan(10, 4);
        assert_eq!(plan.len(), 10);
        assert_eq!(targets, vec![(0, 3), (1, 3), (2, 2), (3, 2)]);
        for c in 0..2 {
            let holders: Vec<Holder> = plan
                .iter()
                .filter(|(pc, _)| *pc == c)
                .map(|(_, h)| *h)
                .collect();
            assert!(holders.contains(&Holder::Provider) && holders.contains(&Holder::Patient));
        }
        // Fewer streams than conversations: only the conversations that have one are sent in.
        let (plan, targets) = fanout_plan(2, 4);
        assert_eq!(plan.len(), 2);
        assert_eq!(targets, vec![(0, 1), (1, 1)]);
    }

    #[test]
    fn arrivals_count_inside_the_window_once_per_stream() {
        let live = Live::new("t");
        let before = Instant::now();
        lock(&live.window).0 = Some(Instant::now());
        let id = format!("{}-1", live.tag);
        let mut rx = live.expect(&id, Instant::now(), 2);
        live.arrived(&id, Instant::now());
        assert!(rx.try_recv().is_err(), "one stream of two");
        live.arrived(&id, Instant::now());
        assert!(rx.try_recv().is_ok());
        // A later copy is late, not a second delivery; others' messages are ignored.
        live.arrived(&id, Instant::now());
        live.arrived("someone-else", Instant::now());
        // Sent before the window: delivered, not counted; never delivered: counted.
        let old = format!("{}-2", live.tag);
        let _rx = live.expect(&old, before, 1);
        live.arrived(&old, Instant::now());
        let lost = format!("{}-3", live.tag);
        let _rx = live.expect(&lost, Instant::now(), 3);
        live.arrived(&lost, Instant::now());
        live.give_up(&lost);
        lock(&live.window).1 = Some(Instant::now());
        let s = live.stats(1.0, 2, 1, Duration::from_secs(1));
        assert_eq!(
            (s.subscriber_events, s.undelivered, s.late, s.duplicates),
            (3, 2, 1, 0)
        );
        assert!(s.p99_ms > 0.0);
    }
}
