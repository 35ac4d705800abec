"""How commands print: text as written on stdout, one `error:` line and an exit code on stderr,
JSON documents for scripts.

User mistakes exit 2 and operational failures exit 1; `DIGEST_DEBUG=1` adds the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from typing import Annotated, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from digest.errors import DigestError

# Markup off by default: config keys such as "[smtp] host" in messages must print as written.
# Lines are never wrapped by us: piped into grep or a log they must stay whole (a terminal wraps
# them itself).
out = Console(markup=False, soft_wrap=True)
err = Console(stderr=True, markup=False, soft_wrap=True)

JsonOption = Annotated[bool, typer.Option("--json", help="JSON on stdout instead of tables.")]


def fail(exc: BaseException) -> NoReturn:
    code = exc.exit_code if isinstance(exc, DigestError) else 1
    if os.environ.get("DIGEST_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    message = str(exc) if isinstance(exc, DigestError) else f"{type(exc).__name__}: {exc}"
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def print_table(table: Table) -> None:
    """A table on a terminal; piped, tab-separated lines with every value whole, so `grep` and
    `cut -f` see full addresses and dates (a title, when there is one, is a line of its own)."""
    if out.is_terminal:
        out.print(_fitted(table))
        return
    if table.title:
        sys.stdout.write(f"{_plain(table.title)}\n")
    if table.show_header:
        sys.stdout.write("\t".join(_plain(c.header) for c in table.columns) + "\n")
    for row in zip(*(c.cells for c in table.columns), strict=True):
        sys.stdout.write("\t".join(_plain(cell) for cell in row) + "\n")
    sys.stdout.flush()


def _fitted(table: Table) -> Table:
    """A table that fits the terminal (80 columns too): a rule under the header, a space between columns,
    every cell on one line; the last column (a subject, a reply, a title) takes what is left and
    ends in "…" when it must."""
    table.box = box.SIMPLE_HEAD  # its column divider is one space
    table.padding = (0, 0, 0, 0)
    table.show_edge = False
    table.expand = False
    widths = []
    for column in table.columns:
        column.no_wrap = True
        column.overflow = "ellipsis"
        widths.append(max(len(_plain(cell)) for cell in [column.header, *column.cells]))
    if table.columns:
        table.columns[-1].max_width = max(out.width - sum(widths[:-1]) - len(widths) - 1, 12)
    return table


def _plain(cell: object) -> str:
    text = cell.plain if isinstance(cell, Text) else str(cell)
    return text.replace("\t", " ").replace("\n", " ")


def print_json(value: object) -> None:
    """One JSON document on stdout, unstyled, for scripts."""
    sys.stdout.write(json.dumps(value, default=_json_default, indent=2) + "\n")


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def minute(when: datetime | None) -> str:
    """A time in a table cell, to the minute; "-" for never."""
    return f"{when:%Y-%m-%d %H:%M}" if when else "-"


def counts_cell(counts: dict[str, int]) -> str:
    """Messages by status in one cell: "failed 1, sent 2"; empty when there are none."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
