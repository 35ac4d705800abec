"""The `digest` command line: what an operator types.

User mistakes print one line and exit 2; operational failures print one line and exit 1;
`DIGEST_DEBUG=1` adds the traceback.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from digest import bootstrap, compose, delivery, editions, readers, readers_io, sources, store
from digest.config import Config, load_config
from digest.errors import DigestError, UsageError
from digest.rendering import TOKEN_PLACEHOLDER
from digest.schedule import WEEKDAYS
from digest.store import compose as compose_store
from digest.store import ledger
from digest.store import migrate as migrate_store
from digest.store import readers as readers_store
from digest.store import reports as reports_store
from digest.store import retention as retention_store
from digest.store import sources as sources_store

T = TypeVar("T")
# Markup off by default: config keys such as "[smtp] host" in messages must print as written.
out = Console(markup=False)
err = Console(stderr=True, markup=False)

app = typer.Typer(
    help="digest: email digests of what is new, per reader, sent correctly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
subscribers_app = typer.Typer(help="Add, list, show, import and export readers.", no_args_is_help=True)
app.add_typer(subscribers_app, name="subscribers")

_state: dict[str, Any] = {}


@app.callback()
def _main(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML config file (default: $DIGEST_CONFIG or ./digest.toml)."),
    ] = None,
) -> None:
    _state.clear()
    _state["config_path"] = config


def _config() -> Config:
    if "config" not in _state:
        try:
            _state["config"] = load_config(_state.get("config_path"))
        except DigestError as exc:
            _fail(exc)
    cfg: Config = _state["config"]
    return cfg


def _fail(exc: BaseException) -> None:
    code = exc.exit_code if isinstance(exc, DigestError) else 1
    if os.environ.get("DIGEST_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    message = str(exc) if isinstance(exc, DigestError) else f"{type(exc).__name__}: {exc}"
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def _run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return asyncio.run(coro_fn())
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:
        _fail(exc)
        raise  # unreachable: _fail always raises


def _with_app(fn: Callable[[bootstrap.App], Awaitable[T]], *, check: bool = True) -> T:
    async def go() -> T:
        application = await bootstrap.open_app(_config(), check=check)
        try:
            return await fn(application)
        finally:
            await application.db.close()

    return _run(go)


def _parse_now(value: str | None) -> datetime:
    if not value:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        _fail(UsageError(f"--now {value!r} is not an ISO 8601 time such as 2026-03-29T07:01:00+02:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _shifted_clock(start: datetime) -> bootstrap.Clock:
    """A clock that starts at `start` and runs at real speed (for `tick --now`)."""
    offset = start - datetime.now(UTC)
    return lambda: datetime.now(UTC) + offset


def _ensure_capture(cfg: Config) -> Any:
    """When mail goes to the capture server and none is running, run one for this command."""
    if cfg.relays or not cfg.capture.enabled:
        return None
    from digest import capture

    if capture.is_listening(cfg.capture.host, cfg.capture.port):
        return None
    return capture.start_capture(
        cfg.capture.host, cfg.capture.port, bootstrap.resolve_path(cfg, cfg.capture.directory)
    )


def _check_mail_route(cfg: Config) -> None:
    if not cfg.relays and not cfg.capture.enabled:
        _fail(UsageError("no mail route: configure [smtp] host (or [[smtp.relays]]) or enable [capture]"))


class _ProgressReporter:
    """A Rich progress bar on a terminal, a plain line at most once a second otherwise."""

    def __init__(self, total: int | None) -> None:
        self.counts: dict[str, int] = {}
        self.started = time.monotonic()
        self.last_line = 0.0
        self.progress: Progress | None = None
        if out.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]delivering"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=out,
                transient=True,
            )
            self.task = self.progress.add_task("deliver", total=total, detail="")

    def __enter__(self) -> _ProgressReporter:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        c = self.counts
        return (
            f"sent {c.get('sent', 0)}, deferred {c.get('deferred', 0)}, failed {c.get('failed', 0)}"
            f" ({c.get('sent', 0) / elapsed:.1f}/s)"
        )

    def __call__(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        if self.progress is not None:
            self.progress.update(self.task, advance=1, detail=self.line())
            return
        now = time.monotonic()
        if now - self.last_line >= 1.0:
            self.last_line = now
            err.print(f"progress: {self.line()}", highlight=False)


async def _deliver_with_progress(
    application: bootstrap.App, clock: bootstrap.Clock, *, once: bool = True
) -> delivery.DeliverStats:
    from digest import alerts

    _check_mail_route(application.cfg)
    controller = _ensure_capture(application.cfg) if once else None
    async with application.db.read() as s:
        total = await ledger.pending_count(s)
    try:
        async with alerts.watching(alerts.Notifier(application)):
            with _ProgressReporter(total if once else None) as progress:
                return await delivery.deliver_due(application, clock, once=once, on_outcome=progress)
    finally:
        if controller is not None:
            controller.stop()


def _say_stats(stats: delivery.DeliverStats) -> None:
    parts = [f"{n} {name}" for name, n in vars(stats).items() if n]
    out.print("delivered: " + (", ".join(parts) if parts else "nothing was due"))


# ---------------------------------------------------------------- schema


@app.command()
def init() -> None:
    """Create or upgrade the schema, sync sources and lists, and ingest once.

    Example: digest init
    """
    cfg = _config()
    url = store.resolve_url(cfg.database.url, cfg.base_dir)
    try:
        before, after = migrate_store.migrate(url)
    except Exception as exc:
        _fail(exc)
    out.print(f"schema: {before or 'empty'} -> {after}")

    async def go(application: bootstrap.App) -> None:
        for r in await sources.ingest_sources(application, datetime.now(UTC)):
            _say_ingest(r)

    _with_app(go)


@app.command()
def migrate() -> None:
    """Upgrade the database schema to this version of digest.

    Example: digest migrate
    """
    cfg = _config()
    try:
        before, after = migrate_store.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    except Exception as exc:
        _fail(exc)
    out.print(
        f"schema: {before or 'empty'} -> {after}" if before != after else f"schema: up to date ({after})"
    )


# ---------------------------------------------------------------- ingest


def _say_ingest(r: sources.IngestReport) -> None:
    if r.error:
        err.print(
            f"[yellow]source {escape(r.source)}: {escape(r.error)}[/yellow]", highlight=False, markup=True
        )
        return
    note = " (not modified)" if r.not_modified else ""
    out.print(f"source {r.source}: {r.new} new, {r.seen} already known{note}", highlight=False)
    for w in r.warnings:
        out.print(f"  warning: {w}", highlight=False)


@app.command("ingest")
def ingest_cmd(
    source: Annotated[str | None, typer.Option("--source", help="Only this source.")] = None,
) -> None:
    """Fetch sources now; a broken source is reported and the rest still ingest.

    Example: digest ingest --source seeds
    """

    async def go(application: bootstrap.App) -> list[sources.IngestReport]:
        return await sources.ingest_sources(application, datetime.now(UTC), source)

    reports = _with_app(go)
    for r in reports:
        _say_ingest(r)
    if reports and all(r.error for r in reports):
        raise typer.Exit(1)


# ---------------------------------------------------------------- subscribers


def _weekday_option(value: str | None) -> int | None:
    if value is None:
        return None
    v = value.strip().lower()[:3]
    if v not in WEEKDAYS:
        _fail(UsageError(f"--weekday {value!r} is not one of {', '.join(WEEKDAYS)}"))
    return WEEKDAYS.index(v)


@subscribers_app.command("add")
def subscribers_add(
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
) -> None:
    """Subscribe a reader (pending until confirmed unless --confirmed).

    Example: digest subscribers add ann@example.com --list demo --confirmed
             --cadence daily --hour 7 --timezone Europe/Berlin
    """
    prefs = readers.ReaderPrefs(
        name=name, cadence=cadence, weekday=_weekday_option(weekday), send_hour=hour, timezone=timezone
    )

    async def go(application: bootstrap.App) -> readers.AddResult:
        lst = await bootstrap.get_list(application, list_slug)
        async with application.db.write() as s:
            _, key = readers.normalize_address(email)
            if await readers_store.subscriber_by_email(
                s, key
            ) is None and await retention_store.erased_reader(s, key):
                raise UsageError(
                    f"{email} was erased on request: only the reader can subscribe again (double opt-in)"
                )
            return await readers.add_subscription(
                s,
                lst,
                email,
                prefs,
                confirmed=confirmed,
                now=datetime.now(UTC),
                consent=readers.Consent(source="cli"),
            )

    result = _with_app(go)
    state = "confirmed" if confirmed else "pending (awaiting confirmation)"
    if result.created or result.changed:
        out.print(f"{email} subscribed to {list_slug}: {state}", highlight=False)
    else:
        out.print(f"{email} was already subscribed to {list_slug}; nothing changed", highlight=False)


@subscribers_app.command("list")
def subscribers_list(
    list_slug: Annotated[str | None, typer.Option("--list", help="Only this list.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List readers and their subscriptions.

    Example: digest subscribers list --list demo
    """

    async def go(application: bootstrap.App) -> list[dict[str, str]]:
        lst = await bootstrap.get_list(application, list_slug) if list_slug else None
        return await readers_io.export_rows(application, lst.id if lst else None)

    rows = _with_app(go)
    if as_json:
        for row in rows:
            out.print_json(json.dumps(row))
        return
    table = Table("email", "name", "list", "status", "cadence", "since")
    for row in rows:
        table.add_row(
            row["email"], row["name"], row["list"], row["status"], row["cadence"], row["signup_at"][:16]
        )
    out.print(table)
    out.print(f"{len(rows)} subscription(s)")


def _local(when: datetime | None, tz: str) -> str:
    if when is None:
        return "-"
    return f"{when:%Y-%m-%d %H:%M} UTC ({when.astimezone(ZoneInfo(tz)):%Y-%m-%d %H:%M %Z})"


@subscribers_app.command("show")
def subscribers_show(email: str) -> None:
    """A reader's subscriptions, consent record, events and last deliveries.

    Example: digest subscribers show ann@example.com
    """

    async def go(application: bootstrap.App) -> None:
        _, key = readers.normalize_address(email)
        async with application.db.read() as s:
            reader = await readers_store.subscriber_by_email(s, key)
            if reader is None:
                raise UsageError(f"no reader {email}")
            subs = await readers_store.subscriptions_of(s, reader.id)
            events = await readers_store.events_of(s, reader.id)
            deliveries = await readers_store.deliveries_to(s, reader.email)
        out.print(
            f"[bold]{escape(reader.email)}[/bold] {escape(reader.name)}  status: {reader.status}"
            f"  bounce score: {reader.bounce_score}",
            highlight=False,
            markup=True,
        )
        for sub, lst in subs:
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
                table.add_row(
                    "unsubscribed", f"{_local(sub.unsubscribed_at, tz)} by {sub.unsubscribe_method}"
                )
            table.add_row("watermark", str(sub.watermark))
            out.print(table)
        et = Table("time (UTC)", "event", "detail", title="events")
        for e in events:
            shown = {k: v for k, v in e.detail.items() if k != "raw"}  # raw bounces can be 64 KB
            et.add_row(f"{e.created_at:%Y-%m-%d %H:%M:%S}", e.kind, json.dumps(shown, default=str))
        out.print(et)
        dt = Table("id", "kind", "status", "attempts", "reply", "sent (UTC)", title="last deliveries")
        for d in deliveries:
            dt.add_row(
                str(d.id),
                d.kind,
                d.status,
                str(d.attempts),
                (d.smtp_reply or "")[:60],
                f"{d.sent_at:%Y-%m-%d %H:%M}" if d.sent_at else "-",
            )
        out.print(dt)

    _with_app(go)


@subscribers_app.command("import")
def subscribers_import(
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
        _fail(UsageError(f"{file}: no such file"))

    async def go(application: bootstrap.App) -> readers_io.ImportReport:
        lst = await bootstrap.get_list(application, list_slug)
        with file.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
            return await readers_io.import_csv(
                application, lst, handle, confirmed=confirmed, apply=apply, now=datetime.now(UTC)
            )

    report = _with_app(go)
    for line, reason in report.bad:
        err.print(f"line {line}: {reason}", highlight=False, soft_wrap=True)
    verb = "imported" if apply else "would import (dry run; add --apply to write)"
    out.print(
        f"{verb}: {report.added} new, {report.updated} updated, {report.unchanged} unchanged, "
        f"{len(report.bad)} bad row(s)",
        highlight=False,
    )


@subscribers_app.command("export")
def subscribers_export(
    list_slug: Annotated[str | None, typer.Option("--list")] = None,
    output: Annotated[Path | None, typer.Option("--out", help="Write to a file instead of stdout.")] = None,
) -> None:
    """Export readers with status and consent as CSV.

    Example: digest subscribers export --list demo > readers.csv
    """

    async def go(application: bootstrap.App) -> list[dict[str, str]]:
        lst = await bootstrap.get_list(application, list_slug) if list_slug else None
        return await readers_io.export_rows(application, lst.id if lst else None)

    rows = _with_app(go)
    handle = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
    try:
        writer = csv.DictWriter(handle, fieldnames=readers_io.EXPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    finally:
        if output:
            handle.close()


# ---------------------------------------------------------------- compose and send


@app.command("preview")
def preview_cmd(
    list_slug: Annotated[str, typer.Argument(metavar="LIST")],
    as_email: Annotated[str | None, typer.Option("--as", help="Preview what this reader gets next.")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the HTML part here.")] = None,
    png_dir: Annotated[
        Path | None, typer.Option("--png", help="Write phone and desktop, light and dark PNGs here.")
    ] = None,
) -> None:
    """Show exactly what a reader would get next; sends and changes nothing.

    Example: digest preview demo --as ann@example.com --out preview.html --png previews/
    """

    async def go(application: bootstrap.App) -> tuple[compose.Draft, Any]:
        lst = await bootstrap.get_list(application, list_slug)
        return await compose.preview(application, lst, datetime.now(UTC), as_email)

    d, rendered = _with_app(go)
    if d.empty:
        out.print(
            f"nothing new for {as_email or 'a new reader'} on {list_slug}: no digest would be sent",
            highlight=False,
        )
        return
    text = rendered.text.replace(TOKEN_PLACEHOLDER, "preview")
    if png_dir:
        from digest import previews

        try:
            paths = previews.render_pngs(rendered.html.replace(TOKEN_PLACEHOLDER, "preview"), png_dir)
        except previews.PreviewError as exc:
            _fail(DigestError(str(exc)))
        out.print("\n".join(f"wrote {p}" for p in paths), highlight=False)
    if out_file:
        out_file.write_text(rendered.html.replace(TOKEN_PLACEHOLDER, "preview"), encoding="utf-8")
        out.print(
            f"subject: {rendered.subject}\n{len(d.picked)} article(s), {d.more} more;"
            f" HTML written to {out_file}",
            highlight=False,
        )
    else:
        out.print(f"Subject: {rendered.subject}\n", highlight=False)
        out.print(text, highlight=False, markup=False)


@app.command("send-test")
def send_test(
    list_slug: Annotated[str, typer.Argument(metavar="LIST")],
    to: Annotated[str, typer.Option("--to", help="Any address; gets what a new reader would get.")],
) -> None:
    """Send a list's digest to any address as a test; moves no watermark, links are inert.

    Example: digest send-test demo --to you@example.com
    """

    async def go(application: bootstrap.App) -> tuple[int, delivery.DeliverStats]:
        lst = await bootstrap.get_list(application, list_slug)
        delivery_id = await compose.queue_test(application, lst, to, datetime.now(UTC))
        return delivery_id, await _deliver_with_progress(application, bootstrap.utcnow)

    delivery_id, stats = _with_app(go)
    out.print(f"test delivery {delivery_id} to {to}", highlight=False)
    _say_stats(stats)
    if stats.sent == 0 and (stats.deferred or stats.failed or stats.unknown):
        raise typer.Exit(1)


@app.command("send")
def send_cmd(list_slug: Annotated[str, typer.Argument(metavar="LIST")]) -> None:
    """Compose for every confirmed reader with something new, and deliver now.

    Example: digest send demo
    """

    async def go(application: bootstrap.App) -> tuple[compose.ComposeReport, delivery.DeliverStats]:
        lst = await bootstrap.get_list(application, list_slug)
        report = await compose.compose(application, lst, datetime.now(UTC), manual=True)
        return report, await _deliver_with_progress(application, bootstrap.utcnow)

    report, stats = _with_app(go)
    out.print(f"composed {report.deliveries} digest(s) in {len(report.editions)} edition(s)", highlight=False)
    _say_stats(stats)


@app.command("tick")
def tick_cmd(
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit (the only mode).")] = True,
    now: Annotated[str | None, typer.Option("--now", help="Pretend it is this ISO time.")] = None,
) -> None:
    """Compose what is due at NOW, then deliver until nothing is pending.

    Example: digest tick --once --now 2026-03-29T05:01:00Z
    """
    at = _parse_now(now)

    async def go(application: bootstrap.App) -> tuple[list[compose.ComposeReport], delivery.DeliverStats]:
        reports = await compose.compose_due(application, at)
        return reports, await _deliver_with_progress(application, _shifted_clock(at))

    reports, stats = _with_app(go)
    for r in reports:
        if r.deliveries or r.skipped:
            out.print(
                f"list {r.list_slug}: {r.deliveries} composed, {r.skipped} skipped (nothing new)",
                highlight=False,
            )
    _say_stats(stats)


@app.command("worker")
def worker_cmd(
    once: Annotated[bool, typer.Option("--once", help="Drain the queue, then exit.")] = False,
) -> None:
    """Deliver queued mail (reclaims expired leases); runs until stopped unless --once.

    Example: digest worker --once
    """

    if not once:
        _setup_logging()

    async def go(application: bootstrap.App) -> delivery.DeliverStats:
        return await _deliver_with_progress(application, bootstrap.utcnow, once=once)

    _say_stats(_with_app(go))


editions_app = typer.Typer(help="Pause, resume, cancel or resend an edition.", no_args_is_help=True)
app.add_typer(editions_app, name="editions")


@editions_app.command("pause")
def editions_pause(
    edition_id: Annotated[int, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option("--reason")] = "paused by the operator",
) -> None:
    """Stop sending an edition; messages in flight finish.

    Example: digest editions pause 12 --reason "wrong article"
    """
    _with_app(lambda a: editions.pause_edition(a, edition_id, reason))
    out.print(f"edition {edition_id} paused", highlight=False)


@editions_app.command("resume")
def editions_resume(edition_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Resume a paused edition (paused by you or by the circuit breaker).

    Example: digest editions resume 12
    """
    _with_app(lambda a: editions.resume_edition(a, edition_id, datetime.now(UTC)))
    out.print(
        f"edition {edition_id} resumed; `digest worker` (or `digest run`) sends the rest", highlight=False
    )


@editions_app.command("cancel")
def editions_cancel(edition_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Cancel what has not gone out; those readers get the articles in their next digest.

    Example: digest editions cancel 12
    """
    n = _with_app(lambda a: editions.cancel_edition(a, edition_id, datetime.now(UTC)))
    out.print(f"edition {edition_id} cancelled: {n} unsent message(s) will not go out", highlight=False)


@editions_app.command("resend")
def editions_resend(
    edition_id: Annotated[int, typer.Argument(metavar="ID")],
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
        _fail(UsageError("say --only-unsent: digest never resends messages that were delivered"))
    n = _with_app(lambda a: editions.resend_edition(a, edition_id, include_unknown, datetime.now(UTC)))
    out.print(f"edition {edition_id}: {n} message(s) queued again", highlight=False)


def _print_json(value: Any) -> None:
    """One JSON document on stdout, unstyled, for scripts."""
    sys.stdout.write(json.dumps(value, default=_json_default, indent=2) + "\n")


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


JsonOption = Annotated[bool, typer.Option("--json", help="JSON on stdout instead of tables.")]


@app.command("status")
def status_cmd(
    list_slug: Annotated[str | None, typer.Argument(metavar="[LIST]")] = None,
    as_json: JsonOption = False,
) -> None:
    """Recent editions with their deliveries by status, the queue and the current send rate.

    Example: digest status demo --json
    """

    async def go(application: bootstrap.App) -> dict[str, Any]:
        lst = await bootstrap.get_list(application, list_slug) if list_slug else None
        now = datetime.now(UTC)
        async with application.db.read() as s:
            depth, oldest = await reports_store.queue_summary(s, now)
            return {
                "editions": await reports_store.edition_counts(s, lst.id if lst else None),
                "totals": await reports_store.delivery_counts(s),
                "sent_last_minute": await reports_store.sent_since(s, now - timedelta(minutes=1)),
                "sent_last_hour": await reports_store.sent_since(s, now - timedelta(hours=1)),
                "queue_depth": depth,
                "oldest_due_seconds": (now - oldest).total_seconds() if oldest else 0.0,
            }

    found = _with_app(go)
    editions, totals = found.pop("editions"), found.pop("totals")
    if as_json:
        _print_json(
            {
                **found,
                "editions": [
                    {
                        "id": e.id,
                        "list": slug,
                        "kind": e.kind,
                        "created_at": e.created_at,
                        "status": e.status,
                        "pause_reason": e.pause_reason,
                        "subject": e.subject,
                        "deliveries": counts,
                    }
                    for e, slug, counts in editions
                ],
                "deliveries": [
                    {"kind": k, "status": st, "count": n} for (k, st), n in sorted(totals.items())
                ],
            }
        )
        return
    table = Table(
        "edition",
        "list",
        "kind",
        "created (UTC)",
        "status",
        "sent",
        "pending",
        "deferred",
        "failed",
        "other",
        "subject",
    )
    for e, slug, counts in editions:
        other = sum(
            n for k, n in counts.items() if k not in ("sent", "pending", "sending", "deferred", "failed")
        )
        table.add_row(
            str(e.id),
            slug,
            e.kind,
            f"{e.created_at:%Y-%m-%d %H:%M}",
            e.status,
            str(counts.get("sent", 0)),
            str(counts.get("pending", 0) + counts.get("sending", 0)),
            str(counts.get("deferred", 0)),
            str(counts.get("failed", 0)),
            str(other),
            e.subject[:50],
        )
    out.print(table)
    summary = ", ".join(f"{kind}/{status}: {n}" for (kind, status), n in sorted(totals.items()))
    out.print(f"all deliveries: {summary or 'none yet'}", highlight=False)
    out.print(
        f"send rate: {found['sent_last_minute']} in the last minute"
        f" ({found['sent_last_minute'] / 60:.1f}/s), "
        f"{found['sent_last_hour']} in the last hour; queue: {found['queue_depth']} outstanding"
        + (
            f", oldest due for {timedelta(seconds=int(found['oldest_due_seconds']))}"
            if found["queue_depth"]
            else ""
        ),
        highlight=False,
    )


# ---------------------------------------------------------------- long-running


def _setup_logging() -> None:
    """JSON lines when stderr is not a terminal (journald, Docker), readable lines on a terminal."""
    from digest import observability

    observability.setup_logging()


@app.command("run")
def run_cmd() -> None:
    """Run everything in one process: web, scheduler, delivery worker (and the capture server).

    Example: digest run
    """
    from digest import service

    _setup_logging()
    _with_app(lambda application: service.run_all(application, web=True, scheduler=True, worker=True))


@app.command("web")
def web_cmd() -> None:
    """Serve the web pages and API (and deliver confirmation mail).

    Example: digest web
    """
    from digest import service

    _setup_logging()
    _with_app(lambda application: service.run_all(application, web=True, scheduler=False, worker=False))


@app.command("scheduler")
def scheduler_cmd() -> None:
    """Run the scheduler alone: ingest on each source's interval, compose every tick.

    Example: digest scheduler
    """
    from digest import service

    _setup_logging()
    _with_app(lambda application: service.run_all(application, web=False, scheduler=True, worker=False))


# ---------------------------------------------------------------- bounces (bounces.py)

bounces_app = typer.Typer(
    help="Process bounces, complaints and mailto unsubscribes; report on them.", no_args_is_help=True
)
app.add_typer(bounces_app, name="bounces")


def _since_option(value: str) -> datetime:
    from digest.config import parse_duration

    try:
        return datetime.now(UTC) - parse_duration(value)
    except ValueError:
        _fail(UsageError(f"--since {value!r} is not a duration such as 12h, 7d or 2w"))
        raise  # unreachable: _fail always raises


@bounces_app.command("process")
def bounces_process(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="PATH", help="A Maildir, an mbox file, an .eml file or a folder of .eml files."
        ),
    ],
) -> None:
    """Read bounces from a mailbox your MTA delivers them to, and apply them.

    Hard bounces suppress the reader; soft bounces are scored; complaints suppress.
    Forged or unknown VERP addresses change nothing; nor does a second run.
    The VERP address is read from Delivered-To, X-Original-To or To.

    Example: digest bounces process /var/mail/bounces/Maildir
             digest bounces process bounces.mbox
    """
    if not path.exists():
        _fail(UsageError(f"{path}: no such file or folder"))
    from digest import bounce_mailboxes, bounces

    async def go(application: bootstrap.App) -> bounces.ProcessReport:
        now = datetime.now(UTC)
        result = await bounce_mailboxes.process_path(application, path, now)
        await bounces.trim_raw_bounces(application, now)
        return result

    result = _with_app(go)
    table = Table("outcome", "messages", title=f"{path}")
    for name in bounces.OUTCOMES:
        if result.counts.get(name):
            table.add_row(name, str(result.counts[name]))
    out.print(table)
    for name in result.unreadable:
        err.print(f"{name}: empty message skipped", highlight=False)
    paused = ", ".join(map(str, result.paused_editions)) or "none"
    out.print(
        f"{result.messages} message(s): {result.failed_deliveries} delivery(ies) marked failed, "
        f"{result.suppressed} reader(s) suppressed, editions paused: {paused}",
        highlight=False,
    )


@bounces_app.command("report")
def bounces_report(
    since: Annotated[str, typer.Option("--since", help="How far back: 12h, 7d, 2w.")] = "7d",
) -> None:
    """Bounces (SMTP-time and DSN), delays and complaints by class and by recipient domain.

    Example: digest bounces report --since 30d
    """
    start = _since_option(since)
    from digest import bounce_admin

    result = _with_app(lambda application: bounce_admin.report(application, start))
    classes = list(result.by_class)
    by_class = Table("class", "events", title=f"since {start:%Y-%m-%d %H:%M} UTC")
    for name, n in result.by_class.items():
        by_class.add_row(name, str(n))
    out.print(by_class)
    by_domain = Table("domain", *classes, "total", title="by recipient domain")
    for domain, counts in result.by_domain.items():
        by_domain.add_row(domain, *(str(counts.get(c, 0)) for c in classes), str(sum(counts.values())))
    out.print(by_domain)
    out.print(f"{result.total} event(s)", highlight=False)


@app.command("inbound")
def inbound_cmd() -> None:
    """Run the bounce inbox alone: an SMTP listener on [bounce] listen for bounces+ and unsub+ mail.

    Example: digest inbound
    """
    from digest import service

    if not _config().bounce.listen:
        _fail(UsageError("set [bounce] listen (host:port, e.g. 127.0.0.1:2525) to run the bounce inbox"))
    _setup_logging()
    _with_app(
        lambda application: service.run_all(application, web=False, scheduler=False, worker=False, inbox=True)
    )


@subscribers_app.command("unsuppress")
def subscribers_unsuppress(
    email: str,
    reason: Annotated[str, typer.Option("--reason", help="Why; recorded with the reader.")],
) -> None:
    """Let a suppressed reader (bounced, complained, suppressed) receive mail again.

    Example: digest subscribers unsuppress ann@example.com --reason "mailbox fixed, she asked"
    """
    from digest import bounce_admin

    before = _with_app(
        lambda application: bounce_admin.unsuppress(application, email, reason, datetime.now(UTC))
    )
    out.print(f"{email} is active again (was {before}); reason recorded", highlight=False)


# ---------------------------------------------------------------- operators (issue 8)


@subscribers_app.command("remove")
def subscribers_remove(
    email: str,
    yes: Annotated[bool, typer.Option("--yes", help="Required: erasure cannot be undone.")] = False,
) -> None:
    """Erase a reader's personal data on request; only a hash stays, so imports cannot add them back.

    The reader may sign up again themselves (double opt-in is new consent).

    Example: digest subscribers remove ann@example.com --yes
    """
    if not yes:
        _fail(UsageError("say --yes: erasing a reader's data cannot be undone"))
    from digest import retention

    erased = _with_app(lambda application: retention.erase_reader(application, email, datetime.now(UTC)))
    out.print(
        f"{email} erased: {erased.subscriptions} subscription(s) ended,"
        f" {erased.deliveries} delivery record(s)"
        f" scrubbed; kept only {erased.marker}",
        highlight=False,
    )


sources_app = typer.Typer(help="See sources and try one without storing anything.", no_args_is_help=True)
app.add_typer(sources_app, name="sources")


@sources_app.command("list")
def sources_list(as_json: JsonOption = False) -> None:
    """Sources with their last fetch, last success and last error.

    Example: digest sources list --json
    """

    async def go(application: bootstrap.App) -> list[dict[str, Any]]:
        names = {c.name for c in application.cfg.sources}
        async with application.db.read() as s:
            return [
                {
                    "name": src.name,
                    "kind": src.kind,
                    "location": src.location,
                    "interval_seconds": src.interval_seconds,
                    "last_fetched_at": src.last_fetched_at,
                    "last_success_at": src.last_success_at,
                    "last_error": src.last_error,
                    "last_error_at": src.last_error_at,
                }
                for src in await sources_store.all_sources(s)
                if src.name in names
            ]

    rows = _with_app(go)
    if as_json:
        _print_json(rows)
        return
    table = Table(
        "source", "kind", "location", "every", "last fetch (UTC)", "last success (UTC)", "last error"
    )
    for r in rows:
        table.add_row(
            r["name"],
            r["kind"],
            r["location"][:50],
            str(timedelta(seconds=r["interval_seconds"])),
            f"{r['last_fetched_at']:%Y-%m-%d %H:%M}" if r["last_fetched_at"] else "-",
            f"{r['last_success_at']:%Y-%m-%d %H:%M}" if r["last_success_at"] else "-",
            (r["last_error"] or "")[:60],
        )
    out.print(table)


@sources_app.command("check")
def sources_check(name: Annotated[str, typer.Argument(metavar="NAME")], as_json: JsonOption = False) -> None:
    """Fetch one source once and show what would be ingested, with warnings; stores nothing.

    Example: digest sources check seeds
    """
    from digest import ingest

    cfg = _config()
    src = next((c for c in cfg.sources if c.name == name), None)
    if src is None:
        _fail(
            UsageError(f"no source {name!r} (configured: {', '.join(c.name for c in cfg.sources) or 'none'})")
        )
    assert src is not None
    if src.kind == "api":
        _fail(UsageError(f"source {name!r} is of kind api: articles are posted to it, not fetched"))
    location = src.location
    if src.kind == "directory" or not src.url:
        location = str(bootstrap.resolve_path(cfg, location))
    result = _run(lambda: ingest.fetch_source(src.name, src.kind, location, now=datetime.now(UTC)))
    if as_json:
        _print_json(
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


lists_app = typer.Typer(
    help="Lists: readers by status and cadence, last and next editions.", no_args_is_help=True
)
app.add_typer(lists_app, name="lists")


async def _list_summary(application: bootstrap.App, lst: Any) -> dict[str, Any]:
    async with application.db.read() as s:
        counts = await reports_store.list_reader_counts(s, lst.id)
        last = await reports_store.last_edition_of(s, lst.id)
        next_due, due_soon = await reports_store.next_due_of_list(s, lst.id)
        last_counts = (await reports_store.edition_counts(s, lst.id, limit=1)) if last else []
    by_status: dict[str, int] = {}
    by_cadence: dict[str, int] = {}
    for _, status, cadence, n in counts:
        by_status[status] = by_status.get(status, 0) + n
        if status == "confirmed":
            by_cadence[cadence] = by_cadence.get(cadence, 0) + n
    return {
        "slug": lst.slug,
        "name": lst.name,
        "schedule": lst.schedule,
        "timezone": lst.timezone,
        "public": lst.public,
        "readers": by_status,
        "confirmed_by_cadence": by_cadence,
        "last_edition": None
        if last is None
        else {
            "id": last.id,
            "created_at": last.created_at,
            "status": last.status,
            "subject": last.subject,
            "deliveries": last_counts[0][2] if last_counts else {},
        },
        "next_due_at": next_due,
        "readers_due_within_a_day_of_it": due_soon,
    }


@lists_app.command("list")
def lists_list(as_json: JsonOption = False) -> None:
    """Every active list with its readers by status and its last and next edition.

    Example: digest lists list
    """

    async def go(application: bootstrap.App) -> list[dict[str, Any]]:
        async with application.db.read() as s:
            lists = list(await sources_store.active_lists(s))
        return [await _list_summary(application, lst) for lst in lists]

    rows = _with_app(go)
    if as_json:
        _print_json(rows)
        return
    table = Table("list", "name", "confirmed", "pending", "unsubscribed", "last edition", "next digest (UTC)")
    for r in rows:
        last = r["last_edition"]
        table.add_row(
            r["slug"],
            r["name"],
            str(r["readers"].get("confirmed", 0)),
            str(r["readers"].get("pending", 0)),
            str(r["readers"].get("unsubscribed", 0)),
            f"#{last['id']} {last['created_at']:%Y-%m-%d %H:%M} {last['status']}" if last else "-",
            f"{r['next_due_at']:%Y-%m-%d %H:%M}" if r["next_due_at"] else "-",
        )
    out.print(table)


@lists_app.command("show")
def lists_show(slug: Annotated[str, typer.Argument(metavar="SLUG")], as_json: JsonOption = False) -> None:
    """One list: readers by status and cadence, its last edition and when the next digests go out.

    Example: digest lists show demo --json
    """

    async def go(application: bootstrap.App) -> dict[str, Any]:
        lst = await bootstrap.get_list(application, slug)
        return await _list_summary(application, lst)

    r = _with_app(go)
    if as_json:
        _print_json(r)
        return
    out.print(
        f"[bold]{escape(r['name'])}[/bold] ({r['slug']}): schedule {r['schedule']} {r['timezone']}",
        highlight=False,
        markup=True,
    )
    readers = Table("status", "readers", title="readers")
    for status, n in sorted(r["readers"].items()):
        readers.add_row(status, str(n))
    out.print(readers)
    cadences = Table("cadence", "confirmed readers", title="how often")
    for cadence, n in sorted(r["confirmed_by_cadence"].items()):
        cadences.add_row(cadence, str(n))
    out.print(cadences)
    last = r["last_edition"]
    if last:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(last["deliveries"].items())) or "no deliveries"
        out.print(
            f"last edition: #{last['id']} {last['created_at']:%Y-%m-%d %H:%M} UTC {last['status']}: {counts}",
            highlight=False,
        )
    else:
        out.print("last edition: none yet", highlight=False)
    if r["next_due_at"]:
        out.print(
            f"next digests: from {r['next_due_at']:%Y-%m-%d %H:%M} UTC"
            f" ({r['readers_due_within_a_day_of_it']} reader(s) within a day of it)",
            highlight=False,
        )
    else:
        out.print("next digests: no confirmed reader", highlight=False)


@editions_app.command("list")
def editions_list(
    list_slug: Annotated[str | None, typer.Option("--list", help="Only this list.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 20,
    as_json: JsonOption = False,
) -> None:
    """Recent editions with their delivery counts by status.

    Example: digest editions list --list demo --limit 50
    """

    async def go(application: bootstrap.App) -> list[Any]:
        lst = await bootstrap.get_list(application, list_slug) if list_slug else None
        async with application.db.read() as s:
            return await reports_store.edition_counts(s, lst.id if lst else None, limit=limit)

    rows = _with_app(go)
    if as_json:
        _print_json(
            [
                {
                    "id": e.id,
                    "list": slug,
                    "kind": e.kind,
                    "created_at": e.created_at,
                    "status": e.status,
                    "subject": e.subject,
                    "deliveries": counts,
                }
                for e, slug, counts in rows
            ]
        )
        return
    table = Table("edition", "list", "kind", "created (UTC)", "status", "deliveries", "subject")
    for e, slug, counts in rows:
        table.add_row(
            str(e.id),
            slug,
            e.kind,
            f"{e.created_at:%Y-%m-%d %H:%M}",
            e.status,
            ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-",
            e.subject[:50],
        )
    out.print(table)


@editions_app.command("show")
def editions_show(
    edition_id: Annotated[int, typer.Argument(metavar="ID")],
    recipients: Annotated[
        bool, typer.Option("--recipients", help="Also list every address and its status.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """One edition: its articles, deliveries by status, send rate, and errors grouped by reply.

    Example: digest editions show 12 --recipients
    """

    async def go(application: bootstrap.App) -> dict[str, Any]:
        async with application.db.read() as s:
            e = await reports_store.edition_by_id(s, edition_id)
            if e is None:
                raise UsageError(f"no edition {edition_id} (see `digest editions list`)")
            lst = await reports_store.list_by_id(s, e.list_id)
            articles = await compose_store.articles_by_ids(s, list(e.article_ids))
            counts = await retention_store.edition_status_counts(s, edition_id)
            first, last, sent = await reports_store.edition_send_span(s, edition_id)
            errors = await reports_store.edition_reply_groups(s, edition_id)
            who = await reports_store.edition_recipients(s, edition_id) if recipients else []
        seconds = (last - first).total_seconds() if first and last else 0.0
        return {
            "id": e.id,
            "list": lst.slug if lst else None,
            "kind": e.kind,
            "status": e.status,
            "pause_reason": e.pause_reason,
            "created_at": e.created_at,
            "subject": e.subject,
            "articles": [{"id": a.id, "title": a.title, "url": a.url} for a in articles],
            "more": e.more_count,
            "deliveries": counts,
            "first_sent_at": first,
            "last_sent_at": last,
            "rate_per_second": round(sent / seconds, 2) if seconds > 0 else None,
            "errors": [{"status": st, "code": c, "reply": r, "count": n} for st, c, r, n in errors],
            "recipients": [{"address": a, "status": st, "code": c, "reply": r} for a, st, c, r in who],
        }

    r = _with_app(go)
    if as_json:
        _print_json(r)
        return
    out.print(
        f"[bold]edition {r['id']}[/bold] ({r['list']}, {r['kind']}) {r['status']}"
        + (f": {escape(r['pause_reason'])}" if r["pause_reason"] else "")
        + f"\ncreated {r['created_at']:%Y-%m-%d %H:%M} UTC; subject: {escape(r['subject'])}",
        highlight=False,
        markup=True,
    )
    articles = Table("article", "title", "url", title=f"{len(r['articles'])} article(s), {r['more']} more")
    for a in r["articles"]:
        articles.add_row(str(a["id"]), a["title"][:60], (a["url"] or "-")[:60])
    out.print(articles)
    counts = Table("status", "messages", title="deliveries")
    for status, n in sorted(r["deliveries"].items()):
        counts.add_row(status, str(n))
    out.print(counts)
    if r["first_sent_at"]:
        rate = f"{r['rate_per_second']}/s" if r["rate_per_second"] else "-"
        out.print(
            f"sent from {r['first_sent_at']:%Y-%m-%d %H:%M:%S} to {r['last_sent_at']:%H:%M:%S} UTC,"
            f" rate {rate}",
            highlight=False,
        )
    if r["errors"]:
        errors = Table("status", "code", "messages", "reply", title="errors by reply")
        for x in r["errors"]:
            errors.add_row(x["status"], str(x["code"] or "-"), str(x["count"]), x["reply"][:90])
        out.print(errors)
    if recipients:
        who = Table("address", "status", "code", "reply", title="recipients")
        for x in r["recipients"]:
            who.add_row(x["address"], x["status"], str(x["code"] or "-"), (x["reply"] or "")[:70])
        out.print(who)


@app.command("doctor")
def doctor_cmd(as_json: JsonOption = False) -> None:
    """Check config, database, templates, relays (EHLO, TLS, certificate), DKIM, DNS and alignment.

    Exits 1 when a check fails, 0 when only warnings remain. Works offline except for the relays.

    Example: digest doctor
    """
    from digest import doctor
    from digest.errors import ConfigError

    try:
        cfg = load_config(_state.get("config_path"))
    except ConfigError as exc:
        findings = [doctor.Finding("fail", "config", str(exc), "fix the key named above")]
    else:
        findings = _run(lambda: doctor.run_checks(cfg))
    failed = sum(f.level == "fail" for f in findings)
    warned = sum(f.level == "warn" for f in findings)
    if as_json:
        _print_json([vars(f) for f in findings])
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


@app.command("prune")
def prune_cmd(as_json: JsonOption = False) -> None:
    """Delete history past [retention]: deliveries, events, raw bounces, editions' bodies (in batches).

    Runs daily in `digest scheduler` too. Suppressions and erasures are kept.

    Example: digest prune
    """
    from digest import retention

    report = _with_app(lambda application: retention.prune(application, datetime.now(UTC)))
    if as_json:
        _print_json({**report.counts(), "batches": report.batches, "cutoffs": report.cutoffs})
        return
    table = Table("what", "rows", "older than (UTC)")
    for (name, n), cutoff in zip(
        report.counts().items(),
        [report.cutoffs[k] for k in ("deliveries", "events", "raw_bounces", "edition_bodies")],
        strict=True,
    ):
        table.add_row(name, str(n), f"{cutoff:%Y-%m-%d %H:%M}")
    out.print(table)


alerts_app = typer.Typer(help="Check where alerts go.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")


@alerts_app.command("test")
def alerts_test() -> None:
    """Send a test alert to [alerts] email and webhook (ignores the rate limit).

    Example: digest alerts test
    """
    from digest import alerts

    async def go(application: bootstrap.App) -> bool:
        notifier = alerts.Notifier(application)
        if not notifier.enabled:
            raise UsageError("set [alerts] email and/or webhook first")
        alert = alerts.Alert("test", "test alert", "digest alerts test: alerts reach you.", datetime.now(UTC))
        return await notifier.notify(alert, limit=False)

    if not _with_app(go):
        _fail(DigestError("the test alert could not be delivered (see the warnings above)"))
    out.print("test alert sent", highlight=False)


def main() -> None:
    try:
        app()
    except DigestError as exc:  # raised while Typer parsed options (e.g. the config)
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, markup=True)
        sys.exit(exc.exit_code)
