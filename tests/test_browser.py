"""A reader in a real browser (Debian's Chromium driven by Playwright) against a real `digest web`.

Signs up, reads the confirmation from a real SMTP server, confirms, changes preferences, receives a
digest, opens its web version and unsubscribes from its link. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import ROOT, SmtpSink, free_port, write_config

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
READER = "rosa@example.com"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists()
    and shutil.which("chromium") is None
    and os.environ.get("DIGEST_TEST_REQUIRE_TOOLS") != "1",
    reason="Debian's chromium is not installed (apt-get install -y chromium)",
)


def digest(config: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "digest", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=config.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def served(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[tuple[str, Path]]:
    port = free_port()
    config = write_config(
        tmp_path, database_url=f"sqlite:///{tmp_path}/digest.db", smtp_port=smtp_sink.port, web_port=port
    )
    digest(config, "init")
    digest(config, "ingest")
    proc = subprocess.Popen(
        [sys.executable, "-m", "digest", "--config", str(config), "web"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"digest web did not start: {proc.stderr.read() if proc.stderr else ''}"
                    ) from exc
                time.sleep(0.1)
        yield base, config
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def wait_for_mail(sink: SmtpSink, count: int, timeout: float = 15) -> list[EmailMessage]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sink.to(READER)
        if len(found) >= count:
            return [
                email.message_from_bytes(m.data, policy=email.policy.default)  # type: ignore[misc]
                for m in found
            ]
        time.sleep(0.1)
    raise AssertionError(f"expected {count} message(s) to {READER}, got {len(sink.to(READER))}")


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def test_a_reader_signs_up_confirms_tunes_reads_and_leaves_in_a_real_browser(
    served: tuple[str, Path], smtp_sink: SmtpSink
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    base, config = served
    ARTIFACTS.mkdir(exist_ok=True)
    executable = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=ARGS)
        try:
            page = browser.new_page(
                viewport={"width": 390, "height": 844}, locale="en-GB", timezone_id="Europe/Lisbon"
            )
            page.goto(f"{base}/subscribe/demo")
            assert page.input_value("#timezone") == "Europe/Lisbon"  # filled in by the inline script
            assert not page.is_checked("#consent")
            page.get_by_label("Email address").fill(READER)
            page.fill("#name", "Rosa")
            page.get_by_label("I agree").check()
            page.screenshot(path=str(ARTIFACTS / "signup.png"), full_page=True)
            page.wait_for_timeout(2100)  # the form's minimum fill time
            page.get_by_role("button", name="Subscribe").click()
            page.get_by_role("heading", name="Check your inbox").wait_for()

            [confirmation] = wait_for_mail(smtp_sink, 1)
            link = re.search(re.escape(base) + r"/confirm/\S+", text_of(confirmation))
            assert link, text_of(confirmation)
            page.goto(link.group(0))
            page.get_by_role("button", name="Confirm my subscription").click()
            page.get_by_role("heading", name="You are subscribed").wait_for()

            page.get_by_role("link", name="Choose how often you hear from us").click()
            page.get_by_label("Daily, at the hour below").check()
            page.select_option("#send_hour", "7")
            page.get_by_role("button", name="Save preferences").click()
            page.get_by_text("Your preferences are saved.").wait_for()
            assert page.is_checked("#cadence-daily")

            digest(config, "send", "demo")
            messages = wait_for_mail(smtp_sink, 2)
            issue = next(m for m in messages if m["List-Unsubscribe"])
            text = text_of(issue)
            web_version = re.search(r"View in browser: (\S+)", text)
            assert web_version
            page.goto(web_version.group(1))
            page.screenshot(path=str(ARTIFACTS / "digest-web-version.png"), full_page=True)
            html = issue.get_body(("html",))
            assert html is not None
            unsubscribe = re.search(r'href="(' + re.escape(base) + r'/u/[^"]+)"', str(html.get_content()))
            assert unsubscribe
            page.goto(unsubscribe.group(1))
            page.get_by_role("button", name="Unsubscribe").click()
            page.get_by_role("heading", name="You are unsubscribed").wait_for()
        finally:
            browser.close()
    shown = digest(config, "subscribers", "show", READER)
    assert "unsubscribed" in shown and "by link" in shown
    for kind in ("subscribed", "confirmation_sent", "confirmed", "preferences_changed", "unsubscribed"):
        assert kind in shown, kind
