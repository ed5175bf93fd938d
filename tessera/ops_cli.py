"""The operator's commands for watching and auditing the platform: `tessera status`,
`tessera monitoring prometheus-config` and `tessera billing export|verify`
(docs/operations.md). `tessera.cli` adds them to its parser with `add_commands`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from base.config import Settings

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _targets(settings: Settings, given: list[str]) -> dict[str, str]:
    """Process name -> side-port URL: `--target NAME=URL` options, else the running `tessera up`'s."""
    if given:
        pairs = [target.partition("=") for target in given]
        if any(not sep for _, sep, _ in pairs):
            raise SystemExit("tessera: --target takes NAME=URL (http://host:port of its side port)")
        return {name: url.rstrip("/") for name, _, url in pairs}
    from tessera.monitoring.config import side_ports

    return side_ports(settings)


def _database_url(settings: Settings) -> str | None:
    from tessera import runtime

    try:
        return runtime.urls(settings)[1]
    except SystemExit:
        return None


def cmd_status(args: argparse.Namespace) -> None:
    from tessera import status

    settings = Settings.from_env()
    services = _targets(settings, args.target)
    database_url = _database_url(settings)

    def screen() -> str:
        return status.render(asyncio.run(status.gather(services, database_url, settings.quota_timezone)))

    if not args.watch:
        print(screen(), end="")
        return
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            text = screen()
            print("\x1b[H\x1b[2J" + text, end="", flush=True)  # home, clear: one screen, redrawn
            time.sleep(args.interval)


def cmd_prometheus_config(args: argparse.Namespace) -> None:
    from tessera.monitoring import config

    settings = Settings.from_env()
    rules = args.rules or [str(config.ALERTS_FILE)]
    print(
        config.render(
            config.prometheus_config(
                _targets(settings, args.target), rule_files=rules, scrape_interval=args.scrape_interval
            )
        )
    )


def _day(raw: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a day (YYYY-MM-DD)") from None


def cmd_billing_export(args: argparse.Namespace) -> None:
    from base import db
    from tessera import billing, runtime

    async def main() -> list[billing.Line]:
        async with db.connection(runtime.urls(Settings.from_env())[1]) as conn:
            return await billing.bill(conn, args.day)

    lines = asyncio.run(main())
    text = billing.render(lines, args.format)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    charges = sum(1 for line in lines if line.kind == "charge")
    refunds = sum(1 for line in lines if line.kind == "refund")
    total = {line.kind: line.tokens for line in lines if line.kind in billing.TOTALS}
    print(
        f"{args.day}: {charges} charge(s), {total['total-charged']:g} tokens; {refunds} refund(s), "
        f"{total['total-refunded']:g} tokens; up to event seq {lines[-1].seq}",
        file=sys.stderr,
    )


def cmd_billing_verify(args: argparse.Namespace) -> None:
    from base import db
    from tessera import billing, runtime

    try:
        found = billing.parse(Path(args.file).read_text())
        day, up_to = billing.scope(found)
    except (OSError, billing.Unreadable) as exc:
        raise SystemExit(f"tessera: {args.file}: {exc}") from None

    async def main() -> list[billing.Line]:
        async with db.connection(runtime.urls(Settings.from_env())[1]) as conn:
            return await billing.bill(conn, day, up_to)

    problems = billing.differences(found, asyncio.run(main()))
    for problem in problems:
        print(problem)
    if problems:
        raise SystemExit(f"tessera: {args.file} differs from the event log in {len(problems)} place(s)")
    print(f"{args.file}: matches the event log ({day}, up to event seq {up_to})")


def add_commands(sub: SubParsers) -> None:
    """`status`, `monitoring` and `billing`, on the `tessera` parser's subcommands."""
    target_help = "a process's side port, NAME=http://host:port (repeatable; default: the running `tessera up`'s)"
    p = sub.add_parser("status", help="the platform on one screen: services, workers, queue, lag, today's jobs")
    p.add_argument("--watch", action="store_true", help="redraw until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between redraws with --watch")
    p.add_argument("--target", action="append", default=[], help=target_help)
    p.set_defaults(func=cmd_status)

    monitoring = sub.add_parser("monitoring", help="Prometheus and Grafana").add_subparsers(
        dest="action", required=True
    )
    p = monitoring.add_parser("prometheus-config", help="print a prometheus.yml that scrapes every process")
    p.add_argument("--target", action="append", default=[], help=target_help)
    p.add_argument("--rules", action="append", default=[], help="a rules file (default: Tessera's alerts.yml)")
    p.add_argument("--scrape-interval", default="15s")
    p.set_defaults(func=cmd_prometheus_config)

    billing = sub.add_parser("billing", help="a day's bill, from the event log").add_subparsers(
        dest="action", required=True
    )
    p = billing.add_parser("export", help="every charge and refund of a quota day, with the events behind them")
    p.add_argument("--day", required=True, type=_day, help="the quota day, YYYY-MM-DD")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("-o", "--output", default=None, help="the file to write (default: standard output)")
    p.set_defaults(func=cmd_billing_export)
    p = billing.add_parser("verify", help="recompute an exported bill from the events; exit 1 on any difference")
    p.add_argument("file")
    p.set_defaults(func=cmd_billing_verify)
