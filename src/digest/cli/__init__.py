"""The `digest` command line: what an operator types.

The root app registers the commands that stand alone and mounts one sub-app per group:

    init, migrate, run, web, scheduler, inbound, doctor, prune   operations.py
    ingest, sources                                             sources.py
    preview, send-test, send, tick, worker                      sending.py
    status, lists                                               overview.py
    topics                                                      topics.py
    subscribers                                                 readers.py
    editions                                                    editions.py
    bounces                                                     bounces.py
    alerts                                                      operations.py

Commands format what the domain modules and `digest.reports` return; `output` and `runner` hold
what they share: printing, exit codes, the config and the App.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from digest.cli import bounces, editions, operations, overview, readers, runner, sending, sources, topics
from digest.cli.output import err
from digest.errors import DigestError

app = typer.Typer(
    help="digest: email digests of what is new, per reader, sent correctly.",
    no_args_is_help=True,
    # Plain help: Rich markup would eat bracketed config names such as "[capture] port".
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        print(f"digest {version('digest')}")
        raise typer.Exit()


@app.callback()
def _main(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML config file (default: $DIGEST_CONFIG or ./digest.toml)."),
    ] = None,
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    runner.start(config)


# Help lists commands in the order they are registered here.
app.command("init")(operations.init)
app.command("migrate")(operations.migrate)
app.command("ingest")(sources.ingest)
app.command("preview")(sending.preview)
app.command("send-test")(sending.send_test)
app.command("send")(sending.send)
app.command("tick")(sending.tick)
app.command("worker")(sending.worker)
app.command("status")(overview.status)
app.command("run")(operations.run_all)
app.command("web")(operations.web)
app.command("scheduler")(operations.scheduler)
app.command("inbound")(operations.inbound)
app.command("doctor")(operations.doctor)
app.command("prune")(operations.prune)
app.add_typer(readers.subscribers_app, name="subscribers")
app.add_typer(editions.editions_app, name="editions")
app.add_typer(bounces.bounces_app, name="bounces")
app.add_typer(sources.sources_app, name="sources")
app.add_typer(overview.lists_app, name="lists")
app.add_typer(topics.topics_app, name="topics")
app.add_typer(operations.alerts_app, name="alerts")


def main() -> None:
    try:
        app()
    except DigestError as exc:  # raised while Typer parsed options (e.g. the config)
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, markup=True)
        sys.exit(exc.exit_code)
