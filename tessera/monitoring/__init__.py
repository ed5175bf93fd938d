"""What an operator monitors Tessera with: Prometheus alert rules, a Grafana dashboard and its
provisioning, and the scrape configuration of a running `tessera up` (`tessera monitoring`)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ALERTS = HERE / "alerts.yml"
GRAFANA = HERE / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "tessera.json"
