"""One bot's connection to Tessera, whatever its platform: `BotRuntime`.

A platform module (`bots.telegram`, `bots.discord`) receives a `BotRuntime` and uses only it to
reach Tessera. The runtime holds the bot's frontend key (acting for `telegram:<id>` or
`discord:<id>`; the scheduler registers a new user on the free plan at their first job), the bot's
NATS connection (its own user: it may read only its own completions and progress), and the bot's
in-memory politeness (`edits`, `flood`).

A request, the way both platforms do it:

    text = texts.submitting()
    message = await send(chat, text)                          # the progress message, first
    context = ReplyContext(chat_id=chat.id, message_id=message.id, user_message_id=incoming.id)
    try:
        job = await runtime.submit(user_ref, "image", incoming.text, context)
    except (ApiError, OptionError, Flooded) as exc:
        await edit(message, await runtime.explain(user_ref, exc))
        return
    async for update in runtime.follow(user_ref, job.job_id):  # queued, running 40% (step 12 of 30), ...
        await runtime.edits.edit(chat.id, message.id, texts.status(update), send=...)

and, once per bot, the results:

    await runtime.completions(deliver)   # deliver(notification) posts the result, edits the message

The progress message's ids travel in the job (`reply_context`), so `deliver` finds the message to
edit from the notification alone, also after a restart. `deliver` raises `Undeliverable` for a
user who blocked the bot or a chat that is gone: recorded and acknowledged, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

import httpx
from nats.aio.client import Client as NATS

from bots import options as opts
from bots import texts
from bots.completions import CompletionFeed, Handler, Undeliverable
from bots.config import BotConfig
from bots.limits import EditThrottle, Flooded, FloodGuard
from bots.progress import JobUpdate, follow, progress_messages
from bots.reply import Delivery, ReplyContext
from events.types import Artifact
from gateway.client import ApiError, TesseraClient
from gateway.schemas import ArtifactView, JobAccepted, JobCancelled, JobView, Me, ModelList, PlanList, StreamEvent
from streams import connection, permissions
from streams.messages import Progress

__all__ = [
    "ApiError",
    "BotRuntime",
    "Delivery",
    "Flooded",
    "JobUpdate",
    "ReplyContext",
    "Undeliverable",
]

log = logging.getLogger(__name__)

Id = uuid.UUID | str


class BotRuntime:
    """One bot's Tessera: the API with its frontend key, its NATS subjects, its limits.

    Use as an async context manager (it opens the NATS connection and the HTTP client):

        async with BotRuntime(config, api_url=..., nats_url=..., frontend_key=...) as runtime:
            await platform.run(runtime)

    `api_url` is Tessera's API; `nats_url` logs in as the bot's own NATS user
    (`bot:<platform>:<id>`; `tessera up` makes it). `http`/`transport` replace the HTTP client in tests.
    """

    def __init__(
        self,
        config: BotConfig,
        *,
        api_url: str,
        nats_url: str,
        frontend_key: str,
        http: httpx.AsyncClient | None = None,
        ack_wait_s: float = 30.0,
    ) -> None:
        self.config = config
        self.api_url = api_url.rstrip("/")
        self.nats_url = nats_url
        self.ack_wait_s = ack_wait_s
        self.edits = EditThrottle()
        self.flood = FloodGuard(per_minute=config.flood_per_minute, burst=config.flood_burst)
        self._key = frontend_key
        self._given_http = http
        self._api: TesseraClient | None = None
        self._nc: NATS | None = None
        self._exit = contextlib.AsyncExitStack()
        self._feed: CompletionFeed | None = None

    # --- identity -------------------------------------------------------------------------------

    @property
    def frontend(self) -> str:
        """`telegram` or `discord`: the bot's frontend in Tessera."""
        return self.config.frontend

    @property
    def bot_id(self) -> str:
        return self.config.id

    @property
    def capability(self) -> str:
        return self.config.capability

    def user_ref(self, platform_user_id: int | str) -> str:
        """The Tessera user of a platform user: `telegram:<id>` / `discord:<id>`."""
        return self.config.user_ref(platform_user_id)

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            self._nc = await self._exit.enter_async_context(
                connection.opened(self.nats_url, permissions.bot_user(self.frontend, self.bot_id))
            )
            self._api = await self._exit.enter_async_context(
                TesseraClient(self.api_url, self._key, http=self._given_http)
            )
        except BaseException:
            await self._exit.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
        await self._exit.aclose()

    async def stop(self) -> None:
        """Stop the completion feed (if running); the context manager's exit closes the rest."""
        if self._feed is not None:
            await self._feed.stop()

    @property
    def connected(self) -> bool:
        """Whether the runtime hears NATS now."""
        return self._nc is not None and self._nc.is_connected

    @property
    def following(self) -> bool:
        """Whether the completion feed is consuming (the bot will hear of finished jobs)."""
        return self._feed is not None and self._feed.following

    def api(self, user_ref: str | None = None) -> TesseraClient:
        """The typed API client with the bot's key, acting for `user_ref` (or for nobody: plans, models)."""
        if self._api is None:
            raise RuntimeError("BotRuntime is used outside its `async with` block")
        return self._api.for_user(user_ref) if user_ref else self._api

    # --- jobs -----------------------------------------------------------------------------------

    def params(
        self, prompt_text: str, options: Mapping[str, object] | None = None, capability: str | None = None
    ) -> dict[str, Any]:
        """The API params of a request: options written in `prompt_text` (`--ar 16:9`), then
        `options` (a slash command's), over the bot's defaults. Raises OptionError."""
        prompt, written = opts.parse_text(prompt_text)
        given = {**written, **{k: v for k, v in (options or {}).items() if v is not None and v != ""}}
        return opts.build_params(capability or self.capability, prompt, given, self.config.defaults)

    async def submit(
        self,
        user_ref: str,
        capability: str | None,
        prompt_text: str,
        reply_context: ReplyContext | Mapping[str, Any] | None,
        options: Mapping[str, object] | None = None,
        *,
        idempotency_key: str | None = None,
        extra_params: Mapping[str, Any] | None = None,
    ) -> JobAccepted:
        """Submit a job for the user; answered once it is accepted (queued, with position and ETA).

        `capability` None is the bot's own. Raises `Flooded` (the user is too quick for this bot),
        `OptionError` (the options make no sense; nothing was sent) or `ApiError` (the API refused:
        `texts.refusal` or `explain` says why in a sentence; a MODEL_NOT_ALLOWED or
        NO_CAPABLE_WORKER error carries the model asked for in `extra["model"]`).
        `idempotency_key` (say, the platform's update or interaction id) makes a repeated delivery
        of the same request return the same job. `extra_params` go to the API as they are (an
        uploaded input, `input_upload`, for speech-to-text).
        """
        capability = capability or self.capability
        params = {**self.params(prompt_text, options, capability), **(extra_params or {})}
        self.flood.check(user_ref)
        context = reply_context.to_dict() if isinstance(reply_context, ReplyContext) else reply_context
        key = f"{self.bot_id}:{idempotency_key}" if idempotency_key else None
        for attempt in range(3):
            try:
                return await self.api(user_ref).submit(
                    capability,
                    params,
                    reply_context=dict(context) if context else None,
                    idempotency_key=key,
                )
            except ApiError as exc:
                # No decision in time: with a key, sending it again is safe (the same job, never a second).
                if key and exc.code == "SCHEDULER_UNAVAILABLE" and attempt < 2:
                    await asyncio.sleep(min(exc.retry_after or 1.0, 5.0))
                    continue
                if "model" in params:
                    exc.extra.setdefault("model", params["model"])
                raise
        raise AssertionError("unreachable")  # the loop returns or raises

    async def job(self, user_ref: str, job_id: Id) -> JobView:
        """The job as it stands now."""
        return await self.api(user_ref).job(job_id)

    async def cancel(self, user_ref: str, job_id: Id) -> JobCancelled:
        """Cancel the user's job; ApiError JOB_TERMINAL once it has ended, JOB_NOT_FOUND if not theirs."""
        return await self.api(user_ref).cancel(job_id)

    async def cancel_latest(self, user_ref: str) -> JobCancelled | None:
        """Cancel the user's newest unfinished job of this bot (for /cancel); None when there is none."""
        api = self.api(user_ref)
        for status in ("RUNNING", "QUEUED"):
            page = await api.jobs(limit=20, status=status)
            for item in page.jobs:
                if item.bot_id == self.bot_id:
                    try:
                        return await api.cancel(item.job_id)
                    except ApiError as exc:
                        if exc.code != "JOB_TERMINAL":
                            raise
        return None

    async def me(self, user_ref: str) -> Me:
        """The user's plan, limits and today's quota (an unseen user shows as the free plan, unregistered)."""
        return await self.api(user_ref).me()

    async def plans(self) -> PlanList:
        return await self.api().plans()

    async def models(self) -> ModelList:
        return await self.api().models()

    async def explain(self, user_ref: str, error: BaseException) -> str:
        """A sentence for the user about why a request failed: an ApiError (with the tokens left and
        the reset time for a quota, the plans that include a model), an OptionError, `Flooded`."""
        if isinstance(error, opts.OptionError):
            return str(error)
        if isinstance(error, Flooded):
            return texts.flooded(error.retry_after)
        if not isinstance(error, ApiError):
            return texts.refusal(ApiError(500, "INTERNAL", str(error)))
        me: Me | None = None
        model_plans: list[str] | None = None
        try:
            if error.code == "QUOTA_EXCEEDED":
                me = await self.me(user_ref)
            elif error.code == "MODEL_NOT_ALLOWED" and error.extra.get("model"):
                models = await self.models()
                model_plans = next((m.plans for m in models.models if m.name == error.extra["model"]), None)
        except (ApiError, httpx.HTTPError) as exc:  # the sentence without the details
            log.info("%s: could not read details for %s: %s", self.bot_id, error.code, exc)
        return texts.refusal(error, me=me, model_plans=model_plans)

    # --- progress and results -------------------------------------------------------------------

    def progress(self, job_id: Id) -> AsyncIterator[Progress]:
        """The worker's progress reports of one of this bot's jobs, from the bot's own NATS subject
        `tessera.progress.<frontend>.<bot>.<job>`, for as long as the caller iterates."""
        return progress_messages(self._require_nc(), self.frontend, self.bot_id, _uuid(job_id))

    def follow(self, user_ref: str, job_id: Id) -> AsyncIterator[JobUpdate]:
        """Updates of the job (queue position and ETA, then progress %) until its terminal one."""
        job = _uuid(job_id)
        client = self.api(user_ref)

        def stream(last_event_id: int | None) -> AsyncIterator[StreamEvent]:
            return client.stream(job, last_event_id=last_event_id)

        return follow(self._require_nc(), self.frontend, self.bot_id, job, stream)

    async def completions(self, handler: Handler) -> None:
        """Call `handler` with each finished job of this bot until `stop()`: durable, so a job that
        finished while the bot was down arrives when it is back. A notification is acknowledged
        only when `handler` returns; if it raises, it comes again (so handlers tolerate repeats);
        if it raises `Undeliverable`, it is logged and acknowledged, never retried."""
        self._feed = CompletionFeed(self.nats_url, self.frontend, self.bot_id, ack_wait_s=self.ack_wait_s)
        await self._feed.run(handler)

    async def artifact(
        self, user_ref: str, job_id: Id, artifact: Artifact | ArtifactView, *, max_bytes: int
    ) -> Delivery:
        """An artifact of the user's job, ready to post: its bytes when it is at most `max_bytes`
        (the platform's upload limit), else a link. A text artifact comes with its text."""
        if isinstance(artifact, ArtifactView):
            kind, fmt, size = artifact.type, artifact.format, artifact.size_bytes
        else:
            kind, fmt, size = artifact.kind, artifact.format, artifact.size_bytes
        base = Delivery(
            artifact_id=artifact.id,
            kind=kind,
            content_type=artifact.content_type,
            filename=f"{kind}-{str(artifact.id)[:8]}.{fmt}",
            size_bytes=size,
            text=artifact.text,
        )
        api = self.api(user_ref)
        if size <= max_bytes:
            return _with(base, data=await api.artifact(artifact.id))
        view = artifact if isinstance(artifact, ArtifactView) else await self._view(api, job_id, artifact.id)
        if view.signed_url:  # a link anyone may follow until it expires
            return _with(base, url=view.signed_url, url_expires_at=view.signed_url_expires_at)
        return _with(base, url=view.url, url_expires_at=view.expires_at)  # an API without signed links

    async def _view(self, api: TesseraClient, job_id: Id, artifact_id: uuid.UUID) -> ArtifactView:
        job = await api.job(job_id)
        for view in job.artifacts:
            if view.id == artifact_id:
                return view
        raise ApiError(404, "ARTIFACT_NOT_FOUND", f"job {job_id} has no artifact {artifact_id}")

    def _require_nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("BotRuntime is used outside its `async with` block")
        return self._nc


def _with(base: Delivery, **changes: Any) -> Delivery:
    return replace(base, **changes)


def _uuid(value: Id) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
