"""What every carehub manifest must satisfy, beyond the Kubernetes schemas.

Each check returns a list of problems (strings naming the object and the field); an empty
list means the manifests pass. Nothing here knows how the manifests were rendered.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

Obj = dict[str, Any]

# DESIGN.md §1, "calls" column, as built: the only service-to-service RPC edges the
# NetworkPolicies allow. Beyond the table: messaging asks records who is on a care team
# (messaging.records_endpoint), and records merges messaging's, scheduling's and billing's audit
# trails into the patient's access log (records.audit_sources). Scheduling calls only identity directly: what it tells
# records, messaging and billing goes through its outbox (OUTBOX_GRAPH).
CALL_GRAPH: dict[str, set[str]] = {
    "identity": set(),
    "scheduling": {"identity"},
    "messaging": {"identity", "records"},
    "records": {"identity", "messaging", "scheduling", "billing"},
    "billing": {"identity"},
}

# Where each service's transactional outbox delivers (server.outbox.targets): identity's account
# events (records, messaging, scheduling), notifications and SMS preferences (messaging); messaging's abuse
# actions and SMS consent changes (identity); scheduling's booked providers and intake answers
# (records), reminders and video visits (messaging) and appointment events (billing). These
# edges are opened too, for enabled targets.
OUTBOX_GRAPH: dict[str, set[str]] = {
    "identity": {"records", "messaging", "scheduling"},
    "messaging": {"identity"},
    "scheduling": {"records", "messaging", "billing"},
    "records": set(),
    "billing": set(),
}

# Env names that carry secrets: they must come from a Secret (valueFrom), never a literal.
SECRET_ENV = re.compile(r"(PASSWORD|TOKEN|SECRET|DATABASE__URL|_KEY$|CREDENTIAL)", re.I)
# TOML keys that would be a secret inlined into a ConfigMap.
SECRET_TOML_KEYS = {"url", "token", "password", "secret_id", "secret"}
# Keys named `url` that hold a public address, never a credential (the SFU's WebSocket URL
# handed to clients with their join token): allowed unless the value carries userinfo.
PUBLIC_URL_KEYS = {"messaging.video.url"}


def name_of(obj: Obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def pod_spec(obj: Obj) -> Obj | None:
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj.get("spec", {}).get("template", {}).get("spec", {})
    return None


def check_pod_security(obj: Obj) -> list[str]:
    """Pod Security "restricted" and our own rules, for every pod the chart makes."""
    spec = pod_spec(obj)
    if spec is None:
        return []
    where = name_of(obj)
    problems = []
    psc = spec.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot must be true")
    if not isinstance(psc.get("runAsUser"), int) or psc.get("runAsUser", 0) <= 0:
        problems.append(f"{where}: pod securityContext.runAsUser must be a non-zero uid")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod securityContext.seccompProfile.type must be RuntimeDefault")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: automountServiceAccountToken must be false")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        problems.append(f"{where}: host namespaces are not allowed")
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        cw = f"{where} container {c.get('name')}"
        sc = c.get("securityContext")
        if not sc:
            problems.append(f"{cw}: securityContext is missing")
            continue
        if sc.get("runAsNonRoot") is not True:
            problems.append(f"{cw}: securityContext.runAsNonRoot must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cw}: securityContext.allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cw}: securityContext.readOnlyRootFilesystem must be true")
        if sc.get("privileged"):
            problems.append(f"{cw}: must not be privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{cw}: securityContext.capabilities.drop must contain ALL")
        if (sc.get("capabilities") or {}).get("add"):
            problems.append(f"{cw}: no capability may be added")
        if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{cw}: securityContext.seccompProfile.type must be RuntimeDefault")
        res = c.get("resources") or {}
        req = res.get("requests") or {}
        if not req.get("cpu") or not req.get("memory"):
            problems.append(f"{cw}: resources.requests.cpu and .memory are required")
        if not (res.get("limits") or {}).get("memory"):
            problems.append(f"{cw}: resources.limits.memory is required")
        for env in c.get("env") or []:
            if SECRET_ENV.search(env.get("name", "")) and "value" in env:
                problems.append(f"{cw}: env {env['name']} is a secret inlined as a literal; use valueFrom.secretKeyRef")
    return problems


def check_deployment(obj: Obj, drain_secs: int | None) -> list[str]:
    where = name_of(obj)
    spec = pod_spec(obj) or {}
    problems = []
    for c in spec.get("containers", []):
        cw = f"{where} container {c.get('name')}"
        # carehub services (`carehub serve <s>`) probe grpc.health.v1 natively on the admin
        # port; other containers (the example Envoy) just need liveness and readiness.
        carehub = (c.get("args") or [])[:1] == ["serve"]
        admin_ports = {p.get("containerPort") for p in c.get("ports") or [] if p.get("name") == "admin"}
        for probe, service in (("startupProbe", "liveness"), ("livenessProbe", "liveness"), ("readinessProbe", None)):
            spec_ = c.get(probe)
            if not spec_:
                if carehub or probe != "startupProbe":
                    problems.append(f"{cw}: {probe} is missing")
                continue
            if not carehub:
                continue
            grpc = spec_.get("grpc")
            if not grpc:
                problems.append(f"{cw}: {probe} must be a native gRPC probe (grpc.health.v1)")
            elif grpc.get("port") not in admin_ports:
                problems.append(f"{cw}: {probe} must probe the admin port (the gRPC port is mTLS-only)")
            elif grpc.get("service") != service:
                problems.append(f"{cw}: {probe} must ask for health service {service or '(readiness)'!r}")
        pre = ((c.get("lifecycle") or {}).get("preStop") or {})
        if not pre:
            problems.append(f"{cw}: lifecycle.preStop is missing (endpoints must drain before the listener closes)")
        sleep = (pre.get("sleep") or {}).get("seconds", 0)
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if drain_secs is not None and grace < sleep + drain_secs:
            problems.append(f"{where}: terminationGracePeriodSeconds {grace} < preStop {sleep} + drain {drain_secs}")
    keys = {t.get("topologyKey") for t in spec.get("topologySpreadConstraints") or []}
    for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname"):
        if key not in keys:
            problems.append(f"{where}: no topologySpreadConstraint on {key}")
    return problems


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        val = labels.get(e["key"])
        if e["operator"] == "In" and val not in e.get("values", []):
            return False
        if e["operator"] == "NotIn" and val in e.get("values", []):
            return False
        if e["operator"] == "Exists" and val is None:
            return False
    return True


def components_selected(peers: list[Obj], release: str) -> set[str]:
    """Which carehub components a list of podSelector-only peers admits."""
    out = set()
    for peer in peers:
        sel = peer.get("podSelector")
        if sel is None or "namespaceSelector" in peer:
            continue
        for comp in list(CALL_GRAPH) + ["dummy", "helm-test", "migrate"]:
            if selects(sel, {"app.kubernetes.io/instance": release, "app.kubernetes.io/component": comp}):
                out.add(comp)
        for e in sel.get("matchExpressions") or []:
            if e["key"] == "app.kubernetes.io/component" and e["operator"] == "In":
                out |= set(e["values"])
    return out


def check_call_graph(name: str, netpol: Obj, enabled: list[str], calls: dict[str, list[str]], release: str,
                     outbox: dict[str, list[str]] | None = None) -> list[str]:
    """Ingress on gRPC from exactly the callers, egress to exactly the callees (the services a
    service calls, and its enabled outbox targets)."""
    where = name_of(netpol)
    problems = []
    outbox = outbox or {}
    if name in CALL_GRAPH and set(calls.get(name, [])) != CALL_GRAPH[name]:
        problems.append(f"services.{name}.calls is {sorted(calls.get(name, []))}, DESIGN.md §1 says {sorted(CALL_GRAPH[name])}")
    if name in OUTBOX_GRAPH and set(outbox.get(name, [])) != OUTBOX_GRAPH[name]:
        problems.append(f"services.{name}.outboxTargets is {sorted(outbox.get(name, []))}, its outbox delivers to {sorted(OUTBOX_GRAPH[name])}")
    calls = {s: sorted(set(calls.get(s, [])) | (set(outbox.get(s, [])) & set(enabled))) for s in enabled}
    spec = netpol.get("spec", {})
    if set(spec.get("policyTypes", [])) != {"Ingress", "Egress"}:
        problems.append(f"{where}: policyTypes must be [Ingress, Egress]")
    want_in = {s for s in enabled if name in calls.get(s, [])}
    got_in: set[str] = set()
    for rule in spec.get("ingress") or []:
        got_in |= components_selected(rule.get("from") or [], release)
    got_in.discard("helm-test")
    if got_in != want_in:
        problems.append(f"{where}: admits {sorted(got_in)} from the suite, the call graph says {sorted(want_in)}")
    got_out: set[str] = set()
    for rule in spec.get("egress") or []:
        got_out |= components_selected(rule.get("to") or [], release)
    if got_out != set(calls.get(name, [])):
        problems.append(f"{where}: egress to {sorted(got_out)}, the call graph says {sorted(calls.get(name, []))}")
    for rule in (spec.get("ingress") or []) + (spec.get("egress") or []):
        peers = rule.get("from") or rule.get("to")
        if not peers:
            problems.append(f"{where}: a rule without peers admits everything")
        if not rule.get("ports"):
            problems.append(f"{where}: a rule without ports admits every port")
    return problems


def check_billing_processor(netpol: Obj, config: Obj, metrics_peers: list[Obj]) -> list[str]:
    """Billing reaches the outside world only for Stripe: egress on TCP 443 to the processor's
    peers, and the webhook's callers on the admin port, both only when its config says
    processor.kind = "stripe" (the sandbox needs neither); no other rule reaches beyond the
    cluster's pods or opens the admin port to anyone but the metrics scrapers."""
    where = name_of(netpol)
    problems = []
    stripe = ((config.get("billing") or {}).get("processor") or {}).get("kind") == "stripe"
    if stripe and not ((config.get("billing") or {}).get("processor") or {}).get("vault_path"):
        problems.append(f"{where}: billing talks to Stripe without billing.processor.vault_path (its secrets' Vault path)")
    spec = netpol.get("spec", {})
    outside = [r for r in spec.get("egress") or [] if any("ipBlock" in p for p in r.get("to") or [])
               and any(p.get("port") == 443 for p in r.get("ports") or [])]
    if stripe and not outside:
        problems.append(f"{where}: billing talks to Stripe but has no egress to the processor on 443")
    if not stripe and outside:
        problems.append(f"{where}: billing uses the sandbox processor but may reach the outside on 443")
    for r in outside:
        ports = {(p.get("port"), p.get("protocol", "TCP")) for p in r.get("ports") or []}
        if ports != {(443, "TCP")}:
            problems.append(f"{where}: the processor egress opens {sorted(ports)}, only TCP 443 is the processor's")
    webhook = [r for r in spec.get("ingress") or [] if any(p.get("port") == "admin" for p in r.get("ports") or [])
               and (r.get("from") or []) != metrics_peers]
    if webhook and not stripe:
        problems.append(f"{where}: billing's admin port admits webhook callers although it uses the sandbox processor")
    return problems


def secret_toml_keys(table: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(table, dict):
        for k, v in table.items():
            p = f"{path}.{k}" if path else k
            public = p in PUBLIC_URL_KEYS and isinstance(v, str) and not re.search(r"://[^/]*@", v)
            if k in SECRET_TOML_KEYS and not isinstance(v, dict) and not public:
                found.append(p)
            found += secret_toml_keys(v, p)
    return found


def database_secrets(values: Obj, name: str) -> dict[str, tuple[str, str]]:
    """The (Secret, key) of each database role of a service, as the chart reads its values:
    `migrator` (the migration Job: the tables' owner) and `app` (the serving pods: a login role
    in "<database>_app" that owns nothing). The former `database.existingSecret`/`key` are the
    migrator's."""
    defaults = (values.get("serviceDefaults") or {}).get("database") or {}
    own = ((values.get("services") or {}).get(name) or {}).get("database") or {}
    db = {**defaults, **own}
    out = {}
    for role in ("migrator", "app"):
        conn = {**(defaults.get(role) or {}), **(own.get(role) or {})}
        out[role] = (conn.get("existingSecret") or "", conn.get("key") or "url")
    if db.get("existingSecret") or db.get("key"):
        out["migrator"] = (db.get("existingSecret") or out["migrator"][0], db.get("key") or "url")
    return out


def secrets_referenced(spec: Obj) -> set[str]:
    """Every Secret a pod spec can read: env, envFrom, volumes (also projected), pull secrets aside."""
    found = set()
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []) + (spec.get("ephemeralContainers") or []):
        for env in c.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                found.add(ref.get("name"))
        for src in c.get("envFrom") or []:
            if src.get("secretRef"):
                found.add(src["secretRef"].get("name"))
    for vol in spec.get("volumes") or []:
        if vol.get("secret"):
            found.add(vol["secret"].get("secretName"))
        for src in (vol.get("projected") or {}).get("sources") or []:
            if src.get("secret"):
                found.add(src["secret"].get("name"))
    return found


def database_url_ref(spec: Obj) -> list[tuple[str, str]]:
    """(Secret, key) of every container's CAREHUB_SERVER__DATABASE__URL."""
    refs = []
    for c in spec.get("containers") or []:
        for e in c.get("env") or []:
            if e.get("name") == "CAREHUB_SERVER__DATABASE__URL":
                ref = (e.get("valueFrom") or {}).get("secretKeyRef") or {}
                refs.append((ref.get("name", ""), ref.get("key", "")))
    return refs


def runs_migrate(c: Obj) -> bool:
    words = [str(w) for w in (c.get("command") or []) + (c.get("args") or [])]
    return "migrate" in words[:2] or any("carehub migrate" in w for w in words)


def check_database_roles(docs: list[Obj], values: Obj, enabled: list[str]) -> list[str]:
    """Issue 9: the serving pods never get the migrator's (owner's) Secret and never run the
    migrations; the migration Job is a hook of its own with the migrator's Secret only."""
    problems: list[str] = []
    roles = {n: database_secrets(values, n) for n in enabled}
    migrator_secrets = {n: r["migrator"][0] for n, r in roles.items() if r["migrator"][0]}
    migrate_jobs = {f"carehub-{n}-migrate" for n in enabled}
    for name, r in roles.items():
        if not r["app"][0]:
            problems.append(f"service {name}: no database.app Secret for the serving pods")
        elif r["app"][0] == r["migrator"][0]:
            problems.append(f"service {name}: the serving pods' database Secret {r['app'][0]} is the migrator's")
    for d in docs:
        spec = pod_spec(d)
        if spec is None:
            continue
        where = name_of(d)
        is_migrate_job = d["kind"] == "Job" and d["metadata"]["name"] in migrate_jobs
        if is_migrate_job:
            continue
        for service, secret in migrator_secrets.items():
            if secret in secrets_referenced(spec):
                problems.append(f"{where}: reads the migrator Secret {secret} of {service} (the tables' owner); "
                                "only the migration Job may")
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            if runs_migrate(c):
                problems.append(f"{where} container {c.get('name')}: runs the migrations; only the migration Job (a hook) may")
    for name, r in roles.items():
        full = f"carehub-{name}"
        dep = next((d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == full), None)
        if dep:
            refs = database_url_ref(pod_spec(dep) or {})
            if refs != [r["app"]]:
                problems.append(f"{name_of(dep)}: CAREHUB_SERVER__DATABASE__URL comes from {refs}, want the app role's {r['app']}")
        cm = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == full), None)
        if cm:
            try:
                db = tomllib.loads(cm["data"]["config.toml"])["server"]["database"]
                if db.get("migrate_on_start") is not False:
                    problems.append(f"{name_of(cm)}: server.database.migrate_on_start must be false (the serving role may not migrate)")
            except (tomllib.TOMLDecodeError, KeyError):
                pass  # reported by check_release
        job = next((d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == f"{full}-migrate"), None)
        if job:
            jspec = pod_spec(job) or {}
            refs = database_url_ref(jspec)
            if refs != [r["migrator"]]:
                problems.append(f"{name_of(job)}: CAREHUB_SERVER__DATABASE__URL comes from {refs}, want the migrator's {r['migrator']}")
            if r["app"][0] in secrets_referenced(jspec):
                problems.append(f"{name_of(job)}: reads the serving role's Secret {r['app'][0]}")
            # `carehub migrate <s>` loads and validates <s>'s whole configuration: what the
            # service requires (records: server.auth.identity_endpoint) the Job must set too.
            if cm:
                try:
                    endpoint = tomllib.loads(cm["data"]["config.toml"])["server"].get("auth", {}).get("identity_endpoint")
                except (tomllib.TOMLDecodeError, KeyError):
                    endpoint = None
                env = {e.get("name"): e.get("value") for c in jspec.get("containers") or [] for e in c.get("env") or []}
                try:
                    own = tomllib.loads(cm["data"]["config.toml"]).get(name, {})
                except tomllib.TOMLDecodeError:
                    own = {}
                # messaging refuses a configuration without messaging.records_endpoint;
                # scheduling's feed_base_url is validated there too.
                for key in ("records_endpoint", "feed_base_url"):
                    var = f"CAREHUB_{name.upper().replace('-', '_')}__{key.upper()}"
                    if own.get(key) and env.get(var) != own[key]:
                        problems.append(f"{name_of(job)}: {var} is {env.get(var)!r}, the service's config says "
                                        f"{own[key]!r} (`carehub migrate {name}` refuses a configuration the service refuses)")
                if endpoint and env.get("CAREHUB_SERVER__AUTH__IDENTITY_ENDPOINT") != endpoint:
                    problems.append(f"{name_of(job)}: CAREHUB_SERVER__AUTH__IDENTITY_ENDPOINT is "
                                    f"{env.get('CAREHUB_SERVER__AUTH__IDENTITY_ENDPOINT')!r}, the service's config says {endpoint!r} "
                                    f"(`carehub migrate {name}` refuses a configuration the service refuses)")
            labels = (job["spec"].get("template", {}).get("metadata") or {}).get("labels") or {}
            for kind in ("Deployment", "Service"):
                o = next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == full), None)
                if not o:
                    continue
                sel = o["spec"].get("selector") or {}
                sel = sel if kind == "Deployment" else {"matchLabels": sel}
                if selects(sel, labels):
                    problems.append(f"{name_of(job)}: its pods are selected by {kind}/{full}: a migration pod would join the serving pods")
    return problems


def check_release(docs: list[Obj], values: Obj, release: str) -> list[str]:
    """Everything a rendered release must contain and satisfy, given its merged values."""
    problems: list[str] = []
    by_kind: dict[tuple[str, str], Obj] = {}
    for d in docs:
        by_kind[(d["kind"], d["metadata"]["name"])] = d
        problems += check_pod_security(d)
        if d["kind"] == "Secret":
            problems.append(f"{name_of(d)}: the chart must not render Secrets (values would inline secret data)")
    services = values.get("services") or {}
    enabled = sorted(n for n, s in services.items() if isinstance(s, dict) and s.get("enabled", True))
    defaults = values.get("serviceDefaults") or {}
    calls = {n: (services[n].get("calls") if services[n].get("calls") is not None else defaults.get("calls", [])) for n in enabled}
    outbox = {n: (services[n].get("outboxTargets") if services[n].get("outboxTargets") is not None
                  else defaults.get("outboxTargets", [])) for n in enabled}
    tls_source = values["tls"]["source"]
    problems += check_database_roles(docs, values, enabled)
    for name in enabled:
        autoscaling = {**(defaults.get("autoscaling") or {}), **(services[name].get("autoscaling") or {})}
        full = f"carehub-{name}"
        want = ["Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"]
        if autoscaling.get("enabled"):
            want.append("HorizontalPodAutoscaler")
        if tls_source == "certManager":
            want.append("Certificate")
        for kind in want:
            if (kind, full) not in by_kind:
                problems.append(f"service {name}: no {kind}/{full}")
        if values.get("migrations", {}).get("enabled", True):
            job = by_kind.get(("Job", f"{full}-migrate"))
            hooks = (job or {}).get("metadata", {}).get("annotations", {}).get("helm.sh/hook", "")
            if not job or set(hooks.split(",")) != {"pre-install", "pre-upgrade"}:
                problems.append(f"service {name}: no migration Job {full}-migrate as a pre-install,pre-upgrade hook")
        if values.get("tests", {}).get("enabled", True) and ("Pod", f"carehub-helm-test-{name}") not in by_kind:
            problems.append(f"service {name}: no helm test pod carehub-helm-test-{name}")
        dep = by_kind.get(("Deployment", full))
        cm = by_kind.get(("ConfigMap", full))
        drain = None
        if cm:
            try:
                cfg = tomllib.loads(cm["data"]["config.toml"])
                drain = cfg["server"]["limits"]["drain_timeout_secs"]
                for key in secret_toml_keys(cfg):
                    problems.append(f"{name_of(cm)}: config.toml inlines the secret {key}")
            except (tomllib.TOMLDecodeError, KeyError) as e:
                problems.append(f"{name_of(cm)}: config.toml is not the expected TOML: {e}")
        if dep:
            problems += check_deployment(dep, drain)
            labels = dep["spec"]["template"]["metadata"]["labels"]
            if autoscaling.get("enabled") and "replicas" in dep["spec"]:
                problems.append(f"{name_of(dep)}: sets replicas although an HPA owns them")
            for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
                o = by_kind.get((kind, full))
                if not o:
                    continue
                sel = o["spec"].get("selector") if kind != "NetworkPolicy" else o["spec"].get("podSelector")
                sel = sel if kind != "Service" else {"matchLabels": sel}
                if not sel or not selects(sel, labels):
                    problems.append(f"{kind}/{full}: does not select the Deployment's pods")
            hpa = by_kind.get(("HorizontalPodAutoscaler", full))
            if hpa and hpa["spec"]["scaleTargetRef"]["name"] != full:
                problems.append(f"{name_of(hpa)}: scales {hpa['spec']['scaleTargetRef']['name']}, not {full}")
            if dep["spec"]["template"]["spec"].get("serviceAccountName") != full:
                problems.append(f"{name_of(dep)}: must run as ServiceAccount {full} (Vault's Kubernetes auth role is bound to it)")
        netpol = by_kind.get(("NetworkPolicy", full))
        if netpol:
            problems += check_call_graph(name, netpol, enabled, calls, release, outbox)
        if netpol and cm and name == "billing":
            try:
                config = tomllib.loads(cm["data"]["config.toml"])
            except tomllib.TOMLDecodeError:
                config = {}
            metrics = (values.get("networkPolicy") or {}).get("metrics") or []
            problems += check_billing_processor(netpol, config, metrics)
    return problems
