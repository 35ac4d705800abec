"""The bounce classifier on real-world mail: flufl.bounce's corpus of bounces from many MTAs and
providers, the shapes real inboxes showed us, and our own fixtures.

tests/fixtures/bounces/expected.csv says, for each message, what it is (kind), how it must count
(class) and which recipient it is about, written down from reading each one. A message with no
VERP address of ours gets one as a Delivered-To header, as the MTA would add it.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from digest.inbound import InboundVerdict, analyse, verp_target
from digest.inbound_mail import parse
from digest.tokens import verp_address

CORPUS = Path(__file__).parent / "fixtures" / "bounces"
KEY = "test-key"
DOMAIN = "bounce.example.com"
ROWS = list(csv.DictReader((CORPUS / "expected.csv").read_text(encoding="utf-8").splitlines()))
# What a delivery can be judged by: every message that names one (mailto unsubscribes name a token).
JUDGED = [r for r in ROWS if r["kind"] not in ("unsubscribe",) and r["file"] != "forged-verp.eml"]


def addressed(raw: bytes, delivery_id: int) -> bytes:
    """The message as it reaches the bounce mailbox: with our VERP address, if it has none."""
    if verp_target(None, parse(raw)) is not None:
        return raw
    header = f"Delivered-To: {verp_address(delivery_id, KEY, DOMAIN)}\n".encode()
    if raw.startswith(b"From "):  # an mbox From_ line stays first
        from_line, _, rest = raw.partition(b"\n")
        return from_line + b"\n" + header + rest
    return header + raw


@dataclass(frozen=True)
class Judged:
    kind: str
    klass: str
    recipient: str


def judge(verdict: InboundVerdict) -> Judged:
    main = next((r for r in verdict.recipients if r.bounce_class is verdict.bounce_class), None)
    klass = str(verdict.bounce_class) if verdict.bounce_class else "-"
    return Judged(verdict.kind, klass, (main.recipient if main else None) or "")


def run(row: dict[str, str], n: int) -> Judged:
    return judge(analyse(addressed((CORPUS / row["file"]).read_bytes(), 9000 + n), None, [KEY]))


def test_the_table_lists_every_corpus_message_once() -> None:
    files = sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.suffix in (".eml", ".txt"))
    listed = [r["file"] for r in ROWS]
    assert sorted(listed) == files and len(set(listed)) == len(listed)
    assert all(r["kind"] and r["class"] and r["why"] for r in ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_each_real_world_message_gets_the_verdict_read_from_it(row: dict[str, str]) -> None:
    got = run(row, ROWS.index(row))
    assert (got.kind, got.klass) == (row["kind"], row["class"]), row["why"]
    if row["recipient"]:
        assert got.recipient in row["recipient"].split("|"), row["why"]


def test_dead_mailboxes_are_suppressed_and_live_ones_are_not(report_figure: Callable[[str], None]) -> None:
    """The figures the issue asks for: hard-bounce recall of at least 90% of dead mailboxes and
    wrong suppressions of at most 0.3% of live ones, over every message, none raising."""
    results = [(row, run(row, n)) for n, row in enumerate(ROWS) if row in JUDGED]
    dead = [(row, got) for row, got in results if row["class"] == "hard"]
    live = [(row, got) for row, got in results if row["class"] != "hard"]
    found = sum(got.klass == "hard" for _, got in dead)
    wrong = [row["file"] for row, got in live if got.klass == "hard"]
    unknowns = sum(got.klass == "unknown" for _, got in results)
    recall, wrong_rate = found / len(dead), len(wrong) / len(live)
    report_figure(
        f"bounce corpus: {len(ROWS)} messages, {len(dead)} dead mailboxes, {len(live)} live; "
        f"hard-bounce recall {found}/{len(dead)} = {recall:.1%}; wrong suppressions "
        f"{len(wrong)}/{len(live)} = {wrong_rate:.2%}; unknown class {unknowns}"
    )
    assert recall >= 0.90, [row["file"] for row, got in dead if got.klass != "hard"]
    assert wrong_rate <= 0.003, wrong
