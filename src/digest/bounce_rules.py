"""How a bounce counts: a failure's class and reason, soft-bounce scores, complaint rates.

STANDARDS items 23, 31 and 32. Pure: times come in as parameters. inbound.py reads the codes and
words out of DSNs and bounce texts; the delivery worker classifies SMTP replies with the same rules.
The codes and phrasings themselves are data in bounce_reasons.py.

Decisions, one line each:

- `explain` takes the most specific evidence first: the remote server's reply (the DSN's
  Diagnostic-Code, or the SMTP reply), then the reporting MTA's `Status:`, then the bounce's
  human-readable text, then a bare basic code. Within one text, words naming a reason that keeps
  the reader (mailbox full, rate limited, greylisted, blocked, spam, ...) win over any code, since
  servers misuse 5.1.x and 5.2.1 for those; then a specific enhanced code; then words proving a dead
  mailbox. A generic X.0.0 code, or a 5.x.x code outside item 31's lists (5.4.1, 5.5.0, ...), proves
  nothing and leaves the decision to the words.
- `explain` never returns DELAYED: delay is what `Action: delayed` says, not what a code says.
- A bare basic code: 4xx and 552 are SOFT, any other 5xx without words is UNKNOWN.
- `bounce_score`: HARD, SOFT and UNKNOWN events score (an UNKNOWN permanent failure as a soft one,
  so a mailbox that keeps failing for reasons nobody can read is suppressed in the end rather than
  mailed forever); days are UTC calendar days; a gap of `quiet` or more between bounces (or since
  the last one) resets the score; `suppress` is sticky over the events given (a hard bounce, or a
  score above `limit` at any point), so pass the events since the reader's last lifted suppression.
- `complaint_rate` with nothing delivered is 0.0 without complaints and 1.0 with some.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Literal

from digest.bounce_reasons import CODES, PHRASES, POLICY_SUBJECT

__all__ = [
    "SCORED",
    "SEVERITY",
    "BounceClass",
    "Classification",
    "basic_code",
    "bounce_score",
    "classify",
    "complaint_action",
    "complaint_rate",
    "enhanced_code",
    "enhanced_status",
    "explain",
]


class BounceClass(StrEnum):
    """How one failed recipient counts against its reader."""

    HARD = "hard"  # the mailbox does not exist or is disabled: suppress at once
    SOFT = "soft"  # transient (4.x.x, mailbox full, rate limits, ...): scored, suppressed if it persists
    POLICY = "policy"  # the receiver refused us (5.7.x, blocklists, spam, size): alert, never suppress
    DELAYED = "delayed"  # `Action: delayed` warning: still being retried, not a bounce
    UNKNOWN = "unknown"  # a permanent failure nothing explains: scored like a soft bounce


# Most severe first: the class a delivery is recorded with when a report names several recipients.
SEVERITY = (BounceClass.HARD, BounceClass.SOFT, BounceClass.POLICY, BounceClass.UNKNOWN, BounceClass.DELAYED)
_ENHANCED = re.compile(r"(?<!\d)(?<!\d\.)([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_BASIC = re.compile(r"^\s*(?:[A-Za-z][\w-]*\s*;\s*)?([2-5]\d\d)(?=[\s:-]|$)")


@dataclass(frozen=True)
class Classification:
    """A failure's class, the reason it names and where that was read: what operators are shown."""

    klass: BounceClass
    reason: str
    evidence: str

    def __str__(self) -> str:
        return f"{self.klass}: {self.reason} ({self.evidence})"


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


def _by_code(code: tuple[int, int, int], where: str) -> Classification | None:
    """What an enhanced code alone proves (item 31); None for a code that proves nothing."""
    klass, subject, detail = code
    shown = f"{klass}.{subject}.{detail} {where}"
    if klass == 4:
        return Classification(BounceClass.SOFT, "temporary failure", shown)
    if klass != 5:
        return None
    if (subject, detail) in CODES:
        name, reason = CODES[(subject, detail)]
        return Classification(BounceClass(name), reason, shown)
    if subject == POLICY_SUBJECT:
        return Classification(BounceClass.POLICY, "security or policy refusal", shown)
    return None


def _from_words(text: str, where: str) -> Classification | None:
    """Steps of the module docstring over one text: reader-keeping words, a specific code, then
    words proving a dead mailbox."""
    words = " ".join(text.split())
    if not words:
        return None
    rule, said = next(((r, m.group(0)) for r in PHRASES if (m := r.search(words))), (None, ""))
    if rule is not None and rule.klass != "hard":
        return Classification(BounceClass(rule.klass), rule.reason, f'"{said}" {where}')
    for m in _ENHANCED.finditer(words):
        code = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        found = _by_code(code, where) if code[1:] != (0, 0) else None
        if found is not None:
            return found
    if rule is not None:
        return Classification(BounceClass.HARD, rule.reason, f'"{said}" {where}')
    return None


def explain(
    status: str | None, diagnostic: str = "", smtp_code: int | None = None, *, text: str = ""
) -> Classification:
    """STANDARDS item 31, most specific evidence first (see the module docstring).

    `diagnostic` is the remote server's reply (a DSN's Diagnostic-Code, an SMTP reply); `status` a
    DSN Status field (a comment after the code counts as words); `text` the bounce's readable text,
    read only when neither says anything; `smtp_code` (else a basic code leading `diagnostic`)
    decides only when nothing else does.
    """
    status_words = (status or "").partition("(")[2] if enhanced_code(status) else (status or "")
    found = _from_words(f"{diagnostic} {status_words}", "in the reply")
    code = enhanced_code(status)
    if found is None and code is not None and code[1:] != (0, 0):
        found = _by_code(code, "in Status")
    found = found or _from_words(text, "in the bounce text")
    if found is not None:
        return found
    if code is not None and code[0] == 4:
        return Classification(BounceClass.SOFT, "temporary failure", f"{enhanced_status(status)} in Status")
    basic = smtp_code if smtp_code is not None else basic_code(diagnostic)
    if basic is not None and (400 <= basic < 500 or basic == 552):
        return Classification(BounceClass.SOFT, "temporary failure", f"basic code {basic}")
    return Classification(BounceClass.UNKNOWN, "no code or words say why", "permanent failure")


def classify(status: str | None, smtp_code: int | None = None, diagnostic: str = "") -> BounceClass:
    """The class alone of `explain`: what the delivery worker needs for an SMTP reply."""
    return explain(status, diagnostic, smtp_code).klass


# The classes the Mailman score counts (an UNKNOWN permanent failure as a soft one).
SCORED = (BounceClass.HARD, BounceClass.SOFT, BounceClass.UNKNOWN)


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

    HARD, SOFT and UNKNOWN events count; a hard bounce suppresses at once. A soft or unknown
    bounce adds `soft` at most once per UTC calendar day. A gap of `quiet` or more with no bounce
    resets the score.
    Suppression is reached when the score exceeds `limit` and stays reached over the events given.
    Events after `now` are ignored; naive times are taken as UTC.
    """
    now = _utc(now)
    scored = sorted(
        ((_utc(when), klass) for when, klass in events if klass in SCORED),
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
