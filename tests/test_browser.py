"""A reader in a real browser (Debian's Chromium driven by Playwright) against a real `digest web`.

Signs up, reads the confirmation from a real SMTP server, confirms, changes preferences, receives a
digest, opens its web version and unsubscribes from its link; and a reader with a non-ASCII name
who leaves and comes back. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import re
import shutil
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, SmtpSink, free_port, run_digest, serving, write_config

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
    return run_digest(config, *args, timeout=60)


@pytest.fixture
def served(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[tuple[str, Path]]:
    port = free_port()
    config = write_config(
        tmp_path, database_url=f"sqlite:///{tmp_path}/digest.db", smtp_port=smtp_sink.port, web_port=port
    )
    with serve_web(config, port) as base:
        yield base, config


@contextlib.contextmanager
def serve_web(config: Path, port: int) -> Iterator[str]:
    """`digest init`, `ingest`, then `digest web` on `port` until the block ends; yields its URL."""
    digest(config, "init")
    digest(config, "ingest")
    with serving(config, port) as (base, _):
        yield base


def wait_for_mail(sink: SmtpSink, count: int, timeout: float = 15, to: str = READER) -> list[EmailMessage]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sink.to(to)
        if len(found) >= count:
            return [
                email.message_from_bytes(m.data, policy=email.policy.default)  # type: ignore[misc]
                for m in found
            ]
        time.sleep(0.1)
    raise AssertionError(f"expected {count} message(s) to {to}, got {len(sink.to(to))}")


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
            messages = wait_for_mail(smtp_sink, 3)  # the confirmation, the welcome, the digest
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


NAMED = "zoe@example.com"
NAME = "Zoë Ångström"
LONG_WORD = "Straßenreinigungsgebühren"
LONG_URL = (
    "https://harbourtown.example.org/documents/2026/council/minutes/extraordinary-meeting-final-version.pdf"
)
SIZES = {"phone": {"width": 375, "height": 812}, "desktop": {"width": 1280, "height": 900}}


def html_of(msg: EmailMessage) -> str:
    part = msg.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def shoot(browser: Any, name: str, *, html: str | None = None, url: str | None = None) -> None:
    """Screenshots of a mail or a page at 375 and 1280 px, light and dark; nothing scrolls sideways."""
    for size, viewport in SIZES.items():
        for scheme in ("light", "dark"):
            context = browser.new_context(viewport=viewport, color_scheme=scheme, timezone_id="Europe/Berlin")
            try:
                page = context.new_page()
                if html is not None:
                    page.set_content(html)
                else:
                    page.goto(url)
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= viewport["width"], (name, size, width)
                page.screenshot(path=str(ARTIFACTS / f"returning-{name}-{size}-{scheme}.png"), full_page=True)
            finally:
                context.close()


def write_stories(seeds: Path) -> None:
    """A story with a long German word and a URL in its summary, and one in Arabic."""
    (seeds / "long-word.md").write_text(
        "---\ntitle: Street cleaning fees go up in April\nauthor: Aroha Ngata\n"
        "url: https://harbourtown.example.org/news/fees\n---\n"
        f"The {LONG_WORD} rise by four per cent. The minutes are at {LONG_URL} for anyone.\n",
        encoding="utf-8",
    )
    (seeds / "arabic.md").write_text(
        "---\ntitle: المجلس يوافق على جدول العبّارة الجديد\nurl: https://harbourtown.example.org/ar/1\n---\n"
        "قالت لجنة النقل إن التغيير يبدأ في أبريل، وإن الأسعار لن ترتفع.\n",
        encoding="utf-8",
    )


def test_a_reader_with_a_non_ascii_name_signs_up_is_welcomed_leaves_and_comes_back_in_a_real_browser(
    served: tuple[str, Path], smtp_sink: SmtpSink
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    base, config = served
    ARTIFACTS.mkdir(exist_ok=True)
    write_stories(config.parent / "seeds")
    digest(config, "ingest")
    executable = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport=SIZES["phone"], locale="de-DE", timezone_id="Europe/Berlin")
            page.goto(f"{base}/")  # the front door leads to the signup page
            page.get_by_role("heading", name="Subscribe").wait_for()
            # The skip link, once focused, sits above the heading instead of on it.
            page.keyboard.press("Tab")
            skip = page.get_by_role("link", name="Skip to content").bounding_box()
            heading = page.get_by_role("heading", name="Subscribe").bounding_box()
            assert skip and heading and skip["y"] + skip["height"] <= heading["y"]
            page.screenshot(path=str(ARTIFACTS / "returning-skip-link-phone.png"))
            # A mistake: the consent tick and the name stay, and focus goes to what went wrong.
            page.get_by_label("Email address").fill("zoe@")
            page.fill("#name", NAME)
            page.get_by_label("Demo Digest").check()
            page.get_by_label("I agree").check()
            page.wait_for_timeout(2100)  # the form's minimum fill time
            page.get_by_role("button", name="Subscribe").click()
            page.get_by_text("Please check the form.").wait_for()
            assert page.evaluate("document.activeElement.id") == "problems"
            assert page.is_checked("#consent") and page.input_value("#name") == NAME
            assert page.get_by_label("Demo Digest").is_checked()
            page.get_by_label("Email address").fill(NAMED)
            page.wait_for_timeout(2100)
            page.get_by_role("button", name="Subscribe").click()
            page.get_by_role("heading", name="Check your inbox").wait_for()
            shoot(browser, "signup", url=f"{base}/subscribe/demo")

            [confirmation] = wait_for_mail(smtp_sink, 1, to=NAMED)
            link = re.search(re.escape(base) + r"/confirm/\S+", text_of(confirmation))
            assert link
            page.goto(link.group(0))
            page.get_by_role("button", name="Confirm my subscription").click()
            page.get_by_text(f"Thank you, {NAME}").wait_for()

            welcome = wait_for_mail(smtp_sink, 2, to=NAMED)[1]
            assert welcome["Subject"] == "Welcome to Demo Digest"
            assert text_of(welcome).startswith(f"Hello {NAME},") and "(Europe/Lisbon time)" not in text_of(
                welcome
            )
            shoot(browser, "welcome-mail", html=html_of(welcome))

            digest(config, "send", "demo")
            first = wait_for_mail(smtp_sink, 3, to=NAMED)[2]
            text, html = text_of(first), html_of(first)
            assert f"Hello {NAME}, here are" in text and LONG_WORD in text and LONG_URL in text
            assert LONG_URL in html and "\u200b" not in html
            shoot(browser, "digest-mail", html=html)

            unsubscribe = re.search(r'href="(' + re.escape(base) + r'/u/[^"]+)"', html)
            assert unsubscribe
            page.goto(unsubscribe.group(1))
            page.get_by_role("button", name="Unsubscribe").click()
            page.get_by_role("heading", name="You are unsubscribed").wait_for()
            shoot(browser, "unsubscribed", url=unsubscribe.group(1))
            page.get_by_role("button", name="Resubscribe to Demo Digest").click()
            page.get_by_role("heading", name="Welcome back").wait_for()
            page.screenshot(path=str(ARTIFACTS / "returning-welcome-back-phone.png"), full_page=True)

            (config.parent / "seeds" / "zz-after.txt").write_text(
                "Back again: the ferry runs late tonight\n\nA story published after the reader came back.\n",
                encoding="utf-8",
            )
            digest(config, "ingest")
            digest(config, "send", "demo")
            again = wait_for_mail(smtp_sink, 4, to=NAMED)[3]
            assert "Back again: the ferry runs late tonight" in text_of(again)
            assert f"Hello {NAME}, here is 1 new story for you." in text_of(again)
            shoot(browser, "digest-again-mail", html=html_of(again))
        finally:
            browser.close()
    shown = digest(config, "subscribers", "show", NAMED)
    for kind in ("confirmed", "unsubscribed", "resubscribed"):
        assert kind in shown, kind
