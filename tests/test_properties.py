"""A stateful property test of scheduling and exactly-once composition.

Random sequences of ingests (including one story seen in a second source), ticks at advancing
times, cadence/hour/time-zone changes, topic choices and changes (list alpha offers two topics; a
third kind of story matches neither), unsubscribes and re-subscribes, failed deliveries (a real
SMTP server answering 550 5.1.1 or 451 to chosen readers) and restarts, checked after every step:

- no reader ever receives the same article twice from a list;
- a reader misses an article only when it fell outside `max_age`, or beyond `max_articles` in a
  digest that said "N more" (and then it was older than everything that digest held), or it was
  outside the topics the reader had chosen when their digest was composed (or their slot skipped),
  or the reader was not subscribed, confirmed or active when it would have gone out;
- a daily or weekly reader never gets two digests composed on one local day, whatever they change;
- at the end, once the relay accepts everything again and a week and a half has passed, every
  subscribed reader is owed nothing and has a next slot.

The same machine runs against two stores: a fast in-memory model (the SQL replaced by a few
dictionaries, the rules taken from the real pure core: `selection`, `schedule`, `next_slot` and the
same-day floor of `change_preferences`), thousands of examples; and the real thing (SQLite and
PostgreSQL, `compose_due` + `deliver` through aiosmtpd), about a hundred. DIGEST_LONG=1 runs more.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import itertools
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select, text

from conftest import SmtpSink, write_config
from digest import bootstrap, compose, delivery, preferences, readers, selection, store, topics
from digest.config import load_config
from digest.models import (
    Article,
    ArticleSource,
    Delivery,
    Edition,
    ListSource,
    MailingList,
    NewArticle,
    Subscriber,
    Subscription,
)
from digest.store import compose as compose_store
from digest.store import ledger, migrate
from digest.store import sources as sources_store

LONG = os.environ.get("DIGEST_LONG") == "1"
MODEL_EXAMPLES = int(os.environ.get("DIGEST_MODEL_EXAMPLES", 20_000 if LONG else 2_000))
REAL_EXAMPLES = int(os.environ.get("DIGEST_REAL_EXAMPLES", 100 if LONG else 15))  # per database

START = datetime(2027, 3, 24, 5, 0, tzinfo=UTC)  # days before the EU spring change
CATCH_UP = timedelta(hours=12)
LIFETIME = timedelta(hours=48)
RETRY_BASE = timedelta(minutes=5)
READERS = ("r0@example.com", "r1@example.com", "r2@example.com")
ZONES = ("Europe/Berlin", "America/New_York", "Pacific/Auckland", "Asia/Kolkata", "UTC")
OUTSTANDING = ("pending", "sending", "deferred")
HARD = "550 5.1.1 <{}>: user unknown"
# compose_store.insert_digest_deliveries keys a digest by (subscription, from_seq, to_seq): after a failure
# rolls the watermark back, recomposing the same range collides and the articles are lost (the
# model finds this). Set to True together with the fix that adds the edition to the key.
DEDUPE_KEY_HAS_EDITION = True
TEMP = "451 4.3.0 mailbox busy, try again later"


@dataclass(frozen=True)
class ListSpec:
    slug: str
    sources: tuple[str, ...]
    schedule: str
    timezone: str
    min_articles: int
    max_articles: int
    max_age: timedelta


LISTS = {
    "alpha": ListSpec("alpha", ("a", "b"), "0 7 * * *", "UTC", 1, 3, timedelta(days=3)),
    "beta": ListSpec("beta", ("b",), "30 18 * * 1,3,5", "America/New_York", 2, 4, timedelta(days=20)),
}
# List alpha offers two topics, matched by a word in the title; a third kind of story matches none.
TOPICS = ("harbour", "market")
KINDS = ("harbour", "market", "weather")
TOPIC_CHOICES: tuple[str | None, ...] = (None, "harbour", "market", "harbour,market")


def lists_toml() -> str:
    out = []
    for spec in LISTS.values():
        sources = ", ".join(f'"{s}"' for s in spec.sources)
        out.append(
            f'[[lists]]\nslug = "{spec.slug}"\nname = "List {spec.slug}"\nsources = [{sources}]\n'
            f'schedule = "{spec.schedule}"\ntimezone = "{spec.timezone}"\n'
            f"min_articles = {spec.min_articles}\nmax_articles = {spec.max_articles}\n"
            f'max_age = "{spec.max_age.days}d"\n'
        )
        if spec.slug == "alpha":
            out.extend(
                f'[[lists.topics]]\nslug = "{t}"\nname = "{t.title()}"\nkeywords = ["{t}"]\n' for t in TOPICS
            )
    return "\n".join(out)


def title_of(n: int) -> str:
    return f"Story {n:04d} of the day: {KINDS[n % len(KINDS)]}"


def topic_of(title: str) -> str:
    return title.rsplit(" ", 1)[-1]


def in_choice(title: str, choice: str | None) -> bool:
    return choice is None or topic_of(title) in choice.split(",")


TITLE = re.compile(r"Story (\d{4}) of the day")


# ---------------------------------------------------------------- what a store shows the checker


@dataclass(frozen=True)
class ArticleInfo:
    published_at: datetime
    first_seq: dict[str, int]  # list slug -> seq of its first sighting through that list's sources


@dataclass(frozen=True)
class SubInfo:
    watermark: int
    sendable: bool  # confirmed and the reader active
    next_due_at: datetime | None


@dataclass(frozen=True)
class DeliveryInfo:
    reader: str
    slug: str
    from_seq: int
    to_seq: int
    status: str
    titles: tuple[str, ...]
    more: int
    created_at: datetime


@dataclass
class Snapshot:
    articles: dict[str, ArticleInfo]
    subs: dict[tuple[str, str], SubInfo]
    deliveries: list[DeliveryInfo]
    received: dict[tuple[str, str], list[str]]  # titles, as the mail actually arrived


@dataclass(frozen=True)
class Prefs:
    cadence: str = "default"
    send_hour: int | None = None
    weekday: int | None = None
    timezone: str | None = None

    def reader_prefs(self) -> readers.ReaderPrefs:
        return readers.ReaderPrefs(
            cadence=self.cadence, weekday=self.weekday, send_hour=self.send_hour, timezone=self.timezone
        )


class Store(Protocol):
    async def ingest(self, source: str, items: list[tuple[str, datetime]], now: datetime) -> None: ...
    async def subscribe(
        self, reader: str, slug: str, prefs: Prefs, now: datetime, choice: str | None = None
    ) -> None: ...
    async def choose_topics(self, reader: str, choice: str | None, now: datetime) -> None: ...
    async def unsubscribe(self, reader: str, slug: str, now: datetime) -> None: ...
    async def change_prefs(self, reader: str, prefs: Prefs, now: datetime) -> None: ...
    async def tick(self, now: datetime) -> None: ...
    async def restart(self) -> None: ...
    async def snapshot(self) -> Snapshot: ...
    async def owed(self, now: datetime) -> list[str]: ...
    async def close(self) -> None: ...

    modes: dict[str, str]


# ---------------------------------------------------------------- the checker


Choices = dict[str, list[tuple[datetime, str | None]]]  # reader -> (since, topic choice on alpha)


def choices_at(choices: Choices, reader: str, when: datetime) -> set[str | None]:
    """The reader's topic choice at `when`: the one before a change made at that very instant too."""
    current: str | None = None
    out: set[str | None] = set()
    for since, choice in choices.get(reader, []):
        if since < when:
            current = choice
        elif since == when:
            out.add(choice)
    return out | {current}


def outside_topics(reader: str, slug: str, title: str, when: datetime | None, choices: Choices) -> bool:
    """Was the article outside the reader's topics at `when` (None: at any time)?"""
    if slug != "alpha":
        return False
    if when is not None:
        return not all(in_choice(title, c) for c in choices_at(choices, reader, when))
    return any(not in_choice(title, c) for _, c in choices.get(reader, []))


def check(
    snap: Snapshot,
    history: dict[str, list[tuple[datetime, Prefs]]],
    choices: Choices | None = None,
    now: datetime | None = None,
) -> None:
    """The invariants; `history` holds each reader's preferences and since when they hold,
    `choices` their topic choices on list alpha, `now` the time of the snapshot."""
    choices = choices or {}
    by_sub: dict[tuple[str, str], list[DeliveryInfo]] = defaultdict(list)
    for d in snap.deliveries:
        by_sub[(d.reader, d.slug)].append(d)
    for key in set(snap.subs) | set(by_sub) | set(snap.received):
        reader, slug = key
        spec = LISTS[slug]
        got = snap.received.get(key, [])
        dupes = [t for t, n in Counter(got).items() if n > 1]
        assert not dupes, f"{reader} received {dupes} twice from {slug}"
        sent = [d for d in by_sub[key] if d.status == "sent"]
        assert Counter(got) == Counter(t for d in sent for t in d.titles), (
            f"{reader}/{slug}: what arrived differs from the ledger"
        )
        sub = snap.subs.get(key)
        for title, art in snap.articles.items():
            s = art.first_seq.get(slug)
            if s is None or title in got:
                continue
            covering = [d for d in by_sub[key] if d.from_seq < s <= d.to_seq]
            if any(
                d.status == "sent" and outside_topics(reader, slug, title, d.created_at, choices)
                for d in covering
            ):
                continue  # not in the topics the digest was composed for
            if any(_excused(d, title, art, spec, snap) for d in covering):
                continue
            if any(d.status in OUTSTANDING for d in covering):
                continue  # on its way
            if sub is not None and s > sub.watermark:
                continue  # not composed yet (checked at the end: nothing may stay owed)
            if all(d.status == "failed" for d in covering) and (
                outside_topics(reader, slug, title, None, choices)
                or (now is not None and art.published_at < now - spec.max_age)
            ):
                # A slot with nothing in the reader's topics (within max_age) moved their watermark
                # past it (a failed digest had put it back): outside their topics, or too old.
                continue
            raise AssertionError(
                f"{reader} lost {title} (seq {s}) on {slug}: watermark "
                f"{sub.watermark if sub else None}, covering deliveries {covering}"
            )
        _one_a_day_across_changes(reader, slug, sorted(sent, key=lambda d: d.created_at), history)


def _one_a_day_across_changes(
    reader: str, slug: str, sent: list[DeliveryInfo], history: dict[str, list[tuple[datetime, Prefs]]]
) -> None:
    """After a change of cadence, hour or zone, the next digest is not on the local day of the last.

    (Without a change a caught-up slot, sent late, may share a local day with the next regular one.)"""
    changes = history.get(reader, [])
    for before, after in itertools.pairwise(sent):
        if not any(before.created_at < t < after.created_at for t, _ in changes[1:]):
            continue
        zone = ZoneInfo(zone_of(changes, slug, after.created_at))
        day = after.created_at.astimezone(zone).date()
        assert before.created_at.astimezone(zone).date() != day, (
            f"{reader}/{slug}: two digests on local day {day} across a change ({before.created_at}, "
            f"{after.created_at}; changes {changes})"
        )


def zone_of(changes: list[tuple[datetime, Prefs]], slug: str, when: datetime) -> str:
    prefs = Prefs()
    for since, p in changes:
        if since <= when:
            prefs = p
    if prefs.cadence == "default" or not prefs.timezone:
        return LISTS[slug].timezone
    return prefs.timezone


def _excused(d: DeliveryInfo, title: str, art: ArticleInfo, spec: ListSpec, snap: Snapshot) -> bool:
    if d.status == "skipped":
        return True  # the reader left or was suppressed before it went out
    if d.status != "sent":
        return False
    if art.published_at < d.created_at - spec.max_age:
        return True
    if d.more > 0:
        # Beyond max_articles: then it must be older than everything the digest held.
        held = [snap.articles[t] for t in d.titles]
        oldest = min((a.published_at, a.first_seq[spec.slug]) for a in held)
        assert (art.published_at, art.first_seq[spec.slug]) < oldest, (
            f"{title} was left out of a digest that held older articles: {d}"
        )
        return True
    return False


# ---------------------------------------------------------------- the fast model


@dataclass
class MSub:
    prefs: Prefs
    status: str = "confirmed"
    watermark: int = 0
    next_due_at: datetime | None = None
    last_digest_at: datetime | None = None
    topics: str | None = None  # the topic choice (list alpha only)


@dataclass
class MDelivery:
    reader: str
    slug: str
    from_seq: int
    to_seq: int
    titles: tuple[str, ...]
    more: int
    created_at: datetime
    status: str = "pending"
    attempts: int = 0
    next_attempt_at: datetime | None = None


def _ns_sub(sub: MSub) -> SimpleNamespace:
    p = sub.prefs
    return SimpleNamespace(
        cadence=p.cadence,
        send_hour=p.send_hour,
        weekday=p.weekday,
        timezone=p.timezone,
        last_digest_at=sub.last_digest_at,
    )


def _ns_list(spec: ListSpec) -> SimpleNamespace:
    return SimpleNamespace(schedule=spec.schedule, timezone=spec.timezone)


def next_slot(sub: MSub, spec: ListSpec, after: datetime) -> datetime:
    return readers.next_slot(_ns_sub(sub), _ns_list(spec), after)  # type: ignore[arg-type]


@dataclass
class ModelStore:
    """The store as dictionaries; compose and deliver follow compose.compose and outcomes.settle.

    Like compose_store.insert_digest_deliveries, a digest's dedupe key is (reader, list, from_seq, to_seq)."""

    modes: dict[str, str] = field(default_factory=dict)
    seq: int = 0
    sightings: dict[str, dict[str, int]] = field(default_factory=dict)  # title -> source -> seq
    published: dict[str, datetime] = field(default_factory=dict)
    subs: dict[tuple[str, str], MSub] = field(default_factory=dict)
    suppressed: set[str] = field(default_factory=set)
    deliveries: list[MDelivery] = field(default_factory=list)
    keys: set[tuple[str, str, int, int, datetime | None]] = field(default_factory=set)

    async def ingest(self, source: str, items: list[tuple[str, datetime]], now: datetime) -> None:
        for title, published in items:
            seen = self.sightings.setdefault(title, {})
            if source in seen:
                continue
            self.published.setdefault(title, published)
            self.seq += 1
            seen[source] = self.seq

    def first_seq(self, title: str, spec: ListSpec) -> int | None:
        seqs = [q for src, q in self.sightings[title].items() if src in spec.sources]
        return min(seqs) if seqs else None

    async def subscribe(
        self, reader: str, slug: str, prefs: Prefs, now: datetime, choice: str | None = None
    ) -> None:
        sub = self.subs.get((reader, slug))
        if sub is not None and sub.status != "unsubscribed":
            return
        if sub is None:
            sub = self.subs[(reader, slug)] = MSub(prefs)
        sub.status, sub.prefs, sub.topics = "confirmed", prefs, choice
        sub.next_due_at = next_slot(sub, LISTS[slug], now)

    async def choose_topics(self, reader: str, choice: str | None, now: datetime) -> None:
        sub = self.subs.get((reader, "alpha"))
        if sub is not None:
            sub.topics = choice

    async def unsubscribe(self, reader: str, slug: str, now: datetime) -> None:
        sub = self.subs.get((reader, slug))
        if sub is None or sub.status == "unsubscribed":
            return
        sub.status, sub.next_due_at = "unsubscribed", None
        for d in self.deliveries:
            if (d.reader, d.slug) == (reader, slug) and d.status in ("pending", "deferred"):
                d.status = "skipped"

    async def change_prefs(self, reader: str, prefs: Prefs, now: datetime) -> None:
        for (r, slug), sub in self.subs.items():
            if r != reader or sub.status != "confirmed" or sub.prefs == prefs:
                continue
            sub.prefs = prefs
            floor = preferences._same_day_floor(_ns_sub(sub), _ns_list(LISTS[slug]), now)  # type: ignore[arg-type]
            sub.next_due_at = next_slot(sub, LISTS[slug], floor)

    def _sendable(self, reader: str, sub: MSub) -> bool:
        return sub.status == "confirmed" and reader not in self.suppressed

    async def tick(self, now: datetime) -> None:
        for slug, spec in sorted(LISTS.items()):
            self._compose(slug, spec, now)
        self._deliver(now)

    def _compose(self, slug: str, spec: ListSpec, now: datetime) -> None:
        upto = max(
            (q for seen in self.sightings.values() for src, q in seen.items() if src in spec.sources),
            default=0,
        )
        busy = {(d.reader, d.slug) for d in self.deliveries if d.status in OUTSTANDING}
        due = [
            (r, sub)
            for (r, sl), sub in sorted(self.subs.items())
            if sl == slug
            and self._sendable(r, sub)
            and (r, sl) not in busy
            and sub.next_due_at is not None
            and sub.next_due_at <= now
        ]
        for r, sub in due:
            assert sub.next_due_at is not None
            if sub.next_due_at < now - CATCH_UP:
                sub.next_due_at = next_slot(sub, spec, now)
                continue
            since = now - spec.max_age
            candidates = []
            for title in self.sightings:
                s = self.first_seq(title, spec)
                if (
                    s is not None
                    and sub.watermark < s <= upto
                    and self.published[title] >= since
                    and in_choice(title, sub.topics)
                ):
                    candidates.append((self.published[title], s, title))
            candidates.sort(reverse=True)
            chosen = selection.select_articles(candidates, spec.min_articles, spec.max_articles)
            old = sub.watermark
            sub.next_due_at = next_slot(sub, spec, now)
            if chosen.empty:
                if not candidates and sub.topics is not None:
                    sub.watermark = upto  # nothing in their topics: past the other topics' stories
                continue
            sub.watermark, sub.last_digest_at = upto, now
            key = (r, slug, old, upto, now if DEDUPE_KEY_HAS_EDITION else None)
            if key in self.keys:
                continue  # ON CONFLICT DO NOTHING
            self.keys.add(key)
            self.deliveries.append(
                MDelivery(
                    r,
                    slug,
                    old,
                    upto,
                    tuple(t for _, _, t in chosen.chosen),
                    chosen.more,
                    now,
                    next_attempt_at=now,
                )
            )

    def _deliver(self, now: datetime) -> None:
        for d in self.deliveries:
            if (
                d.status not in ("pending", "deferred")
                or d.next_attempt_at is None
                or d.next_attempt_at > now
            ):
                continue
            sub = self.subs[(d.reader, d.slug)]
            if not self._sendable(d.reader, sub):
                d.status = "skipped"
                continue
            mode = self.modes.get(d.reader, "ok")
            d.attempts += 1
            if mode == "ok":
                d.status = "sent"
                continue
            if mode == "temp" and now - d.created_at < LIFETIME:
                d.status = "deferred"
                d.next_attempt_at = now + min(RETRY_BASE * 2 ** (d.attempts - 1), timedelta(hours=4))
                continue
            d.status = "failed"
            if sub.watermark == d.to_seq:
                sub.watermark = d.from_seq
            if mode == "hard":
                self.suppressed.add(d.reader)

    async def restart(self) -> None:
        pass

    async def snapshot(self) -> Snapshot:
        articles = {
            t: ArticleInfo(
                self.published[t],
                {slug: s for slug, spec in LISTS.items() if (s := self.first_seq(t, spec)) is not None},
            )
            for t in self.sightings
        }
        subs = {
            k: SubInfo(sub.watermark, self._sendable(k[0], sub), sub.next_due_at)
            for k, sub in self.subs.items()
        }
        deliveries = [
            DeliveryInfo(d.reader, d.slug, d.from_seq, d.to_seq, d.status, d.titles, d.more, d.created_at)
            for d in self.deliveries
        ]
        received: dict[tuple[str, str], list[str]] = defaultdict(list)
        for d in self.deliveries:
            if d.status == "sent":
                received[(d.reader, d.slug)].extend(d.titles)
        return Snapshot(articles, subs, deliveries, dict(received))

    async def owed(self, now: datetime) -> list[str]:
        out = []
        for (r, slug), sub in self.subs.items():
            if not self._sendable(r, sub):
                continue
            spec = LISTS[slug]
            upto = max(
                (q for seen in self.sightings.values() for src, q in seen.items() if src in spec.sources),
                default=0,
            )
            n = sum(
                1
                for t in self.sightings
                if (s := self.first_seq(t, spec)) is not None
                and sub.watermark < s <= upto
                and self.published[t] >= now - spec.max_age
                and in_choice(t, sub.topics)
            )
            if n >= spec.min_articles:
                out.append(f"{r}/{slug}: {n} article(s) owed")
            if sub.next_due_at is None or sub.next_due_at <= now:
                out.append(f"{r}/{slug}: no future slot ({sub.next_due_at})")
        return out

    async def close(self) -> None:
        pass


# ---------------------------------------------------------------- the real store


TABLES = ("events", "deliveries", "editions", "subscriptions", "subscribers", "article_sources", "articles")


@dataclass
class RealStore:
    """compose_due + deliver on a real database, through a real SMTP server scripted per reader."""

    config: Path
    sink: SmtpSink
    app: bootstrap.App
    apps: dict[Path, bootstrap.App]
    modes: dict[str, str] = field(default_factory=dict)

    @classmethod
    async def open(cls, config: Path, sink: SmtpSink, apps: dict[Path, bootstrap.App]) -> RealStore:
        """A clean slate (schema, lists and sources kept) on the App of the run, opened once: the
        examples share it, as a long-running service would; `restart` replaces it."""
        app = apps.get(config)
        if app is None:
            app = apps[config] = await bootstrap.open_app(load_config(config, environ={}))
        async with app.db.write() as s:  # a clean slate, keeping schema, lists and sources
            if app.db.is_sqlite:
                for table in TABLES:
                    await s.execute(text(f"DELETE FROM {table}"))
            else:
                await s.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        with sink.lock:
            sink.messages.clear()
            sink.rcpt_attempts.clear()
        store = cls(config, sink, app, apps)
        sink.reply_for = store._reply
        return store

    def _reply(self, address: str, attempt: int) -> str | None:
        mode = self.modes.get(address, "ok")
        return HARD.format(address) if mode == "hard" else TEMP if mode == "temp" else None

    async def ingest(self, source: str, items: list[tuple[str, datetime]], now: datetime) -> None:
        rows = [
            NewArticle(
                guid=f"{source}:{title}",
                url=f"https://news.example.com/{hashlib.sha256(title.encode()).hexdigest()[:10]}",
                title=title,
                author=None,
                published_at=published,
                summary=f"{title}: something happened.",
                content_html=f"<p>{title}</p>",
                image_url=None,
                fingerprint=hashlib.sha256(title.encode()).hexdigest(),
                identity_url=f"https://news.example.com/{hashlib.sha256(title.encode()).hexdigest()[:10]}",
            )
            for title, published in items
        ]
        async with self.app.db.write() as s:
            src = await sources_store.source_by_name(s, source)
            assert src is not None
            stored = await sources_store.store_articles(s, src.id, rows, now)
            await topics.match_articles(self.app, s, stored.article_ids)

    async def subscribe(
        self, reader: str, slug: str, prefs: Prefs, now: datetime, choice: str | None = None
    ) -> None:
        lst = await bootstrap.get_list(self.app, slug)
        wanted = replace(prefs.reader_prefs(), topics=choice)
        async with self.app.db.write() as s:
            await readers.add_subscription(s, lst, reader, wanted, confirmed=True, now=now)

    async def choose_topics(self, reader: str, choice: str | None, now: datetime) -> None:
        async with self.app.db.read() as s:
            sub = await self._sub(s, reader, "alpha")
        lst_cfg = topics.list_config(self.app, "alpha")
        assert lst_cfg is not None
        if sub is not None:
            await topics.choose(self.app, sub.id, lst_cfg, choice, now, "preferences")

    async def _sub(self, s: Any, reader: str, slug: str) -> Subscription | None:
        stmt = (
            select(Subscription)
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .join(MailingList, MailingList.id == Subscription.list_id)
            .where(Subscriber.email_key == reader, MailingList.slug == slug)
        )
        return (await s.execute(stmt)).scalar_one_or_none()

    async def unsubscribe(self, reader: str, slug: str, now: datetime) -> None:
        async with self.app.db.write() as s:
            sub = await self._sub(s, reader, slug)
            if sub is not None:
                await readers.unsubscribe(s, sub, "link", now)

    async def change_prefs(self, reader: str, prefs: Prefs, now: datetime) -> None:
        async with self.app.db.read() as s:
            stmt = (
                select(Subscription.token, MailingList.slug)
                .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
                .join(MailingList, MailingList.id == Subscription.list_id)
                .where(Subscriber.email_key == reader, Subscription.status == "confirmed")
            )
            rows = (await s.execute(stmt)).all()
        if rows:
            await preferences.change_preferences(
                self.app, rows[0][0], [slug for _, slug in rows], prefs.reader_prefs(), now,
                consent=readers.Consent(),
            )  # fmt: skip

    async def tick(self, now: datetime) -> None:
        # A tick with nothing due and nothing to send changes nothing: skip it (speed only).
        async with self.app.db.read() as s:
            due = (
                select(func.count())
                .select_from(Subscription)
                .where(Subscription.status == "confirmed", Subscription.next_due_at <= now)
            )
            busy = (await s.execute(due)).scalar_one() + await ledger.pending_count(s, now)
        if busy:
            await compose.compose_due(self.app, now)
            await delivery.deliver_due(self.app, lambda: now)

    async def restart(self) -> None:
        await self.app.db.close()
        self.app = self.apps[self.config] = await bootstrap.open_app(load_config(self.config, environ={}))

    async def snapshot(self) -> Snapshot:
        async with self.app.db.read() as s:
            first = (
                select(ListSource.list_id, ArticleSource.article_id, func.min(ArticleSource.seq))
                .join(ListSource, ListSource.source_id == ArticleSource.source_id)
                .group_by(ListSource.list_id, ArticleSource.article_id)
            )
            slugs = dict((await s.execute(select(MailingList.id, MailingList.slug))).all())
            titles = {
                i: (t, p)
                for i, t, p in (
                    await s.execute(select(Article.id, Article.title, Article.published_at))
                ).all()
            }
            seqs: dict[int, dict[str, int]] = defaultdict(dict)
            for list_id, article_id, seq in (await s.execute(first)).all():
                seqs[article_id][slugs[list_id]] = int(seq)
            articles = {t: ArticleInfo(p, dict(seqs[i])) for i, (t, p) in titles.items()}
            subs = {}
            for sub, reader, status, slug in (
                await s.execute(
                    select(Subscription, Subscriber.email_key, Subscriber.status, MailingList.slug)
                    .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
                    .join(MailingList, MailingList.id == Subscription.list_id)
                )
            ).all():
                sendable = sub.status == "confirmed" and status == "active"
                subs[(reader, slug)] = SubInfo(sub.watermark, sendable, sub.next_due_at)
            rows = (
                await s.execute(
                    select(Delivery, Edition, MailingList.slug)
                    .join(Edition, Edition.id == Delivery.edition_id)
                    .join(MailingList, MailingList.id == Edition.list_id)
                    .where(Delivery.kind == "digest")
                )
            ).all()
        deliveries, by_message_id = [], {}
        for d, e, slug in rows:
            info = DeliveryInfo(
                d.address, slug, d.from_seq, d.to_seq, d.status,
                tuple(titles[i][0] for i in e.article_ids), e.more_count, d.created_at,
            )  # fmt: skip
            deliveries.append(info)
            by_message_id[d.message_id] = info
        received: dict[tuple[str, str], list[str]] = defaultdict(list)
        with self.sink.lock:
            messages = list(self.sink.messages)
        for m in messages:
            msg = email.message_from_bytes(m.data, policy=email.policy.default)
            info = by_message_id.get(str(msg["Message-ID"]))
            assert info is not None, f"a message the ledger does not know: {msg['Message-ID']}"
            part = msg.get_body(("plain",))
            assert part is not None
            found = [title_of(int(n)) for n in dict.fromkeys(TITLE.findall(part.get_content()))]
            assert sorted(found) == sorted(info.titles), (found, info)
            for rcpt in m.rcpt_tos:
                received[(rcpt, info.slug)].extend(found)
        return Snapshot(articles, subs, deliveries, dict(received))

    async def owed(self, now: datetime) -> list[str]:
        out = []
        async with self.app.db.read() as s:
            who = dict(
                (await s.execute(
                    select(Subscription.id, Subscriber.email_key).join(
                        Subscriber, Subscriber.id == Subscription.subscriber_id)
                )).all()
            )  # fmt: skip
            for lst in await sources_store.active_lists(s):
                upto = await compose_store.list_max_seq(s, lst.id)
                for slot in await compose_store.due_readers(s, lst.id, None):
                    d = await compose.draft(self.app, s, lst, slot.watermark, upto, now, slot.topics)
                    if not d.empty:
                        out.append(f"{who[slot.id]}/{lst.slug}: {len(d.picked)} article(s) owed")
                    if slot.next_due_at is None or slot.next_due_at <= now:
                        out.append(f"{who[slot.id]}/{lst.slug}: no future slot ({slot.next_due_at})")
        return out

    async def close(self) -> None:
        self.sink.reply_for = None


# ---------------------------------------------------------------- the machine


prefs_strategy = st.one_of(
    st.just(Prefs()),
    st.builds(lambda h, z: Prefs("daily", h, None, z), st.integers(0, 23), st.sampled_from(ZONES)),
    st.builds(
        lambda h, w, z: Prefs("weekly", h, w, z),
        st.integers(0, 23),
        st.integers(0, 6),
        st.sampled_from(ZONES),
    ),
)
readers_strategy = st.sampled_from(READERS)
choices_strategy = st.sampled_from(TOPIC_CHOICES)
lists_strategy = st.sampled_from(sorted(LISTS))


class SchedulingMachine(RuleBasedStateMachine):
    make_store: Any = None  # set per run: an async callable returning a fresh Store
    loop: asyncio.AbstractEventLoop  # one loop per run: the real store's App outlives an example

    def __init__(self) -> None:
        super().__init__()
        self.restarts = 0
        self.store: Store = self.run(type(self).make_store())
        self.now = START
        self.count = 0
        self.prefs: dict[str, list[tuple[datetime, Prefs]]] = {r: [] for r in READERS}
        self.choices: Choices = {r: [] for r in READERS}
        self.subscribed: set[tuple[str, str]] = set()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def current_prefs(self, reader: str) -> Prefs:
        return self.prefs[reader][-1][1] if self.prefs[reader] else Prefs()

    @initialize(
        first=st.lists(
            st.tuples(readers_strategy, lists_strategy, prefs_strategy, choices_strategy),
            min_size=1,
            max_size=4,
        ),
        stories=st.integers(0, 6),
    )
    def start(self, first: list[tuple[str, str, Prefs, str | None]], stories: int) -> None:
        self.ingest_stories("a", stories, timedelta(hours=6))
        for reader, slug, prefs, choice in first:
            self.subscribe(reader, slug, prefs, choice)

    def ingest_stories(self, source: str, n: int, age: timedelta) -> None:
        items = []
        for _ in range(n):
            self.count += 1
            items.append((title_of(self.count), self.now - age))
        if items:
            self.run(self.store.ingest(source, items, self.now))

    @rule(source=st.sampled_from(["a", "b"]), n=st.integers(1, 4),
          age=st.sampled_from([timedelta(0), timedelta(hours=5), timedelta(days=2), timedelta(days=10)]))  # fmt: skip
    def ingest(self, source: str, n: int, age: timedelta) -> None:
        self.ingest_stories(source, n, age)

    @precondition(lambda self: self.count > 0)
    @rule(data=st.data(), source=st.sampled_from(["a", "b"]))
    def same_story_in_another_source(self, data: st.DataObject, source: str) -> None:
        n = data.draw(st.integers(1, self.count))
        self.run(self.store.ingest(source, [(title_of(n), self.now - timedelta(hours=1))], self.now))

    @rule(step=st.sampled_from([timedelta(minutes=20), timedelta(hours=3), timedelta(hours=11),
                                timedelta(hours=13), timedelta(days=1), timedelta(days=3)]))  # fmt: skip
    def tick(self, step: timedelta) -> None:
        self.now += step
        self.run(self.store.tick(self.now))

    @rule(reader=readers_strategy, prefs=prefs_strategy)
    def change_prefs(self, reader: str, prefs: Prefs) -> None:
        if prefs == self.current_prefs(reader) or not any(r == reader for r, _ in self.subscribed):
            return
        self.prefs[reader].append((self.now, prefs))
        self.run(self.store.change_prefs(reader, prefs, self.now))

    @rule(reader=readers_strategy, choice=choices_strategy)
    def choose_topics(self, reader: str, choice: str | None) -> None:
        if (reader, "alpha") not in self.subscribed:
            return
        self.choices[reader].append((self.now, choice))
        self.run(self.store.choose_topics(reader, choice, self.now))

    @rule(reader=readers_strategy, slug=lists_strategy)
    def unsubscribe(self, reader: str, slug: str) -> None:
        self.subscribed.discard((reader, slug))
        self.run(self.store.unsubscribe(reader, slug, self.now))

    @rule(reader=readers_strategy, slug=lists_strategy, prefs=prefs_strategy, choice=choices_strategy)
    def resubscribe(self, reader: str, slug: str, prefs: Prefs, choice: str | None) -> None:
        self.subscribe(reader, slug, prefs, choice)

    def subscribe(self, reader: str, slug: str, prefs: Prefs, choice: str | None = None) -> None:
        if (reader, slug) in self.subscribed:
            return
        choice = choice if slug == "alpha" else None
        if slug == "alpha":
            self.choices[reader].append((self.now, choice))
        # One set of preferences per reader: the signup form sets them for every list it covers.
        if any(r == reader for r, _ in self.subscribed):
            prefs = self.current_prefs(reader)
        self.subscribed.add((reader, slug))
        self.prefs[reader].append((self.now, prefs))
        self.run(self.store.subscribe(reader, slug, prefs, self.now, choice))

    @rule(reader=readers_strategy, mode=st.sampled_from(["ok", "ok", "temp", "hard"]))
    def relay_answers(self, reader: str, mode: str) -> None:
        self.store.modes[reader] = mode

    @precondition(lambda self: self.restarts < 1)  # reopening costs a schema check: once is enough
    @rule()
    def restart(self) -> None:
        self.restarts += 1
        self.run(self.store.restart())

    @invariant()
    def nothing_lost_or_repeated(self) -> None:
        check(self.run(self.store.snapshot()), self.prefs, self.choices, self.now)

    def teardown(self) -> None:
        try:
            # The relay accepts everything again; four days of ticks 11h apart (within catch_up, so
            # every slot is served) give every daily and list-default reader a slot after the last
            # retry. Weekly readers may not have had one yet: only the step invariants cover them.
            self.store.modes.clear()
            for _ in range(9):
                self.now += timedelta(hours=11)
                self.run(self.store.tick(self.now))
            check(self.run(self.store.snapshot()), self.prefs, self.choices, self.now)
            weekly = {r for r in READERS if self.current_prefs(r).cadence == "weekly"}
            owed = [o for o in self.run(self.store.owed(self.now)) if o.split("/")[0] not in weekly]
            assert not owed, owed
        finally:
            self.run(self.store.close())


def run_machine(make_store: Any, examples: int, steps: int, loop: asyncio.AbstractEventLoop) -> None:
    machine = type("Machine", (SchedulingMachine,), {"make_store": staticmethod(make_store), "loop": loop})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_scheduling_rules_in_a_fast_model_of_the_store() -> None:
    async def make() -> ModelStore:
        return ModelStore()

    loop = asyncio.new_event_loop()
    try:
        run_machine(make, MODEL_EXAMPLES, 20, loop)
    finally:
        loop.close()


@pytest.fixture
def real_config(tmp_path: Path, smtp_sink: SmtpSink) -> Any:
    def make(url: str) -> Path:
        extra = (
            f'\n[scheduler]\ncatch_up = "12h"\n\n[delivery]\nlifetime = "48h"\nretry_base = "5m"\n\n'
            f'[[sources]]\nname = "a"\nkind = "directory"\npath = "{tmp_path}/a"\n\n'
            f'[[sources]]\nname = "b"\nkind = "directory"\npath = "{tmp_path}/b"\n\n' + lists_toml()
        )
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "b").mkdir(exist_ok=True)
        config = write_config(tmp_path, database_url=url, smtp_port=smtp_sink.port, lists="", extra=extra)
        cfg = load_config(config, environ={})
        migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
        return config

    return make


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_scheduling_rules_on_a_real_database(
    request: pytest.FixtureRequest, tmp_path: Path, smtp_sink: SmtpSink, real_config: Any, backend: str
) -> None:
    url = (
        f"sqlite:///{tmp_path}/digest.db" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    )
    config = real_config(url)

    apps: dict[Path, bootstrap.App] = {}

    async def make() -> RealStore:
        return await RealStore.open(config, smtp_sink, apps)

    loop = asyncio.new_event_loop()
    try:
        run_machine(make, REAL_EXAMPLES, 10, loop)
    finally:
        for app in apps.values():
            loop.run_until_complete(app.db.close())
        loop.close()


def test_the_checker_catches_a_lost_and_a_repeated_article() -> None:
    """The invariants are not vacuous: a store that drops or repeats an article fails them."""
    t = START
    art = ArticleInfo(t, {"alpha": 1})
    sub = {("r0@example.com", "alpha"): SubInfo(1, True, t + timedelta(days=1))}
    lost = Snapshot({title_of(1): art}, sub, [], {})
    with pytest.raises(AssertionError, match="lost"):
        check(lost, {})
    d = DeliveryInfo("r0@example.com", "alpha", 0, 1, "sent", (title_of(1),), 0, t)
    twice = Snapshot({title_of(1): art}, sub, [d, replace(d, created_at=t + timedelta(days=1))],
                     {("r0@example.com", "alpha"): [title_of(1), title_of(1)]})  # fmt: skip
    with pytest.raises(AssertionError, match="twice"):
        check(twice, {})
    cut = DeliveryInfo("r0@example.com", "alpha", 0, 1, "sent", (), 0, t)
    with pytest.raises(AssertionError, match="lost"):
        check(Snapshot({title_of(1): art}, sub, [cut], {}), {})
