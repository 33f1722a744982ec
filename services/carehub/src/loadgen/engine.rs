//! The load engine: closed loop (N requests in flight) or open loop (a fixed rate, latency
//! measured from each request's intended send time, so a stalled server shows up in the
//! latencies instead of silently slowing the client down: no coordinated omission).
//!
//! Latencies of successful calls go into HDR histograms (microseconds, 3 significant figures);
//! failed calls are counted by gRPC code.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One call of a scenario.
pub type OpFuture = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;
/// A scenario's operation: `seq` numbers the calls (users, keys and chains are picked by it).
pub type Op = Arc<dyn Fn(u64) -> OpFuture + Send + Sync>;
/// An operation that also learns when its call was meant to start (open loop: the intended
/// send time; closed loop: when it started), for latencies it measures itself (a message's
/// arrival on a stream).
pub type TimedOp = Arc<dyn Fn(u64, Instant) -> OpFuture + Send + Sync>;

/// The highest latency a histogram holds (longer ones are clamped to it).
pub const MAX_LATENCY_US: u64 = 120_000_000;

#[derive(Clone, Debug)]
pub struct LoadShape {
    /// Closed loop: requests kept in flight. Open loop: unused (see `max_outstanding`).
    pub in_flight: usize,
    /// Open loop at this many requests per second when set.
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    /// Open loop: requests outstanding at most; beyond it a request is counted as an error
    /// (`CLIENT_OVERLOADED`) instead of queueing without bound in the client.
    pub max_outstanding: usize,
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

/// What one steady state measured.
#[derive(Clone, Debug)]
pub struct Measured {
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
    pub histogram: Histogram<u64>,
}

impl Measured {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Successful calls per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at `q` (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.histogram.max() as f64 / 1000.0
    }
}

#[allow(clippy::expect_used)] // constant bounds: not input-dependent
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .expect("1 µs .. 120 s at 3 significant figures")
}

struct Totals {
    total: Histogram<u64>,
    interval: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    interval_errors: u64,
    interval_ok: u64,
}

/// Collects results; a call counts toward the steady state when it *started* (closed loop) or
/// was *meant to start* (open loop) inside the measurement window.
struct Recorder {
    base: Instant,
    window_start_ns: AtomicU64,
    window_end_ns: AtomicU64,
    totals: Mutex<Totals>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            window_start_ns: AtomicU64::new(u64::MAX),
            window_end_ns: AtomicU64::new(u64::MAX),
            totals: Mutex::new(Totals {
                total: new_histogram(),
                interval: new_histogram(),
                errors: BTreeMap::new(),
                interval_errors: 0,
                interval_ok: 0,
            }),
        }
    }

    fn since_base(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Totals> {
        self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, started: Instant, result: Result<(), tonic::Status>) {
        let latency_us = u64::try_from(started.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_US);
        let at = self.since_base(started);
        let counted = at >= self.window_start_ns.load(Ordering::Relaxed)
            && at < self.window_end_ns.load(Ordering::Relaxed);
        let mut t = self.lock();
        match result {
            Ok(()) => {
                t.interval_ok += 1;
                let _ = t.interval.record(latency_us);
                if counted {
                    let _ = t.total.record(latency_us);
                }
            }
            Err(status) => {
                t.interval_errors += 1;
                if counted {
                    let code = match status.message() {
                        m @ (CLIENT_OVERLOADED | NOT_DELIVERED) => m.to_owned(),
                        _ => carehub_platform::admin::code_name(status.code()).to_owned(),
                    };
                    *t.errors.entry(code).or_default() += 1;
                }
            }
        }
    }

    fn open_window(&self) {
        let now = self.since_base(Instant::now());
        let mut t = self.lock();
        t.total.reset();
        t.errors.clear();
        self.window_start_ns.store(now, Ordering::Relaxed);
    }

    fn close_window(&self) {
        let now = self.since_base(Instant::now());
        self.window_end_ns.store(now, Ordering::Relaxed);
    }

    /// (ok, errors, p99 ms) since the last call.
    fn take_interval(&self) -> (u64, u64, f64) {
        let mut t = self.lock();
        let p99 = t.interval.value_at_quantile(0.99) as f64 / 1000.0;
        let out = (t.interval_ok, t.interval_errors, p99);
        t.interval.reset();
        t.interval_ok = 0;
        t.interval_errors = 0;
        out
    }
}

/// The message of the status an open loop records when too many requests are outstanding.
pub const CLIENT_OVERLOADED: &str = "CLIENT_OVERLOADED";
/// The message of the status a messaging call fails with when its message was sent but never
/// arrived on the streams waiting for it (counted under this name, not a gRPC code).
pub const NOT_DELIVERED: &str = "NOT_DELIVERED";

/// Hooks called right before the window opens and right after it closes (scrape `/metrics`,
/// read CPU counters).
pub trait Window {
    fn opening(&mut self) -> impl Future<Output = ()> + Send;
    /// Right when the window closes, before the calls still running are waited for.
    fn closing(&mut self) {}
    fn closed(&mut self) -> impl Future<Output = ()> + Send;
}

/// A scenario that counts its own outcomes (payments, bookings, deliveries) only inside the
/// steady state: when it opened and when it closed.
pub trait Steady: Send + Sync {
    fn steady_window(&self) -> &Mutex<(Option<Instant>, Option<Instant>)>;
}

/// The engine's window hooks of `inner`, also marking the steady state for `scenario`.
pub struct Marked<'a, W, S> {
    pub inner: &'a mut W,
    pub scenario: Arc<S>,
}

impl<W: Window + Send, S: Steady> Window for Marked<'_, W, S> {
    async fn opening(&mut self) {
        self.inner.opening().await;
        let mut marks = self
            .scenario
            .steady_window()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        marks.0 = Some(Instant::now());
    }
    fn closing(&mut self) {
        self.scenario
            .steady_window()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1 = Some(Instant::now());
        self.inner.closing();
    }
    async fn closed(&mut self) {
        self.inner.closed().await;
    }
}

/// Runs `op` with `shape`: warm-up, then the measured steady state.
pub async fn run<W: Window + Send>(
    label: &str,
    op: Op,
    shape: &LoadShape,
    window: &mut W,
) -> Measured {
    run_timed(label, Arc::new(move |seq, _| op(seq)), shape, window).await
}

/// [`run`] for an operation that is told each call's intended start.
pub async fn run_timed<W: Window + Send>(
    label: &str,
    op: TimedOp,
    shape: &LoadShape,
    window: &mut W,
) -> Measured {
    let rec = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicUsize::new(0)); // 0 warm-up, 1 measuring, 2 done
    let progress = shape.progress.then(|| {
        let rec = rec.clone();
        let phase = phase.clone();
        let label = label.to_owned();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut secs = 0u64;
            loop {
                tick.tick().await;
                secs += 1;
                let (ok, errors, p99) = rec.take_interval();
                let what = match phase.load(Ordering::Relaxed) {
                    0 => "warm-up",
                    1 => "measure",
                    _ => "drain",
                };
                eprintln!(
                    "  {label:<18} {what:<8} {secs:>4}s  {ok:>8}/s  p99 {p99:>8.2} ms  errors {errors}"
                );
            }
        })
    });

    let driver = match shape.rate {
        None => spawn_closed(op, shape.in_flight.max(1), rec.clone(), stop.clone()),
        Some(rate) => spawn_open(op, rate, shape.max_outstanding, rec.clone(), stop.clone()),
    };

    tokio::time::sleep(shape.warmup).await;
    window.opening().await;
    rec.open_window();
    phase.store(1, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(shape.duration).await;
    rec.close_window();
    window.closing();
    let elapsed = started.elapsed();
    phase.store(2, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    // Calls that started inside the window are still counted when they finish: wait for them
    // (a stalled server is bounded by a generous timeout, and then shows as latency anyway).
    let _ = tokio::time::timeout(Duration::from_secs(30), driver.wait()).await;
    window.closed().await;
    if let Some(p) = progress {
        p.abort();
    }
    let t = rec.lock();
    Measured {
        ok: t.total.len(),
        errors: t.errors.clone(),
        elapsed,
        histogram: t.total.clone(),
    }
}

enum Driver {
    Closed(Vec<tokio::task::JoinHandle<()>>),
    Open {
        scheduler: tokio::task::JoinHandle<()>,
        outstanding: Arc<AtomicUsize>,
    },
}

impl Driver {
    async fn wait(self) {
        match self {
            Driver::Closed(tasks) => {
                for t in tasks {
                    let _ = t.await;
                }
            }
            Driver::Open {
                scheduler,
                outstanding,
            } => {
                let _ = scheduler.await;
                while outstanding.load(Ordering::Acquire) > 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
}

fn spawn_closed(
    op: TimedOp,
    in_flight: usize,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> Driver {
    let n = in_flight as u64;
    Driver::Closed(
        (0..n)
            .map(|w| {
                let op = op.clone();
                let rec = rec.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut seq = w;
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let result = op(seq, started).await;
                        rec.record(started, result);
                        seq += n;
                    }
                })
            })
            .collect(),
    )
}

fn spawn_open(
    op: TimedOp,
    rate: f64,
    max_outstanding: usize,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> Driver {
    let outstanding = Arc::new(AtomicUsize::new(0));
    let out = outstanding.clone();
    let interval_ns = (1e9 / rate.max(0.001)) as u64;
    let scheduler = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let intended = start + Duration::from_nanos(interval_ns.saturating_mul(seq));
            if intended > tokio::time::Instant::now() {
                tokio::time::sleep_until(intended).await;
            }
            let intended = intended.into_std();
            if out.load(Ordering::Acquire) >= max_outstanding {
                rec.record(
                    intended,
                    Err(tonic::Status::resource_exhausted(CLIENT_OVERLOADED)),
                );
            } else {
                out.fetch_add(1, Ordering::AcqRel);
                let op = op.clone();
                let rec = rec.clone();
                let out = out.clone();
                tokio::spawn(async move {
                    let result = op(seq, intended).await;
                    rec.record(intended, result);
                    out.fetch_sub(1, Ordering::AcqRel);
                });
            }
            seq += 1;
        }
    });
    Driver::Open {
        scheduler,
        outstanding,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    struct NoWindow;
    impl Window for NoWindow {
        async fn opening(&mut self) {}
        async fn closed(&mut self) {}
    }

    fn shape(rate: Option<f64>) -> LoadShape {
        LoadShape {
            in_flight: 4,
            rate,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(300),
            max_outstanding: 1000,
            progress: false,
        }
    }

    #[tokio::test]
    async fn closed_loop_counts_calls_and_errors_by_code() {
        let op: Op = Arc::new(|seq| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if seq % 10 == 0 {
                    Err(tonic::Status::unavailable("down"))
                } else {
                    Ok(())
                }
            })
        });
        let m = run("t", op, &shape(None), &mut NoWindow).await;
        assert!(m.ok > 50, "{m:?}");
        assert!(
            m.errors.get("UNAVAILABLE").copied().unwrap_or(0) > 0,
            "{m:?}"
        );
        assert!(m.quantile_ms(0.5) >= 2.0, "{}", m.quantile_ms(0.5));
    }

    #[tokio::test]
    async fn open_loop_measures_from_the_intended_time() {
        // A server that stalls every call for 100 ms while the rate asks for one every 10 ms:
        // latencies must include the stall, and the rate must hold (no coordinated omission).
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let op: Op = Arc::new(move |_| {
            let gate = gate.clone();
            Box::pin(async move {
                let _g = gate.lock().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(())
            })
        });
        let m = run("t", op, &shape(Some(100.0)), &mut NoWindow).await;
        assert!(m.ok >= 20, "{m:?}");
        // Serialized 20 ms calls offered every 10 ms: the queue grows, so late calls wait
        // far longer than 20 ms from their intended send time.
        assert!(m.max_ms() > 100.0, "max {}", m.max_ms());
    }
}
