"""Composing and delivering from the command line: preview, send-test, send, tick and worker.

These are commands of the root app, registered in `digest.cli`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from digest import bootstrap, compose, delivery
from digest.cli.output import err, fail, out
from digest.cli.runner import serve, with_app
from digest.config import Config
from digest.errors import DigestError, UsageError
from digest.rendering import TOKEN_PLACEHOLDER
from digest.store import ledger


def _parse_now(value: str | None) -> datetime:
    if not value:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(UsageError(f"--now {value!r} is not an ISO 8601 time such as 2026-03-29T07:01:00+02:00"))
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

    return capture.ensure_capture(
        cfg.capture.host, cfg.capture.port, bootstrap.resolve_path(cfg, cfg.capture.directory)
    )


def _check_mail_route(cfg: Config) -> None:
    if not cfg.relays and not cfg.capture.enabled:
        fail(UsageError("no mail route: configure [smtp] host (or [[smtp.relays]]) or enable [capture]"))


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


def preview(
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

    d, rendered = with_app(go)
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
            fail(DigestError(str(exc)))
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

    delivery_id, stats = with_app(go)
    out.print(f"test delivery {delivery_id} to {to}", highlight=False)
    _say_stats(stats)
    if stats.sent == 0 and (stats.deferred or stats.failed or stats.unknown):
        raise typer.Exit(1)


def send(
    list_slug: Annotated[str, typer.Argument(metavar="LIST")],
    queue: Annotated[
        bool, typer.Option("--queue", help="Compose and queue only; the running workers deliver.")
    ] = False,
) -> None:
    """Compose for every confirmed reader with something new, and deliver now (or queue it).

    Example: digest send demo
    """

    async def go(application: bootstrap.App) -> tuple[compose.ComposeReport, delivery.DeliverStats | None]:
        lst = await bootstrap.get_list(application, list_slug)
        report = await compose.compose(application, lst, datetime.now(UTC), manual=True)
        if queue:
            return report, None
        return report, await _deliver_with_progress(application, bootstrap.utcnow)

    report, stats = with_app(go)
    out.print(f"composed {report.deliveries} digest(s) in {len(report.editions)} edition(s)", highlight=False)
    if stats is None:
        out.print("queued for the running workers (`digest worker` or `digest run`)", highlight=False)
    else:
        _say_stats(stats)


def tick(
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit (the only mode).")] = True,
    now: Annotated[str | None, typer.Option("--now", help="Pretend it is this ISO time.")] = None,
) -> None:
    """Compose what is due at NOW, then deliver until nothing is pending.

    A tick at another instant acts for real: readers' slots move as if it were NOW, and every
    move is printed per list (composed, skipped with nothing new, missed slots moved on).

    Example: digest tick --once --now 2026-03-29T05:01:00Z
    """
    at = _parse_now(now)

    async def go(application: bootstrap.App) -> tuple[list[compose.ComposeReport], delivery.DeliverStats]:
        reports = await compose.compose_due(application, at)
        return reports, await _deliver_with_progress(application, _shifted_clock(at))

    reports, stats = with_app(go)
    for r in reports:
        if r.deliveries or r.skipped or r.moved:
            moved = (
                f", {r.moved} missed slot(s) older than [scheduler] catch_up moved to the next slot"
                if r.moved
                else ""
            )
            out.print(
                f"list {r.list_slug}: {r.deliveries} composed, {r.skipped} skipped (nothing new){moved}",
                highlight=False,
            )
    _say_stats(stats)


def worker(
    once: Annotated[bool, typer.Option("--once", help="Drain the queue, then exit.")] = False,
) -> None:
    """Deliver queued mail (reclaims expired leases); runs until stopped unless --once.

    Runs for months under a service manager: it waits out database outages, obeys `editions`
    commands as they are given, and stops cleanly on SIGTERM (exit 0).

    Example: digest worker --once
    """
    if not once:
        serve(worker=True)
        return

    async def go(application: bootstrap.App) -> delivery.DeliverStats:
        return await _deliver_with_progress(application, bootstrap.utcnow, once=True)

    _say_stats(with_app(go))
