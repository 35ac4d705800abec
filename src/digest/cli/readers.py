"""`digest subscribers`: add, list, show, import, export, unsuppress and erase readers."""

from __future__ import annotations

import csv
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.markup import escape
from rich.table import Table

from digest import bootstrap, readers, readers_io, reports, signup, topics
from digest.cli.output import JsonOption, err, fail, minute, out, print_json, print_table
from digest.cli.runner import with_app
from digest.errors import UsageError
from digest.schedule import WEEKDAYS
from digest.store import readers as readers_store
from digest.store import retention as retention_store

subscribers_app = typer.Typer(help="Add, list, show, import and export readers.", no_args_is_help=True)


def _weekday_option(value: str | None) -> int | None:
    if value is None:
        return None
    v = value.strip().lower()[:3]
    if v not in WEEKDAYS:
        fail(UsageError(f"--weekday {value!r} is not one of {', '.join(WEEKDAYS)}"))
    return WEEKDAYS.index(v)


@subscribers_app.command("add")
def add(
    email: str,
    list_slug: Annotated[str, typer.Option("--list", help="List slug.")],
    name: Annotated[str, typer.Option("--name")] = "",
    confirmed: Annotated[
        bool, typer.Option("--confirmed", help="Skip double opt-in (you hold consent).")
    ] = False,
    cadence: Annotated[str, typer.Option("--cadence", help="default | daily | weekly")] = "default",
    weekday: Annotated[str | None, typer.Option("--weekday", help="mon..sun, for weekly")] = None,
    hour: Annotated[int | None, typer.Option("--hour", help="Local send hour 0-23")] = None,
    timezone: Annotated[str | None, typer.Option("--timezone", help="IANA zone, e.g. Europe/Berlin")] = None,
    topic_choice: Annotated[
        str | None, typer.Option("--topics", help="Comma-separated topic slugs (default: every topic).")
    ] = None,
) -> None:
    """Subscribe a reader (pending until confirmed unless --confirmed).

    Example: digest subscribers add ann@example.com --list demo --confirmed
             --cadence daily --hour 7 --timezone Europe/Berlin --topics transport,local
    """

    async def go(application: bootstrap.App) -> tuple[readers.AddResult, signup.SignupResult | None]:
        lst = await bootstrap.get_list(application, list_slug)
        lst_cfg = topics.list_config(application, list_slug)
        prefs = readers.ReaderPrefs(
            name=name,
            cadence=cadence,
            weekday=_weekday_option(weekday),
            send_hour=hour,
            timezone=timezone,
            topics=topics.parse_choice(lst_cfg, topic_choice) if lst_cfg else None,
        )
        now = datetime.now(UTC)
        async with application.db.write() as s:
            _, key = readers.normalize_address(email)
            if await readers_store.subscriber_by_email(
                s, key
            ) is None and await retention_store.erased_reader(s, key):
                raise UsageError(
                    f"{email} was erased on request: only the reader can subscribe again (double opt-in)"
                )
            added = await readers.add_subscription(
                s, lst, email, prefs, confirmed=confirmed, now=now, consent=readers.Consent(source="cli")
            )
        # Pending means asked: the confirmation goes out under the web's limits.
        asked = None if confirmed else await signup.ask_pending(application, email, [lst.slug], now)
        return added, asked

    result, asked = with_app(go)
    if result.created or result.changed:
        out.print(f"{email} subscribed to {list_slug}: {_state(confirmed, asked)}", highlight=False)
    else:
        out.print(f"{email} was already subscribed to {list_slug}; nothing changed", highlight=False)
        if asked is not None and (asked.mailed or asked.waiting):
            out.print(_state(confirmed, asked), highlight=False)


def _state(confirmed: bool, asked: signup.SignupResult | None) -> str:
    if confirmed or asked is None:
        return "confirmed"
    if asked.mailed:
        return "pending; a confirmation email is queued (a running `digest run`, `web` or `worker` sends it)"
    if asked.waiting:
        when = min(at for _, at in asked.waiting)
        return (
            f"pending; a confirmation email went out at {minute(when)} UTC and its link still works"
            " (at most one a day: `digest subscribers resend-confirmation` after that)"
        )
    return "pending; no confirmation email: this address is suppressed"


@subscribers_app.command("resend-confirmation")
def resend_confirmation(
    email: str,
    list_slug: Annotated[
        str | None, typer.Option("--list", help="Only this list (default: every pending one).")
    ] = None,
) -> None:
    """Mail a pending reader a fresh confirmation link (at most one a day per list, as on the web).

    Example: digest subscribers resend-confirmation ann@example.com --list demo
    """

    async def go(application: bootstrap.App) -> signup.SignupResult:
        if list_slug:
            await bootstrap.get_list(application, list_slug)
        return await signup.ask_pending(
            application, email, [list_slug] if list_slug else None, datetime.now(UTC)
        )

    asked = with_app(go)
    if not asked.subscription_ids:
        fail(UsageError(f"{email} has no pending subscription{' to ' + list_slug if list_slug else ''}"))
    out.print(f"{email}: {_state(False, asked)}", highlight=False)


async def _export_rows(application: bootstrap.App, list_slug: str | None) -> list[dict[str, str]]:
    lst = await bootstrap.get_list(application, list_slug) if list_slug else None
    return await readers_io.export_rows(application, lst.id if lst else None)


@subscribers_app.command("list")
def list_(
    list_slug: Annotated[str | None, typer.Option("--list", help="Only this list.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List readers and their subscriptions.

    Example: digest subscribers list --list demo
    """
    rows = with_app(lambda application: _export_rows(application, list_slug))
    if as_json:
        print_json(rows)
        return
    table = Table("email", "name", "list", "status", "cadence", "since")
    for row in rows:
        table.add_row(
            row["email"], row["name"], row["list"], row["status"], row["cadence"], row["signup_at"][:16]
        )
    print_table(table)
    out.print(f"{len(rows)} subscription(s)")


def _local(when: datetime | None, tz: str) -> str:
    if when is None:
        return "-"
    return f"{when:%Y-%m-%d %H:%M} UTC ({when.astimezone(ZoneInfo(tz)):%Y-%m-%d %H:%M %Z})"


def _reader_json(found: reports.ReaderReport) -> dict[str, object]:
    reader = found.reader
    return {
        "email": reader.email,
        "name": reader.name,
        "status": reader.status,
        "bounce_score": reader.bounce_score,
        "subscriptions": [
            {
                "list": lst.slug,
                "status": sub.status,
                "cadence": sub.cadence,
                "weekday": WEEKDAYS[sub.weekday] if sub.weekday is not None else None,
                "send_hour": sub.send_hour,
                "timezone": readers.reader_schedule(sub, lst)[1],
                "next_due_at": sub.next_due_at,
                "signup_at": sub.signup_at,
                "signup_ip": sub.signup_ip,
                "signup_source": sub.signup_source,
                "signup_user_agent": sub.signup_user_agent,
                "consent_text_version": sub.consent_text_version,
                "confirmed_at": sub.confirmed_at,
                "confirm_ip": sub.confirm_ip,
                "unsubscribed_at": sub.unsubscribed_at,
                "unsubscribe_method": sub.unsubscribe_method,
                "watermark": sub.watermark,
            }
            for sub, lst in found.subscriptions
        ],
        "events": [
            {
                "created_at": e.created_at,
                "kind": e.kind,
                "why": e.detail.get("why"),
                "detail": {k: v for k, v in e.detail.items() if k not in ("raw", "why")},
            }
            for e in found.events
        ],
        "deliveries": [
            {
                "id": d.id,
                "kind": d.kind,
                "status": d.status,
                "attempts": d.attempts,
                "smtp_code": d.smtp_code,
                "smtp_reply": d.smtp_reply,
                "sent_at": d.sent_at,
            }
            for d in found.deliveries
        ],
    }


@subscribers_app.command("show")
def show(email: str, as_json: JsonOption = False) -> None:
    """A reader's subscriptions, consent record, events and last deliveries.

    Example: digest subscribers show ann@example.com
    """
    found = with_app(lambda application: reports.reader_report(application, email))
    if found is None:
        fail(UsageError(f"no reader {email}"))
    if as_json:
        print_json(_reader_json(found))
        return
    reader = found.reader
    out.print(
        f"[bold]{escape(reader.email)}[/bold] {escape(reader.name)}  status: {reader.status}"
        f"  bounce score: {reader.bounce_score}",
        highlight=False,
        markup=True,
    )
    for sub, lst in found.subscriptions:
        _, tz = readers.reader_schedule(sub, lst)
        table = Table(title=f"list {lst.slug}", show_header=False)
        table.add_row("status", sub.status)
        table.add_row(
            "cadence",
            f"{sub.cadence}"
            + (f" {WEEKDAYS[sub.weekday]}" if sub.weekday is not None else "")
            + (f" at {sub.send_hour}:00" if sub.send_hour is not None else "")
            + f" ({tz})",
        )
        table.add_row("next digest", _local(sub.next_due_at, tz))
        table.add_row(
            "signed up",
            f"{_local(sub.signup_at, tz)} ip={sub.signup_ip or '-'} source={sub.signup_source or '-'}"
            f" ua={sub.signup_user_agent or '-'} consent={sub.consent_text_version or '-'}",
        )
        table.add_row("confirmed", f"{_local(sub.confirmed_at, tz)} ip={sub.confirm_ip or '-'}")
        if sub.unsubscribed_at:
            table.add_row("unsubscribed", f"{_local(sub.unsubscribed_at, tz)} by {sub.unsubscribe_method}")
        table.add_row("watermark", str(sub.watermark))
        print_table(table)
    events = Table("time (UTC)", "event", "why", "detail", title="events")
    for e in found.events:
        # raw bounces can be 64 KB; `why` has its own column: how a bounce was classed, and on what
        shown = {k: v for k, v in e.detail.items() if k not in ("raw", "why")}
        why = str(e.detail.get("why") or "")
        events.add_row(
            f"{e.created_at:%Y-%m-%d %H:%M:%S}", e.kind, escape(why), json.dumps(shown, default=str)
        )
    print_table(events)
    deliveries = Table("id", "kind", "status", "attempts", "sent (UTC)", "reply", title="last deliveries")
    for d in found.deliveries:
        deliveries.add_row(
            str(d.id), d.kind, d.status, str(d.attempts), minute(d.sent_at), d.smtp_reply or ""
        )
    print_table(deliveries)


@subscribers_app.command("import")
def import_(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV with an email column; optional name, timezone, cadence, weekday, "
            "send_hour, signup_ip, signup_source, consent_text_version."
        ),
    ],
    list_slug: Annotated[str, typer.Option("--list")],
    confirmed: Annotated[
        bool, typer.Option("--confirmed", help="You hold consent for these readers.")
    ] = False,
    apply: Annotated[bool, typer.Option("--apply", help="Write; without it this is a dry run.")] = False,
) -> None:
    """Import readers from CSV; a dry run unless --apply. Bad rows are reported by line.

    Example: digest subscribers import readers.csv --list demo --confirmed --apply
    """
    if not file.is_file():
        fail(UsageError(f"{file}: no such file"))

    async def go(application: bootstrap.App) -> readers_io.ImportReport:
        lst = await bootstrap.get_list(application, list_slug)
        with file.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
            return await readers_io.import_csv(
                application, lst, handle, confirmed=confirmed, apply=apply, now=datetime.now(UTC)
            )

    report = with_app(go)
    for line, reason in sorted(report.bad):
        err.print(f"line {line}: {reason}", highlight=False, soft_wrap=True)
    err.file.flush()  # bad rows first, then the summary, also when both streams go to one file
    verb = "imported" if apply else "would import (dry run; add --apply to write)"
    out.print(
        f"{verb}: {report.added} new, {report.updated} updated, {report.unchanged} unchanged, "
        f"{len(report.bad)} bad row(s)",
        highlight=False,
    )
    if apply and not confirmed:
        out.print(
            f"confirmation emails queued for {report.asked} pending reader(s)"
            + (f"; {report.waiting} had one less than a day ago" if report.waiting else ""),
            highlight=False,
        )


@subscribers_app.command("export")
def export(
    list_slug: Annotated[str | None, typer.Option("--list")] = None,
    output: Annotated[Path | None, typer.Option("--out", help="Write to a file instead of stdout.")] = None,
) -> None:
    """Export readers with status and consent as CSV.

    Example: digest subscribers export --list demo > readers.csv
    """
    rows = with_app(lambda application: _export_rows(application, list_slug))
    handle = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
    try:
        writer = csv.DictWriter(handle, fieldnames=readers_io.EXPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    finally:
        if output:
            handle.close()


@subscribers_app.command("unsuppress")
def unsuppress(
    email: str,
    reason: Annotated[str, typer.Option("--reason", help="Why; recorded with the reader.")],
) -> None:
    """Let a suppressed reader (bounced, complained, suppressed) receive mail again.

    Example: digest subscribers unsuppress ann@example.com --reason "mailbox fixed, she asked"
    """
    from digest import bounce_admin

    before = with_app(
        lambda application: bounce_admin.unsuppress(application, email, reason, datetime.now(UTC))
    )
    out.print(f"{email} is active again (was {before}); reason recorded", highlight=False)


@subscribers_app.command("remove")
def remove(
    email: str,
    yes: Annotated[bool, typer.Option("--yes", help="Required: erasure cannot be undone.")] = False,
) -> None:
    """Erase a reader's personal data on request; only a hash stays, so imports cannot add them back.

    The reader may sign up again themselves (double opt-in is new consent).

    Example: digest subscribers remove ann@example.com --yes
    """
    if not yes:
        fail(UsageError("say --yes: erasing a reader's data cannot be undone"))
    from digest import retention

    erased = with_app(lambda application: retention.erase_reader(application, email, datetime.now(UTC)))
    out.print(
        f"{email} erased: {erased.subscriptions} subscription(s) ended,"
        f" {erased.deliveries} delivery record(s)"
        f" scrubbed; kept only {erased.marker}",
        highlight=False,
    )
