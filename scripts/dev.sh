#!/usr/bin/env bash
# Runs carehub locally: installs what a fresh Debian/Ubuntu machine lacks (PostgreSQL server
# binaries), builds the binary and starts every service with `carehub up`.
# Extra arguments go to `carehub up` (see `carehub up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

have_pg() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; }
if [ -z "${CAREHUB_DATABASE_URL:-}" ] && ! have_pg; then
  echo "==> installing PostgreSQL (needs root or sudo)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
cargo build --locked -p carehub
exec target/debug/carehub up "$@"
