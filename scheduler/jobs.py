"""Jobs: the commands that move one along, and the dispatch pass.

Submit (admitted by scheduler.admission), cancel, and the dispatch pass that hands waiting jobs to
free slots. `JobBook` holds every handler of a job: its fold and `emit_job` are in
`scheduler.job_fold`, the workers' reports, retries, the queue timeout and artifact expiry in
`scheduler.job_reports`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from events.job import Job, JobStatus
from events.types import JobCancelled, JobDispatched, JobQueued, JobSubmitted
from scheduler import admission
from scheduler.admission import RefusalCode, Refused
from scheduler.job_reports import JobReports
from scheduler.policy import Slot
from streams.messages import CancelJob, CancelRunning, Decision, Dispatch, SubmitJob


class JobBook(JobReports):
    """Every unfinished job (and finished ones a command of the batch refers to), and their handlers."""

    # --- commands ------------------------------------------------------------------------------

    def submit(self, cmd: SubmitJob, reply_to: str | None, cause: str) -> None:
        existing = self.jobs.get(cmd.job_id)
        if existing is not None:
            if existing.user_id != cmd.user_id:
                self.out.refuse(reply_to, Refused(code=RefusalCode.JOB_ID_CONFLICT, detail="this job id is taken"))
            elif cmd.request_digest is not None and existing.request_digest not in (None, cmd.request_digest):
                reused = "this Idempotency-Key was used for another request; use a new key for a new job"
                self.out.refuse(reply_to, Refused(code=RefusalCode.IDEMPOTENCY_KEY_REUSED, detail=reused))
            else:  # the same submit again (retry, redelivery, idempotency key): one effect
                self.out.reply(reply_to, Decision(ok=True), existing.id)
            return
        now = self.out.clock()
        quote = admission.quote(cmd, self.catalog, now)
        if isinstance(quote, Refused):
            self.out.refuse(reply_to, quote)
            return
        user = self.accounts.user_for(cmd, cause)  # may register a frontend's new user
        day = self.quota.quota_day(now)
        standing = None
        if user is not None:
            ledger = self.quota.ledger.get((user.id, day))
            standing = admission.Standing(
                plan=self.accounts.plans[user.plan],
                requests=self.quota.window(user.id, now),
                queued=self.queue.user_queued[user.id],
                used=ledger.used if ledger else 0.0,
                reserved=ledger.reserved if ledger else 0.0,
            )
        result = admission.admit(
            quote,
            standing,
            self.fleet,
            now=now,
            zone=self.quota.zone,
            typical_seconds=self.typical_seconds(quote.model.name),
        )
        if result.counted and user is not None:
            self.quota.count_request(user.id, now)
        if isinstance(result, Refused):
            self.out.refuse(reply_to, result)
            return
        assert user is not None  # admitted
        plan = result.plan
        self.emit_job(
            cmd.job_id,
            JobSubmitted(
                user_id=user.id,
                user_ref=cmd.user_ref,
                frontend=cmd.frontend,
                bot_id=cmd.bot_id,
                capability=cmd.capability,
                model=quote.model.name,
                params=cmd.params,
                priority=plan.priority,
                cost_tokens=quote.cost,
                reply_context=cmd.reply_context,
                request_digest=cmd.request_digest,
                webhook=cmd.webhook,
                webhook_events=cmd.webhook_events,
            ),
            cause,
        )
        job = self.emit_job(
            cmd.job_id,
            JobQueued(
                priority=plan.priority,
                reserved_tokens=quote.cost,
                quota_day=day,
                reason=f"admitted on the {plan.name} plan",
            ),
            cause,
        )
        self.queue.enqueue(job)
        self.out.effects.activated.append(job.id)
        self.out.reply(reply_to, Decision(ok=True, user_id=user.id, rate=result.rate), job.id)

    def cancel(self, cmd: CancelJob, reply_to: str | None, cause: str) -> None:
        job = self.jobs.get(cmd.job_id)
        if job is None or job.user_id != cmd.user_id:
            self.out.refuse(reply_to, Refused(code=RefusalCode.JOB_NOT_FOUND, detail="no such job"))
            return
        if job.status.terminal:
            self.out.refuse(
                reply_to, Refused(code=RefusalCode.JOB_TERMINAL, detail=f"job is already {job.status.value}"), job.id
            )
            return
        was_running = job.status is JobStatus.RUNNING
        worker_id, attempt = job.worker_id, job.attempt
        job = self.emit_job(
            job.id,
            JobCancelled(
                reason=cmd.reason, requested_by="user", released_tokens=job.reserved_tokens, quota_day=job.quota_day
            ),
            cause,
        )
        if was_running and worker_id:
            worker = self.fleet.workers.get(worker_id)
            if worker:
                worker.take(job.id, job.model, cancelled=True)
            self.out.effects.controls.append((worker_id, CancelRunning(job_id=job.id, attempt=attempt)))
        self.out.reply(reply_to, Decision(ok=True), job.id)

    # --- dispatch ------------------------------------------------------------------------------

    def schedule(self) -> None:
        """Hand waiting jobs to workers with free slots, as the queue policy picks them."""
        policy = self.queue.policy
        if not len(policy):
            return
        now = self.out.clock()
        for view in self.fleet.workers.values():
            while view.can_take():
                models = view.models_with_room()
                if not models:
                    break
                slot = Slot(
                    worker_id=view.status.worker_id,
                    models=models,
                    loaded=frozenset(view.loaded),
                    max_resolution=view.status.max_resolution,
                )
                pick = policy.pick(slot, now, self.queue.user_running, self.accounts.concurrency_limit)
                if pick is None:
                    break
                job = self.jobs[pick.job.job_id]
                job = self.emit_job(
                    job.id,
                    JobDispatched(worker_id=view.status.worker_id, attempt=job.attempt + 1, reason=pick.reason),
                    "scheduler:dispatch",
                )
                view.take(job.id, job.model)
                view.loaded.add(job.model)  # until its next heartbeat says otherwise
                self.out.effects.dispatches.append((view.status.worker_id, self.dispatch_message(job)))

    def dispatch_message(self, job: Job) -> Dispatch:
        """The dispatch of a running job's attempt, addressed to the worker instance it was given to
        when that instance is known (a restarted worker drops what was meant for its previous life)."""
        model = self.catalog[job.model]
        view = self.fleet.workers.get(job.worker_id or "")
        return Dispatch(
            job_id=job.id,
            attempt=job.attempt,
            capability=job.capability,
            model=job.model,
            params=job.params,
            timeout_seconds=model.timeout_seconds,
            dispatched_at=datetime.now(UTC),
            instance_id=view.status.instance_id if view is not None and not view.gone else None,
            frontend=job.frontend,
            bot_id=job.bot_id,
        )
