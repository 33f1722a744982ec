"""The example gateway's Envoy configuration, parsed into Envoy's own API messages (PyPI
envoy-data-plane): unknown fields, wrong types and unknown enum values are errors, also inside
typed_config. No Envoy binary runs here, so filter semantics are not checked."""

from __future__ import annotations

import importlib
import pathlib
from typing import Any, Iterator

import yaml


def _types(o: Any) -> Iterator[str]:
    if isinstance(o, dict):
        for k, v in o.items():
            if k == "@type":
                yield v
            else:
                yield from _types(v)
    elif isinstance(o, list):
        for v in o:
            yield from _types(v)


def _register(doc: Any) -> None:
    # Importing a message's module registers it for google.protobuf.Any resolution.
    for t in set(_types(doc)):
        importlib.import_module("envoy_data_plane." + t.split("/", 1)[1].rsplit(".", 1)[0])


# Paths the example gateway must route (first matching prefix, as Envoy does) to these clusters;
# None: the 404 direct_response. Internal services (called by carehub services, never by
# clients) must never be reachable from outside.
ROUTES: dict[str, str | None] = {
    "/carehub.identity.v1.IdentityService/Login": "identity",
    "/carehub.records.v1.RecordsService/GetChart": "records",
    "/carehub.identity.v1.IdentityInternal/LookupUser": None,
    "/carehub.identity.v1.IdentityInternal/ListSigningKeys": None,
    "/carehub.records.v1.RecordsInternal/AddBookedProvider": None,
    "/carehub.records.v1.RecordsServiceX/GetChart": None,
    "/carehub.messaging.v1.MessagingService/SendMessage": "messaging",
    "/carehub.messaging.v1.MessagingService/StreamEvents": "messaging",
    "/carehub.messaging.v1.MessagingService/GetVideoJoinToken": "messaging",
    "/carehub.messaging.v1.MessagingInternal/UpsertVideoVisit": None,
    "/carehub.messaging.v1.MessagingInternal/SendNotification": None,
    "/carehub.scheduling.v1.SchedulingService/SearchSlots": "scheduling",
    "/carehub.scheduling.v1.SchedulingService/BookAppointment": "scheduling",
    "/carehub.scheduling.v1.SchedulingService/CreateCalendarFeed": "scheduling",
    "/carehub.audit.v1.AuditLog/ListEvents": None,
    "/carehub.common.v1.AppointmentEvents/ApplyAppointmentEvent": None,
    # Scheduling's admin port: the calendar feeds only, never its metrics or health.
    "/calendar/3q2k7x9m4p.ics": "scheduling_calendar",
    "/calendar": None,
    "/carehub.billing.v1.BillingService/PayInvoice": "billing",
    "/carehub.billing.v1.BillingService/RefundPayment": "billing",
    "/carehub.billing.v1.BillingInternal/Anything": None,
    # Billing's admin port: the processor's webhook only, never its metrics or health.
    "/webhooks/stripe": "billing_webhook",
    "/webhooks": None,
    "/webhooks/": None,
    "/metrics": None,
    "/healthz": None,
    "/readyz": None,
    "/grpc.health.v1.Health/Check": None,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": None,
}


def _routes(doc: Any) -> list[dict]:
    out = []
    for listener in doc["static_resources"]["listeners"]:
        for chain in listener.get("filter_chains", []):
            for f in chain.get("filters", []):
                rc = (f.get("typed_config") or {}).get("route_config") or {}
                for vh in rc.get("virtual_hosts", []):
                    out += vh.get("routes", [])
    return out


def check_routes(doc: Any) -> list[str]:
    problems = []
    routes = _routes(doc)
    clusters = {c["name"] for c in doc["static_resources"]["clusters"]}
    for r in routes:
        if "prefix" not in r.get("match", {}):
            problems.append(f"k8s/gateway/envoy.yaml: route {r.get('match')} is not a prefix match; the route check cannot follow it")
        cluster = (r.get("route") or {}).get("cluster")
        if cluster and cluster not in clusters:
            problems.append(f"k8s/gateway/envoy.yaml: route {r['match']} goes to unknown cluster {cluster}")
        if cluster and "Internal/" in r["match"].get("prefix", "") + "/":
            problems.append(f"k8s/gateway/envoy.yaml: route {r['match']} exposes an internal service")
    for path, want in ROUTES.items():
        hit = next((r for r in routes if path.startswith(r.get("match", {}).get("prefix", "\0"))), None)
        got = (hit or {}).get("route", {}).get("cluster")
        if want is None and (got is not None or (hit or {}).get("direct_response", {}).get("status") != 404):
            problems.append(f"k8s/gateway/envoy.yaml: {path} must get 404, it goes to {got or hit}")
        elif want is not None and got != want:
            problems.append(f"k8s/gateway/envoy.yaml: {path} must go to cluster {want}, it goes to {got or hit}")
    return problems


def check_envoy(gateway: pathlib.Path) -> list[str]:
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap
    from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import Secret

    problems = []
    files = sorted(gateway.glob("*.yaml"))
    checked = 0
    for f in files:
        if f.name == "envoy.yaml" or f.name.startswith("sds-"):
            doc = yaml.safe_load(f.read_text())
            try:
                _register(doc)
                if f.name == "envoy.yaml":
                    Bootstrap.from_dict(doc)
                    problems += check_routes(doc)
                else:
                    for r in doc["resources"]:
                        Secret.from_dict({k: v for k, v in r.items() if k != "@type"})
                checked += 1
            except (KeyError, ValueError, TypeError, ImportError) as e:
                problems.append(f"k8s/gateway/{f.name}: not a valid Envoy configuration: {type(e).__name__}: {e}")
    if checked < 2:
        problems.append("k8s/gateway: no envoy.yaml / sds-*.yaml found")
    return problems
