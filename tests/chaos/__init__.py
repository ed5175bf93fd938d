"""The chaos harness: the platform as processes, killed with SIGKILL under load, then checked.

Shared by `tests/e2e/test_chaos.py` (a few hundred jobs, for CI) and `bench/chaos.py` (thousands,
several runs, the figures printed). docs/reliability.md explains the invariants and the kill plan.
"""

from tests.chaos.cluster import Timing
from tests.chaos.run import ChaosConfig, Report, run_chaos

__all__ = ["ChaosConfig", "Report", "Timing", "run_chaos"]
