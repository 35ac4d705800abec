"""Delivery engine throughput against Postfix's C smtp-sink, as a ratio of the raw SMTP ceiling.

For each database (SQLite, PostgreSQL), each N and each edition size (about 14 KB and 50 KB), in
one run:
  ceiling  plain aiosmtplib pushing the same pre-built bytes over the same number of connections
           (measured just before and just after the engine, and averaged);
  engine   `digest worker --once` (a separate process) delivering an edition composed for N readers.
Reported: messages/s, engine/ceiling, CPU milliseconds per message and peak RSS of the worker
process alone (os.wait4 on its pid, not RUSAGE_CHILDREN, which would mix in every earlier child).
DKIM-on is a separate row per database (--dkim-readers readers, 14 KB; 0 leaves it out).

    python bench/delivery_bench.py --readers 10000 [100000] --connections 8 [--dkim-readers 2000]
        [--sizes 14 50] [--db sqlite postgres]

Needs /usr/sbin/smtp-sink (Debian package postfix; the postfix daemon is not started) and, for
PostgreSQL, a server at $DIGEST_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


async def ceiling(port: int, message: bytes, count: int, connections: int) -> tuple[float, float]:
    """Messages per second, and CPU ms per message, for plain aiosmtplib with the same bytes and
    connection count (this process does nothing else meanwhile)."""
    per_conn = count // connections

    async def run() -> None:
        sent = 0
        while sent < per_conn:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as smtp:
                for _ in range(min(100, per_conn - sent)):
                    await smtp.sendmail("bounces@news.example.com", ["reader@example.com"], message)
                    sent += 1

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(run() for _ in range(connections)))
    sent = per_conn * connections
    return sent / (time.perf_counter() - started), (time.process_time() - cpu) / sent * 1000


def make_database(kind: str, work: Path) -> tuple[str, str | None]:
    if kind == "sqlite":
        return f"sqlite:///{work}/bench.db", None
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


# Paragraphs for the extra stories that bring an edition to about 50 KB (the seeds give about 14 KB).
FILLER = (
    "The council met on Tuesday evening to discuss the proposal, which would change how the harbour "
    "is run for the next decade. Residents who spoke said they welcomed the investment but worried "
    "about traffic on the narrow streets near the quay, and asked for a second consultation. "
)


def write_stories(seeds: Path, count: int) -> None:
    for i in range(count):
        (seeds / f"9{i:02d}_bench-story.txt").write_text(
            f"Bench story {i}: the harbour plan, part {i}\n\n" + "\n\n".join([FILLER * 3] * 4) + "\n"
        )


def write_config(
    directory: Path, url: str, port: int, connections: int, dkim: Path | None, size_kb: int = 14
) -> Path:
    shutil.copytree(ROOT / "src" / "digest" / "defaults" / "seeds", directory / "seeds", dirs_exist_ok=True)
    if size_kb > 14:
        write_stories(directory / "seeds", (size_kb - 14) * 7 // 10)  # about 1.4 KB each
    text = (
        f'[database]\nurl = "{url}"\n\n[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
        f"concurrency = {connections}\nmax_per_connection = 100\n\n[capture]\nenabled = false\n\n"
        '[delivery]\nbatch_size = 200\nlease = "60s"\n\n'
        '[web]\nbase_url = "http://127.0.0.1:8000"\nsecret_keys = ["bench-key-0123456789"]\n\n'
        '[sender]\nfrom = "Digest <digest@news.example.com>"\ndomain = "news.example.com"\n'
        'postal_address = "1 Example Street"\n\n'
        f'[[sources]]\nname = "seeds"\nkind = "directory"\npath = "{directory}/seeds"\n\n'
        '[[lists]]\nslug = "demo"\nname = "Demo Digest"\nsources = ["seeds"]\nmax_age = "3650d"\n'
        "max_articles = 40\n"
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
    """(messages/s, CPU ms per message, peak RSS MB) of one `digest worker --once` process."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "digest", "--config", str(config), "worker", "--once"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own usage, reaped here
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read().decode(errors="replace")
    if proc.returncode != 0 or f"{readers} sent" not in output:
        raise SystemExit(f"worker failed: {output[-1500:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return readers / elapsed, cpu / readers * 1000, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readers", type=int, nargs="+", default=[10_000])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--db", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[14, 50], help="edition sizes, KB")
    parser.add_argument(
        "--dkim-readers", type=int, default=2000, help="readers for the DKIM-on row (dkimpy, 2048-bit RSA)"
    )
    args = parser.parse_args()
    runs = [
        (kind, readers, size, False) for kind in args.db for readers in args.readers for size in args.sizes
    ]
    if args.dkim_readers:
        runs += [(kind, args.dkim_readers, 14, True) for kind in args.db]
    port = free_port()
    sink = start_sink(port)
    rows = []
    try:
        for kind, readers, size, dkim in runs:
            work = Path(tempfile.mkdtemp(prefix="digest-bench-"))
            url, dbname = make_database(kind, work)
            key = None
            if dkim:
                key = work / "dkim.pem"
                key.write_bytes(subprocess.run(["openssl", "genrsa", "2048"], capture_output=True).stdout)
            try:
                config = write_config(work, url, port, args.connections, key, size)
                raw, composed = asyncio.run(populate(config, readers))
                # The ceiling before and after the engine, averaged: on a shared machine the load
                # drifts, and a ceiling taken on one side only skews the ratio.
                count = min(readers, 20_000)
                before, before_cpu = asyncio.run(ceiling(port, raw, count, args.connections))
                rate, cpu, rss = engine(config, readers)
                after, after_cpu = asyncio.run(ceiling(port, raw, count, args.connections))
                base, base_cpu = (before + after) / 2, (before_cpu + after_cpu) / 2
                row = (kind, readers, len(raw), dkim, base, rate, rate / base, cpu, base_cpu, rss, composed)
                rows.append(row)
                print(
                    f"{kind:8} N={readers:>7} {len(raw) // 1024:3d} KB dkim={'on ' if dkim else 'off'} "
                    f"ceiling {base:6.0f}/s  engine {rate:6.0f}/s  ratio {rate / base:5.2f}  "
                    f"cpu {cpu:5.2f} ms/msg (ceiling {base_cpu:4.2f})  rss {rss:6.1f} MB  "
                    f"compose {composed:5.1f}s",
                    flush=True,
                )
            finally:
                drop_database(dbname)
                shutil.rmtree(work, ignore_errors=True)
    finally:
        sink.terminate()
        sink.wait()
    print(
        "\n| db | readers | message | DKIM | ceiling msg/s | engine msg/s | engine/ceiling "
        "| worker CPU ms/msg | ceiling CPU ms/msg | worker peak RSS MB | compose s |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind, n, size, dkim, base, rate, ratio, cpu, base_cpu, rss, composed in rows:
        print(
            f"| {kind} | {n:,} | {size // 1024} KB | {'on' if dkim else 'off'} | {base:.0f} | {rate:.0f} "
            f"| {ratio:.2f} | {cpu:.2f} | {base_cpu:.2f} | {rss:.0f} | {composed:.1f} |"
        )


if __name__ == "__main__":
    main()
