"""/metrics, /readyz and the admin page of a real `digest web` after a real send; the admin page in
a real browser (Debian's Chromium via Playwright) with a screenshot in tests/artifacts/."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, SmtpSink, free_port, run_cli, serving, write_config

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
TOKEN = "operator-token-0123456789"


def digest(config: Path, *args: str) -> str:
    """Set-up commands run in-process (a subprocess each would spend seconds importing)."""
    result = run_cli(config, *args)
    assert result.exit_code == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def module_sink() -> Iterator[SmtpSink]:
    """One real SMTP server for the whole module: the served project is set up once."""
    from aiosmtpd.controller import Controller

    from conftest import _Handler

    sink = SmtpSink(port=free_port())
    controller = Controller(_Handler(sink), hostname="127.0.0.1", port=sink.port, decode_data=False)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, module_sink: SmtpSink) -> Iterator[str]:
    tmp_path, smtp_sink = tmp_path_factory.mktemp("served"), module_sink
    port = free_port()
    config = write_config(
        tmp_path, database_url=f"sqlite:///{tmp_path}/digest.db", smtp_port=smtp_sink.port, web_port=port,
        extra=f'\n[api]\ntoken = "{TOKEN}"\n',
    )  # fmt: skip
    digest(config, "init")
    for name in ("ann", "bob", "cleo", "dora"):
        digest(config, "subscribers", "add", f"{name}@example.com", "--list", "demo", "--confirmed")
    smtp_sink.reply_for = lambda address, n: "550 5.1.1 no such user" if address.startswith("bob") else None
    digest(config, "send", "demo")
    digest(config, "subscribers", "remove", "dora@example.com", "--yes")
    with serving(config, port) as (base, _):
        yield base


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_parse_and_report_the_send(served: str) -> None:
    status, text = fetch(served + "/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("digest_deliveries", (("kind", "digest"), ("status", "sent")))] == 3
    assert samples[("digest_deliveries", (("kind", "digest"), ("status", "failed")))] == 1
    assert samples[("digest_readers", (("status", "active"),))] == 2
    assert samples[("digest_readers", (("status", "bounced"),))] == 1
    assert samples[("digest_readers", (("status", "suppressed"),))] == 1
    assert samples[("digest_sent_last_minute", ())] == 3
    assert samples[("digest_queue_depth", ())] == 0
    relay = [k for k in samples if k[0] == "digest_smtp_replies_last_hour"]
    assert {dict(k[1])["class"] for k in relay} == {"2xx", "5xx"}
    assert samples[("digest_bounces_last_day", (("class", "hard"),))] == 1
    assert samples[("digest_source_failing", (("source", "seeds"),))] == 0


def test_readyz_checks_the_schema(served: str) -> None:
    assert fetch(served + "/readyz") == (200, '{"status":"ok"}')


def test_the_admin_page_needs_the_token(served: str) -> None:
    assert fetch(served + "/admin")[0] == 401
    assert fetch(served + "/admin?token=wrong")[0] == 401
    assert fetch(served + f"/admin?token={TOKEN}")[0] == 401  # never in a URL: logs keep URLs
    status, html = fetch(served + "/admin", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and "Recent editions" in html and "no such user" not in html
    assert "hard" in html and "bob@example.com" in html


@pytest.mark.skipif(not CHROMIUM.exists() and shutil.which("chromium") is None, reason="no chromium")
def test_the_admin_page_in_a_real_browser(served: str) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    executable = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"{served}/admin")
            page.get_by_label("Operator token").fill("not the token")
            page.get_by_role("button", name="Sign in").click()
            page.get_by_text("Not authorized.").wait_for()
            page.get_by_label("Operator token").fill(TOKEN)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("heading", name="Sends per hour").wait_for()
            assert page.url == f"{served}/admin"  # the token is in no URL the browser visited
            session = [c for c in page.context.cookies() if c["name"] == "digest_admin"]
            assert session and session[0]["httpOnly"] and session[0]["sameSite"] == "Strict"
            assert session[0]["path"] == "/admin" and TOKEN not in session[0]["value"]
            bars = page.locator(".chart .bar")
            assert bars.count() == 24
            tallest = max(b.bounding_box()["height"] for b in bars.all())  # type: ignore[index]
            assert tallest > 50  # the hour of the send fills the chart
            assert page.locator("table").first.inner_text().count("demo") == 1
            page.screenshot(path=str(ARTIFACTS / "admin.png"), full_page=True)
            page.get_by_role("button", name="Sign out").click()
            page.get_by_label("Operator token").wait_for()
            page.goto(f"{served}/admin")
            assert page.get_by_role("heading", name="Sends per hour").count() == 0
        finally:
            browser.close()
