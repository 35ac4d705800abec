"""The embedded capture SMTP server: every message it accepts becomes a `.eml` file.

It lets the embedded default run end to end with no mail relay: open the files in any mail
client to see exactly what a reader would get. It listens on loopback only by default.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

_counter = itertools.count(1)


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9@._-]+", "_", part)[:80]


class CaptureHandler:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content or envelope.content
        rcpt = _safe(envelope.rcpt_tos[0]) if envelope.rcpt_tos else "unknown"
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"{stamp}-{os.getpid()}-{next(_counter):06d}-{rcpt}.eml"
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(raw)
        tmp.replace(self.directory / name)
        return f"250 2.0.0 captured as {name}"


def is_listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_capture(host: str, port: int, directory: Path) -> Controller:
    """Start the capture server in a background thread; stop it with `.stop()`."""
    controller = Controller(CaptureHandler(directory), hostname=host, port=port, ready_timeout=10)
    controller.start()
    return controller
