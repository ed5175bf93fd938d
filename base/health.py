"""What a service says about itself when asked whether it can do its work (`/readyz`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class Readiness:
    """The outcome of a service's checks, by name (`nats`, `database`, ...), and details worth
    showing an operator (the scheduler's role). Ready when every check passed."""

    checks: Mapping[str, bool]
    details: Mapping[str, object] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        """The checks that failed: what the service waits for before it can work."""
        return [name for name, ok in self.checks.items() if not ok]

    @property
    def ready(self) -> bool:
        return not self.missing

    def body(self, service: str) -> dict[str, object]:
        """The JSON body of `/readyz`."""
        return {
            "service": service,
            "status": "ready" if self.ready else "not ready",
            "missing": self.missing,
            "checks": dict(self.checks),
            **self.details,
        }


NOT_STARTED = Readiness(checks={"started": False})
