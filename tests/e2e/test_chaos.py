"""Every component SIGKILLed once under load: no job lost, stuck, doubled, wrongly failed or wrongly
charged, no cancelled result delivered, read models equal to a rebuild. `bench/chaos.py` is the
longer run; tests/chaos/ holds the harness both share.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos import ChaosConfig, run_chaos


@pytest.mark.timeout(420)
async def test_killing_each_component_under_load_keeps_every_invariant(tmp_path: Path) -> None:
    seed = int(os.environ.get("TESSERA_CHAOS_SEED", "7"))
    report = await run_chaos(
        ChaosConfig(jobs=int(os.environ.get("TESSERA_CHAOS_JOBS", "300")), seed=seed, settle_s=90), tmp_path / "chaos"
    )
    print(report.text())
    assert report.figures["accepted"] > 0
    assert report.ok, report.text()
