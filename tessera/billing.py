"""A day's bill, exported from the event log and verified against it (`tessera billing`).

A line per event that settles a job's reservation on quota day D: a `charge` for each
JobCompleted (its `cost_tokens`), a `refund` for each JobFailed or JobCancelled that released
tokens (its `released_tokens`, given back to the user's quota). Each line names the event behind
it (`event_id`, `seq`) and the job's JobSubmitted (`submitted_event_id`: who, which model). Two
closing lines, `total-charged` and `total-refunded`, carry the sums and the log position the
export read up to (`seq`), so a later `verify` recomputes exactly the same events: a job that
settles afterwards is not a difference.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import date

import asyncpg

from events import store
from events.types import JobCancelled, JobCompleted, JobFailed, JobSubmitted, RecordedEvent, type_name

SETTLING = (type_name(JobCompleted), type_name(JobFailed), type_name(JobCancelled))
TOTALS = ("total-charged", "total-refunded")


@dataclass(frozen=True)
class Line:
    kind: str  # charge, refund, total-charged, total-refunded
    quota_day: str
    seq: int
    event_id: str
    recorded_at: str
    job_id: str
    submitted_event_id: str
    user_id: str
    user_ref: str
    capability: str
    model: str
    tokens: float


COLUMNS = [f.name for f in fields(Line)]


def lines_of(day: date, settlements: Iterable[tuple[RecordedEvent, RecordedEvent]], up_to_seq: int) -> list[Line]:
    """The bill of `day`: a line per charge and refund, then the two totals."""
    lines = []
    for rec, first in settlements:
        event, submitted = rec.data, first.data
        if not isinstance(submitted, JobSubmitted):
            continue
        if isinstance(event, JobCompleted):
            kind, tokens = "charge", event.cost_tokens
        elif isinstance(event, JobFailed | JobCancelled) and event.released_tokens > 0:
            kind, tokens = "refund", event.released_tokens
        else:
            continue
        lines.append(
            Line(
                kind=kind,
                quota_day=day.isoformat(),
                seq=rec.seq,
                event_id=str(rec.event_id),
                recorded_at=rec.recorded_at.isoformat(),
                job_id=str(rec.stream_id),
                submitted_event_id=str(first.event_id),
                user_id=str(submitted.user_id),
                user_ref=submitted.user_ref or "",
                capability=submitted.capability,
                model=submitted.model,
                tokens=round(tokens, 6),
            )
        )
    for total, kind in zip(TOTALS, ("charge", "refund"), strict=True):
        tokens = round(sum(line.tokens for line in lines if line.kind == kind), 6)
        lines.append(Line(total, day.isoformat(), up_to_seq, "", "", "", "", "", "", "", "", tokens))
    return lines


async def bill(conn: asyncpg.Connection, day: date, up_to_seq: int | None = None) -> list[Line]:
    """The bill of `day` from the event log as it is now (or up to `up_to_seq`)."""
    head = await store.head(conn) if up_to_seq is None else up_to_seq
    return lines_of(day, await store.quota_day_settlements(conn, day, head, SETTLING), head)


def render(lines: Sequence[Line], fmt: str) -> str:
    """JSON Lines (`jsonl`) or CSV with a header row (`csv`)."""
    if fmt == "jsonl":
        return "".join(json.dumps(asdict(line)) + "\n" for line in lines)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for line in lines:
        writer.writerow(asdict(line))
    return out.getvalue()


class Unreadable(ValueError):
    """The file is not a bill this command wrote."""


def parse(text: str) -> list[Line]:
    """The lines of an exported bill, JSON Lines or CSV (told apart by the first character)."""
    try:
        if text.lstrip().startswith("{"):
            rows = [json.loads(row) for row in text.splitlines() if row.strip()]
        else:
            rows = list(csv.DictReader(io.StringIO(text)))
        return [Line(**{**row, "seq": int(row["seq"]), "tokens": float(row["tokens"])}) for row in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise Unreadable(f"not a Tessera bill: {exc}") from exc


def differences(found: Sequence[Line], expected: Sequence[Line]) -> list[str]:
    """What differs between a bill as given and as the events say it is, one sentence each."""

    def key(line: Line) -> str:
        return line.event_id or line.kind

    given = {key(line): line for line in found}
    truth = {key(line): line for line in expected}
    problems = []
    if len(given) != len(found):
        problems.append("the file lists an event more than once")
    for name in sorted(truth.keys() - given.keys()):
        problems.append(f"missing: {_describe(truth[name])}")
    for name in sorted(given.keys() - truth.keys()):
        problems.append(f"not in the event log: {_describe(given[name])}")
    for name in sorted(truth.keys() & given.keys()):
        problems += [
            f"{_describe(truth[name])}: {column} is {getattr(given[name], column)!r}, the events say "
            f"{getattr(truth[name], column)!r}"
            for column in COLUMNS
            if not _same(getattr(given[name], column), getattr(truth[name], column))
        ]
    return problems


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, abs_tol=1e-6)
    return a == b


def _describe(line: Line) -> str:
    if line.kind in TOTALS:
        return f"{line.kind} line"
    return f"{line.kind} of job {line.job_id} (event {line.event_id}, seq {line.seq})"


def scope(lines: Sequence[Line]) -> tuple[date, int]:
    """The day and the log position a bill was exported for (from its total lines)."""
    totals = [line for line in lines if line.kind in TOTALS]
    if not totals:
        raise Unreadable("the file has no total lines: it is not a whole bill")
    return date.fromisoformat(totals[0].quota_day), totals[0].seq
