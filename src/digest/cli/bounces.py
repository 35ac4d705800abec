"""`digest bounces`: apply bounces from a mailbox, and report on them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from digest import bootstrap
from digest.cli.output import JsonOption, err, fail, out, print_json, print_table
from digest.cli.runner import with_app
from digest.config import parse_duration
from digest.errors import DigestError, UsageError

bounces_app = typer.Typer(
    help="Process bounces, complaints and mailto unsubscribes; report on them.", no_args_is_help=True
)


def _since_option(value: str) -> datetime:
    try:
        return datetime.now(UTC) - parse_duration(value)
    except ValueError:
        fail(UsageError(f"--since {value!r} is not a duration such as 12h, 7d or 2w"))


@bounces_app.command("process")
def process(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="PATH", help="A Maildir, an mbox file, an .eml file or a folder of .eml files."
        ),
    ],
    rescan: Annotated[
        bool,
        typer.Option("--rescan", help="Read seen Maildir messages and an mbox from its start again."),
    ] = False,
    processed_folder: Annotated[
        str | None,
        typer.Option(
            "--processed-folder",
            metavar="NAME",
            help="Move processed Maildir messages to this Maildir++ folder ([bounce] processed_folder).",
        ),
    ] = None,
) -> None:
    """Read the new bounces in a mailbox your MTA delivers them to, and apply them.

    Hard bounces suppress the reader; soft and unexplained ones are scored; complaints suppress.
    Forged or unknown VERP addresses change nothing; nor does a second run.
    The VERP address is read from Delivered-To, X-Original-To, Envelope-to or To.
    Processed Maildir messages move to cur/ with the Seen flag; an mbox is read from where
    the last run stopped, so a cron job does only the new mail.

    Example: digest bounces process /var/mail/bounces/Maildir
             digest bounces process bounces.mbox
    """
    if not path.exists():
        fail(UsageError(f"{path}: no such file or folder"))
    from digest import bounce_mailboxes, bounce_outcomes, bounces

    async def go(application: bootstrap.App) -> bounce_outcomes.ProcessReport:
        now = datetime.now(UTC)
        result = await bounce_mailboxes.process_path(
            application, path, now, rescan=rescan, processed_folder=processed_folder
        )
        await bounces.trim_raw_bounces(application, now)
        return result

    result = with_app(go)
    table = Table("outcome", "messages", title=f"{path}")
    for name in bounce_outcomes.OUTCOMES:
        if result.counts.get(name):
            table.add_row(name, str(result.counts[name]))
    print_table(table)
    for name in result.unreadable:
        err.print(f"{name}: empty message skipped", highlight=False)
    paused = ", ".join(map(str, result.paused_editions)) or "none"
    out.print(
        f"{result.messages} message(s): {result.failed_deliveries} delivery(ies) marked failed, "
        f"{result.suppressed} reader(s) suppressed, editions paused: {paused}"
        + (f", {result.moved} moved to processed" if result.moved else ""),
        highlight=False,
    )
    if result.errors:
        for line in result.errors[:20]:
            err.print(line, highlight=False)
        fail(DigestError(f"{len(result.errors)} message(s) could not be recorded; left for the next run"))


@bounces_app.command("report")
def report(
    since: Annotated[str, typer.Option("--since", help="How far back: 12h, 7d, 2w.")] = "7d",
    as_json: JsonOption = False,
) -> None:
    """Bounces (SMTP-time and DSN), delays and complaints by class, by reason and by recipient domain.

    Example: digest bounces report --since 30d
    """
    start = _since_option(since)
    from digest import bounce_admin

    result = with_app(lambda application: bounce_admin.report(application, start))
    if as_json:
        print_json(
            {
                "since": start,
                "total": result.total,
                "by_class": result.by_class,
                "by_reason": [
                    {"class": klass, "reason": reason, "events": n}
                    for (klass, reason), n in result.by_reason.items()
                ],
                "by_domain": result.by_domain,
            }
        )
        return
    classes = list(result.by_class)
    by_class = Table("class", "events", title=f"since {start:%Y-%m-%d %H:%M} UTC")
    for name, n in result.by_class.items():
        by_class.add_row(name, str(n))
    print_table(by_class)
    by_reason = Table("class", "reason", "events", title="why: the reason each bounce was classed by")
    for (klass, reason), n in result.by_reason.items():
        by_reason.add_row(klass, reason, str(n))
    print_table(by_reason)
    by_domain = Table("domain", *classes, "total", title="by recipient domain")
    for domain, counts in result.by_domain.items():
        by_domain.add_row(domain, *(str(counts.get(c, 0)) for c in classes), str(sum(counts.values())))
    print_table(by_domain)
    out.print(f"{result.total} event(s)", highlight=False)
