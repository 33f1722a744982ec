//! Identity scenarios, and the data they need, seeded through identity's public RPCs as the
//! gateway workload: patients registered with RegisterPatient and signed in with Login.
//!
//! Nothing is deleted afterwards: the users are the load generator's own (emails
//! `loadgen-<run>-<n>@example.org`), distinct in every run, and identity offers no RPC that
//! deletes an account (TerminateUser keeps the row, as the audit trail requires).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use carehub_proto::common::v1::Date;
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::{
    login_response, GetProfileRequest, ListSigningKeysRequest, LoginRequest, RefreshSessionRequest,
    RegisterPatientRequest, UpdateProfileRequest, User,
};
use tonic::transport::Channel;

use super::engine::{Op, OpFuture};

/// The seeded users' password (they are the load generator's own test accounts).
pub(super) const PASSWORD: &str = "loadgen correct horse battery";

/// A signed-in seeded user.
#[derive(Clone, Debug)]
pub struct SeededUser {
    pub email: String,
    /// The user's id (from the Login answer): the patient id of their chart in records.
    pub user_id: String,
    pub access_token: String,
}

/// Seeded data shared by the identity scenarios.
pub struct Seed {
    pub users: Vec<SeededUser>,
    /// Refresh-token chains (each one session's current refresh token): one per request in
    /// flight, so that a closed loop never waits for its own chain.
    pub chains: Vec<tokio::sync::Mutex<String>>,
}

fn clients(channels: &[Channel]) -> Vec<IdentityServiceClient<Channel>> {
    channels
        .iter()
        .map(|c| IdentityServiceClient::new(c.clone()))
        .collect()
}

pub(super) fn bearer<T>(msg: T, token: &str) -> Result<tonic::Request<T>, tonic::Status> {
    let mut req = tonic::Request::new(msg);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| tonic::Status::internal("access token is not a valid header value"))?;
    req.metadata_mut().insert("authorization", value);
    Ok(req)
}

/// Retries what a service refuses for load (RESOURCE_EXHAUSTED, UNAVAILABLE) with backoff.
pub(super) async fn retrying<T, F, Fut>(what: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut delay = Duration::from_millis(50);
    for attempt in 1.. {
        match call().await {
            Ok(v) => return Ok(v),
            Err(s)
                if attempt < 8
                    && matches!(
                        s.code(),
                        tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                    ) =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(s) => anyhow::bail!("{what}: {} {}", s.code(), s.message()),
        }
    }
    anyhow::bail!("{what}: gave up")
}

/// A signed-in session of a seeded user.
struct Session {
    access_token: String,
    refresh_token: String,
    user_id: String,
}

async fn login(
    client: &mut IdentityServiceClient<Channel>,
    email: &str,
) -> anyhow::Result<Session> {
    let resp = retrying("Login", || {
        let mut client = client.clone();
        let req = LoginRequest {
            email: email.to_owned(),
            password: PASSWORD.to_owned(),
        };
        async move { client.login(req).await }
    })
    .await?
    .into_inner();
    match resp.result {
        Some(login_response::Result::Tokens(t)) => Ok(Session {
            access_token: t.access_token,
            refresh_token: t.refresh_token,
            user_id: t.user_id,
        }),
        _ => anyhow::bail!("Login of a seeded user returned no tokens (MFA?)"),
    }
}

/// Registers `users` patients and signs in `chains` sessions (round robin over the users),
/// `parallel` at a time.
pub async fn seed(
    channels: &[Channel],
    users: usize,
    chains: usize,
    parallel: usize,
) -> anyhow::Result<Seed> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = run.get(..10).unwrap_or(&run).to_owned();
    let clients = clients(channels);
    let users = users.max(1);
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..users {
        let mut client = clients[i % clients.len()].clone();
        let email = format!("loadgen-{run}-{i}@example.org");
        let sem = sem.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            retrying("RegisterPatient", || {
                let mut client = client.clone();
                let req = register_request(&email);
                async move { client.register_patient(req).await }
            })
            .await?;
            let session = login(&mut client, &email).await?;
            Ok::<_, anyhow::Error>((
                i,
                SeededUser {
                    email,
                    user_id: session.user_id,
                    access_token: session.access_token,
                },
            ))
        });
    }
    let mut seeded: Vec<(usize, SeededUser)> = Vec::with_capacity(users);
    while let Some(r) = tasks.join_next().await {
        seeded.push(r.context("seeding task")??);
    }
    seeded.sort_by_key(|(i, _)| *i);
    let users: Vec<SeededUser> = seeded.into_iter().map(|(_, u)| u).collect();

    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..chains {
        let mut client = clients[c % clients.len()].clone();
        let email = users[c % users.len()].email.clone();
        let sem = sem.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let session = login(&mut client, &email).await?;
            Ok::<_, anyhow::Error>(session.refresh_token)
        });
    }
    let mut refresh = Vec::with_capacity(chains);
    while let Some(r) = tasks.join_next().await {
        refresh.push(tokio::sync::Mutex::new(r.context("seeding task")??));
    }
    Ok(Seed {
        users,
        chains: refresh,
    })
}

fn register_request(email: &str) -> RegisterPatientRequest {
    RegisterPatientRequest {
        email: email.to_owned(),
        password: PASSWORD.to_owned(),
        phone: String::new(),
        given_name: "Load".to_owned(),
        family_name: "Generator".to_owned(),
        date_of_birth: Some(Date {
            year: 1980,
            month: 1,
            day: 1,
        }),
        time_zone: "UTC".to_owned(),
        accepted_terms_version: "2025-01".to_owned(),
        accepted_privacy_version: "2025-01".to_owned(),
        marketing_opt_in: false,
        sms_opt_in: false,
    }
}

/// An identity scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SigningKeys,
    ProfileRead,
    ProfileUpdate,
    Refresh,
    Login,
    Mixed,
}

/// The operation of `kind` over `channels`.
pub fn op(kind: Kind, channels: &[Channel], seed: Arc<Seed>) -> Op {
    let clients = Arc::new(clients(channels));
    Arc::new(move |seq| -> OpFuture {
        let client = clients[(seq as usize) % clients.len()].clone();
        let seed = seed.clone();
        Box::pin(async move {
            match kind {
                Kind::SigningKeys => signing_keys(client).await,
                Kind::ProfileRead => profile_read(client, &seed, seq).await,
                Kind::ProfileUpdate => profile_update(client, &seed, seq).await,
                Kind::Refresh => refresh(client, &seed, seq).await,
                Kind::Login => login_op(client, &seed, seq).await,
                // 7 reads : 2 updates : 1 refresh.
                Kind::Mixed => match seq % 10 {
                    0..=6 => profile_read(client, &seed, seq).await,
                    7 | 8 => profile_update(client, &seed, seq).await,
                    _ => refresh(client, &seed, seq).await,
                },
            }
        })
    })
}

fn user(seed: &Seed, seq: u64) -> Result<&SeededUser, tonic::Status> {
    let n = seed.users.len().max(1) as u64;
    seed.users
        .get((seq % n) as usize)
        .ok_or_else(|| tonic::Status::internal("no seeded users"))
}

async fn signing_keys(mut c: IdentityServiceClient<Channel>) -> Result<(), tonic::Status> {
    c.list_signing_keys(ListSigningKeysRequest {})
        .await
        .map(|_| ())
}

async fn profile_read(
    mut c: IdentityServiceClient<Channel>,
    seed: &Seed,
    seq: u64,
) -> Result<(), tonic::Status> {
    let u = user(seed, seq)?;
    c.get_profile(bearer(GetProfileRequest {}, &u.access_token)?)
        .await
        .map(|_| ())
}

async fn profile_update(
    mut c: IdentityServiceClient<Channel>,
    seed: &Seed,
    seq: u64,
) -> Result<(), tonic::Status> {
    let u = user(seed, seq)?;
    // Alternating names, so that every update changes the row.
    let given_name = if (seq / seed.users.len().max(1) as u64).is_multiple_of(2) {
        "Load"
    } else {
        "Loaded"
    };
    let msg = UpdateProfileRequest {
        user: Some(User {
            given_name: given_name.to_owned(),
            ..User::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["given_name".to_owned()],
        }),
    };
    let mut req = bearer(msg, &u.access_token)?;
    let key = uuid::Uuid::new_v4().to_string();
    req.metadata_mut().insert(
        "idempotency-key",
        key.parse()
            .map_err(|_| tonic::Status::internal("idempotency key"))?,
    );
    c.update_profile(req).await.map(|_| ())
}

async fn refresh(
    mut c: IdentityServiceClient<Channel>,
    seed: &Seed,
    seq: u64,
) -> Result<(), tonic::Status> {
    let n = seed.chains.len() as u64;
    let chain = seed
        .chains
        .get((seq % n.max(1)) as usize)
        .ok_or_else(|| tonic::Status::internal("no refresh chains seeded"))?;
    let mut current = chain.lock().await;
    let tokens = c
        .refresh_session(RefreshSessionRequest {
            refresh_token: current.clone(),
        })
        .await?
        .into_inner();
    *current = tokens.refresh_token;
    Ok(())
}

async fn login_op(
    mut c: IdentityServiceClient<Channel>,
    seed: &Seed,
    seq: u64,
) -> Result<(), tonic::Status> {
    let u = user(seed, seq)?;
    let resp = c
        .login(LoginRequest {
            email: u.email.clone(),
            password: PASSWORD.to_owned(),
        })
        .await?
        .into_inner();
    match resp.result {
        Some(login_response::Result::Tokens(_)) => Ok(()),
        _ => Err(tonic::Status::internal("Login returned no tokens")),
    }
}
