"""Running the service: the schema, the long-running processes, checks, pruning and alerts.

All but `digest alerts` are commands of the root app, registered in `digest.cli`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.markup import escape
from rich.table import Table

from digest import bootstrap, sources, store
from digest.cli.output import JsonOption, fail, out, print_json, print_table
from digest.cli.runner import config, config_path, run, serve, with_app
from digest.cli.sources import say_ingest
from digest.config import load_config
from digest.errors import DigestError, UsageError
from digest.store import migrate as migrate_store

alerts_app = typer.Typer(help="Check where alerts go.", no_args_is_help=True)


def init() -> None:
    """Create or upgrade the schema, sync sources and lists, and ingest once.

    Exits 1 when a configured source could not be ingested (the schema is ready all the same).

    Example: digest init
    """
    _migrate_and_say()

    async def go(application: bootstrap.App) -> list[sources.IngestReport]:
        return await sources.ingest_sources(application, datetime.now(UTC))

    ingested = with_app(go)
    for r in ingested:
        say_ingest(r)
    failed = ", ".join(r.source for r in ingested if r.error)
    if failed:
        fail(DigestError(f"the schema is ready, but these sources failed to ingest: {failed}"))


def migrate() -> None:
    """Upgrade the database schema to this version of digest.

    Example: digest migrate
    """
    _migrate_and_say()


def _migrate_and_say() -> None:
    """`init` and `migrate` report the schema the same way: upgraded from what, or up to date."""
    cfg = config()
    try:
        before, after = migrate_store.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    except Exception as exc:
        fail(exc)
    out.print(
        f"schema: {before or 'empty'} -> {after}" if before != after else f"schema: up to date ({after})"
    )


def run_all() -> None:
    """Run everything in one process: web, scheduler, delivery worker (and the capture server).

    Example: digest run
    """
    serve(web=True, scheduler=True, worker=True)


def web() -> None:
    """Serve the web pages and API (and deliver confirmation mail).

    Example: digest web
    """
    serve(web=True)


def scheduler() -> None:
    """Run the scheduler alone: ingest on each source's interval, compose every tick.

    Example: digest scheduler
    """
    serve(scheduler=True)


def inbound() -> None:
    """Run the bounce inbox alone: an SMTP listener on [bounce] listen for bounces+ and unsub+ mail.

    Example: digest inbound
    """
    if not config().bounce.listen:
        fail(UsageError("set [bounce] listen (host:port, e.g. 127.0.0.1:2525) to run the bounce inbox"))
    serve(inbox=True)


def doctor(as_json: JsonOption = False) -> None:
    """Check config, database, templates, relays (EHLO, TLS, certificate), DKIM, DNS and alignment.

    Exits 1 when a check fails, 0 when only warnings remain. Works offline except for the relays.

    Example: digest doctor
    """
    from digest import doctor as checks
    from digest.errors import ConfigError

    try:
        cfg = load_config(config_path())
    except ConfigError as exc:
        findings = [checks.Finding("fail", "config", str(exc), "fix the key named above")]
    else:
        findings = run(lambda: checks.run_checks(cfg))
    failed = sum(f.level == "fail" for f in findings)
    warned = sum(f.level == "warn" for f in findings)
    if as_json:
        print_json([vars(f) for f in findings])
    else:
        style = {"ok": "green", "warn": "yellow", "fail": "red"}
        for f in findings:
            out.print(
                f"[{style[f.level]}]{f.level:>4}[/{style[f.level]}]  {escape(f.check)}: {escape(f.message)}",
                highlight=False,
                markup=True,
                soft_wrap=True,
            )
            if f.fix and f.level != "ok":
                out.print(f"        fix: {f.fix}", highlight=False, soft_wrap=True, markup=False)
        out.print(f"{failed} failure(s), {warned} warning(s)", highlight=False)
    if failed:
        raise typer.Exit(1)


def prune(as_json: JsonOption = False) -> None:
    """Delete history past [retention]: deliveries, events, raw bounces, editions' bodies (in batches).

    Runs daily in `digest scheduler` too. Suppressions and erasures are kept.

    Example: digest prune
    """
    from digest import retention

    report = with_app(lambda application: retention.prune(application, datetime.now(UTC)))
    if as_json:
        print_json({**report.counts(), "batches": report.batches, "cutoffs": report.cutoffs})
        return
    table = Table("what", "rows", "older than (UTC)")
    for (name, n), cutoff in zip(
        report.counts().items(),
        [report.cutoffs[k] for k in ("deliveries", "events", "raw_bounces", "events", "edition_bodies")],
        strict=True,
    ):
        table.add_row(name.replace("_", " "), str(n), f"{cutoff:%Y-%m-%d %H:%M}")
    print_table(table)


@alerts_app.command("test")
def alerts_test() -> None:
    """Send a test alert to [alerts] email and webhook (ignores the rate limit).

    Example: digest alerts test
    """
    from digest import alerts
    from digest.alerting import Alert

    async def go(application: bootstrap.App) -> bool:
        notifier = alerts.Notifier(application)
        if not notifier.enabled:
            raise UsageError("set [alerts] email and/or webhook first")
        alert = Alert("test", "test alert", "digest alerts test: alerts reach you.", datetime.now(UTC))
        return await notifier.notify(alert, limit=False)

    if not with_app(go):
        fail(DigestError("the test alert could not be delivered (see the warnings above)"))
    out.print("test alert sent", highlight=False)
