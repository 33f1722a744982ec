//! The entry points over a list of services: the binary's [`main`] and, for tests, [`run_args`].

use std::future::Future;

use anyhow::Context as _;
use carehub_platform::kit::ServiceDef;
use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{CommandFactory as _, FromArgMatches as _};
use futures::FutureExt as _;

use crate::{Cli, ConfigArgs};

/// Workloads that call services without being one here yet: the gateway, the services
/// identity's policy already names as callers, the operator CLI.
const CALLER_WORKLOADS: &[&str] = &[
    "gateway",
    "scheduling",
    "messaging",
    "records",
    "billing",
    "admin-cli",
];

/// Workloads that get a development certificate: every service of `services` and the callers.
pub fn dev_workloads(services: &[&dyn ServiceDef]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = services.iter().map(|s| s.name()).collect();
    for caller in CALLER_WORKLOADS {
        if !names.contains(caller) {
            names.push(caller);
        }
    }
    names
}

/// An error that only sets the exit status: what went wrong was printed already.
#[derive(Debug)]
pub struct Exit(pub i32);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// The command line over `services`: `serve`, `migrate`, `health --service`, `audit ... --service`
/// and `outbox ... --service` accept (and `--help` lists) exactly these.
pub fn command(services: &[&dyn ServiceDef]) -> clap::Command {
    let values = || {
        PossibleValuesParser::new(
            services
                .iter()
                .map(|s| PossibleValue::new(s.name()).help(s.about())),
        )
    };
    Cli::command()
        .mut_subcommand("serve", |c| {
            c.mut_arg("service", |a| a.value_parser(values()))
        })
        .mut_subcommand("migrate", |c| {
            c.mut_arg("service", |a| a.value_parser(values()))
        })
        .mut_subcommand("health", |c| {
            c.mut_arg("service", |a| a.value_parser(values()))
        })
        // The operator commands that read a service's database take the same names.
        .mut_subcommand("audit", |c| {
            c.mut_subcommand("verify", |v| {
                v.mut_arg("service", |a| a.value_parser(values()))
            })
            .mut_subcommand("events", |v| {
                v.mut_arg("service", |a| a.value_parser(values()))
            })
        })
        .mut_subcommand("outbox", |c| {
            c.mut_subcommand("list", |v| {
                v.mut_arg("service", |a| a.value_parser(values()))
            })
            .mut_subcommand("retry", |v| {
                v.mut_arg("service", |a| a.value_parser(values()))
            })
        })
}

/// The binary: parses the process's arguments over `services` and runs the command until it
/// ends (or SIGINT/SIGTERM, for `serve` and `up`).
pub fn main(services: &'static [&'static dyn ServiceDef]) -> std::process::ExitCode {
    let matches = command(services).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| {
            runtime.block_on(crate::run(
                cli,
                services,
                carehub_platform::server::shutdown_signal().boxed(),
            ))
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(Exit(code)) => std::process::ExitCode::from(u8::try_from(*code).unwrap_or(1)),
            None => {
                eprintln!("Error: {e:?}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

/// Runs the command line `args` (the first is the program name) over `services`; `serve` and
/// `up` stop when `shutdown` resolves. Parse errors and `--help` come back as errors (their
/// text is the error's).
pub async fn run_args<I, T>(
    args: I,
    services: &[&dyn ServiceDef],
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command(services).try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    crate::run(cli, services, shutdown.boxed()).await
}

/// The service `name` of `services`; clap accepted only names of the list.
pub(crate) fn service<'a>(
    services: &[&'a dyn ServiceDef],
    name: &str,
) -> anyhow::Result<&'a dyn ServiceDef> {
    carehub_platform::kit::find(services, name)
        .ok_or_else(|| anyhow::anyhow!("{name:?} is not one of this binary's services"))
}

pub(crate) fn load_config(
    def: &dyn ServiceDef,
    args: &ConfigArgs,
) -> anyhow::Result<Box<dyn carehub_platform::kit::AnyConfig>> {
    def.load_config(args.config.as_deref(), &args.overrides)
        .with_context(|| format!("loading {} configuration", def.name()))
}
