//! The billing issue's must-show: a crash between the processor's success and our commit (the
//! process killed, restarted, reconciled) yields exactly one captured payment.
//!
//! Real processes, real Postgres, real mTLS: identity runs in-process (the test kit, on its own
//! dev CA); billing runs as a child process of the binary (`carehub serve billing -c <toml>`)
//! with a certificate of that CA, its own migrated database, the development key file and the
//! Stripe API double as its processor. A PayInvoice is held by the double after it captured the
//! money, billing is SIGKILLed, restarted with the same configuration, and once the intent's
//! lease ran out `carehub billing reconcile` re-sends the charge with the same idempotency key:
//! the double answers from its record, the invoice is paid once, one intent exists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use carehub_identity::config::NotifierKind;
use carehub_identity::IdentityDef;
use carehub_platform::auth::Role;
use carehub_platform::client::ServiceChannel;
use carehub_proto::billing::v1::billing_service_client::BillingServiceClient;
use carehub_proto::billing::v1::{
    AddPaymentMethodRequest, CreateInvoiceLine, CreateInvoiceRequest, GetInvoiceRequest,
    InvoiceStatus, PayInvoiceRequest, SetPriceRequest,
};
use carehub_proto::common::v1::Money;
use carehub_testkit::grpc::{free_port, http_get_raw, with_key, with_token};
use carehub_testkit::service::TestService;
use carehub_testkit::stripe::StripeDouble;
use carehub_testkit::{TestDb, TestPki, PASSWORD};
use secrecy::ExposeSecret as _;
use sqlx::PgPool;
use uuid::Uuid;

/// How long billing may take to become ready, a call to end, a CLI run to finish.
const BOUND: Duration = Duration::from_secs(60);

fn key() -> String {
    format!("crash-{}", Uuid::now_v7().simple())
}

/// `msg` with `user`'s bearer token and a fresh idempotency key.
fn mutating<T>(token: &str, msg: T) -> tonic::Request<T> {
    with_key(with_token(tonic::Request::new(msg), token), &key())
}

/// A TOML basic string.
fn quoted(s: impl AsRef<str>) -> String {
    format!(
        "\"{}\"",
        s.as_ref().replace('\\', "\\\\").replace('"', "\\\"")
    )
}

fn path_str(p: &Path) -> String {
    quoted(p.to_str().expect("a UTF-8 temporary path"))
}

/// Billing's configuration: one file for `serve` (both runs) and `billing reconcile`.
struct BillingSetup {
    config: PathBuf,
    dir: PathBuf,
    grpc: u16,
    admin: u16,
}

impl BillingSetup {
    fn write(
        dir: &Path,
        pki: &TestPki,
        db: &TestDb,
        identity_endpoint: &str,
        stripe_url: &str,
    ) -> BillingSetup {
        let tls = pki.write_server(dir, "billing", "billing");
        let keys = carehub_testkit::keys::dev_key_file_for(dir, "billing");
        let (grpc, admin) = (free_port(), free_port());
        let toml = format!(
            r#"[server]
listen = "127.0.0.1:{grpc}"
admin_listen = "127.0.0.1:{admin}"

[server.tls]
cert_file = {cert}
key_file = {key}
ca_file = {ca}
trust_domain = {trust}

[server.database]
url = {url}
max_connections = 8
min_connections = 0
migrate_on_start = false

[server.keys]
file = {keys}

[server.auth]
identity_endpoint = {identity}

[server.telemetry]
log_filter = "info"

[billing]
intent_lease_secs = 10
reconcile_interval_secs = 3600

[billing.processor]
kind = "stripe"
api_base = {stripe}
secret_key = "sk_test_carehub_double"
timeout_ms = 2000
"#,
            cert = path_str(&tls.cert_file),
            key = path_str(&tls.key_file),
            ca = path_str(&tls.ca_file),
            trust = quoted(&tls.trust_domain),
            url = quoted(db.url().expose_secret()),
            keys = path_str(&keys),
            identity = quoted(identity_endpoint),
            stripe = quoted(stripe_url),
        );
        let config = dir.join("billing.toml");
        std::fs::write(&config, toml).expect("writing billing's configuration");
        BillingSetup {
            config,
            dir: dir.to_owned(),
            grpc,
            admin,
        }
    }

    fn grpc_addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.grpc).into()
    }

    fn carehub(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_carehub"));
        cmd.env_remove("CAREHUB_CONFIG").kill_on_drop(true);
        cmd
    }

    /// `carehub serve billing -c <config>`, its output in `<dir>/billing-<run>.log`; returns
    /// once `/readyz` answers 200.
    async fn serve(&self, run: &str) -> Billing {
        let log = self.dir.join(format!("billing-{run}.log"));
        let out = std::fs::File::create(&log).expect("billing's log file");
        let err = out.try_clone().expect("billing's log file");
        let child = self
            .carehub()
            .args(["serve", "billing", "-c"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starting carehub serve billing");
        let mut billing = Billing { child, log };
        let admin = format!("127.0.0.1:{}", self.admin);
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            if let Some(status) = billing.child.try_wait().unwrap() {
                panic!(
                    "billing ({run}) exited with {status} before it was ready:\n{}",
                    billing.log_text()
                );
            }
            if http_get_raw(&admin, "/readyz").await.map(|r| r.0) == Some(200) {
                return billing;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "billing ({run}): /readyz on {admin} did not answer 200 within {BOUND:?}:\n{}",
                    billing.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `carehub billing reconcile -c <config>`: (exit code, stdout, stderr).
    async fn reconcile(&self) -> (Option<i32>, String, String) {
        let run = self
            .carehub()
            .args(["billing", "reconcile", "-c"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .output();
        let out = tokio::time::timeout(BOUND, run)
            .await
            .unwrap_or_else(|_| panic!("carehub billing reconcile did not end within {BOUND:?}"))
            .expect("running carehub billing reconcile");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A running `carehub serve billing` (killed when dropped).
struct Billing {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Billing {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and wait until it is gone.
    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL to billing");
        let status = tokio::time::timeout(BOUND, self.child.wait())
            .await
            .expect("billing did not die within the bound after SIGKILL")
            .expect("waiting for billing");
        assert!(!status.success(), "billing was killed: {status}");
    }
}

/// A user of `role` created in identity and signed in: (id, access token).
async fn user(identity: &TestService<IdentityDef>, role: Role, name: &str) -> (String, String) {
    let state = &identity.handle().state;
    let email = format!("{name}-{}@example.org", Uuid::now_v7().simple());
    let (account, _) = carehub_identity::store::accounts::create_user_direct(
        &state.pool,
        &state.crypto,
        &state.hasher,
        &email,
        role,
        "Test",
        "User",
        Some(PASSWORD),
    )
    .await
    .expect("create_user_direct");
    let tokens =
        carehub_testkit::users::login(identity.channel("gateway").await, &email, PASSWORD).await;
    (account.id.to_string(), tokens.access_token)
}

/// Every payments row: (id, status, captured, locked until still in the future).
async fn payments(pool: &PgPool) -> Vec<(Uuid, String, i64, bool)> {
    sqlx::query_as(
        "SELECT id, status, captured_minor, coalesce(locked_until > now(), false)
         FROM payments ORDER BY create_time",
    )
    .fetch_all(pool)
    .await
    .expect("reading billing's payments")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_the_processors_success_yields_one_captured_payment() {
    let double = StripeDouble::start().await;
    let identity = TestService::start(&carehub_identity::SERVICE, |c| {
        c.server.database.max_connections = 4;
        c.identity.notifier = NotifierKind::MemorySandbox;
    })
    .await;
    let db = TestDb::new(&carehub_billing::MIGRATOR).await;
    let dir = tempfile::tempdir().unwrap();
    let setup = BillingSetup::write(
        dir.path(),
        identity.pki(),
        &db,
        &format!("https://{}", identity.grpc_addr),
        &double.url(),
    );
    let billing = setup.serve("first").await;
    let api = |channel: ServiceChannel| BillingServiceClient::new(channel);
    let mut client = api(identity
        .pki()
        .channel(setup.grpc_addr(), "gateway", "billing")
        .await);

    // A price, a card, an open invoice of 5000.
    let (_, office) = user(&identity, Role::Billing, "office").await;
    let (patient_id, patient) = user(&identity, Role::Patient, "patient").await;
    client
        .set_price(mutating(
            &office,
            SetPriceRequest {
                price_code: "video-30".into(),
                price: Some(Money {
                    currency_code: "USD".into(),
                    amount_minor: 5000,
                }),
                description: "Video visit, 30 min".into(),
                late_cancellation_fee_minor: 0,
                no_show_fee_minor: 0,
            },
        ))
        .await
        .expect("SetPrice");
    client
        .add_payment_method(mutating(
            &patient,
            AddPaymentMethodRequest {
                patient_id: patient_id.clone(),
                processor_token: "pm_card_visa".into(),
                make_default: true,
            },
        ))
        .await
        .expect("AddPaymentMethod");
    let invoice = client
        .create_invoice(mutating(
            &office,
            CreateInvoiceRequest {
                patient_id: patient_id.clone(),
                currency_code: String::new(),
                lines: vec![CreateInvoiceLine {
                    price_code: "video-30".into(),
                    quantity: 1,
                }],
            },
        ))
        .await
        .expect("CreateInvoice")
        .into_inner();
    assert_eq!(invoice.total_minor, 5000, "{invoice:?}");
    assert_eq!(double.intent_count(), 0);

    // The processor captures and does not answer; billing dies meanwhile.
    double.hold_charges(true);
    let paying = {
        let mut client = client.clone();
        let req = mutating(
            &patient,
            PayInvoiceRequest {
                invoice_id: invoice.id.clone(),
                payment_method_id: String::new(),
                amount_minor: 0,
            },
        );
        tokio::spawn(async move { client.pay_invoice(req).await })
    };
    double.wait_for_held_charges(1).await;
    billing.kill().await;
    double.hold_charges(false);
    let answer = tokio::time::timeout(BOUND, paying)
        .await
        .expect("PayInvoice did not end after billing was killed")
        .expect("the PayInvoice task");
    let status = match answer {
        Ok(payment) => panic!("PayInvoice answered although billing was killed: {payment:?}"),
        Err(status) => status,
    };
    println!("PayInvoice while billing was killed: {status:?}");
    let rows = payments(db.pool()).await;
    assert_eq!(rows.len(), 1, "one payment intent stored: {rows:?}");
    let (payment_id, ref state, captured, leased) = rows[0];
    assert_eq!(
        (state.as_str(), captured),
        ("pending", 0),
        "the crash left the intent pending: {rows:?}"
    );
    assert!(
        leased,
        "the intent is still leased to the killed call (it died mid-call, it did not time \
         out and give the lease back): {rows:?}"
    );
    assert_eq!(double.intent_count(), 1, "the processor captured once");
    assert_eq!(double.captured_for(&payment_id.to_string()), 1);

    // Restarted with the same configuration: its start-up pass finds the intent still leased.
    let billing = setup.serve("restarted").await;
    let rows = payments(db.pool()).await;
    assert_eq!(
        rows[0].1,
        "pending",
        "the restarted replica's start-up pass settled the intent before its lease ran out \
         (restart slower than billing.intent_lease_secs?): {rows:?}\n{}",
        billing.log_text()
    );
    // Past the lease (the one fixed wait: the lease is the point of it).
    tokio::time::sleep(Duration::from_secs(11)).await;

    let (code, out, err) = setup.reconcile().await;
    println!("carehub billing reconcile:\n{out}{err}");
    assert_eq!(code, Some(0), "reconcile's exit status:\n{out}{err}");
    assert!(
        out.contains(&format!("payment {payment_id}: succeeded")),
        "reconcile settled the payment:\n{out}{err}"
    );

    // Paid once, through the restarted billing.
    let mut client = api(identity
        .pki()
        .channel(setup.grpc_addr(), "gateway", "billing")
        .await);
    let paid = client
        .get_invoice(with_token(
            tonic::Request::new(GetInvoiceRequest {
                invoice_id: invoice.id.clone(),
            }),
            &patient,
        ))
        .await
        .expect("GetInvoice")
        .into_inner();
    assert_eq!(
        (paid.status, paid.amount_paid_minor),
        (InvoiceStatus::Paid as i32, 5000),
        "{paid:?}"
    );
    assert_eq!(double.captured_for(&payment_id.to_string()), 1);
    assert_eq!(double.intent_count(), 1, "one PaymentIntent, ever");
    let rows = payments(db.pool()).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].0, rows[0].1.as_str(), rows[0].2),
        (payment_id, "succeeded", 5000),
        "{rows:?}"
    );

    // Again: nothing left to settle.
    let (code, out, err) = setup.reconcile().await;
    assert_eq!(code, Some(0), "second reconcile's exit status:\n{out}{err}");
    assert!(
        out.contains("intents settled: 0") && !out.contains(&payment_id.to_string()),
        "the second pass settles nothing:\n{out}{err}"
    );
    assert_eq!(double.intent_count(), 1);

    billing.kill().await;
    drop(client);
    db.drop().await;
    identity.shutdown().await;
}
