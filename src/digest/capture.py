"""The embedded capture SMTP server: every message it accepts becomes a `.eml` file.

It lets the embedded default run end to end with no mail relay: open the files in any mail
client to see exactly what a reader would get. It listens on loopback only by default.

Its greeting names the folder it stores into (`220 host digest-capture /abs/captured-mail`), so a
second `digest` sharing the port can tell its own capture server from another checkout's and
refuse rather than drop its mail in someone else's folder.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from digest.errors import PortInUse

_counter = itertools.count(1)


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9@._-]+", "_", part)[:80]


class CaptureHandler:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # Return-Path records the envelope sender as a delivering MTA would (VERP shows up here).
        sender = (envelope.mail_from or "").replace("\r", "").replace("\n", "")
        raw: bytes = f"Return-Path: <{sender}>\r\n".encode() + (envelope.original_content or envelope.content)
        rcpt = _safe(envelope.rcpt_tos[0]) if envelope.rcpt_tos else "unknown"
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"{stamp}-{os.getpid()}-{next(_counter):06d}-{rcpt}.eml"
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(raw)
        tmp.replace(self.directory / name)
        return f"250 2.0.0 captured as {name}"


IDENT = "digest-capture"


def is_listening(host: str, port: int) -> bool:
    return greeting(host, port) is not None


def greeting(host: str, port: int) -> str | None:
    """The first line a server on host:port sends, or None when nothing listens there."""
    try:
        with socket.create_connection((host, port), timeout=2) as conn:
            conn.settimeout(2)
            data = b""
            while b"\n" not in data and len(data) < 1024:
                chunk = conn.recv(1024)
                if not chunk:
                    break
                data += chunk
            with contextlib.suppress(OSError):
                conn.sendall(b"QUIT\r\n")
            return data.decode("utf-8", "replace").splitlines()[0] if data else ""
    except OSError:
        return None


def ensure_capture(host: str, port: int, directory: Path) -> Controller | None:
    """Start a capture server for `directory` unless its own already runs (then None); refuse a
    port held by anything else, naming the setting that moves it."""
    line = greeting(host, port)
    if line is None:
        return start_capture(host, port, directory)
    if line.endswith(f"{IDENT} {directory.resolve()}"):
        return None
    if IDENT in line:
        whose = f"another digest's capture server (it stores mail in {line.split(IDENT, 1)[1].strip()})"
    else:
        whose = "taken by a server that is not digest's capture server"
    raise PortInUse(
        f"port {port} on {host} is {whose}: set [capture] port in the config or DIGEST_CAPTURE__PORT"
        " to use another"
    )


def start_capture(host: str, port: int, directory: Path) -> Controller:
    """Start the capture server in a background thread; stop it with `.stop()`."""
    controller = Controller(
        CaptureHandler(directory),
        hostname=host,
        port=port,
        ready_timeout=10,
        ident=f"{IDENT} {directory.resolve()}",
    )
    controller.start()
    return controller
