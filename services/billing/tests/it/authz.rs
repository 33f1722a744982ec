//! Billing's authorization, checked through the test kit (`carehub_testkit::authz`): every RPC
//! billing mounts has a policy rule (and the check fails when one has none), and the whole
//! matrix — every RPC of `BillingService` and `AppointmentEvents` × the patient whose billing
//! data it is, another patient, a provider, staff, the billing office, an admin (through the
//! gateway), the scheduling workload, two workloads that have no business here, and the gateway
//! with no user — comes to the table below. Roles are necessary, never sufficient: the policy
//! lets patients in, and the handlers (`api::access`) narrow them to their own billing data.
//!
//! Billing holds no clinical data at all (an appointment id, a price code and amounts, never
//! why the patient came), so "minimum necessary" runs the other way round here: providers and
//! staff, who work with clinical data, are refused every billing RPC but the price list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Mutex;

use carehub_platform::auth::Role;
use carehub_platform::client::ServiceChannel;
use carehub_platform::timestamps::to_proto;
use carehub_proto::billing::v1::billing_service_client::BillingServiceClient;
use carehub_proto::billing::v1::*;
use carehub_proto::common::v1::appointment_events_client::AppointmentEventsClient;
use carehub_proto::common::v1::Money;
use carehub_proto::scheduling::v1::{AppointmentEvent, AppointmentEventKind};
use carehub_proto::FILE_DESCRIPTOR_SET;
use carehub_testkit::authz::{
    assert_every_rpc_has_a_rule, describe, rpc_paths, rpcs_without_rule, without_rule, CallerKind,
    Matrix, Outcome, Whose,
};
use chrono::Utc;
use tonic::Code;
use uuid::Uuid;

use crate::common::{self, as_user, pay, with_token, Suite, User};

const PUBLIC: &str = "carehub.billing.v1.BillingService";
const APPOINTMENT_EVENTS: &str = "carehub.common.v1.AppointmentEvents";
const AUDIT_LOG: &str = "carehub.audit.v1.AuditLog";

/// The policy's refusal of a role names it; the handler's refusal of another patient's data
/// (`api::access::may_see`, the same code and reason) does not.
const POLICY_MESSAGE: &str = "lacks a role";

#[test]
fn every_rpc_billing_mounts_has_a_policy_rule() {
    assert_eq!(rpc_paths(FILE_DESCRIPTOR_SET, PUBLIC).len(), 14);
    let billing = carehub_billing::api::policy::policy();
    let audit = carehub_platform::audit::service::policy();
    assert_every_rpc_has_a_rule(
        FILE_DESCRIPTOR_SET,
        &[PUBLIC, APPOINTMENT_EVENTS, AUDIT_LOG],
        &[&billing, &audit],
    );

    // The check is not vacuous: a policy that forgets one RPC fails it, naming the RPC.
    for forgotten in [
        format!("/{PUBLIC}/RefundPayment"),
        format!("/{APPOINTMENT_EVENTS}/ApplyAppointmentEvent"),
    ] {
        let gap = without_rule(&billing, &forgotten);
        assert_eq!(
            rpcs_without_rule(
                FILE_DESCRIPTOR_SET,
                &[PUBLIC, APPOINTMENT_EVENTS, AUDIT_LOG],
                &[&gap, &audit]
            ),
            std::slice::from_ref(&forgotten)
        );
        let failed = std::panic::catch_unwind(|| {
            assert_every_rpc_has_a_rule(
                FILE_DESCRIPTOR_SET,
                &[PUBLIC, APPOINTMENT_EVENTS, AUDIT_LOG],
                &[&gap, &audit],
            )
        });
        assert!(
            failed.is_err(),
            "a policy without {forgotten} must fail the check"
        );
    }
}

/// The columns. "another patient" asks about the patient's billing data; the billing office
/// and the admin act on the patient's data too; provider and staff ask for the patient's data
/// (and are refused by role before that matters).
fn callers() -> Vec<CallerKind> {
    use Whose::{Other, Own};
    vec![
        CallerKind::user("patient", "gateway", Role::Patient, Own),
        CallerKind::user("another patient", "gateway", Role::Patient, Other),
        CallerKind::user("provider", "gateway", Role::Provider, Other),
        CallerKind::user("staff", "gateway", Role::Staff, Other),
        CallerKind::user("billing", "gateway", Role::Billing, Other),
        CallerKind::user("admin", "gateway", Role::Admin, Other),
        CallerKind::workload("scheduling", "scheduling"),
        CallerKind::workload("records", "records"),
        CallerKind::workload("unknown workload", "intruder"),
        CallerKind::workload("gateway, no user", "gateway"),
    ]
}

/// The handler's refusal of another patient's billing data: PERMISSION_DENIED with
/// ROLE_NOT_ALLOWED, past the policy (the run checks the message is not the policy's).
const NOT_THEIRS: Outcome = Outcome::Deny(Code::PermissionDenied, "ROLE_NOT_ALLOWED");

/// Columns: the patient, another patient, a provider, staff, billing, admin, the scheduling,
/// records and an unknown workload (no user), the gateway without a user. `.` allowed and
/// answered, `R` role not allowed by the policy, `O` allowed by the policy and refused by the
/// handler for another patient's data, `W` workload not allowed, `T` no token. Rows run in
/// order, columns left to right.
const TABLE: &str = "
    rpc                                     pat oth prv stf bil adm  sch rec unk  gw
    AddPaymentMethod                          .   O   R   R   .   .    W   W   W   T
    ListPaymentMethods                        .   O   R   R   .   .    W   W   W   T
    RemovePaymentMethod                       .   O   R   R   .   .    W   W   W   T
    SetPrice                                  R   R   R   R   .   .    W   W   W   T
    ListPrices                                .   .   .   .   .   .    W   W   W   T
    CreateInvoice                             R   R   R   R   .   .    W   W   W   T
    GetInvoice                                .   O   R   R   .   .    W   W   W   T
    ListInvoices                              .   O   R   R   .   .    W   W   W   T
    VoidInvoice                               R   R   R   R   .   .    W   W   W   T
    PayInvoice                                .   O   R   R   .   .    W   W   W   T
    GetPayment                                .   O   R   R   .   .    W   W   W   T
    RefundPayment                             R   R   R   R   .   .    W   W   W   T
    GetReceipt                                .   O   R   R   .   .    W   W   W   T
    GetStatement                              .   O   R   R   .   .    W   W   W   T
    AppointmentEvents/ApplyAppointmentEvent   W   W   W   W   W   W    .   W   W   W
";

/// RPCs whose answers carry no personal data: no audit event is expected of them.
const UNAUDITED: &[&str] = &["ListPrices"];

fn matrix() -> Matrix {
    let mut m = Matrix::new(callers()).legend('O', NOT_THEIRS);
    for (rpc, cells) in rows() {
        m = m.row(&path(rpc), cells);
    }
    m
}

/// The gRPC path of a row: `Method` of BillingService, or `Service/Method` of
/// `carehub.common.v1`.
fn path(row: &str) -> String {
    if row.contains('/') {
        format!("/carehub.common.v1.{row}")
    } else {
        format!("/{PUBLIC}/{row}")
    }
}

/// The rows of [`TABLE`]: each RPC and its cells.
fn rows() -> impl Iterator<Item = (&'static str, &'static str)> {
    TABLE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("rpc "))
        .map(|l| l.split_once(' ').unwrap())
}

/// The legend symbol of `rpc` (a path) for the column `label`.
fn symbol(rpc: &str, label: &str) -> char {
    let cells = rows()
        .find(|(r, _)| path(r) == rpc)
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("no row for {rpc}"));
    let column = callers()
        .iter()
        .position(|c| c.label == label)
        .unwrap_or_else(|| panic!("no column {label}"));
    cells
        .chars()
        .filter(|c| !c.is_whitespace())
        .nth(column)
        .unwrap()
}

/// The table itself says "minimum necessary": providers and staff are refused every
/// BillingService RPC by role, except the price list; and only scheduling delivers appointment
/// events.
#[test]
fn providers_and_staff_get_nothing_but_the_price_list() {
    for rpc in rpc_paths(FILE_DESCRIPTOR_SET, PUBLIC) {
        let expected = if rpc.ends_with("/ListPrices") {
            '.'
        } else {
            'R'
        };
        for label in ["provider", "staff"] {
            assert_eq!(symbol(&rpc, label), expected, "{rpc} as {label}");
        }
    }
    let events = path("AppointmentEvents/ApplyAppointmentEvent");
    for c in callers() {
        let expected = if c.workload == "scheduling" { '.' } else { 'W' };
        assert_eq!(
            symbol(&events, c.label),
            expected,
            "{events} as {}",
            c.label
        );
    }
}

struct World {
    patient: User,
    another: User,
    provider: User,
    staff: User,
    billing: User,
    admin: User,
    /// The patient's card (their default), the target of every refused card call.
    card: PaymentMethod,
    /// Cards of the patient's that each allowed column removes.
    removable: HashMap<&'static str, String>,
    /// The patient's open invoice: read, listed, the target of every refused invoice call.
    invoice: Invoice,
    /// Open invoices of the patient's that each allowed column voids.
    voids: HashMap<&'static str, String>,
    /// Open invoices of the patient's that each allowed column pays.
    pays: HashMap<&'static str, String>,
    /// A succeeded payment of the patient's (5000): read, receipted, partly refunded.
    payment: Payment,
    /// Channels to billing as each workload.
    channels: HashMap<&'static str, ServiceChannel>,
}

impl World {
    fn user(&self, label: &str) -> Option<&User> {
        Some(match label {
            "patient" => &self.patient,
            "another patient" => &self.another,
            "provider" => &self.provider,
            "staff" => &self.staff,
            "billing" => &self.billing,
            "admin" => &self.admin,
            _ => return None,
        })
    }
}

/// A card from `token` for `patient`, added by `by`, not made the default.
async fn extra_card(suite: &Suite, by: &User, patient: &User, token: &str) -> PaymentMethod {
    suite
        .api()
        .await
        .add_payment_method(as_user(
            by,
            AddPaymentMethodRequest {
                patient_id: patient.id.clone(),
                processor_token: token.into(),
                make_default: false,
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn world(suite: &Suite) -> World {
    let (billing, patient, invoice) = suite.ready_to_pay("tok_visa").await;
    let card = suite
        .api()
        .await
        .list_payment_methods(as_user(
            &patient,
            ListPaymentMethodsRequest {
                patient_id: patient.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .payment_methods
        .remove(0);
    let another = suite.user(Role::Patient, "oth").await;
    suite.card(&another, "tok_mastercard").await;
    let provider = suite.user(Role::Provider, "doc").await;
    let staff = suite.user(Role::Staff, "desk").await;
    let admin = suite.user(Role::Admin, "adm").await;

    let mut removable = HashMap::new();
    for l in ["patient", "billing", "admin"] {
        removable.insert(
            l,
            extra_card(suite, &patient, &patient, "tok_amex").await.id,
        );
    }
    let mut voids = HashMap::new();
    for l in ["billing", "admin"] {
        voids.insert(l, suite.invoice(&billing, &patient, "video-30", 1).await.id);
    }
    let mut pays = HashMap::new();
    for l in ["patient", "billing", "admin"] {
        pays.insert(l, suite.invoice(&billing, &patient, "video-30", 1).await.id);
    }
    let paid = suite.invoice(&billing, &patient, "video-30", 1).await;
    let payment = suite
        .api()
        .await
        .pay_invoice(as_user(&patient, pay(&paid, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        payment.status,
        PaymentStatus::Succeeded as i32,
        "{payment:?}"
    );

    let mut channels = HashMap::new();
    for workload in ["gateway", "scheduling", "records", "intruder"] {
        channels.insert(workload, suite.billing.channel(workload).await);
    }
    World {
        patient,
        another,
        provider,
        staff,
        billing,
        admin,
        card,
        removable,
        invoice,
        voids,
        pays,
        payment,
        channels,
    }
}

/// `msg` with `user`'s token (or none), a fresh idempotency key and `request_id`.
fn signed<T>(user: Option<&User>, msg: T, request_id: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(u) = user {
        r = with_token(r, &u.token);
    }
    let headers = r.metadata_mut();
    headers.insert("idempotency-key", common::key().parse().unwrap());
    headers.insert("x-request-id", request_id.parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_matrix_holds_and_every_allowed_call_is_audited() {
    let suite = common::spawn().await;
    let world = world(&suite).await;
    let m = matrix();
    let mut all = rpc_paths(FILE_DESCRIPTOR_SET, PUBLIC);
    all.extend(rpc_paths(FILE_DESCRIPTOR_SET, APPOINTMENT_EVENTS));
    m.assert_covers(&all);

    // Events of one call: by its request id and its caller.
    let events = |request_id: String, user: String| {
        let pool = suite.pool().clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM (
                     SELECT request_id, actor_user_id FROM carehub_platform.audit_queue
                     UNION ALL
                     SELECT request_id, actor_user_id FROM carehub_platform.audit_events
                 ) e WHERE e.request_id = $1 AND e.actor_user_id = $2::uuid",
            )
            .bind(request_id)
            .bind(user)
            .fetch_one(&pool)
            .await
            .unwrap();
            n
        }
    };
    let problems = Mutex::new(Vec::new());
    m.run(|rpc, caller| {
        let (world, problems, events) = (&world, &problems, &events);
        async move {
            let request_id = Uuid::now_v7().to_string();
            let result = call(world, &rpc, &caller, &request_id).await;
            let what = format!("{rpc} as {}", caller.label);
            let problem = |p: String| problems.lock().unwrap().push(p);
            match (&result, symbol(&rpc, caller.label)) {
                (Ok(true), _) => {
                    let user = world.user(caller.label).unwrap();
                    if events(request_id, user.id.clone()).await == 0 {
                        problem(format!("{what}: answered without an audit event"));
                    }
                }
                (Err(s), '.') => problem(format!(
                    "{what}: allowed, but refused: {}",
                    describe(&Err(s.clone()))
                )),
                (Err(s), 'R') if !s.message().contains(POLICY_MESSAGE) => {
                    problem(format!("{what}: not refused by the policy: {s:?}"))
                }
                (Err(s), 'O') if s.message().contains(POLICY_MESSAGE) => {
                    problem(format!("{what}: refused by the policy, not the handler"))
                }
                _ => {}
            }
            result.map(drop)
        }
    })
    .await;
    let problems = problems.into_inner().unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // What the refused calls asked for did not happen: the patient's open invoice is unpaid
    // and their default card is still there.
    let invoice = suite.get_invoice(&world.billing, &world.invoice.id).await;
    assert_eq!(invoice.status, InvoiceStatus::Open as i32);
    assert_eq!(invoice.amount_paid_minor, 0);
    let cards = suite
        .api()
        .await
        .list_payment_methods(as_user(
            &world.patient,
            ListPaymentMethodsRequest {
                patient_id: world.patient.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .payment_methods;
    assert!(cards.iter().any(|c| c.id == world.card.id && c.is_default));
    suite.billing.shutdown().await;
    suite.identity.shutdown().await;
}

/// Makes `rpc` as `caller`: `Ok(true)` when the answer read or changed personal data (an
/// audit event by the caller must exist), `Ok(false)` for the price list, empty listings and
/// workload calls.
async fn call(
    w: &World,
    rpc: &str,
    caller: &CallerKind,
    request_id: &str,
) -> Result<bool, tonic::Status> {
    let label = caller.label;
    let user = w.user(label);
    let method = rpc.rsplit('/').next().unwrap_or_default();
    let channel = w.channels[caller.workload].clone();
    if rpc.contains(APPOINTMENT_EVENTS) {
        // A booking of a priced visit: a draft invoice for someone billing has not seen yet.
        let now = Utc::now();
        return AppointmentEventsClient::new(channel)
            .apply_appointment_event(signed(
                user,
                AppointmentEvent {
                    event_id: format!("evt-{}", Uuid::now_v7()),
                    kind: AppointmentEventKind::Booked as i32,
                    appointment_id: Uuid::now_v7().to_string(),
                    patient_id: Uuid::now_v7().to_string(),
                    provider_id: w.provider.id.clone(),
                    visit_type_id: Uuid::now_v7().to_string(),
                    price_code: "video-30".into(),
                    start_time: Some(to_proto(now + chrono::Duration::days(3))),
                    end_time: Some(to_proto(
                        now + chrono::Duration::days(3) + chrono::Duration::minutes(30),
                    )),
                    late_cancellation: false,
                    occur_time: Some(to_proto(now)),
                },
                request_id,
            ))
            .await
            .map(|_| false);
    }
    let mut c = BillingServiceClient::new(channel);
    macro_rules! s {
        ($msg:expr) => {
            signed(user, $msg, request_id)
        };
    }
    let patient_id = w.patient.id.clone();
    let target = |targets: &HashMap<&'static str, String>, fallback: &str| {
        targets
            .get(label)
            .cloned()
            .unwrap_or_else(|| fallback.to_owned())
    };
    let audited = !UNAUDITED.contains(&method);
    match method {
        "AddPaymentMethod" => c
            .add_payment_method(s!(AddPaymentMethodRequest {
                patient_id,
                processor_token: "tok_visa".into(),
                make_default: false,
            }))
            .await
            .map(drop),
        "ListPaymentMethods" => c
            .list_payment_methods(s!(ListPaymentMethodsRequest { patient_id }))
            .await
            .map(drop),
        "RemovePaymentMethod" => c
            .remove_payment_method(s!(RemovePaymentMethodRequest {
                payment_method_id: target(&w.removable, &w.card.id),
            }))
            .await
            .map(drop),
        "SetPrice" => c
            .set_price(s!(SetPriceRequest {
                price_code: format!("derm-{}", label.len()),
                price: Some(Money {
                    currency_code: "USD".into(),
                    amount_minor: 7500,
                }),
                description: "Skin check, 15 min".into(),
                late_cancellation_fee_minor: 0,
                no_show_fee_minor: 2000,
            }))
            .await
            .map(drop),
        "ListPrices" => c
            .list_prices(s!(ListPricesRequest::default()))
            .await
            .map(drop),
        "CreateInvoice" => c
            .create_invoice(s!(CreateInvoiceRequest {
                patient_id,
                currency_code: String::new(),
                lines: vec![CreateInvoiceLine {
                    price_code: "video-30".into(),
                    quantity: 2,
                }],
            }))
            .await
            .map(drop),
        "GetInvoice" => c
            .get_invoice(s!(GetInvoiceRequest {
                invoice_id: w.invoice.id.clone(),
            }))
            .await
            .map(drop),
        "ListInvoices" => {
            let answer = c
                .list_invoices(s!(ListInvoicesRequest {
                    patient_id,
                    ..Default::default()
                }))
                .await?
                .into_inner();
            return Ok(!answer.invoices.is_empty());
        }
        "VoidInvoice" => c
            .void_invoice(s!(VoidInvoiceRequest {
                invoice_id: target(&w.voids, &w.invoice.id),
            }))
            .await
            .map(drop),
        "PayInvoice" => {
            let payment = c
                .pay_invoice(s!(PayInvoiceRequest {
                    invoice_id: target(&w.pays, &w.invoice.id),
                    payment_method_id: String::new(),
                    amount_minor: 0,
                }))
                .await?
                .into_inner();
            assert_eq!(
                payment.status,
                PaymentStatus::Succeeded as i32,
                "PayInvoice as {label}: {payment:?}"
            );
            Ok(())
        }
        "GetPayment" => c
            .get_payment(s!(GetPaymentRequest {
                payment_id: w.payment.id.clone(),
            }))
            .await
            .map(drop),
        "RefundPayment" => c
            .refund_payment(s!(RefundPaymentRequest {
                payment_id: w.payment.id.clone(),
                amount_minor: 100,
                reason: RefundReason::BillingError as i32,
            }))
            .await
            .map(drop),
        "GetReceipt" => c
            .get_receipt(s!(GetReceiptRequest {
                payment_id: w.payment.id.clone(),
            }))
            .await
            .map(drop),
        "GetStatement" => c
            .get_statement(s!(GetStatementRequest {
                patient_id,
                ..Default::default()
            }))
            .await
            .map(drop),
        other => panic!("no call for {other}"),
    }
    .map(|()| audited)
}

/// Patient A asks for patient B's billing data, every way there is, with real ids: each is
/// refused by the handler (PERMISSION_DENIED, ROLE_NOT_ALLOWED, not the policy's message) and
/// changes nothing; the billing office reads B's invoices, payment, receipt and statement.
#[tokio::test]
async fn a_patient_reaches_only_their_own_billing_data() {
    let suite = common::spawn().await;
    let (office, b, b_open) = suite.ready_to_pay("tok_visa").await;
    let a = suite.user(Role::Patient, "a").await;
    suite.card(&a, "tok_mastercard").await;
    let a_invoice = suite.invoice(&office, &a, "video-30", 1).await;
    let b_paid = suite.invoice(&office, &b, "video-30", 2).await;
    let mut api = suite.api().await;
    let b_payment = api
        .pay_invoice(as_user(&b, pay(&b_paid, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b_payment.status, PaymentStatus::Succeeded as i32);
    let b_cards = |api: &mut BillingServiceClient<ServiceChannel>| {
        let mut api = api.clone();
        let b = b.clone();
        async move {
            api.list_payment_methods(as_user(
                &b,
                ListPaymentMethodsRequest {
                    patient_id: b.id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .payment_methods
        }
    };
    let b_card = b_cards(&mut api).await.remove(0);
    let payments_before = suite.billing.count("payments").await;

    let refused: Vec<(&str, Result<(), tonic::Status>)> = vec![
        (
            "GetInvoice",
            api.get_invoice(as_user(
                &a,
                GetInvoiceRequest {
                    invoice_id: b_open.id.clone(),
                },
            ))
            .await
            .map(drop),
        ),
        (
            "ListInvoices",
            api.list_invoices(as_user(
                &a,
                ListInvoicesRequest {
                    patient_id: b.id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        ),
        (
            "GetPayment",
            api.get_payment(as_user(
                &a,
                GetPaymentRequest {
                    payment_id: b_payment.id.clone(),
                },
            ))
            .await
            .map(drop),
        ),
        (
            "GetReceipt",
            api.get_receipt(as_user(
                &a,
                GetReceiptRequest {
                    payment_id: b_payment.id.clone(),
                },
            ))
            .await
            .map(drop),
        ),
        (
            "GetStatement",
            api.get_statement(as_user(
                &a,
                GetStatementRequest {
                    patient_id: b.id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        ),
        (
            "ListPaymentMethods",
            api.list_payment_methods(as_user(
                &a,
                ListPaymentMethodsRequest {
                    patient_id: b.id.clone(),
                },
            ))
            .await
            .map(drop),
        ),
        (
            "PayInvoice",
            api.pay_invoice(as_user(&a, pay(&b_open, 0)))
                .await
                .map(drop),
        ),
        (
            "PayInvoice with B's card",
            api.pay_invoice(as_user(
                &a,
                PayInvoiceRequest {
                    invoice_id: b_open.id.clone(),
                    payment_method_id: b_card.id.clone(),
                    amount_minor: 100,
                },
            ))
            .await
            .map(drop),
        ),
        (
            "RemovePaymentMethod",
            api.remove_payment_method(as_user(
                &a,
                RemovePaymentMethodRequest {
                    payment_method_id: b_card.id.clone(),
                },
            ))
            .await
            .map(drop),
        ),
        (
            "AddPaymentMethod",
            api.add_payment_method(as_user(
                &a,
                AddPaymentMethodRequest {
                    patient_id: b.id.clone(),
                    processor_token: "tok_visa".into(),
                    make_default: true,
                },
            ))
            .await
            .map(drop),
        ),
    ];
    for (what, result) in refused {
        let e = result.expect_err(what);
        common::assert_status(&e, Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));
        assert!(
            !e.message().contains(POLICY_MESSAGE),
            "{what}: refused by the handler, not the policy: {e:?}"
        );
    }
    // Nothing changed: no payment, B's invoice unpaid, B's one card still the default.
    assert_eq!(suite.billing.count("payments").await, payments_before);
    let open = suite.get_invoice(&office, &b_open.id).await;
    assert_eq!(
        (open.status, open.amount_paid_minor),
        (InvoiceStatus::Open as i32, 0)
    );
    let cards = b_cards(&mut api).await;
    assert_eq!(cards.len(), 1, "{cards:?}");
    assert!(cards[0].id == b_card.id && cards[0].is_default);

    // A's own data is theirs.
    let own = suite.get_invoice(&a, &a_invoice.id).await;
    assert_eq!(own.patient_id, a.id);

    // The billing office reads B's billing data: invoices (by patient and across patients),
    // the payment, its receipt, the statement and the cards.
    assert_eq!(
        suite.get_invoice(&office, &b_open.id).await.patient_id,
        b.id
    );
    let listed = api
        .list_invoices(as_user(
            &office,
            ListInvoicesRequest {
                patient_id: b.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .invoices;
    let mut ids: Vec<&str> = listed.iter().map(|i| i.id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![b_open.id.as_str(), b_paid.id.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);
    assert!(listed.iter().all(|i| i.patient_id == b.id));
    let everyone = api
        .list_invoices(as_user(&office, ListInvoicesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .invoices;
    for id in [&b_open.id, &b_paid.id, &a_invoice.id] {
        assert!(everyone.iter().any(|i| &i.id == id), "{id} listed");
    }
    let payment = api
        .get_payment(as_user(
            &office,
            GetPaymentRequest {
                payment_id: b_payment.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(payment.patient_id, b.id);
    let receipt = api
        .get_receipt(as_user(
            &office,
            GetReceiptRequest {
                payment_id: b_payment.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.patient_id, b.id);
    let statement = api
        .get_statement(as_user(
            &office,
            GetStatementRequest {
                patient_id: b.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(statement.patient_id, b.id);
    assert_eq!(statement.closing_balance_minor, 5000, "{statement:?}");
    let cards = api
        .list_payment_methods(as_user(
            &office,
            ListPaymentMethodsRequest {
                patient_id: b.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .payment_methods;
    assert_eq!(cards.len(), 1);
    suite.billing.shutdown().await;
    suite.identity.shutdown().await;
}
