//! A server's health as a lifecycle — starting → serving → draining — published through a
//! [`tokio::sync::watch`], so that everything that reports health (the gRPC health service on
//! both ports, `/readyz`) follows one value instead of each polling its own flags.
//!
//! The phase only moves forward: a draining server never serves again. Beside the phase, the
//! service's readiness check (keys past their maximum staleness, ...) is published as `ready`:
//! the check is a plain function, so [`follow_readiness`] asks it once a second and publishes
//! its answer only when it changes. A leaf module: the admin port and the server both read it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Where a server is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Bound, not yet answering as ready.
    Starting,
    /// Serving calls.
    Serving,
    /// Shutdown has begun: in-flight calls finish, no new traffic should be routed here.
    Draining,
}

/// What the watch carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub phase: Phase,
    /// The service's readiness check passed when it was last asked (true without a check).
    pub ready: bool,
}

impl Health {
    /// Whether health reports SERVING: serving and ready.
    pub fn is_serving(&self) -> bool {
        self.phase == Phase::Serving && self.ready
    }

    /// The grpc.health.v1 status of the server (`""`) and of each of its services.
    pub fn serving_status(&self) -> ServingStatus {
        if self.is_serving() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }
}

/// The writer of a server's [`Health`]; clones share it.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    tx: Arc<watch::Sender<Health>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// Starting, and ready until a readiness check says otherwise.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Health {
            phase: Phase::Starting,
            ready: true,
        });
        Self { tx: Arc::new(tx) }
    }

    pub fn subscribe(&self) -> watch::Receiver<Health> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Health {
        *self.tx.borrow()
    }

    /// Starting → serving; ignored in any other phase (a draining server stays draining).
    pub fn serving(&self) {
        self.tx.send_if_modified(|h| {
            let starting = h.phase == Phase::Starting;
            if starting {
                h.phase = Phase::Serving;
            }
            starting
        });
    }

    /// → draining, from any phase; final.
    pub fn draining(&self) {
        self.tx.send_if_modified(|h| {
            let changed = h.phase != Phase::Draining;
            h.phase = Phase::Draining;
            changed
        });
    }

    /// Publishes the readiness check's answer; receivers wake only when it changed.
    pub fn set_ready(&self, ready: bool) {
        self.tx.send_if_modified(|h| {
            let changed = h.ready != ready;
            h.ready = ready;
            changed
        });
    }
}

/// Sets the grpc.health.v1 statuses of `""` and of `services` to what `health` says.
pub async fn publish(reporter: &HealthReporter, services: &[&'static str], health: Health) {
    let status = health.serving_status();
    for name in services {
        reporter.set_service_status(*name, status).await;
    }
    reporter.set_service_status("", status).await;
}

/// Keeps the grpc.health.v1 statuses of `""` and of `services` equal to the watched health,
/// until it has published draining (so awaiting this task means NOT_SERVING is visible).
pub async fn follow_health(
    mut rx: watch::Receiver<Health>,
    reporter: HealthReporter,
    services: Vec<&'static str>,
) {
    loop {
        let health = *rx.borrow_and_update();
        publish(&reporter, &services, health).await;
        if health.phase == Phase::Draining {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Asks `check` every `every` and publishes its answer, until the server drains.
pub async fn follow_readiness(
    lifecycle: Lifecycle,
    check: Arc<dyn Fn() -> bool + Send + Sync>,
    every: Duration,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if lifecycle.current().phase == Phase::Draining {
            return;
        }
        lifecycle.set_ready(check());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::atomic::{AtomicBool, Ordering};

    use tonic_health::pb::health_server::Health as _;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::server::HealthService;

    use super::*;

    #[test]
    fn the_phase_only_moves_forward() {
        let lifecycle = Lifecycle::new();
        let rx = lifecycle.subscribe();
        assert_eq!(lifecycle.current().phase, Phase::Starting);
        assert_eq!(
            lifecycle.current().serving_status(),
            ServingStatus::NotServing
        );

        lifecycle.serving();
        assert!(rx.has_changed().unwrap());
        assert_eq!(lifecycle.current().phase, Phase::Serving);
        assert_eq!(lifecycle.current().serving_status(), ServingStatus::Serving);

        // Unready while serving: NOT_SERVING, still in the serving phase.
        lifecycle.set_ready(false);
        assert_eq!(lifecycle.current().phase, Phase::Serving);
        assert_eq!(
            lifecycle.current().serving_status(),
            ServingStatus::NotServing
        );
        lifecycle.set_ready(true);
        assert!(lifecycle.current().is_serving());

        lifecycle.draining();
        assert_eq!(lifecycle.current().phase, Phase::Draining);
        assert_eq!(
            lifecycle.current().serving_status(),
            ServingStatus::NotServing
        );

        // Nothing brings a draining server back.
        lifecycle.serving();
        lifecycle.set_ready(true);
        assert_eq!(lifecycle.current().phase, Phase::Draining);
        assert!(!lifecycle.current().is_serving());
    }

    #[test]
    fn unchanged_answers_wake_no_one() {
        let lifecycle = Lifecycle::new();
        let mut rx = lifecycle.subscribe();
        rx.borrow_and_update();
        lifecycle.set_ready(true);
        assert!(!rx.has_changed().unwrap());
        lifecycle.set_ready(false);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        lifecycle.draining();
        rx.borrow_and_update();
        lifecycle.draining();
        lifecycle.serving();
        assert!(!rx.has_changed().unwrap());
    }

    async fn status(service: &HealthService, name: &str) -> Result<i32, tonic::Status> {
        service
            .check(tonic::Request::new(HealthCheckRequest {
                service: name.to_owned(),
            }))
            .await
            .map(|r| r.into_inner().status)
    }

    #[tokio::test]
    async fn grpc_health_follows_the_lifecycle_and_the_readiness_check() {
        let reporter = HealthReporter::new();
        let service = HealthService::from_health_reporter(reporter.clone());
        let lifecycle = Lifecycle::new();
        let ready = Arc::new(AtomicBool::new(true));
        let flag = ready.clone();
        let readiness = tokio::spawn(follow_readiness(
            lifecycle.clone(),
            Arc::new(move || flag.load(Ordering::SeqCst)),
            Duration::from_millis(20),
        ));
        let follower = tokio::spawn(follow_health(lifecycle.subscribe(), reporter, vec!["a.B"]));
        let settle = || tokio::time::sleep(Duration::from_millis(300));

        settle().await;
        assert_eq!(
            status(&service, "").await.unwrap(),
            ServingStatus::NotServing as i32
        );
        assert_eq!(
            status(&service, "a.B").await.unwrap(),
            ServingStatus::NotServing as i32
        );

        lifecycle.serving();
        settle().await;
        assert_eq!(
            status(&service, "").await.unwrap(),
            ServingStatus::Serving as i32
        );
        assert_eq!(
            status(&service, "a.B").await.unwrap(),
            ServingStatus::Serving as i32
        );

        ready.store(false, Ordering::SeqCst);
        settle().await;
        assert_eq!(
            status(&service, "").await.unwrap(),
            ServingStatus::NotServing as i32
        );
        ready.store(true, Ordering::SeqCst);
        settle().await;
        assert_eq!(
            status(&service, "a.B").await.unwrap(),
            ServingStatus::Serving as i32
        );

        // Draining ends both tasks, with NOT_SERVING published.
        lifecycle.draining();
        follower.await.unwrap();
        assert_eq!(
            status(&service, "").await.unwrap(),
            ServingStatus::NotServing as i32
        );
        assert_eq!(
            status(&service, "a.B").await.unwrap(),
            ServingStatus::NotServing as i32
        );
        settle().await;
        assert!(readiness.is_finished());
    }
}
