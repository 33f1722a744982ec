//! The authorization check of a service, in two parts:
//!
//! 1. **Every RPC has a rule**: [`rpcs_without_rule`] enumerates the methods of the mounted
//!    services from the descriptor set (`carehub_proto::FILE_DESCRIPTOR_SET`) and answers those
//!    no [`Policy`] names; [`assert_every_rpc_has_a_rule`] fails the test on any (an RPC without
//!    a rule is refused at run time, but it is a wiring mistake the build should not ship), and
//!    on any rule that names no RPC (a renamed method leaves a stale rule behind).
//! 2. **The matrix**: a [`Matrix`] says, for every RPC and every kind of caller (a workload, maybe
//!    a user of a role, acting on their own or on another user's data), whether the call is
//!    allowed or denied and why. [`Matrix::run`] makes each call and compares: *allowed* is any
//!    answer but PERMISSION_DENIED or UNAUTHENTICATED (the call got past authorization; the
//!    request may still be refused for what it asks), *denied* is one of those two with the
//!    expected code and `google.rpc.ErrorInfo` reason.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;

use carehub_platform::auth::{Policy, Role};
use prost::Message as _;
use tonic::Code;

/// The gRPC paths (`/package.Service/Method`) of `service` (its full name) in `descriptor_set`.
/// Panics when the set has no such service.
pub fn rpc_paths(descriptor_set: &[u8], service: &str) -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(descriptor_set)
        .expect("decoding the file descriptor set");
    for file in &set.file {
        for svc in &file.service {
            let full = match file.package() {
                "" => svc.name().to_owned(),
                package => format!("{package}.{}", svc.name()),
            };
            if full == service {
                return svc
                    .method
                    .iter()
                    .map(|m| format!("/{full}/{}", m.name()))
                    .collect();
            }
        }
    }
    panic!("no service {service} in the descriptor set");
}

/// The RPCs of `services` that none of `policies` has a rule for, sorted.
pub fn rpcs_without_rule(
    descriptor_set: &[u8],
    services: &[&str],
    policies: &[&Policy],
) -> Vec<String> {
    let mut missing: Vec<String> = services
        .iter()
        .flat_map(|s| rpc_paths(descriptor_set, s))
        .filter(|path| policies.iter().all(|p| p.get(path).is_none()))
        .collect();
    missing.sort();
    missing
}

/// The rules of `policies` that name no RPC of `services`, sorted.
pub fn rules_without_rpc(
    descriptor_set: &[u8],
    services: &[&str],
    policies: &[&Policy],
) -> Vec<String> {
    let rpcs: BTreeSet<String> = services
        .iter()
        .flat_map(|s| rpc_paths(descriptor_set, s))
        .collect();
    let mut stale: Vec<String> = policies
        .iter()
        .flat_map(|p| p.paths())
        .filter(|path| !rpcs.contains(*path))
        .map(str::to_owned)
        .collect();
    stale.sort();
    stale
}

/// Fails unless every RPC of `services` has a rule in one of `policies` and every rule names an
/// RPC of `services`.
pub fn assert_every_rpc_has_a_rule(descriptor_set: &[u8], services: &[&str], policies: &[&Policy]) {
    let missing = rpcs_without_rule(descriptor_set, services, policies);
    assert!(
        missing.is_empty(),
        "RPCs without a policy rule (add one to the service's policy): {missing:#?}"
    );
    let stale = rules_without_rpc(descriptor_set, services, policies);
    assert!(
        stale.is_empty(),
        "policy rules naming no RPC of {services:?}: {stale:#?}"
    );
}

/// `policy` without its rule for `path` (to show that the check above fails).
pub fn without_rule(policy: &Policy, path: &str) -> Policy {
    let mut out = Policy::new();
    for p in policy.paths().filter(|p| *p != path) {
        let rule = policy.get(p).expect("a listed path has a rule");
        let (service, method) = p
            .trim_start_matches('/')
            .rsplit_once('/')
            .expect("paths are /service/method");
        let workloads: Vec<&str> = rule.workloads.iter().map(String::as_str).collect();
        out = out.rule(service, method, &workloads, rule.user.clone());
    }
    out
}

/// Whose data a caller acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whose {
    /// Their own (or no one's: the RPC has no subject).
    Own,
    /// Another user's.
    Other,
}

/// One kind of caller: the workload its client certificate names, the role of the user whose
/// token it sends (none: no token), and whose data it asks about.
#[derive(Clone, Debug)]
pub struct CallerKind {
    pub label: &'static str,
    pub workload: &'static str,
    pub user: Option<Role>,
    pub whose: Whose,
}

impl CallerKind {
    /// A workload calling on its own behalf (no user token).
    pub fn workload(label: &'static str, workload: &'static str) -> Self {
        CallerKind {
            label,
            workload,
            user: None,
            whose: Whose::Own,
        }
    }

    /// A user of `role` through `workload`, acting on `whose` data.
    pub fn user(label: &'static str, workload: &'static str, role: Role, whose: Whose) -> Self {
        CallerKind {
            label,
            workload,
            user: Some(role),
            whose,
        }
    }
}

/// What a call must come to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Past authorization: any answer but PERMISSION_DENIED or UNAUTHENTICATED.
    Allow,
    /// Past authorization, and then refused with this code (not PERMISSION_DENIED or
    /// UNAUTHENTICATED): e.g. NOT_FOUND for another user's session, which a service does not
    /// admit exists.
    Refused(Code),
    /// Refused with this code (PERMISSION_DENIED or UNAUTHENTICATED) and `ErrorInfo` reason.
    Deny(Code, &'static str),
}

fn is_denial(code: Code) -> bool {
    matches!(code, Code::PermissionDenied | Code::Unauthenticated)
}

impl Outcome {
    /// Whether `result` is this outcome.
    pub fn matches(self, result: &Result<(), tonic::Status>) -> bool {
        match (self, result) {
            (Outcome::Allow, Ok(())) => true,
            (Outcome::Allow, Err(s)) => !is_denial(s.code()),
            (Outcome::Refused(code), Err(s)) => s.code() == code,
            (Outcome::Deny(code, reason), Err(s)) => {
                s.code() == code && crate::grpc::reason(s).as_deref() == Some(reason)
            }
            (Outcome::Refused(_) | Outcome::Deny(..), Ok(())) => false,
        }
    }
}

/// What a call came to, for a report: `ok`, or the code and reason.
pub fn describe(result: &Result<(), tonic::Status>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(s) => format!(
            "{:?} {} ({})",
            s.code(),
            crate::grpc::reason(s).unwrap_or_default(),
            s.message()
        ),
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Allow => f.write_str("allow"),
            Outcome::Refused(code) => write!(f, "allow, then {code:?}"),
            Outcome::Deny(code, reason) => write!(f, "deny {code:?} {reason}"),
        }
    }
}

/// Refused by the workload list of the rule (or for naming no workload).
pub const WORKLOAD: Outcome = Outcome::Deny(Code::PermissionDenied, "WORKLOAD_NOT_ALLOWED");
/// Refused for the user's role.
pub const ROLE: Outcome = Outcome::Deny(Code::PermissionDenied, "ROLE_NOT_ALLOWED");
/// Refused for a missing, invalid, expired or revoked token.
pub const TOKEN: Outcome = Outcome::Deny(Code::Unauthenticated, "UNAUTHENTICATED_TOKEN");

/// A call whose outcome differs from the table.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub rpc: String,
    pub caller: &'static str,
    pub expected: Outcome,
    /// What it came to ([`describe`]).
    pub got: String,
}

/// The authorization matrix: RPCs × caller kinds, each cell an [`Outcome`] or not applicable.
pub struct Matrix {
    callers: Vec<CallerKind>,
    legend: BTreeMap<char, Option<Outcome>>,
    rows: Vec<(String, Vec<Option<Outcome>>)>,
}

impl Matrix {
    /// A matrix over `callers` (its columns), with the legend `.` allow, `W` [`WORKLOAD`],
    /// `R` [`ROLE`], `T` [`TOKEN`], `-` not applicable (the call is not made).
    pub fn new(callers: Vec<CallerKind>) -> Self {
        let legend = BTreeMap::from([
            ('.', Some(Outcome::Allow)),
            ('W', Some(WORKLOAD)),
            ('R', Some(ROLE)),
            ('T', Some(TOKEN)),
            ('-', None),
        ]);
        Matrix {
            callers,
            legend,
            rows: Vec::new(),
        }
    }

    /// Adds `symbol` to the legend (a service's own refusals, e.g. of another user's data).
    pub fn legend(mut self, symbol: char, outcome: Outcome) -> Self {
        self.legend.insert(symbol, Some(outcome));
        self
    }

    pub fn callers(&self) -> &[CallerKind] {
        &self.callers
    }

    /// A row: `rpc` is the gRPC path; `cells` has one legend symbol per caller (spaces are
    /// ignored, to line the table up).
    pub fn row(mut self, rpc: &str, cells: &str) -> Self {
        let cells: Vec<Option<Outcome>> = cells
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| {
                *self
                    .legend
                    .get(&c)
                    .unwrap_or_else(|| panic!("{rpc}: {c:?} is not in the legend"))
            })
            .collect();
        assert_eq!(
            cells.len(),
            self.callers.len(),
            "{rpc}: {} cells for {} callers",
            cells.len(),
            self.callers.len()
        );
        assert!(
            self.rows.iter().all(|(r, _)| r != rpc),
            "{rpc} has two rows"
        );
        self.rows.push((rpc.to_owned(), cells));
        self
    }

    /// Fails unless the rows are exactly `rpcs` (every RPC of the service, e.g. from
    /// [`rpc_paths`]): an RPC added without a row fails here.
    pub fn assert_covers(&self, rpcs: &[String]) {
        let rows: BTreeSet<&str> = self.rows.iter().map(|(r, _)| r.as_str()).collect();
        let rpcs: BTreeSet<&str> = rpcs.iter().map(String::as_str).collect();
        let missing: Vec<_> = rpcs.difference(&rows).collect();
        let extra: Vec<_> = rows.difference(&rpcs).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "matrix rows vs RPCs: no row for {missing:?}; rows for no RPC {extra:?}"
        );
    }

    /// Makes every applicable call (`call(rpc, caller)`, rows in order, callers left to right)
    /// and answers the calls whose outcome differs from the table.
    pub async fn check<F, Fut>(&self, mut call: F) -> Vec<Mismatch>
    where
        F: FnMut(String, CallerKind) -> Fut,
        Fut: Future<Output = Result<(), tonic::Status>>,
    {
        let mut mismatches = Vec::new();
        for (rpc, cells) in &self.rows {
            for (caller, expected) in self.callers.iter().zip(cells) {
                let Some(expected) = *expected else { continue };
                let result = call(rpc.clone(), caller.clone()).await;
                if !expected.matches(&result) {
                    mismatches.push(Mismatch {
                        rpc: rpc.clone(),
                        caller: caller.label,
                        expected,
                        got: describe(&result),
                    });
                }
            }
        }
        mismatches
    }

    /// [`Matrix::check`], failing the test with every mismatch.
    pub async fn run<F, Fut>(&self, call: F)
    where
        F: FnMut(String, CallerKind) -> Fut,
        Fut: Future<Output = Result<(), tonic::Status>>,
    {
        let mismatches = self.check(call).await;
        let report: Vec<String> = mismatches
            .iter()
            .map(|m| {
                format!(
                    "{} as {}: expected {}, got {}",
                    m.rpc, m.caller, m.expected, m.got
                )
            })
            .collect();
        assert!(
            report.is_empty(),
            "{} calls differ from the authorization matrix:\n{}",
            report.len(),
            report.join("\n")
        );
    }

    /// The number of calls [`Matrix::check`] makes.
    pub fn calls(&self) -> usize {
        self.rows
            .iter()
            .map(|(_, cells)| cells.iter().flatten().count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carehub_platform::audit::service::policy as audit_policy;
    use carehub_proto::FILE_DESCRIPTOR_SET;

    const AUDIT_LOG: &str = "carehub.audit.v1.AuditLog";

    #[test]
    fn the_descriptor_lists_every_method() {
        let mut paths = rpc_paths(FILE_DESCRIPTOR_SET, AUDIT_LOG);
        paths.sort();
        assert_eq!(
            paths,
            [
                "/carehub.audit.v1.AuditLog/ListEvents",
                "/carehub.audit.v1.AuditLog/VerifyChain"
            ]
        );
    }

    #[test]
    fn a_missing_rule_and_a_stale_rule_are_found() {
        let full = audit_policy();
        assert!(rpcs_without_rule(FILE_DESCRIPTOR_SET, &[AUDIT_LOG], &[&full]).is_empty());
        assert_every_rpc_has_a_rule(FILE_DESCRIPTOR_SET, &[AUDIT_LOG], &[&full]);

        let gap = without_rule(&full, "/carehub.audit.v1.AuditLog/VerifyChain");
        assert_eq!(
            rpcs_without_rule(FILE_DESCRIPTOR_SET, &[AUDIT_LOG], &[&gap]),
            ["/carehub.audit.v1.AuditLog/VerifyChain"]
        );
        let failed = std::panic::catch_unwind(|| {
            assert_every_rpc_has_a_rule(FILE_DESCRIPTOR_SET, &[AUDIT_LOG], &[&gap])
        });
        assert!(failed.is_err(), "a missing rule must fail the check");

        let stale = full.clone().rule(
            AUDIT_LOG,
            "Gone",
            &["records"],
            carehub_platform::auth::UserRule::WorkloadOnly,
        );
        assert_eq!(
            rules_without_rpc(FILE_DESCRIPTOR_SET, &[AUDIT_LOG], &[&stale]),
            ["/carehub.audit.v1.AuditLog/Gone"]
        );
    }

    fn two_callers() -> Matrix {
        Matrix::new(vec![
            CallerKind::workload("records", "records"),
            CallerKind::user("patient", "gateway", Role::Patient, Whose::Own),
        ])
    }

    #[tokio::test]
    async fn the_runner_reports_every_cell_that_differs() {
        let m = two_callers().row("/s.S/A", ". W").row("/s.S/B", "R -");
        assert_eq!(m.calls(), 3);
        // A lets everyone in; B refuses with the wrong code.
        let mismatches = m
            .check(|rpc, _caller| async move {
                if rpc.ends_with("/A") {
                    Ok(())
                } else {
                    Err(carehub_platform::errors::status(
                        Code::Unauthenticated,
                        carehub_proto::common::v1::ErrorReason::UnauthenticatedToken,
                        "no",
                    ))
                }
            })
            .await;
        let got: Vec<(String, &str, String)> = mismatches
            .iter()
            .map(|m| (m.rpc.clone(), m.caller, m.got.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("/s.S/A".to_owned(), "patient", "ok".to_owned()),
                (
                    "/s.S/B".to_owned(),
                    "records",
                    "Unauthenticated UNAUTHENTICATED_TOKEN (no)".to_owned()
                ),
            ]
        );
        // A refusal that is not an authorization refusal counts as allowed; a refusal the
        // table names must be that one.
        let m = two_callers()
            .legend('n', Outcome::Refused(Code::NotFound))
            .row("/s.S/A", ". n");
        let mismatches = m
            .check(|_, _| async { Err(tonic::Status::invalid_argument("bad")) })
            .await;
        assert_eq!(mismatches.len(), 1);
        assert_eq!(mismatches[0].caller, "patient");
    }

    #[test]
    #[should_panic(expected = "no row for")]
    fn an_rpc_without_a_row_fails() {
        two_callers()
            .row("/s.S/A", ". W")
            .assert_covers(&["/s.S/A".to_owned(), "/s.S/B".to_owned()]);
    }
}
