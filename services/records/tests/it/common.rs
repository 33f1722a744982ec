//! Test harness: identity and records side by side on one dev CA, as a deployment runs them;
//! users of every role created in identity and signed in through its real Login.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use carehub_identity::config::NotifierKind;
use carehub_identity::IdentityDef;
use carehub_platform::auth::Role;
use carehub_platform::client::ServiceChannel;
use carehub_proto::records::v1::records_internal_client::RecordsInternalClient;
use carehub_proto::records::v1::records_service_client::RecordsServiceClient;
use carehub_proto::records::v1::*;
use carehub_records::config::RecordsConfig;
use carehub_records::RecordsDef;
use carehub_testkit::service::TestService;
use sqlx::PgPool;

pub use carehub_testkit::grpc::{assert_status, with_key, with_token};
pub use carehub_testkit::PASSWORD;

pub struct Suite {
    pub identity: TestService<IdentityDef>,
    pub records: TestService<RecordsDef>,
}

/// A signed-in user.
#[derive(Clone, Debug)]
pub struct User {
    pub role: Role,
    pub id: String,
    pub token: String,
}

pub async fn spawn() -> Suite {
    spawn_with(|_| {}).await
}

/// Identity, then records on identity's CA pointed at it, identity's outbox delivering account
/// events to records (as a deployment wires them); returns once records is ready (keys held
/// and identity's revocation feed read).
pub async fn spawn_with(adjust: impl FnOnce(&mut RecordsConfig)) -> Suite {
    // Records' port is chosen first: identity's outbox needs it at start.
    let records_port = carehub_testkit::grpc::free_port();
    let identity = TestService::start(&carehub_identity::SERVICE, |c| {
        c.identity.notifier = NotifierKind::MemorySandbox;
        c.server.outbox.poll_interval_ms = 100;
        c.server.outbox.targets.insert(
            "records".to_owned(),
            carehub_platform::config::OutboxTarget {
                endpoint: format!("https://127.0.0.1:{records_port}"),
                server_name: "records".to_owned(),
            },
        );
    })
    .await;
    let endpoint = format!("https://{}", identity.grpc_addr);
    let records = TestService::start_with_pki(
        &carehub_records::SERVICE,
        identity.pki().clone(),
        |c: &mut RecordsConfig| {
            c.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], records_port));
            c.server.auth.identity_endpoint = Some(endpoint);
            c.server.auth.revocation_poll_secs = 1;
            adjust(c);
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = carehub_testkit::grpc::http_get_raw(&records.admin_addr.to_string(), "/readyz")
            .await
            .is_some_and(|(code, _)| code == 200);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "records not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Suite { identity, records }
}

impl Suite {
    /// Creates a user of `role` in identity and signs them in through Login.
    pub async fn user(&self, role: Role, name: &str) -> User {
        let state = &self.identity.handle().state;
        let email = format!("{name}@example.org");
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

    pub async fn channel(&self, workload: &str) -> ServiceChannel {
        self.records.channel(workload).await
    }

    /// Records' public API as the gateway.
    pub async fn public(&self) -> RecordsServiceClient<ServiceChannel> {
        RecordsServiceClient::new(self.channel("gateway").await)
    }

    pub async fn internal(&self, workload: &str) -> RecordsInternalClient<ServiceChannel> {
        RecordsInternalClient::new(self.channel(workload).await)
    }

    /// Records' database (the test's own pool).
    pub fn pool(&self) -> &PgPool {
        self.records.pool()
    }

    /// Adds `member` to `patient`'s team, asked by the patient.
    pub async fn join_team(&self, patient: &User, member: &User) -> CareTeam {
        self.public()
            .await
            .add_care_team_member(with_token(
                tonic::Request::new(AddCareTeamMemberRequest {
                    patient_id: patient.id.clone(),
                    user_id: member.id.clone(),
                }),
                &patient.token,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// Every sealed audit event of records, as (kind, purpose, subject, actor).
    pub async fn audit(&self) -> Vec<(String, String, Option<String>, Option<String>)> {
        carehub_platform::audit::seal_all(self.pool())
            .await
            .unwrap();
        sqlx::query_as(
            "SELECT kind, purpose, subject_id::text, actor_user_id::text
               FROM carehub_platform.audit_events ORDER BY seq",
        )
        .fetch_all(self.pool())
        .await
        .unwrap()
    }

    pub async fn shutdown(self) {
        self.records.shutdown().await;
        self.identity.shutdown().await;
    }
}

/// `req` with `user`'s token.
pub fn as_user<T>(user: &User, req: T) -> tonic::Request<T> {
    with_token(tonic::Request::new(req), &user.token)
}

pub fn coding(system: &str, code: &str, display: &str) -> Option<Coding> {
    Some(Coding {
        system: system.into(),
        code: code.into(),
        display: display.into(),
    })
}

/// Type 2 diabetes (ICD-10-CM E11.9), active.
pub fn diabetes() -> EntryContent {
    EntryContent {
        content: Some(entry_content::Content::Condition(Condition {
            code: coding(
                "http://hl7.org/fhir/sid/icd-10-cm",
                "E11.9",
                "Type 2 diabetes mellitus",
            ),
            clinical_status: ConditionStatus::Active as i32,
            onset_date: None,
            note: "diagnosed at the county clinic".into(),
        })),
    }
}

/// Metformin 500 mg twice daily (RxNorm 860975), active.
pub fn metformin(dose: &str) -> EntryContent {
    EntryContent {
        content: Some(entry_content::Content::Medication(Medication {
            code: coding(
                "http://www.nlm.nih.gov/research/umls/rxnorm",
                "860975",
                "metformin 500 MG Oral Tablet",
            ),
            dose: dose.into(),
            route: "oral".into(),
            frequency: "twice daily".into(),
            status: MedicationStatus::Active as i32,
        })),
    }
}

/// HbA1c 7.2 % (LOINC 4548-4), high, observed an hour ago.
pub fn hba1c() -> EntryContent {
    EntryContent {
        content: Some(entry_content::Content::LabResult(LabResult {
            code: coding("http://loinc.org", "4548-4", "Hemoglobin A1c"),
            value: "7.2".into(),
            unit: "%".into(),
            reference_range: "4.0-5.6".into(),
            flag: AbnormalFlag::High as i32,
            observed_time: Some(prost_types::Timestamp {
                seconds: chrono::Utc::now().timestamp() - 3600,
                nanos: 0,
            }),
        })),
    }
}
