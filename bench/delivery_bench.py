"""Delivery engine throughput against Postfix's C smtp-sink, as a ratio of the raw SMTP ceiling.

For each database (SQLite, PostgreSQL) and each N, in one run:
  ceiling  plain aiosmtplib pushing the same pre-built bytes over the same number of connections;
  engine   `digest worker --once` (a separate process) delivering an edition composed for N readers.
Reported: messages/s, engine/ceiling, CPU seconds per 1,000 messages and peak RSS of the worker.
DKIM-on is measured separately (--dkim).

    python bench/delivery_bench.py --readers 10000 100000 --connections 8 [--dkim] [--db sqlite postgres]

Needs /usr/sbin/smtp-sink (Debian package postfix; the postfix daemon is not started) and, for
PostgreSQL, a server at $DIGEST_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiosmtplib
from sqlalchemy import insert, select

from digest import bootstrap, compose, sources, store
from digest.config import load_config
from digest.models import Subscriber, Subscription
from digest.store import ledger, migrate

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("DIGEST_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    args = [binary, *(["-u", "nobody"] if os.getuid() == 0 else []), f"127.0.0.1:{port}", "1024"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("smtp-sink did not start")


async def ceiling(port: int, message: bytes, count: int, connections: int) -> float:
    """Messages per second for plain aiosmtplib with the same bytes and connection count."""
    per_conn = count // connections

    async def run() -> None:
        sent = 0
        while sent < per_conn:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as smtp:
                for _ in range(min(100, per_conn - sent)):
                    await smtp.sendmail("bounces@news.example.com", ["reader@example.com"], message)
                    sent += 1

    started = time.perf_counter()
    await asyncio.gather(*(run() for _ in range(connections)))
    return per_conn * connections / (time.perf_counter() - started)


def make_database(kind: str) -> tuple[str, str | None]:
    if kind == "sqlite":
        return f"sqlite:///{tempfile.mkdtemp(prefix='digest-bench-')}/bench.db", None
    import psycopg

    name = f"digest_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}", name


def drop_database(name: str | None) -> None:
    if name:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write_config(directory: Path, url: str, port: int, connections: int, dkim: Path | None) -> Path:
    shutil.copytree(ROOT / "src" / "digest" / "defaults" / "seeds", directory / "seeds", dirs_exist_ok=True)
    text = (
        f'[database]\nurl = "{url}"\n\n[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
        f"concurrency = {connections}\nmax_per_connection = 100\n\n[capture]\nenabled = false\n\n"
        '[delivery]\nbatch_size = 200\nlease = "60s"\n\n'
        '[web]\nbase_url = "http://127.0.0.1:8000"\nsecret_keys = ["bench-key-0123456789"]\n\n'
        '[sender]\nfrom = "Digest <digest@news.example.com>"\ndomain = "news.example.com"\n'
        'postal_address = "1 Example Street"\n\n'
        f'[[sources]]\nname = "seeds"\nkind = "directory"\npath = "{directory}/seeds"\n\n'
        '[[lists]]\nslug = "demo"\nname = "Demo Digest"\nsources = ["seeds"]\nmax_age = "3650d"\n'
    )
    if dkim:
        text += f'\n[dkim]\ndomain = "news.example.com"\nselector = "bench"\nkey_path = "{dkim}"\n'
    path = directory / "digest.toml"
    path.write_text(text)
    return path


async def populate(config: Path, readers: int) -> tuple[bytes, float]:
    """Bulk readers, one composed edition; returns one message's bytes and the compose time."""
    cfg = load_config(config, environ={})
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    app = await bootstrap.open_app(cfg)
    try:
        now = datetime.now(UTC)
        await sources.ingest_sources(app, now)
        lst = await bootstrap.get_list(app, "demo")
        for start in range(0, readers, 20_000):
            chunk = range(start, min(start + 20_000, readers))
            async with app.db.write() as s:
                await s.execute(
                    insert(Subscriber),
                    [
                        {
                            "email": f"r{i:07d}@example.com",
                            "email_key": f"r{i:07d}@example.com",
                            "name": "",
                            "created_at": now,
                            "updated_at": now,
                        }
                        for i in chunk
                    ],
                )
                ids = (
                    (
                        await s.execute(
                            select(Subscriber.id)
                            .where(Subscriber.email_key >= f"r{start:07d}@")
                            .order_by(Subscriber.id)
                        )
                    )
                    .scalars()
                    .all()
                )
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
                        for sid in ids[: len(chunk)]
                    ],
                )
        started = time.perf_counter()
        report = await compose.compose(app, lst, now, manual=True)
        composed = time.perf_counter() - started
        assert report.deliveries == readers, report
        async with app.db.read() as s:
            claimed = await ledger.load_claimed(s, [1])
        from digest.assembly import Assembler, dkim_key

        _, _, raw = Assembler(cfg, app.keys, dkim_key(cfg)).message(claimed[0], cfg.web.base_url, now)
        return raw, composed
    finally:
        await app.db.close()


def engine(config: Path, readers: int) -> tuple[float, float, float]:
    """(messages/s, CPU s per 1,000, peak RSS MB) of one `digest worker --once` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "digest", "--config", str(config), "worker", "--once"],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or f"{readers} sent" not in done.stdout:
        raise SystemExit(f"worker failed: {done.stdout} {done.stderr[-500:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return readers / elapsed, cpu / readers * 1000, after.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readers", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--db", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--dkim", action="store_true", help="sign every message (dkimpy, 2048-bit RSA)")
    args = parser.parse_args()
    port = free_port()
    sink = start_sink(port)
    rows = []
    try:
        for kind in args.db:
            for readers in args.readers:
                url, dbname = make_database(kind)
                work = Path(tempfile.mkdtemp(prefix="digest-bench-"))
                key = None
                if args.dkim:
                    key = work / "dkim.pem"
                    key.write_bytes(subprocess.run(["openssl", "genrsa", "2048"], capture_output=True).stdout)
                try:
                    config = write_config(work, url, port, args.connections, key)
                    raw, composed = asyncio.run(populate(config, readers))
                    base = asyncio.run(ceiling(port, raw, min(readers, 20_000), args.connections))
                    rate, cpu, rss = engine(config, readers)
                    rows.append((kind, readers, base, rate, rate / base, cpu, rss, composed, len(raw)))
                    print(
                        f"{kind:8} N={readers:>7}  ceiling {base:7.0f}/s  engine {rate:7.0f}/s  "
                        f"ratio {rate / base:5.2f}  cpu {cpu:5.2f}s/1k  rss {rss:6.1f} MB  "
                        f"compose {composed:5.1f}s  message {len(raw)} B",
                        flush=True,
                    )
                finally:
                    drop_database(dbname)
                    shutil.rmtree(work, ignore_errors=True)
    finally:
        sink.terminate()
        sink.wait()
    print(
        "\n| db | readers | ceiling msg/s | engine msg/s | engine/ceiling | CPU s per 1k | peak RSS MB | compose s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind, n, base, rate, ratio, cpu, rss, composed, _ in rows:
        print(
            f"| {kind} | {n:,} | {base:.0f} | {rate:.0f} | {ratio:.2f} | {cpu:.2f} | {rss:.0f} | {composed:.1f} |"
        )


if __name__ == "__main__":
    main()
