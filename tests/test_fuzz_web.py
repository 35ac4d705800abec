"""Hostile and malformed input at every endpoint (hypothesis): no 500s, no stored garbage, no header injection."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from conftest import SmtpSink
from digest import readers, signup_form
from digest.models import Article, Subscriber, Subscription
from test_web import API_TOKEN, RELAXED, Site, open_site

NASTY = [
    "\r\n", "\r\nBcc: victim@example.net", "\x00", "\ud800", "\u202e", "<script>alert(1)</script>",
    "' OR 1=1 --", "../../etc/passwd", "%0d%0aSet-Cookie: x=1", "=cmd|' /C calc'!A0", "a" * 2000,
    "ann@example.com", "ann@example.com\nbob@example.com", "\"ann\"@example.com", "ann@[127.0.0.1]",
    "Zoë 李", "", " ", "null", "demo", "tech", "default", "daily", "weekly", "7", "-1", "99", "Europe/Berlin",
]  # fmt: skip
hostile_text = st.one_of(st.sampled_from(NASTY), st.text(max_size=60))
# A URL carries UTF-8: a lone surrogate cannot be put in one (the client refuses before sending).
query_text = hostile_text.map(lambda t: t.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | hostile_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=6,
)
emailish = st.one_of(
    st.emails(),
    st.builds(lambda a, b: a + b, st.emails(), hostile_text),
    st.builds(lambda a, b: a + b, hostile_text, st.emails()),
    json_value,
)
signup_body = st.fixed_dictionaries(
    {},
    optional={
        "email": emailish,
        "name": st.one_of(hostile_text, json_value),
        "list": st.one_of(st.sampled_from(["demo", "tech", ["demo", "tech"]]), json_value),
        "cadence": st.one_of(st.sampled_from(["default", "daily", "weekly"]), json_value),
        "weekday": json_value,
        "send_hour": json_value,
        "timezone": st.one_of(st.sampled_from(["Europe/Berlin", "UTC", "Mars/Base"]), json_value),
        "consent": st.one_of(st.just(True), json_value),
        "website": json_value,
        "source": json_value,
        "consent_text_version": json_value,
    },
)
path_part = st.one_of(
    hostile_text, st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-_.", max_size=120)
).map(lambda s: urllib.parse.quote(s.encode("utf-8", "surrogatepass"), safe="") or "x")
FUZZ = settings(
    max_examples=int(__import__("os").environ.get("DIGEST_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@pytest.fixture
def fuzz_site(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[tuple[asyncio.AbstractEventLoop, Site]]:
    loop = asyncio.new_event_loop()
    opened = open_site(tmp_path, f"sqlite:///{tmp_path}/digest.db", smtp_sink, rate_limits=RELAXED)
    site = loop.run_until_complete(opened.__aenter__())
    try:
        yield loop, site
    finally:
        loop.run_until_complete(opened.__aexit__(None, None, None))
        loop.close()


def request(loop: asyncio.AbstractEventLoop, site: Site, method: str, path: str, **kw: Any) -> int:
    answer = loop.run_until_complete(site.client.request(method, path, **kw))
    assert answer.status_code < 500, (method, path, kw, answer.status_code, answer.text[:300])
    is_json = answer.headers.get("content-type", "").startswith("application/json")
    if is_json and answer.status_code >= 400 and method != "HEAD":
        error = answer.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert "location" not in answer.headers
    return answer.status_code


def as_json(body: Any, headers: dict[str, str]) -> dict[str, Any]:
    """A JSON body as a hostile client sends it: NaN, Infinity and lone surrogates included."""
    return {"content": json.dumps(body).encode(), "headers": {**headers, "Content-Type": "application/json"}}


def assert_nothing_stored_is_garbage(loop: asyncio.AbstractEventLoop, site: Site) -> None:
    async def check() -> None:
        async with site.app.db.read() as s:
            for reader in (await s.execute(select(Subscriber))).scalars():
                assert readers.normalize_address(reader.email)[0] == reader.email
                assert signup_form.clean_name(reader.name) == reader.name
            for sub in (await s.execute(select(Subscription))).scalars():
                assert sub.cadence in ("default", "daily", "weekly")
                assert sub.send_hour is None or 0 <= sub.send_hour <= 23
                assert sub.weekday is None or 0 <= sub.weekday <= 6
                assert sub.timezone is None or signup_form.valid_zone(sub.timezone)
                for text in (
                    sub.signup_source,
                    sub.signup_referer,
                    sub.signup_user_agent,
                    sub.consent_text_version,
                ):
                    assert text is None or text == signup_form.clean_text(text, 500)
            for article in (await s.execute(select(Article))).scalars():
                assert article.title == " ".join(article.title.split()) and "\x00" not in article.title
                assert "<script" not in article.content and "onerror" not in article.content

    loop.run_until_complete(check())


def test_hostile_signups_never_fail_and_store_only_clean_values(
    fuzz_site: tuple[asyncio.AbstractEventLoop, Site],
) -> None:
    loop, site = fuzz_site
    form = loop.run_until_complete(site.form("/subscribe"))

    @FUZZ
    @given(body=signup_body, as_form=st.booleans(), raw=st.one_of(st.none(), st.binary(max_size=200)))
    def run(body: dict[str, Any], as_form: bool, raw: bytes | None) -> None:
        if raw is not None:
            request(
                loop, site, "POST", "/subscribe", content=raw, headers={"Content-Type": "application/json"}
            )
            request(
                loop,
                site,
                "POST",
                "/subscribe",
                content=raw,
                headers={"Content-Type": "multipart/form-data; boundary=x"},
            )
        if as_form:
            data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}
            data = {k: v.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for k, v in data.items()}
            request(loop, site, "POST", "/subscribe", data={**form["fields"], **data})
        else:
            request(
                loop,
                site,
                "POST",
                "/subscribe",
                content=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )

    run()
    assert_nothing_stored_is_garbage(loop, site)


def test_hostile_tokens_and_paths_are_refused_cleanly(
    fuzz_site: tuple[asyncio.AbstractEventLoop, Site],
) -> None:
    loop, site = fuzz_site
    confirmed = loop.run_until_complete(site.add_reader("ann@example.com"))

    @FUZZ
    @given(
        part=path_part,
        other=path_part,
        prefix=st.sampled_from(
            ["/confirm/", "/u/", "/p/", "/subscribe/", "/archive/", "/articles/", "/api/subscribers/"]
        ),
        suffix=st.sampled_from(["", "/resend", "/leave", "/1"]),
        method=st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PUT"]),
        body=st.one_of(
            st.none(), st.binary(max_size=200), st.dictionaries(hostile_text, hostile_text, max_size=4)
        ),
    )
    def run(part: str, other: str, prefix: str, suffix: str, method: str, body: Any) -> None:
        headers = {"Authorization": f"Bearer {API_TOKEN}"} if prefix.startswith("/api") else {}
        path = prefix + part + (suffix if suffix != "/1" else "/" + other)
        if isinstance(body, dict) and method not in ("GET", "HEAD"):
            encoded = urllib.parse.urlencode(
                {
                    k.encode("utf-8", "surrogatepass"): v.encode("utf-8", "surrogatepass")
                    for k, v in body.items()
                }
            )
            form = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
            request(loop, site, method, path, content=encoded.encode(), headers=form)
        elif isinstance(body, bytes) and method not in ("GET", "HEAD"):
            request(
                loop,
                site,
                method,
                path,
                content=body,
                headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
            )
        else:
            request(loop, site, method, path, headers=headers)

    run()
    still = loop.run_until_complete(site.sub("ann@example.com"))
    assert still is not None and still.status == "confirmed" and still.token == confirmed.token
    assert_nothing_stored_is_garbage(loop, site)


def test_hostile_operator_api_input_never_fails(fuzz_site: tuple[asyncio.AbstractEventLoop, Site]) -> None:
    loop, site = fuzz_site
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    article = st.fixed_dictionaries(
        {},
        optional={
            "title": json_value, "url": st.one_of(hostile_text, st.just("https://example.com/a?utm_source=x")),
            "guid": json_value, "content_html": st.one_of(hostile_text, json_value), "summary": json_value,
            "author": json_value, "published_at": st.one_of(st.sampled_from(["2026-01-01T00:00:00", "2999-01-01T00:00:00Z", "yesterday"]), json_value),
            "image_url": json_value,
        },
    )  # fmt: skip

    @FUZZ
    @given(
        which=st.sampled_from(["article", "batch", "subscriber", "query", "raw"]),
        item=article,
        many=st.lists(article, max_size=3),
        who=signup_body,
        confirmed=json_value,
        query=st.dictionaries(
            st.sampled_from(["list", "status", "limit", "offset", "erase"]), query_text, max_size=3
        ),
        raw=st.binary(max_size=300),
    )
    def run(which: str, item: Any, many: Any, who: Any, confirmed: Any, query: Any, raw: bytes) -> None:
        if which == "article":
            request(loop, site, "POST", "/api/sources/pushed/articles", **as_json(item, auth))
        elif which == "batch":
            request(loop, site, "POST", "/api/sources/pushed/articles", **as_json({"articles": many}, auth))
        elif which == "subscriber":
            body = {**who, "lists": who.get("list", ["demo"]), "confirmed": confirmed}
            body.pop("list", None)
            request(loop, site, "POST", "/api/subscribers", **as_json(body, auth))
        elif which == "query":
            request(loop, site, "GET", "/api/subscribers", params=query, headers=auth)
            request(loop, site, "GET", "/api/subscribers/export", params=query, headers=auth)
            request(loop, site, "DELETE", "/api/subscribers/nobody@example.com", params=query, headers=auth)
        else:
            request(
                loop,
                site,
                "POST",
                "/api/subscribers",
                content=raw,
                headers={**auth, "Content-Type": "application/json"},
            )

    run()
    assert_nothing_stored_is_garbage(loop, site)


def test_confirmation_mail_carries_no_injected_headers(
    fuzz_site: tuple[asyncio.AbstractEventLoop, Site],
) -> None:
    loop, site = fuzz_site
    sent: list[str] = []

    @settings(FUZZ, max_examples=40)
    @given(name=hostile_text, local=st.sampled_from(["ann", "bob", "cat", "dan"]), n=st.integers(0, 10**6))
    def run(name: str, local: str, n: int) -> None:
        address = f"{local}{n}@example.com"
        status = request(
            loop,
            site,
            "POST",
            "/subscribe",
            **as_json({"email": address, "name": name, "list": ["demo", "tech"], "consent": True}, {}),
        )
        if status == 202:
            sent.append(address)

    run()
    loop.run_until_complete(site.deliver())
    allowed = {
        "from", "to", "subject", "date", "message-id", "mime-version", "content-type", "reply-to",
        "auto-submitted", "content-transfer-encoding",
    }  # fmt: skip
    assert site.sink.messages
    for received in site.sink.messages:
        msg = email.message_from_bytes(received.data, policy=email.policy.default)
        names = {k.lower() for k in msg}
        assert names <= allowed, names - allowed
        assert len(msg.get_all("To", [])) == 1 and len(msg["To"].addresses) == 1
        assert msg["To"].addresses[0].addr_spec in received.rcpt_tos
        assert not msg.defects
