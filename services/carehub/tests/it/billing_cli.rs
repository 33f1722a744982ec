//! `carehub billing reconcile [-c config] [--set k=v]`: wired into the binary and its `--help`,
//! loading billing's configuration with the binary's loader (an invalid one is refused before
//! anything is touched). What a pass finds, and the exit status 1 for a ledger that violates an
//! invariant, is billing's (`carehub_billing::reconcile::run_offline`), tested with billing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn carehub(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_carehub"))
        .args(args)
        .env_remove("CAREHUB_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn help_lists_billing_reconcile() {
    let out = carehub(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("billing"), "{help}");
    assert!(help.contains("carehub billing reconcile"), "{help}");

    let out = carehub(&["billing", "reconcile", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for what in ["--config", "--set", "exits 1"] {
        assert!(help.contains(what), "{what} not in {help}");
    }
}

#[test]
fn an_invalid_configuration_is_refused_before_reconciling() {
    // Billing refuses a configuration without identity's endpoint (as `serve` does).
    let out = carehub(&[
        "billing",
        "reconcile",
        "--set",
        "server.database.url=postgres://nobody@127.0.0.1:1/none",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loading billing's configuration"), "{err}");
    assert!(err.contains("identity_endpoint"), "{err}");

    // A setting billing does not know.
    let out = carehub(&["billing", "reconcile", "--set", "billing.no_such_setting=1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no_such_setting"), "{err}");
}
