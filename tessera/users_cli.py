"""`tessera users`: register a user, move one to another plan, reset a website account's password."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from base.config import Settings

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


def runtime_urls() -> tuple[str, str]:
    """The NATS and PostgreSQL URLs: configured ones, or those of the running `tessera up`."""
    from tessera import runtime

    return runtime.urls(Settings.from_env())


def cmd_users_create(args: argparse.Namespace) -> None:
    from tessera.admin import create_user

    nats_url, database_url = runtime_urls()
    user_id, key = asyncio.run(
        create_user(
            nats_url,
            database_url,
            platform=args.platform,
            user_id=args.user_id,
            plan=args.plan,
            display_name=args.display_name,
        )
    )
    print(f"user {args.platform}:{args.user_id} ({user_id}) on plan {args.plan}", file=sys.stderr)
    print("API key (shown once; store it now):", file=sys.stderr)
    print(key)


def cmd_users_set_plan(args: argparse.Namespace) -> None:
    from tessera.admin import change_user_plan

    nats_url, database_url = runtime_urls()
    user_id = asyncio.run(
        change_user_plan(nats_url, database_url, platform=args.platform, user_id=args.user_id, plan=args.plan)
    )
    print(f"user {args.platform}:{args.user_id} ({user_id}) is on plan {args.plan}")


def cmd_users_reset_password(args: argparse.Namespace) -> None:
    import getpass

    from base import db
    from gateway.web import accounts

    password = getpass.getpass("new password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")

    async def reset() -> None:
        async with db.connection(runtime_urls()[1]) as conn:
            await accounts.set_password(conn, args.email, password)

    try:
        asyncio.run(reset())
    except accounts.AccountError as exc:
        raise SystemExit(f"tessera: {exc.code}: {exc.detail}") from None
    print(f"the password of {args.email} is set; its sessions have ended")


def add_user_commands(sub: SubParsers) -> None:
    users = sub.add_parser("users", help="manage users").add_subparsers(dest="action", required=True)
    p = users.add_parser("create", help="register a user and print a new API key")
    p.add_argument("--platform", required=True, choices=["web", "telegram", "discord"])
    p.add_argument("--user-id", required=True)
    p.add_argument("--plan", default="free", help="a plan's tier: free, starter, pro, admin or one you defined")
    p.add_argument("--display-name", default=None)
    p.set_defaults(func=cmd_users_create)
    p = users.add_parser("set-plan", help="move a user to another plan (an event; applies to new jobs)")
    p.add_argument("--platform", required=True, choices=["web", "telegram", "discord"])
    p.add_argument("--user-id", required=True)
    p.add_argument("--plan", required=True)
    p.set_defaults(func=cmd_users_set_plan)
    p = users.add_parser(
        "reset-password", help="set a website account's password (asked for, or read from stdin); its sessions end"
    )
    p.add_argument("--email", required=True)
    p.set_defaults(func=cmd_users_reset_password)
