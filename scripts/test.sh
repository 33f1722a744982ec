#!/usr/bin/env bash
# The one test command: sets up what the tests need on a fresh Debian machine, then runs
# formatting and lint checks and the whole test suite.
#
# PostgreSQL: uses $DATABASE_URL when set; else a server already listening on 127.0.0.1:5432;
# else starts a throwaway cluster from the installed binaries (installing the `postgresql`
# package when absent) and stops it at the end.
# Vault: the key tests run against the in-process Vault API double. The live suite (the same
# tests, `*_live`, marked #[ignore] so that a run without a Vault reports them as skipped, never
# as passed) runs afterwards against a real Vault when VAULT_ADDR and VAULT_TOKEN are set
# (passed through untouched); the script says which.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

started_pg=""
cleanup() {
  if [ -n "$started_pg" ]; then
    log "stopping the throwaway PostgreSQL cluster"
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$started_pg" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$started_pg"
  fi
}
trap cleanup EXIT

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

find_pg_bin() {
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  return 1
}

if [ -z "${DATABASE_URL:-}" ]; then
  if pg_listening 127.0.0.1 5432; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
    log "using the PostgreSQL on 127.0.0.1:5432"
  else
    if ! pg_bin=$(find_pg_bin); then
      log "installing PostgreSQL (Debian package)"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
      pg_bin=$(find_pg_bin)
    fi
    port=55439
    started_pg=$(mktemp -d /tmp/carehub-test-pg.XXXXXX)
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$started_pg"
    log "starting a throwaway PostgreSQL cluster on 127.0.0.1:$port"
    as_pg "$pg_bin/initdb" -D "$started_pg" -U postgres --auth=trust --no-instructions >/dev/null
    as_pg "$pg_bin/pg_ctl" -D "$started_pg" -l "$started_pg/server.log" -w \
      -o "-p $port -c listen_addresses=127.0.0.1 -k $started_pg -c max_connections=300" start >/dev/null
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  fi
else
  log "using DATABASE_URL from the environment"
fi

# Databases left behind by crashed test runs.
if command -v psql >/dev/null; then
  psql "$DATABASE_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'carehub_test_%'" 2>/dev/null |
    while read -r db; do psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true; done
  # ... and their roles (the platform migration's "<database>_app", test login roles).
  psql "$DATABASE_URL" -Atqc "SELECT rolname FROM pg_roles WHERE rolname LIKE 'carehub\_test\_%'" 2>/dev/null |
    while read -r role; do psql "$DATABASE_URL" -qc "DROP ROLE IF EXISTS \"$role\"" >/dev/null 2>&1 || true; done
fi

live_vault=""
if [ -n "${VAULT_ADDR:-}" ] && [ -n "${VAULT_TOKEN:-}" ]; then
  live_vault=1
  log "VAULT_ADDR and VAULT_TOKEN are set: the live Vault tests (*_live) will run against $VAULT_ADDR"
else
  log "VAULT_ADDR/VAULT_TOKEN not set: the live Vault tests (*_live) are skipped (reported as ignored); the Vault API double still runs"
fi

log "Helm chart and k8s/ (offline: render, lint, validate, invariants)"
bash scripts/check-chart.sh

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "tests"
status=0
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --locked --no-fail-fast || status=$?
else
  cargo test --workspace --locked --no-fail-fast || status=$?
fi

# The live Vault suite: the ignored `*_live` tests (modules vault_keys and vault_pki of the
# platform's one test binary, `it`), only with a Vault.
live_tests=(--test it)
if [ -n "$live_vault" ]; then
  log "live Vault tests against $VAULT_ADDR"
  if command -v cargo-nextest >/dev/null; then
    cargo nextest run -p carehub-platform "${live_tests[@]}" --locked --no-fail-fast \
      --run-ignored ignored-only -E 'test(/_live$/)' || status=$?
  else
    cargo test -p carehub-platform "${live_tests[@]}" --locked --no-fail-fast -- --ignored _live \
      || status=$?
  fi
else
  log "live Vault tests skipped: VAULT_ADDR and VAULT_TOKEN are not set"
fi
exit "$status"
