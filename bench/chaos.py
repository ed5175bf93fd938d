"""Chaos under load: every component SIGKILLed once per run, then the invariants checked.

Each run starts the platform afresh (embedded nats-server and PostgreSQL, two schedulers, the
projector, the gateway, two echo+espeak workers, each its own process), submits `--jobs` echo and
priced TTS jobs over HTTP (5% cancelled), kills each component once and restarts it 1-3 s later,
with some kills timed to hit known races (tests/chaos/faults.py), then checks the invariants
(tests/chaos/checks.py) and prints the figures. Exit status 1 if any run violated one.

    python bench/chaos.py --jobs 5000 --runs 5
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.chaos import ChaosConfig, Timing, run_chaos  # noqa: E402


async def main(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    failed = 0
    for n in range(args.runs):
        config = ChaosConfig(
            jobs=args.jobs,
            seed=seed + n,
            rate=args.rate,
            settle_s=args.settle,
            timing=Timing(heartbeat_interval_s=args.heartbeat, worker_timeout_s=args.worker_timeout),
        )
        data_dir = Path(tempfile.mkdtemp(prefix=f"tessera-chaos-{config.seed}-"))
        try:
            report = await run_chaos(config, data_dir)
        except Exception:  # a run that could not go on: say why, keep its logs, run the next
            print(
                f"\n=== run {n + 1}/{args.runs} (ABORTED) ===\n{traceback.format_exc()}"
                f"  logs and data kept in {data_dir}",
                flush=True,
            )
            failed += 1
            continue
        print(f"\n=== run {n + 1}/{args.runs} ({'ok' if report.ok else 'VIOLATIONS'}) ===", flush=True)
        print(report.text(histories=args.histories), flush=True)
        if report.ok and not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"  logs and data kept in {data_dir}", flush=True)
        failed += not report.ok
    print(f"\n{args.runs - failed} of {args.runs} run(s) passed (seeds {seed}..{seed + args.runs - 1})")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None, help="first run's seed (default: random); then +1 per run")
    parser.add_argument("--rate", type=float, default=None, help="submits per second (default: spread over the kills)")
    parser.add_argument("--settle", type=float, default=180.0, help="seconds to wait for every job to end")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="workers' heartbeat interval, seconds")
    parser.add_argument("--worker-timeout", type=float, default=5.0, help="heartbeats missed this long: lost")
    parser.add_argument("--histories", type=int, default=8, help="job histories printed per violated invariant")
    parser.add_argument("--keep", action="store_true", help="keep each run's data and logs even when it passed")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each kill as it happens")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from base.lifecycle import run_loop

    sys.exit(run_loop(main(args)))
