//! Settling what a call left unsettled, and checking the ledger.
//!
//! A payment or refund intent stays pending when its call died between the processor and our
//! commit (a crash, a timeout, a lost answer). Every replica runs [`pass`] every
//! `billing.reconcile_interval_secs` (and once at start), and `carehub billing reconcile` runs
//! it on demand: each pending intent whose lease ran out is taken over (the lease makes two
//! reconcilers, or a reconciler and a client's retry, take turns) and asked again of the
//! processor with its own idempotency key, so the processor answers from its record and nothing
//! is charged twice. An intent older than `resend_within_hours` (the processor may have
//! forgotten its key) is only looked up; one the processor never saw is marked failed
//! (`abandoned`). The ledger check: for every invoice, captured minus refunded equals paid,
//! and nothing is paid beyond the total.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::api::{payments, refunds};
use crate::config::BillingConfig;
use crate::store::intents::{self, Intents};
use crate::store::{invoices, payments as payment_store, refunds as refund_store};
use crate::AppState;

/// Intents one pass takes on at most (the rest wait for the next pass).
const BATCH: i64 = 200;

/// What one reconciliation pass found and did.
#[derive(Debug, Default)]
pub struct Report {
    /// `payment <id>: <status>` / `refund <id>: <status>` for each intent settled.
    pub settled: Vec<String>,
    /// Intents the processor still did not answer for (left pending for the next pass).
    pub unanswered: Vec<String>,
    /// `invoice <id>: paid <x>, captured minus refunded <y>` for each invoice off the ledger.
    pub ledger_violations: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.ledger_violations.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "intents settled: {}", self.settled.len())?;
        for s in &self.settled {
            writeln!(f, "  {s}")?;
        }
        writeln!(
            f,
            "intents the processor did not answer for: {}",
            self.unanswered.len()
        )?;
        for s in &self.unanswered {
            writeln!(f, "  {s}")?;
        }
        if self.ledger_violations.is_empty() {
            writeln!(
                f,
                "ledger: every invoice's paid amount is captured minus refunded"
            )
        } else {
            writeln!(f, "LEDGER VIOLATIONS: {}", self.ledger_violations.len())?;
            for s in &self.ledger_violations {
                writeln!(f, "  {s}")?;
            }
            Ok(())
        }
    }
}

/// One pass: settle what nobody holds, then check the ledger.
pub async fn pass(state: &AppState) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let lease = state.settings.intent_lease_secs;
    let resend_within = chrono::Duration::hours(i64::from(state.settings.resend_within_hours));
    let ids = {
        let mut conn = state.pool.acquire().await?;
        intents::unsettled(&mut conn, Intents::Payments, BATCH).await?
    };
    for id in ids {
        let row = {
            let mut conn = state.pool.acquire().await?;
            if !intents::claim(&mut conn, Intents::Payments, id, lease).await? {
                continue;
            }
            payment_store::get(&mut conn, id).await?
        };
        let Some(row) = row else { continue };
        let resend = Utc::now() - row.create_time < resend_within;
        match payments::drive(state, &row, resend, None).await {
            Ok(settled) => report
                .settled
                .push(format!("payment {id}: {}", settled.status)),
            Err(e) => report.unanswered.push(format!("payment {id}: {e}")),
        }
    }
    let ids = {
        let mut conn = state.pool.acquire().await?;
        intents::unsettled(&mut conn, Intents::Refunds, BATCH).await?
    };
    for id in ids {
        let row = {
            let mut conn = state.pool.acquire().await?;
            if !intents::claim(&mut conn, Intents::Refunds, id, lease).await? {
                continue;
            }
            refund_store::lock(&mut conn, id).await?
        };
        let Some(row) = row else { continue };
        match refunds::drive(state, &row, None).await {
            Ok(settled) => report
                .settled
                .push(format!("refund {id}: {}", settled.status)),
            Err(e) => report.unanswered.push(format!("refund {id}: {e}")),
        }
    }
    let mut conn = state.pool.acquire().await?;
    for (id, paid, net) in invoices::ledger_violations(&mut conn).await? {
        report.ledger_violations.push(format!(
            "invoice {id}: paid {paid}, captured minus refunded {net}"
        ));
    }
    Ok(report)
}

/// Runs [`pass`] at start and every `reconcile_interval_secs`, until the process ends.
pub fn spawn(state: Arc<AppState>) {
    let every = Duration::from_secs(state.settings.reconcile_interval_secs);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match pass(&state).await {
                Ok(r) => {
                    if !r.settled.is_empty() {
                        tracing::info!(settled = r.settled.len(), "reconciler settled intents");
                    }
                    if !r.is_clean() {
                        tracing::error!(
                            violations = r.ledger_violations.len(),
                            "billing ledger violated"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reconciliation pass failed"),
            }
        }
    });
}

/// One pass, from the CLI (`carehub billing reconcile`): billing's database, keys and
/// processor from its configuration.
pub async fn run_offline(cfg: &BillingConfig) -> anyhow::Result<Report> {
    use anyhow::Context as _;
    let pool = carehub_platform::db::connect(&cfg.server.database)
        .await
        .context("connecting to billing's database")?;
    let keys = carehub_platform::keys::from_config("billing", &cfg.server)
        .await
        .context("billing's keys")?;
    let crypto = carehub_platform::crypto::Envelope::new(
        "billing",
        pool.clone(),
        keys.clone(),
        cfg.billing.crypto.clone(),
    )?;
    let currency = crate::domain::money::Currency::parse(&cfg.billing.default_currency)
        .context("billing.default_currency")?;
    let secrets = crate::processor::secrets::load(&cfg.billing.processor, &cfg.server).await?;
    let (processor, _) = crate::processor::build(&cfg.billing.processor, &secrets)?;
    // The reconciler never asks identity anything; the state's directory is never dialled.
    let tls = carehub_platform::tls::TlsStore::from_config(&cfg.server.tls)
        .context("billing's TLS material")?;
    let identity = cfg
        .server
        .auth
        .identity_endpoint
        .as_deref()
        .context("server.auth.identity_endpoint")?;
    let channel = carehub_platform::client::connect_lazy(identity, &tls, "identity")?;
    let state = AppState {
        idempotency: carehub_platform::idempotency::IdempotencyStore::new(pool.clone(), keys),
        directory: carehub_platform::directory::Directory::new(channel),
        pool,
        currency,
        crypto,
        processor,
        webhook_secrets: secrets.webhook_secrets,
        attach_slots: tokio::sync::Semaphore::new(cfg.billing.attach_slots as usize),
        settings: cfg.billing.clone(),
    };
    pass(&state).await
}
