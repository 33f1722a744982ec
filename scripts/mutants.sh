#!/usr/bin/env bash
# Mutation testing of the security-critical files with cargo-mutants (https://mutants.rs):
# every line there is broken one way at a time and the relevant tests must notice.
# Not part of scripts/test.sh: it builds and tests once per mutant (hours of CPU for all groups).
#
#   scripts/mutants.sh                 every group below
#   scripts/mutants.sh auth audit      only these groups
#   MUTANTS_JOBS=2 scripts/mutants.sh  parallel builds (each one a copy of the tree)
#
# Groups, and the only tests each mutant runs (test selection kept tight on purpose):
#   auth      platform/src/auth/{mod,verified}.rs  platform unit tests
#   remote    platform/src/auth/remote.rs       its unit tests (a scripted identity) + identity's
#                                               tests/it/remote_verifier.rs (a real identity)
#   audit     platform/src/audit/{verify,chain,sequencer}.rs  platform unit tests + tests/it/audit{,_sequencer}.rs
#   crypto    platform/src/crypto/format.rs     platform unit tests + tests/it/crypto.rs
#   throttle  identity/src/domain/throttle.rs   identity unit tests + tests/it/login_concurrency.rs
#   policy    identity/src/api/policy.rs        identity tests/it/{authz,transport,accounts}.rs
#   participants messaging/src/domain/participants.rs  messaging unit tests
#   scheduling scheduling/src/domain/appointment.rs (the state machine, late cancellation),
#             scheduling/src/api/access.rs (whose appointments a caller acts on)  scheduling unit
#             tests + tests/it/booking.rs's staff-books-for-a-patient test (patient_for's glue)
#   billing   billing/src/domain/{card_data,webhook}.rs (card data refused; webhook signatures),
#             billing/src/api/access.rs (whose billing data a caller sees)  billing unit tests +
#             tests/it/{card_data,webhooks}.rs
# Each crate's integration tests are one binary (`it`); a group picks its modules with a nextest
# filter expression (no spaces in it: the arguments below are split on spaces).
#
# Mutants that survive because they are equivalent (no behaviour can tell them apart) are
# excluded, each with its reason, in .cargo/mutants.toml (exclude_re). Any other survivor
# ("MISSED") is a gap in the tests: the script exits 1 and lists it.
# Needs PostgreSQL like the tests do ($DATABASE_URL, default the local one on 5432).
# Results: target/mutants/<group>/mutants.out/{caught,missed,timeout,unviable}.txt
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

CARGO_MUTANTS_VERSION=27.1.0
if ! cargo mutants --version 2>/dev/null | grep -qx "cargo-mutants $CARGO_MUTANTS_VERSION"; then
  echo "==> installing cargo-mutants $CARGO_MUTANTS_VERSION"
  cargo install --locked cargo-mutants --version "$CARGO_MUTANTS_VERSION"
fi
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
# A build cache of its own, shared by every group (and kept between runs of this script). Not
# the project's target/: cargo keys a workspace member's artifacts by package, not by path, so
# a mutant built from the copy of the tree would reuse build-script output (the generated
# protos) of the live tree being edited meanwhile, and report its mutants unviable or worse.
export CARGO_TARGET_DIR="${MUTANTS_TARGET_DIR:-$root/target/mutants-build}"
out_root="$root/target/mutants"
jobs="${MUTANTS_JOBS:-1}"

group_args() {
  case "$1" in
    auth) echo "-f services/platform/src/auth/mod.rs -f services/platform/src/auth/verified.rs -- --lib" ;;
    # cargo-mutants 27.1.0 runs its baseline on the mutated package's tests whatever
    # --test-package says (lab.rs, run_baseline): platform has none of these, and nextest fails
    # "no tests to run". So this group skips the baseline (precheck below runs it instead) and
    # takes cargo-mutants's fallback test timeout (300 s; --timeout would clash with
    # --timeout-multiplier).
    remote) echo "-f services/platform/src/auth/remote.rs --test-package carehub-platform,carehub-identity --baseline skip -- --lib --test it -E test(/^auth::remote::tests::/)|test(/^remote_verifier::/)" ;;
    audit) echo "-f services/platform/src/audit/verify.rs -f services/platform/src/audit/chain.rs -f services/platform/src/audit/sequencer.rs -- --lib --test it -E kind(lib)|test(/^audit(_sequencer)?::/)" ;;
    crypto) echo "-f services/platform/src/crypto/format.rs -- --lib --test it -E kind(lib)|test(/^crypto::/)" ;;
    throttle) echo "-f services/identity/src/domain/throttle.rs -- --lib --test it -E kind(lib)|test(/^login_concurrency::/)" ;;
    policy) echo "-f services/identity/src/api/policy.rs -- --test it -E test(/^(authz|transport|accounts)::/)" ;;
    participants) echo "-f services/messaging/src/domain/participants.rs -- --lib" ;;
    scheduling) echo "-f services/scheduling/src/domain/appointment.rs -f services/scheduling/src/api/access.rs -- --lib --test it -E kind(lib)|test(/^booking::a_provider_who_takes_no_new_patients/)" ;;
    billing) echo "-f services/billing/src/domain/card_data.rs -f services/billing/src/domain/webhook.rs -f services/billing/src/api/access.rs -- --lib --test it -E kind(lib)|test(/^(card_data|webhooks)::/)" ;;
    *) return 1 ;;
  esac
}

groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(auth remote audit crypto throttle policy participants scheduling billing)
failed=()
for g in "${groups[@]}"; do
  if ! args=$(group_args "$g"); then
    echo "unknown group $g (auth remote audit crypto throttle policy participants scheduling billing)" >&2
    exit 2
  fi
  echo
  echo "==> mutants: $g ($args)"
  mkdir -p "$out_root/$g"
  if [ "$g" = remote ]; then
    echo "==> remote: the unmutated tests first (the baseline cargo-mutants skips)"
    if ! cargo nextest run -p carehub-platform -p carehub-identity --lib --test it \
        -E 'test(/^auth::remote::tests::/)|test(/^remote_verifier::/)'; then
      echo "==> remote: the tests fail without any mutant; fix them first" >&2
      failed+=("$g")
      continue
    fi
  fi
  # nextest: every test in a process of its own, as in scripts/test.sh (the login storm test
  # bounds its process's memory).
  # shellcheck disable=SC2086 # $args is a list of words
  if cargo mutants --test-tool nextest --no-shuffle --jobs "$jobs" --output "$out_root/$g" \
      --timeout-multiplier 3 \
      --minimum-test-timeout 120 $args; then
    echo "==> $g: no surviving mutant"
  else
    rc=$?
    failed+=("$g")
    echo "==> $g: cargo mutants exited $rc; survivors (not listed as equivalent):"
    sed 's/^/    /' "$out_root/$g/mutants.out/missed.txt" 2>/dev/null || true
    sed 's/^/    timeout: /' "$out_root/$g/mutants.out/timeout.txt" 2>/dev/null || true
  fi
done
echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "==> groups with surviving mutants: ${failed[*]}"
  exit 1
fi
echo "==> every mutant of ${groups[*]} was caught (or is listed as equivalent in .cargo/mutants.toml)"
