"""Shared fixtures: a real SMTP server (aiosmtpd), real SQLite and PostgreSQL databases, projects."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("DIGEST_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_PG = os.environ.get("DIGEST_TEST_REQUIRE_POSTGRES") == "1"


FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def report_figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Figures a test measures (recall, spam scores), printed together in a `figures` section at
    the end of the run instead of between the progress dots."""
    return request.config.stash.setdefault(FIGURES, []).append


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.write_sep("=", "figures")
        for line in lines:
            terminalreporter.write_line(line)


def wait_healthy(web_port: int, process: subprocess.Popen[Any], seconds: float = 60) -> None:
    """Wait until a started `digest run` answers /healthz, failing early if it exits."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/healthz", timeout=2) as answer:
                assert answer.status == 200
                return
        except OSError:
            assert process.poll() is None, f"digest run exited with {process.returncode}"
            assert time.monotonic() < deadline, f"digest run did not answer /healthz within {seconds:.0f} s"
            time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class SmtpSink:
    """A real aiosmtpd server on loopback; `reply_for(address, attempt)` may script RCPT replies."""

    port: int
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reply_for: Callable[[str, int], str | None] | None = None
    rcpt_attempts: dict[str, int] = field(default_factory=dict)
    data_delay: Callable[[list[str]], float] | None = None

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if address in m.rcpt_tos]


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        with self.sink.lock:
            n = self.sink.rcpt_attempts.get(address, 0) + 1
            self.sink.rcpt_attempts[address] = n
        if self.sink.reply_for is not None:
            reply = self.sink.reply_for(address, n)
            if reply:
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.sink.data_delay is not None:
            await asyncio.sleep(self.sink.data_delay(list(envelope.rcpt_tos)))
        with self.sink.lock:
            self.sink.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
            n = len(self.sink.messages)
        return f"250 2.0.0 queued as t{n:06d}"


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink(port=free_port())
    controller = Controller(_Handler(sink), hostname="127.0.0.1", port=sink.port, decode_data=False)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


def _postgres_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:
        name = type(exc).__name__
        return f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({name}); set DIGEST_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    reason = _postgres_available()
    if reason:
        if REQUIRE_PG:
            pytest.fail(reason)
        pytest.skip(reason)
    return PG_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin: str) -> Iterator[str]:
    """A throwaway PostgreSQL database, dropped after the test."""
    import psycopg

    name = f"digest_test_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        # A throwaway database need not wait for the disk at each commit; crash tests kill
        # digest, not PostgreSQL, so what they check is unchanged.
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    base = postgres_admin.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(postgres_admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on real SQLite and on real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/digest.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


def write_config(
    directory: Path,
    *,
    database_url: str,
    smtp_port: int | None,
    web_port: int = 8000,
    extra: str = "",
    lists: str | None = None,
) -> Path:
    """A digest.toml like an operator would write, with seeds/ as a directory source."""
    seeds = directory / "seeds"
    if not seeds.exists():
        import shutil

        shutil.copytree(ROOT / "src" / "digest" / "defaults" / "seeds", seeds)
    smtp = (
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nsecurity = "none"\n\n[capture]\nenabled = false\n\n'
        if smtp_port
        else f'[capture]\nenabled = true\nport = {free_port()}\ndirectory = "{directory}/captured"\n\n'
    )
    lists = (
        lists
        if lists is not None
        else (
            '[[lists]]\nslug = "demo"\nname = "Demo Digest"\nsources = ["seeds"]\n'
            'schedule = "0 7 * * *"\ntimezone = "UTC"\nmax_articles = 10\nmax_age = "3650d"\n'
        )
    )
    path = directory / "digest.toml"
    path.write_text(
        f'[database]\nurl = "{database_url}"\n\n'
        + smtp
        + f'[web]\nhost = "127.0.0.1"\nport = {web_port}\nbase_url = "http://127.0.0.1:{web_port}"\n'
        'secret_keys = ["test-secret-key-0123456789abcdef"]\n\n'
        '[sender]\nfrom = "Digest <digest@news.example.com>"\n'
        'postal_address = "1 Example Street, Springfield"\n'
        'domain = "news.example.com"\n\n'
        f'[[sources]]\nname = "seeds"\nkind = "directory"\npath = "{seeds}"\n\n' + lists + extra
    )
    return path


class CliProject:
    """An operator's project driven through Typer's runner (in-process, fast)."""

    def __init__(self, directory: Path, smtp_port: int | None) -> None:
        self.config = write_config(
            directory, database_url=f"sqlite:///{directory}/digest.db", smtp_port=smtp_port
        )
        self.dir = directory

    def run(self, *args: str, code: int = 0) -> str:
        result = run_cli(self.config, *args)
        output = result.stdout + result.stderr
        assert result.exit_code == code, output
        assert "Traceback" not in output
        return output

    def json(self, *args: str) -> object:
        import json

        return json.loads(self.run(*args, "--json"))


def run_cli(config: Path, *args: str) -> Any:
    """`digest --config CONFIG ARGS` in this process: set-up commands need not spend a second or
    two each importing digest in a subprocess. The result has exit_code, stdout and stderr."""
    from typer.testing import CliRunner

    from digest.cli import app

    return CliRunner().invoke(app, ["--config", str(config), *args])


def one_line_error(output: str) -> str:
    """The single `error: …` line a user mistake prints."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error:"), output
    return lines[0]


def run_digest(config: Path, *args: str, timeout: float = 120) -> str:
    """`digest --config CONFIG ARGS…` in a child process; its stdout, after asserting success."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "digest", "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, cwd=config.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@contextmanager
def serving(config: Path, port: int, env: dict[str, str] | None = None) -> Iterator[tuple[str, Path]]:
    """A real `digest web` on `port` until the block ends: its base URL and the file it logs to."""
    import subprocess
    import sys
    import time
    import urllib.request

    log = config.parent / f"web-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "digest", "--config", str(config), "web"],
            cwd=config.parent, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1):
                    break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"digest web did not start: {log.read_text()}") from exc
                time.sleep(0.1)
        yield base, log
    finally:
        stop(proc)


def stop(proc: Any) -> None:
    """End a child process: SIGTERM, then SIGKILL if it is still there after ten seconds."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
