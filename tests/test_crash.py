"""Crash safety with real processes: SIGKILL mid-send loses nothing and repeats only what was in flight.

`make test` runs each scenario once at fixed moments; `make test-long` (DIGEST_LONG=1) runs the
kill scenario 20 times at random moments with 5,000 readers and the worker pool with 20,000.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from conftest import SmtpSink, write_config
from digest import bootstrap, compose, sources, store
from digest.config import load_config
from digest.models import Delivery, Subscriber, Subscription
from digest.store import migrate

LONG = os.environ.get("DIGEST_LONG") == "1"
CONCURRENCY = 4


def spawn(config: Path, *args: str) -> subprocess.Popen[bytes]:
    log = (config.parent / f"{args[0]}-{time.monotonic_ns()}.log").open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "digest", "--config", str(config), *args],
            cwd=config.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()  # the child keeps its own descriptor


def last_log_lines(config: Path) -> str:
    logs = sorted(config.parent.glob("*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1].read_text(errors="replace")[-1500:] if logs else ""


def setup(tmp_path: Path, url: str, port: int, readers: int) -> Path:
    extra = '\n[delivery]\nlease = "2s"\nbatch_size = 50\n'
    config = write_config(tmp_path, database_url=url, smtp_port=port, extra=extra)
    config.write_text(
        config.read_text().replace(
            'security = "none"\n', f'security = "none"\nconcurrency = {CONCURRENCY}\n', 1
        )
    )
    cfg = load_config(config, environ={})
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))

    async def fill() -> None:
        app = await bootstrap.open_app(cfg)
        try:
            await sources.ingest_sources(app, datetime.now(UTC))
            lst = await bootstrap.get_list(app, "demo")
            now = datetime.now(UTC)
            async with app.db.write() as s:
                # Bulk rows: the subject here is sending, not signing up (test_store covers that).
                await s.execute(
                    insert(Subscriber),
                    [
                        {
                            "email": f"reader{i:05d}@example.com",
                            "email_key": f"reader{i:05d}@example.com",
                            "name": "",
                            "created_at": now,
                            "updated_at": now,
                        }
                        for i in range(readers)
                    ],
                )
                ids = (await s.execute(select(Subscriber.id).order_by(Subscriber.id))).scalars().all()
                await s.execute(
                    insert(Subscription),
                    [
                        {
                            "subscriber_id": sid,
                            "list_id": lst.id,
                            "status": "confirmed",
                            "cadence": "default",
                            "token": secrets.token_urlsafe(32),
                            "watermark": 0,
                            "signup_at": now,
                            "confirmed_at": now,
                            "next_due_at": now,
                        }
                        for sid in ids
                    ],
                )
        finally:
            await app.db.close()

    asyncio.run(fill())
    return config


def db_sent(config: Path) -> int:
    cfg = load_config(config, environ={})

    async def count() -> int:
        database = bootstrap.open_database(cfg)
        try:
            async with database.read() as s:
                stmt = select(func.count()).select_from(Delivery).where(Delivery.status == "sent")
                return int((await s.execute(stmt)).scalar_one())
        finally:
            await database.close()

    return asyncio.run(count())


def wait_for(sink: SmtpSink, count: int, proc: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while len(sink.messages) < count and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, (
        f"the process ended after {len(sink.messages)} messages, before the kill:\n{last_log_lines(Path(proc.args[4]))}"
    )


def kill_run(tmp_path: Path, sink: SmtpSink, readers: int, moments: list[int]) -> tuple[list[int], int]:
    """Send, SIGKILL at each moment (the first process is `send`, then workers), finish with worker --once."""
    config = setup(tmp_path, f"sqlite:///{tmp_path}/digest.db", sink.port, readers)
    in_flight = []
    for n, moment in enumerate(moments):
        proc = spawn(config, *(("send", "demo") if n == 0 else ("worker",)))
        wait_for(sink, moment, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.2)  # let the sink finish reading what was already on the wire
        # Accepted by the server but not recorded as sent: what a restart may repeat.
        received = len({r for m in sink.messages for r in m.rcpt_tos})
        in_flight.append(received - db_sent(config))
    time.sleep(2.2)  # the killed workers' leases expire
    done = subprocess.run(
        [sys.executable, "-m", "digest", "--config", str(config), "worker", "--once"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    per = collections.Counter(r for m in sink.messages for r in m.rcpt_tos)
    missing = readers - len(per)
    assert missing == 0, f"{missing} readers never got their digest"
    dupes = sum(n - 1 for n in per.values())
    return in_flight, dupes


def test_sigkill_at_three_moments_loses_nothing_and_repeats_only_what_was_in_flight(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    in_flight, dupes = kill_run(tmp_path, smtp_sink, 2000, [300, 900, 1500])
    print(f"in flight at each kill: {in_flight}; duplicates received: {dupes}")
    assert all(0 <= n <= CONCURRENCY for n in in_flight), in_flight
    assert dupes <= sum(in_flight)


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="make test-long runs this (DIGEST_LONG=1)")
@pytest.mark.parametrize("run", range(20))
def test_sigkill_at_random_moments_over_5000_readers(tmp_path: Path, smtp_sink: SmtpSink, run: int) -> None:
    rng = random.Random(run)
    moments = sorted(rng.sample(range(100, 4900), 3))
    in_flight, dupes = kill_run(tmp_path, smtp_sink, 5000, moments)
    print(f"run {run}: kills at {moments}, in flight {in_flight}, duplicates {dupes}")
    assert all(0 <= n <= CONCURRENCY for n in in_flight), in_flight
    assert dupes <= sum(in_flight)


@pytest.mark.parametrize("readers", [20_000 if LONG else 2_000])
def test_three_workers_on_one_postgres_deliver_each_message_exactly_once(
    tmp_path: Path, smtp_sink: SmtpSink, postgres_url: str, readers: int
) -> None:
    config = setup(tmp_path, postgres_url, smtp_sink.port, readers)
    cfg = load_config(config, environ={})

    async def compose_for_everyone() -> int:
        app = await bootstrap.open_app(cfg)
        try:
            lst = await bootstrap.get_list(app, "demo")
            return (await compose.compose(app, lst, datetime.now(UTC), manual=True)).deliveries
        finally:
            await app.db.close()

    assert asyncio.run(compose_for_everyone()) == readers
    started = time.monotonic()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "digest", "--config", str(config), "worker", "--once"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [w.communicate(timeout=900) for w in workers]
    elapsed = time.monotonic() - started
    assert all(w.returncode == 0 for w in workers), outputs
    per = collections.Counter(r for m in smtp_sink.messages for r in m.rcpt_tos)
    assert len(per) == readers and max(per.values()) == 1
    shares = [out for out, _ in outputs]
    print(f"3 workers, {readers} messages in {elapsed:.1f}s ({readers / elapsed:.0f}/s): {shares}")
    assert all("sent" in out for out in shares), "a worker sent nothing: the queue was not shared"
