//! `carehub health --service S`: asks a running service for its `grpc.health.v1` status over
//! mTLS and exits 0 only when it answers SERVING.
//!
//! The gRPC port accepts nothing but mTLS, so neither kubelet's native gRPC probe nor a plain
//! `grpc_health_probe` can reach it; this command is what `helm test`, an SRE at a shell and
//! scripts use instead. Inside a service's own container the certificate flags default to the
//! `CAREHUB_SERVER__TLS__*` variables the chart sets, so
//! `kubectl exec deploy/carehub-identity -- carehub health --service identity --addr 127.0.0.1:50051`
//! works as it is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use carehub_platform::tls::TlsStore;
use clap::Args;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The service to check (one of the binary's list of services; `--help` lists them).
    #[arg(long)]
    pub service: String,
    /// Where it listens for gRPC; default `carehub-<service>:50051` (its Kubernetes Service).
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// The DNS name its certificate must carry; default: the service name, as every carehub
    /// client expects.
    #[arg(long)]
    pub server_name: Option<String>,
    /// gRPC service whose status is asked; default "" (the whole server).
    #[arg(long, default_value = "")]
    pub grpc_service: String,
    /// CA bundle (PEM) the server's certificate must chain to.
    #[arg(long, env = "CAREHUB_SERVER__TLS__CA_FILE")]
    pub ca: PathBuf,
    /// Our client certificate (PEM); any workload of the trust domain may ask for health.
    #[arg(long, env = "CAREHUB_SERVER__TLS__CERT_FILE")]
    pub cert: PathBuf,
    /// Our client certificate's private key (PEM).
    #[arg(long, env = "CAREHUB_SERVER__TLS__KEY_FILE")]
    pub key: PathBuf,
    /// Seconds to wait for the connection and the answer together.
    #[arg(long, default_value_t = 5)]
    pub timeout_secs: u64,
}

fn read_pem(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))
}

/// Checks `args.service` and returns the status line to print on success.
pub async fn check(args: &HealthArgs) -> anyhow::Result<String> {
    let addr = args
        .addr
        .clone()
        .unwrap_or_else(|| format!("carehub-{}:50051", args.service));
    let server_name = args.server_name.as_deref().unwrap_or(&args.service);
    let store = TlsStore::from_pem(
        &read_pem(&args.cert, "client certificate")?,
        &read_pem(&args.key, "client key")?,
        &read_pem(&args.ca, "CA bundle")?,
        // Only used to name peers; a client that checks health names none.
        "carehub.local",
    )
    .context("loading the client TLS material")?;
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let service = args.service.clone();
    let ask = async {
        let channel = carehub_platform::client::connect(&addr, &store, server_name).await?;
        let mut client = HealthClient::new(channel);
        let answer = client
            .check(HealthCheckRequest {
                service: args.grpc_service.clone(),
            })
            .await;
        Ok::<_, anyhow::Error>(answer)
    };
    let answer = match tokio::time::timeout(timeout, ask).await {
        Err(_) => anyhow::bail!(
            "{service} at {addr}: no answer within {} s",
            timeout.as_secs()
        ),
        Ok(Err(connect)) => {
            return Err(connect.context(format!("{service} at {addr}: cannot connect over mTLS")))
        }
        Ok(Ok(answer)) => answer,
    };
    let status = match answer {
        Ok(response) => response.into_inner().status,
        Err(status) => anyhow::bail!(
            "{service} at {addr}: health check failed: {:?}: {}{}",
            status.code(),
            status.message(),
            causes(status.message(), &status)
        ),
    };
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => Ok(format!("{service} at {addr}: SERVING")),
        other => {
            let status = match other {
                Ok(ServingStatus::NotServing) => "NOT_SERVING",
                Ok(ServingStatus::ServiceUnknown) => "SERVICE_UNKNOWN",
                _ => "UNKNOWN",
            };
            anyhow::bail!("{service} at {addr}: {status}")
        }
    }
}

/// `": cause: cause..."` for the sources of `err` (the TLS alert behind a failed call, say),
/// without repeating a text already shown (`shown` is what the caller prints of `err` itself).
fn causes(shown: &str, err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut seen = vec![shown.to_owned()];
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !seen.iter().any(|s| s.contains(&text)) {
            out.push_str(": ");
            out.push_str(&text);
            seen.push(text);
        }
        next = e.source();
    }
    out
}
