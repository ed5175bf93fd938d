"""Every sentence a bot says, once for both platforms.

Plain text (no Markdown or HTML), so Telegram and Discord show it as it is. A platform module
picks the sentence here and only decides how to send it (a message, an edit, a follow-up). The
command names differ by platform (`/image` on Telegram, `/imagine` on Discord); `COMMANDS` says
which is which.

Refusals: `refusal(error, ...)` turns a `gateway.client.ApiError` into a sentence. The API's
problem gives the code, a detail and Retry-After; the bot can add what the user needs to act
(`me` for the tokens left and the quota's reset, `model_plans` for the plans that include a model),
which `BotRuntime.explain` fetches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from bots.progress import JobUpdate
from gateway.client import ApiError
from gateway.schemas import Me, PlanList

# The commands of each platform, by what they do.
COMMANDS: dict[str, dict[str, str]] = {
    "telegram": {
        "image": "/image",
        "video": "/video",
        "text": "/ask",
        "tts": "/say",
        "me": "/me",
        "plans": "/plans",
        "cancel": "/cancel",
        "help": "/help",
    },
    "discord": {
        "image": "/imagine",
        "video": "/video",
        "text": "/ask",
        "tts": "/say",
        "me": "/me",
        "plans": "/plans",
        "cancel": "/cancel",
        "help": "/help",
    },
}

WHAT = {"image": "an image", "video": "a video", "text": "an answer", "tts": "speech"}
CANCEL_BUTTON = "Cancel"
UPGRADE = "Send /plans to compare the plans; the operator of this bot can move you to another."
OPTIONS_HELP = {
    "image": "Options: --ar 16:9, --size 1024x768, --steps 30, --seed 42, --model NAME, --neg things to avoid.",
    "video": "Options: --seconds 4, --ar 16:9, --size 768x512, --steps 30, --seed 42, --model NAME, "
    "--neg things to avoid.",
    "text": "Option: --model NAME.",
    "tts": "Option: --model NAME.",
}


def _command(platform: str, what: str) -> str:
    return COMMANDS.get(platform, COMMANDS["telegram"])[what]


def tokens(value: float | None) -> str:
    """A token amount as people read it: 1 token, 2.5 tokens."""
    if value is None:
        return "unlimited tokens"
    shown = f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{shown} token" if shown == "1" else f"{shown} tokens"


def duration(seconds: float) -> str:
    """Seconds as `40 s`, `3 min`, `2 h 5 min`."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{max(1, math.ceil(seconds))} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def moment(at: datetime, now: datetime | None = None) -> str:
    """A time ahead as `at 00:00 UTC (in 3 h 20 min)`."""
    now = now or datetime.now(UTC)
    return f"at {at.astimezone(UTC):%H:%M} UTC (in {duration((at - now).total_seconds())})"


# --- conversation -------------------------------------------------------------------------------


def welcome(platform: str, capability: str, me: Me | None = None) -> str:
    """The answer to /start: what the bot does, the user's plan and tokens left."""
    lines = [
        f"Hi! I make {WHAT.get(capability, 'things')} from your words.",
        f"Send {_command(platform, capability)} followed by a description"
        + (", or just write it here." if platform == "telegram" and capability in ("image", "video") else "."),
    ]
    if me is not None:
        lines.append(_plan_line(me))
    lines.append(f"{_command(platform, 'help')} shows everything I can do.")
    return "\n".join(lines)


def help_text(platform: str, capability: str) -> str:
    """The answer to /help: the commands and the options."""
    c = COMMANDS.get(platform, COMMANDS["telegram"])
    return "\n".join(
        [
            f"{c[capability]} <description> makes {WHAT.get(capability, 'a result')}.",
            OPTIONS_HELP.get(capability, ""),
            f"{c['me']} shows your plan and the tokens you have left today.",
            f"{c['plans']} lists the plans.",
            f"{c['cancel']} cancels your job that is waiting or running (or press {CANCEL_BUTTON}).",
        ]
    )


def _plan_line(me: Me) -> str:
    plan = me.plan.name if me.plan is not None else "free"
    left = me.today.tokens_remaining
    if left is None:
        return f"You are on the {plan} plan, with no daily limit."
    return f"You are on the {plan} plan: {tokens(left)} left today."


def me_text(me: Me, now: datetime | None = None) -> str:
    """The answer to /me: plan, tokens used and left today, when the quota resets."""
    plan = me.plan.name if me.plan is not None else "free"
    today = me.today
    lines = [f"Plan: {plan}"]
    if me.limits.daily_tokens is None:
        lines.append(f"Used today: {tokens(today.tokens_used)} (no daily limit)")
    else:
        lines.append(f"Used today: {tokens(today.tokens_used)} of {tokens(me.limits.daily_tokens)}")
        if today.tokens_reserved:
            lines.append(f"Held by unfinished jobs: {tokens(today.tokens_reserved)}")
        lines.append(f"Left today: {tokens(today.tokens_remaining)}")
        lines.append(f"Your tokens renew {moment(today.resets_at, now)}.")
    if me.jobs_running or me.jobs_queued:
        lines.append(f"Jobs now: {me.jobs_running} running, {me.jobs_queued} waiting.")
    return "\n".join(lines)


def plans_text(plans: PlanList, current: str | None = None) -> str:
    """The answer to /plans: each plan's daily tokens, largest image and price."""
    lines = ["Plans:"]
    for plan in sorted(plans.plans, key=lambda p: (p.price_cents, p.priority)):
        if plan.tier == "admin":
            continue
        daily = (
            "unlimited tokens a day" if plan.daily_token_limit is None else f"{tokens(plan.daily_token_limit)} a day"
        )
        price = "free" if plan.price_cents == 0 else f"{plan.price_cents / 100:.2f} a {plan.billing_period}"
        mark = " (yours)" if plan.tier == current else ""
        lines.append(f"- {plan.name}{mark}: {daily}, images up to {plan.max_resolution} px, {price}")
    lines.append(UPGRADE)
    return "\n".join(lines)


# --- a job's progress message -------------------------------------------------------------------


def submitting() -> str:
    """The placeholder posted before the job is submitted (its id goes in the job's reply_context)."""
    return "Sending your request..."


def queued(position: int | None, eta_s: float | None) -> str:
    ahead = "" if not position else f" {position} ahead of you."
    eta = f" Ready in about {duration(eta_s)}." if eta_s else ""
    return f"Queued.{ahead}{eta}"


def running(fraction: float | None, step: str | None = None) -> str:
    parts = ["Working on it"]
    if fraction is not None:
        parts.append(f"{round(max(0.0, min(1.0, fraction)) * 100)}%")
    text = " ".join(parts)
    return f"{text} ({step})" if step else f"{text}..."


def status(update: JobUpdate) -> str:
    """The progress message for a job update (queued, running, or its end)."""
    match update.status:
        case "CREATED" | "QUEUED":
            return queued(update.queue_position, update.estimated_seconds)
        case "RUNNING":
            return running(update.fraction, update.step)
        case "COMPLETED":
            return done()
        case "CANCELLED":
            return cancelled()
        case "FAILED":
            return failed(None)
        case _:
            return f"{update.status.capitalize()}."


def done(cost_tokens: float | None = None) -> str:
    return "Done." if not cost_tokens else f"Done. It cost {tokens(cost_tokens)}."


def delivered_as_link(url: str, size_bytes: int, expires_at: datetime | None = None) -> str:
    """A result too large to send through the platform."""
    until = f" The link works until {expires_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC." if expires_at else ""
    return f"Your result ({size_bytes / 1_000_000:.1f} MB) is too large to send here; download it: {url}{until}"


_FAILURES = {
    "QUEUE_TIMEOUT": "it waited too long in the queue",
    "ENGINE_TIMEOUT": "it took too long",
    "WORKER_LOST": "the machine running it went away",
    "MODEL_NOT_SERVED": "no machine serves that model now",
    "CANCELLED": "it was cancelled",
}


def failed(error: Mapping[str, Any] | None) -> str:
    """A job that failed; its tokens are refunded."""
    code = str((error or {}).get("code", ""))
    reason = _FAILURES.get(code)
    if reason is None:
        message = str((error or {}).get("message", "")).strip()
        reason = f"something went wrong ({message})" if message else "something went wrong"
    return f"Sorry, that did not work: {reason}. Your tokens were given back; please try again."


def cancelled() -> str:
    return "Cancelled. Your tokens were given back."


def nothing_to_cancel() -> str:
    return "You have nothing waiting or running."


def already_finished() -> str:
    return "That job has already finished."


def flooded(retry_after: float) -> str:
    return f"Easy there! Please wait {duration(retry_after)} before the next request."


# --- refusals -----------------------------------------------------------------------------------

# A refusal's sentence from the error, the user's standing, the plans that include the model, and now.
Refuse = Callable[[ApiError, Me | None, Sequence[str] | None, datetime | None], str]


def refusal(
    error: ApiError,
    *,
    me: Me | None = None,
    model_plans: Sequence[str] | None = None,
    now: datetime | None = None,
) -> str:
    """A plain sentence for an API refusal (every `RefusalCode` a bot can meet, and the gateway's
    own codes); a code it does not know gets a generic sentence with the API's detail."""
    builder = _REFUSALS.get(error.code)
    if builder is not None:
        return builder(error, me, model_plans, now)
    if error.status >= 500:
        return "Sorry, the service is having trouble right now. Please try again in a minute."
    detail = error.detail.strip().rstrip(".")
    return f"Sorry, I could not do that: {detail}." if detail else "Sorry, I could not do that."


def _quota(error: ApiError, me: Me | None, _plans: Sequence[str] | None, now: datetime | None) -> str:
    if me is not None and me.today.tokens_remaining is not None:
        left = f"You have {tokens(me.today.tokens_remaining)} left today"
        when = f"; your tokens renew {moment(me.today.resets_at, now)}"
    else:
        left = "You have used today's tokens"
        when = f"; they renew in {duration(error.retry_after)}" if error.retry_after else ""
    return f"{left}, not enough for this{when}. {UPGRADE}"


def _rate(error: ApiError, *_: object) -> str:
    wait = f" Please try again in {duration(error.retry_after)}." if error.retry_after else " Please wait a moment."
    return f"You are sending requests too quickly for your plan.{wait}"


def _queued(error: ApiError, *_: object) -> str:
    wait = f" (in about {duration(error.retry_after)})" if error.retry_after else ""
    return f"You already have as many jobs waiting as your plan allows. Try again once one has started{wait}."


def _model(error: ApiError, _me: Me | None, plans: Sequence[str] | None, _now: datetime | None) -> str:
    model = error.extra.get("model")
    name = f"The model {model}" if model else "That model"
    if plans:
        return f"{name} is not in your plan; it comes with the {_join(plans)} plan. {UPGRADE}"
    return f"{name} is not in your plan. {UPGRADE}"


def _resolution(error: ApiError, *_: object) -> str:
    return f"That size is larger than your plan allows ({error.detail}). Try a smaller --size, or upgrade: {UPGRADE}"


def _no_worker(error: ApiError, *_: object) -> str:
    model = error.extra.get("model")
    what = f"the model {model}" if model else "this model"
    return f"No machine can run {what} right now. Please try again later, or pick another --model."


def _validation(error: ApiError, *_: object) -> str:
    problems = error.extra.get("errors")
    if isinstance(problems, list) and problems:
        first = problems[0]
        detail = first.get("message", "") if isinstance(first, dict) else str(first)
    else:
        detail = error.detail
    return f"Something in the request is not right: {detail.strip().rstrip('.')}. Send /help for the options."


def _unknown_model(error: ApiError, *_: object) -> str:
    return f"I don't know that model ({error.detail.strip().rstrip('.')}). Leave out --model to use the default."


def _fixed(sentence: str) -> Refuse:
    def build(*_: object) -> str:
        return sentence

    return build


def _join(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


_REFUSALS: dict[str, Refuse] = {
    "QUOTA_EXCEEDED": _quota,
    "RATE_LIMITED": _rate,
    "TOO_MANY_QUEUED_JOBS": _queued,
    "MODEL_NOT_ALLOWED": _model,
    "RESOLUTION_TOO_HIGH": _resolution,
    "NO_CAPABLE_WORKER": _no_worker,
    "VALIDATION_ERROR": _validation,
    "MISSING_PROMPT": _fixed("Please describe what you want after the command."),
    "PROMPT_TOO_LONG": _fixed("That description is too long; please shorten it."),
    "UNKNOWN_MODEL": _unknown_model,
    "UNKNOWN_CAPABILITY": _fixed("This bot cannot do that."),
    "JOB_NOT_FOUND": _fixed("I can't find that job."),
    "JOB_TERMINAL": _fixed(already_finished()),
    "JOB_ID_CONFLICT": _fixed("That request was already sent."),
    "SUBMIT_EXPIRED": _fixed("The service is busy and did not take your request in time. Please try again."),
    "SCHEDULER_UNAVAILABLE": _fixed("The service is busy and did not take your request in time. Please try again."),
    "UNKNOWN_USER": _fixed("I could not register you. Please try again in a minute."),
    "UNSTORABLE_INPUT": _fixed("I could not store that request; please simplify it and try again."),
    "COMMAND_FAILED": _fixed("Sorry, the service failed on that request. Please try again later."),
    "UNAUTHENTICATED": _fixed("This bot is not set up correctly (its key is missing). Please tell its operator."),
    "INVALID_API_KEY": _fixed("This bot is not set up correctly (its key was refused). Please tell its operator."),
    "BODY_TOO_LARGE": _fixed("That request is too large; please shorten it."),
}
