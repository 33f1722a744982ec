#!/usr/bin/env bash
# Installs the two independent FHIR R4 checkers the records tests run over an export, pinned,
# once, into $CAREHUB_FHIR_DIR (default ~/.cache/carehub/fhir-r4):
#   - PyPI fhir.resources 6.4.0 (the last release on FHIR R4 4.0.1: structure and cardinality),
#     in a venv, with the pydantic 1.x it needs;
#   - npm fhir 4.12.0 (R4, `errorOnUnexpected`, checks value sets).
# Prints the directory. Needs python3 (venv) and npm.
set -euo pipefail
dir="${CAREHUB_FHIR_DIR:-$HOME/.cache/carehub/fhir-r4}"
marker="$dir/.installed-fhir.resources-6.4.0-fhir-4.12.0"
if [ ! -f "$marker" ]; then
  mkdir -p "$dir"
  # Test runners start one process per test: the first installs, the others wait for it here.
  # Without the lock a second install ran beside the first on a fresh machine, and a test read
  # a half-written node_modules (Cannot find module './parseConformance').
  exec 9>"$dir/.lock"
  flock 9
  if [ ! -f "$marker" ]; then
    rm -rf "$dir/venv" "$dir/node_modules"
    python3 -m venv "$dir/venv" >&2
    "$dir/venv/bin/pip" install -q --disable-pip-version-check \
      fhir.resources==6.4.0 pydantic==1.10.27 email-validator==2.4.0 >&2
    (cd "$dir" && npm install --silent --no-audit --no-fund fhir@4.12.0 >&2)
    touch "$marker"
  fi
fi
echo "$dir"
