"""The reader pages and the operator API over HTTP, on real SQLite and PostgreSQL and a real SMTP server."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func, select

from conftest import SmtpSink, write_config
from digest import bootstrap, compose, delivery, readers, sources, store, web
from digest.config import load_config
from digest.models import Article, ArticleSource, Delivery, Event, Subscriber, Subscription
from digest.store import migrate
from digest.store import readers as readers_store
from digest.store import sources as sources_store
from digest.web import guard, limits

API_TOKEN = "operator-token-0123456789abcdef"
BASE = "http://127.0.0.1:8000"
RELAXED = limits.RateLimits(per_minute=100_000, per_hour=1_000_000)
EXTRA = f"""
[api]
token = "{API_TOKEN}"

[[sources]]
name = "pushed"
kind = "api"

[[lists]]
slug = "tech"
name = "Tech Weekly"
sources = ["seeds", "pushed"]
schedule = "0 8 * * 1"
timezone = "UTC"
max_age = "3650d"
"""


class Clock:
    """Real time plus an offset the test moves (itsdangerous stamps tokens with real time)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


class Forms(HTMLParser):
    """The POST forms of a page: action and the named fields with their values."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.inputs: list[dict[str, str | None]] = []
        self.labels: set[str] = set()
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action") or "", "method": a.get("method"), "fields": {}})
        elif tag in ("input", "select") and self.forms:
            self.inputs.append(a)
            if a.get("name") and (a.get("type") != "checkbox" or "checked" in a):
                self.forms[-1]["fields"].setdefault(a["name"], a.get("value") or "")
        elif tag == "label" and a.get("for"):
            self.labels.add(a["for"] or "")


@dataclasses.dataclass
class Site:
    app: bootstrap.App
    asgi: Any
    client: httpx.AsyncClient
    sink: SmtpSink
    clock: Clock

    async def form(self, path: str) -> dict[str, Any]:
        page = await self.client.get(path)
        posts = [f for f in Forms(page.text).forms if f["method"] == "post"]
        assert posts, f"no POST form on {path}: {page.status_code}"
        return posts[0]

    async def signup_form(self, address: str, path: str = "/subscribe", **fields: Any) -> httpx.Response:
        form = await self.form(path)
        data = {**form["fields"], "email": address, "consent": "yes", **fields}
        if "list" not in data:
            data["list"] = "demo"
        return await self.client.post("/subscribe", data=data)

    async def signup_json(
        self, address: str, lists: list[str] | None = None, **fields: Any
    ) -> httpx.Response:
        body = {"email": address, "list": lists or ["demo"], "consent": True, **fields}
        return await self.client.post("/subscribe", json=body)

    async def deliver(self) -> delivery.DeliverStats:
        return await delivery.deliver_due(self.app, self.clock)

    def mail_to(self, address: str) -> list[EmailMessage]:
        return [
            email.message_from_bytes(m.data, policy=email.policy.default)  # type: ignore[misc]
            for m in list(self.sink.messages)
            if address.lower() in (r.lower() for r in m.rcpt_tos)
        ]

    def confirm_path(self, address: str) -> str:
        text = self.mail_to(address)[-1].get_body(("plain",))
        assert text is not None
        m = re.search(re.escape(BASE) + r"(/confirm/\S+)", text.get_content())
        assert m, text.get_content()
        return m.group(1)

    async def confirm(self, address: str) -> httpx.Response:
        path = self.confirm_path(address)
        form = await self.form(path)
        return await self.client.post(form["action"].removeprefix(BASE), data=form["fields"])

    async def sub(self, address: str, slug: str = "demo") -> Subscription | None:
        async with self.app.db.read() as s:
            reader = await readers_store.subscriber_by_email(s, address.casefold())
            lst = await sources_store.list_by_slug(s, slug)
            assert lst is not None
            return await readers_store.subscription_for(s, reader.id, lst.id) if reader else None

    async def event_kinds(self, address: str) -> list[str]:
        async with self.app.db.read() as s:
            reader = await readers_store.subscriber_by_email(s, address.casefold())
            if reader is None:
                return []
            return sorted(e.kind for e in await readers_store.events_of(s, reader.id))

    async def count(self, model: Any) -> int:
        async with self.app.db.read() as s:
            return int((await s.execute(select(func.count()).select_from(model))).scalar_one())

    async def add_reader(
        self, address: str, *, confirmed: bool = True, slug: str = "demo", now: datetime | None = None
    ) -> Subscription:
        lst = await bootstrap.get_list(self.app, slug)
        async with self.app.db.write() as s:
            await readers.add_subscription(
                s, lst, address, readers.ReaderPrefs(), confirmed=confirmed, now=now or self.clock()
            )
        found = await self.sub(address, slug)
        assert found is not None
        return found


@asynccontextmanager
async def open_site(
    directory: Path,
    database_url: str,
    sink: SmtpSink,
    *,
    environ: dict[str, str] | None = None,
    peer: str = "203.0.113.9",
    extra: str = EXTRA,
    **options: Any,
) -> AsyncIterator[Site]:
    cfg = load_config(
        write_config(directory, database_url=database_url, smtp_port=sink.port, extra=extra),
        environ=environ or {},
    )
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    app = await bootstrap.open_app(cfg)
    clock = Clock()
    options.setdefault("rate_limits", RELAXED)
    options.setdefault("min_fill", timedelta(0))
    asgi = web.create_app(app, clock=clock, purge_every=None, **options)
    transport = httpx.ASGITransport(app=settled(asgi), client=(peer, 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield Site(app, asgi, client, sink, clock)
    finally:
        await asgi.state.web.work.close()
        await app.db.close()


def settled(asgi: Any) -> Any:
    """The app, answering each request only once the work it queued has run, as tests expect."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asgi(scope, receive, send)
        if scope["type"] == "http":
            await asgi.state.web.work.join()

    return app


@pytest.fixture
async def site(tmp_path: Path, database_url: str, smtp_sink: SmtpSink) -> AsyncIterator[Site]:
    async with open_site(tmp_path, database_url, smtp_sink) as s:
        yield s


@pytest.fixture
async def lite(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[Site]:
    """SQLite only, for rules that do not depend on the store."""
    async with open_site(tmp_path, f"sqlite:///{tmp_path}/digest.db", smtp_sink) as s:
        yield s


def visible_text(html: str) -> str:
    html = re.sub(r"<(style|script)\b.*?</\1>", " ", html, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


# ---------------------------------------------------------------- the signup page


async def test_signup_page_has_labelled_fields_an_unticked_consent_box_and_a_honeypot(lite: Site) -> None:
    page = await lite.client.get("/subscribe")
    assert page.status_code == 200
    parsed = Forms(page.text)
    assert "Demo Digest" in page.text and "Tech Weekly" in page.text
    visible = [i for i in parsed.inputs if i.get("type") not in ("hidden",) and i.get("id") != "website"]
    assert all(i.get("id") in parsed.labels for i in visible), visible
    consent = next(i for i in parsed.inputs if i.get("name") == "consent")
    assert "checked" not in consent
    assert "I agree" in page.text
    honeypot = next(i for i in parsed.inputs if i.get("name") == "website")
    assert honeypot.get("tabindex") == "-1"
    nonce = re.search(r"script-src 'nonce-([^']+)'", page.headers["content-security-policy"])
    assert nonce and f'<script nonce="{nonce.group(1)}">' in page.text
    assert "Intl.DateTimeFormat().resolvedOptions().timeZone" in page.text
    assert 'name="viewport"' in page.text
    assert "digest_csrf=" in page.headers["set-cookie"]


async def test_one_list_signup_page_and_an_unknown_list(lite: Site) -> None:
    page = await lite.client.get("/subscribe/tech")
    assert page.status_code == 200 and "Subscribe to Tech Weekly" in page.text
    assert "Demo Digest" not in page.text
    assert (await lite.client.get("/subscribe/nope")).status_code == 404
    assert (await lite.client.head("/subscribe/tech")).status_code == 200


# ---------------------------------------------------------------- signing up and confirming


async def test_one_confirmation_email_covers_every_list_and_only_the_post_confirms(site: Site) -> None:
    answer = await site.signup_json("Ann@Example.com", ["demo", "tech"], name="Ann")
    assert answer.status_code == 202
    stats = await site.deliver()
    assert stats.sent == 1
    [mail] = site.mail_to("Ann@example.com")
    assert mail["Subject"] == "Confirm your subscription to Demo Digest and Tech Weekly"
    assert mail["List-Unsubscribe"] is None and mail["List-Id"] is None
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail["To"] == "Ann <Ann@example.com>"
    html = mail.get_body(("html",))
    assert html is not None and site.confirm_path("Ann@example.com") in html.get_content()
    path = site.confirm_path("Ann@example.com")
    for method in ("GET", "HEAD"):
        seen = await site.client.request(method, path)
        assert seen.status_code == 200
    assert "Demo Digest and Tech Weekly" in (await site.client.get(path)).text
    assert (await site.sub("ann@example.com")).status == "pending"  # type: ignore[union-attr]
    form = await site.form(path)
    done = await site.client.post(path, data=form["fields"])
    assert done.status_code == 200 and "is confirmed" in done.text
    for slug in ("demo", "tech"):
        sub = await site.sub("ann@example.com", slug)
        assert sub is not None and sub.status == "confirmed"
        assert sub.confirmed_at is not None and sub.confirm_ip == "203.0.113.9"
        assert sub.confirm_user_agent and "python-httpx" in sub.confirm_user_agent
        assert sub.signup_ip == "203.0.113.9" and sub.signup_source == "api"
        assert sub.consent_text_version and sub.consent_text_version.startswith("sha256:")
        assert sub.next_due_at is not None
    again = await site.client.post(path, data=form["fields"])
    assert again.status_code == 200 and "is confirmed" in again.text
    assert "already subscribed" in (await site.client.get(path)).text
    kinds = await site.event_kinds("ann@example.com")
    assert kinds.count("confirmed") == 2 and kinds.count("subscribed") == 2
    assert kinds.count("confirmation_sent") == 2


async def test_form_signup_records_the_consent_record(site: Site) -> None:
    await site.client.get("/subscribe", headers={"Referer": "https://blog.example.org/post"})
    form = await site.form("/subscribe")
    form["fields"]["ref"] = "https://blog.example.org/post"
    data = {
        **form["fields"],
        "email": "bea@example.com",
        "list": ["demo", "tech"],
        "consent": "yes",
        "cadence": "weekly",
        "weekday": "2",
        "send_hour": "18",
        "timezone": "Europe/Berlin",
        "name": "Bea",
    }
    answer = await site.client.post(
        "/subscribe", data=data, headers={"Referer": f"{BASE}/subscribe", "User-Agent": "Firefox/140"}
    )
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    sub = await site.sub("bea@example.com", "tech")
    assert sub is not None and sub.status == "pending"
    assert (sub.cadence, sub.weekday, sub.send_hour, sub.timezone) == ("weekly", 2, 18, "Europe/Berlin")
    assert sub.signup_source == f"{BASE}/subscribe"
    assert sub.signup_referer == "https://blog.example.org/post"
    assert sub.signup_user_agent == "Firefox/140" and sub.signup_at is not None
    assert sub.confirmed_at is None and sub.next_due_at is None


async def test_signup_answers_identically_for_new_pending_confirmed_and_unsubscribed(site: Site) -> None:
    await site.signup_json("pending@example.com")
    await site.add_reader("confirmed@example.com")
    gone = await site.add_reader("gone@example.com")
    async with site.app.db.write() as s:
        row = await readers_store.subscription_by_id(s, gone.id)
        assert row is not None
        await readers.unsubscribe(s, row, "link", site.clock())
    answers = {}
    for who in ("new", "pending", "confirmed", "gone"):
        address = f"{who}@example.com"
        j = await site.signup_json(address)
        f = await site.signup_form(address)
        answers[who] = (
            j.status_code,
            j.text,
            f.status_code,
            re.sub(r'nonce-[^\'"]+|nonce="[^"]+"', "", f.text.replace(address, "X")),
        )
    assert len(set(answers.values())) == 1, answers
    await site.deliver()
    assert len(site.mail_to("new@example.com")) == 1
    assert len(site.mail_to("gone@example.com")) == 1  # coming back is a new double opt-in
    assert site.mail_to("confirmed@example.com") == []
    assert len(site.mail_to("pending@example.com")) == 1  # its first; the repeats are within 24 h


async def test_a_repeat_signup_sends_no_second_email_within_a_day(lite: Site) -> None:
    for _ in range(3):
        assert (await lite.signup_json("ann@example.com")).status_code == 202
    await lite.deliver()
    assert len(lite.mail_to("ann@example.com")) == 1
    lite.clock.offset = timedelta(hours=25)
    await lite.signup_json("ann@example.com")
    await lite.deliver()
    assert len(lite.mail_to("ann@example.com")) == 2


async def test_confirmation_is_queued_ahead_of_digests(lite: Site) -> None:
    await lite.add_reader("reader@example.com")
    await sources.ingest_sources(lite.app, lite.clock())
    lst = await bootstrap.get_list(lite.app, "demo")
    await compose.compose(lite.app, lst, lite.clock(), manual=True)
    await lite.signup_json("new@example.com")
    async with lite.app.db.read() as s:
        rows = (await s.execute(select(Delivery).order_by(Delivery.priority, Delivery.id))).scalars().all()
    assert (rows[0].kind, rows[0].priority) == ("transactional", 0)
    assert rows[-1].kind == "digest" and rows[-1].priority > 0


async def test_invalid_fields_are_named_next_to_the_field(lite: Site) -> None:
    answer = await lite.signup_form("not an address", list="demo", consent="")
    assert answer.status_code == 422
    parsed = Forms(answer.text)
    email_input = next(i for i in parsed.inputs if i.get("name") == "email")
    assert email_input.get("aria-invalid") == "true" and email_input.get("value") == "not an address"
    assert 'id="email-error"' in answer.text and 'id="consent-error"' in answer.text
    assert "checked" not in next(i for i in parsed.inputs if i.get("name") == "consent")
    bad = await lite.client.post(
        "/subscribe", json={"email": "a@b.example, c@d.example", "list": "nope", "consent": False}
    )
    assert bad.status_code == 422
    assert set(bad.json()["error"]["fields"]) == {"email", "list", "consent"}
    assert bad.json()["error"]["code"] == "invalid"
    assert await lite.count(Subscriber) == 0


@pytest.mark.parametrize(
    "address", ["ann@example.com\r\nBcc: x@evil.test", "a,b@example.com", "x" * 250 + "@example.com", "ann"]
)
async def test_malformed_addresses_are_refused(lite: Site, address: str) -> None:
    answer = await lite.signup_json(address)
    assert answer.status_code == 422 and "email" in answer.json()["error"]["fields"]
    assert await lite.count(Subscriber) == 0


async def test_names_are_stripped_of_control_characters(lite: Site) -> None:
    refused = await lite.signup_json("ann@example.com", name="Ann\x00 Smith")
    assert refused.status_code == 422 and await lite.sub("ann@example.com") is None  # NUL: inputs.py
    await lite.signup_json("ann@example.com", name="Ann\r\nBcc: evil@example.com\u202e\x07 Smith")
    await lite.deliver()
    async with lite.app.db.read() as s:
        reader = await readers_store.subscriber_by_email(s, "ann@example.com")
    assert reader is not None and reader.name == "Ann Bcc: evil@example.com Smith"
    raw = lite.sink.to("ann@example.com")[0].data
    assert b"\r\nBcc:" not in raw and b"evil@example.com" not in raw.split(b"\r\n\r\n")[0].split(b"To:")[0]


# ---------------------------------------------------------------- abuse resistance


async def test_the_sixth_signup_in_a_minute_gets_429_and_nothing_is_sent(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    async with open_site(tmp_path, database_url, smtp_sink, rate_limits=limits.RateLimits()) as site:
        for n in range(5):
            assert (await site.signup_json(f"r{n}@example.com")).status_code == 202
        limited = await site.signup_json("sixth@example.com")
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        page = await site.client.post("/subscribe", data={"email": "x@example.com"})
        assert page.status_code == 429 and "Please slow down" in page.text
        assert await site.sub("sixth@example.com") is None
        await site.deliver()
        assert site.sink.to("sixth@example.com") == []
        assert len(site.sink.messages) == 5


async def test_client_address_comes_from_x_forwarded_for_only_behind_a_trusted_proxy(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    url = f"sqlite:///{tmp_path}/digest.db"
    env = {"DIGEST_WEB__TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8"}
    headers = {"X-Forwarded-For": "198.51.100.4, 10.1.2.3"}
    async with open_site(tmp_path, url, smtp_sink, environ=env, peer="127.0.0.1") as site:
        await site.client.post(
            "/subscribe", json={"email": "a@example.com", "list": "demo", "consent": True}, headers=headers
        )
        assert (await site.sub("a@example.com")).signup_ip == "198.51.100.4"  # type: ignore[union-attr]
    async with open_site(tmp_path, url, smtp_sink, environ=env, peer="203.0.113.50") as site:
        await site.client.post(
            "/subscribe", json={"email": "b@example.com", "list": "demo", "consent": True}, headers=headers
        )
        assert (await site.sub("b@example.com")).signup_ip == "203.0.113.50"  # type: ignore[union-attr]


async def test_a_filled_honeypot_gets_the_normal_answer_and_nothing_happens(lite: Site) -> None:
    real = await lite.signup_form("real@example.com")
    bot = await lite.signup_form("bot@example.com", website="https://spam.example")
    assert bot.status_code == real.status_code == 200
    assert visible_text(bot.text).replace("bot@", "X@") == visible_text(real.text).replace("real@", "X@")
    assert await lite.sub("bot@example.com") is None
    await lite.deliver()
    assert lite.sink.to("bot@example.com") == []


async def test_a_form_sent_back_within_two_seconds_comes_back_filled_in_asking_once_more(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    url = f"sqlite:///{tmp_path}/digest.db"
    async with open_site(tmp_path, url, smtp_sink, min_fill=timedelta(seconds=2)) as site:
        fast = await site.signup_form("fast@example.com", name="Zoë")
        assert fast.status_code == 422 and "press Subscribe again" in fast.text
        assert "Check your inbox" not in fast.text
        again = Forms(fast.text).forms[0]["fields"]
        assert again["email"] == "fast@example.com" and again["name"] == "Zoë" and again["consent"] == "yes"
        assert await site.sub("fast@example.com") is None
        site.clock.offset = timedelta(seconds=3)
        done = await site.client.post("/subscribe", data={**again, "list": "demo"})
        assert "Check your inbox" in done.text and await site.sub("fast@example.com") is not None
        site.clock.offset = timedelta()
        form = await site.form("/subscribe")
        site.clock.offset = timedelta(seconds=3)
        data = {**form["fields"], "email": "human@example.com", "list": "demo", "consent": "yes"}
        assert (await site.client.post("/subscribe", data=data)).status_code == 200
        assert await site.sub("human@example.com") is not None
        forged = {**data, "email": "forged@example.com", "ts": "1700000000.0"}
        await site.client.post("/subscribe", data=forged)
        assert await site.sub("forged@example.com") is None


async def test_html_forms_need_their_csrf_token_and_the_json_api_does_not(lite: Site) -> None:
    form = await lite.form("/subscribe")
    data = {**form["fields"], "email": "ann@example.com", "list": "demo", "consent": "yes"}
    missing = await lite.client.post("/subscribe", data={k: v for k, v in data.items() if k != "csrf"})
    assert missing.status_code == 403 and "expired" in missing.text
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=settled(lite.asgi)), base_url=BASE
    ) as other:
        stolen = await other.post("/subscribe", data=data)  # the field without its cookie
        assert stolen.status_code == 403
        await other.get("/subscribe")
        crossed = await other.post("/subscribe", data=data)  # another visitor's cookie
        assert crossed.status_code == 403
        plain = await other.post(
            "/subscribe", content=b'{"email":"x@example.com"}', headers={"Content-Type": "text/plain"}
        )
        assert plain.status_code == 415
    assert await lite.sub("ann@example.com") is None
    no_cookie = httpx.AsyncClient(transport=httpx.ASGITransport(app=settled(lite.asgi)), base_url=BASE)
    async with no_cookie:
        assert (
            await no_cookie.post("/subscribe", json={**data, "list": ["demo"], "consent": True})
        ).status_code == 202
    assert await lite.sub("ann@example.com") is not None
    await lite.deliver()
    path = lite.confirm_path("ann@example.com")
    refused = await lite.client.post(path, data={"csrf": "forged"})
    assert refused.status_code == 403
    assert (await lite.sub("ann@example.com")).status == "pending"  # type: ignore[union-attr]


async def test_no_redirect_target_is_taken_from_the_request(lite: Site) -> None:
    form = await lite.form("/subscribe")
    data = {
        **form["fields"],
        "email": "ann@example.com",
        "list": "demo",
        "consent": "yes",
        "next": "https://evil.test",
    }
    answer = await lite.client.post("/subscribe?next=https://evil.test", data=data)
    assert answer.status_code == 200 and "location" not in answer.headers
    assert "evil.test" not in answer.text
    sub = await lite.add_reader("bob@example.com")
    left = await lite.client.post(
        f"/u/{sub.token}?next=https://evil.test", data={"next": "https://evil.test"}
    )
    assert left.status_code == 200 and "location" not in left.headers and "evil.test" not in left.text


async def test_request_bodies_are_size_limited(lite: Site) -> None:
    big = b"x" * (guard.MAX_BODY + 1)
    declared = await lite.client.post("/subscribe", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * 8192

    streamed = await lite.client.post(
        "/subscribe", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    assert await lite.count(Subscriber) == 0


# ---------------------------------------------------------------- confirmation tokens


async def test_an_expired_confirmation_link_offers_a_fresh_one_and_changes_nothing(site: Site) -> None:
    await site.signup_json("ann@example.com")
    await site.deliver()
    path = site.confirm_path("ann@example.com")
    form = await site.form(path)
    site.clock.offset = timedelta(hours=49)
    expired = await site.client.get(path)
    assert expired.status_code == 410 and "expired" in expired.text
    late = await site.client.post(path, data=form["fields"])
    assert late.status_code == 410
    assert (await site.sub("ann@example.com")).status == "pending"  # type: ignore[union-attr]
    resend = Forms(expired.text).forms[0]
    assert resend["action"].endswith("/resend")
    again = await site.client.post(resend["action"].removeprefix(BASE), data=resend["fields"])
    assert again.status_code == 200 and "Check your inbox" in again.text
    await site.deliver()
    assert len(site.mail_to("ann@example.com")) == 2
    fresh = site.confirm_path("ann@example.com")
    assert fresh != path
    form = await site.form(fresh)
    site.clock.offset = timedelta(hours=50)
    assert (await site.client.post(fresh, data=form["fields"])).status_code == 200
    assert (await site.sub("ann@example.com")).status == "confirmed"  # type: ignore[union-attr]


async def test_a_tampered_or_foreign_confirmation_token_is_refused_and_changes_nothing(lite: Site) -> None:
    await lite.signup_json("ann@example.com")
    await lite.deliver()
    path = lite.confirm_path("ann@example.com")
    form = await lite.form(path)
    token = path.rsplit("/", 1)[1]
    sub = await lite.sub("ann@example.com")
    assert sub is not None
    other_salt = URLSafeTimedSerializer(lite.app.keys[0], salt="unsubscribe").dumps(
        [[sub.id, int(sub.signup_at.timestamp())]]
    )
    other_key = URLSafeTimedSerializer("not-our-key", salt="confirm").dumps(
        [[sub.id, int(sub.signup_at.timestamp())]]
    )
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    for bad in (flipped, other_salt, other_key, token + "x", "%00", "a" * 3000):
        for method in ("GET", "POST"):
            answer = await lite.client.request(
                method, f"/confirm/{bad}", data=form["fields"] if method == "POST" else None
            )
            assert 400 <= answer.status_code < 500, (bad, method, answer.status_code)
    assert (await lite.sub("ann@example.com")).status == "pending"  # type: ignore[union-attr]


async def test_a_confirmation_link_survives_a_key_rotation(lite: Site) -> None:
    await lite.signup_json("ann@example.com")
    await lite.deliver()
    path = lite.confirm_path("ann@example.com")
    rotated = dataclasses.replace(lite.app, keys=["a-brand-new-key-0123456789", *lite.app.keys])
    asgi = web.create_app(rotated, clock=lite.clock, purge_every=None, min_fill=timedelta(0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url=BASE) as client:
        page = await client.get(path)
        form = next(f for f in Forms(page.text).forms if f["method"] == "post")
        assert (await client.post(path, data=form["fields"])).status_code == 200
    assert (await lite.sub("ann@example.com")).status == "confirmed"  # type: ignore[union-attr]


# ---------------------------------------------------------------- unsubscribe


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
async def test_one_click_unsubscribe_in_either_encoding_is_200_without_redirect_and_idempotent(
    site: Site, encoding: str
) -> None:
    sub = await site.add_reader("ann@example.com")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=settled(site.asgi)), base_url=BASE
    ) as bare:
        for _ in range(2):
            if encoding == "urlencoded":
                answer = await bare.post(
                    f"/u/{sub.token}",
                    content=b"List-Unsubscribe=One-Click",
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
            else:
                answer = await bare.post(f"/u/{sub.token}", files={"List-Unsubscribe": (None, "One-Click")})
            assert answer.status_code == 200 and "location" not in answer.headers
            assert "You are unsubscribed" in answer.text
            assert "set-cookie" not in answer.headers
    left = await site.sub("ann@example.com")
    assert left is not None and left.status == "unsubscribed"
    assert left.unsubscribe_method == "one-click" and left.unsubscribed_at is not None
    assert (await site.event_kinds("ann@example.com")).count("unsubscribed") == 1


async def test_the_unsubscribe_page_changes_nothing_until_its_button_is_pressed(site: Site) -> None:
    sub = await site.add_reader("ann@example.com")
    for method in ("GET", "HEAD", "GET"):
        assert (await site.client.request(method, f"/u/{sub.token}")).status_code == 200
    assert (await site.sub("ann@example.com")).status == "confirmed"  # type: ignore[union-attr]
    form = await site.form(f"/u/{sub.token}")
    answer = await site.client.post(form["action"].removeprefix(BASE), data=form["fields"])
    assert answer.status_code == 200
    left = await site.sub("ann@example.com")
    assert left is not None and left.status == "unsubscribed" and left.unsubscribe_method == "link"


async def test_a_tampered_unsubscribe_token_is_404_and_changes_nothing(lite: Site) -> None:
    sub = await lite.add_reader("ann@example.com")
    flipped = sub.token[:-1] + ("A" if sub.token[-1] != "A" else "B")
    for bad in (flipped, sub.token + "x", sub.token.upper(), "x" * 200, "..%2f..%2fetc", "%00"):
        answer = await lite.client.post(f"/u/{bad}", data={"List-Unsubscribe": "One-Click"})
        assert answer.status_code == 404, bad
    assert (await lite.sub("ann@example.com")).status == "confirmed"  # type: ignore[union-attr]
    assert "ann@example.com" not in sub.token and "YW5u" not in sub.token


async def test_a_token_minted_a_year_ago_still_unsubscribes_after_a_key_rotation(site: Site) -> None:
    sub = await site.add_reader("ann@example.com", now=datetime.now(UTC) - timedelta(days=400))
    rotated = dataclasses.replace(site.app, keys=["a-brand-new-key-0123456789"])
    asgi = web.create_app(rotated, purge_every=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url=BASE) as client:
        answer = await client.post(f"/u/{sub.token}", data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    assert (await site.sub("ann@example.com")).status == "unsubscribed"  # type: ignore[union-attr]


async def test_unsubscribing_during_an_edition_stops_the_rest(site: Site) -> None:
    for name in ("ann", "bob", "cat"):
        await site.add_reader(f"{name}@example.com")
    await sources.ingest_sources(site.app, site.clock())
    lst = await bootstrap.get_list(site.app, "demo")
    report = await compose.compose(site.app, lst, site.clock(), manual=True)
    assert report.deliveries == 3
    bob = await site.sub("bob@example.com")
    assert bob is not None

    answer = await site.client.post(f"/u/{bob.token}", data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    stats = await site.deliver()
    assert stats.sent == 2 and stats.skipped == 0
    assert site.sink.to("bob@example.com") == []
    async with site.app.db.read() as s:
        row = (await s.execute(select(Delivery).where(Delivery.address == "bob@example.com"))).scalar_one()
    assert row.status == "skipped"


# ---------------------------------------------------------------- preferences


async def test_preferences_change_the_schedule_and_name_and_record_an_event(site: Site) -> None:
    sub = await site.add_reader("ann@example.com")
    page = await site.client.get(f"/p/{sub.token}")
    assert page.status_code == 200 and "ann@example.com" in page.text
    form = await site.form(f"/p/{sub.token}")
    assert form["fields"]["list"] == "demo"
    data = {
        **form["fields"],
        "list": ["demo"],
        "cadence": "daily",
        "send_hour": "6",
        "timezone": "Asia/Tokyo",
        "name": "Ann",
    }
    saved = await site.client.post(f"/p/{sub.token}", data=data)
    assert saved.status_code == 200 and "saved" in saved.text
    after = await site.sub("ann@example.com")
    assert after is not None and (after.cadence, after.send_hour, after.timezone) == (
        "daily",
        6,
        "Asia/Tokyo",
    )
    assert after.next_due_at is not None
    local = after.next_due_at.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))
    assert (local.hour, local.minute) == (6, 0)
    assert "preferences_changed" in await site.event_kinds("ann@example.com")
    async with site.app.db.read() as s:
        reader = await readers_store.subscriber_by_email(s, "ann@example.com")
    assert reader is not None and reader.name == "Ann"


async def test_preferences_add_a_list_by_double_opt_in_and_leave_one(site: Site) -> None:
    sub = await site.add_reader("ann@example.com")
    form = await site.form(f"/p/{sub.token}")
    saved = await site.client.post(f"/p/{sub.token}", data={**form["fields"], "list": ["tech"]})
    assert saved.status_code == 200 and "confirmation link" in saved.text
    demo, tech = await site.sub("ann@example.com"), await site.sub("ann@example.com", "tech")
    assert demo is not None and demo.status == "unsubscribed" and demo.unsubscribe_method == "preferences"
    assert tech is not None and tech.status == "pending"
    await site.deliver()
    assert "Tech Weekly" in site.mail_to("ann@example.com")[0]["Subject"]


async def test_preferences_need_the_csrf_token_and_get_changes_nothing(lite: Site) -> None:
    sub = await lite.add_reader("ann@example.com")
    for method in ("GET", "HEAD"):
        assert (await lite.client.request(method, f"/p/{sub.token}")).status_code == 200
    refused = await lite.client.post(
        f"/p/{sub.token}", data={"list": [], "cadence": "daily", "send_hour": "5"}
    )
    assert refused.status_code == 403
    refused = await lite.client.post(f"/p/{sub.token}/leave", data={})
    assert refused.status_code == 403
    after = await lite.sub("ann@example.com")
    assert after is not None and after.status == "confirmed" and after.cadence == "default"


async def test_leave_everything_unsubscribes_from_every_list(lite: Site) -> None:
    sub = await lite.add_reader("ann@example.com")
    await lite.add_reader("ann@example.com", slug="tech")
    page = await lite.client.get(f"/p/{sub.token}")
    leave = next(f for f in Forms(page.text).forms if f["action"].endswith("/leave"))
    answer = await lite.client.post(leave["action"].removeprefix(BASE), data=leave["fields"])
    assert answer.status_code == 200 and "left every list" in answer.text
    for slug in ("demo", "tech"):
        assert (await lite.sub("ann@example.com", slug)).status == "unsubscribed"  # type: ignore[union-attr]


async def test_test_send_links_lead_to_an_inert_page(lite: Site) -> None:
    for path in ("/u/test", "/p/test"):
        answer = await lite.client.get(path)
        assert answer.status_code == 200 and "test" in answer.text
    assert (await lite.client.post("/u/test", data={"List-Unsubscribe": "One-Click"})).status_code == 200


# ---------------------------------------------------------------- archive and health


async def test_archive_index_lists_public_lists_and_health_answers(lite: Site) -> None:
    index = await lite.client.get("/archive")
    assert index.status_code == 200 and "/archive/demo" in index.text
    assert (await lite.client.get("/healthz")).json() == {"status": "ok"}


async def test_the_signup_api_is_documented_in_openapi(lite: Site) -> None:
    schema = (await lite.client.get("/openapi.json")).json()
    body = schema["paths"]["/subscribe"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-www-form-urlencoded"} <= set(body)
    assert {"email", "list", "consent"} <= set(body["application/json"]["schema"]["properties"])
    assert "/api/subscribers" not in schema["paths"]  # the operator API: only with its token
    operator = (await lite.client.get("/openapi.json", headers=auth())).json()
    assert "/api/subscribers" in operator["paths"] and "/api/sources/{name}/articles" in operator["paths"]


# ---------------------------------------------------------------- operator API


def auth(token: str = API_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_operator_api_needs_the_bearer_token(lite: Site) -> None:
    for headers in (
        {},
        auth("wrong"),
        {"Authorization": "Basic eDp5"},
        {"Authorization": "Bearer \xe9".encode("latin-1")},
    ):
        answer = await lite.client.get("/api/subscribers", headers=headers)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "unauthorized"
    assert (await lite.client.get("/api/subscribers", headers=auth())).status_code == 200


async def test_the_operator_api_is_off_without_a_token(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    url = f"sqlite:///{tmp_path}/digest.db"
    async with open_site(tmp_path, url, smtp_sink, extra="") as site:
        answer = await site.client.get("/api/subscribers", headers=auth())
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "api_disabled"


async def test_operators_add_list_export_and_remove_subscribers(site: Site) -> None:
    added = await site.client.post(
        "/api/subscribers",
        headers=auth(),
        json={"email": "ann@example.com", "lists": ["demo"], "confirmed": True},
    )
    assert added.status_code == 201
    assert added.json()["subscriptions"] == [{"list": "demo", "status": "confirmed"}]
    pending = await site.client.post(
        "/api/subscribers", headers=auth(), json={"email": "bob@example.com", "lists": ["tech"]}
    )
    assert pending.json()["subscriptions"] == [{"list": "tech", "status": "pending"}]
    await site.deliver()
    assert len(site.mail_to("bob@example.com")) == 1
    listed = (await site.client.get("/api/subscribers?list=demo", headers=auth())).json()
    assert [r["email"] for r in listed["subscribers"]] == ["ann@example.com"]
    one = (await site.client.get("/api/subscribers/ann@example.com", headers=auth())).json()
    assert one["subscriptions"][0]["status"] == "confirmed"
    export = await site.client.get("/api/subscribers/export", headers=auth())
    assert export.headers["content-type"].startswith("text/csv")
    assert export.text.splitlines()[0].startswith("email,name,list,status")
    assert len(export.text.splitlines()) == 3
    removed = await site.client.delete("/api/subscribers/ann@example.com", headers=auth())
    assert removed.json() == {"email": "ann@example.com", "unsubscribed": ["demo"]}
    sub = await site.sub("ann@example.com")
    assert sub is not None and sub.unsubscribe_method == "operator"
    erased = await site.client.delete("/api/subscribers/bob@example.com?erase=true", headers=auth())
    assert erased.json()["erased"] is True
    missing = await site.client.get("/api/subscribers/bob@example.com", headers=auth())
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    bad = await site.client.post("/api/subscribers", headers=auth(), json={"email": "x", "lists": []})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid"


async def test_articles_pushed_into_an_api_source_are_normalized_and_stored_once(site: Site) -> None:
    article = {
        "title": "  A pushed\nstory  ",
        "url": "HTTPS://News.Example.com/story?utm_source=x&b=2&a=1#top",
        "content_html": "<p>Real text here.</p><script>alert(1)</script><img src=x onerror=alert(1)>",
        "published_at": "2026-01-02T03:04:05+01:00",
    }
    pushed = await site.client.post(
        "/api/sources/pushed/articles", headers=auth(), json={"articles": [article, article]}
    )
    assert pushed.status_code == 201
    assert pushed.json() == {"received": 2, "stored": 1, "updated": 0, "known": 1, "linked": 0}
    async with site.app.db.read() as s:
        row = (await s.execute(select(Article))).scalar_one()
        seq = (await s.execute(select(func.count()).select_from(ArticleSource))).scalar_one()
    assert row.url == "https://news.example.com/story?a=1&b=2"
    assert row.title == "A pushed story"
    assert "script" not in row.content and "onerror" not in row.content
    assert row.published_at == datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC) and seq == 1
    wrong = await site.client.post("/api/sources/seeds/articles", headers=auth(), json=article)
    assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "wrong_kind"
    unknown = await site.client.post("/api/sources/nope/articles", headers=auth(), json=article)
    assert unknown.status_code == 404
    invalid = await site.client.post(
        "/api/sources/pushed/articles", headers=auth(), json={"title": 5, "bogus": 1}
    )
    assert invalid.status_code == 422 and invalid.json()["error"]["code"] == "invalid"
    not_http = await site.client.post(
        "/api/sources/pushed/articles", headers=auth(), json={"title": "x", "url": "javascript:alert(1)"}
    )
    assert not_http.status_code == 422


async def test_events_record_every_reader_action(lite: Site) -> None:
    await lite.signup_json("ann@example.com")
    await lite.deliver()
    await lite.confirm("ann@example.com")
    sub = await lite.sub("ann@example.com")
    assert sub is not None
    form = await lite.form(f"/p/{sub.token}")
    await lite.client.post(f"/p/{sub.token}", data={**form["fields"], "cadence": "daily", "send_hour": "9"})
    await lite.client.post(f"/u/{sub.token}", data={"List-Unsubscribe": "One-Click"})
    async with lite.app.db.read() as s:
        kinds = [e.kind for e in (await s.execute(select(Event).order_by(Event.id))).scalars()]
    assert kinds == ["subscribed", "confirmation_sent", "confirmed", "preferences_changed", "unsubscribed"]


async def test_a_test_send_is_a_draft_its_copy_opens_only_from_its_own_link(site: Site) -> None:
    lst = await bootstrap.get_list(site.app, "demo")
    await sources.ingest_sources(site.app, site.clock())
    await compose.queue_test(site.app, lst, "tester@example.org", site.clock())
    await site.deliver()
    text = site.mail_to("tester@example.org")[-1].get_body(("plain",))
    assert text is not None
    link = re.search(re.escape(BASE) + r"(/archive/demo/(\d+)\?t=\w+)", text.get_content())
    assert link, text.get_content()
    path, edition_id = link.group(1), link.group(2)
    assert (await site.client.get(path)).status_code == 200
    # Counting through /archive/SLUG/ID, or forging the signature, finds nothing.
    assert (await site.client.get(f"/archive/demo/{edition_id}")).status_code == 404
    assert (await site.client.get(f"/archive/demo/{edition_id}?t=0123456789abcdef")).status_code == 404
    archive = await site.client.get("/archive/demo")
    assert f"/archive/demo/{edition_id}" not in archive.text
    assert (await site.client.get(f"/archive/demo/{edition_id}/stories")).status_code == 404


async def test_the_archive_shows_an_edition_only_once_a_reader_received_it(site: Site) -> None:
    lst = await bootstrap.get_list(site.app, "demo")
    await sources.ingest_sources(site.app, site.clock())
    async with site.app.db.read() as s:
        d = await compose.draft(site.app, s, lst, 0, 10**9, site.clock())
    async with site.app.db.write() as s:
        unsent = await compose._new_edition(site.app, s, d, site.clock())  # no reader composed into it
    await site.add_reader("ann@example.com")
    report = await compose.compose(site.app, lst, site.clock(), manual=True)
    (composed,) = report.editions
    for edition_id in (unsent, composed):
        assert (await site.client.get(f"/archive/demo/{edition_id}")).status_code == 404
        assert (await site.client.get(f"/archive/demo/{edition_id}/stories")).status_code == 404
    assert "/archive/demo/" not in (await site.client.get("/archive/demo")).text
    await site.deliver()
    assert (await site.client.get(f"/archive/demo/{composed}")).status_code == 200
    assert (await site.client.get(f"/archive/demo/{composed}/stories")).status_code == 200
    assert (await site.client.get(f"/archive/demo/{unsent}")).status_code == 404
    listed = set(re.findall(r"/archive/demo/(\d+)", (await site.client.get("/archive/demo")).text))
    assert listed == {str(composed)}
