"""Readers who leave and come back, the welcome after confirming, and what every page claims.

Real flows over HTTP (httpx against the ASGI app) with real SQLite and a real SMTP server: no page
may say a mail was sent when none was, and a reader who returns is back within a minute.
"""

from __future__ import annotations

from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import select

from conftest import CliProject, SmtpSink
from digest import bootstrap, compose, signup, sources
from digest.models import Delivery
from test_web import BASE, Forms, Site
from test_web import lite as lite  # the fixture, for the tests below

NAME = "Zoë O'Brien"


def body(msg: EmailMessage, kind: str = "plain") -> str:
    part = msg.get_body((kind,))
    assert part is not None
    return str(part.get_content())


async def signed_up_and_confirmed(site: Site, address: str = "zoe@example.com") -> EmailMessage:
    """Sign up on the page with a name, confirm by the link; returns the welcome mail."""
    answer = await site.signup_form(address, name=NAME, timezone="Europe/Berlin")
    assert answer.status_code == 200
    await site.deliver()
    confirmed = await site.confirm(address)
    assert confirmed.status_code == 200 and "Thank you, Zoë O&#39;Brien" in confirmed.text
    assert "welcome email" in confirmed.text
    await site.deliver()
    mails = site.mail_to(address)
    assert len(mails) == 2
    return mails[-1]


async def send_digest(site: Site) -> None:
    await sources.ingest_sources(site.app, site.clock())
    lst = await bootstrap.get_list(site.app, "demo")
    await compose.compose(site.app, lst, site.clock(), manual=True)
    await site.deliver()


async def one_click(site: Site, token: str) -> None:
    answer = await site.client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200 and "You are unsubscribed" in answer.text


# ---------------------------------------------------------------- the welcome


async def test_confirming_sends_a_welcome_with_the_lists_the_first_digest_in_the_readers_zone_and_a_way_to_change_it(
    lite: Site,
) -> None:
    welcome = await signed_up_and_confirmed(lite)
    assert welcome["Subject"] == "Welcome to Demo Digest"
    assert "List-Unsubscribe" not in welcome and welcome["Auto-Submitted"] == "auto-generated"
    text = body(welcome)
    sub = await lite.sub("zoe@example.com")
    assert sub is not None and sub.next_due_at is not None
    local = sub.next_due_at.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert text.startswith(f"Hello {NAME},")
    assert f"at {local:%H:%M} (Europe/Berlin time)" in text
    assert f"{BASE}/p/{sub.token}" in text and f"{BASE}/p/{sub.token}" in body(welcome, "html")
    assert "latest edition" not in text  # the list has never sent a digest


async def test_the_welcome_links_the_latest_edition_once_the_list_has_published(lite: Site) -> None:
    await lite.add_reader("early@example.com")
    await send_digest(lite)
    welcome = await signed_up_and_confirmed(lite)
    async with lite.app.db.read() as s:
        edition_id = (
            await s.execute(select(Delivery.edition_id).where(Delivery.edition_id.is_not(None)))
        ).scalar()
    assert f"The latest edition: {BASE}/archive/demo/{edition_id}" in body(welcome)
    page = await lite.client.get(f"/archive/demo/{edition_id}")
    assert page.status_code == 200 and "__DIGEST_" not in page.text


async def test_a_second_click_on_the_confirmation_sends_no_second_welcome(lite: Site) -> None:
    await signed_up_and_confirmed(lite)
    async with lite.app.db.read() as s:
        before = len((await s.execute(select(Delivery))).scalars().all())
    first = lite.mail_to("zoe@example.com")[0]
    link = next(line for line in body(first).split() if line.startswith(f"{BASE}/confirm/"))
    shown = await lite.client.get(link.removeprefix(BASE))
    assert "You are already subscribed" in shown.text
    csrf = (await lite.form("/subscribe"))["fields"]  # the same browser's token, for a replayed POST
    answer = await lite.client.post(link.removeprefix(BASE), data=csrf)
    assert answer.status_code == 200 and "You are subscribed" in answer.text
    assert "welcome email" not in answer.text
    async with lite.app.db.read() as s:
        assert len((await s.execute(select(Delivery))).scalars().all()) == before


# ---------------------------------------------------------------- coming back


async def test_a_reader_who_left_is_back_at_once_from_the_unsubscribe_page(lite: Site) -> None:
    await signed_up_and_confirmed(lite)
    await send_digest(lite)
    sub = await lite.sub("zoe@example.com")
    assert sub is not None
    await one_click(lite, sub.token)
    page = await lite.client.get(f"/u/{sub.token}")
    form = next(f for f in Forms(page.text).forms if f["action"].endswith("/resubscribe"))
    answer = await lite.client.post(form["action"].removeprefix(BASE), data=form["fields"])
    assert answer.status_code == 200 and "Welcome back" in answer.text
    back = await lite.sub("zoe@example.com")
    assert back is not None and back.status == "confirmed" and back.next_due_at is not None
    assert back.confirmed_at == sub.confirmed_at and back.watermark == sub.watermark
    assert "resubscribed" in await lite.event_kinds("zoe@example.com")


async def test_ticking_a_list_one_left_on_the_preferences_page_brings_the_reader_back_without_claiming_a_mail(
    lite: Site,
) -> None:
    await signed_up_and_confirmed(lite)
    sub = await lite.sub("zoe@example.com")
    assert sub is not None
    await one_click(lite, sub.token)
    form = await lite.form(f"/p/{sub.token}")
    saved = await lite.client.post(f"/p/{sub.token}", data={**form["fields"], "list": ["demo"]})
    assert saved.status_code == 200 and "You are back on demo" in saved.text
    assert "We sent a confirmation link" not in saved.text and "awaiting your confirmation" not in saved.text
    assert (await lite.sub("zoe@example.com")).status == "confirmed"  # type: ignore[union-attr]


async def test_signing_up_again_a_minute_after_leaving_sends_a_fresh_confirmation_that_works(
    lite: Site,
) -> None:
    await signed_up_and_confirmed(lite)
    sub = await lite.sub("zoe@example.com")
    assert sub is not None
    await one_click(lite, sub.token)
    lite.clock.offset = timedelta(minutes=1)
    assert (await lite.signup_json("zoe@example.com", name=NAME)).status_code == 202
    await lite.deliver()
    mails = lite.mail_to("zoe@example.com")
    assert len(mails) == 3 and "Confirm" in mails[-1]["Subject"]
    answer = await lite.confirm("zoe@example.com")
    assert answer.status_code == 200 and "You are subscribed" in answer.text
    assert (await lite.sub("zoe@example.com")).status == "confirmed"  # type: ignore[union-attr]


async def test_an_unanswered_confirmation_still_limits_mail_to_one_a_day_and_the_pages_say_so(
    lite: Site,
) -> None:
    sub = await lite.add_reader("ann@example.com")
    form = await lite.form(f"/p/{sub.token}")
    first = await lite.client.post(f"/p/{sub.token}", data={**form["fields"], "list": ["demo", "tech"]})
    assert "We sent a confirmation link for tech" in first.text
    form = await lite.form(f"/p/{sub.token}")
    second = await lite.client.post(f"/p/{sub.token}", data={**form["fields"], "list": ["demo", "tech"]})
    assert "We sent a confirmation link" not in second.text
    assert "tech is waiting for you to confirm" in second.text and "still works" in second.text
    await lite.deliver()
    assert len(lite.mail_to("ann@example.com")) == 1


async def test_the_signup_answer_promises_nothing_it_does_not_do(lite: Site) -> None:
    await lite.add_reader("ann@example.com")
    answer = await lite.signup_form("ann@example.com")
    assert "We have sent" not in answer.text
    assert "If you are already subscribed, nothing changes" in answer.text
    await lite.deliver()
    assert lite.mail_to("ann@example.com") == []


# ---------------------------------------------------------------- the reader's own pages


async def test_pages_greet_a_reader_by_the_name_they_gave(lite: Site) -> None:
    await signed_up_and_confirmed(lite)
    sub = await lite.sub("zoe@example.com")
    assert sub is not None
    page = await lite.client.get(f"/p/{sub.token}")
    assert "Hello Zoë O&#39;Brien." in page.text


async def test_every_page_names_the_publication_and_has_a_footer_and_the_front_door_leads_to_signup(
    lite: Site,
) -> None:
    for path in ("/subscribe", "/archive", "/subscribe/demo"):
        page = await lite.client.get(path)
        assert '<header class="site">' in page.text and "Digest</a>" in page.text, path
        assert "1 Example Street, Springfield" in page.text and '<footer class="site">' in page.text, path
    home = await lite.client.get("/")
    assert home.status_code == 303 and home.headers["location"] == f"{BASE}/subscribe"
    assert (await lite.client.get("/?next=https://evil.test")).headers["location"] == f"{BASE}/subscribe"


async def test_a_form_with_a_mistake_keeps_the_consent_tick_and_every_value(lite: Site) -> None:
    form = await lite.form("/subscribe")
    data = {**form["fields"], "email": "not-an-address", "name": NAME, "consent": "yes", "list": "demo"}
    answer = await lite.client.post("/subscribe", data=data)
    assert answer.status_code == 422
    again = Forms(answer.text).forms[0]["fields"]
    assert again["consent"] == "yes" and again["name"] == NAME
    assert 'id="problems"' in answer.text and 'getElementById("problems").focus()' in answer.text
    fresh = Forms((await lite.client.get("/subscribe")).text).forms[0]["fields"]
    assert "consent" not in fresh  # never ticked for the reader (STANDARDS item 27)


# ---------------------------------------------------------------- readers an operator adds


def test_an_operator_added_pending_reader_is_mailed_a_confirmation_once_a_day_and_can_be_asked_again(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    project = CliProject(tmp_path, smtp_sink.port)
    project.run("init")
    added = project.run("subscribers", "add", "ann@example.com", "--list", "demo", "--name", "Ann")
    assert "pending; a confirmation email is queued" in added
    again = project.run("subscribers", "resend-confirmation", "ann@example.com")
    assert "went out at" in again and "its link still works" in again
    project.run("worker", "--once")
    [mail] = [m for m in smtp_sink.messages if "ann@example.com" in m.rcpt_tos]
    assert b"Confirm your subscription to Demo Digest" in mail.data
    shown = project.run("subscribers", "show", "ann@example.com")
    assert "confirmation_sent" in shown and "cli" in shown  # the consent record says where it came from
    project.run("subscribers", "resend-confirmation", "nobody@example.com", code=2)


def test_imported_pending_readers_are_each_mailed_a_confirmation(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    project = CliProject(tmp_path, smtp_sink.port)
    project.run("init")
    f = tmp_path / "readers.csv"
    f.write_text("email,name\nann@example.com,Ann\nbob@example.com,Bob\n", encoding="utf-8")
    dry = project.run("subscribers", "import", str(f), "--list", "demo")
    assert "confirmation emails queued" not in dry
    applied = project.run("subscribers", "import", str(f), "--list", "demo", "--apply")
    assert "confirmation emails queued for 2 pending reader(s)" in applied
    repeat = project.run("subscribers", "import", str(f), "--list", "demo", "--apply")
    assert "queued for 0 pending reader(s); 2 had one less than a day ago" in repeat
    project.run("worker", "--once")
    assert {r for m in smtp_sink.messages for r in m.rcpt_tos} == {"ann@example.com", "bob@example.com"}


async def test_a_pending_reader_asked_more_than_a_day_ago_is_asked_again(lite: Site) -> None:
    await lite.add_reader("ann@example.com", confirmed=False)
    first = await signup.ask_pending(lite.app, "ann@example.com", None, lite.clock())
    soon = await signup.ask_pending(lite.app, "ann@example.com", None, lite.clock() + timedelta(hours=23))
    later = await signup.ask_pending(lite.app, "ann@example.com", None, lite.clock() + timedelta(hours=25))
    assert first.mailed == ["demo"] and soon.mailed == [] and [s for s, _ in soon.waiting] == ["demo"]
    assert later.mailed == ["demo"]
