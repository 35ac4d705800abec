"""The long-running processes: supervision of their parts, busy ports, and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CliProject, SmtpSink, one_line_error
from digest import service
from digest.errors import UsageError

DIGEST = Path(sys.executable).parent / "digest"


async def test_a_failing_part_is_logged_and_restarted_with_back_off(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[float] = []
    stop = asyncio.Event()

    async def flaky(stop_event: asyncio.Event) -> None:
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        await stop_event.wait()

    async def stop_later() -> None:
        while len(runs) < 3:
            await asyncio.sleep(0.05)
        stop.set()

    with caplog.at_level(logging.WARNING, logger="digest"):
        await asyncio.wait_for(
            asyncio.gather(service.supervise(service.Part("flaky", flaky), stop), stop_later()), 10
        )
    assert len(runs) == 3
    assert runs[2] - runs[1] >= 1.8  # 1 s, then 2 s: back-off doubles while it keeps failing
    messages = [r.getMessage() for r in caplog.records]
    assert "flaky failed" in messages and any("restarting flaky in 2 s" in m for m in messages)
    assert any(r.exc_info for r in caplog.records), "the failure's traceback is logged"


async def test_a_configuration_error_in_a_part_stops_the_supervisor() -> None:
    async def misconfigured(stop_event: asyncio.Event) -> None:
        raise UsageError("port 8000 is in use")

    with pytest.raises(UsageError):
        await asyncio.wait_for(service.supervise(service.Part("web", misconfigured), asyncio.Event()), 5)


def test_a_busy_web_port_is_one_line_naming_the_port_and_the_key(tmp_path: Path) -> None:
    project = CliProject(tmp_path, smtp_port=None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = project.config.read_text().replace("port = 8000", f"port = {port}")
        project.config.write_text(text)
        project.run("init")
        done = subprocess.run(
            [str(DIGEST), "--config", str(project.config), "run"], capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1, done.stderr
    line = one_line_error(done.stdout + done.stderr)
    assert f"port {port} on 127.0.0.1 is already in use" in line
    assert "[web] port" in line and "DIGEST_WEB__PORT" in line


def test_sigterm_stops_a_worker_cleanly_and_a_restart_finishes_the_rest(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    smtp_sink.data_delay = lambda rcpts: 0.02
    project = CliProject(tmp_path, smtp_port=smtp_sink.port)
    project.run("init")
    readers = tmp_path / "readers.csv"
    readers.write_text("email\n" + "".join(f"r{i:03d}@example.com\n" for i in range(300)))
    project.run("subscribers", "import", str(readers), "--list", "demo", "--confirmed", "--apply")
    project.run("send", "demo", "--queue")

    def start() -> subprocess.Popen[bytes]:
        with open(tmp_path / "worker.log", "ab") as log:
            return subprocess.Popen(
                [str(DIGEST), "--config", str(project.config), "worker"], stdout=log, stderr=log
            )

    worker = start()
    deadline = time.monotonic() + 30
    while len(smtp_sink.messages) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    asked = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0, (tmp_path / "worker.log").read_text()
    assert time.monotonic() - asked < 10  # within [delivery] stop_timeout
    with contextlib.closing(sqlite3.connect(tmp_path / "digest.db")) as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall())
    assert "sending" not in statuses, statuses  # every claimed row handed back, none left to a lease
    assert statuses.get("sent", 0) == len(smtp_sink.messages)  # every accepted message is on record
    assert 0 < statuses["sent"] < 300

    restarted = start()
    deadline = time.monotonic() + 60
    while len(smtp_sink.messages) < 300 and time.monotonic() < deadline:
        time.sleep(0.1)
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(15) == 0
    assert len(smtp_sink.messages) == 300
    assert len({m.rcpt_tos[0] for m in smtp_sink.messages}) == 300
