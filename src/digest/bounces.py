"""The bounce inbox at pipeline level: turn what arrives there into deliveries, events and suppressions.

DESIGN "The flow" step 5; STANDARDS section D and items 18 and 23. `inbound.analyse` (pure) says
what a message means; this module applies that verdict to the database. Messages arrive through
the embedded SMTP listener (`start_inbox`, part of `digest run` and `digest inbound`) or from a
mailbox the operator points at (`process_path`, `digest bounces process`).

Decisions, one line each:

- A bounce (`Action: failed`) turns a `sent` or `unknown` delivery into `failed` with the DSN's
  code and diagnostic; the reader's watermark is NOT rolled back: the digest went out, and the
  next one carries on from it (an SMTP-time failure, by contrast, rolls back: delivery.py).
- Every verdict about a known delivery becomes one event linked to it: `bounced` (hard, soft,
  unknown), `policy_rejection`, `delivery_delayed` or `complained`; its detail holds the class,
  status, diagnostic, Final-Recipient and the raw message.
- The raw message is kept in the event detail (JSON, decoded as UTF-8 with replacement, cut at
  64 KB with `raw_truncated`), not in files beside the config: the database is the one store every
  process and machine shares (several workers on PostgreSQL have no common folder), and it is
  backed up with the events it explains. `trim_raw_bounces` drops it after 30 days.
- Hard → the reader is suppressed (`bounced`) at once. Soft → Mailman scoring over the reader's
  `bounced` events (SMTP-time and DSN) since an operator last lifted a suppression; the score is
  stored in Subscriber.bounce_score. Only digests suppress or score, as at SMTP time: test sends
  have no reader, and a confirmation that bounces is simply never confirmed.
- Policy (5.7.x, ...) never suppresses: a WARNING names the delivery, edition and list, and the
  delivery breaker (delivery.py) is what pauses an edition when the relay itself is refused.
- Unknown-class bounces (bare 550, 5.0.0, ...) fail the delivery and are recorded, never scored.
- A delayed DSN is recorded on the delivery and changes nothing else; auto-replies change nothing.
- A complaint marks the reader `complained` (suppressed), unsubscribes the subscription it names
  (method `complaint`), and is linked to its delivery; a complaint that names only a subscription
  token is linked to that reader's latest digest that arrived (`attributed` in the detail).
- Complaint rate (STANDARDS item 23): per edition (complaints / its delivered messages) and per
  sending day (complaints about the digests sent that UTC day / digests delivered that day). At the
  warning threshold a WARNING is logged; at the pause threshold the edition (per edition) or every
  edition still sending (per day) is paused and an `ALERT` is logged at CRITICAL. Each also raises
  an operator alert (alerting.py), as does a policy rejection.
- A DSN for a delivery whose outcome the worker has not committed yet (`sending`) is `in_flight`:
  the listener waits up to 10 s, then answers 451 so the MTA retries; a mailbox run counts it and
  can simply be run again.
- A message already recorded (same Message-ID, else the same bytes) is counted `duplicate` and
  changes nothing, so a mailbox can be processed again safely; mailbox files are never modified.
- Forged, malformed or unknown VERP addresses change nothing: they are counted and logged.
- Mail to unsub+TOKEN@ goes to readers.handle_unsubscribe_mail: never answered (item 18).
- The listener runs on the app's own event loop (aiosmtpd's SMTP protocol under
  `loop.create_server`), so database work needs no thread hand-off; it accepts RCPT only for
  bounces+…@ and unsub+…@ on the bounce domain (550 5.1.1 otherwise) and answers 451 when the
  database fails, so the sending MTA retries.
- Thresholds come from `[bounce]` when the config has them (see BouncePolicy), else the defaults
  of STANDARDS items 23 and 32.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import hashlib
import logging
import mailbox
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from digest import bootstrap, bounce_rules, inbound, readers
from digest.alerting import Alert, raise_alert
from digest.config import Config
from digest.errors import UsageError
from digest.models import (
    INBOUND_EVENTS,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    EditionStatus,
    SubscriberStatus,
    SubscriptionStatus,
)
from digest.store import inbound as inbound_store
from digest.store import ledger
from digest.store import readers as readers_store
from digest.store import reports as reports_store

log = logging.getLogger("digest.bounces")

RAW_LIMIT = 64 * 1024
IN_FLIGHT_TRIES, IN_FLIGHT_WAIT = 40, 0.25  # wait up to 10 s for a worker to record "sent"
MAX_MESSAGE = 10 * 1024 * 1024  # the inbox refuses bigger messages (a DSN quotes at most one digest)
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
    "duplicate",
    "in_flight",
    "forged",
    "unknown_delivery",
    "ignored",
)
_BASIC_CODE = re.compile(r"^\s*(?:[A-Za-z][\w-]*\s*;\s*)?([245]\d\d)(?=[\s-]|$)")
_OURS_LOCAL = re.compile(r"^(?:bounces|unsub)\+[^@\s]+$", re.IGNORECASE)


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


# ---------------------------------------------------------------- one message


def bounce_domain(cfg: Config) -> str:
    """The domain VERP return paths and unsub+ addresses use (delivery.py uses the same)."""
    return cfg.bounce.domain or cfg.sender.domain


def _inbound_id(raw: bytes) -> str:
    """The bounce's own Message-ID, else a hash of its bytes: what `duplicate` compares."""
    try:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw[:65536])
        mid = " ".join(str(headers.get("Message-ID") or "").split())
    except Exception:  # a header we cannot read: fall back to the bytes
        mid = ""
    return f"mid:{mid[:300]}" if mid else "sha256:" + hashlib.sha256(raw).hexdigest()


def _raw_detail(raw: bytes, policy: BouncePolicy) -> dict[str, Any]:
    cut = raw[: policy.raw_limit]
    return {"raw": cut.decode("utf-8", "replace"), "raw_truncated": len(raw) > policy.raw_limit}


def _code_of(report: inbound.RecipientReport | None) -> int | None:
    if report is None:
        return None
    m = _BASIC_CODE.match(report.diagnostic)
    return int(m.group(1)) if m else None


def _main_report(verdict: inbound.InboundVerdict) -> inbound.RecipientReport | None:
    klass = verdict.bounce_class
    return next((r for r in verdict.recipients if r.bounce_class is klass), None)


def _recipients(verdict: inbound.InboundVerdict) -> list[dict[str, Any]]:
    return [
        {
            "final_recipient": r.final_recipient,
            "action": r.action,
            "status": r.status,
            "class": str(r.bounce_class),
        }
        for r in verdict.recipients[:20]
    ]


async def handle_message(
    app: bootstrap.App,
    raw: bytes,
    envelope_rcpt: str | None,
    now: datetime,
    *,
    envelope_sender: str | None = None,
    policy: BouncePolicy | None = None,
) -> Handled:
    """Analyse one message that reached the bounce inbox and apply what it means."""
    policy = policy or BouncePolicy.from_config(app.cfg)
    verdict = inbound.analyse(raw, envelope_rcpt, app.keys, envelope_sender=envelope_sender)
    if verdict.kind == "unsubscribe":
        result = await readers.handle_unsubscribe_mail(app, raw, envelope_rcpt, now)
        if result in ("unsubscribed", "already"):
            return Handled("unsubscribe", f"mailto unsubscribe: {result}")
        log.info("inbound: unsubscribe mail with an unknown token ignored")
        return Handled("ignored", f"mailto unsubscribe: {result}")
    if verdict.kind == "ignored":
        outcome = "forged" if verdict.reason.startswith("forged") else "ignored"
        level = logging.WARNING if outcome == "forged" else logging.INFO
        log.log(level, "inbound: message ignored: %s", verdict.reason)
        return Handled(outcome, verdict.reason, verdict.delivery_id)
    if verdict.kind == "auto_reply":
        log.info("inbound: auto-reply for delivery %s ignored: %s", verdict.delivery_id, verdict.reason)
        return Handled("auto_reply", verdict.reason, verdict.delivery_id)
    if verdict.kind == "complaint":
        return await _complaint(app, verdict, raw, now, policy)
    return await _bounce(app, verdict, raw, now, policy)


async def _bounce(
    app: bootstrap.App, verdict: inbound.InboundVerdict, raw: bytes, now: datetime, policy: BouncePolicy
) -> Handled:
    assert verdict.delivery_id is not None  # analyse only says bounce/delayed with a checked VERP id
    inbound_id = _inbound_id(raw)
    klass = verdict.bounce_class or bounce_rules.BounceClass.UNKNOWN
    main = _main_report(verdict)
    async with app.db.write() as s:
        found = await ledger.load_claimed(s, [verdict.delivery_id])
        if not found:
            log.warning("inbound: bounce for delivery %s, which does not exist", verdict.delivery_id)
            return Handled("unknown_delivery", "no such delivery", verdict.delivery_id)
        c = found[0]
        d, reader = c.delivery, c.subscriber
        if d.status == DeliveryStatus.SENDING:
            # A fast relay can bounce before the worker has committed "sent": come back later.
            return Handled("in_flight", "the delivery's outcome is not recorded yet", d.id)
        if await inbound_store.inbound_seen(s, inbound_id, reader.id if reader else None, d.id):
            return Handled("duplicate", "already recorded", d.id)
        detail: dict[str, Any] = {
            "at": "dsn",
            "bounce_class": str(klass),
            "status": main.status if main else None,
            "code": _code_of(main),
            "diagnostic": (main.diagnostic if main else "")[:1000],
            "final_recipient": main.final_recipient if main else None,
            "recipients": _recipients(verdict),
            "reason": verdict.reason[:500],
            "edition_id": d.edition_id,
            "inbound_id": inbound_id,
            **_raw_detail(raw, policy),
        }
        ids = {"subscriber_id": reader.id if reader else None, "subscription_id": d.subscription_id}
        if verdict.kind == "delayed":
            await readers_store.add_event(s, "delivery_delayed", now, delivery_id=d.id, **ids, **detail)
            log.info("inbound: delivery %s delayed: %s", d.id, verdict.reason)
            return Handled("delayed", verdict.reason, d.id)

        reply = f"DSN {detail['status'] or 'no code'}: {detail['diagnostic']}".strip()
        failed = await inbound_store.mark_delivery_bounced(s, d.id, detail["code"], reply, now)
        scored = (
            reader is not None
            and d.kind == DeliveryKind.DIGEST
            and klass in (bounce_rules.BounceClass.HARD, bounce_rules.BounceClass.SOFT)
        )
        history = await inbound_store.bounce_history(s, reader.id) if scored and reader is not None else []
        kind = "policy_rejection" if klass is bounce_rules.BounceClass.POLICY else "bounced"
        await readers_store.add_event(s, kind, now, delivery_id=d.id, **ids, **detail)
        if klass is bounce_rules.BounceClass.POLICY:
            what = (
                f"policy rejection reported for delivery {d.id} (edition {d.edition_id}, "
                f"list {c.mailing_list.slug if c.mailing_list else '-'}): "
                f"{detail['diagnostic'] or verdict.reason}; "
                "the reader stays subscribed; check authentication and reputation"
            )
            log.warning("%s", what)
            raise_alert(Alert("relay_policy", "a receiver reports a policy rejection", what, now))
        suppressed = False
        if scored and reader is not None:
            suppressed = await _score(s, reader.id, reader.status, history, klass, detail, now, policy)
        log.info("inbound: delivery %s bounced (%s): %s", d.id, klass, verdict.reason)
        return Handled(str(klass), verdict.reason, d.id, suppressed, failed)


async def _score(
    s: AsyncSession,
    subscriber_id: int,
    status: str,
    before: list[tuple[datetime, str]],
    klass: bounce_rules.BounceClass,
    detail: dict[str, Any],
    now: datetime,
    policy: BouncePolicy,
) -> bool:
    """Mailman scoring over the reader's earlier bounces and this one; True if this suppressed them."""
    events: list[tuple[datetime, bounce_rules.BounceClass]] = [(now, klass)]
    for when, name in before:
        with contextlib.suppress(ValueError):
            events.append((when, bounce_rules.BounceClass(name)))
    score, suppress = bounce_rules.bounce_score(
        events, now, hard=policy.hard, soft=policy.soft, limit=policy.limit, quiet=policy.quiet
    )
    await inbound_store.set_bounce_score(s, subscriber_id, score, now)
    if not suppress or status != SubscriberStatus.ACTIVE:
        return False
    why = (
        f"hard bounce ({detail['status'] or 'DSN'}): {detail['diagnostic']}"
        if klass is bounce_rules.BounceClass.HARD
        else f"soft-bounce score {score:g} over {policy.limit:g}: {detail['diagnostic']}"
    )
    await ledger.suppress_subscriber(s, subscriber_id, SubscriberStatus.BOUNCED, now, why)
    log.info("reader %s suppressed: %s", subscriber_id, why)
    return True


async def _complaint(
    app: bootstrap.App, verdict: inbound.InboundVerdict, raw: bytes, now: datetime, policy: BouncePolicy
) -> Handled:
    inbound_id = _inbound_id(raw)
    async with app.db.write() as s:
        d: Delivery | None = None
        sub = None
        if verdict.delivery_id is not None:
            found = await ledger.load_claimed(s, [verdict.delivery_id])
            if found:
                d, sub = found[0].delivery, found[0].subscription
        if sub is None and verdict.token:
            sub = await readers_store.subscription_by_token(s, verdict.token)
            if sub is None:
                sub = await readers_store.subscription_by_token_casefold(s, verdict.token)
        if sub is None:
            log.warning("inbound: complaint about a message we cannot find: %s", verdict.reason)
            return Handled("unknown_delivery", "names no known delivery or reader", verdict.delivery_id)
        attributed = False
        if d is None:
            d = await inbound_store.last_sent_delivery(s, sub.id)
            attributed = d is not None
        reader = await readers_store.subscriber_by_id(s, sub.subscriber_id)
        if reader is None:
            return Handled("unknown_delivery", "the reader was erased", verdict.delivery_id)
        if await inbound_store.inbound_seen(s, inbound_id, reader.id, None):
            return Handled("duplicate", "already recorded", d.id if d else None)
        await readers_store.add_event(
            s,
            "complained",
            now,
            subscriber_id=reader.id,
            subscription_id=sub.id,
            delivery_id=d.id if d else None,
            reason=verdict.reason[:500],
            attributed=attributed,
            edition_id=d.edition_id if d else None,
            inbound_id=inbound_id,
            **_raw_detail(raw, policy),
        )
        suppressed = False
        if reader.status not in (SubscriberStatus.COMPLAINED, SubscriberStatus.SUPPRESSED):
            await ledger.suppress_subscriber(
                s, reader.id, SubscriberStatus.COMPLAINED, now, f"spam complaint: {verdict.reason}"
            )
            suppressed = True
        if sub.status != SubscriptionStatus.UNSUBSCRIBED:
            await readers.unsubscribe(s, sub, "complaint", now)
        paused = await _complaint_rates(s, d, now, policy)
    log.warning("inbound: spam complaint from reader %s (delivery %s)", reader.id, d.id if d else "-")
    return Handled("complaint", verdict.reason, d.id if d else None, suppressed, False, tuple(paused))


async def _complaint_rates(
    s: AsyncSession, d: Delivery | None, now: datetime, policy: BouncePolicy
) -> list[int]:
    """STANDARDS item 23: warn, or pause and alert, on the edition's and the sending day's rate."""
    paused: list[int] = []
    if d is not None and d.edition_id is not None:
        complaints, delivered = await inbound_store.edition_complaint_counts(s, d.edition_id)
        rate = bounce_rules.complaint_rate(complaints, delivered)
        action = bounce_rules.complaint_action(rate, policy.complaint_warn, policy.complaint_pause)
        what = f"edition {d.edition_id}: {complaints} complaint(s) / {delivered} delivered = {rate:.3%}"
        if action == "pause":
            edition = await reports_store.edition_by_id(s, d.edition_id)
            if edition is not None and edition.status == EditionStatus.SENDING:
                reason = f"complaint rate {rate:.3%} reached {policy.complaint_pause:.3%}"
                await ledger.pause_edition(s, d.edition_id, reason, now)
                paused.append(d.edition_id)
                _complaint_alert("complaint rate too high, edition paused", what, now)
            else:
                _complaint_alert("complaint rate too high (edition no longer sending)", what, now)
        elif action == "warn":
            _complaint_warning(f"complaint rate above {policy.complaint_warn * 100:.3f}%: {what}", now)
    day = (d.sent_at if d is not None and d.sent_at is not None else now).astimezone(UTC)
    start = day.replace(hour=0, minute=0, second=0, microsecond=0)
    complaints, delivered = await inbound_store.sent_day_complaint_counts(s, start, start + timedelta(days=1))
    if complaints:
        rate = bounce_rules.complaint_rate(complaints, delivered)
        action = bounce_rules.complaint_action(rate, policy.complaint_warn, policy.complaint_pause)
        what = f"sent {start:%Y-%m-%d}: {complaints} complaint(s) / {delivered} delivered = {rate:.3%}"
        if action == "pause":
            editions = await inbound_store.sending_editions(s)
            for edition_id in editions:
                await ledger.pause_edition(s, edition_id, f"daily complaint rate {rate:.3%}", now)
                if edition_id not in paused:
                    paused.append(edition_id)
            done = f"paused editions {', '.join(map(str, editions))}" if editions else "no edition is sending"
            _complaint_alert(f"daily complaint rate too high ({done})", what, now)
        elif action == "warn":
            _complaint_warning(f"daily complaint rate above {policy.complaint_warn * 100:.3f}%: {what}", now)
    return paused


def _complaint_alert(title: str, what: str, now: datetime) -> None:
    log.critical("ALERT: %s: %s", title, what)
    raise_alert(Alert("complaint_rate", title, f"{title}: {what}", now))


def _complaint_warning(message: str, now: datetime) -> None:
    log.warning("%s", message)
    raise_alert(Alert("complaint_warning", "complaint rate above the warning threshold", message, now))


# ---------------------------------------------------------------- mailboxes


def _messages_in(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every message in a Maildir, an mbox file, a .eml file or a folder of them."""
    if path.is_dir():
        if (path / "cur").is_dir() or (path / "new").is_dir():
            yield from _maildir(path)
            return
        for item in sorted(path.glob("*.eml")):
            if item.is_file():
                yield item.name, item.read_bytes()
        return
    with path.open("rb") as handle:
        head = handle.read(5)
    if head == b"From ":
        box = mailbox.mbox(str(path), factory=None, create=False)
        try:
            for n, key in enumerate(box.keys(), 1):
                yield f"{path.name}#{n}", box.get_bytes(key)
        finally:
            box.close()
        return
    yield path.name, path.read_bytes()


def _maildir(path: Path) -> Iterator[tuple[str, bytes]]:
    """A Maildir's messages by key: new/ and cur/, never tmp/ (mail still being written). Reading
    with get_bytes moves nothing to cur/ and sets no flag, so the MTA's view is left as it was."""
    missing = [sub for sub in ("new", "cur") if not (path / sub).is_dir()]
    if missing:  # mailbox.Maildir lists both
        raise UsageError(f"{path}: not a complete Maildir, {' and '.join(missing)}/ is missing")
    box = mailbox.Maildir(str(path), factory=None, create=False)
    for key in sorted(box.keys()):
        if not key.startswith("."):  # dot files are not mail, by Maildir convention
            yield key, box.get_bytes(key)


async def process_path(
    app: bootstrap.App, path: Path | str, now: datetime, *, policy: BouncePolicy | None = None
) -> ProcessReport:
    """Process every message of a Maildir (cur/ and new/), an mbox file, an .eml file or a folder
    of .eml files. The VERP address comes from Delivered-To, X-Original-To or To (no envelope)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    policy = policy or BouncePolicy.from_config(app.cfg)
    report = ProcessReport()
    for name, raw in _messages_in(path):
        if not raw.strip():
            report.unreadable.append(name)
            continue
        handled = await handle_message(app, raw, None, now, policy=policy)
        report.add(handled)
        log.debug("%s: %s (%s)", name, handled.outcome, handled.reason)
    return report


async def trim_raw_bounces(app: bootstrap.App, now: datetime, *, keep: timedelta | None = None) -> int:
    """Drop the raw message from inbound events older than the retention (30 days by default)."""
    keep = keep if keep is not None else BouncePolicy.from_config(app.cfg).raw_retention
    async with app.db.write() as s:
        trimmed = await inbound_store.trim_event_raw(s, INBOUND_EVENTS, now - keep)
    if trimmed:
        log.info("trimmed the raw message from %d bounce event(s) older than %s", trimmed, keep)
    return trimmed


# ---------------------------------------------------------------- operators


async def unsuppress(app: bootstrap.App, email: str, reason: str, now: datetime) -> str:
    """Lift a reader's suppression with the operator's reason; returns the status they had."""
    reason = " ".join(reason.split())
    if not reason:
        raise UsageError("say why with --reason: it is recorded with the reader")
    _, key = readers.normalize_address(email)
    async with app.db.write() as s:
        reader = await readers_store.subscriber_by_email(s, key)
        if reader is None:
            raise UsageError(f"no reader {email}")
        before = reader.status
        if before == SubscriberStatus.ACTIVE:
            raise UsageError(f"{email} is not suppressed (status active)")
        await inbound_store.lift_suppression(s, reader.id, now)
        await readers_store.add_event(
            s, "unsuppressed", now, subscriber_id=reader.id, previous=before, reason=reason[:500]
        )
    log.info("reader %s unsuppressed (was %s): %s", reader.id, before, reason)
    return before


@dataclass(frozen=True)
class BounceReport:
    """Inbound events since a time, by class and by recipient domain."""

    since: datetime
    by_class: dict[str, int]
    by_domain: dict[str, dict[str, int]]

    @property
    def total(self) -> int:
        return sum(self.by_class.values())


def _class_of(kind: str, detail: dict[str, Any]) -> str:
    if kind == "complained":
        return "complaint"
    if kind == "policy_rejection":
        return "policy"
    if kind == "delivery_delayed":
        return "delayed"
    return str(detail.get("bounce_class") or "unknown")


async def report(app: bootstrap.App, since: datetime) -> BounceReport:
    """Counts of bounces (DSN and SMTP time), delays and complaints since a time."""
    async with app.db.read() as s:
        rows = await inbound_store.inbound_events_since(s, INBOUND_EVENTS, since)
    by_class: Counter[str] = Counter()
    by_domain: dict[str, Counter[str]] = {}
    for kind, detail, address, reader in rows:
        klass = _class_of(kind, detail)
        domain = (address or reader or "?").rpartition("@")[2].lower() or "?"
        by_class[klass] += 1
        by_domain.setdefault(domain, Counter())[klass] += 1
    return BounceReport(
        since,
        dict(by_class.most_common()),
        {d: dict(c) for d, c in sorted(by_domain.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))},
    )


# ---------------------------------------------------------------- the listener


def parse_listen(value: str) -> tuple[str, int]:
    """`[bounce] listen` as (host, port): `127.0.0.1:2525`, `[::1]:2525` or `:2525` (all interfaces)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"[bounce] listen {value!r} is not host:port, e.g. 127.0.0.1:2525")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 (the operator asked for every interface)


class InboxHandler:
    """aiosmtpd handler: accepts only our bounce and unsubscribe addresses, processes each message."""

    def __init__(self, app: bootstrap.App, clock: Callable[[], datetime]) -> None:
        self.app = app
        self.clock = clock
        self.domain = bounce_domain(app.cfg).lower()
        self.report = ProcessReport()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        local, _, domain = address.strip().strip("<>").rpartition("@")
        if domain.lower() != self.domain or not _OURS_LOCAL.match(local):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content or envelope.content or b""
        try:
            for rcpt in envelope.rcpt_tos:
                for _ in range(IN_FLIGHT_TRIES):
                    handled = await handle_message(
                        self.app, raw, rcpt, self.clock(), envelope_sender=envelope.mail_from or "<>"
                    )
                    if handled.outcome != "in_flight":
                        break
                    await asyncio.sleep(IN_FLIGHT_WAIT)
                self.report.add(handled)
                if handled.outcome == "in_flight":
                    return "451 4.3.0 Delivery outcome not recorded yet, please try again later"
        except Exception:  # the database is down: the sending MTA keeps the message and retries
            log.exception("inbound: could not record a message; asked the sender to retry")
            return "451 4.3.0 Temporary failure, please try again later"
        return "250 2.0.0 OK"


class Inbox:
    """The running bounce inbox; `await inbox.stop()` closes it."""

    def __init__(self, server: asyncio.Server, handler: InboxHandler, host: str, port: int):
        self.server = server
        self.handler = handler
        self.host = host
        self.port = port

    @property
    def report(self) -> ProcessReport:
        return self.handler.report

    async def stop(self) -> None:
        self.server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), timeout=5)


async def start_inbox(
    app: bootstrap.App, host: str, port: int, *, clock: Callable[[], datetime] = bootstrap.utcnow
) -> Inbox:
    """Listen for bounces, complaints and mailto unsubscribes on the running event loop."""
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    handler = InboxHandler(app, clock)
    hostname = bounce_domain(app.cfg)

    def factory() -> SMTP:
        return SMTP(handler, hostname=hostname, decode_data=False, data_size_limit=MAX_MESSAGE, loop=loop)

    server = await loop.create_server(factory, host=host, port=port)
    bound = server.sockets[0].getsockname()[1] if server.sockets else port
    log.info("bounce inbox on %s:%d for bounces+…@%s and unsub+…@%s", host, bound, hostname, hostname)
    return Inbox(server, handler, host, int(bound))
