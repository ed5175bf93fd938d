"""The Prometheus configuration that scrapes a running `tessera up`: one scrape job per kind of
service (`tessera-scheduler`, `tessera-projector`, `tessera-gateway`, `tessera-worker`,
`tessera-bots`), a target per process with its side port, and the alert rules shipped here.

`tessera up` records each process's side port in its runtime file; this module reads it. The
configuration is written as JSON, which Prometheus reads as the YAML it is a subset of.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from base.config import Settings
from tessera import runtime
from tessera.monitoring import ALERTS
from tessera.registry import SERVICES

ALERTS_FILE = ALERTS


def side_ports(settings: Settings) -> dict[str, str]:
    """Each process of the running `tessera up` and its side port's URL, by process name."""
    path = runtime.runtime_file(settings)
    if not path.exists():
        raise SystemExit(f"tessera: no running `tessera up` (looked for {path})")
    found = json.loads(path.read_text()).get("services")
    if not found:
        raise SystemExit(f"tessera: {path} does not list the side ports (a `tessera up` older than this one?)")
    services: dict[str, str] = json.loads(found)
    return services


def kind(process: str) -> str:
    """The service a process runs: `worker-0` runs `worker`."""
    for spec in SERVICES:
        if process == spec.name or process.startswith(f"{spec.name}-"):
            return spec.name
    return process


def prometheus_config(
    services: Mapping[str, str],
    *,
    rule_files: Sequence[str] = (str(ALERTS),),
    scrape_interval: str = "15s",
    evaluation_interval: str | None = None,
) -> dict[str, object]:
    """A prometheus.yml (as data) scraping every process of `services` (name -> side-port URL)."""
    jobs: dict[str, list[dict[str, object]]] = {}
    for process, url in sorted(services.items()):
        service = kind(process)
        labels = {"process": process}
        if service == "worker":
            labels["worker"] = process
        jobs.setdefault(service, []).append({"targets": [urlsplit(url).netloc], "labels": labels})
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval or scrape_interval},
        "rule_files": list(rule_files),
        "scrape_configs": [
            {"job_name": f"tessera-{service}", "metrics_path": "/metrics", "static_configs": targets}
            for service, targets in jobs.items()
        ],
    }


def render(config: Mapping[str, object]) -> str:
    return "# prometheus.yml for Tessera (JSON is YAML); docs/operations.md#metrics\n" + json.dumps(config, indent=2)
