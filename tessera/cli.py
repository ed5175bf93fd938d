"""The `tessera` command line."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import sys
import uuid

from base.config import Settings
from base.logs import configure
from tessera.ops_cli import add_commands
from tessera.projections_cli import add_projection_commands
from tessera.registry import SERVICES, ServiceSpec
from tessera.users_cli import add_user_commands


def _settings() -> Settings:
    return Settings.from_env()


def _urls() -> tuple[str, str]:
    from tessera import runtime

    return runtime.urls(_settings())


def cmd_up(args: argparse.Namespace) -> None:
    from tessera.up import up

    up(_settings(), http_port=args.port, workers=args.workers)


def cmd_migrate(args: argparse.Namespace) -> None:
    from tessera.admin import migrate

    nats_url, database_url = _urls()
    applied = asyncio.run(migrate(database_url, nats_url))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none needed'}; streams are in place")


def run_service(spec: ServiceSpec, args: argparse.Namespace) -> None:
    """`tessera scheduler|projector|gateway|worker`: one process of a service from the registry."""
    spec.main(args, _settings())


def cmd_workers_credentials(args: argparse.Namespace) -> None:
    from streams import permissions, subjects
    from tessera import nats_auth, runtime

    if not subjects.is_token(args.worker_id):
        raise SystemExit(f"tessera: worker id {args.worker_id!r} may hold only letters, digits, '_' and '-'")
    settings = _settings()
    role = f"worker:{args.worker_id}"
    credentials = nats_auth.Credentials(nats_auth.credentials_file(settings))
    embedded = not settings.nats_url and credentials.path.exists()  # `tessera up` made the users
    added = credentials.ensure([role])
    running = runtime.runtime_file(settings)
    server = settings.nats_url or "nats://NATS-HOST:4222"
    if embedded and running.exists():
        server = nats_auth.without_user(json.loads(running.read_text())["nats_url"])
    if not embedded:
        print(
            "# Add this user to the `authorization { users = [...] }` block of your nats-server, then reload it:\n"
            f"{nats_auth.user_entry(role, credentials.passwords[role]).strip()}\n",
            file=sys.stderr,
        )
    elif added and not nats_auth.embedded_server(settings, credentials).reload():
        print("# The embedded nats-server is not running: it knows this worker from its next start.", file=sys.stderr)
    print(
        f"# Worker {args.worker_id}, NATS user {permissions.worker_user(args.worker_id)}. On its machine, with the "
        "host this server is\n# reachable at (`tessera up` listens on TESSERA_NATS_HOST; TLS: docs/security.md):",
        file=sys.stderr,
    )
    print(f"TESSERA_NATS_URL={credentials.url(server, role)}")
    print(f"# then run: tessera worker --worker-id {args.worker_id}", file=sys.stderr)


def cmd_workers_revoke(args: argparse.Namespace) -> None:
    from streams import permissions
    from tessera import nats_auth

    settings = _settings()
    credentials = nats_auth.Credentials(nats_auth.credentials_file(settings))
    if not credentials.remove(f"worker:{args.worker_id}"):
        raise SystemExit(f"tessera: worker {args.worker_id!r} has no NATS user in {credentials.path}")
    if settings.nats_url:
        print(
            f"removed; delete the user {permissions.worker_user(args.worker_id)} from your nats-server's "
            "configuration and reload it",
            file=sys.stderr,
        )
    elif nats_auth.embedded_server(settings, credentials).reload():
        print(f"worker {args.worker_id} can no longer connect; its connections were closed", file=sys.stderr)
    else:
        print(f"worker {args.worker_id} removed; the embedded nats-server is not running", file=sys.stderr)


def cmd_nats_authorization(args: argparse.Namespace) -> None:
    from tessera import nats_auth

    credentials = nats_auth.Credentials(nats_auth.credentials_file(_settings()))
    roles = [*nats_auth.CORE_ROLES, *(f"worker:{w}" for w in args.worker), *(f"bot:{b}" for b in args.bot)]
    try:
        credentials.ensure(roles)
    except ValueError as exc:
        raise SystemExit(f"tessera: {exc}") from None
    print(f"# Users for an external nats-server; passwords kept in {credentials.path}", file=sys.stderr)
    print(credentials.authorization(roles), end="")


def cmd_plans_list(args: argparse.Namespace) -> None:
    from tessera.admin import list_plans

    rows = asyncio.run(list_plans(_urls()[1]))
    print(f"{'tier':<10} {'prio':>4} {'tokens/day':>10} {'rpm':>7} {'running':>7} {'queued':>7} {'max px':>6}  models")
    for r in rows:
        daily = "unlimited" if r["daily_token_limit"] is None else str(r["daily_token_limit"])
        print(
            f"{r['tier']:<10} {r['priority']:>4} {daily:>10} {r['requests_per_minute']:>7} "
            f"{r['max_concurrent_jobs']:>7} {r['max_queued_jobs']:>7} {r['max_resolution']:>6}  "
            f"{','.join(r['allowed_models'])}"
        )


def cmd_plans_set(args: argparse.Namespace) -> None:
    from streams.messages import DefinePlan
    from tessera.admin import define_plan

    nats_url, database_url = _urls()
    unlimited = args.daily_tokens == "unlimited"
    try:
        daily = None if args.daily_tokens is None or unlimited else int(args.daily_tokens)
    except ValueError:
        raise SystemExit("tessera: --daily-tokens takes a number or 'unlimited'") from None
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models is not None else None
    command = DefinePlan(
        command_id=uuid.uuid4(),
        tier=args.tier,
        name=args.name,
        daily_token_limit=daily,
        unlimited_tokens=unlimited,
        requests_per_minute=args.rpm,
        max_concurrent_jobs=args.max_running,
        max_queued_jobs=args.max_queued,
        priority=args.priority,
        max_resolution=args.max_resolution,
        allowed_models=models,
        price_cents=args.price_cents,
        description=args.description,
        uploads_per_day=args.uploads_per_day,
        upload_bytes_per_day=args.upload_bytes_per_day,
        max_upload_bytes=args.max_upload_bytes,
    )
    asyncio.run(define_plan(nats_url, database_url, command))
    print(f"plan {args.tier} defined")


def cmd_plans_history(args: argparse.Namespace) -> None:
    from tessera.admin import plan_history

    for line in asyncio.run(plan_history(_urls()[1], args.tier)):
        print(line)


def cmd_frontends_create(args: argparse.Namespace) -> None:
    from tessera.admin import create_frontend_key

    nats_url, database_url = _urls()
    key = asyncio.run(create_frontend_key(nats_url, database_url, frontend=args.frontend, bot_id=args.bot_id))
    print(f"frontend key for {args.frontend}/{args.bot_id or '-'} (shown once):", file=sys.stderr)
    print(key)


def _parse_key_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise SystemExit(f"tessera: {raw!r} is not a key id (see `tessera keys list`)") from None


def cmd_keys_list(args: argparse.Namespace) -> None:
    from tessera.admin import list_keys

    if bool(args.platform) != bool(args.user_id):
        raise SystemExit("tessera: give both --platform and --user-id (a user's keys), or neither (frontend keys)")
    for row in asyncio.run(list_keys(_urls()[1], platform=args.platform, user_id=args.user_id)):
        state = f"revoked {row['revoked_at']:%Y-%m-%d %H:%M}" if row["revoked_at"] else "valid"
        owner = row.get("label") or "" if args.user_id else f"{row['frontend']}/{row['bot_id'] or '-'}"
        print(f"{row['key_id']}  {row['prefix']}...  {row['created_at']:%Y-%m-%d %H:%M}  {state:<24} {owner}")


def cmd_keys_create(args: argparse.Namespace) -> None:
    from tessera.admin import issue_key

    nats_url, database_url = _urls()
    key = asyncio.run(issue_key(nats_url, database_url, platform=args.platform, user_id=args.user_id, label=args.label))
    print("API key (shown once; store it now):", file=sys.stderr)
    print(key)


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    from tessera.admin import revoke_key

    nats_url, database_url = _urls()
    owner = asyncio.run(revoke_key(nats_url, database_url, _parse_key_id(args.key_id), reason=args.reason))
    print(f"revoked key {args.key_id} of {owner}", file=sys.stderr)


def cmd_keys_rotate(args: argparse.Namespace) -> None:
    from tessera.admin import rotate_key

    nats_url, database_url = _urls()
    key = asyncio.run(rotate_key(nats_url, database_url, _parse_key_id(args.key_id)))
    print(f"key {args.key_id} revoked; its replacement (shown once):", file=sys.stderr)
    print(key)


def cmd_jobs_history(args: argparse.Namespace) -> None:
    from tessera.admin import job_history

    try:
        job_id = uuid.UUID(args.job_id)
    except ValueError:
        raise SystemExit(f"tessera: {args.job_id!r} is not a job id") from None
    for line in asyncio.run(job_history(_urls()[1], job_id)):
        print(line)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description="Tessera: AI generation for many users, few GPUs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start the whole platform (embedded NATS and PostgreSQL unless URLs are set)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default 8000, or a free one)")
    p.add_argument("--workers", type=int, default=1, help="how many local workers to run")
    p.set_defaults(func=cmd_up)

    sub.add_parser("migrate", help="apply database migrations and create streams").set_defaults(func=cmd_migrate)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for spec in SERVICES:
        if spec.action:  # `tessera bots run`: the service is one action of a command group
            group = sub.add_parser(spec.name, help=spec.help).add_subparsers(dest="action", required=True)
            groups[spec.name] = group
            p = group.add_parser(spec.action, help=f"run {spec.help}")
        else:
            p = sub.add_parser(spec.name, help=spec.help)
        spec.options(p)
        p.set_defaults(func=functools.partial(run_service, spec))
    from tessera.bots_setup import add_check_command

    add_check_command(groups["bots"])

    workers = sub.add_parser("workers", help="remote workers").add_subparsers(dest="action", required=True)
    p = workers.add_parser("credentials", help="make a worker's NATS user and print the URL it joins with")
    p.add_argument("--worker-id", required=True)
    p.set_defaults(func=cmd_workers_credentials)
    p = workers.add_parser("revoke", help="delete a worker's NATS user; the running server closes its connections")
    p.add_argument("--worker-id", required=True)
    p.set_defaults(func=cmd_workers_revoke)

    nats_cmd = sub.add_parser("nats", help="NATS users for an external server").add_subparsers(
        dest="action", required=True
    )
    p = nats_cmd.add_parser("authorization", help="print the nats-server `authorization` block: one user per role")
    p.add_argument("--worker", action="append", default=[], help="a worker id to add a user for (repeatable)")
    p.add_argument("--bot", action="append", default=[], help="FRONTEND:BOT_ID of a bot to add (repeatable)")
    p.set_defaults(func=cmd_nats_authorization)

    add_user_commands(sub)

    plans = sub.add_parser("plans", help="plans and their limits").add_subparsers(dest="action", required=True)
    plans.add_parser("list", help="the plans in force").set_defaults(func=cmd_plans_list)
    p = plans.add_parser("set", help="define a plan or change some of its terms (each change is an event)")
    p.add_argument("tier")
    p.add_argument("--name")
    p.add_argument("--daily-tokens", help="tokens per quota day, or 'unlimited'")
    p.add_argument("--rpm", type=int, help="submits per minute")
    p.add_argument("--max-running", type=int, help="jobs running at once")
    p.add_argument("--max-queued", type=int, help="jobs waiting at once")
    p.add_argument("--priority", type=int, choices=[0, 1, 2, 3])
    p.add_argument("--max-resolution", type=int, help="longest image side in pixels")
    p.add_argument("--models", help="comma-separated gated models the plan includes ('*' for all)")
    p.add_argument("--price-cents", type=int)
    p.add_argument("--uploads-per-day", type=int, help="input files a user may upload a day")
    p.add_argument("--upload-bytes-per-day", type=int, help="bytes of uploads a user may make a day")
    p.add_argument("--max-upload-bytes", type=int, help="the largest upload, in bytes")
    p.add_argument("--description")
    p.set_defaults(func=cmd_plans_set)
    p = plans.add_parser("history", help="every definition a plan has had")
    p.add_argument("tier")
    p.set_defaults(func=cmd_plans_history)

    frontends = sub.add_parser("frontends", help="manage frontend keys").add_subparsers(dest="action", required=True)
    p = frontends.add_parser("create", help="print a new key for a bot or the website")
    p.add_argument("--frontend", required=True, choices=["web", "telegram", "discord"])
    p.add_argument("--bot-id", default=None)
    p.set_defaults(func=cmd_frontends_create)

    keys = sub.add_parser("keys", help="API keys and frontend keys: list, create, revoke, rotate").add_subparsers(
        dest="action", required=True
    )
    p = keys.add_parser("list", help="a user's keys (--platform and --user-id), or every frontend key")
    p.add_argument("--platform", choices=["web", "telegram", "discord"])
    p.add_argument("--user-id")
    p.set_defaults(func=cmd_keys_list)
    p = keys.add_parser("create", help="print another API key for an existing user")
    p.add_argument("--platform", required=True, choices=["web", "telegram", "discord"])
    p.add_argument("--user-id", required=True)
    p.add_argument("--label", default=None)
    p.set_defaults(func=cmd_keys_create)
    p = keys.add_parser("revoke", help="revoke a user's or a frontend's key by its id (it stops working at once)")
    p.add_argument("key_id")
    p.add_argument("--reason", default=None)
    p.set_defaults(func=cmd_keys_revoke)
    p = keys.add_parser("rotate", help="print a new key in place of KEY_ID, which is revoked")
    p.add_argument("key_id")
    p.set_defaults(func=cmd_keys_rotate)

    jobs = sub.add_parser("jobs", help="inspect jobs").add_subparsers(dest="action", required=True)
    p = jobs.add_parser("history", help="replay a job's events as a timeline")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_jobs_history)

    add_projection_commands(sub)  # projections rebuild [--check]
    add_commands(sub)  # status, monitoring, billing
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure(verbose=args.verbose)  # TESSERA_LOG_FORMAT=json: one JSON object a line
    logging.getLogger("nats").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # `up` polls every child's /readyz
    args.func(args)


if __name__ == "__main__":
    main()
