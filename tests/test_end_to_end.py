"""The real `digest` processes against a real SMTP server, as an operator runs them."""

from __future__ import annotations

import email
import email.policy
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import SmtpSink, free_port, run_cli, wait_healthy, write_config

SEED_HEADLINE = "S.Korea, US, Japan urge repatriation of N.Korean workers"
SEED_TAIL = [
    "You may also like",
    "Want to get worth reading articles",
    "Boris Johnson",
    "About Author",
    "We do not spam",
]


def ok(config: Path, *args: str) -> str:
    """A command in this process: the test process itself is the second writer where one is needed."""
    result = run_cli(config, *args)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "database is locked" not in result.stderr
    return result.stdout


def test_seed_article_reaches_a_reader_once_as_a_well_formed_digest(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    config = write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/digest.db", smtp_port=smtp_sink.port)
    ok(config, "init")
    ok(config, "ingest")
    ok(config, "subscribers", "add", "reader@example.com", "--list", "demo", "--confirmed")
    ok(config, "send", "demo")
    received = smtp_sink.to("reader@example.com")
    assert len(received) == 1
    raw = received[0].data
    assert all(b < 0x80 for b in raw)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    msg = email.message_from_bytes(raw, policy=email.policy.strict)
    assert all(not part.defects for part in msg.walk())
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    for part in msg.iter_parts():
        flat = re.sub(r"\s+", " ", part.get_content())
        assert SEED_HEADLINE in flat
        for junk in SEED_TAIL:
            assert junk not in flat, (part.get_content_type(), junk)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert re.fullmatch(r"<http://127\.0\.0\.1:\d+/u/[A-Za-z0-9_-]{40,}>", str(msg["List-Unsubscribe"]))
    assert re.fullmatch(r"<[^@\s>]+@news\.example\.com>", str(msg["Message-ID"]))
    assert re.fullmatch(r"bounces\+\d+\.[0-9a-f]{10}@news\.example\.com", received[0].mail_from)
    ok(config, "send", "demo")
    assert len(smtp_sink.to("reader@example.com")) == 1


def test_a_second_process_writes_while_a_send_runs_without_database_is_locked(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    config = write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/digest.db", smtp_port=smtp_sink.port)
    ok(config, "init")
    readers = tmp_path / "readers.csv"
    readers.write_text("email\n" + "".join(f"r{i:04d}@example.com\n" for i in range(400)))
    ok(config, "subscribers", "import", str(readers), "--list", "demo", "--confirmed", "--apply")
    send = subprocess.Popen(
        [sys.executable, "-m", "digest", "--config", str(config), "send", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )  # communicate() below closes both pipes
    deadline = time.time() + 60
    while len(smtp_sink.messages) < 20 and time.time() < deadline:
        time.sleep(0.02)
    assert send.poll() is None, "the send finished before the second process could overlap it"
    ok(config, "send-test", "demo", "--to", "tester@example.org")
    ok(config, "subscribers", "add", "late@example.com", "--list", "demo")
    out, err = send.communicate(timeout=120)
    assert send.returncode == 0, out + err
    assert "database is locked" not in err
    assert len({r for m in smtp_sink.messages for r in m.rcpt_tos if r.startswith("r")}) == 400
    assert len(smtp_sink.to("tester@example.org")) == 1


@pytest.mark.slow
def test_digest_run_serves_and_a_second_shell_leaves_an_eml_in_the_capture_folder(tmp_path: Path) -> None:
    web = free_port()
    config = write_config(
        tmp_path, database_url=f"sqlite:///{tmp_path}/digest.db", smtp_port=None, web_port=web
    )
    ok(config, "init")
    log = (tmp_path / "run.log").open("w")
    service = subprocess.Popen(
        [sys.executable, "-m", "digest", "--config", str(config), "run"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        wait_healthy(web, service, 30)
        ok(config, "send-test", "demo", "--to", "you@example.com")
        captured = list((tmp_path / "captured").glob("*you@example.com.eml"))
        assert len(captured) == 1
        msg = email.message_from_bytes(captured[0].read_bytes(), policy=email.policy.default)
        assert str(msg["Subject"]).startswith("[Test] Demo Digest")
        body = msg.get_body(("html",))
        assert body is not None and SEED_HEADLINE in body.get_content()
        test_link = re.search(r"http://127\.0\.0\.1:\d+/u/test", str(msg["List-Unsubscribe"]))
        assert test_link
        with urllib.request.urlopen(test_link.group(0), timeout=5) as page:
            assert "test" in page.read().decode()
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.kill()
            pytest.fail("digest run did not stop on SIGTERM")
        finally:
            log.close()
    assert service.returncode == 0, (tmp_path / "run.log").read_text()
