"""Issue 15, the web half: operator credentials never in URLs, the operator API hidden from
strangers, redirects that ignore the Host header, strings no field accepts refused before the
database, and signup work off the connection's path."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from conftest import SmtpSink, free_port, run_digest, serving, write_config
from digest import signup
from digest.web import auth, inputs
from digest.web.work import WorkQueue
from test_web import API_TOKEN, BASE, Forms, Site, open_site, settled

HTTPS = "https://news.example.com"


@pytest.fixture
async def lite(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[Site]:
    async with open_site(tmp_path, f"sqlite:///{tmp_path}/digest.db", smtp_sink) as s:
        yield s


@pytest.fixture
async def secure(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[tuple[Site, httpx.AsyncClient]]:
    """A site whose base_url is https, with a browser-like client on that origin."""
    env = {"DIGEST_WEB__BASE_URL": HTTPS}
    async with (
        open_site(tmp_path, f"sqlite:///{tmp_path}/digest.db", smtp_sink, environ=env) as site,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=settled(site.asgi)), base_url=HTTPS) as browser,
    ):
        yield site, browser


def bearer(token: str = API_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login_form(html: str) -> dict[str, Any]:
    return next(f for f in Forms(html).forms if f["action"].endswith("/admin/login"))


async def log_in(client: httpx.AsyncClient, token: str = API_TOKEN) -> httpx.Response:
    shown = await client.get("/admin")
    form = login_form(shown.text)
    return await client.post("/admin/login", data={**form["fields"], "token": token})


def set_cookie(answer: httpx.Response, name: str) -> str | None:
    return next((h for h in answer.headers.get_list("set-cookie") if h.startswith(f"{name}=")), None)


# ---------------------------------------------------------------- the admin page


async def test_the_admin_token_in_the_query_string_opens_nothing(lite: Site) -> None:
    answer = await lite.client.get(f"/admin?token={API_TOKEN}")
    assert answer.status_code == 401
    assert "Recent editions" not in answer.text and login_form(answer.text)
    assert set_cookie(answer, auth.COOKIE) is None


async def test_the_admin_page_takes_the_bearer_token(lite: Site) -> None:
    answer = await lite.client.get("/admin", headers=bearer())
    assert answer.status_code == 200 and "Recent editions" in answer.text
    assert "Sign out" not in answer.text  # a header is not a session


async def test_the_login_form_sets_a_strict_short_lived_cookie_that_opens_the_page(
    secure: tuple[Site, httpx.AsyncClient],
) -> None:
    _, browser = secure
    shown = await browser.get("/admin")
    assert shown.status_code == 401 and "Operator token" in shown.text
    assert login_form(shown.text)["action"] == f"{HTTPS}/admin/login"
    answer = await log_in(browser)
    assert answer.status_code == 303 and answer.headers["location"] == f"{HTTPS}/admin"
    cookie = set_cookie(answer, auth.COOKIE)
    assert cookie is not None and API_TOKEN not in cookie
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= set(attributes)
    assert attributes["samesite"].lower() == "samesite=strict"
    assert attributes["path"] == "Path=/admin" and attributes["max-age"] == "Max-Age=43200"
    page = await browser.get("/admin")
    assert page.status_code == 200 and "Recent editions" in page.text and "Sign out" in page.text
    logout = next(f for f in Forms(page.text).forms if f["action"].endswith("/admin/logout"))
    left = await browser.post("/admin/logout", data=logout["fields"])
    assert left.status_code == 303 and left.headers["location"] == f"{HTTPS}/admin"
    assert (await browser.get("/admin")).status_code == 401


async def test_a_cookie_over_plain_http_is_not_marked_secure(lite: Site) -> None:
    cookie = set_cookie(await log_in(lite.client), auth.COOKIE)
    assert cookie is not None and "secure" not in cookie.lower() and "httponly" in cookie.lower()


async def test_a_wrong_token_gets_401_and_the_form_with_no_hint(lite: Site) -> None:
    texts = []
    for wrong in ("x", API_TOKEN[:-1], API_TOKEN + "x", API_TOKEN.upper(), "é" * 40):
        answer = await log_in(lite.client, wrong)
        assert answer.status_code == 401 and login_form(answer.text)
        assert set_cookie(answer, auth.COOKIE) is None and "location" not in answer.headers
        texts.append(re.sub(r'value="[^"]*"', "", answer.text))
    assert len(set(texts)) == 1  # nothing about how close it was
    assert (await lite.client.get("/admin")).status_code == 401


async def test_the_login_form_needs_its_csrf_token(lite: Site) -> None:
    answer = await lite.client.post("/admin/login", data={"token": API_TOKEN})
    assert answer.status_code == 403 and set_cookie(answer, auth.COOKIE) is None


async def test_an_expired_tampered_or_foreign_session_cookie_is_refused(lite: Site) -> None:
    answer = await log_in(lite.client)
    value = answer.cookies[auth.COOKIE]
    assert (await lite.client.get("/admin")).status_code == 200
    lite.clock.offset = timedelta(hours=11, minutes=59)
    assert (await lite.client.get("/admin")).status_code == 200
    lite.clock.offset = timedelta(hours=12, minutes=1)
    assert (await lite.client.get("/admin")).status_code == 401
    lite.clock.offset = timedelta()
    payload, _, signature = value.rpartition(".")
    tampered = [
        # a middle character: the last one of base64 also carries padding bits nobody checks
        payload + "." + signature[:5] + ("A" if signature[5] != "A" else "B") + signature[6:],
        payload.replace(payload[2], "x" if payload[2] != "x" else "y", 1) + "." + signature,
        auth.AdminSessions(["another-service-key-0123456789"]).mint(API_TOKEN, lite.clock()),
        auth.AdminSessions(lite.app.keys).mint("an-older-operator-token", lite.clock()),
        "",
        "x" * 5000,
    ]
    for cookie in tampered:
        lite.client.cookies.clear()
        answer = await lite.client.get("/admin", headers={"Cookie": f"{auth.COOKIE}={cookie}"})
        assert answer.status_code == 401, cookie


# ---------------------------------------------------------------- /openapi.json


async def test_openapi_lists_the_operator_api_only_to_the_operator(lite: Site) -> None:
    for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {API_TOKEN}"}):
        public = await lite.client.get("/openapi.json", headers=headers)
        assert public.status_code == 200 and "/subscribe" in public.json()["paths"]
        assert not [p for p in public.json()["paths"] if p.startswith("/api/")]
        assert "SubscriberIn" not in public.text and "ArticleBatch" not in public.text
    full = (await lite.client.get("/openapi.json", headers=bearer())).json()
    assert "/api/subscribers" in full["paths"] and "/api/sources/{name}/articles" in full["paths"]
    assert "/subscribe" in full["paths"]
    for page in ("/docs", "/redoc", "/openapi.json?token=" + API_TOKEN):
        answer = await lite.client.get(page)
        assert answer.status_code == 404 or "/api/subscribers" not in answer.text


# ---------------------------------------------------------------- redirects ignore Host


def flat(routes: list[Any]) -> list[Route]:
    """Every route, including those of included routers."""
    found: list[Route] = []
    for route in routes:
        if hasattr(route, "original_router"):
            found += flat(route.original_router.routes)
        elif isinstance(route, Route):
            found.append(route)
    return found


async def test_every_redirect_goes_to_base_url_whatever_host_was_sent(lite: Site) -> None:
    evil = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    plain = [r.path for r in flat(lite.asgi.routes) if "{" not in r.path and r.path != "/"]
    assert {"/subscribe", "/archive", "/admin", "/healthz", "/openapi.json"} <= set(plain)
    for path in [*plain, "/subscribe/demo", "/archive/demo"]:
        answer = await lite.client.get(path + "/?a=1", headers=evil)
        assert answer.status_code == 308, path
        assert answer.headers["location"] == f"{BASE}{path}?a=1", path
    posted = await lite.client.post("/subscribe/", headers=evil, json={})
    assert posted.status_code == 307 and posted.headers["location"] == f"{BASE}/subscribe"
    home = await lite.client.get("/", headers=evil)
    assert home.status_code == 303 and home.headers["location"] == f"{BASE}/subscribe"
    form = login_form((await lite.client.get("/admin", headers=evil)).text)
    assert form["action"] == f"{BASE}/admin/login"
    login = await lite.client.post("/admin/login", data={**form["fields"], "token": API_TOKEN}, headers=evil)
    assert login.status_code == 303 and login.headers["location"] == f"{BASE}/admin"
    page = await lite.client.get("/admin", headers=evil)
    logout = next(f for f in Forms(page.text).forms if f["action"].endswith("/admin/logout"))
    left = await lite.client.post("/admin/logout", data=logout["fields"], headers=evil)
    assert left.status_code == 303 and left.headers["location"] == f"{BASE}/admin"
    for path in ("/subscribe", "/archive", "/admin"):
        assert "evil.example" not in (await lite.client.get(path, headers=evil)).text
    assert (await lite.client.get("/nothing-here/", headers=evil)).status_code == 404


# ---------------------------------------------------------------- strings no field accepts


@pytest.mark.parametrize(
    ("text", "clean"),
    [("demo", True), ("Zoë 李 \u202e", True), ("a\x00b", False), ("\ud800", False), ("x\udfff", False)],
)
def test_strings_with_nul_or_a_lone_surrogate_are_unclean(text: str, clean: bool) -> None:
    assert inputs.clean(text) is clean
    assert inputs.json_clean({"k": [1, None, {"deep": text}]}) is clean
    assert inputs.json_clean({text: 1}) is clean


@pytest.mark.parametrize(
    ("body", "ctype", "clean"),
    [
        (b"email=ann%40example.com&name=Zo%C3%AB", "application/x-www-form-urlencoded", True),
        (b"name=a%00b", "application/x-www-form-urlencoded", False),
        (b"name=%ed%a0%80", "application/x-www-form-urlencoded", False),  # a surrogate, in UTF-8
        (b"name=%e9", "application/x-www-form-urlencoded", False),  # Latin-1
        (b'--x\r\nContent-Disposition: form-data; name="n"\r\n\r\na\x00b\r\n--x--', "multipart/form-data", False),
        (b'--x\r\nContent-Disposition: form-data; name="n"\r\n\r\nZo\xc3\xab\r\n--x--', "multipart/form-data", True),
    ],
)  # fmt: skip
def test_form_bodies_must_decode_to_utf_8_without_nul(body: bytes, ctype: str, clean: bool) -> None:
    assert inputs.form_clean(body, ctype) is clean


def test_tokens_match_only_exactly() -> None:
    assert auth.token_matches(API_TOKEN, API_TOKEN)
    for wrong in ("", API_TOKEN[:-1], API_TOKEN + " ", "\ud800"):
        assert not auth.token_matches(wrong, API_TOKEN)
    assert not auth.token_matches("", "") and not auth.token_matches("x", None)


async def test_nul_surrogates_and_deep_json_get_a_clean_4xx_before_the_database(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_site(tmp_path, database_url, smtp_sink) as site:
        await site.add_reader("ann@example.com")
        c = site.client
        deep = b"[" * 20_000 + b"]" * 20_000  # within the 64 KiB body limit
        deep_object = b'{"a":' * 9_000 + b"1" + b"}" * 9_000
        answers = {
            "archive path": await c.get("/archive/a%00b"),
            "archive edition": await c.get("/archive/demo/1%00"),
            "signup path": await c.get("/subscribe/a%00b"),
            "story path": await c.get("/s/a%00b"),
            "api list": await c.get("/api/subscribers?list=a%00b", headers=bearer()),
            "api export": await c.get("/api/subscribers/export?list=%00", headers=bearer()),
            "api status": await c.get("/api/subscribers?status=%00", headers=bearer()),
            "api address": await c.get("/api/subscribers/ann%00@example.com", headers=bearer()),
            "query on a page": await c.get("/subscribe?x=%00"),
            "signup json nul": await c.post(
                "/subscribe", json={"email": "bob@example.com", "list": ["de\x00mo"], "consent": True}
            ),
            "signup json surrogate": await c.post(
                "/subscribe",
                content=b'{"email": "bob@example.com", "name": "\\ud800", "list": ["demo"], "consent": true}',
                headers={"Content-Type": "application/json"},
            ),
            "signup json key": await c.post(
                "/subscribe", json={"email": "bob@example.com", "list": ["demo"], "consent": True, "\x00": 1}
            ),
            "signup deep list": await c.post(
                "/subscribe", content=deep, headers={"Content-Type": "application/json"}
            ),
            "signup deep object": await c.post(
                "/subscribe", content=deep_object, headers={"Content-Type": "application/json"}
            ),
            "api deep": await c.post(
                "/api/subscribers", content=deep, headers={**bearer(), "Content-Type": "application/json"}
            ),
            "signup form nul": await c.post("/subscribe", content=b"email=a%00b&list=demo",
                                            headers={"Content-Type": "application/x-www-form-urlencoded"}),
            "signup form bad utf-8": await c.post("/subscribe", content=b"email=%ed%a0%80&list=demo",
                                                  headers={"Content-Type": "application/x-www-form-urlencoded"}),
            "signup multipart nul": await c.post("/subscribe", files={"name": (None, "a\x00b")}),
            "api add nul": await c.post(
                "/api/subscribers", json={"email": "bob@example.com", "lists": ["de\x00mo"]}, headers=bearer()
            ),
            "api articles nul": await c.post(
                "/api/sources/pushed/articles",
                json={"articles": [{"title": "a\x00b", "url": "https://example.com/x"}]},
                headers=bearer(),
            ),
            "unsubscribe nul": await c.post("/u/abc%00def", data={"List-Unsubscribe": "One-Click"}),
            "preferences nul": await c.get("/p/abc%00def"),
        }  # fmt: skip
        await site.deliver()
    statuses = {what: a.status_code for what, a in answers.items()}
    assert all(400 <= s < 500 for s in statuses.values()), statuses
    assert statuses["archive path"] == statuses["signup path"] == 404
    assert statuses["api list"] == statuses["signup json nul"] == statuses["signup form nul"] == 422
    assert statuses["signup deep list"] == statuses["api deep"] == 400
    assert answers["api list"].json()["error"]["code"] == "invalid"
    assert "<html" in answers["signup form nul"].text
    assert site.sink.to("bob@example.com") == []
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert problems == [], [r.getMessage() for r in problems]


# ---------------------------------------------------------------- signup work off the request path


async def test_a_signup_answers_before_its_work_runs_whatever_the_address(
    tmp_path: Path, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, started = asyncio.Event(), []
    original = signup.request_confirmation

    async def held(*args: Any, **kwargs: Any) -> Any:
        started.append(args[1].address)
        await gate.wait()
        return await original(*args, **kwargs)

    monkeypatch.setattr(signup, "request_confirmation", held)
    async with open_site(tmp_path, f"sqlite:///{tmp_path}/digest.db", smtp_sink) as site:
        await site.add_reader("old@example.com")
        work: WorkQueue = site.asgi.state.web.work
        direct = httpx.AsyncClient(transport=httpx.ASGITransport(app=site.asgi), base_url=BASE)
        async with direct:
            answers = []
            for address in ("new@example.com", "old@example.com"):
                body = {"email": address, "list": ["demo"], "consent": True}
                answers.append(await direct.post("/subscribe", json=body))
            # Both answered while their work is still held: nothing was awaited on the request.
            assert await site.sub("new@example.com") is None
            await asyncio.sleep(0)
            assert started == ["new@example.com"] and work._jobs.qsize() == 1
            new, old = answers
            assert (new.status_code, new.content) == (old.status_code, old.content)
            assert {k for k in new.headers if k != "content-security-policy"} == {
                k for k in old.headers if k != "content-security-policy"
            }
            gate.set()
            await work.join()
        assert (await site.sub("new@example.com")).status == "pending"  # type: ignore[union-attr]
        await site.deliver()
        assert len(site.mail_to("new@example.com")) == 1 and site.mail_to("old@example.com") == []
        assert "Confirm" in str(site.mail_to("new@example.com")[0]["Subject"]) or site.confirm_path(
            "new@example.com"
        )


async def test_a_failure_in_queued_work_is_logged_and_the_queue_goes_on(
    lite: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = signup.request_confirmation

    async def broken_once(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(signup, "request_confirmation", original)
        raise RuntimeError("the database went away")

    monkeypatch.setattr(signup, "request_confirmation", broken_once)
    first = await lite.signup_json("ann@example.com")
    assert first.status_code == 202 and json.loads(first.content)["status"] == "accepted"
    failures = [r for r in caplog.records if r.getMessage() == "signup (web) failed"]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert "the database went away" in str(failures[0].exc_info[1])
    assert lite.asgi.state.web.work.failed == 1
    assert (await lite.signup_json("bob@example.com")).status_code == 202
    await lite.deliver()
    assert len(lite.mail_to("bob@example.com")) == 1


async def test_the_work_queue_is_drained_when_the_app_shuts_down() -> None:
    done: list[int] = []
    wake = asyncio.Event()
    work = WorkQueue(wake)

    async def job(n: int) -> None:
        await asyncio.sleep(0.01)
        done.append(n)

    for n in range(3):
        work.submit(f"job {n}", lambda n=n: job(n))  # type: ignore[misc]
    assert done == []
    await work.close()
    assert done == [0, 1, 2] and wake.is_set()


def test_on_one_keep_alive_connection_a_new_and_a_known_address_answer_alike(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    port = free_port()
    config = write_config(
        tmp_path, database_url=f"sqlite:///{tmp_path}/digest.db", smtp_port=smtp_sink.port, web_port=port
    )
    run_digest(config, "init")
    run_digest(config, "subscribers", "add", "old@example.com", "--list", "demo", "--confirmed")
    mail_to_old = len(smtp_sink.to("old@example.com"))
    with serving(config, port) as (_, log):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        answers, sockets = [], set()
        for address in ("new@example.com", "old@example.com"):
            body = json.dumps({"email": address, "list": ["demo"], "consent": True})
            connection.request("POST", "/subscribe", body, {"Content-Type": "application/json"})
            answer = connection.getresponse()
            varying = {"date", "content-security-policy"}
            headers = sorted((k.lower(), v) for k, v in answer.getheaders() if k.lower() not in varying)
            answers.append((answer.status, answer.read(), headers))
            connection.request("GET", "/healthz")  # the next request on the same connection
            after = connection.getresponse()
            assert (after.status, after.read()) == (200, b'{"status":"ok"}')
            assert connection.sock is not None
            sockets.add(connection.sock.getsockname())
        connection.close()
        assert answers[0] == answers[1] and answers[0][0] == 202
        assert len(sockets) == 1  # one keep-alive connection throughout
        deadline = time.monotonic() + 15
        while not smtp_sink.to("new@example.com") and time.monotonic() < deadline:
            time.sleep(0.1)
    assert len(smtp_sink.to("new@example.com")) == 1  # the queued work ran and sent it
    assert len(smtp_sink.to("old@example.com")) == mail_to_old
    assert "Traceback" not in log.read_text()
