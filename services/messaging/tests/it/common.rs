//! Test harness: identity, records and messaging side by side on one dev CA, as a deployment
//! runs them; users of every role created in identity and signed in through its real Login.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use carehub_identity::config::NotifierKind;
use carehub_identity::IdentityDef;
use carehub_messaging::config::MessagingConfig;
use carehub_messaging::MessagingDef;
use carehub_platform::auth::Role;
use carehub_platform::client::ServiceChannel;
use carehub_platform::config::OutboxTarget;
use carehub_platform::kit::Started;
use carehub_proto::messaging::v1::messaging_internal_client::MessagingInternalClient;
use carehub_proto::messaging::v1::messaging_service_client::MessagingServiceClient;
use carehub_proto::messaging::v1::*;
use carehub_proto::records::v1::records_service_client::RecordsServiceClient;
use carehub_proto::records::v1::{AddCareTeamMemberRequest, RemoveCareTeamMemberRequest};
use carehub_records::RecordsDef;
use carehub_testkit::service::TestService;
use sqlx::PgPool;

pub use carehub_testkit::grpc::{assert_status, with_key, with_token};
pub use carehub_testkit::PASSWORD;

pub struct Suite {
    pub identity: TestService<IdentityDef>,
    pub records: TestService<RecordsDef>,
    pub messaging: TestService<MessagingDef>,
}

/// A signed-in user.
#[derive(Clone, Debug)]
pub struct User {
    pub role: Role,
    pub id: String,
    pub token: String,
    pub email: String,
}

pub async fn spawn() -> Suite {
    spawn_with(|_| {}).await
}

fn target(port: u16, name: &str) -> OutboxTarget {
    OutboxTarget {
        endpoint: format!("https://127.0.0.1:{port}"),
        server_name: name.to_owned(),
    }
}

async fn ready(admin: &std::net::SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = carehub_testkit::grpc::http_get_raw(&admin.to_string(), "/readyz")
            .await
            .is_some_and(|(code, _)| code == 200);
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "{what} not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Identity, records and messaging wired as a deployment wires them (identity's outbox to
/// records and messaging, messaging's to identity); `adjust` tunes messaging. Returns once
/// records and messaging are ready.
pub async fn spawn_with(adjust: impl FnOnce(&mut MessagingConfig)) -> Suite {
    let records_port = carehub_testkit::grpc::free_port();
    let messaging_port = carehub_testkit::grpc::free_port();
    let identity = TestService::start(&carehub_identity::SERVICE, |c| {
        c.identity.notifier = NotifierKind::MemorySandbox;
        c.server.outbox.poll_interval_ms = 100;
        c.server
            .outbox
            .targets
            .insert("records".to_owned(), target(records_port, "records"));
        c.server
            .outbox
            .targets
            .insert("messaging".to_owned(), target(messaging_port, "messaging"));
    })
    .await;
    let identity_endpoint = format!("https://{}", identity.grpc_addr);
    let identity_port = identity.grpc_addr.port();
    let records = TestService::start_with_pki(
        &carehub_records::SERVICE,
        identity.pki().clone(),
        |c: &mut carehub_records::config::RecordsConfig| {
            c.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], records_port));
            c.server.auth.identity_endpoint = Some(identity_endpoint.clone());
            c.server.auth.revocation_poll_secs = 1;
        },
    )
    .await;
    let records_endpoint = format!("https://{}", records.grpc_addr);
    let messaging = TestService::start_with_pki(
        &carehub_messaging::SERVICE,
        identity.pki().clone(),
        |c: &mut MessagingConfig| {
            c.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], messaging_port));
            c.server.auth.identity_endpoint = Some(identity_endpoint.clone());
            c.server.auth.revocation_poll_secs = 1;
            c.server.outbox.poll_interval_ms = 100;
            c.server
                .outbox
                .targets
                .insert("identity".to_owned(), target(identity_port, "identity"));
            // New-message alerts go through messaging's own outbox to its SendNotification.
            c.server
                .outbox
                .targets
                .insert("messaging".to_owned(), target(messaging_port, "messaging"));
            c.messaging.records_endpoint = Some(records_endpoint);
            c.messaging.care_team_cache_secs = 1;
            c.messaging.catch_up_ms = 200;
            adjust(c);
        },
    )
    .await;
    ready(&records.admin_addr, "records").await;
    ready(&messaging.admin_addr, "messaging").await;
    Suite {
        identity,
        records,
        messaging,
    }
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
            email,
        }
    }

    pub async fn channel(&self, workload: &str) -> ServiceChannel {
        self.messaging.channel(workload).await
    }

    /// Messaging's public API as the gateway.
    pub async fn public(&self) -> MessagingServiceClient<ServiceChannel> {
        MessagingServiceClient::new(self.channel("gateway").await)
    }

    pub async fn internal(&self, workload: &str) -> MessagingInternalClient<ServiceChannel> {
        MessagingInternalClient::new(self.channel(workload).await)
    }

    /// Messaging's database (the test's own pool).
    pub fn pool(&self) -> &PgPool {
        self.messaging.pool()
    }

    /// Another messaging replica on the same database (its own ports, certificate, hub).
    pub async fn replica(&self) -> Started<carehub_messaging::MessagingHandle> {
        let identity_endpoint = format!("https://{}", self.identity.grpc_addr);
        let records_endpoint = format!("https://{}", self.records.grpc_addr);
        self.messaging
            .start_replica(&carehub_messaging::SERVICE, None, |c| {
                c.server.auth.identity_endpoint = Some(identity_endpoint);
                c.server.auth.revocation_poll_secs = 1;
                c.messaging.records_endpoint = Some(records_endpoint);
                c.messaging.care_team_cache_secs = 1;
                c.messaging.catch_up_ms = 200;
            })
            .await
    }

    /// A client of `replica`'s public API as the gateway.
    pub async fn public_of(
        &self,
        replica: &Started<carehub_messaging::MessagingHandle>,
    ) -> MessagingServiceClient<ServiceChannel> {
        MessagingServiceClient::new(
            self.messaging
                .pki()
                .channel(replica.server.grpc_addr, "gateway", "messaging")
                .await,
        )
    }

    /// `member` joins `patient`'s care team (asked by the patient, in records).
    pub async fn join_team(&self, patient: &User, member: &User) {
        RecordsServiceClient::new(self.records.channel("gateway").await)
            .add_care_team_member(as_user(
                patient,
                AddCareTeamMemberRequest {
                    patient_id: patient.id.clone(),
                    user_id: member.id.clone(),
                },
            ))
            .await
            .unwrap();
    }

    /// `member` leaves `patient`'s care team (asked by the patient, in records); messaging
    /// forgets the team it cached, as it would after `care_team_cache_secs`.
    pub async fn leave_team(&self, patient: &User, member: &User) {
        RecordsServiceClient::new(self.records.channel("gateway").await)
            .remove_care_team_member(as_user(
                patient,
                RemoveCareTeamMemberRequest {
                    patient_id: patient.id.clone(),
                    user_id: member.id.clone(),
                },
            ))
            .await
            .unwrap();
        self.messaging
            .handle()
            .state
            .teams
            .forget(patient.id.parse().unwrap());
    }

    /// A patient, a provider and a staff member on the patient's team, and a care conversation
    /// the patient opened.
    pub async fn care(&self) -> (User, User, User, Conversation) {
        let patient = self.user(Role::Patient, "pat").await;
        let provider = self.user(Role::Provider, "doc").await;
        let staff = self.user(Role::Staff, "nurse").await;
        self.join_team(&patient, &provider).await;
        self.join_team(&patient, &staff).await;
        let conversation = self.open_care(&patient).await;
        (patient, provider, staff, conversation)
    }

    pub async fn open_care(&self, patient: &User) -> Conversation {
        self.public()
            .await
            .create_conversation(as_user(
                patient,
                CreateConversationRequest {
                    kind: ConversationKind::Care as i32,
                    patient_id: patient.id.clone(),
                    member_ids: vec![],
                    subject: "Question about my dosage".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// `user` sends `body` in `conversation` with a fresh client message id.
    pub async fn send(&self, user: &User, conversation: &Conversation, body: &str) -> Message {
        self.public()
            .await
            .send_message(as_user(
                user,
                SendMessageRequest {
                    conversation_id: conversation.id.clone(),
                    client_message_id: uuid::Uuid::now_v7().simple().to_string(),
                    body: body.into(),
                    attachment_ids: vec![],
                },
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// Every sealed audit event of messaging, as (kind, purpose, subject, actor).
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
        self.messaging.shutdown().await;
        self.records.shutdown().await;
        self.identity.shutdown().await;
    }
}

/// `req` with `user`'s token.
pub fn as_user<T>(user: &User, req: T) -> tonic::Request<T> {
    with_token(tonic::Request::new(req), &user.token)
}

/// `req` with `user`'s token and an idempotency key.
pub fn keyed<T>(user: &User, req: T, key: &str) -> tonic::Request<T> {
    with_key(as_user(user, req), key)
}

/// SendMessage of `body` in `conversation` as `user`, client message id `client_id` (and
/// idempotency key `key-<client_id>`), for tests that send many at once.
pub fn send_request(
    user: &User,
    conversation: &Conversation,
    client_id: &str,
    body: &str,
) -> tonic::Request<SendMessageRequest> {
    keyed(
        user,
        SendMessageRequest {
            conversation_id: conversation.id.clone(),
            client_message_id: client_id.into(),
            body: body.into(),
            attachment_ids: vec![],
        },
        &format!("key-{client_id}"),
    )
}
