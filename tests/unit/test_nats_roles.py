"""The roles' permissions as data, and the subject each command must arrive on."""

from __future__ import annotations

import typing
import uuid

import msgspec
import pytest

from streams import messages, permissions
from streams import subjects as s
from streams.messages import AnyCommand, ReportCompleted, subject_of
from tessera.nats_auth import Credentials, authorization_block, with_user, without_user


def test_every_command_has_its_own_subject_and_each_report_names_its_worker() -> None:
    others = [kind for kind in typing.get_args(AnyCommand) if not kind.__name__.startswith("Report")]
    assert sorted(kind.__name__ for kind in messages._SUBJECTS) == sorted(kind.__name__ for kind in others)
    assert len(set(messages._SUBJECTS.values())) == len(others)
    report = ReportCompleted(
        job_id=uuid.uuid4(), worker_id="gpu-1", attempt=1, artifacts=[], execution_time_seconds=0.1
    )
    assert subject_of(report) == "tessera.cmd.job.completed.gpu-1"
    with pytest.raises(ValueError):
        subject_of(msgspec.structs.replace(report, worker_id="gpu-1.>"))


def test_a_worker_may_touch_only_its_own_subjects() -> None:
    role = permissions.role("worker:gpu-1")
    assert role.user == "worker-gpu-1"
    assert role.subscribe == ("_INBOX_worker-gpu-1.>", "tessera.control.gpu-1")
    assert s.CMD_SUBMIT not in (role.publish or ())
    assert "$JS.API.CONSUMER.CREATE.TESSERA_DISPATCH.worker-gpu-1.tessera.dispatch.gpu-1" in (role.publish or ())
    assert not any(
        p.startswith(("tessera.events", "tessera.dispatch", "$JS.API.STREAM.CREATE", "$JS.API.>"))
        for p in role.publish or ()
    )


def test_role_names_are_checked() -> None:
    assert permissions.role("bot:telegram:tg-1").user == "bot-telegram-tg-1"
    assert permissions.role("admin").permissions() is None
    for bad in ("worker", "worker:a.b", "bot:", "root", "scheduler:x"):
        with pytest.raises(ValueError):
            permissions.role(bad)


def test_credentials_are_made_once_and_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "credentials.json"
    first = Credentials(path)
    assert first.ensure(["admin", "worker:w1"]) == ["admin", "worker:w1"]
    again = Credentials(path)
    assert again.ensure(["worker:w1", "gateway"]) == ["gateway"]
    assert again.passwords["worker:w1"] == first.passwords["worker:w1"]
    url = again.url("nats://127.0.0.1:4222", "worker:w1")
    assert url == f"nats://worker-w1:{first.passwords['worker:w1']}@127.0.0.1:4222"
    assert without_user(url) == "nats://127.0.0.1:4222"
    assert with_user("tls://nats.example:4222", "u", "p") == "tls://u:p@nats.example:4222"


def test_the_authorization_block_quotes_every_subject() -> None:
    block = authorization_block({"admin": "pw-a", "projector": "pw-p"})
    assert block.startswith("authorization {\n  users = [\n")
    assert '"user": "admin", "password": "pw-a"}' in block  # no permissions: everything
    assert '"$JS.API.CONSUMER.DELETE.TESSERA_EVENTS.projector"' in block
