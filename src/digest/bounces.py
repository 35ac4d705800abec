"""The bounce inbox at pipeline level: turn what arrives there into deliveries, events and suppressions.

DESIGN "The flow" step 5; STANDARDS section D and items 18 and 23. `inbound.analyse` (pure) says
what a message means; this module applies that verdict to the database. Messages arrive through
the embedded SMTP listener (bounce_listener.py, part of `digest run` and `digest inbound`) or
from a mailbox the operator points at (bounce_mailboxes.py, `digest bounces process`); the
operator's report and lifting a suppression are bounce_admin.py's.

Decisions, one line each:

- A bounce (`Action: failed`) turns a `sent` or `unknown` delivery into `failed` with the DSN's
  code and diagnostic; the reader's watermark is NOT rolled back: the digest went out, and the
  next one carries on from it (an SMTP-time failure, by contrast, rolls back: delivery.py).
- Every verdict about a known delivery becomes one event linked to it: `bounced` (hard, soft,
  unknown), `policy_rejection`, `delivery_delayed`, `complained` or `bounce_unparsed`; its detail
  holds the class, the reason and where it was read (`why`), status, diagnostic, the recipient the
  report is about and the raw message.
- The recipient a delivery is judged by is the report's recipient that is the delivery's own
  address (Original- or Final-Recipient), else the most severe one.
- The raw message is kept in the event detail (cut at 64 KB with `raw_truncated`): as text when
  it is UTF-8 without NUL, else base64 (`raw_base64`), so the bytes survive exactly and no database
  refuses them. It is kept in the database, not in files beside the config: the database is the one
  store every process and machine shares (several workers on PostgreSQL have no common folder),
  and it is backed up with the events it explains. `trim_raw_bounces` drops it after 30 days.
- Hard → the reader is suppressed (`bounced`) at once. Soft → Mailman scoring over the reader's
  `bounced` events (SMTP-time and DSN) since an operator last lifted a suppression; the score is
  stored in Subscriber.bounce_score. Only digests suppress or score, as at SMTP time: test sends
  have no reader, and a confirmation that bounces is simply never confirmed.
- Policy (5.7.x, ...) never suppresses: a WARNING names the delivery, edition and list, and the
  delivery breaker (delivery.py) is what pauses an edition when the relay itself is refused.
- Unknown-class bounces (a permanent failure nothing explains) fail the delivery and score like a
  soft bounce, so a mailbox that keeps failing is suppressed in the end.
- An `unparsed` message (automatic mail nobody could read, or one whose recording failed) leaves a
  `bounce_unparsed` event on its reader when its VERP address names one, and changes nothing else.
- A delayed DSN is recorded on the delivery and changes nothing else; auto-replies change nothing.
- Complaints and their rates (STANDARDS item 23) are complaints.py's; a policy rejection raises
  an operator alert (alerting.py).
- A DSN for a delivery whose outcome the worker has not committed yet (`sending`) is `in_flight`:
  the listener waits up to 10 s, then answers 451 so the MTA retries; a mailbox run counts it and
  leaves the message for its next run.
- Every message dealt with is remembered (inbound_messages: its Message-ID, else its bytes, and the
  address it came to) in the transaction that applies it; a second copy is `duplicate` and changes
  nothing, even when two arrive at once, so a mailbox can be processed again safely.
- Nothing a message contains stops the inbox: analysis never raises, and a message whose recording
  fails for any reason but an unavailable database is recorded as `unparsed` with that reason (an
  unavailable database raises, so the listener answers 451 and a mailbox run reports an error).
- Forged, malformed or unknown VERP addresses change nothing: they are counted and logged.
- Mail to unsub+TOKEN@ goes to readers.handle_unsubscribe_mail: never answered (item 18).
- Thresholds come from `[bounce]` when the config has them (see BouncePolicy), else the defaults
  of STANDARDS items 23 and 32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession

from digest import bootstrap, bounce_rules, complaints, inbound, readers
from digest.alerting import Alert, raise_alert
from digest.bounce_outcomes import BouncePolicy, Duplicate, Handled, Inbound, raw_detail, remember
from digest.bounce_rules import BounceClass
from digest.models import (
    INBOUND_EVENTS,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    SubscriberStatus,
)
from digest.store import inbound as inbound_store
from digest.store import ledger
from digest.store import readers as readers_store

log = logging.getLogger("digest.bounces")

# The database itself is unavailable (or locked): retrying later may work, so these are not the
# message's fault and must not record it as unparsed.
_UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, OSError, TimeoutError)


# What _bounces applies in groups; complaints and unparsed mail are rare and go one at a time.
_GROUPED = ("bounce", "delayed", "auto_reply", "ignored")


def _code_of(report: inbound.RecipientReport | None) -> int | None:
    code = bounce_rules.basic_code(report.diagnostic) if report is not None else None
    return code if code is not None and code >= 400 else None


def _main_report(verdict: inbound.InboundVerdict, address: str) -> inbound.RecipientReport | None:
    """The recipient the delivery is judged by: its own address if named, else the most severe."""
    own = [r for r in verdict.recipients if address.lower() in {(r.recipient or "").lower(),
           (r.final_recipient or "").lower()}]  # fmt: skip
    if own:
        return min(own, key=lambda r: bounce_rules.SEVERITY.index(r.bounce_class))
    klass = verdict.bounce_class
    return next((r for r in verdict.recipients if r.bounce_class is klass), None)


def _recipients(verdict: inbound.InboundVerdict) -> list[dict[str, Any]]:
    return [
        {"recipient": r.recipient, "action": r.action, "status": r.status, "class": str(r.bounce_class)}
        for r in verdict.recipients[:20]
    ]


def read_message(
    app: bootstrap.App,
    raw: bytes,
    envelope_rcpt: str | None,
    *,
    envelope_sender: str | None = None,
    key: str | None = None,
) -> Inbound:
    """Analyse one message (pure: never raises, touches no database); `key` if already known."""
    verdict = inbound.analyse(raw, envelope_rcpt, app.keys, envelope_sender=envelope_sender)
    return Inbound(key or inbound.inbound_key(raw, envelope_rcpt), verdict, raw, envelope_rcpt)


async def handle_message(
    app: bootstrap.App,
    raw: bytes,
    envelope_rcpt: str | None,
    now: datetime,
    *,
    envelope_sender: str | None = None,
    policy: BouncePolicy | None = None,
) -> Handled:
    """Analyse one message that reached the bounce inbox and apply what it means (never raises for
    anything the message contains; raises only when the database is unavailable)."""
    message = read_message(app, raw, envelope_rcpt, envelope_sender=envelope_sender)
    if message.verdict.kind == "unsubscribe":
        return await handle_unsubscribe(app, message, now)
    (handled,) = await apply_messages(app, [message], now, policy=policy)
    return handled


async def handle_unsubscribe(app: bootstrap.App, message: Inbound, now: datetime) -> Handled:
    """A mailto unsubscribe: readers.py's own transaction (it never replies)."""
    result = await readers.handle_unsubscribe_mail(app, message.raw, message.envelope_rcpt, now)
    async with app.db.write() as s:
        await inbound_store.remember_many(s, [(message.key, "unsubscribe")], now)
    if result in ("unsubscribed", "already"):
        return Handled("unsubscribe", f"mailto unsubscribe: {result}")
    log.info("inbound: unsubscribe mail with an unknown token ignored")
    return Handled("ignored", f"mailto unsubscribe: {result}")


async def apply_messages(
    app: bootstrap.App, messages: list[Inbound], now: datetime, *, policy: BouncePolicy | None = None
) -> list[Handled]:
    """Apply analysed messages (no unsubscribes) in one transaction, each in a savepoint of its own:
    a mailbox run commits once per few hundred messages, and one message's failure undoes only that
    message. Raises, undoing all of them, only when the database is unavailable."""
    if any(m.verdict.kind == "unsubscribe" for m in messages):
        raise ValueError("unsubscribe mail goes to handle_unsubscribe, in readers' own transaction")
    policy = policy or BouncePolicy.from_config(app.cfg)
    async with app.db.write() as s:
        try:
            async with s.begin_nested():
                return await _apply_group(s, messages, now, policy)
        except _UNAVAILABLE:
            raise
        except Exception:  # a duplicate, or a message that breaks the group: each alone instead
            log.info("inbound: applying %d message(s) one at a time", len(messages))
        return [await _apply_one(s, message, now, policy) for message in messages]


async def _apply_group(
    s: AsyncSession, messages: list[Inbound], now: datetime, policy: BouncePolicy
) -> list[Handled]:
    """Reports, auto-replies and ignored mail together (_bounces); complaints and unparsed mail
    one by one; in the order given."""
    reports = [n for n, m in enumerate(messages) if m.verdict.kind in _GROUPED]
    done = dict(zip(reports, await _bounces(s, [messages[n] for n in reports], now, policy), strict=True))
    return [done[n] if n in done else await _apply(s, m, now, policy) for n, m in enumerate(messages)]


async def _apply_one(s: AsyncSession, message: Inbound, now: datetime, policy: BouncePolicy) -> Handled:
    verdict = message.verdict
    try:
        async with s.begin_nested():
            return await _apply(s, message, now, policy)
    except Duplicate:
        return Handled("duplicate", "already recorded", verdict.delivery_id)
    except _UNAVAILABLE:
        raise
    except Exception as exc:  # this message's content broke its recording: record that much, go on
        log.exception("inbound: could not record a %s for delivery %s", verdict.kind, verdict.delivery_id)
        why = (
            f"could not be recorded ({type(exc).__name__}: {inbound.clean(str(exc))[:200]}): {verdict.reason}"
        )
        broken = dataclasses.replace(verdict, kind="unparsed", reason=why[:500], recipients=())
        try:
            async with s.begin_nested():
                return await _unparsed(s, dataclasses.replace(message, verdict=broken, raw=b""), now, policy)
        except Duplicate:
            return Handled("duplicate", "already recorded", verdict.delivery_id)


async def _apply(s: AsyncSession, message: Inbound, now: datetime, policy: BouncePolicy) -> Handled:
    verdict = message.verdict
    if verdict.kind == "unparsed":
        return await _unparsed(s, message, now, policy)
    if verdict.kind == "complaint":
        return await complaints.apply_complaint(s, message, now, policy)
    (handled,) = await _bounces(s, [message], now, policy)
    return handled


async def _unparsed(s: AsyncSession, message: Inbound, now: datetime, policy: BouncePolicy) -> Handled:
    """Record a message nobody could read on the reader its VERP address names, if any."""
    verdict = message.verdict
    await remember(s, message.key, "unparsed", now)
    found = await ledger.load_claimed(s, [verdict.delivery_id]) if verdict.delivery_id is not None else []
    if found and found[0].subscriber is not None:
        d = found[0].delivery
        await readers_store.add_event(
            s, "bounce_unparsed", now, subscriber_id=found[0].subscriber.id, delivery_id=d.id,
            subscription_id=d.subscription_id, reason=verdict.reason[:500], edition_id=d.edition_id,
            **(raw_detail(message.raw, policy) if message.raw else {}),
        )  # fmt: skip
    log.warning("inbound: unparsed message for delivery %s: %s", verdict.delivery_id, verdict.reason)
    return Handled("unparsed", verdict.reason, verdict.delivery_id)


@dataclass
class _Writes:
    """What a group of bounce reports writes, gathered so it takes a few statements, not a few per
    message: a mailbox run applies hundreds at once."""

    remembered: list[tuple[str, str]] = field(default_factory=list)  # (key, outcome)
    failed: list[tuple[int, int | None, str]] = field(default_factory=list)  # (delivery, code, reply)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (kind, columns and detail)
    scores: dict[int, float] = field(default_factory=dict)
    suppressions: dict[int, str] = field(default_factory=dict)  # reader → why


async def _bounces(
    s: AsyncSession, messages: list[Inbound], now: datetime, policy: BouncePolicy
) -> list[Handled]:
    """Bounce and delay reports (and auto-replies and ignored mail, which are only remembered):
    every delivery and reader history read at once, then written in a few statements; a reader
    bouncing twice in the group is scored over both."""
    reports = [m for m in messages if m.verdict.kind in ("bounce", "delayed")]
    ids = [m.verdict.delivery_id for m in reports if m.verdict.delivery_id is not None]
    claimed = {c.delivery.id: c for c in await ledger.load_claimed(s, ids, {})}
    readers = {c.subscriber.id: c.subscriber.status for c in claimed.values() if c.subscriber is not None}
    histories = await inbound_store.bounce_histories(s, list(readers))
    writes = _Writes()
    out = [_plan_bounce(m, claimed, readers, histories, writes, now, policy) for m in messages]
    if not await inbound_store.remember_many(s, writes.remembered, now):
        raise Duplicate  # another process recorded one of them meanwhile: one at a time instead
    await inbound_store.mark_deliveries_bounced(s, writes.failed, now)
    await readers_store.add_events(s, writes.events, now)
    await inbound_store.set_bounce_scores(s, writes.scores, now)
    await ledger.suppress_subscribers(s, writes.suppressions, SubscriberStatus.BOUNCED, now)
    for reader_id, why in writes.suppressions.items():
        log.info("reader %s suppressed: %s", reader_id, why)
    return out


def _plan_bounce(
    message: Inbound,
    claimed: dict[int, ledger.Claimed],
    readers: dict[int, str],
    histories: dict[int, list[tuple[datetime, str]]],
    writes: _Writes,
    now: datetime,
    policy: BouncePolicy,
) -> Handled:
    """One report's outcome, its writes added to `writes`; `readers` and `histories` follow along."""
    verdict, key = message.verdict, message.key
    if verdict.kind in ("ignored", "auto_reply"):
        outcome = "forged" if verdict.reason.startswith("forged") else str(verdict.kind)
        writes.remembered.append((key, outcome))
        level = logging.WARNING if outcome == "forged" else logging.INFO
        log.log(level, "inbound: %s for delivery %s: %s", outcome, verdict.delivery_id, verdict.reason)
        return Handled(outcome, verdict.reason, verdict.delivery_id)
    c = claimed.get(verdict.delivery_id or 0)
    if c is None:
        writes.remembered.append((key, "unknown_delivery"))
        log.warning("inbound: bounce for delivery %s, which does not exist", verdict.delivery_id)
        return Handled("unknown_delivery", "no such delivery", verdict.delivery_id)
    d, reader = c.delivery, c.subscriber
    if d.status == DeliveryStatus.SENDING:
        # A fast relay can bounce before the worker has committed "sent": come back later.
        return Handled("in_flight", "the delivery's outcome is not recorded yet", d.id)
    main = _main_report(verdict, d.address)
    klass = main.bounce_class if main is not None else BounceClass.UNKNOWN
    writes.remembered.append((key, str(klass)))
    detail = _bounce_detail(message, main, klass, d, policy)
    columns = {
        "subscriber_id": reader.id if reader else None,
        "subscription_id": d.subscription_id,
        "delivery_id": d.id,
        **detail,
    }
    if klass is BounceClass.DELAYED:
        writes.events.append(("delivery_delayed", columns))
        log.info("inbound: delivery %s delayed: %s", d.id, verdict.reason)
        return Handled("delayed", verdict.reason, d.id)
    failed = d.status in (DeliveryStatus.SENT, DeliveryStatus.UNKNOWN)
    if failed:
        writes.failed.append(
            (d.id, detail["code"], f"DSN {detail['status'] or 'no code'}: {detail['diagnostic']}")
        )
    writes.events.append(("policy_rejection" if klass is BounceClass.POLICY else "bounced", columns))
    if klass is BounceClass.POLICY:
        _policy_alert(c, detail["diagnostic"] or verdict.reason, now)
    suppressed = False
    if reader is not None and d.kind == DeliveryKind.DIGEST and klass in bounce_rules.SCORED:
        history = histories.setdefault(reader.id, [])
        score, why = _score(history, readers[reader.id], klass, detail, now, policy)
        history.append((now, str(klass)))
        writes.scores[reader.id] = score
        if why is not None:
            writes.suppressions[reader.id], readers[reader.id], suppressed = (
                why,
                SubscriberStatus.BOUNCED,
                True,
            )
    log.info("inbound: delivery %s bounced (%s): %s", d.id, klass, detail["why"] or verdict.reason)
    return Handled(str(klass), verdict.reason, d.id, suppressed, failed)


def _bounce_detail(
    message: Inbound,
    main: inbound.RecipientReport | None,
    klass: BounceClass,
    d: Delivery,
    policy: BouncePolicy,
) -> dict[str, Any]:
    return {
        "at": "dsn",
        "bounce_class": str(klass),
        "bounce_reason": main.reason if main else "",
        "why": (main.why if main else "")[:500],
        "status": main.status if main else None,
        "code": _code_of(main),
        "diagnostic": (main.diagnostic if main else "")[:1000],
        "final_recipient": main.recipient if main else None,
        "recipients": _recipients(message.verdict),
        "reason": message.verdict.reason[:500],
        "edition_id": d.edition_id,
        **raw_detail(message.raw, policy),
    }


def _policy_alert(c: ledger.Claimed, said: str, now: datetime) -> None:
    what = (
        f"policy rejection reported for delivery {c.delivery.id} (edition {c.delivery.edition_id}, "
        f"list {c.mailing_list.slug if c.mailing_list else '-'}): {said}; "
        "the reader stays subscribed; check authentication and reputation"
    )
    log.warning("%s", what)
    raise_alert(Alert("relay_policy", "a receiver reports a policy rejection", what, now))


def _score(
    before: list[tuple[datetime, str]],
    status: str,
    klass: BounceClass,
    detail: dict[str, Any],
    now: datetime,
    policy: BouncePolicy,
) -> tuple[float, str | None]:
    """Mailman scoring over the reader's earlier bounces and this one: the score, and why this
    bounce suppresses an active reader (None if it does not)."""
    events: list[tuple[datetime, BounceClass]] = [(now, klass)]
    for when, name in before:
        with contextlib.suppress(ValueError):
            events.append((when, BounceClass(name)))
    score, suppress = bounce_rules.bounce_score(
        events, now, hard=policy.hard, soft=policy.soft, limit=policy.limit, quiet=policy.quiet
    )
    if not suppress or status != SubscriberStatus.ACTIVE:
        return score, None
    if klass is BounceClass.HARD:
        return score, f"hard bounce ({detail['why'] or detail['status'] or 'DSN'}): {detail['diagnostic']}"
    return score, f"bounce score {score:g} over {policy.limit:g} ({detail['why']}): {detail['diagnostic']}"


async def trim_raw_bounces(app: bootstrap.App, now: datetime, *, keep: timedelta | None = None) -> int:
    """Drop the raw message from inbound events older than the retention (30 days by default)."""
    keep = keep if keep is not None else BouncePolicy.from_config(app.cfg).raw_retention
    async with app.db.write() as s:
        trimmed = await inbound_store.trim_event_raw(s, INBOUND_EVENTS, now - keep)
    if trimmed:
        log.info("trimmed the raw message from %d bounce event(s) older than %s", trimmed, keep)
    return trimmed
