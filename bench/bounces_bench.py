"""Time `digest bounces process` on a 5,000-message mbox of real-world bounces (SQLite).

The mbox repeats the corpus of tests/fixtures/bounces (flufl.bounce's bounces from many MTAs and
the real-world shapes), each copy with its own Message-ID and addressed to its own delivery, so
every message is new mail for a reader. Prints, against a baseline measured in the same run (the
time to merely read the same mbox with the standard library and `email.message_from_bytes` each
message):

- the first run: all new mail (analysed, recorded, readers suppressed or scored);
- a rerun: what a cron job does next time (the mbox is read from where the first run stopped);
- a rescan: every message read again and recognised as seen by its key (what an mbox whose read
  offset was lost, or `--rescan`, costs).

    python bench/bounces_bench.py [--messages 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import email
import mailbox
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

from digest import bounce_mailboxes  # noqa: E402
from digest.inbound import verp_target  # noqa: E402
from digest.inbound_mail import parse  # noqa: E402
from digest.tokens import verp_address  # noqa: E402
from test_bounce_corpus import CORPUS, ROWS  # noqa: E402
from test_bounces import DOMAIN, KEY, NOW, open_project, seed  # noqa: E402

FIRST_ID = 100_000


def corpus() -> list[bytes]:
    """The corpus messages that name no delivery of their own, without an mbox From_ line."""
    found = []
    for row in ROWS:
        raw = (CORPUS / row["file"]).read_bytes()
        if raw.startswith(b"From "):
            raw = raw.partition(b"\n")[2]
        if verp_target(None, parse(raw)) is None:
            found.append(re.sub(rb"(?im)^message-id:", b"X-Old-Message-ID:", raw))
    return found


def build_mbox(path: Path, n: int) -> None:
    messages = corpus()
    box = mailbox.mbox(str(path), create=True)
    for i in range(n):
        verp = verp_address(FIRST_ID + i, KEY, DOMAIN)
        box.add(
            f"Delivered-To: {verp}\nMessage-ID: <bench-{i}@mx.example.net>\n".encode()
            + messages[i % len(messages)]
        )
    box.close()


def baseline(path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    box = mailbox.mbox(str(path), create=False)
    count = 0
    for key in box.iterkeys():
        email.message_from_bytes(box.get_bytes(key))
        count += 1
    box.close()
    return time.perf_counter() - started, count


async def main(n: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bounces-bench-"))
    try:
        app = await open_project(work, f"sqlite:///{work}/digest.db")
        await seed(app, {FIRST_ID + i: f"reader{i}@example.org" for i in range(n)})
        path = work / "bounces.mbox"
        build_mbox(path, n)
        base, count = baseline(path)
        print(f"{count} messages, {path.stat().st_size / 1e6:.1f} MB mbox")
        print(f"baseline (mailbox.mbox + email.message_from_bytes): {base:.2f} s = {count / base:,.0f} msg/s")
        for label, kwargs in (
            ("first run (new mail)", {}),
            ("rerun", {}),
            ("rescan (all seen)", {"rescan": True}),
        ):
            started = time.perf_counter()
            result = await bounce_mailboxes.process_path(app, path, NOW, **kwargs)
            took = time.perf_counter() - started
            rate = f"{count / took:,.0f} msg/s of the mbox" if took else "-"
            counts = ", ".join(f"{k} {v}" for k, v in result.counts.most_common())
            print(f"{label}: {took:.2f} s = {rate}, {took / base:.2f}x baseline; {counts or 'nothing read'}")
        await app.db.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    asyncio.run(main(parser.parse_args().messages))
