//! Test harness: identity and billing on one dev CA, as a deployment runs them; the processor
//! is the sandbox (or, with [`spawn_with`], whatever a test configures).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use carehub_billing::config::BillingConfig;
use carehub_billing::processor::sandbox::SandboxProcessor;
use carehub_billing::BillingDef;
use carehub_identity::config::NotifierKind;
use carehub_identity::IdentityDef;
use carehub_platform::auth::Role;
use carehub_platform::client::ServiceChannel;
use carehub_proto::billing::v1::billing_service_client::BillingServiceClient;
use carehub_proto::billing::v1::*;
use carehub_proto::common::v1::Money;
use carehub_testkit::service::TestService;
use sqlx::PgPool;
use std::sync::Arc;

#[allow(unused_imports)]
pub use carehub_testkit::grpc::{assert_status, reason, with_key, with_token};
pub use carehub_testkit::PASSWORD;

pub struct Suite {
    pub identity: TestService<IdentityDef>,
    pub billing: TestService<BillingDef>,
}

/// A signed-in user.
#[derive(Clone, Debug)]
pub struct User {
    pub role: Role,
    pub id: String,
    pub token: String,
}

pub fn key() -> String {
    format!("key-{}", uuid::Uuid::now_v7().simple())
}

/// `msg` as `user`, with a fresh idempotency key.
pub fn as_user<T>(user: &User, msg: T) -> tonic::Request<T> {
    with_key(with_token(tonic::Request::new(msg), &user.token), &key())
}

/// `msg` as `user` with idempotency key `k`.
pub fn keyed<T>(user: &User, k: &str, msg: T) -> tonic::Request<T> {
    with_key(with_token(tonic::Request::new(msg), &user.token), k)
}

pub async fn spawn() -> Suite {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(adjust: impl FnOnce(&mut BillingConfig)) -> Suite {
    let identity = TestService::start(&carehub_identity::SERVICE, |c| {
        c.server.database.max_connections = 4;
        c.identity.notifier = NotifierKind::MemorySandbox;
    })
    .await;
    let identity_endpoint = format!("https://{}", identity.grpc_addr);
    let billing = TestService::start_with_pki(
        &carehub_billing::SERVICE,
        identity.pki().clone(),
        |c: &mut BillingConfig| {
            c.server.auth.identity_endpoint = Some(identity_endpoint);
            c.server.database.max_connections = 12;
            adjust(c);
        },
    )
    .await;
    Suite { identity, billing }
}

impl Suite {
    /// Creates a user of `role` in identity and signs them in through Login.
    pub async fn user(&self, role: Role, name: &str) -> User {
        let state = &self.identity.handle().state;
        let email = format!("{name}-{}@example.org", uuid::Uuid::now_v7().simple());
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
            carehub_testkit::users::login(self.identity.channel("gateway").await, &email, PASSWORD)
                .await;
        User {
            role,
            id: account.id.to_string(),
            token: tokens.access_token,
        }
    }

    /// Billing's public API as the gateway.
    pub async fn api(&self) -> BillingServiceClient<ServiceChannel> {
        BillingServiceClient::new(self.billing.channel("gateway").await)
    }

    /// Billing's database (the test's own pool).
    pub fn pool(&self) -> &PgPool {
        self.billing.pool()
    }

    pub fn sandbox(&self) -> Arc<SandboxProcessor> {
        self.billing
            .handle()
            .sandbox
            .clone()
            .expect("the sandbox processor")
    }

    /// A price set by `office`.
    pub async fn price(
        &self,
        office: &User,
        code: &str,
        amount: i64,
        late_fee: i64,
        no_show_fee: i64,
    ) -> Price {
        self.api()
            .await
            .set_price(as_user(
                office,
                SetPriceRequest {
                    price_code: code.into(),
                    price: Some(Money {
                        currency_code: "USD".into(),
                        amount_minor: amount,
                    }),
                    description: "Video visit, 30 min".into(),
                    late_cancellation_fee_minor: late_fee,
                    no_show_fee_minor: no_show_fee,
                },
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// A card added for `patient` (by themselves) from a sandbox test token.
    pub async fn card(&self, patient: &User, token: &str) -> PaymentMethod {
        self.api()
            .await
            .add_payment_method(as_user(
                patient,
                AddPaymentMethodRequest {
                    patient_id: patient.id.clone(),
                    processor_token: token.into(),
                    make_default: true,
                },
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// An open invoice for `patient` of `quantity` × the price `code`, made by `office`.
    pub async fn invoice(
        &self,
        office: &User,
        patient: &User,
        code: &str,
        quantity: i32,
    ) -> Invoice {
        self.api()
            .await
            .create_invoice(as_user(
                office,
                CreateInvoiceRequest {
                    patient_id: patient.id.clone(),
                    currency_code: String::new(),
                    lines: vec![CreateInvoiceLine {
                        price_code: code.into(),
                        quantity,
                    }],
                },
            ))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn get_invoice(&self, who: &User, id: &str) -> Invoice {
        self.api()
            .await
            .get_invoice(with_token(
                tonic::Request::new(GetInvoiceRequest {
                    invoice_id: id.into(),
                }),
                &who.token,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// A billing-office user, a patient with a card from `token`, a price of 5000 and an open
    /// invoice for it.
    pub async fn ready_to_pay(&self, token: &str) -> (User, User, Invoice) {
        let office = self.user(Role::Billing, "office").await;
        let patient = self.user(Role::Patient, "pat").await;
        self.price(&office, "video-30", 5000, 2500, 4000).await;
        self.card(&patient, token).await;
        let invoice = self.invoice(&office, &patient, "video-30", 1).await;
        (office, patient, invoice)
    }
}

pub fn pay(invoice: &Invoice, amount: i64) -> PayInvoiceRequest {
    PayInvoiceRequest {
        invoice_id: invoice.id.clone(),
        payment_method_id: String::new(),
        amount_minor: amount,
    }
}

/// Every text column of every table in billing's schema, as text (raw-table scans).
pub async fn all_text(pool: &PgPool) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = String::new();
    for t in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT row_to_json(x)::text FROM {t} x"))
                .fetch_all(pool)
                .await
                .unwrap();
        for r in rows {
            out.push_str(&r);
            out.push('\n');
        }
    }
    out
}
