"""`digest editions`: list and show editions; pause, resume, cancel or resend one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from digest import bootstrap, editions, reports
from digest.cli.output import JsonOption, counts_cell, fail, out, print_json, print_table
from digest.cli.runner import with_app
from digest.errors import UsageError

editions_app = typer.Typer(help="Pause, resume, cancel or resend an edition.", no_args_is_help=True)

EditionId = Annotated[int, typer.Argument(metavar="ID")]


@editions_app.command("pause")
def pause(
    edition_id: EditionId,
    reason: Annotated[str, typer.Option("--reason")] = "paused by the operator",
) -> None:
    """Stop sending an edition; messages in flight finish.

    Example: digest editions pause 12 --reason "wrong article"
    """
    with_app(lambda a: editions.pause_edition(a, edition_id, reason))
    out.print(f"edition {edition_id} paused", highlight=False)


@editions_app.command("resume")
def resume(edition_id: EditionId) -> None:
    """Resume a paused edition (paused by you or by the circuit breaker).

    Example: digest editions resume 12
    """
    with_app(lambda a: editions.resume_edition(a, edition_id, datetime.now(UTC)))
    out.print(
        f"edition {edition_id} resumed; `digest worker` (or `digest run`) sends the rest", highlight=False
    )


@editions_app.command("cancel")
def cancel(edition_id: EditionId) -> None:
    """Cancel what has not gone out; those readers get the articles in their next digest.

    Example: digest editions cancel 12
    """
    n = with_app(lambda a: editions.cancel_edition(a, edition_id, datetime.now(UTC)))
    out.print(f"edition {edition_id} cancelled: {n} unsent message(s) will not go out", highlight=False)


@editions_app.command("resend")
def resend(
    edition_id: EditionId,
    only_unsent: Annotated[
        bool, typer.Option("--only-unsent", help="Required: only what never arrived.")
    ] = False,
    include_unknown: Annotated[
        bool, typer.Option("--include-unknown", help="Also resend messages whose outcome is unknown.")
    ] = False,
) -> None:
    """Queue again the messages of an edition that failed or were cancelled (same Message-ID).

    Example: digest editions resend 12 --only-unsent --include-unknown
    """
    if not only_unsent:
        fail(UsageError("say --only-unsent: digest never resends messages that were delivered"))
    n = with_app(lambda a: editions.resend_edition(a, edition_id, include_unknown, datetime.now(UTC)))
    out.print(f"edition {edition_id}: {n} message(s) queued again", highlight=False)


@editions_app.command("list")
def list_(
    list_slug: Annotated[str | None, typer.Option("--list", help="Only this list.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 20,
    as_json: JsonOption = False,
) -> None:
    """Recent editions with their delivery counts by status.

    Example: digest editions list --list demo --limit 50
    """

    async def go(application: bootstrap.App) -> list[reports.EditionSummary]:
        lst = await bootstrap.get_list(application, list_slug) if list_slug else None
        return await reports.recent_editions(application, lst.id if lst else None, limit)

    rows = with_app(go)
    if as_json:
        print_json(
            [
                {
                    "id": e.id,
                    "list": e.list_slug,
                    "kind": e.kind,
                    "created_at": e.created_at,
                    "status": e.status,
                    "subject": e.subject,
                    "deliveries": e.deliveries,
                }
                for e in rows
            ]
        )
        return
    table = Table("edition", "list", "kind", "created (UTC)", "status", "deliveries", "subject")
    for e in rows:
        table.add_row(
            str(e.id),
            e.list_slug,
            e.kind,
            f"{e.created_at:%Y-%m-%d %H:%M}",
            e.status,
            counts_cell(e.deliveries) or "-",
            e.subject[:50],
        )
    print_table(table)


def _rate(r: reports.EditionReport) -> float | None:
    rate = r.rate_per_second
    return None if rate is None else round(rate, 2)


def _report_json(r: reports.EditionReport) -> dict[str, object]:
    e = r.edition
    return {
        "id": e.id,
        "list": e.list_slug,
        "kind": e.kind,
        "status": e.status,
        "pause_reason": e.pause_reason,
        "created_at": e.created_at,
        "subject": e.subject,
        "articles": [{"id": a.id, "title": a.title, "url": a.url} for a in r.articles],
        "more": r.more,
        "deliveries": e.deliveries,
        "first_sent_at": r.first_sent_at,
        "last_sent_at": r.last_sent_at,
        "rate_per_second": _rate(r),
        "errors": [
            {"status": g.status, "code": g.code, "reply": g.reply, "count": g.count} for g in r.errors
        ],
        "recipients": [
            {"address": x.address, "status": x.status, "code": x.code, "reply": x.reply} for x in r.recipients
        ],
    }


@editions_app.command("show")
def show(
    edition_id: EditionId,
    recipients: Annotated[
        bool, typer.Option("--recipients", help="Also list every address and its status.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """One edition: its articles, deliveries by status, send rate, and errors grouped by reply.

    Example: digest editions show 12 --recipients
    """
    r = with_app(lambda a: reports.edition_report(a, edition_id, recipients=recipients))
    if r is None:
        fail(UsageError(f"no edition {edition_id} (see `digest editions list`)"))
    if as_json:
        print_json(_report_json(r))
        return
    e = r.edition
    out.print(
        f"[bold]edition {e.id}[/bold] ({e.list_slug}, {e.kind}) {e.status}"
        + (f": {escape(e.pause_reason)}" if e.pause_reason else "")
        + f"\ncreated {e.created_at:%Y-%m-%d %H:%M} UTC; subject: {escape(e.subject)}",
        highlight=False,
        markup=True,
    )
    articles = Table("article", "title", "url", title=f"{len(r.articles)} article(s), {r.more} more")
    for a in r.articles:
        articles.add_row(str(a.id), a.title, a.url or "-")
    print_table(articles)
    counts = Table("status", "messages", title="deliveries")
    for status, n in sorted(e.deliveries.items()):
        counts.add_row(status, str(n))
    print_table(counts)
    if r.first_sent_at and r.last_sent_at:
        rate = _rate(r)
        out.print(
            f"sent from {r.first_sent_at:%Y-%m-%d %H:%M:%S} to {r.last_sent_at:%H:%M:%S} UTC,"
            f" rate {f'{rate}/s' if rate else '-'}",
            highlight=False,
        )
    if r.errors:
        errors = Table("status", "code", "messages", "reply", title="errors by reply")
        for g in r.errors:
            errors.add_row(g.status, str(g.code or "-"), str(g.count), g.reply)
        print_table(errors)
    if recipients:
        who = Table("address", "status", "code", "reply", title="recipients")
        for x in r.recipients:
            who.add_row(x.address, x.status, str(x.code or "-"), x.reply or "")
        print_table(who)
