//! `carehub demo`: a scripted visit journey against a running suite (`carehub up`), printed step
//! by step — an admin creates a provider, who publishes availability; a patient registers,
//! verifies and signs in, books a visit, messages the provider, has the chart updated and
//! amended, gets the video token, pays the invoice, reads the access log and exports the record.
//!
//! The journey is a library ([`journey::run`] over a [`Target`]): the command prints its steps,
//! the whole-suite test runs the same journey against services it started itself.

pub mod inbox;
pub mod journey;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use carehub_platform::client::ServiceChannel;
use clap::Args;

pub use inbox::FileInbox;
pub use journey::{run as run_journey, Collect, Outcome, Reporter, Step, STEPS};

/// The five services' channels (mTLS, as the gateway) and what the journey needs beside them.
pub struct Target {
    pub identity: ServiceChannel,
    pub records: ServiceChannel,
    pub messaging: ServiceChannel,
    pub scheduling: ServiceChannel,
    pub billing: ServiceChannel,
    /// An admin who can sign in; a one-time password is changed at first login.
    pub admin: AdminLogin,
    /// Where the verification code sent to the patient is read.
    pub inbox: Arc<dyn CodeInbox>,
    /// Makes the run's emails, price code and message ids unique, so that the demo runs many
    /// times against the same suite.
    pub tag: String,
}

/// An admin's credentials.
#[derive(Clone)]
pub struct AdminLogin {
    pub email: String,
    pub password: String,
}

impl std::fmt::Debug for AdminLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminLogin")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where the journey reads the verification code identity sends to the patient.
#[async_trait::async_trait]
pub trait CodeInbox: Send + Sync {
    /// The code of the newest verification message to `to` (an email or a phone), waiting for
    /// it a bounded time (about 30 s).
    async fn verification_code(&self, to: &str) -> anyhow::Result<String>;
}

/// A step that failed: which, the RPC, and the status the service answered (no code when the
/// answer was a success that did not show what the step expects, or a wait ran out).
#[derive(Debug, Clone)]
pub struct StepFailed {
    pub step: usize,
    pub total: usize,
    pub what: &'static str,
    pub rpc: &'static str,
    pub code: Option<tonic::Code>,
    /// The `google.rpc.ErrorInfo` reason, when the status carried one.
    pub reason: Option<String>,
    pub message: String,
}

impl StepFailed {
    /// `UNAVAILABLE` (or `UNAVAILABLE CONNECT_FAILED`), or `no status` when none.
    pub fn status_text(&self) -> String {
        match (&self.code, &self.reason) {
            (Some(code), Some(reason)) => format!("{} {reason}", code_name(*code)),
            (Some(code), None) => code_name(*code).to_owned(),
            (None, _) => "no status".to_owned(),
        }
    }
}

impl std::fmt::Display for StepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step {}/{} ({}) {} failed: {}: {}",
            self.step,
            self.total,
            self.what,
            self.rpc,
            self.status_text(),
            self.message
        )
    }
}

impl std::error::Error for StepFailed {}

pub use carehub_platform::admin::code_name;

/// The services the journey talks to, in `carehub up`'s port order.
const SERVICES: [&str; 5] = ["identity", "records", "messaging", "scheduling", "billing"];

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// `carehub up`'s data directory: client certificate (gateway), CA, development keys and
    /// messaging's sandbox file are read there.
    #[arg(long, default_value = ".carehub")]
    data_dir: PathBuf,
    /// `carehub up`'s first gRPC port: identity, records, messaging, scheduling and billing
    /// listen on consecutive ports from it (the order of `carehub services`).
    #[arg(long, default_value_t = 50051)]
    grpc_port: u16,
    /// One service's endpoint instead, e.g. --endpoint billing=https://10.0.0.5:50055
    /// (repeatable).
    #[arg(long = "endpoint", value_name = "SERVICE=URL", value_parser = parse_endpoint)]
    endpoints: Vec<(String, String)>,
    /// SPIFFE trust domain of the certificates.
    #[arg(long, default_value = "carehub.local")]
    trust_domain: String,
    /// The PostgreSQL server of `carehub up --database-url` (the demo creates its admin in
    /// identity's database); default: up's private cluster on --pg-port.
    #[arg(long, env = "CAREHUB_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Port of `carehub up`'s private PostgreSQL cluster.
    #[arg(long, default_value_t = 55432)]
    pg_port: u16,
    /// `carehub up --database-prefix`: identity's database is `<prefix>_identity`.
    #[arg(long, default_value = "carehub")]
    database_prefix: String,
    /// Sign in as this admin instead of creating one in identity's database.
    #[arg(long, requires = "admin_password")]
    admin_email: Option<String>,
    /// That admin's password (a one-time password is changed at first login).
    #[arg(
        long,
        env = "CAREHUB_DEMO_ADMIN_PASSWORD",
        hide_env_values = true,
        requires = "admin_email"
    )]
    admin_password: Option<String>,
    /// The file messaging's sandboxes append to (default:
    /// `<data-dir>/messaging/sandbox-outbox.jsonl`, as `carehub up` sets it).
    #[arg(long)]
    sandbox_file: Option<PathBuf>,
    /// Tag of this run's emails and codes (default: random).
    #[arg(long)]
    tag: Option<String>,
}

fn parse_endpoint(s: &str) -> Result<(String, String), String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("expected SERVICE=URL, got {s:?}"))?;
    let name = name.trim();
    if !SERVICES.contains(&name) {
        return Err(format!(
            "{name:?} is not one of {} (the services the demo calls)",
            SERVICES.join(", ")
        ));
    }
    Ok((name.to_owned(), url.trim().to_owned()))
}

/// The endpoint of each service: --endpoint, else `carehub up`'s port for it.
fn endpoints(args: &DemoArgs) -> anyhow::Result<Vec<(&'static str, String)>> {
    SERVICES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let given = args
                .endpoints
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, url)| url.clone());
            let url = match given {
                Some(url) => url,
                None => {
                    let port = u16::try_from(i)
                        .ok()
                        .and_then(|i| args.grpc_port.checked_add(i))
                        .with_context(|| format!("--grpc-port leaves no port for {name}"))?;
                    format!("https://127.0.0.1:{port}")
                }
            };
            Ok((*name, url))
        })
        .collect()
}

/// Creates the run's admin in identity's database, as `carehub admin create` does: (email,
/// one-time password).
async fn create_admin(
    args: &DemoArgs,
    data_dir: &std::path::Path,
    tag: &str,
) -> anyhow::Result<AdminLogin> {
    use carehub_identity::config::IdentityConfig;
    use carehub_platform::kit::ServiceDef;
    let server_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("postgres://postgres@127.0.0.1:{}/postgres", args.pg_port));
    let database = format!("{}_identity", args.database_prefix);
    let def: &dyn ServiceDef = &carehub_identity::SERVICE;
    let mut cfg = def
        .dev_config()
        .into_any()
        .downcast::<IdentityConfig>()
        .map_err(|_| anyhow::anyhow!("identity's development configuration is not identity's"))?;
    cfg.server.database.url = Some(secrecy::SecretString::from(
        carehub_platform::db::url_with_database(&server_url, &database)?,
    ));
    cfg.server.database.max_connections = 2;
    cfg.server.database.min_connections = 0;
    cfg.server.keys.file = data_dir.join("keys/dev-keys.json");
    let email = format!("demo-{tag}-admin@example.org");
    let (_, password) = crate::admin::create_account(
        &cfg,
        carehub_platform::auth::Role::Admin,
        &email,
        "Demo",
        "Administrator",
    )
    .await
    .with_context(|| {
        format!(
            "creating the demo's admin in identity's database {database} (is `carehub up` running with the same --database-url/--database-prefix? or pass --admin-email/--admin-password)"
        )
    })?;
    Ok(AdminLogin { email, password })
}

/// Prints each step as `[ n/N] rpc ... ok  outcome`.
struct Printer;

impl Reporter for Printer {
    fn step(&mut self, n: usize, rpc: &str, outcome: &str) {
        println!("[{n:>2}/{}] {rpc} ... ok  {outcome}", STEPS.len());
    }
}

fn new_tag() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id.get(..8).unwrap_or(&id).to_owned()
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let data_dir = std::path::absolute(&args.data_dir)?;
    let tag = args.tag.clone().unwrap_or_else(new_tag);
    let tls = crate::loadgen::gateway_tls(&data_dir, None, None, None, &args.trust_domain)?;
    // Lazy channels: a service that is down fails the first step that calls it, by name.
    let mut channels = Vec::new();
    for (name, url) in endpoints(&args)? {
        let channel = carehub_platform::client::connect_lazy(&url, &tls, name)
            .with_context(|| format!("{name}'s endpoint {url}"))?;
        channels.push(channel);
    }
    let [identity, records, messaging, scheduling, billing]: [ServiceChannel; 5] = channels
        .try_into()
        .map_err(|_| anyhow::anyhow!("five endpoints expected"))?;
    let admin = match (&args.admin_email, &args.admin_password) {
        (Some(email), Some(password)) => AdminLogin {
            email: email.clone(),
            password: password.clone(),
        },
        _ => create_admin(&args, &data_dir, &tag).await?,
    };
    let sandbox = args
        .sandbox_file
        .clone()
        .unwrap_or_else(|| crate::up::sandbox_outbox_path(&data_dir));
    let target = Target {
        identity,
        records,
        messaging,
        scheduling,
        billing,
        admin,
        inbox: Arc::new(FileInbox::new(sandbox)),
        tag,
    };
    println!("carehub demo {}: {} steps", target.tag, STEPS.len());
    match journey::run(&target, &mut Printer).await {
        Ok(out) => {
            println!();
            println!("all {} steps passed", STEPS.len());
            println!("  patient      {}  ({})", out.patient_id, out.patient_email);
            println!(
                "  provider     {}  ({})",
                out.provider_id, out.provider_email
            );
            println!(
                "  appointment  {}  (follow-up {})",
                out.appointment_id, out.follow_up_appointment_id
            );
            println!("  conversation {}", out.conversation_id);
            println!(
                "  invoice      {}  paid by {}",
                out.invoice_id, out.payment_id
            );
            println!(
                "  booking trace {}  (find it in your tracing backend: scheduling, records, messaging)",
                out.booking_trace_id
            );
            Ok(())
        }
        Err(failed) => {
            println!(
                "[{:>2}/{}] {} ... FAILED  {}: {}",
                failed.step,
                failed.total,
                failed.rpc,
                failed.status_text(),
                failed.message
            );
            eprintln!("demo failed at {failed}");
            Err(crate::Exit(1).into())
        }
    }
}
