"""The capture server: each message becomes a `.eml` carrying its envelope sender, and a second
digest recognises its own capture server on the port or refuses another's."""

from __future__ import annotations

import smtplib
import socket
import threading
from pathlib import Path

import pytest

from conftest import free_port
from digest import capture
from digest.errors import PortInUse


def test_a_captured_message_starts_with_its_envelope_sender(tmp_path: Path) -> None:
    port = free_port()
    controller = capture.start_capture("127.0.0.1", port, tmp_path / "mail")
    try:
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.sendmail("bounces+7.abc@news.example.com", ["dora@example.com"], b"Subject: hi\r\n\r\nhello\r\n")
    finally:
        controller.stop()
    (eml,) = (tmp_path / "mail").glob("*.eml")
    assert eml.read_bytes().startswith(b"Return-Path: <bounces+7.abc@news.example.com>\r\nSubject: hi\r\n")


def test_a_second_digest_reuses_its_own_capture_server_and_refuses_another(tmp_path: Path) -> None:
    port = free_port()
    ours = tmp_path / "ours"
    controller = capture.ensure_capture("127.0.0.1", port, ours)
    assert controller is not None
    try:
        assert capture.ensure_capture("127.0.0.1", port, ours) is None
        with pytest.raises(PortInUse) as info:
            capture.ensure_capture("127.0.0.1", port, tmp_path / "theirs")
        message = str(info.value)
        assert str(ours.resolve()) in message and "DIGEST_CAPTURE__PORT" in message
    finally:
        controller.stop()


def test_a_port_held_by_some_other_server_is_refused(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def greet() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"220 mail.example.com ESMTP Postfix\r\n")
                conn.recv(100)

        threading.Thread(target=greet, daemon=True).start()
        with pytest.raises(PortInUse, match=r"not digest's capture server.*\[capture\] port"):
            capture.ensure_capture("127.0.0.1", port, tmp_path / "mail")
