"""Schemathesis drives every operation of the app's own OpenAPI document (fetched with the
operator token, so the operator API is covered too) against a real `digest web` over HTTP:
no answer is a 5xx, and every HTML answer carries the security headers (guard.py).

A fixed, derandomized budget (6 examples per operation and mode, about 180 cases) keeps each run
deterministic and within a minute. On PostgreSQL it found the operator export's 500 for a NUL in
`?list=` before inputs.py refused such strings.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from conftest import SmtpSink, free_port, run_digest, serving, write_config
from test_web import API_TOKEN, EXTRA

EXAMPLES = int(os.environ.get("DIGEST_SCHEMATHESIS_EXAMPLES", "6"))
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SECURITY_HEADERS = {
    "content-security-policy",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
}


@pytest.fixture
def served(tmp_path: Path, database_url: str, smtp_sink: SmtpSink) -> Iterator[tuple[str, Path]]:
    """`digest web` on SQLite and on PostgreSQL (which refuses a NUL in text, where SQLite keeps it)."""
    port = free_port()
    config = write_config(
        tmp_path, database_url=database_url, smtp_port=smtp_sink.port, web_port=port, extra=EXTRA
    )
    run_digest(config, "init")
    run_digest(config, "subscribers", "add", "ann@example.com", "--list", "demo", "--confirmed")
    unlimited = {"DIGEST_WEB__SIGNUP_PER_MINUTE": "0", "DIGEST_WEB__SIGNUP_PER_HOUR": "0"}
    with serving(config, port, unlimited) as served:
        yield served


class Tally:
    """What the server answered: statuses counted, and each 5xx or bare HTML page described."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = requests.Session()
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []

    def exercise(self, operation: schemathesis.APIOperation, mode: GenerationMode) -> None:
        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            try:
                answer = case.call(base_url=self.base, session=self.session, headers=AUTH, timeout=10)
            except requests.exceptions.InvalidHeader:
                return  # the client refuses to send it, so the server never sees it
            self.statuses[answer.status_code] += 1
            where = f"{case.method} {case.formatted_path} ({mode.value})"
            if answer.status_code >= 500:
                self.failures.append(f"{where}: {answer.status_code} {answer.text[:200]}")
            headers = {k.lower(): v for k, v in answer.headers.items()}  # each a list of values
            if "".join(headers.get("content-type", [])).startswith("text/html"):
                missing = SECURITY_HEADERS - set(headers)
                if missing:
                    self.failures.append(f"{where}: HTML without {sorted(missing)}")

        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label  # nothing there to break


def test_every_operation_answers_without_a_5xx_and_html_carries_security_headers(
    served: tuple[str, Path],
) -> None:
    base, log = served
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path.startswith("/api/") for op in operations)  # the operator's view
    tally = Tally(base)
    started = time.monotonic()
    for operation in operations:
        for mode in GenerationMode:
            tally.exercise(operation, mode)
    elapsed, cases = time.monotonic() - started, sum(tally.statuses.values())
    print(f"schemathesis: {cases} cases over {len(operations)} operations in {elapsed:.1f} s; "
          f"statuses {dict(sorted(tally.statuses.items()))}")  # fmt: skip
    assert not tally.failures, "\n".join(tally.failures[:20])
    assert cases >= 5 * len(operations)
    server_log = log.read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-3000:]
