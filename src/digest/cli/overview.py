"""The service at a glance: `digest status`, and `digest lists` with readers and next digests.

`status` is a command of the root app, registered in `digest.cli`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from digest import bootstrap, reports
from digest.cli.output import JsonOption, counts_cell, minute, out, print_json, print_table
from digest.cli.runner import with_app

lists_app = typer.Typer(
    help="Lists: readers by status and cadence, last and next editions.", no_args_is_help=True
)


def _status_json(st: reports.Status) -> dict[str, object]:
    return {
        "sent_last_minute": st.queue.sent_last_minute,
        "sent_last_hour": st.sent_last_hour,
        "queue_depth": st.queue.depth,
        "oldest_due_seconds": st.queue.oldest_wait_seconds,
        "editions": [
            {
                "id": e.id,
                "list": e.list_slug,
                "kind": e.kind,
                "created_at": e.created_at,
                "status": e.status,
                "pause_reason": e.pause_reason,
                "subject": e.subject,
                "deliveries": e.deliveries,
            }
            for e in st.editions
        ],
        "deliveries": [
            {"kind": k, "status": status, "count": n} for (k, status), n in sorted(st.deliveries.items())
        ],
    }


def _editions_table(editions: list[reports.EditionSummary]) -> Table:
    # Short headers: eleven columns still fit 80 on a terminal.
    table = Table(
        "id", "list", "kind", "created UTC", "status", "sent", "pend", "defer", "fail", "other", "subject"
    )
    for e in editions:
        counts = e.deliveries
        other = sum(
            n for k, n in counts.items() if k not in ("sent", "pending", "sending", "deferred", "failed")
        )
        table.add_row(
            str(e.id),
            e.list_slug,
            e.kind,
            f"{e.created_at:%Y-%m-%d %H:%M}",
            e.status,
            str(counts.get("sent", 0)),
            str(counts.get("pending", 0) + counts.get("sending", 0)),
            str(counts.get("deferred", 0)),
            str(counts.get("failed", 0)),
            str(other),
            e.subject,
        )
    return table


def status(
    list_slug: Annotated[str | None, typer.Argument(metavar="[LIST]")] = None,
    as_json: JsonOption = False,
) -> None:
    """Recent editions with their deliveries by status, the queue and the current send rate.

    Example: digest status demo --json
    """

    async def go(application: bootstrap.App) -> reports.Status:
        lst = await bootstrap.get_list(application, list_slug) if list_slug else None
        return await reports.status(application, datetime.now(UTC), lst.id if lst else None)

    st = with_app(go)
    if as_json:
        print_json(_status_json(st))
        return
    print_table(_editions_table(st.editions))
    summary = ", ".join(f"{kind}/{status}: {n}" for (kind, status), n in sorted(st.deliveries.items()))
    out.print(f"all deliveries: {summary or 'none yet'}", highlight=False)
    queue = st.queue
    out.print(
        f"send rate: {queue.sent_last_minute} in the last minute"
        f" ({queue.sent_last_minute / 60:.1f}/s), "
        f"{st.sent_last_hour} in the last hour; queue: {queue.depth} outstanding"
        + (f", oldest due for {timedelta(seconds=int(queue.oldest_wait_seconds))}" if queue.depth else ""),
        highlight=False,
    )


def _list_json(r: reports.ListReport) -> dict[str, object]:
    last = r.last_edition
    return {
        "slug": r.slug,
        "name": r.name,
        "schedule": r.schedule,
        "timezone": r.timezone,
        "public": r.public,
        "readers": r.readers.by_status,
        "confirmed_by_cadence": r.readers.confirmed_by_cadence,
        "last_edition": None
        if last is None
        else {
            "id": last.id,
            "created_at": last.created_at,
            "status": last.status,
            "subject": last.subject,
            "deliveries": last.deliveries,
        },
        "next_due_at": r.next_due_at,
        "readers_due_within_a_day_of_it": r.due_within_a_day,
        "topics": [
            {
                "slug": t.slug,
                "name": t.name,
                "description": t.description,
                "readers": t.readers,
                "articles_last_week": t.articles_last_week,
            }
            for t in r.topics
        ],
    }


@lists_app.command("list")
def list_(as_json: JsonOption = False) -> None:
    """Every active list with its readers by status and its last and next edition.

    Example: digest lists list
    """
    rows = with_app(reports.list_reports)
    if as_json:
        print_json([_list_json(r) for r in rows])
        return
    table = Table("list", "name", "confirmed", "pending", "unsubscribed", "last edition", "next digest (UTC)")
    for r in rows:
        last = r.last_edition
        by_status = r.readers.by_status
        table.add_row(
            r.slug,
            r.name,
            str(by_status.get("confirmed", 0)),
            str(by_status.get("pending", 0)),
            str(by_status.get("unsubscribed", 0)),
            f"#{last.id} {last.created_at:%Y-%m-%d %H:%M} {last.status}" if last else "-",
            minute(r.next_due_at),
        )
    print_table(table)


@lists_app.command("show")
def show(slug: Annotated[str, typer.Argument(metavar="SLUG")], as_json: JsonOption = False) -> None:
    """One list: readers by status and cadence, its last edition and when the next digests go out.

    Example: digest lists show demo --json
    """

    async def go(application: bootstrap.App) -> reports.ListReport:
        return await reports.list_report(application, await bootstrap.get_list(application, slug))

    r = with_app(go)
    if as_json:
        print_json(_list_json(r))
        return
    out.print(
        f"[bold]{escape(r.name)}[/bold] ({r.slug}): schedule {r.schedule} {r.timezone}",
        highlight=False,
        markup=True,
    )
    readers = Table("status", "readers", title="readers")
    for status_name, n in sorted(r.readers.by_status.items()):
        readers.add_row(status_name, str(n))
    print_table(readers)
    cadences = Table("cadence", "confirmed readers", title="how often")
    for cadence, n in sorted(r.readers.confirmed_by_cadence.items()):
        cadences.add_row(cadence, str(n))
    print_table(cadences)
    if r.topics:
        topic_table = Table("topic", "name", "readers", "articles (7 days)", title="topics")
        for t in r.topics:
            topic_table.add_row(t.slug, t.name, str(t.readers), str(t.articles_last_week))
        print_table(topic_table)
    last = r.last_edition
    if last:
        counts = counts_cell(last.deliveries) or "no deliveries"
        out.print(
            f"last edition: #{last.id} {last.created_at:%Y-%m-%d %H:%M} UTC {last.status}: {counts}",
            highlight=False,
        )
    else:
        out.print("last edition: none yet", highlight=False)
    if r.next_due_at:
        out.print(
            f"next digests: from {r.next_due_at:%Y-%m-%d %H:%M} UTC"
            f" ({r.due_within_a_day} reader(s) within a day of it)",
            highlight=False,
        )
    else:
        out.print("next digests: no confirmed reader", highlight=False)
