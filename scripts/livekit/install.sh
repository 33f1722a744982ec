#!/usr/bin/env bash
# Installs the independent checker of carehub's video join tokens, pinned, once, into
# $CAREHUB_LIVEKIT_DIR (default ~/.cache/carehub/livekit-api): PyPI livekit-api 1.2.2 (its
# TokenVerifier, over PyJWT) and its dependencies, exactly as scripts/livekit/requirements.txt
# pins them, in a venv. Prints the directory. Needs python3 (venv) and access to PyPI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${CAREHUB_LIVEKIT_DIR:-$HOME/.cache/carehub/livekit-api}"
# The marker names the pins' hash: changing requirements.txt reinstalls.
pins="$(sha256sum "$here/requirements.txt" | cut -c1-16)"
marker="$dir/.installed-livekit-api-1.2.2-$pins"
if [ ! -f "$marker" ]; then
  mkdir -p "$dir"
  # Test runners start one process per test: the first installs, the others wait for it here
  # instead of rebuilding the venv under its feet.
  exec 9>"$dir/.lock"
  flock 9
  if [ ! -f "$marker" ]; then
    rm -rf "$dir/venv"
    python3 -m venv "$dir/venv" >&2
    "$dir/venv/bin/pip" install -q --disable-pip-version-check --no-deps \
      -r "$here/requirements.txt" >&2
    "$dir/venv/bin/python" -c "from livekit.api import TokenVerifier" >&2
    touch "$marker"
  fi
fi
echo "$dir"
