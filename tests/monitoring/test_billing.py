"""`tessera billing export` writes a day's charges and refunds with the events behind them, and
`tessera billing verify` recomputes the file from the event log: a faithful file passes, a changed,
shortened or padded one is reported with a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scheduler.service import Scheduler
from tests.conftest import REPO, Platform


def tessera(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TESSERA_NATS_URL": platform.nats_url, "TESSERA_DATABASE_URL": platform.database_url}
    return subprocess.run(
        [sys.executable, "-m", "tessera.cli", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
async def one_slot(platform_parts: Platform) -> Platform:
    """A scheduler and a worker that runs one job at a time, so a job can be made to wait."""
    scheduler = Scheduler(
        platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url
    )
    await platform_parts.start("scheduler", scheduler)
    await asyncio.wait_for(scheduler.is_leader.wait(), 10)
    await platform_parts.start_worker("one-slot", engines=("echo", "piper"), slots=1)
    return platform_parts


async def a_charge_and_a_refund(platform: Platform) -> tuple[str, str]:
    """A text-to-speech job charged, and one cancelled while it waited behind a slow echo job
    (its reservation refunded)."""
    key = await platform.user_key(plan="pro")
    async with platform.client(key) as client:
        hold = {"capability": "echo", "params": {"prompt": "hold", "delay_seconds": 1}}
        held = (await client.post("/api/v1/jobs", json=hold)).json()
        tts = {"capability": "tts", "params": {"prompt": "refund me"}}
        refunded = (await client.post("/api/v1/jobs", json=tts)).json()
        assert (await client.delete(f"/api/v1/jobs/{refunded['job_id']}")).status_code == 202
        tts = {"capability": "tts", "params": {"prompt": "bill me"}}
        charged = (await client.post("/api/v1/jobs", json=tts)).json()
        await platform.wait_status(client, held["job_id"], {"COMPLETED"})
        await platform.wait_status(client, charged["job_id"], {"COMPLETED"})
        await platform.wait_status(client, refunded["job_id"], {"CANCELLED"})
    return charged["job_id"], refunded["job_id"]


async def test_a_day_s_bill_round_trips_and_tampering_is_reported(one_slot: Platform, tmp_path: Path) -> None:
    platform = one_slot
    charged, refunded = await a_charge_and_a_refund(platform)
    day = datetime.now(UTC).date().isoformat()
    bill = tmp_path / "bill.jsonl"
    exported = await asyncio.to_thread(tessera, platform, "billing", "export", "--day", day, "-o", str(bill))
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in bill.read_text().splitlines()]
    by_job = {line["job_id"]: line for line in lines if line["kind"] in ("charge", "refund")}
    assert by_job[charged]["kind"] == "charge" and by_job[charged]["tokens"] > 0
    assert by_job[refunded]["kind"] == "refund" and by_job[refunded]["tokens"] > 0
    for line in (by_job[charged], by_job[refunded]):
        assert line["event_id"] and line["submitted_event_id"] and line["seq"] > 0
        assert line["capability"] == "tts" and line["model"] and line["user_id"]
    totals = {line["kind"]: line["tokens"] for line in lines if line["kind"].startswith("total")}
    assert totals["total-charged"] == sum(line["tokens"] for line in lines if line["kind"] == "charge")

    verified = await asyncio.to_thread(tessera, platform, "billing", "verify", str(bill))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "matches the event log" in verified.stdout

    # A job that settles after the export is not a difference: the file says how far it read.
    await a_charge_and_a_refund(platform)
    assert (await asyncio.to_thread(tessera, platform, "billing", "verify", str(bill))).returncode == 0

    as_csv = tmp_path / "bill.csv"
    exported = await asyncio.to_thread(
        tessera, platform, "billing", "export", "--day", day, "--format", "csv", "-o", str(as_csv)
    )
    assert exported.returncode == 0 and as_csv.read_text().startswith("kind,quota_day,seq,event_id,")
    assert (await asyncio.to_thread(tessera, platform, "billing", "verify", str(as_csv))).returncode == 0

    tampered = tmp_path / "tampered.jsonl"
    changed = [{**line, "tokens": line["tokens"] / 2} if line["job_id"] == charged else line for line in lines]
    tampered.write_text("".join(json.dumps(line) + "\n" for line in changed))
    result = await asyncio.to_thread(tessera, platform, "billing", "verify", str(tampered))
    assert result.returncode != 0
    assert f"charge of job {charged}" in result.stdout and "tokens is" in result.stdout

    shortened = tmp_path / "shortened.jsonl"
    shortened.write_text("".join(json.dumps(line) + "\n" for line in lines if line["job_id"] != refunded))
    result = await asyncio.to_thread(tessera, platform, "billing", "verify", str(shortened))
    assert result.returncode != 0 and f"missing: refund of job {refunded}" in result.stdout

    padded = tmp_path / "padded.csv"
    rows = as_csv.read_text().splitlines()
    invented = rows[1].split(",")
    invented[3] = "00000000-0000-4000-8000-000000000000"
    padded.write_text("\n".join([*rows, ",".join(invented)]) + "\n")
    result = await asyncio.to_thread(tessera, platform, "billing", "verify", str(padded))
    assert result.returncode != 0 and "not in the event log" in result.stdout
