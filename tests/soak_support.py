"""What the soak tests drive: a throwaway PostgreSQL cluster the test can stop and start, a relay
whose replies the test scripts while it runs, and digest processes started as an operator would."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from conftest import free_port, run_cli

DIGEST = Path(sys.executable).parent / "digest"


def postgres_binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Cluster:
    """A PostgreSQL cluster of the test's own on a free port: stopping it is a database outage."""

    def __init__(self, binaries: Path) -> None:
        self.bin = binaries
        self.dir = Path(tempfile.mkdtemp(prefix="digest-soak-pg-"))
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.dir / "data"), "-w", "-l", str(self.dir / "log"), "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, connect_timeout=5) as conn:
            return list(conn.execute(sql, params).fetchall())

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Arrival:
    message_id: str
    rcpt: str
    started: float  # time.time() at MAIL FROM
    finished: float  # time.time() when the message was accepted


@dataclass
class Relay:
    """An aiosmtpd relay whose answers the test changes while digest runs."""

    port: int = field(default_factory=free_port)
    policy: bool = False  # 554 5.7.1 to every recipient (a relay with a DMARC problem)
    rejected: set[str] = field(default_factory=set)  # 550 5.1.1 for these
    transient: Callable[[str, int], str | None] | None = None  # (rcpt, attempt) -> a 4xx reply
    delay: float = 0.01
    arrivals: list[Arrival] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[Arrival]:
        with self.lock:
            return list(self.arrivals)

    def start(self) -> Controller:
        relay = self

        class Handler:
            async def handle_MAIL(
                self, server: Any, session: Any, envelope: Any, address: str, options: Any
            ) -> str:
                envelope.mail_from = address
                envelope.mail_options.extend(options)
                session.started = time.time()
                return "250 OK"

            async def handle_RCPT(
                self, server: Any, session: Any, envelope: Any, address: str, options: Any
            ) -> str:
                with relay.lock:
                    n = relay.attempts[address] = relay.attempts.get(address, 0) + 1
                if relay.policy:
                    return "554 5.7.1 Message rejected due to DMARC policy"
                if address in relay.rejected:
                    return "550 5.1.1 The email account that you tried to reach does not exist"
                reply = relay.transient(address, n) if relay.transient else None
                if reply:
                    return reply
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                await asyncio.sleep(relay.delay)
                raw = envelope.original_content or b""
                mid = next(
                    (
                        line.split(b":", 1)[1].strip().decode()
                        for line in raw.split(b"\r\n")
                        if line.lower().startswith(b"message-id:")
                    ),
                    "",
                )
                with relay.lock:
                    for rcpt in envelope.rcpt_tos:
                        relay.arrivals.append(Arrival(mid, rcpt, session.started, time.time()))
                return "250 2.0.0 queued"

        controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, decode_data=False)
        controller.start()
        return controller


class Process:
    """A long-running digest command (`run`, `worker`), its output kept in a log file."""

    def __init__(self, config: Path, *args: str) -> None:
        self.log_path = config.parent / f"{'-'.join(args)}-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [str(DIGEST), "--config", str(config), *args],
            cwd=config.parent,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def digest(config: Path, *args: str) -> str:
    """One short CLI command, run in this process; its output, or an assertion naming what it said."""
    done = run_cli(config, *args)
    assert done.exit_code == 0, f"digest {' '.join(args)} exited {done.exit_code}: {done.stderr}{done.stdout}"
    return str(done.stdout)


def wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
