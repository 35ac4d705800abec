"""`digest topics`: re-match a list's recent articles after its topic rules changed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from digest import bootstrap, topics
from digest.cli.output import JsonOption, out, print_json
from digest.cli.runner import with_app

topics_app = typer.Typer(help="Re-match articles to a list's topics.", no_args_is_help=True)


@topics_app.command("rematch")
def rematch(
    slug: Annotated[str, typer.Argument(metavar="LIST")],
    apply: Annotated[
        bool, typer.Option("--apply", help="Store the new matches (default: a dry run).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Match the list's articles within its max_age against the config's topic rules again, and
    say which links would change; only --apply stores them.

    Example: digest topics rematch demo --apply
    """

    async def go(application: bootstrap.App) -> topics.Rematch:
        lst = await bootstrap.get_list(application, slug)
        return await topics.rematch(application, lst, datetime.now(UTC), apply=apply)

    r = with_app(go)
    if as_json:
        print_json(
            {
                "list": r.list_slug,
                "articles": r.articles,
                "applied": r.applied,
                "added": [{"article_id": a, "topic": t} for a, t in r.added],
                "removed": [{"article_id": a, "topic": t} for a, t in r.removed],
            }
        )
        return
    for article_id, topic in r.added:
        out.print(f"+ article {article_id} joins {topic}", highlight=False)
    for article_id, topic in r.removed:
        out.print(f"- article {article_id} leaves {topic}", highlight=False)
    verb = "changed" if r.applied else "would change (dry run; --apply stores it)"
    out.print(
        f"{r.list_slug}: {r.articles} recent article(s) matched again; "
        f"{len(r.added) + len(r.removed)} topic link(s) {verb}",
        highlight=False,
    )
