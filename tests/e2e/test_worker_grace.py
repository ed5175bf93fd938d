"""A worker restarting for a deploy: submits for its models queue while it is away, and run when it
is back (the grace window of admission rule 6, docs/scheduling.md)."""

from __future__ import annotations

import asyncio

from tests.conftest import Platform


async def test_jobs_submitted_while_the_only_worker_restarts_wait_for_it(platform: Platform) -> None:
    key = await platform.user_key()
    async with platform.client(key) as api:
        await platform.stop("worker:w1")  # drains and says goodbye, as a deploy does
        await asyncio.sleep(platform.settings.worker_timeout_s + 1)  # and is silent past the timeout
        waiting = await api.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "still here?"}})
        assert waiting.status_code == 202, waiting.text
        assert waiting.json()["status"] == "QUEUED"
        never = await api.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x"}})
        assert never.status_code == 503 and never.json()["code"] == "NO_CAPABLE_WORKER"  # nobody ever served it
        await platform.start_worker(engines=("echo",))
        done = await platform.wait_status(api, waiting.json()["job_id"], {"COMPLETED"}, timeout=30)
        assert done["artifacts"][0]["text"] == "still here?"
