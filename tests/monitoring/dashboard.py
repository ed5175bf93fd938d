"""The metric names the shipped Grafana dashboard queries, read from its panels' PromQL."""

from __future__ import annotations

import json
import re

from prometheus_client import REGISTRY, CollectorRegistry

from tessera.monitoring import DASHBOARD

# A metric name in PromQL: an identifier not followed by `(` (a function) and not a label name
# inside `{...}` or a `by (...)` list; the dashboard names only tessera_ metrics and `up`.
METRIC = re.compile(r"\b(tessera_[a-z0-9_]+|up)\b(?!\s*\()")


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append(target["expr"])
    return found


def queried_metrics() -> set[str]:
    return {name for expr in expressions() for name in METRIC.findall(expr)}


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def registered_names(registry: CollectorRegistry = REGISTRY) -> set[str]:
    """The sample names of every metric family defined in `registry`, those nothing has counted
    yet included (a labelled counter without children exposes no line at all)."""
    names = set()
    for family in registry.collect():
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def exported_names(exposition: str) -> set[str]:
    """The sample names a /metrics text offers, counting a family declared without samples yet
    (a labelled counter nothing has counted) by the names its samples will have."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            name = name.removesuffix("_total") if kind == "counter" else name  # declared with it
            names |= {name + suffix for suffix in SUFFIXES.get(kind, ("",))}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names
