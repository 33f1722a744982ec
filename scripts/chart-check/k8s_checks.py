"""Checks of k8s/: the kustomization's objects, CRD objects kubernetes-validate has no schema
for, and the Vault policies' least privilege."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
from typing import Any, Callable

import yaml

SERVICES = ["identity", "scheduling", "messaging", "records", "billing"]

# kubernetes-validate knows only built-in kinds. For these CRDs we check the fields carehub
# relies on, by the field lists of cert-manager v1 and CloudNativePG v1 (not their full schemas).
CRD_FIELDS: dict[tuple[str, str], dict[str, Any]] = {
    ("cert-manager.io/v1", "Certificate"): {
        "required": ["secretName", "issuerRef"],
        "allowed": {"secretName", "issuerRef", "dnsNames", "uris", "usages", "privateKey", "duration", "renewBefore",
                    "isCA", "commonName", "ipAddresses", "emailAddresses", "subject", "secretTemplate",
                    "revisionHistoryLimit", "keystores", "literalSubject", "encodeUsagesInRequest", "additionalOutputFormats"},
    },
    ("cert-manager.io/v1", "Issuer"): {
        "required": [],
        "one_of": ["selfSigned", "ca", "vault", "acme", "venafi"],
        "allowed": {"selfSigned", "ca", "vault", "acme", "venafi"},
    },
    ("cert-manager.io/v1", "ClusterIssuer"): {
        "required": [],
        "one_of": ["selfSigned", "ca", "vault", "acme", "venafi"],
        "allowed": {"selfSigned", "ca", "vault", "acme", "venafi"},
    },
    # The Prometheus Operator's kinds (templates/monitoring.yaml); promql_check.py checks their
    # contents (endpoints, rules, expressions).
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "required": ["selector", "endpoints"],
        "allowed": {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels",
                    "sampleLimit", "targetLimit", "labelLimit", "attachMetadata"},
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "required": ["groups"],
        "allowed": {"groups"},
    },
    ("postgresql.cnpg.io/v1", "Cluster"): {
        "required": ["instances", "storage"],
        "allowed": {"instances", "imageName", "primaryUpdateStrategy", "bootstrap", "storage", "walStorage", "postgresql",
                    "resources", "affinity", "monitoring", "backup", "description", "enableSuperuserAccess",
                    "managed", "minSyncReplicas", "maxSyncReplicas", "certificates", "inheritedMetadata"},
    },
}
USAGES = {"server auth", "client auth", "digital signature", "key encipherment", "cert sign"}


def is_crd_object(obj: dict) -> bool:
    return "." in obj.get("apiVersion", "").split("/")[0] and not obj.get("apiVersion", "").split("/")[0].endswith("k8s.io")


def check_crd_object(obj: dict) -> list[str]:
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    rules = CRD_FIELDS.get((obj.get("apiVersion"), obj.get("kind")))
    if rules is None:
        return [f"{where}: {obj.get('apiVersion')} {obj.get('kind')} is neither a Kubernetes kind nor a known CRD"]
    problems = []
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", obj.get("metadata", {}).get("name", "")):
        problems.append(f"{where}: metadata.name is not a DNS subdomain")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return problems + [f"{where}: spec must be an object"]
    for key in rules["required"]:
        if key not in spec:
            problems.append(f"{where}: spec.{key} is required")
    for key in set(spec) - rules["allowed"]:
        problems.append(f"{where}: spec.{key} is not a field carehub expects here")
    if "one_of" in rules and sum(k in spec for k in rules["one_of"]) != 1:
        problems.append(f"{where}: exactly one of spec.{'/'.join(rules['one_of'])}")
    if obj["kind"] == "Certificate":
        ref = spec.get("issuerRef") or {}
        if not ref.get("name") or ref.get("kind") not in ("Issuer", "ClusterIssuer"):
            problems.append(f"{where}: spec.issuerRef needs a name and kind Issuer or ClusterIssuer")
        for u in spec.get("usages") or []:
            if u not in USAGES:
                problems.append(f"{where}: spec.usages {u!r} is not a cert-manager key usage")
        for d in ("duration", "renewBefore"):
            if d in spec and not re.fullmatch(r"([0-9]+(h|m|s))+", str(spec[d])):
                problems.append(f"{where}: spec.{d} {spec[d]!r} is not a Go duration")
    if obj["kind"] == "Cluster":
        if not isinstance(spec.get("instances"), int) or spec["instances"] < 1:
            problems.append(f"{where}: spec.instances must be an integer >= 1")
        problems += check_cluster_roles(where, spec)
    return problems


ROLE_FIELDS = {"name", "ensure", "comment", "login", "inherit", "superuser", "createdb", "createrole", "replication",
               "bypassrls", "connectionLimit", "validUntil", "inRoles", "passwordSecret", "disablePassword"}


def check_cluster_roles(where: str, spec: dict) -> list[str]:
    """Issue 9: the pods' login role is a member of "<database>_app" and nothing more: the
    migrations' owner (bootstrap.initdb.owner) is another role, used by the migration Job only."""
    problems = []
    initdb = (spec.get("bootstrap") or {}).get("initdb") or {}
    database, owner = initdb.get("database"), initdb.get("owner")
    if not database or not owner:
        return [f"{where}: spec.bootstrap.initdb needs database and owner (the migration Job's role)"]
    group = f"{database}_app"
    roles = {r.get("name"): r for r in (spec.get("managed") or {}).get("roles") or []}
    for r in roles.values():
        for key in set(r) - ROLE_FIELDS:
            problems.append(f"{where}: managed role {r.get('name')}: {key} is not a CloudNativePG RoleConfiguration field")
    if group not in roles or roles[group].get("login") or roles[group].get("ensure", "present") != "present":
        problems.append(f"{where}: spec.managed.roles must create the NOLOGIN group {group} the migrations grant to")
    members = [r for r in roles.values() if group in (r.get("inRoles") or []) and r.get("login")]
    if not members:
        problems.append(f"{where}: no managed login role in {group} for the serving pods")
    for r in members:
        name = r.get("name")
        if name == owner:
            problems.append(f"{where}: the serving role {name} is the database owner")
        for attr in ("superuser", "createdb", "createrole", "replication", "bypassrls"):
            if r.get(attr):
                problems.append(f"{where}: the serving role {name} has {attr}")
        if set(r.get("inRoles") or []) != {group}:
            problems.append(f"{where}: the serving role {name} is in {sorted(r.get('inRoles') or [])}, only {group} expected")
        if not (r.get("passwordSecret") or {}).get("name"):
            problems.append(f"{where}: the serving role {name} has no passwordSecret")
    return problems


POLICY_BLOCK = re.compile(r'path\s+"([^"]+)"\s*\{\s*capabilities\s*=\s*\[([^\]]*)\]\s*\}', re.S)


def policy_paths(text: str) -> dict[str, set[str]]:
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    found = {m.group(1): set(re.findall(r'"([a-z]+)"', m.group(2))) for m in POLICY_BLOCK.finditer(body)}
    # Anything that is not a comment or a recognised block is a policy we do not understand.
    rest = POLICY_BLOCK.sub("", body).strip()
    if rest:
        found["<unparsed>"] = {rest[:60]}
    return found


def check_vault(vault_dir: pathlib.Path) -> list[str]:
    problems = []
    for s in SERVICES:
        f = vault_dir / f"carehub-{s}.hcl"
        if not f.exists():
            problems.append(f"{f}: missing")
            continue
        want = {f"secret/data/carehub/{s}/*": {"read"}, f"pki/issue/carehub-{s}": {"update"}}
        got = policy_paths(f.read_text())
        if got != want:
            problems.append(f"{f.name}: grants {sorted((p, sorted(c)) for p, c in got.items())}; least privilege is {sorted((p, sorted(c)) for p, c in want.items())}")
    f = vault_dir / "carehub-operator.hcl"
    got = policy_paths(f.read_text()) if f.exists() else {}
    for path, caps in got.items():
        if not path.startswith(("secret/data/carehub/", "secret/metadata/carehub/")):
            problems.append(f"{f.name}: path {path} is outside carehub's keys")
        if caps & {"delete", "sudo", "deny"} or caps - {"create", "read", "update", "list", "patch"}:
            problems.append(f"{f.name}: {path} grants {sorted(caps)}; the operator may not delete or destroy keys")
    if not got:
        problems.append(f"{f}: missing or empty")
    setup = vault_dir / "setup.sh"
    if not setup.exists() or subprocess.run(["bash", "-n", str(setup)]).returncode:
        problems.append(f"{setup}: missing or not valid bash")
    return problems


def kustomize(path: pathlib.Path, label: str) -> tuple[list[dict], str]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        r = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True)
        if r.returncode:
            raise ValueError(f"kubectl kustomize {label}: {r.stderr.strip()}")
        return [d for d in yaml.safe_load_all(r.stdout) if d], f"kubectl kustomize {label}"
    # Without kubectl: the kustomization's resources as written (no transformers applied).
    kust = yaml.safe_load((path / "kustomization.yaml").read_text())
    docs = []
    for res in kust.get("resources", []):
        docs += [d for d in yaml.safe_load_all((path / res).read_text()) if d]
    for d in docs:
        d.setdefault("metadata", {}).setdefault("namespace", kust.get("namespace"))
    return docs, f"{label} resources (kubectl not installed: kustomize output not checked)"


def check_gateway(gateway: pathlib.Path, validate: Callable[[list[dict], str], int]) -> list[str]:
    import envoy_check
    import invariants

    try:
        docs, how = kustomize(gateway, "k8s/gateway/")
    except ValueError as e:
        return [str(e)]
    bad = validate(docs, how)
    problems = [p for d in docs for p in invariants.check_pod_security(d)]
    problems += [p for d in docs if d["kind"] == "Deployment" for p in invariants.check_deployment(d, None)]
    problems += envoy_check.check_envoy(gateway)
    if not problems and not bad:
        print(f"ok   {how}: {len(docs)} objects validate and keep the pod invariants; Envoy config parses as Envoy's API")
    return problems


def check_database_isolation(docs: list[dict], how: str) -> list[str]:
    """Services share no database (DESIGN.md §1): each Cluster carehub-<s>-db has a NetworkPolicy
    of its own whose carehub peers are only <s>'s pods and <s>'s migration Job, and no policy
    admits carehub pods to every instance."""
    import invariants

    problems = []
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for cluster in (d for d in docs if d["kind"] == "Cluster"):
        name = cluster["metadata"]["name"]
        m = re.fullmatch(r"carehub-([a-z0-9-]+)-db", name)
        if not m:
            problems.append(f"{how}: Cluster/{name} is not named carehub-<service>-db")
            continue
        service = m.group(1)
        instance = {"cnpg.io/podRole": "instance", "cnpg.io/cluster": name}
        mine = [p for p in policies if invariants.selects(p["spec"].get("podSelector") or {}, instance)
                and (p["spec"].get("podSelector") or {}) != {}]
        if not mine:
            problems.append(f"{how}: no NetworkPolicy selects the instances of Cluster/{name}")
        allowed = [{"app.kubernetes.io/name": "carehub", "app.kubernetes.io/component": service},
                   {"app.kubernetes.io/name": "carehub", "app.kubernetes.io/component": "migrate", "carehub.io/service": service}]
        for other in ("identity", "records", "scheduling", "messaging", "billing"):
            if other == service:
                continue
            for labels in ({"app.kubernetes.io/name": "carehub", "app.kubernetes.io/component": other},
                           {"app.kubernetes.io/name": "carehub", "app.kubernetes.io/component": "migrate", "carehub.io/service": other}):
                for p in mine:
                    for rule in p["spec"].get("ingress") or []:
                        for peer in rule.get("from") or []:
                            if "podSelector" in peer and "namespaceSelector" not in peer and "ipBlock" not in peer \
                                    and invariants.selects(peer["podSelector"], labels):
                                problems.append(f"{how}: NetworkPolicy/{p['metadata']['name']} admits {labels} to {name}'s instances")
        if mine and not any(invariants.selects(peer.get("podSelector") or {"matchLabels": {"-": "-"}}, allowed[0])
                            for p in mine for rule in p["spec"].get("ingress") or [] for peer in rule.get("from") or []):
            problems.append(f"{how}: {service}'s pods cannot reach Cluster/{name}")
    return problems


def check_k8s_dir(k8s: pathlib.Path, validate: Callable[[list[dict], str], int]) -> list[str]:
    problems: list[str] = []
    try:
        docs, how = kustomize(k8s, "k8s/")
    except ValueError as e:
        return [str(e)]
    before = validate(docs, how)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    ns = next((d for d in docs if d["kind"] == "Namespace"), None)
    labels = (ns or {}).get("metadata", {}).get("labels", {})
    for mode in ("enforce", "audit", "warn"):
        if labels.get(f"pod-security.kubernetes.io/{mode}") != "restricted":
            problems.append(f"{how}: the namespace lacks pod-security.kubernetes.io/{mode}=restricted")
    deny = [d for d in docs if d["kind"] == "NetworkPolicy" and d["spec"].get("podSelector") == {}
            and set(d["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not d["spec"].get("ingress") and not d["spec"].get("egress")]
    if not deny:
        problems.append(f"{how}: no default-deny NetworkPolicy (empty podSelector, Ingress and Egress, no rules)")
    for want in (("Issuer", "carehub-ca"), ("Cluster", "carehub-identity-db"), ("Cluster", "carehub-records-db"),
                 ("Cluster", "carehub-messaging-db"), ("Cluster", "carehub-scheduling-db"),
                 ("Cluster", "carehub-billing-db")):
        if want not in kinds:
            problems.append(f"{how}: no {want[0]}/{want[1]}")
    problems += check_database_isolation(docs, how)
    problems += check_vault(k8s / "vault")
    problems += check_gateway(k8s / "gateway", validate)
    if not problems and not before:
        print(f"ok   {how}: {len(docs)} objects validate; namespace restricted, default deny; Vault policies least-privilege")
    return problems
