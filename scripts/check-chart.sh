#!/usr/bin/env bash
# Offline checks of the Helm chart (charts/carehub) and the manifests beside it (k8s/):
# renders with the defaults and every charts/carehub/ci/*-values.yaml, `helm lint --strict`,
# validates every object with kubernetes-validate (strict; Kubernetes 1.30 and the newest it
# knows), asserts the security/HA invariants, proves that bad values and weakened templates are
# refused, renders a dummy service from the shared helpers, and checks `kubectl kustomize k8s/`
# (when kubectl is installed) and the Vault policies. No cluster, no network beyond PyPI.
#
# Uses `helm` when installed, else PyPI helm-python-sdk (Helm's Go SDK as a library — no helm
# binary). Python packages are pinned in scripts/chart-check/requirements.txt and installed once
# into $CAREHUB_CHART_VENV (default ~/.cache/carehub-chart-venv).
#
#   scripts/check-chart.sh [more-values.yaml ...]    # extra values files are checked too
set -euo pipefail
cd "$(dirname "$0")/.."

req=scripts/chart-check/requirements.txt
venv=${CAREHUB_CHART_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/carehub-chart-venv}

if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "check-chart: installing python3 and python3-venv (Debian packages)"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq python3 python3-venv >/dev/null
fi

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "check-chart: needs Python 3.11 or newer (tomllib); found $(python3 --version 2>&1)" >&2
  exit 1
fi

# Reinstall when the pinned set changes (the stamp holds the requirements' hash).
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.carehub-requirements" 2>/dev/null)" != "$want" ]; then
  echo "check-chart: creating $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input -r "$req"
  echo "$want" >"$venv/.carehub-requirements"
fi

exec "$venv/bin/python" scripts/chart-check/check_chart.py --chart charts/carehub --k8s k8s "$@"
