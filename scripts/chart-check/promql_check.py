"""The chart's operations objects (templates/monitoring.yaml): the ServiceMonitor, the
PrometheusRule and the Grafana dashboard ConfigMap.

kubernetes-validate has no schema for the Prometheus Operator's kinds, so they are kept out of its
strict validation (k8s_checks.CRD_FIELDS checks their top-level fields) and checked here instead:
every alert and dashboard expression parses with the PyPI package promql-parser (bindings of the
GreptimeTeam PromQL parser, written apart from Prometheus and from this repository), names only
metrics in files/exported-metrics.txt (which `cargo test -p carehub --test it monitoring` keeps
equal to what the services' /metrics export), and every alert carries a severity, a summary and a
runbook_url pointing at its note in README.md ("Alerts and runbooks").
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import promql_parser

SEVERITIES = {"critical", "warning", "info"}
DURATION = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+")
RUNBOOK_SECTION = "## Alerts and runbooks"
# The one ConfigMap of the chart that is no service's configuration.
DASHBOARD_CONFIGMAP = "carehub-grafana-dashboard"


def exported_metrics(chart: pathlib.Path) -> set[str]:
    path = chart / "files/exported-metrics.txt"
    names = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(line)
    return names


class UnnamedSelector(ValueError):
    """A selector by labels only: it matches series of any metric."""


def metric_names(expr: str) -> list[str]:
    """The metric names an expression selects; raises ValueError when it does not parse or
    selects series without naming their metric ({job="x"} matches any metric)."""
    ast = promql_parser.parse(expr)
    names: list[str] = []
    unnamed: list[str] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.append(node.name)
            else:
                unnamed.append(str(node))
        return True

    promql_parser.walk(ast, visit)
    if unnamed:
        raise UnnamedSelector(f"selector {unnamed[0]} names no metric")
    return names


def check_expr(where: str, expr: Any, known: set[str]) -> list[str]:
    if not isinstance(expr, str) or not expr.strip():
        return [f"{where}: expr must be a non-empty string"]
    try:
        names = metric_names(expr)
    except UnnamedSelector as e:
        return [f"{where}: {e}: {' '.join(expr.split())}"]
    except ValueError as e:
        return [f"{where}: expression does not parse: {e}: {' '.join(expr.split())}"]
    if not names:
        return [f"{where}: expression selects no metric: {' '.join(expr.split())}"]
    return [f"{where}: unknown metric {n} (not exported by any service: files/exported-metrics.txt)"
            for n in sorted(set(names)) if n not in known]


def readme_anchors(readme: pathlib.Path) -> set[str]:
    """GitHub anchors of the `###` headings under README's "Alerts and runbooks"."""
    anchors: set[str] = set()
    inside = False
    for line in readme.read_text().splitlines():
        if line.startswith("## "):
            inside = line.strip() == RUNBOOK_SECTION
        elif inside and line.startswith("### "):
            title = line[4:].strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


def check_rules(obj: dict, known: set[str], base_url: str, anchors: set[str]) -> tuple[list[str], int]:
    where = f"PrometheusRule/{obj.get('metadata', {}).get('name')}"
    problems: list[str] = []
    groups = (obj.get("spec") or {}).get("groups")
    if not isinstance(groups, list) or not groups:
        return [f"{where}: spec.groups must be a non-empty list"], 0
    alerts = 0
    seen: set[str] = set()
    for g in groups:
        gname = g.get("name") if isinstance(g, dict) else None
        if not gname or not isinstance(g.get("rules"), list) or not g["rules"]:
            problems.append(f"{where}: group {gname!r} needs a name and a non-empty rules list")
            continue
        for rule in g["rules"]:
            name = rule.get("alert") or rule.get("record")
            at = f"{where} {gname}/{name}"
            if not name:
                problems.append(f"{where} {gname}: a rule with neither alert nor record")
                continue
            extra = set(rule) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
            if extra:
                problems.append(f"{at}: unknown rule fields {sorted(extra)}")
            problems += check_expr(at, rule.get("expr"), known)
            if "record" in rule:
                continue
            alerts += 1
            if name in seen:
                problems.append(f"{at}: alert name used twice")
            seen.add(name)
            if "for" in rule and not DURATION.fullmatch(str(rule["for"])):
                problems.append(f"{at}: for {rule['for']!r} is not a Prometheus duration")
            labels = rule.get("labels") or {}
            if labels.get("severity") not in SEVERITIES:
                problems.append(f"{at}: labels.severity must be one of {sorted(SEVERITIES)}")
            ann = rule.get("annotations") or {}
            if not str(ann.get("summary", "")).strip():
                problems.append(f"{at}: annotations.summary is required")
            want = f"{base_url}#{name.lower()}"
            if ann.get("runbook_url") != want:
                problems.append(f"{at}: annotations.runbook_url is {ann.get('runbook_url')!r}, want {want!r}")
            if name.lower() not in anchors:
                problems.append(f"{at}: README.md has no '### {name}' under '{RUNBOOK_SECTION}' (its runbook_url's anchor)")
    return problems, alerts


def check_service_monitor(obj: dict, services: list[str]) -> list[str]:
    where = f"ServiceMonitor/{obj.get('metadata', {}).get('name')}"
    spec = obj.get("spec") or {}
    problems = []
    eps = spec.get("endpoints") or []
    if len(eps) != 1:
        return [f"{where}: want exactly one endpoint (the admin port), got {len(eps)}"]
    ep = eps[0]
    if ep.get("port") != "admin" or ep.get("path") != "/metrics":
        problems.append(f"{where}: the endpoint must scrape port admin, path /metrics; got {ep.get('port')} {ep.get('path')}")
    if ep.get("honorLabels") is not True:
        problems.append(f"{where}: honorLabels must be true (the services' own `service` label is what the alerts group by)")
    for d in ("interval", "scrapeTimeout"):
        if d in ep and not DURATION.fullmatch(str(ep[d])):
            problems.append(f"{where}: {d} {ep[d]!r} is not a Prometheus duration")
    sel = spec.get("selector") or {}
    if (sel.get("matchLabels") or {}).get("app.kubernetes.io/name") != "carehub":
        problems.append(f"{where}: selector must match app.kubernetes.io/name=carehub")
    comps = [e for e in sel.get("matchExpressions") or [] if e.get("key") == "app.kubernetes.io/component"]
    if not comps or comps[0].get("operator") != "In" or sorted(comps[0].get("values") or []) != sorted(services):
        problems.append(f"{where}: selector must pick the enabled services' components {services}, got {comps}")
    return problems


def check_dashboard(obj: dict, known: set[str], labels: dict) -> tuple[list[str], int]:
    where = f"ConfigMap/{obj.get('metadata', {}).get('name')}"
    problems = []
    have = obj.get("metadata", {}).get("labels") or {}
    for k, v in labels.items():
        if have.get(k) != v:
            problems.append(f"{where}: label {k}={v!r} missing (Grafana's sidecar finds dashboards by it)")
    data = obj.get("data") or {}
    if list(data) != ["carehub.json"]:
        return problems + [f"{where}: data must hold carehub.json only, has {sorted(data)}"], 0
    try:
        dash = json.loads(data["carehub.json"])
    except json.JSONDecodeError as e:
        return problems + [f"{where}: carehub.json is not JSON: {e}"], 0
    if not dash.get("uid") or not dash.get("title"):
        problems.append(f"{where}: the dashboard needs a uid and a title")
    targets = 0

    def panels(ps: list) -> list:
        out = []
        for p in ps or []:
            out.append(p)
            out += panels(p.get("panels") or [])
        return out

    all_panels = panels(dash.get("panels") or [])
    ids = [p.get("id") for p in all_panels]
    if len(ids) != len(set(ids)):
        problems.append(f"{where}: panel ids are not unique")
    for p in all_panels:
        if p.get("type") == "row":
            continue
        if not p.get("targets"):
            problems.append(f"{where}: panel {p.get('title')!r} has no targets")
        for t in p.get("targets") or []:
            targets += 1
            problems += check_expr(f"{where} panel {p.get('title')!r} target {t.get('refId')}", t.get("expr"), known)
    return problems, targets


def check_release(docs: list[dict], values: dict, chart: pathlib.Path, readme: pathlib.Path,
                  known: set[str] | None = None) -> tuple[list[str], str]:
    """Problems of the monitoring objects in a rendered release with `values` (merged), and a
    summary of what was checked."""
    mon = values.get("monitoring") or {}
    known = exported_metrics(chart) if known is None else known
    anchors = readme_anchors(readme) if readme.exists() else set()
    services = sorted(n for n, s in (values.get("services") or {}).items()
                      if isinstance(s, dict) and s.get("enabled", True))
    problems: list[str] = []
    found = []
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    sms = by_kind.get("ServiceMonitor", [])
    rules = by_kind.get("PrometheusRule", [])
    dashes = [d for d in by_kind.get("ConfigMap", []) if d["metadata"]["name"] == DASHBOARD_CONFIGMAP]
    for kind, objs, on in [("ServiceMonitor", sms, (mon.get("serviceMonitor") or {}).get("enabled")),
                           ("PrometheusRule", rules, (mon.get("prometheusRule") or {}).get("enabled")),
                           ("dashboard ConfigMap", dashes, (mon.get("dashboard") or {}).get("enabled"))]:
        if on and len(objs) != 1:
            problems.append(f"monitoring: want one {kind} with it enabled, got {len(objs)}")
        if not on and objs:
            problems.append(f"monitoring: a {kind} is rendered although it is disabled")
    for sm in sms:
        problems += check_service_monitor(sm, services)
        found.append("ServiceMonitor")
    for r in rules:
        p, n = check_rules(r, known, (mon.get("prometheusRule") or {}).get("runbookBaseUrl", ""), anchors)
        problems += p
        found.append(f"PrometheusRule ({n} alerts)")
    for d in dashes:
        p, n = check_dashboard(d, known, (mon.get("dashboard") or {}).get("labels") or {})
        problems += p
        found.append(f"dashboard ({n} panel targets)")
    return problems, ", ".join(found)


def canary_parser() -> list[str]:
    """The parser must accept PromQL and refuse non-PromQL, or every "ok" means nothing."""
    problems = []
    try:
        if metric_names('sum by (le) (rate(a_bucket{x=~"y"}[5m])) / on() b') != ["a_bucket", "b"]:
            problems.append("promql-parser: metric names of a known expression are wrong")
    except ValueError as e:
        problems.append(f"promql-parser refused valid PromQL: {e}")
    for bad in ["sum(rate(x[5m])", "rate(x[5 minutes])", "x +", '{job="a"}']:
        try:
            metric_names(bad)
            problems.append(f"promql-parser accepted {bad!r}")
        except ValueError:
            pass
    return problems
