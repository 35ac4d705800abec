"""Time `digest prune` on a year of synthetic history (SQLite).

Prints the batched prune against a baseline measured in the same run on an identical copy of the
database: one unbatched DELETE of the same deliveries and events (what "lock the table once" costs).
The figures that matter are ratios: total time of the batched prune over the baseline, and the
longest single batch (the longest the write lock is held) over the baseline.

    python bench/prune_bench.py [--days 365] [--readers 200]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

from digest import retention, store  # noqa: E402
from digest.store import retention as retention_store  # noqa: E402
from test_prune import NOW, make_history, open_project  # noqa: E402


async def main(days: int, readers: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="prune-bench-"))
    try:
        app = await open_project(work, f"sqlite:///{work}/digest.db")
        started = time.perf_counter()
        await make_history(app, days=days, readers=readers)
        built = time.perf_counter() - started
        await app.db.close()
        copy = work / "baseline.db"
        shutil.copy(work / "digest.db", copy)
        for suffix in ("-wal", "-shm"):
            if (work / f"digest.db{suffix}").exists():
                shutil.copy(work / f"digest.db{suffix}", work / f"baseline.db{suffix}")

        conn = sqlite3.connect(copy)
        conn.execute("PRAGMA foreign_keys=OFF")
        cut = (NOW.replace(tzinfo=None) - app.cfg.retention.deliveries).isoformat(sep=" ")
        cut_events = (NOW.replace(tzinfo=None) - app.cfg.retention.events).isoformat(sep=" ")
        t = time.perf_counter()
        with conn:
            conn.execute(
                "UPDATE events SET delivery_id = NULL WHERE delivery_id IN "
                "(SELECT id FROM deliveries WHERE created_at < ? AND status NOT IN ('pending','sending','deferred'))",
                (cut,),
            )
            conn.execute(
                "DELETE FROM deliveries WHERE created_at < ? AND status NOT IN ('pending','sending','deferred')",
                (cut,),
            )
            conn.execute(
                "DELETE FROM events WHERE created_at < ? AND kind NOT IN ('suppressed','unsuppressed','erased')",
                (cut_events,),
            )
        baseline = time.perf_counter() - t
        conn.close()

        app = await open_project(work, f"sqlite:///{work}/digest.db")
        batches: list[float] = []
        real = retention_store.bulk_delete

        @asynccontextmanager
        async def timed(database: store.Database):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            async with real(database) as s:
                yield s
            batches.append(time.perf_counter() - t0)

        retention_store.bulk_delete = timed  # type: ignore[assignment]
        t = time.perf_counter()
        report = await retention.prune(app, NOW)
        total = time.perf_counter() - t
        retention_store.bulk_delete = real  # type: ignore[assignment]
        await app.db.close()
        print(
            f"history: {days} days x {readers} readers built in {built:.1f}s; batch size {app.cfg.retention.batch_size}"
        )
        print(
            "pruned: "
            + ", ".join(f"{v} {k}" for k, v in report.counts().items())
            + f" in {report.batches} batches"
        )
        print(f"baseline (one unbatched DELETE of the same rows): {baseline * 1000:.0f} ms")
        print(f"batched prune, all steps:                 {total / baseline:.2f}x baseline")
        print(f"longest delivery batch (write lock held):  {max(batches) / baseline:.3f}x baseline")
        print(
            f"median delivery batch:                     {sorted(batches)[len(batches) // 2] / baseline:.3f}x baseline"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--readers", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.days, args.readers))
