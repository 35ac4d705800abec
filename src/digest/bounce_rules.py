"""How a bounce counts: a failure's class from its status codes, soft-bounce scores, complaint rates.

STANDARDS items 23, 31 and 32. Pure: times come in as parameters. inbound.py reads the codes out of
DSNs and bounce texts; the delivery worker classifies SMTP replies with the same rules.

Decisions, one line each:

- `classify` never returns DELAYED: delay is what `Action: delayed` says, not what a code says.
- A generic enhanced code (X.0.0, as Exim and Postfix write when the remote gave none) is refined by
  a more specific code of the same class in the diagnostic text.
- A bare basic code proves neither a dead mailbox nor a policy block: 4xx and 552 are SOFT, every
  other bare 5xx (550, 551, 553, 554, ...) is UNKNOWN: recorded, never suppressed, never scored.
- Other 5.x.x codes outside item 31's lists (5.0.0, 5.4.x, 5.5.x, ...) are UNKNOWN for the same reason.
- `bounce_score`: only HARD and SOFT events score; days are UTC calendar days; a gap of `quiet` or
  more between bounces (or since the last one) resets the score; `suppress` is sticky over the
  events given (a hard bounce, or a score above `limit` at any point), so pass the events since
  the reader's last lifted suppression.
- `complaint_rate` with nothing delivered is 0.0 without complaints and 1.0 with some.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Literal

__all__ = [
    "SEVERITY",
    "BounceClass",
    "basic_code",
    "bounce_score",
    "classify",
    "complaint_action",
    "complaint_rate",
    "enhanced_code",
    "enhanced_status",
]


class BounceClass(StrEnum):
    """How one failed recipient counts against its reader."""

    HARD = "hard"  # the mailbox does not exist or is disabled: suppress at once
    SOFT = "soft"  # transient (4.x.x, mailbox full, bare 552): scored, suppressed only when it persists
    POLICY = "policy"  # the receiver refused us (5.7.x, 5.2.3, 5.3.4, 5.1.7/5.1.8): alert, never suppress
    DELAYED = "delayed"  # `Action: delayed` warning: still being retried, not a bounce
    UNKNOWN = "unknown"  # no code proves anything (bare 550, 5.0.0, ...): recorded only


# Most severe first: the class a delivery is recorded with when a report names several recipients.
SEVERITY = (BounceClass.HARD, BounceClass.SOFT, BounceClass.POLICY, BounceClass.UNKNOWN, BounceClass.DELAYED)
_HARD = {(1, 1), (1, 2), (1, 3), (1, 6), (1, 10), (2, 1)}
_POLICY = {(1, 7), (1, 8), (2, 3), (3, 4)}  # plus every 5.7.x
_ENHANCED = re.compile(r"(?<!\d)(?<!\d\.)([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_BASIC = re.compile(r"^\s*(?:[A-Za-z][\w-]*\s*;\s*)?([2-5]\d\d)(?=[\s-]|$)")


def enhanced_code(text: str | None) -> tuple[int, int, int] | None:
    """The first enhanced status code in the text as numbers, (5, 7, 1) for `5.7.1`; None if none."""
    m = _ENHANCED.search(text or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def enhanced_status(text: str | None) -> str | None:
    """The first enhanced status code in a DSN field or an SMTP reply, as `5.7.1`; None if none.

    The one reading of these codes: the delivery worker classifies SMTP replies with it too.
    """
    code = enhanced_code(text)
    return ".".join(map(str, code)) if code else None


def basic_code(text: str) -> int | None:
    """The basic SMTP code the text starts with (after a `smtp;` type, if any); None if none."""
    m = _BASIC.match(text)
    return int(m.group(1)) if m else None


def classify(status: str | None, smtp_code: int | None = None, diagnostic: str = "") -> BounceClass:
    """STANDARDS item 31: the class of one failure, by enhanced status code first.

    `status` is a DSN Status field (comments allowed); without one, the first enhanced code in
    `diagnostic` is used. `smtp_code` (else a basic code leading `diagnostic`) decides only when no
    enhanced code is found at all.
    """
    code = enhanced_code(status)
    in_text = enhanced_code(diagnostic)
    if code is None or (code[1:] == (0, 0) and in_text is not None and in_text[0] == code[0]):
        code = in_text or code
    if code is not None:
        klass, subject, detail = code
        if klass == 4:
            return BounceClass.SOFT
        if klass != 5:
            return BounceClass.UNKNOWN
        if (subject, detail) in _HARD:
            return BounceClass.HARD
        if (subject, detail) == (2, 2):
            return BounceClass.SOFT
        if subject == 7 or (subject, detail) in _POLICY:
            return BounceClass.POLICY
        return BounceClass.UNKNOWN
    basic = smtp_code if smtp_code is not None else basic_code(diagnostic)
    if basic is not None and (400 <= basic < 500 or basic == 552):
        return BounceClass.SOFT
    return BounceClass.UNKNOWN


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def bounce_score(
    events: Sequence[tuple[datetime, BounceClass]],
    now: datetime,
    *,
    hard: float = 1.0,
    soft: float = 0.5,
    limit: float = 5.0,
    quiet: timedelta = timedelta(days=7),
) -> tuple[float, bool]:
    """STANDARDS item 32, the Mailman way: (score now, suppress?).

    Only HARD and SOFT events count; a hard bounce suppresses at once. A soft bounce adds `soft`
    at most once per UTC calendar day. A gap of `quiet` or more with no bounce resets the score.
    Suppression is reached when the score exceeds `limit` and stays reached over the events given.
    Events after `now` are ignored; naive times are taken as UTC.
    """
    now = _utc(now)
    scored = sorted(
        ((_utc(when), klass) for when, klass in events if klass in (BounceClass.HARD, BounceClass.SOFT)),
        key=lambda event: event[0],
    )
    score, suppress = 0.0, False
    last: datetime | None = None
    counted: date | None = None
    for when, klass in scored:
        if when > now:
            break
        if last is not None and when - last >= quiet:
            score, counted = 0.0, None
        last = when
        if klass is BounceClass.HARD:
            score += hard
            suppress = True
        elif when.date() != counted:
            score += soft
            counted = when.date()
        suppress = suppress or score > limit
    if last is not None and now - last >= quiet:
        score = 0.0
    return score, suppress


def complaint_rate(complaints: int, delivered: int) -> float:
    """Complaints per delivered message (STANDARDS item 23); nothing delivered but complaints is 1.0."""
    if complaints < 0 or delivered < 0:
        raise ValueError(f"counts must not be negative: complaints={complaints}, delivered={delivered}")
    if delivered == 0:
        return 1.0 if complaints else 0.0
    return complaints / delivered


def complaint_action(
    rate: float, warn: float = 0.001, pause: float = 0.003
) -> Literal["ok", "warn", "pause"]:
    """STANDARDS item 23: warn at 0.1% (SHOULD stay below), pause sending on reaching 0.3% (MUST never)."""
    if not 0 <= warn <= pause:
        raise ValueError(f"thresholds must satisfy 0 <= warn <= pause, got warn={warn}, pause={pause}")
    if rate >= pause:
        return "pause"
    if rate >= warn:
        return "warn"
    return "ok"
