"""The Grafana dashboard and its provisioning files are well formed, cover what the issue asks,
and query only metrics that the services export (every service module's metrics, registered in
this process once a job has run through a platform)."""

from __future__ import annotations

import json

import yaml
from prometheus_client import REGISTRY, generate_latest

import bots.completions  # noqa: F401  # the bots' metrics, which no other service imports
import webhooks.delivery  # noqa: F401  # the webhook service's, the same
from tessera.monitoring import DASHBOARD, GRAFANA
from tests.conftest import Platform
from tests.monitoring.dashboard import exported_names, expressions, queried_metrics, registered_names


def test_the_dashboard_covers_fleet_queues_latency_failures_tokens_and_gpu_memory() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    rows = {panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"}
    assert rows >= {
        "Fleet",
        "Queues by tier",
        "Throughput and latency",
        "Failures",
        "Tokens and deliveries",
        "GPU memory",
    }
    datasource = yaml.safe_load((GRAFANA / "datasource.yml").read_text())["datasources"][0]
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == datasource["uid"]
    provider = yaml.safe_load((GRAFANA / "dashboards.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert len(expressions()) >= 25


async def test_every_metric_a_panel_queries_is_exported(platform: Platform) -> None:
    key = await platform.user_key()
    async with platform.client(key) as client:
        posted = await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "dash"}})
        await platform.wait_status(client, posted.json()["job_id"], {"COMPLETED"})
    exported = registered_names() | {"up"}  # `up` is Prometheus's own
    assert exported_names(generate_latest(REGISTRY).decode()) <= exported
    missing = queried_metrics() - exported
    assert not missing, f"the dashboard queries metrics nothing exports: {sorted(missing)}"
