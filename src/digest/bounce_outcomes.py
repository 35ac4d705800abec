"""What applying an inbound message produces, and what every kind of message shares.

The thresholds (BouncePolicy), the outcome of one message (Handled) and of a batch (ProcessReport),
a message read but not yet applied (Inbound), how its raw bytes are kept in an event, and how the
inbox remembers the messages it dealt with. bounces.py applies bounces, auto-replies and unparsed
mail; complaints.py applies complaints.
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from digest import inbound
from digest.config import Config
from digest.store import inbound as inbound_store

RAW_LIMIT = 64 * 1024
# Outcomes of one message, in the order reports show them.
OUTCOMES = (
    "hard",
    "soft",
    "policy",
    "unknown",
    "delayed",
    "complaint",
    "unsubscribe",
    "auto_reply",
    "unparsed",
    "duplicate",
    "in_flight",
    "forged",
    "unknown_delivery",
    "ignored",
)


@dataclass(frozen=True)
class BouncePolicy:
    """Scoring (STANDARDS item 32), complaint thresholds (item 23) and raw-message retention."""

    hard: float = 1.0
    soft: float = 0.5
    limit: float = 5.0
    quiet: timedelta = timedelta(days=7)
    complaint_warn: float = 0.001
    complaint_pause: float = 0.003
    raw_limit: int = RAW_LIMIT
    raw_retention: timedelta = timedelta(days=30)

    @classmethod
    def from_config(cls, cfg: Config) -> BouncePolicy:
        """`[bounce]` settings when the config defines them (soft_score, score_limit, quiet,
        complaint_warn, complaint_pause, raw_retention), else the defaults."""
        b: Any = cfg.bounce
        d = cls()
        return cls(
            soft=float(getattr(b, "soft_score", d.soft)),
            limit=float(getattr(b, "score_limit", d.limit)),
            quiet=getattr(b, "quiet", d.quiet),
            complaint_warn=float(getattr(b, "complaint_warn", d.complaint_warn)),
            complaint_pause=float(getattr(b, "complaint_pause", d.complaint_pause)),
            raw_retention=getattr(b, "raw_retention", d.raw_retention),
        )


@dataclass
class ProcessReport:
    """What a batch of inbound messages did: one outcome per message, and what followed."""

    counts: Counter[str] = field(default_factory=Counter)
    suppressed: int = 0
    failed_deliveries: int = 0
    paused_editions: list[int] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # messages left for a later run: the database failed
    moved: int = 0  # Maildir messages marked or moved as processed

    @property
    def messages(self) -> int:
        return sum(self.counts.values())

    def add(self, other: Handled) -> None:
        self.counts[other.outcome] += 1
        self.suppressed += int(other.suppressed)
        self.failed_deliveries += int(other.delivery_failed)
        for e in other.paused:
            if e not in self.paused_editions:
                self.paused_editions.append(e)


@dataclass(frozen=True)
class Handled:
    """The outcome of one inbound message."""

    outcome: str
    reason: str
    delivery_id: int | None = None
    suppressed: bool = False
    delivery_failed: bool = False
    paused: tuple[int, ...] = ()


@dataclass(frozen=True)
class Inbound:
    """One message read at the inbox: its duplicate key and what it means (no database yet)."""

    key: str
    verdict: inbound.InboundVerdict
    raw: bytes
    envelope_rcpt: str | None = None


class Duplicate(Exception):
    """Another copy of this message was dealt with already: undo this one's transaction."""


def bounce_domain(cfg: Config) -> str:
    """The domain VERP return paths and unsub+ addresses use (delivery.py uses the same)."""
    return cfg.bounce.domain or cfg.sender.domain


def raw_detail(raw: bytes, policy: BouncePolicy) -> dict[str, Any]:
    """The raw message for an event: text if it is UTF-8 without NUL, else base64, cut at the limit."""
    cut = raw[: policy.raw_limit]
    detail: dict[str, Any] = {"raw_truncated": len(raw) > policy.raw_limit}
    try:
        text = cut.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        detail.update(raw=base64.b64encode(cut).decode("ascii"), raw_base64=True)
    else:
        detail["raw"] = text
    return detail


async def remember(s: AsyncSession, key: str, outcome: str, now: datetime) -> None:
    """Record one message as dealt with, or raise Duplicate if a copy already was."""
    if not await inbound_store.remember_many(s, [(key, outcome)], now):
        raise Duplicate
