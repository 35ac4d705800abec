"""Topics on the web: a reader picks topics on the signup page in a real browser (Debian's Chromium
via Playwright), gets only those, changes them on the preferences page and the next digest follows;
the JSON signup API takes `topics`; import and export carry them."""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SmtpSink, free_port, write_config
from test_browser import ARGS, CHROMIUM, digest, serve_web, text_of, wait_for_mail
from test_topics import STORIES, TOPICS, write_stories

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists()
    and shutil.which("chromium") is None
    and os.environ.get("DIGEST_TEST_REQUIRE_TOOLS") != "1",
    reason="Debian's chromium is not installed (apt-get install -y chromium)",
)

LIST = (
    '[[lists]]\nslug = "demo"\nname = "Harbour Digest"\nsources = ["seeds"]\n'
    'schedule = "0 7 * * *"\ntimezone = "UTC"\nmax_articles = 20\nmax_age = "3650d"\n\n'
)
READER = "tess@example.com"


@pytest.fixture
def served(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[tuple[str, Path]]:
    port = free_port()
    config = write_config(
        tmp_path,
        database_url=f"sqlite:///{tmp_path}/digest.db",
        smtp_port=smtp_sink.port,
        web_port=port,
        lists=LIST + TOPICS,
    )
    for seed in (tmp_path / "seeds").iterdir():
        seed.unlink()
    write_stories(tmp_path / "seeds", STORIES)
    with serve_web(config, port) as base:
        yield base, config


def post_json(url: str, body: object) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_reader_picks_topics_in_a_real_browser_and_changing_them_changes_the_next_digest(
    served: tuple[str, Path], smtp_sink: SmtpSink
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    base, config = served
    executable = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=ARGS)
        try:
            page = browser.new_page(locale="en-GB", timezone_id="Europe/Lisbon")
            page.goto(f"{base}/subscribe/demo")
            for topic in ("transport", "local", "sport", "politics"):
                assert page.is_checked(f"input[value='demo/{topic}']")  # every topic unless unticked
            page.get_by_label("Email address").fill(READER)
            page.uncheck("input[value='demo/sport']")
            page.uncheck("input[value='demo/politics']")
            page.get_by_label("I agree").check()
            page.wait_for_timeout(2100)  # the form's minimum fill time
            page.get_by_role("button", name="Subscribe").click()
            page.get_by_role("heading", name="Check your inbox").wait_for()
            [confirmation] = wait_for_mail(smtp_sink, 1, to=READER)
            link = re.search(re.escape(base) + r"/confirm/\S+", text_of(confirmation))
            assert link
            page.goto(link.group(0))
            page.get_by_role("button", name="Confirm my subscription").click()
            page.get_by_role("heading", name="You are subscribed").wait_for()

            digest(config, "send", "demo")
            first = next(m for m in wait_for_mail(smtp_sink, 3, to=READER) if m["List-Unsubscribe"])
            text = text_of(first)
            assert STORIES["ferry"][0] in text and STORIES["market"][0] in text
            assert STORIES["rugby"][0] not in text and STORIES["budget"][0] not in text
            assert "== Transport ==" in text and "== Local life ==" in text

            prefs = re.search(r"Preferences: (\S+)", text)
            assert prefs
            page.goto(prefs.group(1))
            assert page.is_checked("input[value='demo/transport']")
            assert not page.is_checked("input[value='demo/sport']")
            page.uncheck("input[value='demo/transport']")
            page.uncheck("input[value='demo/local']")
            page.check("input[value='demo/sport']")
            page.get_by_role("button", name="Save preferences").click()
            page.get_by_text("Your preferences are saved.").wait_for()
            assert page.is_checked("input[value='demo/sport']")
            assert not page.is_checked("input[value='demo/transport']")
        finally:
            browser.close()
    write_stories(
        config.parent / "seeds",
        {
            "cup2": ("Rugby club draws in cup replay", "A draw in the replay.", ""),
            "ferry2": ("Ferry fares frozen", "Ferry fares stay the same.", ""),
        },
    )
    digest(config, "ingest")
    digest(config, "send", "demo")
    second = [m for m in wait_for_mail(smtp_sink, 4, to=READER) if m["List-Unsubscribe"]][-1]
    text = text_of(second)
    assert "Rugby club draws in cup replay" in text
    assert "Ferry fares frozen" not in text
    shown = digest(config, "subscribers", "show", READER)
    assert "topics_chosen" in shown


def test_the_json_signup_api_takes_topics_and_names_the_offered_ones_for_an_unknown_one(
    served: tuple[str, Path], smtp_sink: SmtpSink
) -> None:
    base, config = served
    ok = {"email": "uma@example.com", "list": "demo", "consent": True, "topics": ["sport"]}
    assert post_json(f"{base}/subscribe", ok)[0] == 202
    status, body = post_json(f"{base}/subscribe", {**ok, "email": "vic@example.com", "topics": ["weather"]})
    assert status == 422
    fields = body["error"]["fields"]  # type: ignore[index]
    assert "transport" in fields["topics"]  # type: ignore[index]
    wait_for_mail(smtp_sink, 1, to="uma@example.com")
    exported = digest(config, "subscribers", "export", "--list", "demo")
    row = next(line for line in exported.splitlines() if line.startswith("uma@example.com"))
    assert ",sport," in row
