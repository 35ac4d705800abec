"""Bounces from a mailbox the MTA delivers them to (`digest bounces process`).

A Maildir, an mbox file, an .eml file or a folder of .eml files; each message goes through
bounces.handle_message, and a cron job that runs this every few minutes does only the new mail.

Decisions, one line each:

- Maildir: the messages in new/ and the unseen ones in cur/ are read (never tmp/, mail still being
  written; never dot files); each one dealt with is moved to cur/ with the Seen flag, or, with
  `[bounce] processed_folder` (or --processed-folder), into that Maildir++ folder (`.NAME/cur/`).
  A message whose delivery is still `sending` (in_flight) or that met a database failure stays
  where it is for the next run.
- mbox: read under a shared fcntl lock (the one MTAs take to append), from where the last run
  stopped: the offset is kept in the database with a fingerprint of the file's first bytes, so a
  rotated or rewritten file is read from its start. The offset stops before the first message
  left for later (in_flight, database failure); what follows it is skipped cheaply next time.
- Every message's key (inbound.inbound_key: its Message-ID, else its bytes, and its VERP address)
  is checked against the messages already dealt with, a few hundred at a time, before anything is
  parsed: a rerun over mail already seen only reads headers.
- `rescan` reads everything again (seen Maildir messages, an mbox from its start); what was
  recorded is still recognised and changes nothing.
- One message never stops the run: what the database refuses to record for reasons of its own is
  kept in `errors` and left for the next run, and the run goes on.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from digest import bootstrap, inbound
from digest.bounce_outcomes import BouncePolicy, Handled, Inbound, ProcessReport
from digest.bounces import apply_messages, handle_unsubscribe, read_message
from digest.errors import UsageError
from digest.store import inbound as inbound_store

# The whole bounce pipeline logs under one name, the one operators filter and set levels by.
log = logging.getLogger("digest.bounces")

CHUNK = 200  # messages checked against the database, and applied, in one transaction
_T = TypeVar("_T")
_FINGERPRINT = 1024  # bytes of an mbox's start that identify the file


@dataclass
class _Item:
    name: str
    raw: bytes
    done: Callable[[], None]  # marks the message processed in its mailbox
    end: int = 0  # mbox: the offset just past this message


def _nothing() -> None:
    return None


async def _process(
    app: bootstrap.App,
    items: Iterator[_Item],
    report: ProcessReport,
    now: datetime,
    policy: BouncePolicy,
    start: int = 0,
) -> int | None:
    """Deal with every item, CHUNK at a time; returns where the first item left for later begins
    (None if none is left), which is where an mbox resumes."""
    resume: int | None = None
    last_end = start
    chunk: list[_Item] = []

    async def flush() -> None:
        nonlocal resume, last_end
        for item, handled in zip(chunk, await _handle_chunk(app, chunk, report, now, policy), strict=True):
            if handled is not None:
                report.add(handled)
            if handled is None or handled.outcome == "in_flight":
                resume = last_end if resume is None else resume
            else:
                item.done()
            last_end = item.end
        chunk.clear()

    for item in items:
        chunk.append(item)
        if len(chunk) >= CHUNK:
            await flush()
    if chunk:
        await flush()
    return resume


async def _handle_chunk(
    app: bootstrap.App, chunk: list[_Item], report: ProcessReport, now: datetime, policy: BouncePolicy
) -> list[Handled | None]:
    """Each item's outcome; None for one the database could not record (left for the next run)."""
    keys = [inbound.inbound_key(item.raw, None) for item in chunk]
    async with app.db.read() as s:
        known = await inbound_store.known_inbound(s, keys)
    outcomes: list[Handled | None] = []
    fresh: dict[int, Inbound] = {}
    for n, (item, key) in enumerate(zip(chunk, keys, strict=True)):
        if not item.raw.strip():
            report.unreadable.append(item.name)
            outcomes.append(Handled("ignored", "empty message"))
        elif key in known:
            outcomes.append(Handled("duplicate", "already recorded"))
        else:
            message = read_message(app, item.raw, None, key=key)
            outcomes.append(None)
            if message.verdict.kind == "unsubscribe":
                outcomes[n] = await _guarded(report, [item], handle_unsubscribe(app, message, now))
            else:
                fresh[n] = message
    if fresh:
        applied = await _guarded(
            report, [chunk[n] for n in fresh], apply_messages(app, list(fresh.values()), now, policy=policy)
        )
        for n, handled in zip(fresh, applied or [], strict=False):
            outcomes[n] = handled  # none when the database failed: the items stay None
    return outcomes


async def _guarded(report: ProcessReport, items: list[_Item], work: Awaitable[_T]) -> _T | None:
    """The result of database work, or None when the database failed: those items are recorded
    in `errors` and left for the next run, and the run goes on."""
    try:
        return await work
    except Exception as exc:
        for item in items:
            log.error("inbound: %s left for the next run: %s: %s", item.name, type(exc).__name__, exc)
            report.errors.append(f"{item.name}: {type(exc).__name__}: {exc}"[:300])
        return None


# --- Maildir ------------------------------------------------------------------------------------------


def _flags(name: str) -> str:
    return name.rpartition(":2,")[2] if ":2," in name else ""


def _maildir_items(root: Path, rescan: bool, target: Path, report: ProcessReport) -> Iterator[_Item]:
    # Listed once, before anything moves: a message moved to cur/ by this run is not met again.
    paths = [path for sub in ("new", "cur") for path in sorted((root / sub).iterdir())]
    for path in paths:
        if path.name.startswith(".") or not path.is_file():
            continue  # dot files are not mail, by Maildir convention
        if path.parent.name == "cur" and "S" in _flags(path.name) and not rescan and target == root:
            continue  # seen: processed by an earlier run
        try:
            raw = path.read_bytes()
        except OSError as exc:  # the MTA or a mail client moved it meanwhile
            log.info("inbound: %s vanished before it was read: %s", path.name, exc)
            continue
        yield _Item(path.name, raw, _mover(path, target, report))


def _mover(path: Path, target: Path, report: ProcessReport) -> Callable[[], None]:
    """Move a processed message to the target Maildir's cur/ with the Seen flag."""

    def move() -> None:
        base, _, flags = path.name.partition(":2,")
        dest = target / "cur" / f"{base}:2,{''.join(sorted(set(flags) | {'S'}))}"
        if dest == path:
            return
        try:
            os.replace(path, dest)
            report.moved += 1
        except OSError as exc:  # read-only mailbox: processing still counts, the next run skips it by key
            log.warning("inbound: could not move %s to %s: %s", path.name, dest.parent, exc)

    return move


def _maildir_target(root: Path, folder: str | None) -> Path:
    if not folder:
        return root
    target = root / f".{folder.strip().lstrip('.')}"
    for sub in ("tmp", "new", "cur"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    return target


# --- mbox ---------------------------------------------------------------------------------------------


def _mbox_items(data: bytes, start: int) -> Iterator[_Item]:
    """The messages of an mbox from `start` (a "From " line), each without its From_ line."""
    pos = start
    while pos < len(data):
        nxt = data.find(b"\nFrom ", pos)
        end = len(data) if nxt < 0 else nxt + 1
        body = data[pos:end]
        raw = body.partition(b"\n")[2] if body.startswith(b"From ") else body
        yield _Item(f"offset {pos}", raw, _nothing, end)
        pos = end


async def _process_mbox(
    app: bootstrap.App, path: Path, rescan: bool, report: ProcessReport, now: datetime, policy: BouncePolicy
) -> None:
    where = str(path.resolve())
    with path.open("rb") as handle:
        fcntl.lockf(handle, fcntl.LOCK_SH)  # an MTA appending holds LOCK_EX: wait for a whole message
        try:
            data = handle.read()
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)
    if not data.endswith(b"\n"):  # a writer that takes no lock is still appending: not that one yet
        data = data[: data.rfind(b"\nFrom ") + 1]
    fingerprint = hashlib.sha256(data[:_FINGERPRINT]).hexdigest()
    async with app.db.read() as s:
        known = await inbound_store.mailbox_progress(s, where)
    start = 0
    if known is not None and not rescan and known[1] == fingerprint and known[0] <= len(data):
        start = known[0]
    resume = await _process(app, _mbox_items(data, start), report, now, policy, start)
    async with app.db.write() as s:
        await inbound_store.save_mailbox_progress(
            s, where, len(data) if resume is None else resume, fingerprint, now
        )


# --- the entry point ----------------------------------------------------------------------------------


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(5) == b"From "


def _eml_items(path: Path) -> Iterator[_Item]:
    paths = sorted(p for p in path.glob("*.eml") if p.is_file()) if path.is_dir() else [path]
    for item in paths:
        yield _Item(item.name, item.read_bytes(), _nothing)


async def process_path(
    app: bootstrap.App,
    path: Path | str,
    now: datetime,
    *,
    policy: BouncePolicy | None = None,
    rescan: bool = False,
    processed_folder: str | None = None,
) -> ProcessReport:
    """Process the new messages of a Maildir, an mbox file, an .eml file or a folder of .eml
    files (see the module docstring). The VERP address comes from the headers (no envelope)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    policy = policy or BouncePolicy.from_config(app.cfg)
    folder = processed_folder if processed_folder is not None else app.cfg.bounce.processed_folder
    report = ProcessReport()
    if path.is_dir() and ((path / "cur").is_dir() or (path / "new").is_dir()):
        missing = [sub for sub in ("new", "cur") if not (path / sub).is_dir()]
        if missing:
            raise UsageError(f"{path}: not a complete Maildir, {' and '.join(missing)}/ is missing")
        target = _maildir_target(path, folder)
        await _process(app, _maildir_items(path, rescan, target, report), report, now, policy)
    elif path.is_file() and _is_mbox(path):
        await _process_mbox(app, path, rescan, report, now, policy)
    else:
        await _process(app, _eml_items(path), report, now, policy)
    return report
