"""`tessera projections rebuild`: rebuild the read models beside the live ones and swap them in, or
(`--check`) compare a rebuild with them without swapping (projector/rebuild.py)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from tessera.users_cli import runtime_urls

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


def cmd_projections_rebuild(args: argparse.Namespace) -> None:
    from base import db
    from projector import rebuild

    async def progress(position: int) -> None:
        if args.verbose:
            print(f"folded up to seq {position}", file=sys.stderr)

    async def main() -> int:
        async with db.connection(runtime_urls()[1]) as conn:
            try:
                if not args.check:
                    position = await rebuild.rebuild(conn, chunk=args.chunk, restart=args.restart, on_chunk=progress)
                    print(f"read models rebuilt from the event log up to seq {position} and swapped in")
                    return 0
                found = await rebuild.check(conn, chunk=args.chunk, restart=args.restart, on_chunk=progress)
            except rebuild.RebuildMismatch as exc:
                raise SystemExit(f"tessera: {exc}") from None
        for line in found.samples:
            print(line)
        for table in found.only_live:
            live, rebuilt = found.only_live[table], found.only_rebuilt[table]
            if live or rebuilt:
                print(f"{table}: {live} row(s) only in the live read model, {rebuilt} only in the rebuild")
        verdict = "differ from" if found.differs else "equal"
        print(f"read models {verdict} a rebuild from the event log, at seq {found.position}")
        return 1 if found.differs else 0

    sys.exit(asyncio.run(main()))


def add_projection_commands(sub: SubParsers) -> None:
    projections = sub.add_parser("projections", help="read models").add_subparsers(dest="action", required=True)
    p = projections.add_parser(
        "rebuild",
        help="re-fold every read model from the events into new tables and swap them in (reads go on meanwhile)",
    )
    p.add_argument("--check", action="store_true", help="compare a rebuild with the live read models; swap nothing")
    p.add_argument("--restart", action="store_true", help="throw away an unfinished rebuild instead of resuming it")
    p.add_argument("--chunk", type=int, default=5000, help="events folded per transaction")
    p.set_defaults(func=cmd_projections_rebuild)
