"""Sources from the command line: `digest ingest`, and `digest sources` to see them or try one.

`ingest` is a command of the root app, registered in `digest.cli`.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from digest import bootstrap, reports, sources
from digest.cli.output import JsonOption, err, minute, out, print_json, print_table
from digest.cli.runner import with_app

sources_app = typer.Typer(help="See sources and try one without storing anything.", no_args_is_help=True)


def say_ingest(r: sources.IngestReport) -> None:
    if r.error:
        err.print(
            f"[yellow]source {escape(r.source)}: {escape(r.error)}[/yellow]", highlight=False, markup=True
        )
        return
    if r.not_modified:
        out.print(f"source {r.source}: not modified", highlight=False)
        return
    counts = (
        f"{r.new} new, {r.updated} updated, {r.known} already known, {r.linked} linked from another source"
    )
    out.print(f"source {r.source}: {counts}, {len(r.refused)} refused", highlight=False)
    for line in r.refused:
        out.print(f"  refused: {line}", highlight=False)
    for w in r.warnings:
        out.print(f"  warning: {w}", highlight=False)


def ingest(
    source: Annotated[str | None, typer.Option("--source", help="Only this source.")] = None,
) -> None:
    """Fetch sources now; a broken source is reported and the rest still ingest.

    Example: digest ingest --source seeds
    """

    async def go(application: bootstrap.App) -> list[sources.IngestReport]:
        return await sources.ingest_sources(application, datetime.now(UTC), source)

    ingested = with_app(go)
    for r in ingested:
        say_ingest(r)
    if ingested and all(r.error for r in ingested):
        raise typer.Exit(1)


@sources_app.command("list")
def list_(as_json: JsonOption = False) -> None:
    """Sources with their last fetch, last success and last error.

    Example: digest sources list --json
    """
    rows = with_app(reports.source_states)
    if as_json:
        print_json([dataclasses.asdict(r) for r in rows])
        return
    table = Table(
        "source", "kind", "location", "every", "last fetch (UTC)", "last success (UTC)", "last error"
    )
    for r in rows:
        table.add_row(
            r.name,
            r.kind,
            r.location[:50],
            str(timedelta(seconds=r.interval_seconds)),
            minute(r.last_fetched_at),
            minute(r.last_success_at),
            (r.last_error or "")[:60],
        )
    print_table(table)


@sources_app.command("check")
def check(name: Annotated[str, typer.Argument(metavar="NAME")], as_json: JsonOption = False) -> None:
    """Fetch one source once and show what ingesting it would do, item by item; stores nothing.

    Example: digest sources check seeds
    """
    result, would = with_app(lambda application: sources.check_source(application, name, datetime.now(UTC)))
    if as_json:
        print_json(
            {
                "source": name,
                "articles": [
                    {"title": a.title, "url": a.url, "published_at": a.published_at, "author": a.author}
                    for a in result.articles
                ],
                "would_be": dataclasses.asdict(would),
                "refused": result.refused,
                "warnings": result.warnings,
            }
        )
        return
    table = Table("published (UTC)", "title", "url", title=f"{name}: {len(result.articles)} article(s)")
    for a in result.articles:
        table.add_row(f"{a.published_at:%Y-%m-%d %H:%M}", a.title[:70], (a.url or "-")[:60])
    print_table(table)
    out.print(
        f"ingesting would store {would.new} new, update {would.updated}, find {would.known} already known "
        f"and link {would.linked} from another source; {len(result.refused)} refused",
        highlight=False,
    )
    for line in result.refused:
        out.print(f"refused: {line}", highlight=False)
    for w in result.warnings:
        out.print(f"warning: {w}", highlight=False)
    out.print("nothing was stored (this was a check)", highlight=False)
