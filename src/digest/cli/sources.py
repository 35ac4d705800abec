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
from digest.cli.output import JsonOption, err, fail, minute, out, print_json
from digest.cli.runner import config, run, with_app
from digest.errors import UsageError

sources_app = typer.Typer(help="See sources and try one without storing anything.", no_args_is_help=True)


def say_ingest(r: sources.IngestReport) -> None:
    if r.error:
        err.print(
            f"[yellow]source {escape(r.source)}: {escape(r.error)}[/yellow]", highlight=False, markup=True
        )
        return
    note = " (not modified)" if r.not_modified else ""
    out.print(f"source {r.source}: {r.new} new, {r.seen} already known{note}", highlight=False)
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
    out.print(table)


@sources_app.command("check")
def check(name: Annotated[str, typer.Argument(metavar="NAME")], as_json: JsonOption = False) -> None:
    """Fetch one source once and show what would be ingested, with warnings; stores nothing.

    Example: digest sources check seeds
    """
    from digest import ingest as fetching

    cfg = config()
    src = next((c for c in cfg.sources if c.name == name), None)
    if src is None:
        fail(
            UsageError(f"no source {name!r} (configured: {', '.join(c.name for c in cfg.sources) or 'none'})")
        )
    if src.kind == "api":
        fail(UsageError(f"source {name!r} is of kind api: articles are posted to it, not fetched"))
    location = src.location
    if src.kind == "directory" or not src.url:
        location = str(bootstrap.resolve_path(cfg, location))
    result = run(lambda: fetching.fetch_source(src.name, src.kind, location, now=datetime.now(UTC)))
    if as_json:
        print_json(
            {
                "source": name,
                "articles": [
                    {"title": a.title, "url": a.url, "published_at": a.published_at, "author": a.author}
                    for a in result.articles
                ],
                "warnings": result.warnings,
            }
        )
        return
    table = Table("published (UTC)", "title", "url", title=f"{name}: {len(result.articles)} article(s)")
    for a in result.articles:
        table.add_row(f"{a.published_at:%Y-%m-%d %H:%M}", a.title[:70], (a.url or "-")[:60])
    out.print(table)
    for w in result.warnings:
        out.print(f"warning: {w}", highlight=False)
    out.print("nothing was stored (this was a check)", highlight=False)
