"""Bounces from a mailbox the MTA delivers them to (`digest bounces process`).

A Maildir (new/ and cur/), an mbox file, an .eml file or a folder of .eml files; each message goes
through bounces.handle_message. Mailbox files are never modified: a Maildir is read without moving
or flagging anything, and a message already recorded counts as a duplicate, so a mailbox can simply
be processed again.
"""

from __future__ import annotations

import logging
import mailbox
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from digest import bootstrap
from digest.bounces import BouncePolicy, ProcessReport, handle_message
from digest.errors import UsageError

# The whole bounce pipeline logs under one name, the one operators filter and set levels by.
log = logging.getLogger("digest.bounces")


def _messages_in(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every message in a Maildir, an mbox file, a .eml file or a folder of them."""
    if path.is_dir():
        if (path / "cur").is_dir() or (path / "new").is_dir():
            yield from _maildir(path)
            return
        for item in sorted(path.glob("*.eml")):
            if item.is_file():
                yield item.name, item.read_bytes()
        return
    with path.open("rb") as handle:
        head = handle.read(5)
    if head == b"From ":
        box = mailbox.mbox(str(path), factory=None, create=False)
        try:
            for n, key in enumerate(box.keys(), 1):
                yield f"{path.name}#{n}", box.get_bytes(key)
        finally:
            box.close()
        return
    yield path.name, path.read_bytes()


def _maildir(path: Path) -> Iterator[tuple[str, bytes]]:
    """A Maildir's messages by key: new/ and cur/, never tmp/ (mail still being written). Reading
    with get_bytes moves nothing to cur/ and sets no flag, so the MTA's view is left as it was."""
    missing = [sub for sub in ("new", "cur") if not (path / sub).is_dir()]
    if missing:  # mailbox.Maildir lists both
        raise UsageError(f"{path}: not a complete Maildir, {' and '.join(missing)}/ is missing")
    box = mailbox.Maildir(str(path), factory=None, create=False)
    for key in sorted(box.keys()):
        if not key.startswith("."):  # dot files are not mail, by Maildir convention
            yield key, box.get_bytes(key)


async def process_path(
    app: bootstrap.App, path: Path | str, now: datetime, *, policy: BouncePolicy | None = None
) -> ProcessReport:
    """Process every message of a Maildir (cur/ and new/), an mbox file, an .eml file or a folder
    of .eml files. The VERP address comes from Delivered-To, X-Original-To or To (no envelope)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    policy = policy or BouncePolicy.from_config(app.cfg)
    report = ProcessReport()
    for name, raw in _messages_in(path):
        if not raw.strip():
            report.unreadable.append(name)
            continue
        handled = await handle_message(app, raw, None, now, policy=policy)
        report.add(handled)
        log.debug("%s: %s (%s)", name, handled.outcome, handled.reason)
    return report
