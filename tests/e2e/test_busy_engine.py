"""A busy engine never silences its worker.

PocketSphinx holds the GIL while it decodes. Run in the worker's process, a long transcription
stopped the worker's heartbeats: the worker was declared lost, the job was re-run until it failed
WORKER_LOST, and meanwhile every other job was refused 503 NO_CAPABLE_WORKER. The decoder now
runs in a process of its own, and this test holds the worker to that with a heartbeat timeout
(3 s) far shorter than the decode (about 37 s here).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from scheduler.service import Scheduler
from tests import conftest
from tests.conftest import Platform
from tests.speech_audio import speech_wav


@pytest.mark.timeout(400)
async def test_a_120s_transcription_runs_while_echo_jobs_keep_completing(
    platform_parts: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="scheduler")
    platform_parts.settings = conftest.test_settings(heartbeat_interval_s=0.5, worker_timeout_s=3.0)
    await platform_parts.start(
        "scheduler",
        Scheduler(platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url),
    )
    # Its own process, as in production: the scheduler here must not share the worker's GIL.
    worker = platform_parts.subprocess("worker", "--worker-id", "busy", "--engines", "echo,pocketsphinx")
    key = await platform_parts.user_key(plan="admin")  # no plan limit stands between the jobs
    wav = speech_wav(120)
    try:
        async with platform_parts.client(key) as client:
            upload = await client.post("/api/v1/uploads", content=wav, headers={"Content-Type": "audio/wav"})
            assert upload.status_code == 201, upload.text
            for _ in range(100):  # the worker announces itself
                stt = await client.post(
                    "/api/v1/jobs", json={"capability": "stt", "params": {"input_upload": upload.json()["upload_id"]}}
                )
                if stt.status_code != 503:
                    break
                await asyncio.sleep(0.1)
            assert stt.status_code == 202, stt.text
            stt_id = stt.json()["job_id"]
            await platform_parts.wait_status(client, stt_id, {"RUNNING"})

            echoes = 0
            while (await client.get(f"/api/v1/jobs/{stt_id}")).json()["status"] == "RUNNING":
                echo = await client.post(
                    "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": f"still here {echoes}"}}
                )
                assert echo.status_code == 202, echo.text  # never 503 NO_CAPABLE_WORKER
                done = await platform_parts.wait_status(client, echo.json()["job_id"], {"COMPLETED"}, timeout=10)
                assert done["artifacts"][0]["text"] == f"still here {echoes}" and done["worker_id"] == "busy"
                echoes += 1
                await asyncio.sleep(0.2)

            transcribed = await platform_parts.wait_status(client, stt_id, {"COMPLETED", "FAILED"}, timeout=10)
            events = [e["type"] for e in (await client.get(f"/api/v1/jobs/{stt_id}/events")).json()]
    finally:
        worker.terminate()
        worker.wait(30)
    assert transcribed["status"] == "COMPLETED", transcribed.get("error")
    assert transcribed["attempt"] == 1 and transcribed["worker_id"] == "busy"
    assert transcribed["artifacts"][0]["text"]
    assert "JobRequeued.v1" not in events and events.count("JobDispatched.v1") == 1
    assert echoes >= 10  # jobs kept flowing for the whole decode, not only around it
    assert not [r for r in caplog.records if "declared lost" in r.getMessage()]
