"""One compose tick for many due readers in about 50 groups, on SQLite and on PostgreSQL.

Not a test: it prints wall time, peak RSS and the number of renders, next to a baseline measured in
the same run on the same database (a plain INSERT … SELECT of as many rows into a scratch table),
so the figures read as ratios that survive a change of machine.

    python bench/compose_bench.py                     # 100,000 readers, 50 groups, both databases
    python bench/compose_bench.py --readers 20000 --only sqlite
    python bench/compose_bench.py --topics            # and the same tick with readers over 10 topic choices
    DIGEST_BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres python bench/compose_bench.py

Each database is measured in a child process of its own, so peak RSS is that database's alone.
With --topics the list offers four topics and the readers are spread over ten topic choices (every
topic, one, two or three of them); that tick runs in a child of its own beside the plain one, on the
same machine in the same run, and its time is also given as a ratio to the plain tick.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select, text

from digest import bootstrap, compose, store, topics
from digest.config import load_config
from digest.models import Delivery, NewArticle, Subscriber, Subscription
from digest.store import migrate
from digest.store import sources as sources_store

PG_ADMIN_URL = os.environ.get("DIGEST_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
NOW = datetime(2027, 3, 29, 7, 0, tzinfo=UTC)
SEEDS = Path(__file__).resolve().parents[1] / "src" / "digest" / "defaults" / "seeds"


TOPICS = ("harbour", "market", "council", "sport")
# Ten topic choices, as Subscription.topics keeps them (None: every topic).
CHOICES: tuple[str | None, ...] = (
    None, "harbour", "market", "council", "sport", "harbour,market", "council,harbour", "market,sport",
    "council,sport", "council,harbour,market",
)  # fmt: skip


def topics_toml() -> str:
    return "".join(
        f'\n[[lists.topics]]\nslug = "{t}"\nname = "{t.title()}"\nkeywords = ["{t}"]\n' for t in TOPICS
    )


def write_config(directory: Path, url: str, with_topics: bool = False) -> Path:
    (directory / "seeds").mkdir(exist_ok=True)
    path = directory / "digest.toml"
    path.write_text(
        f'[database]\nurl = "{url}"\n\n[capture]\nenabled = true\n\n'
        '[web]\nbase_url = "http://127.0.0.1:8000"\nsecret_keys = ["bench-secret-key-0123456789abcdef"]\n\n'
        '[sender]\nfrom = "Digest <digest@news.example.com>"\npostal_address = "1 Example Street"\n'
        'domain = "news.example.com"\n\n'
        f'[[sources]]\nname = "seeds"\nkind = "directory"\npath = "{directory / "seeds"}"\n\n'
        '[[lists]]\nslug = "demo"\nname = "Demo Digest"\nsources = ["seeds"]\nschedule = "0 7 * * *"\n'
        'timezone = "UTC"\nmax_articles = 10\nmax_age = "30d"\n' + (topics_toml() if with_topics else "")
    )
    return path


ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Pacific/Auckland")


async def populate(
    app: bootstrap.App, readers: int, groups: int, with_topics: bool = False, spread: str = "watermarks"
) -> None:
    """`groups` + 10 articles; readers spread over `groups` watermarks (0, 1, …) or, with
    spread="schedules", over `groups` schedules (daily at an hour in a zone) at one watermark; all
    due now, and with topics over the ten topic choices too."""
    items = [
        NewArticle(
            guid=f"bench-{n}",
            url=f"https://news.example.com/{n}",
            title=f"Benchmark story number {n} about the {TOPICS[n % len(TOPICS)]}",
            author=None,
            published_at=NOW - timedelta(hours=n),
            summary=f"Story {n}: something happened that matters to readers.",
            content_html=f"<p>Story {n}: something happened that matters to readers.</p>",
            image_url=None,
            fingerprint=hashlib.sha256(f"bench-{n}".encode()).hexdigest(),
        )
        for n in range(groups + 10)
    ]
    async with app.db.write() as s:
        src = await sources_store.source_by_name(s, "seeds")
        assert src is not None
        stored = await sources_store.store_articles(s, src.id, items, NOW - timedelta(days=1))
        await topics.match_articles(app, s, stored.article_ids)
    lst = await bootstrap.get_list(app, "demo")
    batch = 10_000
    for start in range(0, readers, batch):
        n = min(batch, readers - start)
        async with app.db.write() as s:
            await s.execute(
                insert(Subscriber),
                [
                    {"email": f"reader{i:06d}@example.com", "email_key": f"reader{i:06d}@example.com",
                     "name": "", "created_at": NOW, "updated_at": NOW}
                    for i in range(start, start + n)
                ],
            )  # fmt: skip
            ids = (
                (
                    await s.execute(
                        select(Subscriber.id)
                        .where(Subscriber.email_key >= f"reader{start:06d}")
                        .order_by(Subscriber.id)
                    )
                )
                .scalars()
                .all()[:n]
            )
            await s.execute(
                insert(Subscription),
                [
                    {"subscriber_id": sid, "list_id": lst.id, "status": "confirmed",
                     **({"cadence": "default", "watermark": k % groups} if spread == "watermarks" else
                        {"cadence": "daily", "watermark": 0, "send_hour": (k % groups) % 24,
                         "timezone": ZONES[(k % groups) // 24 % len(ZONES)]}),
                     "token": secrets.token_urlsafe(24), "signup_at": NOW,
                     "confirmed_at": NOW, "next_due_at": NOW - timedelta(minutes=1),
                     "topics": CHOICES[(k // groups) % len(CHOICES)] if with_topics else None}
                    for k, sid in enumerate(ids, start)
                ],
            )  # fmt: skip


async def baseline(app: bootstrap.App, rows: int) -> float:
    """A plain INSERT … SELECT of `rows` rows (subscription id, address) into a scratch table."""
    async with app.db.write() as s:
        await s.execute(text("CREATE TABLE bench_scratch (subscription_id BIGINT, address VARCHAR(320))"))
    started = time.perf_counter()
    async with app.db.write() as s:
        await s.execute(
            text(
                "INSERT INTO bench_scratch (subscription_id, address) "
                "SELECT subscriptions.id, subscribers.email FROM subscriptions "
                "JOIN subscribers ON subscribers.id = subscriptions.subscriber_id LIMIT :n"
            ),
            {"n": rows},
        )
    elapsed = time.perf_counter() - started
    async with app.db.write() as s:
        await s.execute(text("DROP TABLE bench_scratch"))
    return elapsed


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


async def measure(
    url: str, readers: int, groups: int, with_topics: bool, spread: str
) -> dict[str, float | int | str]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(write_config(Path(tmp), url, with_topics), environ={})
        migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
        app = await bootstrap.open_app(cfg)
        try:
            started = time.perf_counter()
            await populate(app, readers, groups, with_topics, spread)
            populate_s = time.perf_counter() - started
            base_s = await baseline(app, readers)
            small = await compose.compose_due(app, NOW - timedelta(minutes=2))  # nothing due: warm-up
            assert sum(r.deliveries for r in small) == 0
            rss_before = peak_rss_mb()
            started = time.perf_counter()
            reports = await compose.compose_due(app, NOW)
            tick_s = time.perf_counter() - started
            rss_after = peak_rss_mb()
            async with app.db.read() as s:
                stored = int((await s.execute(select(func.count()).select_from(Delivery))).scalar_one())
            # The same tick again composes nothing (exactly once) and is the cost of an idle tick.
            started = time.perf_counter()
            again = await compose.compose_due(app, NOW)
            idle_s = time.perf_counter() - started
        finally:
            await app.db.close()
    return {
        "readers": readers,
        "groups": groups,
        "populate_s": populate_s,
        "baseline_s": base_s,
        "tick_s": tick_s,
        "idle_tick_s": idle_s,
        "renders": sum(r.renders for r in reports),
        "deliveries": sum(r.deliveries for r in reports),
        "stored": stored,
        "again": sum(r.deliveries for r in again),
        "rss_before_mb": rss_before,
        "rss_peak_mb": rss_after,
    }


def child(kind: str, readers: int, groups: int, with_topics: bool, spread: str) -> None:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            result = asyncio.run(measure(f"sqlite:///{tmp}/bench.db", readers, groups, with_topics, spread))
    else:
        import psycopg

        name = f"digest_bench_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            result = asyncio.run(
                measure(f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}", readers, groups, with_topics, spread)
            )
        finally:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readers", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    parser.add_argument("--topics", action="store_true", help="also the tick with ten topic choices")
    parser.add_argument(
        "--spread", choices=["watermarks", "schedules"], default="watermarks",
        help="readers in groups of one watermark each, or of one schedule each at one watermark",
    )  # fmt: skip
    parser.add_argument("--child", choices=["sqlite", "postgres"], help=argparse.SUPPRESS)
    parser.add_argument("--child-topics", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.readers, args.groups, args.child_topics, args.spread)
        return
    rows = []
    plain: dict[str, float] = {}
    for kind in [args.only] if args.only else ["sqlite", "postgres"]:
        for with_topics in (False, True) if args.topics else (False,):
            done = subprocess.run(
                [sys.executable, __file__, "--child", kind, "--readers", str(args.readers), "--groups",
                 str(args.groups), "--spread", args.spread, *(["--child-topics"] if with_topics else [])],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                print(f"{kind}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if not with_topics:
                plain[kind] = result["tick_s"]
            name = f"{kind}+topics" if with_topics else kind
            rows.append((name, result))
    print(
        f"compose tick: {args.readers:,} due readers in {args.groups} {args.spread[:-1]} groups (one list)\n"
    )
    head = (
        f"{'database':<15} {'tick':>8} {'baseline':>9} {'ratio':>6} {'idle':>7} {'renders':>8} "
        f"{'deliveries':>10} {'again':>6} {'RSS before':>11} {'RSS peak':>9} {'growth':>7}"
    )
    print(head)
    print("-" * len(head))
    for kind, r in rows:
        print(
            f"{kind:<15} {r['tick_s']:>7.2f}s {r['baseline_s']:>8.3f}s {r['tick_s'] / r['baseline_s']:>5.1f}x "
            f"{r['idle_tick_s']:>6.2f}s {r['renders']:>8} {r['deliveries']:>10,} {r['again']:>6} "
            f"{r['rss_before_mb']:>9.0f}MB {r['rss_peak_mb']:>7.0f}MB {r['rss_peak_mb'] - r['rss_before_mb']:>5.0f}MB"
        )
    for name, r in rows:
        base = plain.get(name.split("+")[0])
        if "+" in name and base:
            print(f"{name}: {r['tick_s'] / base:.2f}x the plain tick, {r['renders']} renders")
    print(
        "\ntick: one compose_due pass (select due readers, draft, render, claim, INSERT … SELECT deliveries)."
        "\nbaseline: INSERT … SELECT of the same number of (id, address) rows into a scratch table."
        "\nidle: the same tick run again (nothing left to compose). again: deliveries it created (must be 0)."
    )


if __name__ == "__main__":
    main()
