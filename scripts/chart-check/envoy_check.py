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
                else:
                    for r in doc["resources"]:
                        Secret.from_dict({k: v for k, v in r.items() if k != "@type"})
                checked += 1
            except (KeyError, ValueError, TypeError, ImportError) as e:
                problems.append(f"k8s/gateway/{f.name}: not a valid Envoy configuration: {type(e).__name__}: {e}")
    if checked < 2:
        problems.append("k8s/gateway: no envoy.yaml / sds-*.yaml found")
    return problems
