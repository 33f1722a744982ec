//! The billing scenario, and the invoices it pays, seeded through the services' public RPCs as
//! the gateway workload:
//!
//! - a billing clerk: the admin (`--admin-email`, `LOADGEN_ADMIN_PASSWORD`, signed in once per
//!   run) creates them with CreateUser (role billing); they sign in with the one-time password,
//!   change it and refresh their session, as the scheduling scenarios' staff member does;
//! - the price: the clerk sets [`PRICE_CODE`] to [`PRICE_MINOR`] minor units of [`CURRENCY`]
//!   (SetPrice: a price code of the load generator's own, replaced by every run);
//! - payment methods: each patient of the identity seed registers the sandbox's test token
//!   [`TEST_TOKEN`] (AddPaymentMethod, as the patient: their default method). A patient whose
//!   id billing refuses as card data (INVALID_ARGUMENT "looks like a card number") is left out,
//!   said on stderr and in the scenario's note;
//! - invoices: the clerk creates the pool the scenario pays from (CreateInvoice, one line of
//!   [`PRICE_CODE`], quantity 1), for the patients with a payment method in turn, enough for
//!   the warm-up and the steady state at the expected rate (`--pay-expected-rate`, or
//!   `--invoices`), [`SEED_PARALLEL`] calls at a time.
//!
//! Every seeding call carries an idempotency key kept across its retries; the clerk's email is
//! the run's own (`loadgen-<run>-billing@example.org`). Nothing is deleted afterwards (billing
//! keeps invoices and payments; identity keeps accounts).
//!
//! `pay-invoice`: every call takes the next unpaid invoice of the pool and its patient pays it
//! (PayInvoice with the default method and the amount due, a fresh `idempotency-key`); success
//! is an answer with status SUCCEEDED. One call in [`REPLAY_EVERY`] is sent again right after
//! its answer, same request and same key, off the measured call (its latency is not in the
//! percentiles): the answer must name the same payment (a replay), anything else is a mismatch.
//! When the pool runs out, the remaining calls fail as `INVOICES_EXHAUSTED` after a short pause
//! (said once on stderr) instead of waiting for invoices that will not come. Afterwards, as the clerk, every invoice the scenario tried to
//! pay is read back (ListInvoices per patient, GetInvoice for any not listed): an invoice paid
//! more than its total is a duplicate charge, an invoice whose payment succeeded but that is
//! not paid exactly its total is a lost payment.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use carehub_proto::billing::v1::billing_service_client::BillingServiceClient;
use carehub_proto::billing::v1::{
    AddPaymentMethodRequest, CreateInvoiceLine, CreateInvoiceRequest, GetInvoiceRequest, Invoice,
    InvoiceStatus, ListInvoicesRequest, PayInvoiceRequest, Payment, PaymentStatus, SetPriceRequest,
};
use carehub_proto::common::v1::{Money, PageRequest};
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::{CreateUserRequest, Role};
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::engine::{OpFuture, TimedOp};
use super::identity::{bearer, retrying, SeededUser, PASSWORD};
use super::messaging::{keyed, new_key, pick, short_id, sign_in, Party};

/// The load generator's price code, its price and currency.
pub const PRICE_CODE: &str = "loadgen-visit";
pub const PRICE_MINOR: i64 = 5000;
pub const CURRENCY: &str = "USD";
/// The sandbox processor's test token of a Visa card that always succeeds.
pub const TEST_TOKEN: &str = "tok_visa";
/// One call in this many is replayed (same request, same key).
pub const REPLAY_EVERY: u64 = 10;
/// The expected payment rate the pool is sized for by default (payments per second).
pub const DEFAULT_EXPECTED_RATE: f64 = 1500.0;
/// CreateInvoice (and AddPaymentMethod) calls in flight while seeding.
pub const SEED_PARALLEL: usize = 32;
/// Largest ListInvoices page.
const LIST_PAGE: i32 = 500;
/// GetInvoice calls in flight during the final check.
const CHECK_PARALLEL: usize = 16;
/// How long an exhausted call waits before failing, so that a closed loop does not spin.
const EXHAUSTED_BACKOFF: Duration = Duration::from_millis(20);
/// The status message of a call that found the pool empty, and of an answer that was not
/// SUCCEEDED: the engine counts them under [`CLIENT_VERDICT`]'s name; the scenario moves them
/// to their own names afterwards ([`Payments::reclassify`]).
const CLIENT_VERDICT: Code = Code::Unknown;
pub const INVOICES_EXHAUSTED: &str = "INVOICES_EXHAUSTED";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn clients(channels: &[Channel]) -> Vec<BillingServiceClient<Channel>> {
    channels
        .iter()
        .map(|c| BillingServiceClient::new(c.clone()))
        .collect()
}

/// The invoice pool for `secs` seconds (warm-up and steady state) at `rate` payments per
/// second, with a fifth more and one per request in flight for the drain.
pub fn pool_size(rate: f64, secs: f64, in_flight: usize) -> usize {
    let rate = if rate.is_finite() { rate.max(1.0) } else { 1.0 };
    let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
    (rate * secs * 1.2).ceil() as usize + in_flight.max(1)
}

/// One invoice of the pool.
#[derive(Clone, Debug)]
pub struct SeededInvoice {
    pub id: String,
    /// Index into [`Seed::patients`].
    pub patient: usize,
    pub total_minor: i64,
}

/// Seeded data of the billing scenario.
pub struct Seed {
    /// The billing clerk (signed in again for the final check).
    pub clerk_email: String,
    /// The identity seed's patients, in its order; those with a payment method pay invoices.
    pub patients: Vec<Party>,
    /// Patients left out because billing refused their id as card data.
    pub refused_patients: usize,
    pub invoices: Vec<SeededInvoice>,
}

/// Connections to the services the seed goes through.
pub struct Channels<'a> {
    pub identity: &'a [Channel],
    pub billing: &'a [Channel],
}

/// CreateUser of the billing clerk `email`, as the admin: their one-time password.
async fn create_clerk(
    client: &IdentityServiceClient<Channel>,
    admin: &Party,
    email: &str,
) -> anyhow::Result<String> {
    let key = new_key();
    let created = retrying("CreateUser", || {
        let mut client = client.clone();
        let msg = CreateUserRequest {
            email: email.to_owned(),
            role: Role::Billing as i32,
            given_name: "Load".to_owned(),
            family_name: "Billing".to_owned(),
            phone: String::new(),
            time_zone: "America/New_York".to_owned(),
            date_of_birth: None,
        };
        let req = keyed(msg, &admin.access_token, &key);
        async move { client.create_user(req?).await }
    })
    .await?
    .into_inner();
    // A replayed answer never carries the one-time password (it is a credential).
    anyhow::ensure!(
        !created.one_time_password.is_empty(),
        "CreateUser of {email} answered without its one-time password"
    );
    Ok(created.one_time_password)
}

/// Creates the billing clerk, sets the price, gives every patient a payment method and creates
/// `invoices` invoices, `parallel` calls at a time (`progress`: a line on stderr now and then).
pub async fn seed(
    ch: Channels<'_>,
    patients: &[SeededUser],
    admin: &Party,
    invoices: usize,
    parallel: usize,
    progress: bool,
) -> anyhow::Result<Seed> {
    anyhow::ensure!(!patients.is_empty(), "no seeded patients");
    let run = short_id();
    let identity = IdentityServiceClient::new(pick(ch.identity, 0)?);
    let billing = BillingServiceClient::new(pick(ch.billing, 0)?);

    let clerk_email = format!("loadgen-{run}-billing@example.org");
    let one_time = create_clerk(&identity, admin, &clerk_email).await?;
    let clerk = sign_in(&identity, &clerk_email, &one_time, Some(PASSWORD))
        .await
        .with_context(|| format!("signing in the billing clerk {clerk_email}"))?;

    let key = new_key();
    retrying("SetPrice", || {
        let mut client = billing.clone();
        let msg = SetPriceRequest {
            price_code: PRICE_CODE.to_owned(),
            price: Some(Money {
                currency_code: CURRENCY.to_owned(),
                amount_minor: PRICE_MINOR,
            }),
            description: "Load generator visit".to_owned(),
            late_cancellation_fee_minor: 0,
            no_show_fee_minor: 0,
        };
        let req = keyed(msg, &clerk.access_token, &key);
        async move { client.set_price(req?).await }
    })
    .await?;

    let patients: Vec<Party> = patients
        .iter()
        .map(|p| Party {
            user_id: p.user_id.clone(),
            access_token: p.access_token.clone(),
        })
        .collect();
    let parallel = parallel.max(1);

    // Payment methods: each patient registers the test card, as themselves. A patient whose id
    // billing's card-data check takes for a card number is left out (said on stderr): their
    // invoices could not be created either.
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, patient) in patients.iter().enumerate() {
        let client = BillingServiceClient::new(pick(ch.billing, i)?);
        let (sem, patient) = (sem.clone(), patient.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let key = new_key();
            let answer = retrying("AddPaymentMethod", || {
                let mut client = client.clone();
                let msg = AddPaymentMethodRequest {
                    patient_id: patient.user_id.clone(),
                    processor_token: TEST_TOKEN.to_owned(),
                    make_default: true,
                };
                let req = keyed(msg, &patient.access_token, &key);
                async move {
                    match client.add_payment_method(req?).await {
                        Err(s) if looks_like_card_data(&s) => Ok(Err(s)),
                        other => other.map(Ok),
                    }
                }
            })
            .await?;
            let method = match answer {
                Ok(m) => m.into_inner(),
                Err(s) => {
                    eprintln!(
                        "seeding: patient {} left out: AddPaymentMethod refused their id: {}",
                        patient.user_id,
                        s.message()
                    );
                    return Ok(None);
                }
            };
            anyhow::ensure!(
                !method.id.is_empty(),
                "AddPaymentMethod answered without an id"
            );
            Ok::<_, anyhow::Error>(Some(i))
        });
    }
    let mut payers = Vec::with_capacity(patients.len());
    while let Some(r) = tasks.join_next().await {
        payers.extend(r.context("seeding task")??);
    }
    payers.sort_unstable();
    anyhow::ensure!(
        !payers.is_empty(),
        "no patient could register a payment method"
    );
    let refused_patients = patients.len() - payers.len();

    // Invoices: `parallel` workers take the next index until the pool is full; the first
    // failure stops them all.
    let invoices = invoices.max(1);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let clerk = Arc::new(clerk);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..parallel.min(invoices) {
        let client = BillingServiceClient::new(pick(ch.billing, w)?);
        let (next, done, failed, clerk) =
            (next.clone(), done.clone(), failed.clone(), clerk.clone());
        let owners: Vec<(usize, String)> = payers
            .iter()
            .map(|p| (*p, patients[*p].user_id.clone()))
            .collect();
        tasks.spawn(async move {
            let mut made = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= invoices || failed.load(Ordering::Relaxed) {
                    return Ok::<_, anyhow::Error>(made);
                }
                let (patient, patient_id) = &owners[k % owners.len()];
                let key = new_key();
                let answer = retrying("CreateInvoice", || {
                    let mut client = client.clone();
                    let msg = CreateInvoiceRequest {
                        patient_id: patient_id.clone(),
                        currency_code: CURRENCY.to_owned(),
                        lines: vec![CreateInvoiceLine {
                            price_code: PRICE_CODE.to_owned(),
                            quantity: 1,
                        }],
                    };
                    let req = keyed(msg, &clerk.access_token, &key);
                    async move { client.create_invoice(req?).await }
                })
                .await
                .and_then(|a| payable(a.into_inner()));
                let invoice = match answer {
                    Ok(i) => i,
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                };
                made.push((
                    k,
                    SeededInvoice {
                        id: invoice.id,
                        patient: *patient,
                        total_minor: invoice.total_minor,
                    },
                ));
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if progress && n.is_multiple_of(5000) && n < invoices {
                    eprintln!(
                        "seeding: {n}/{invoices} invoices ({:.0}/s)",
                        n as f64 / started.elapsed().as_secs_f64().max(1e-9)
                    );
                }
            }
        });
    }
    let mut made = Vec::with_capacity(invoices);
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        match r.context("seeding task") {
            Ok(Ok(m)) => made.extend(m),
            Ok(Err(e)) | Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e.context(format!(
            "creating invoices ({} of {invoices} made)",
            made.len()
        )));
    }
    made.sort_by_key(|(k, _)| *k);
    Ok(Seed {
        clerk_email,
        patients,
        refused_patients,
        invoices: made.into_iter().map(|(_, i)| i).collect(),
    })
}

/// Whether billing refused a request as carrying card data (INVALID_ARGUMENT naming a card
/// number or security code).
fn looks_like_card_data(status: &Status) -> bool {
    status.code() == Code::InvalidArgument && status.message().contains("looks like a card")
}

/// `invoice` if CreateInvoice made it payable (open, with a positive total).
fn payable(invoice: Invoice) -> anyhow::Result<Invoice> {
    anyhow::ensure!(
        !invoice.id.is_empty(),
        "CreateInvoice answered without an id"
    );
    anyhow::ensure!(
        invoice.status == InvoiceStatus::Open as i32,
        "CreateInvoice answered an invoice in status {} (not open: not payable)",
        status_name(invoice.status)
    );
    anyhow::ensure!(
        invoice.total_minor > 0,
        "CreateInvoice answered an invoice of total {}",
        invoice.total_minor
    );
    Ok(invoice)
}

fn status_name(status: i32) -> &'static str {
    InvoiceStatus::try_from(status).map_or("?", |s| s.as_str_name())
}

fn payment_status_name(status: i32) -> String {
    PaymentStatus::try_from(status).map_or_else(
        |_| format!("PAYMENT_STATUS_{status}"),
        |s| s.as_str_name().to_owned(),
    )
}

/// What became of an invoice of the pool.
const UNTOUCHED: u8 = 0;
/// PayInvoice was sent; no SUCCEEDED answer (yet).
const TRIED: u8 = 1;
const SUCCEEDED: u8 = 2;

/// The scenario's bookkeeping, shared by its calls.
pub struct Payments {
    seed: Arc<Seed>,
    clients: Vec<BillingServiceClient<Channel>>,
    /// The next invoice of the pool.
    next: AtomicUsize,
    /// Per invoice: [`UNTOUCHED`], [`TRIED`] or [`SUCCEEDED`].
    outcome: Vec<AtomicU8>,
    /// The steady state: (opened, closed).
    window: Mutex<(Option<Instant>, Option<Instant>)>,
    started: Instant,
    /// Calls started inside the steady state that were answered SUCCEEDED.
    succeeded: AtomicU64,
    /// Client verdicts of calls started inside the steady state, by name (counted by the
    /// engine under [`CLIENT_VERDICT`]'s code): INVOICES_EXHAUSTED, PAYMENT_STATUS_FAILED, ...
    verdicts: Mutex<BTreeMap<String, u64>>,
    /// When the pool first ran out (seconds since the scenario started).
    exhausted_after: Mutex<Option<f64>>,
    /// PayInvoice calls that failed (whole scenario, warm-up included), and the first failure:
    /// a pool spent in the warm-up on failures still says why.
    pay_errors: Mutex<BTreeMap<String, u64>>,
    first_error: Mutex<Option<String>>,
    /// Replays (whole scenario): sent, answered with the same payment, with another one, failed
    /// (by code), still running.
    replays: AtomicU64,
    replays_same: AtomicU64,
    replay_mismatches: AtomicU64,
    replay_errors: Mutex<BTreeMap<String, u64>>,
    replays_running: AtomicUsize,
}

impl Payments {
    pub fn new(channels: &[Channel], seed: Arc<Seed>) -> Arc<Payments> {
        let n = seed.invoices.len();
        Arc::new(Payments {
            seed,
            clients: clients(channels),
            next: AtomicUsize::new(0),
            outcome: (0..n).map(|_| AtomicU8::new(UNTOUCHED)).collect(),
            window: Mutex::new((None, None)),
            started: Instant::now(),
            succeeded: AtomicU64::new(0),
            verdicts: Mutex::new(BTreeMap::new()),
            exhausted_after: Mutex::new(None),
            pay_errors: Mutex::new(BTreeMap::new()),
            first_error: Mutex::new(None),
            replays: AtomicU64::new(0),
            replays_same: AtomicU64::new(0),
            replay_mismatches: AtomicU64::new(0),
            replay_errors: Mutex::new(BTreeMap::new()),
            replays_running: AtomicUsize::new(0),
        })
    }

    /// Whether a call started at `t` belongs to the steady state.
    fn counts(&self, t: Instant) -> bool {
        let (open, close) = *lock(&self.window);
        open.is_some_and(|o| t >= o) && close.is_none_or(|c| t < c)
    }

    /// A client verdict `name` on a call started at `started`: the error the engine counts.
    fn verdict(&self, started: Instant, name: String, message: String) -> Status {
        if self.counts(started) {
            *lock(&self.verdicts).entry(name).or_default() += 1;
        }
        Status::new(CLIENT_VERDICT, message)
    }

    /// `pay-invoice`: the next invoice of the pool, paid by its patient with a fresh key; one
    /// call in [`REPLAY_EVERY`] is replayed once answered (not measured).
    pub fn op(self: &Arc<Self>) -> TimedOp {
        let this = self.clone();
        Arc::new(move |seq, started| -> OpFuture {
            let this = this.clone();
            Box::pin(async move {
                let k = this.next.fetch_add(1, Ordering::Relaxed);
                let Some(invoice) = this.seed.invoices.get(k) else {
                    let n = this.seed.invoices.len();
                    {
                        let mut first = lock(&this.exhausted_after);
                        if first.is_none() {
                            let after = this.started.elapsed().as_secs_f64();
                            *first = Some(after);
                            eprintln!(
                                "  pay-invoice: the {n} seeded invoices ran out {after:.1} s into \
                                 the scenario; further calls fail as {INVOICES_EXHAUSTED} (seed \
                                 more with --invoices or --pay-expected-rate)"
                            );
                        }
                    }
                    // Fail, but not at once: a closed loop would spin.
                    tokio::time::sleep(EXHAUSTED_BACKOFF).await;
                    return Err(this.verdict(
                        started,
                        INVOICES_EXHAUSTED.to_owned(),
                        format!("the {n} seeded invoices are all used"),
                    ));
                };
                let patient = this
                    .seed
                    .patients
                    .get(invoice.patient)
                    .ok_or_else(|| Status::internal("no seeded patients"))?;
                let msg = PayInvoiceRequest {
                    invoice_id: invoice.id.clone(),
                    payment_method_id: String::new(),
                    amount_minor: 0,
                };
                let key = new_key();
                let client = this
                    .clients
                    .get((seq as usize) % this.clients.len().max(1))
                    .cloned()
                    .ok_or_else(|| Status::internal("no connection to billing"))?;
                if let Some(o) = this.outcome.get(k) {
                    o.store(TRIED, Ordering::Relaxed);
                }
                let payment = match client
                    .clone()
                    .pay_invoice(keyed(msg.clone(), &patient.access_token, &key)?)
                    .await
                {
                    Ok(p) => p.into_inner(),
                    Err(s) => {
                        let code = carehub_platform::admin::code_name(s.code());
                        *lock(&this.pay_errors).entry(code.to_owned()).or_default() += 1;
                        lock(&this.first_error)
                            .get_or_insert_with(|| format!("{code} {}", s.message()));
                        return Err(s);
                    }
                };
                if (k as u64).is_multiple_of(REPLAY_EVERY) {
                    this.replay(client, msg, patient.access_token.clone(), key, &payment);
                }
                if payment.status != PaymentStatus::Succeeded as i32 {
                    let status = payment_status_name(payment.status);
                    let message = format!("PayInvoice answered {status} {}", payment.failure_code);
                    return Err(this.verdict(started, status, message));
                }
                if let Some(o) = this.outcome.get(k) {
                    o.store(SUCCEEDED, Ordering::Relaxed);
                }
                if this.counts(started) {
                    this.succeeded.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
    }

    /// Sends `msg` again with the same `key` (off the measured call) and compares the answer
    /// with `first`.
    fn replay(
        self: &Arc<Self>,
        mut client: BillingServiceClient<Channel>,
        msg: PayInvoiceRequest,
        token: String,
        key: String,
        first: &Payment,
    ) {
        let this = self.clone();
        let first_id = first.id.clone();
        this.replays.fetch_add(1, Ordering::Relaxed);
        this.replays_running.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let answer = match keyed(msg, &token, &key) {
                Ok(req) => client.pay_invoice(req).await,
                Err(s) => Err(s),
            };
            match answer {
                Ok(p) if p.get_ref().id == first_id && !first_id.is_empty() => {
                    this.replays_same.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {
                    this.replay_mismatches.fetch_add(1, Ordering::Relaxed);
                }
                Err(s) => {
                    let code = carehub_platform::admin::code_name(s.code()).to_owned();
                    *lock(&this.replay_errors).entry(code).or_default() += 1;
                }
            }
            this.replays_running.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Waits (at most `limit`) for the replays still running.
    pub async fn drain(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.replays_running.load(Ordering::Acquire) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Moves the client verdicts the engine counted under [`CLIENT_VERDICT`]'s code to their
    /// own names in `errors` (the engine's count bounds them: its window is a hair narrower).
    pub fn reclassify(&self, errors: &mut BTreeMap<String, u64>) {
        let code = carehub_platform::admin::code_name(CLIENT_VERDICT).to_owned();
        for (name, n) in lock(&self.verdicts).iter() {
            let counted = errors.get(&code).copied().unwrap_or(0);
            let moved = (*n).min(counted);
            if moved == 0 {
                continue;
            }
            if counted == moved {
                errors.remove(&code);
            } else {
                errors.insert(code.clone(), counted - moved);
            }
            *errors.entry(name.clone()).or_default() += moved;
        }
    }

    /// Reads back, as the billing clerk, every invoice the scenario tried to pay.
    pub async fn verify(&self, identity: &[Channel], billing: &[Channel]) -> Verdict {
        let tried: Vec<usize> = (0..self.outcome.len())
            .filter(|k| self.outcome[*k].load(Ordering::Relaxed) != UNTOUCHED)
            .collect();
        match self.read_back(&tried, identity, billing).await {
            Ok((found, method, note)) => {
                let mut v = Verdict {
                    method,
                    invoices_checked: Some(0),
                    duplicate_charges: Some(0),
                    lost_payments: Some(0),
                    unrequested_charges: Some(0),
                    note,
                };
                let mut checked = 0;
                let mut duplicates = 0;
                let mut lost = 0;
                let mut missing = 0;
                for k in &tried {
                    let seeded = &self.seed.invoices[*k];
                    let Some(read) = found.get(&seeded.id) else {
                        missing += 1;
                        continue;
                    };
                    checked += 1;
                    // The total as created and as read back: an invoice cannot grow.
                    let total = seeded.total_minor.min(read.total_minor);
                    if read.amount_paid_minor > total {
                        duplicates += 1;
                    }
                    if self.outcome[*k].load(Ordering::Relaxed) == SUCCEEDED
                        && (read.status != InvoiceStatus::Paid as i32
                            || read.amount_paid_minor != total)
                    {
                        lost += 1;
                    }
                }
                // Invoices the listings returned that no call tried to pay: nothing paid.
                let tried_ids: std::collections::HashSet<&str> = tried
                    .iter()
                    .map(|k| self.seed.invoices[*k].id.as_str())
                    .collect();
                let unrequested = self
                    .seed
                    .invoices
                    .iter()
                    .filter(|i| !tried_ids.contains(i.id.as_str()))
                    .filter_map(|i| found.get(&i.id))
                    .filter(|r| r.amount_paid_minor != 0)
                    .count() as u64;
                v.invoices_checked = Some(checked);
                v.duplicate_charges = Some(duplicates);
                v.lost_payments = Some(lost);
                v.unrequested_charges = Some(unrequested);
                if missing > 0 {
                    let note = format!("{missing} invoices tried could not be read back");
                    v.note = Some(match v.note {
                        Some(n) => format!("{n}; {note}"),
                        None => note,
                    });
                }
                v
            }
            Err(e) => Verdict {
                method: "none".to_owned(),
                invoices_checked: None,
                duplicate_charges: None,
                lost_payments: None,
                unrequested_charges: None,
                note: Some(format!("{e:#}")),
            },
        }
    }

    /// The invoices read back, by id; how ("ListInvoices", "ListInvoices+GetInvoice",
    /// "GetInvoice"); and a note on what could not be listed.
    async fn read_back(
        &self,
        tried: &[usize],
        identity: &[Channel],
        billing: &[Channel],
    ) -> anyhow::Result<(HashMap<String, Invoice>, String, Option<String>)> {
        let identity = IdentityServiceClient::new(pick(identity, 0)?);
        let clerk = sign_in(&identity, &self.seed.clerk_email, PASSWORD, None)
            .await
            .with_context(|| format!("signing in the billing clerk {}", self.seed.clerk_email))?;
        let client = BillingServiceClient::new(pick(billing, 0)?);
        let mut patients: Vec<usize> = tried
            .iter()
            .map(|k| self.seed.invoices[*k].patient)
            .collect();
        patients.sort_unstable();
        patients.dedup();
        let mut found: HashMap<String, Invoice> = HashMap::new();
        let mut note = None;
        let mut listed = false;
        for p in patients {
            let Some(patient) = self.seed.patients.get(p) else {
                continue;
            };
            match list_invoices(&client, &clerk, &patient.user_id).await {
                Ok(invoices) => {
                    listed = true;
                    found.extend(invoices.into_iter().map(|i| (i.id.clone(), i)));
                }
                Err(e) => {
                    note = Some(format!("ListInvoices failed ({e:#}): read with GetInvoice"));
                    break;
                }
            }
        }
        let rest: Vec<String> = tried
            .iter()
            .map(|k| self.seed.invoices[*k].id.clone())
            .filter(|id| !found.contains_key(id))
            .collect();
        let got = !rest.is_empty();
        if got {
            found.extend(get_invoices(billing, &clerk, rest).await?);
        }
        let method = match (listed, got) {
            (true, false) => "ListInvoices",
            (true, true) => "ListInvoices+GetInvoice",
            _ => "GetInvoice",
        };
        Ok((found, method.to_owned(), note))
    }

    /// The figures of the steady state that lasted `elapsed`, with `verdict`.
    pub fn stats(&self, elapsed: Duration, verdict: Verdict) -> PaymentStats {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let succeeded = self.succeeded.load(Ordering::Relaxed);
        let used = self
            .next
            .load(Ordering::Relaxed)
            .min(self.seed.invoices.len());
        PaymentStats {
            payments: succeeded,
            payments_per_sec: succeeded as f64 / secs,
            invoices_seeded: self.seed.invoices.len() as u64,
            invoices_used: used as u64,
            exhausted_after_secs: *lock(&self.exhausted_after),
            pay_errors: lock(&self.pay_errors).clone(),
            first_error: lock(&self.first_error).clone(),
            replays: self.replays.load(Ordering::Relaxed),
            replays_same: self.replays_same.load(Ordering::Relaxed),
            replay_mismatches: self.replay_mismatches.load(Ordering::Relaxed),
            replay_errors: lock(&self.replay_errors).clone(),
            verified_by: verdict.method,
            invoices_checked: verdict.invoices_checked,
            duplicate_charges: verdict.duplicate_charges,
            lost_payments: verdict.lost_payments,
            unrequested_charges: verdict.unrequested_charges,
            verify_note: verdict.note,
        }
    }
}

/// Every invoice of `patient_id`, as the clerk (all pages).
async fn list_invoices(
    client: &BillingServiceClient<Channel>,
    clerk: &Party,
    patient_id: &str,
) -> anyhow::Result<Vec<Invoice>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = retrying("ListInvoices", || {
            let mut client = client.clone();
            let req = bearer(
                ListInvoicesRequest {
                    patient_id: patient_id.to_owned(),
                    status: InvoiceStatus::Unspecified as i32,
                    page: Some(PageRequest {
                        page_size: LIST_PAGE,
                        page_token: token.clone(),
                    }),
                },
                &clerk.access_token,
            );
            async move { client.list_invoices(req?).await }
        })
        .await?
        .into_inner();
        out.extend(page.invoices);
        token = page.page.map(|p| p.next_page_token).unwrap_or_default();
        if token.is_empty() {
            return Ok(out);
        }
    }
}

/// GetInvoice of each of `ids`, as the clerk, [`CHECK_PARALLEL`] at a time.
async fn get_invoices(
    channels: &[Channel],
    clerk: &Party,
    ids: Vec<String>,
) -> anyhow::Result<Vec<(String, Invoice)>> {
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicUsize::new(0));
    let clerk = Arc::new(clerk.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..CHECK_PARALLEL.min(ids.len()) {
        let client = BillingServiceClient::new(pick(channels, w)?);
        let (ids, next, clerk) = (ids.clone(), next.clone(), clerk.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let Some(id) = ids.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return Ok::<_, anyhow::Error>(out);
                };
                let answer = retrying("GetInvoice", || {
                    let mut client = client.clone();
                    let req = bearer(
                        GetInvoiceRequest {
                            invoice_id: id.clone(),
                        },
                        &clerk.access_token,
                    );
                    async move {
                        match client.get_invoice(req?).await {
                            // An id billing takes for card data: not read back (counted).
                            Err(s) if looks_like_card_data(&s) => Ok(None),
                            other => other.map(Some),
                        }
                    }
                })
                .await?;
                if let Some(invoice) = answer {
                    out.push((id.clone(), invoice.into_inner()));
                }
            }
        });
    }
    let mut out = Vec::with_capacity(ids.len());
    while let Some(r) = tasks.join_next().await {
        out.extend(r.context("checking task")??);
    }
    Ok(out)
}

/// What the final check found.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// "ListInvoices", "ListInvoices+GetInvoice", "GetInvoice" or "none".
    pub method: String,
    /// None (all four): could not be checked.
    pub invoices_checked: Option<u64>,
    pub duplicate_charges: Option<u64>,
    pub lost_payments: Option<u64>,
    pub unrequested_charges: Option<u64>,
    pub note: Option<String>,
}

/// The pay-invoice scenario's figures.
#[derive(Clone, Debug, Serialize)]
pub struct PaymentStats {
    /// Calls started in the steady state that were answered SUCCEEDED.
    pub payments: u64,
    pub payments_per_sec: f64,
    pub invoices_seeded: u64,
    /// Invoices of the pool the scenario took (warm-up and drain included).
    pub invoices_used: u64,
    /// When the pool ran out, seconds after the scenario's start (None: it did not).
    pub exhausted_after_secs: Option<f64>,
    /// PayInvoice calls that failed, by code, warm-up and drain included (the errors column
    /// counts the steady state's), and the first failure.
    pub pay_errors: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    /// Calls sent again with their key (whole scenario), answered with the same payment, with
    /// another answer, or failed (by code).
    pub replays: u64,
    pub replays_same: u64,
    pub replay_mismatches: u64,
    pub replay_errors: BTreeMap<String, u64>,
    /// How the invoices were read back: "ListInvoices", "GetInvoice", ... or "none".
    pub verified_by: String,
    pub invoices_checked: Option<u64>,
    /// Invoices paid more than their total (must be 0).
    pub duplicate_charges: Option<u64>,
    /// Invoices whose payment was answered SUCCEEDED but that are not paid exactly their total.
    pub lost_payments: Option<u64>,
    /// Invoices of the pool no call tried to pay that show a payment.
    pub unrequested_charges: Option<u64>,
    pub verify_note: Option<String>,
}

impl PaymentStats {
    /// What fails the scenario: duplicate, lost or unrequested charges, no check, replays that
    /// did not name the same payment.
    pub fn problems(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        match self.duplicate_charges {
            Some(0) => {}
            Some(n) => out.push(("DUPLICATE_CHARGE".to_owned(), n)),
            None => out.push(("NOT_VERIFIED".to_owned(), 1)),
        }
        for (name, n) in [
            ("LOST_PAYMENT", self.lost_payments),
            ("UNREQUESTED_CHARGE", self.unrequested_charges),
        ] {
            if let Some(n) = n.filter(|n| *n > 0) {
                out.push((name.to_owned(), n));
            }
        }
        if self.replay_mismatches > 0 {
            out.push(("REPLAY_MISMATCH".to_owned(), self.replay_mismatches));
        }
        let replay_errors: u64 = self.replay_errors.values().sum();
        if replay_errors > 0 {
            out.push(("REPLAY_FAILED".to_owned(), replay_errors));
        }
        out
    }

    /// "duplicate charges: N (...)", the replays, and how it was found.
    pub fn line(&self) -> String {
        let found = match (self.duplicate_charges, self.invoices_checked) {
            (Some(n), Some(checked)) => format!(
                "duplicate charges: {n} ({checked} invoices read back by {} as the billing clerk; \
                 {} lost payments, {} unrequested charges)",
                self.verified_by,
                self.lost_payments.unwrap_or(0),
                self.unrequested_charges.unwrap_or(0)
            ),
            _ => "duplicate charges: NOT CHECKED".to_owned(),
        };
        let errors = if self.replay_errors.is_empty() {
            String::new()
        } else {
            format!(
                ", failed: {}",
                self.replay_errors
                    .iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        let replays = format!(
            "replays: {} sent, {} named the same payment, {} mismatches{errors}",
            self.replays, self.replays_same, self.replay_mismatches
        );
        let mut exhausted = self.exhausted_after_secs.map_or(String::new(), |s| {
            format!(
                "; the {} invoices ran out after {s:.1} s",
                self.invoices_seeded
            )
        });
        if let Some(e) = &self.first_error {
            exhausted.push_str(&format!(
                "; PayInvoice failures in all (warm-up included): {}, the first: {e}",
                self.pay_errors
                    .iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        match &self.verify_note {
            Some(note) => format!("{found}; {replays}{exhausted}; {note}"),
            None => format!("{found}; {replays}{exhausted}"),
        }
    }
}

impl super::engine::Steady for Payments {
    fn steady_window(&self) -> &Mutex<(Option<Instant>, Option<Instant>)> {
        &self.window
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_pool_covers_warm_up_and_steady_state_with_room_to_spare() {
        // 1 500/s for 3 + 10 s: 19 500 payments, a fifth more, one per request in flight.
        assert_eq!(pool_size(1500.0, 13.0, 64), 23_400 + 64);
        assert_eq!(pool_size(f64::NAN, 1.0, 0), 2 + 1);
        assert!(pool_size(0.0, 0.0, 4) >= 4);
    }

    fn seed(n: usize) -> Arc<Seed> {
        Arc::new(Seed {
            clerk_email: String::new(),
            patients: Vec::new(),
            refused_patients: 0,
            invoices: (0..n)
                .map(|k| SeededInvoice {
                    id: format!("inv-{k}"),
                    patient: 0,
                    total_minor: PRICE_MINOR,
                })
                .collect(),
        })
    }

    #[test]
    fn client_verdicts_move_to_their_own_names_within_the_engines_count() {
        let p = Payments::new(&[], seed(0));
        *lock(&p.verdicts) = [
            (INVOICES_EXHAUSTED.to_owned(), 5),
            ("PAYMENT_STATUS_FAILED".to_owned(), 2),
        ]
        .into();
        let mut errors: BTreeMap<String, u64> =
            [("UNKNOWN".to_owned(), 6), ("UNAVAILABLE".to_owned(), 1)].into();
        p.reclassify(&mut errors);
        assert_eq!(errors.get(INVOICES_EXHAUSTED), Some(&5));
        assert_eq!(errors.get("PAYMENT_STATUS_FAILED"), Some(&1));
        assert_eq!(errors.get("UNKNOWN"), None);
        assert_eq!(errors.get("UNAVAILABLE"), Some(&1));
        assert_eq!(errors.values().sum::<u64>(), 7);
    }

    #[tokio::test]
    async fn an_empty_pool_fails_promptly_as_exhausted() {
        let p = Payments::new(&[], seed(0));
        let started = Instant::now();
        lock(&p.window).0 = Some(started);
        let op = p.op();
        let err = tokio::time::timeout(Duration::from_secs(5), op(0, started))
            .await
            .expect("an exhausted call returns")
            .unwrap_err();
        assert_eq!(err.code(), CLIENT_VERDICT);
        assert_eq!(lock(&p.verdicts).get(INVOICES_EXHAUSTED), Some(&1));
        assert!(lock(&p.exhausted_after).is_some());
    }

    #[test]
    fn problems_name_every_kind_of_wrong_charge() {
        let mut s = PaymentStats {
            payments: 10,
            payments_per_sec: 1.0,
            invoices_seeded: 20,
            invoices_used: 11,
            exhausted_after_secs: None,
            pay_errors: BTreeMap::new(),
            first_error: None,
            replays: 2,
            replays_same: 2,
            replay_mismatches: 0,
            replay_errors: BTreeMap::new(),
            verified_by: "ListInvoices".to_owned(),
            invoices_checked: Some(11),
            duplicate_charges: Some(0),
            lost_payments: Some(0),
            unrequested_charges: Some(0),
            verify_note: None,
        };
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        assert!(s.line().starts_with("duplicate charges: 0"), "{}", s.line());
        s.duplicate_charges = Some(1);
        s.replay_mismatches = 1;
        s.replay_errors.insert("ABORTED".to_owned(), 2);
        let names: Vec<String> = s.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            ["DUPLICATE_CHARGE", "REPLAY_MISMATCH", "REPLAY_FAILED"]
        );
        s.duplicate_charges = None;
        assert_eq!(s.problems()[0].0, "NOT_VERIFIED");
    }
}
