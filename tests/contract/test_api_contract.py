"""The API contract: schemathesis fuzzes a live `tessera up` from its own OpenAPI document, with
every check, and must find nothing (docs/api.md).

The fuzzer signs in as a website user (the session cookie, the `APIKeyCookie` scheme, and its
CSRF token): with a bearer key it would revoke or rotate that very key through `/api/v1/keys` and
spend the rest of the run on 401s. Its report is printed, passing or not, so it is in the CI log.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.tessera_up import Up, tessera_up

REPO = Path(__file__).resolve().parents[2]
EMAIL = "fuzz@example.com"
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")

# Each exclusion says why (docs/api.md#what-is-not-fuzzed).
CONFIG = """\
# Every check is on (schemathesis's default); object_level_authorization needs a second identity.
hooks = "{hooks}"

[auth.openapi.APIKeyCookie]
api_key = "{session}"

[headers]
X-CSRF-Token = "{csrf}"

# 503 is a documented answer with Retry-After (no worker online for a model, the scheduler busy),
# not a crash; every other 5xx fails the run.
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503"]

# An upload's bytes must be a real file of the type it is sent as (its magic number is read): no
# schema can say that, so random bytes of a valid type are rightly refused.
[[operations]]
include-path = "/api/v1/uploads"
include-method = "POST"
checks.positive_data_acceptance.enabled = false

# Server-sent event streams do not end while a job runs (the user's /events never does): a 200
# is read for at most 2 s, so fewer cases, and they are left out of the stateful phase. Their
# status codes, content types and headers are checked like any other operation's.
[[operations]]
include-path-regex = "^/api/v1/(events|jobs/\\\\{{job_id\\\\}}/stream)$"
request-timeout = 2
generation.max-examples = 8
phases.stateful.enabled = false
"""


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    with tessera_up(tmp_path_factory.mktemp("contract")) as running:
        yield running


def sign_up(up: Up) -> tuple[str, str]:
    """A website account on the pro plan: (its session token, the session's CSRF token)."""
    with httpx.Client(base_url=up.url, timeout=30) as web:
        form = web.get("/signup").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert csrf, form
        answer = web.post("/signup", data={"email": EMAIL, "password": "fuzz-password", "csrf_token": csrf[1]})
        assert answer.status_code == 303, answer.text
        session = web.cookies["tessera_session"]
        page = web.get("/account").text
        token = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
        assert token, page
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tessera.cli",
            "users",
            "set-plan",
            "--platform",
            "web",
            "--user-id",
            EMAIL,
            "--plan",
            "pro",
        ],
        env=up.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return session, token[1]


@pytest.mark.timeout(420)
def test_schemathesis_finds_no_failure(up: Up, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session, csrf = sign_up(up)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(session=session, csrf=csrf, hooks=HOOKS))
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{up.url}/openapi.json",
        "--max-examples",
        "30",
        "--request-timeout",
        "5",
        "--seed",
        "1",
        "--workers",
        "2",
        "--no-color",
        "--generation-database",
        "none",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    with capsys.disabled():  # the report goes to the CI log whether the test passes or fails
        print(run.stdout[-60_000:])
        print(run.stderr[-5_000:], file=sys.stderr)
    assert run.returncode == 0, f"schemathesis found failures (exit {run.returncode}); its report is above"
