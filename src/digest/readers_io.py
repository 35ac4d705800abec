"""Subscriber CSV import and export (streamed, row by row, so a large file never sits in memory)."""

from __future__ import annotations

import csv
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import IO

from digest import bootstrap, readers, signup, topics
from digest.errors import DigestError
from digest.models import MailingList, Subscriber, Subscription
from digest.schedule import WEEKDAYS
from digest.store import readers as readers_store

EXPORT_COLUMNS = [
    "email",
    "name",
    "list",
    "status",
    "reader_status",
    "cadence",
    "weekday",
    "send_hour",
    "timezone",
    "topics",
    "signup_at",
    "signup_ip",
    "signup_source",
    "consent_text_version",
    "confirmed_at",
    "confirm_ip",
    "unsubscribed_at",
    "unsubscribe_method",
]
_ALIASES = {
    "time_zone": "timezone",
    "tz": "timezone",
    "hour": "send_hour",
    "e-mail": "email",
    "mail": "email",
}


@dataclass(frozen=True)
class Row:
    line: int
    address: str
    prefs: readers.ReaderPrefs
    consent: readers.Consent
    topics: str = ""  # topic slugs as the file gives them; empty: every topic


@dataclass
class ImportReport:
    added: int = 0
    unchanged: int = 0
    updated: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)
    asked: int = 0  # pending readers a confirmation email was queued for
    waiting: int = 0  # pending readers sent one less than a day ago (its link still works)


def _weekday(value: str) -> int | None:
    v = value.strip().lower()[:3]
    if not v:
        return None
    if v not in WEEKDAYS:
        raise ValueError(f"weekday {value!r} is not one of {', '.join(WEEKDAYS)}")
    return WEEKDAYS.index(v)


def read_rows(handle: IO[str]) -> Iterator[Row | tuple[int, str]]:
    """Each data row as a Row, or (line number, reason) when it cannot be used."""
    reader = csv.DictReader(handle)
    if not reader.fieldnames or not any(
        (f or "").strip().lower() in ("email", "e-mail", "mail") for f in reader.fieldnames
    ):
        raise DigestError("the CSV file has no 'email' column in its header line")
    for raw in reader:
        line = reader.line_num
        row = {
            _ALIASES.get((k or "").strip().lower(), (k or "").strip().lower()): (v or "")
            for k, v in raw.items()
            if k
        }
        try:
            hour = row.get("send_hour", "").strip()
            prefs = readers.ReaderPrefs(
                name=" ".join(row.get("name", "").split())[:200],
                cadence=row.get("cadence", "").strip().lower() or "default",
                weekday=_weekday(row.get("weekday", "")),
                send_hour=int(hour) if hour else None,
                timezone=row.get("timezone", "").strip() or None,
            )
        except ValueError as exc:
            yield line, str(exc)
            continue
        consent = readers.Consent(
            ip=row.get("signup_ip") or None,
            source=row.get("signup_source") or row.get("source") or "import",
            text_version=row.get("consent_text_version") or None,
        )
        topic_text = ",".join(t for t in re.split(r"[\s,;|]+", row.get("topics", "")) if t)
        yield Row(line, row.get("email", ""), prefs, consent, topic_text)


async def import_csv(
    app: bootstrap.App,
    lst: MailingList,
    handle: IO[str],
    *,
    confirmed: bool,
    apply: bool,
    now: datetime,
    chunk: int = 500,
) -> ImportReport:
    """Import readers; a dry run (apply=False) validates and counts inside a rolled-back transaction.

    Readers imported without `confirmed` are pending: each is mailed a confirmation, under the
    same limits as a signup on the web (only when applying)."""
    report = ImportReport()
    rows = read_rows(handle)
    lst_cfg = topics.list_config(app, lst.slug)
    # Within one file, a second row for an address must agree with the first; it never overrides it.
    first_rows: dict[str, Row] = {}
    while True:
        batch = [r for _, r in zip(range(chunk), rows, strict=False)]
        if not batch:
            return report
        imported: list[str] = []
        try:
            async with app.db.write() as s:
                for item in batch:
                    if isinstance(item, tuple):
                        report.bad.append(item)
                        continue
                    if (first := _earlier_row(first_rows, item)) is not None:
                        if (first.prefs, first.consent) == (item.prefs, item.consent):
                            report.unchanged += 1
                        else:
                            why = f"repeats {item.address} from line {first.line} with other values; not used"
                            report.bad.append((item.line, why))
                        continue
                    try:
                        prefs = item.prefs
                        if item.topics and lst_cfg is not None:
                            prefs = replace(prefs, topics=topics.parse_choice(lst_cfg, item.topics))
                        elif item.topics:
                            raise DigestError(f"list {lst.slug} offers no topics")
                        async with s.begin_nested():
                            result = await readers.add_subscription(
                                s,
                                lst,
                                item.address,
                                prefs,
                                confirmed=confirmed,
                                now=now,
                                consent=item.consent,
                                method="import",
                            )
                    except DigestError as exc:
                        report.bad.append((item.line, str(exc)))
                        continue
                    imported.append(item.address)
                    if result.created:
                        report.added += 1
                    elif result.changed:
                        report.updated += 1
                    else:
                        report.unchanged += 1
                if not apply:
                    raise _DryRun
        except _DryRun:
            continue
        if not confirmed:
            for address in imported:
                asked = await signup.ask_pending(app, address, [lst.slug], now)
                report.asked += bool(asked.mailed)
                report.waiting += bool(asked.waiting)


def _earlier_row(first_rows: dict[str, Row], item: Row) -> Row | None:
    """The file's first row for the same address, when `item` repeats it."""
    first = first_rows.setdefault(item.address.strip().lower(), item)
    return None if first is item else first


class _DryRun(Exception):
    """Rolls back a dry run's transaction."""


EXPORT_PAGE = 1000  # subscriptions read per query while exporting


async def export_rows(app: bootstrap.App, list_id: int | None) -> list[dict[str, str]]:
    return [row async for row in stream_export_rows(app, list_id)]


async def stream_export_rows(
    app: bootstrap.App, list_id: int | None, page: int = EXPORT_PAGE
) -> AsyncIterator[dict[str, str]]:
    """Every subscription as an export row, read `page` rows at a time in address order."""
    after: tuple[str, str] | None = None
    while True:
        async with app.db.read() as s:
            rows = await readers_store.readers_after(s, list_id, after, page)
        for reader, sub, lst in rows:
            yield _export_row(reader, sub, lst)
        if len(rows) < page:
            return
        last_reader, _, last_list = rows[-1]
        after = (last_reader.email_key, last_list.slug)


async def export_page(
    app: bootstrap.App, list_id: int | None, status: str | None, limit: int, offset: int
) -> tuple[list[dict[str, str]], int]:
    """One page of export rows (the API's listing) and the number of rows in all."""
    async with app.db.read() as s:
        rows, total = await readers_store.readers_page(s, list_id, status, limit, offset)
    return [_export_row(*row) for row in rows], total


def _export_row(reader: Subscriber, sub: Subscription, lst: MailingList) -> dict[str, str]:
    return {
        "email": reader.email,
        "name": reader.name,
        "list": lst.slug,
        "status": sub.status,
        "reader_status": reader.status,
        "cadence": sub.cadence,
        "weekday": WEEKDAYS[sub.weekday] if sub.weekday is not None else "",
        "send_hour": "" if sub.send_hour is None else str(sub.send_hour),
        "timezone": sub.timezone or "",
        "topics": sub.topics or "",
        "signup_at": sub.signup_at.isoformat() if sub.signup_at else "",
        "signup_ip": sub.signup_ip or "",
        "signup_source": sub.signup_source or "",
        "consent_text_version": sub.consent_text_version or "",
        "confirmed_at": sub.confirmed_at.isoformat() if sub.confirmed_at else "",
        "confirm_ip": sub.confirm_ip or "",
        "unsubscribed_at": sub.unsubscribed_at.isoformat() if sub.unsubscribed_at else "",
        "unsubscribe_method": sub.unsubscribe_method or "",
    }
