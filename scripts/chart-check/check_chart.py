"""Offline checks of charts/carehub and k8s/ (run by scripts/check-chart.sh).

Renders and lints with the `helm` binary given by --helm (scripts/check-chart.sh passes its
pinned Helm 3.17), else one on the PATH, else helm-python-sdk (Helm's Go SDK as a library);
validates every object with kubernetes-validate (strict) for Kubernetes 1.30 and the newest
version it knows; checks the invariants in invariants.py and the monitoring objects in
promql_check.py; proves that bad values, weakened templates and broken alert or dashboard
expressions are refused; shows that a new service renders complete from the shared helpers alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import kubernetes_validate
import yaml

import image_check
import invariants
import k8s_checks
import promql_check

RELEASE = "carehub"
NAMESPACE = "carehub"
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
failures: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"FAIL {msg}")


def ok(msg: str) -> None:
    print(f"ok   {msg}")


class RenderError(Exception):
    pass


def merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base.get(k), v) if k in base else v
        return out
    return copy.deepcopy(over)


def coalesce(defaults: Any, over: Any) -> Any:
    """Helm's merge of user values over the chart's: null removes a key."""
    if isinstance(defaults, dict) and isinstance(over, dict):
        out = dict(defaults)
        for k, v in over.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = coalesce(defaults.get(k), v)
        return out
    return copy.deepcopy(over)


class Helm:
    """The `helm` binary given (scripts/check-chart.sh passes its pinned one), else one on the
    PATH, else helm-python-sdk; same answers either way."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("helm")
        if not self.binary:
            import helm_python

            self.sdk = helm_python
        print(f"renderer: {self.binary or 'helm-python-sdk ' + self.sdk.__version__ + ' (Helm SDK ' + self.sdk.helm_sdk_version() + ')'}")

    def _values_file(self, values: dict, tmp: pathlib.Path) -> pathlib.Path:
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    def render(self, chart: pathlib.Path, values: dict) -> list[dict]:
        with tempfile.TemporaryDirectory() as tmp:
            if self.binary:
                r = subprocess.run(
                    [self.binary, "template", RELEASE, str(chart), "-n", NAMESPACE, "--kube-version", "1.30.0",
                     "-f", str(self._values_file(values, pathlib.Path(tmp)))],
                    capture_output=True, text=True)
                if r.returncode:
                    raise RenderError(r.stderr.strip())
                texts = [r.stdout]
            else:
                try:
                    with self.sdk.Chart.load(str(chart)) as c:
                        out = c.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
                except self.sdk.HelmError as e:
                    raise RenderError(str(e)) from e
                texts = [v for k, v in sorted(out.items()) if not k.endswith("NOTES.txt")]
        docs = []
        for text in texts:
            docs += [d for d in yaml.safe_load_all(text) if d]
        return docs

    def lint(self, chart: pathlib.Path, values: dict) -> list[str]:
        with tempfile.TemporaryDirectory() as tmp:
            if self.binary:
                r = subprocess.run(
                    [self.binary, "lint", "--strict", "--kube-version", "1.30.0", str(chart),
                     "-f", str(self._values_file(values, pathlib.Path(tmp)))],
                    capture_output=True, text=True)
                return [] if r.returncode == 0 else [r.stdout.strip() + r.stderr.strip()]
        report = self.sdk.lint(str(chart), values, strict=True, kube_version="v1.30.0")
        return [f"{m.get('path')}: {m.get('error')}" for m in report.get("messages", []) if m.get("severity", 0) >= 2] + list(report.get("errors") or [])


def validate_objects(docs: list[dict], where: str) -> int:
    """kubernetes-validate, strict, for every Kubernetes version we support; CRDs by k8s_checks."""
    bad = 0
    for d in docs:
        name = invariants.name_of(d)
        if k8s_checks.is_crd_object(d):
            for p in k8s_checks.check_crd_object(d):
                fail(f"{where}: {p}")
                bad += 1
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                fail(f"{where}: {name} is not a valid Kubernetes {version} object: {path}: {e.message}")
                bad += 1
            except kubernetes_validate.SchemaNotFoundError:
                fail(f"{where}: {name}: no Kubernetes {version} schema for {d.get('apiVersion')} {d.get('kind')}")
                bad += 1
    return bad


def canary_validator() -> None:
    """The validator must reject a broken object, or every "ok" below means nothing."""
    broken = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "canary"},
              "spec": {"replicas": "two", "selector": {}, "template": {}, "bogus": 1}}
    try:
        kubernetes_validate.validate(broken, KUBE_VERSIONS[0], strict=True)
        fail("kubernetes-validate accepted a broken Deployment: validation is not working")
    except kubernetes_validate.ValidationError:
        ok(f"kubernetes-validate {kubernetes_validate.__version__} rejects a broken object (strict, {', '.join(KUBE_VERSIONS)})")


GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "services/carehub/tests/chart-config"


def check_golden_config(label: str, docs: list[dict]) -> None:
    """The TOML each service gets is kept in services/carehub/tests/chart-config/, where a Rust
    test loads it with the binary's own config loader: chart keys and code keys cannot drift."""
    stem = label.split(" ")[0].removesuffix(".yaml").removesuffix("-values").replace("values", "defaults")
    update = os.environ.get("CAREHUB_UPDATE_GOLDEN") == "1"
    for d in docs:
        if d["kind"] != "ConfigMap" or not d["metadata"]["name"].startswith("carehub-"):
            continue
        if d["metadata"]["name"] == promql_check.DASHBOARD_CONFIGMAP:
            continue
        service = d["metadata"]["name"].removeprefix("carehub-")
        path = GOLDEN / f"{stem}-{service}.toml"
        text = d["data"]["config.toml"]
        if update:
            GOLDEN.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            fail(f"{label}: the rendered config of {service} differs from {path.relative_to(GOLDEN.parents[3])}; "
                 "run CAREHUB_UPDATE_GOLDEN=1 scripts/check-chart.sh and commit it (a Rust test loads it)")


def check_values_file(helm: Helm, chart: pathlib.Path, label: str, user: dict, defaults: dict) -> list[dict]:
    try:
        docs = helm.render(chart, user)
    except RenderError as e:
        fail(f"{label}: render failed: {' '.join(str(e).split())}")
        return []
    check_golden_config(label, docs)
    lint = helm.lint(chart, user)
    for msg in lint:
        fail(f"{label}: helm lint --strict: {msg}")
    bad = validate_objects(docs, label)
    problems = invariants.check_release(docs, coalesce(defaults, user), RELEASE)
    for p in problems:
        fail(f"{label}: {p}")
    if not lint and not bad and not problems:
        kinds = sorted({d["kind"] for d in docs})
        ok(f"{label}: {len(docs)} objects ({', '.join(kinds)}) render, lint, validate and keep the invariants")
    mon, what = promql_check.check_release(docs, coalesce(defaults, user), chart, README)
    for p in mon:
        fail(f"{label}: {p}")
    if what and not mon:
        ok(f"{label}: monitoring: {what}: every expression parses (promql-parser) and names only exported metrics;"
           " every alert has a severity, a summary and its README runbook")
    return docs


# The README whose "Alerts and runbooks" notes the alerts' runbook_url point at (--readme, or
# CAREHUB_RUNBOOK_README: a draft of it).
README = pathlib.Path(os.environ.get("CAREHUB_RUNBOOK_README") or pathlib.Path(__file__).resolve().parents[2] / "README.md")

# Monitoring files broken on purpose, with the words the refusal must contain: proof that the
# checks of promql_check.py bite (a file in the chart, the pattern, its replacement).
BROKEN_MONITORING = [
    ("an alert expression that does not parse", "files/prometheus-rules.yaml",
     r"expr: carehub_key_cache_serving == 0", "expr: sum(carehub_key_cache_serving == 0", "does not parse"),
    ("a dashboard expression that does not parse", "files/grafana-dashboard.json",
     r"\[5m\]\)\)\)", "[5 minutes])))", "does not parse"),
    ("an alert on a metric no service exports", "files/prometheus-rules.yaml",
     r"carehub_db_pool_in_use_connections /", "carehub_db_pool_busy_connections /",
     "unknown metric carehub_db_pool_busy_connections"),
    ("a panel on a metric no service exports", "files/grafana-dashboard.json",
     r"carehub_outbox_dead_letters\{", "carehub_outbox_dead_letter{", "unknown metric carehub_outbox_dead_letter "),
    ("a metric dropped from the exported list", "files/exported-metrics.txt",
     r"(?m)^carehub_audit_queue_depth\n", "", "unknown metric carehub_audit_queue_depth "),
    ("a selector naming no metric", "files/prometheus-rules.yaml",
     r"expr: carehub_key_cache_refresh_failing == 1", 'expr: \'{service="identity"} == 1\'', "names no metric"),
    ("an alert without its severity", "files/prometheus-rules.yaml",
     r"(?s)(CarehubDbPoolSaturated.*?)severity: warning", r"\1team: sre", "labels.severity must be one of"),
]


def rendered_mutations(helm: Helm, chart: pathlib.Path, prod: dict, cases: list, what: str,
                       table: str, count: int = 0):
    """Each case (label, file, pattern, replacement, expected problem) applied to a scratch copy
    of the chart and rendered with `prod`: yields (label, the copy, its objects, expected). A
    pattern that no longer matches, or a copy that does not render, is a failure of its own."""
    for label, rel, pattern, repl, expect in cases:
        with tempfile.TemporaryDirectory() as tmp:
            c = scratch_copy(chart, pathlib.Path(tmp))
            f = c / rel
            text, n = re.subn(pattern, repl, f.read_text(), count=count)
            if n == 0:
                fail(f"{what} ({label}): the pattern no longer matches {rel}; update {table}")
                continue
            f.write_text(text)
            try:
                docs = helm.render(c, prod)
            except RenderError as e:
                fail(f"{what} ({label}) does not even render: {e}")
                continue
            yield label, c, docs, expect


def check_broken_monitoring(helm: Helm, chart: pathlib.Path, prod: dict, defaults: dict) -> None:
    for problem in promql_check.canary_parser():
        fail(problem)
    for label, c, docs, expect in rendered_mutations(helm, chart, prod, BROKEN_MONITORING,
                                                     "broken monitoring", "BROKEN_MONITORING", count=1):
        problems, _ = promql_check.check_release(docs, coalesce(defaults, prod), c, README)
        hit = [p for p in problems if expect in p]
        if hit:
            ok(f"broken monitoring refused ({label}): {hit[0][:150]}")
        else:
            fail(f"broken monitoring ({label}) passed; expected {expect!r}, got {problems}")
    # An alert whose runbook note is missing from the README.
    with tempfile.TemporaryDirectory() as tmp:
        readme = pathlib.Path(tmp) / "README.md"
        readme.write_text(re.sub(r"(?m)^### CarehubOutboxDeadLetters$", "### Outbox dead letters",
                                 README.read_text() if README.exists() else ""))
        docs = helm.render(chart, prod)
        problems, _ = promql_check.check_release(docs, coalesce(defaults, prod), chart, readme)
        want = "README.md has no '### CarehubOutboxDeadLetters'"
        hit = [p for p in problems if want in p]
        if hit:
            ok(f"broken monitoring refused (an alert without its runbook note): {hit[0][:150]}")
        else:
            fail(f"an alert without its README runbook note passed; expected {want!r}, got {problems}")


# Values that must be refused, with the words the refusal must contain (a tuple: Helm 3's
# wording, then Helm 4's, whose schema errors name JSON pointers; either will do).
BAD_VALUES = [
    ("wrong type", {"services": {"identity": {"replicas": "two"}}}, ("services.identity.replicas: Invalid type", "/services/identity/replicas")),
    ("wrong type at the top", {"trustDomain": 7}, ("trustDomain: Invalid type", "/trustDomain")),
    ("unknown top-level key", {"replica": 3}, ("Additional property replica is not allowed", "'replica' not allowed")),
    ("unknown key in a service", {"services": {"identity": {"replicaCount": 3}}}, ("Additional property replicaCount is not allowed", "'replicaCount' not allowed")),
    ("no Secret for the serving role", {"services": {"identity": {"database": {"app": {"existingSecret": None}}}}},
     "services.identity.database.app.existingSecret is required"),
    ("an empty Secret for the serving role", {"services": {"identity": {"database": {"app": {"existingSecret": ""}}}}},
     "does not fall back to the migrator's"),
    ("no Secret for the migration Job", {"services": {"identity": {"database": {"migrator": {"existingSecret": None}}}}},
     "services.identity.database.migrator.existingSecret is required"),
    ("serving pods on the migrator's Secret", {"services": {"identity": {"database": {"app": {"existingSecret": "carehub-identity-db"}}}}},
     "must not be the migrator's Secret"),
    ("the former single Secret given to the pods too", {"services": {"identity": {"database": {"existingSecret": "carehub-identity-db-svc"}}}},
     "must not be the migrator's Secret"),
    ("missing required image repository", {"image": {"repository": None}}, "repository"),
    ("value outside its enum", {"tls": {"source": "acme"}}, ("tls.source must be one of", "/tls/source")),
    ("sample ratio above 1", {"telemetry": {"sampleRatio": 2}}, ("telemetry.sampleRatio: Must be less than or equal to 1", "/telemetry/sampleRatio")),
    ("file keys without their Secret", {"keys": {"provider": "file", "production": False}}, "keys.fileSecret is required"),
    ("file keys in production", {"keys": {"provider": "file", "fileSecret": "k"}}, "refuses to start with keys.production=true"),
    ("AppRole without a role_id", {"vault": {"auth": {"method": "approle"}}}, "vault.auth.approle.roleIds.billing is required"),
    ("Vault keys without an address", {"vault": {"addr": ""}}, "vault.addr is required"),
    ("a service calling a disabled one", {"services": {"identity": {"enabled": False}}},
     "calls names identity, which is not enabled"),
    ("records merging the trail of a disabled messaging", {"services": {"messaging": {"enabled": False}}},
     "services.records.calls names messaging, which is not enabled"),
    ("no service enabled", {"services": {"identity": {"enabled": False}, "records": {"enabled": False},
                                         "messaging": {"enabled": False}, "scheduling": {"enabled": False},
                                         "billing": {"enabled": False}}},
     "no service is enabled"),
    ("scheduling without its feeds' public address", {"services": {"scheduling": {"feedBaseUrl": None}}},
     "services.scheduling.feedBaseUrl is required"),
    ("a feed address with a trailing slash", {"services": {"scheduling": {"feedBaseUrl": "https://api.example.org/"}}},
     ("services.scheduling.feedBaseUrl: Does not match pattern", "/services/scheduling/feedBaseUrl")),
    ("a feed address given to another service", {"services": {"records": {"feedBaseUrl": "https://api.example.org"}}},
     "services.records.feedBaseUrl is scheduling's setting"),
    ("records merging the trail of a disabled billing", {"services": {"billing": {"enabled": False}}},
     "services.records.calls names billing, which is not enabled"),
    ("Stripe without Vault for its secrets",
     {"keys": {"provider": "file", "production": False, "fileSecret": "carehub-dev-keys"},
      "services": {"billing": {"processor": {"kind": "stripe"}}}},
     "services.billing.processor.kind=stripe reads the processor's secret key"),
    ("Stripe without the secrets' Vault path", {"services": {"billing": {"processor": {"kind": "stripe", "vaultPath": None}}}},
     "services.billing.processor.vaultPath is required"),
    ("a processor billing does not know", {"services": {"billing": {"processor": {"kind": "paypal"}}}},
     ("services.billing.processor.kind: services.billing.processor.kind must be one of", "/services/billing/processor/kind")),
    ("a processor given to another service", {"services": {"records": {"processor": {"kind": "stripe"}}}},
     "services.records.processor is billing's setting"),
    ("a misspelt monitoring key", {"monitoring": {"serviceMonitor": {"enable": True}}},
     ("Additional property enable is not allowed", "'enable' not allowed")),
    ("a monitoring switch that is no boolean", {"monitoring": {"prometheusRule": {"enabled": "yes"}}},
     ("monitoring.prometheusRule.enabled: Invalid type", "/monitoring/prometheusRule/enabled")),
    ("a runbook base URL with an anchor", {"monitoring": {"prometheusRule": {"runbookBaseUrl": "https://x.example/README.md#alerts"}}},
     ("monitoring.prometheusRule.runbookBaseUrl: Does not match pattern", "/monitoring/prometheusRule/runbookBaseUrl")),
]


def check_bad_values(helm: Helm, chart: pathlib.Path) -> None:
    for label, values, expect in BAD_VALUES:
        try:
            helm.render(chart, values)
            fail(f"bad values ({label}) were accepted: {values}")
        except RenderError as e:
            alternatives = expect if isinstance(expect, tuple) else (expect,)
            if any(a in str(e) for a in alternatives):
                reason = " ".join(str(e).split())[-110:]
                ok(f"bad values refused ({label}): ...{reason}")
            else:
                fail(f"bad values ({label}) refused without naming {expect!r}: {e}")
    # Lint must see the same: otherwise a green lint above proves nothing.
    if not helm.lint(chart, BAD_VALUES[0][1]):
        fail("helm lint --strict passed values with a wrong type")
    else:
        ok("helm lint --strict fails on values with a wrong type")


def scratch_copy(chart: pathlib.Path, tmp: pathlib.Path) -> pathlib.Path:
    dst = tmp / "carehub"
    shutil.copytree(chart, dst)
    return dst


def check_new_service(helm: Helm, chart: pathlib.Path, prod: dict) -> None:
    """A dummy service: one values block plus one template file calling the shared helper."""
    with tempfile.TemporaryDirectory() as tmp:
        c = scratch_copy(chart, pathlib.Path(tmp))
        src = (c / "templates/identity.yaml").read_text()
        (c / "templates/dummy.yaml").write_text(src.replace('"identity"', '"dummy"').replace("identity:", "dummy:"))
        user = merge(prod, {"services": {
            "dummy": {"calls": ["identity"], "gatewayPorts": ["grpc"],
                      "database": {"migrator": {"existingSecret": "carehub-dummy-db"}, "app": {"existingSecret": "carehub-dummy-db-svc"}},
                      "settings": {"greeting_ttl_secs": 5}},
        }, "vault": {"auth": {"approle": {"roleIds": {"dummy": "x"}}}}})
        try:
            docs = helm.render(c, user)
        except RenderError as e:
            fail(f"new service: a dummy service block + template does not render: {e}")
            return
        mine = sorted(invariants.name_of(d) for d in docs if "dummy" in d["metadata"]["name"])
        problems = invariants.check_release(docs, coalesce(yaml.safe_load((c / "values.yaml").read_text()), user), RELEASE)
        problems = [p for p in problems if "services.dummy.calls" not in p]
        validate_objects(docs, "new service")
        want = {"ConfigMap", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                "NetworkPolicy", "Certificate", "Job", "Pod"}
        got = {d["kind"] for d in docs if "dummy" in d["metadata"]["name"]}
        if want - got:
            problems.append(f"dummy service lacks {sorted(want - got)}")
        idnp = next(d for d in docs if invariants.name_of(d) == "NetworkPolicy/carehub-identity")
        if "dummy" not in json.dumps(idnp["spec"]["ingress"]):
            problems.append("identity's NetworkPolicy does not admit its new caller dummy")
        for p in problems:
            fail(f"new service: {p}")
        if not problems:
            ok(f"new service: one values block + templates/dummy.yaml render {', '.join(mine)}; identity admits dummy")


# Template edits that must make the invariants fail: (label, file, pattern, replacement, expected problem).
WEAKENINGS = [
    ("dropping the liveness probe", "templates/_service.tpl", r"      livenessProbe:\n(        .*\n)+?(?=      readinessProbe:)", "", "livenessProbe is missing"),
    ("dropping the readiness probe", "templates/_service.tpl", r"      readinessProbe:\n(        .*\n)+?(?=      lifecycle:)", "", "readinessProbe is missing"),
    ("an HTTP probe instead of gRPC health", "templates/_service.tpl",
     r"      readinessProbe:\n        grpc: \{port: \{\{ \$v\.ports\.admin \}\}\}",
     "      readinessProbe:\n        httpGet: {path: /readyz, port: admin}", "must be a native gRPC probe"),
    ("probing the mTLS-only gRPC port", "templates/_service.tpl",
     r"      readinessProbe:\n        grpc: \{port: \{\{ \$v\.ports\.admin \}\}\}",
     "      readinessProbe:\n        grpc: {port: {{ $v.ports.grpc }}}", "must probe the admin port"),
    ("liveness that follows readiness", "templates/_service.tpl",
     r"      livenessProbe:\n        grpc: \{port: \{\{ \$v\.ports\.admin \}\}, service: liveness\}",
     "      livenessProbe:\n        grpc: {port: {{ $v.ports.admin }}}", "must ask for health service 'liveness'"),
    ("dropping the container securityContext", "templates/_service.tpl",
     r"      securityContext:\n        \{\{- include \"carehub.containerSecurityContext\" \$root \| nindent 8 \}\}\n", "", "securityContext is missing"),
    ("dropping the pod securityContext", "templates/_service.tpl",
     r"  securityContext:\n    \{\{- include \"carehub.podSecurityContext\" \$root \| nindent 4 \}\}\n", "", "runAsNonRoot must be true"),
    ("allowing privilege escalation", "templates/_helpers.tpl", r"allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", "allowPrivilegeEscalation must be false"),
    ("a writable root filesystem", "templates/_helpers.tpl", r"readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem must be true"),
    ("dropping the PodDisruptionBudget", "templates/_service.tpl", r'"pdb" ', "", "no PodDisruptionBudget"),
    ("dropping the NetworkPolicy", "templates/_service.tpl", r'"networkpolicy" ', "", "no NetworkPolicy"),
    ("opening identity to every service", "templates/_network.tpl",
     r"\{\{- if has \$name \$theirs -\}\}", "{{- if true -}}", "the call graph says"),
    ("an outbox target left out of the NetworkPolicies", "templates/_helpers.tpl",
     r"\{\{- if and \(has \$t \$enabled\) \(not \(has \$t \$out\)\) -\}\}", "{{- if false -}}", "the call graph says"),
    ("a migration Job without messaging's records endpoint", "templates/_migration.tpl",
     r"            - name: \{\{ printf \"CAREHUB_%s__%s\".*\n.*\n", "",
     "CAREHUB_MESSAGING__RECORDS_ENDPOINT is None"),
    ("the serving pods given the migrator's Secret", "templates/_service.tpl",
     r'"carehub\.service\.databaseEnv" \(dict "root" \$root "name" \$name "role" "app"\)',
     '"carehub.service.databaseEnv" (dict "root" $root "name" $name "role" "migrator")', "reads the migrator Secret"),
    ("the migrator's Secret mounted into the serving pods", "templates/_service.tpl",
     r"(\{\{- define \"carehub\.service\.volumes\" -\}\}\n(?:.*\n){2})",
     "\\1- name: owner\n  secret:\n    secretName: {{ (include \"carehub.databaseSecrets\" . | fromYaml).migrator.existingSecret }}\n",
     "reads the migrator Secret"),
    ("the migrations run in the serving pod", "templates/_service.tpl",
     r"  containers:\n    - name: \{\{ \$name \}\}\n",
     "  initContainers:\n    - name: migrate\n      image: {{ include \"carehub.image\" $root }}\n      args: [\"migrate\", {{ $name | quote }}]\n"
     "  containers:\n    - name: {{ $name }}\n", "runs the migrations"),
    ("migrating on start in the serving config", "templates/_config.tpl",
     r'"migrate_on_start" false', '"migrate_on_start" true', "migrate_on_start must be false"),
    ("a migration Job without identity's endpoint", "templates/_migration.tpl",
     r"            - name: CAREHUB_SERVER__AUTH__IDENTITY_ENDPOINT\n.*\n", "",
     "CAREHUB_SERVER__AUTH__IDENTITY_ENDPOINT is None"),
    ("billing's processor egress opened on another port too", "templates/_network.tpl",
     r"(        - \{port: \{\{ \$svc\.processor\.egress\.port \}\}, protocol: TCP\}\n)",
     "\\1        - {port: 80, protocol: TCP}\n", "only TCP 443 is the processor's"),
    ("billing on Stripe without its processor egress", "templates/_network.tpl",
     r"\{\{- if include \"carehub\.billing\.stripe\" \. \}\}\n    - to:",
     "{{- if false }}\n    - to:", "has no egress to the processor on 443"),
    ("inlining the database URL", "templates/_service.tpl",
     r"- name: CAREHUB_SERVER__DATABASE__URL\n  valueFrom:\n    secretKeyRef:\n      name: .*\n      key: .*\n",
     "- name: CAREHUB_SERVER__DATABASE__URL\n  value: postgres://carehub:hunter2@db/identity\n", "secret inlined"),
]


def check_weakened_templates(helm: Helm, chart: pathlib.Path, prod: dict, defaults: dict) -> None:
    for label, _, docs, expect in rendered_mutations(helm, chart, prod, WEAKENINGS,
                                                     "weakened template", "WEAKENINGS"):
        problems = invariants.check_release(docs, coalesce(defaults, prod), RELEASE)
        hit = [p for p in problems if expect in p]
        if hit:
            ok(f"weakened template refused ({label}): {hit[0]}")
        else:
            fail(f"weakened template ({label}) passed the invariants; expected {expect!r}, got {problems}")


def check_former_database_values(helm: Helm, chart: pathlib.Path, defaults: dict) -> None:
    """Values written before the split (one `database.existingSecret` for everything, as
    production-values.yaml had it) still render: that Secret, the tables' owner's, goes to the
    migration Job only, and the pods get database.app's."""
    former = {"services": {"identity": {"database": {"existingSecret": "carehub-identity-db-app", "key": "uri", "maxConnections": 24}}}}
    try:
        docs = helm.render(chart, former)
    except RenderError as e:
        fail(f"former database values: do not render: {e}")
        return
    problems = invariants.check_release(docs, coalesce(defaults, former), RELEASE)
    job = next((d for d in docs if invariants.name_of(d) == "Job/carehub-identity-migrate"), {})
    dep = next((d for d in docs if invariants.name_of(d) == "Deployment/carehub-identity"), {})
    got = (invariants.database_url_ref(invariants.pod_spec(job) or {}), invariants.database_url_ref(invariants.pod_spec(dep) or {}))
    want = ([("carehub-identity-db-app", "uri")], [("carehub-identity-db-svc", "url")])
    if got != want:
        problems.append(f"the Job and the pods read {got}, want {want}")
    for p in problems:
        fail(f"former database values: {p}")
    if not problems:
        ok("former database values (database.existingSecret): the owner's Secret goes to the migration Job only, the pods get database.app's")


def check_binary_services(carehub: str, chart: pathlib.Path, defaults: dict) -> None:
    """The chart deploys exactly the services of the binary's list (`carehub services`); the
    Rust test `chart_services` checks the same against the binary it builds."""
    r = subprocess.run([carehub, "services"], capture_output=True, text=True)
    if r.returncode:
        fail(f"{carehub} services failed: {r.stderr.strip()}")
        return
    binary = set(r.stdout.split())
    values = set(defaults.get("services", {}))
    call = re.compile(r'include "carehub\.service" \(dict "root" \$ "name" "([^"]+)"\)')
    templates = {m for f in (chart / "templates").glob("*.yaml") for m in call.findall(f.read_text())}
    problems = [f"{n} is served by the binary but has no services.{n} in values.yaml" for n in sorted(binary - values)]
    problems += [f"services.{n} in values.yaml is not a service of the binary" for n in sorted(values - binary)]
    problems += [f"{n} has no templates/{n}.yaml including carehub.service" for n in sorted(binary - templates)]
    problems += [f"a template renders {n}, which the binary does not serve" for n in sorted(templates - binary)]
    for p in problems:
        fail(f"services: {p}")
    if not problems:
        ok(f"services: the chart deploys exactly the binary's ({', '.join(sorted(binary))})")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chart", type=pathlib.Path, required=True)
    ap.add_argument("--k8s", type=pathlib.Path, required=True)
    ap.add_argument("--helm", help="the helm binary to render and lint with")
    ap.add_argument("--carehub", help="a carehub binary whose `carehub services` the chart must match")
    ap.add_argument("--readme", type=pathlib.Path, help="the README with the alerts' runbook notes (default: the repository's)")
    ap.add_argument("values", nargs="*", type=pathlib.Path, help="more values files to check")
    args = ap.parse_args()
    if args.readme:
        global README
        README = args.readme.resolve()
    helm = Helm(args.helm)
    canary_validator()
    chart = args.chart.resolve()
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    files = sorted((chart / "ci").glob("*-values.yaml")) + args.values
    if not files:
        fail(f"no ci/*-values.yaml in {chart}")
    check_values_file(helm, chart, "values.yaml (defaults)", {}, defaults)
    user_by_file = {}
    docs_by_file = {}
    for f in files:
        user_by_file[f.name] = yaml.safe_load(f.read_text()) or {}
        docs_by_file[f.name] = check_values_file(helm, chart, f.name, user_by_file[f.name], defaults)
    prod = user_by_file.get("production-values.yaml", {})
    # The production-like install is the one the issue names: every service complete, with HPA.
    prod_docs = docs_by_file.get("production-values.yaml", [])
    have = {(d["kind"], d["metadata"]["name"]) for d in prod_docs}
    services = coalesce(defaults, prod).get("services", {})
    for name in sorted(n for n, v in services.items() if v.get("enabled", True)):
        for kind, obj in [("Deployment", f"carehub-{name}"), ("Service", f"carehub-{name}"),
                          ("ServiceAccount", f"carehub-{name}"), ("PodDisruptionBudget", f"carehub-{name}"),
                          ("HorizontalPodAutoscaler", f"carehub-{name}"), ("NetworkPolicy", f"carehub-{name}"),
                          ("Job", f"carehub-{name}-migrate")]:
            if (kind, obj) not in have:
                fail(f"production-values.yaml: no {kind}/{obj}")
    if args.carehub:
        check_binary_services(args.carehub, chart, defaults)
    check_bad_values(helm, chart)
    check_former_database_values(helm, chart, defaults)
    check_new_service(helm, chart, prod)
    check_weakened_templates(helm, chart, prod, defaults)
    check_broken_monitoring(helm, chart, prod, defaults)
    for p in k8s_checks.check_k8s_dir(args.k8s.resolve(), validate_objects):
        fail(p)
    image = image_check.check_dockerfile(chart.parent.parent, defaults["ports"])
    for p in image:
        fail(p)
    if not image:
        ok("Dockerfile: multi-stage, distroless runtime with only the carehub binary, numeric non-root USER, chart ports exposed")
    print()
    if failures:
        print(f"check-chart: {len(failures)} problem(s)")
        return 1
    print("check-chart: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
