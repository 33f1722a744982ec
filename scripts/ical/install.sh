#!/usr/bin/env bash
# Installs the independent checkers of carehub's iCalendar feeds, pinned, once, into
# $CAREHUB_ICAL_DIR (default ~/.cache/carehub/ical): PyPI vobject 0.9.9 (`validate=True`) and
# icalendar 7.3.2 and their dependencies, exactly as scripts/ical/requirements.txt pins them, in
# a venv. Prints the venv's python. Needs python3 (venv) and access to PyPI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${CAREHUB_ICAL_DIR:-$HOME/.cache/carehub/ical}"
# The marker names the pins' hash: changing requirements.txt reinstalls.
pins="$(sha256sum "$here/requirements.txt" | cut -c1-16)"
marker="$dir/.installed-vobject-0.9.9-icalendar-7.3.2-$pins"
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
    "$dir/venv/bin/python" -c "import vobject, icalendar, dateutil, pytz, zoneinfo" >&2
    touch "$marker"
  fi
fi
echo "$dir/venv/bin/python"
