"""Signing up: the signup pages and POST /subscribe, from the page's form or as JSON.

POST /subscribe answers the same way whatever the address's state (no enumeration): a request
does the same work for every address (limits, parsing, validation) and queues the rest, which
depends on that state, on the app's work queue (work.py), off the connection's path.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from digest import bootstrap, readers, signup, signup_form, topics
from digest.schedule import describe_schedule
from digest.store import sources as sources_store
from digest.web import csrf
from digest.web.deps import DigestApp, Now, Web, WebState, client_ip, user_agent, web_state
from digest.web.errors import content_type, error_json
from digest.web.render import (
    FORM_TYPES,
    TOKEN,
    WEEKDAYS,
    ZONES,
    csrf_ok,
    message,
    page,
    rate_limited,
    read_form,
    readable,
    web_url,
)

router = APIRouter()

# The same words whatever the address's state (no enumeration), and true in every state: nothing
# is sent to a reader already subscribed, nor a second link within a day of an unanswered one.
ACCEPTED_TEXT = (
    "Check your inbox: if this address can receive mail and is not subscribed yet, a confirmation "
    "link is on its way (or, if we sent one in the last 24 hours, that one still works)."
)


class SignupIn(BaseModel):
    """POST /subscribe fields (JSON, or the same names form-encoded; `list` repeats in a form)."""

    email: str = Field(description="The reader's address.", examples=["ann@example.com"])
    name: str = ""
    lists: str | list[str] = Field(
        alias="list", description="A list slug, or several; one confirmation covers all."
    )
    cadence: Literal["default", "daily", "weekly"] = "default"
    weekday: int | str | None = Field(default=None, description="0 (Monday) to 6, or mon..sun; for weekly.")
    send_hour: int | None = Field(default=None, ge=0, le=23, description="Local hour; for daily and weekly.")
    timezone: str | None = Field(default=None, description="IANA time zone such as Europe/Berlin.")
    topics: list[str] | None = Field(
        default=None,
        description="Topic slugs of the chosen lists (absent: every topic); `list/topic` names one list's.",
        examples=[["transport", "local"]],
    )
    consent: bool = Field(description="The reader ticked the consent checkbox.")
    consent_text_version: str | None = None
    source: str | None = Field(default=None, description="The page the reader signed up on.")


class Accepted(BaseModel):
    status: Literal["accepted"]
    message: str


async def signup_lists(app: bootstrap.App, slug: str | None) -> list[dict[str, Any]]:
    """The list named `slug` (public or not), or every public list, as the pages show them."""
    async with app.db.read() as s:
        lists = await sources_store.active_lists(s)
    return [
        {
            "slug": lst.slug,
            "name": lst.name,
            "description": lst.description,
            "schedule": describe_schedule(lst.schedule, lst.timezone),
            "topics": topic_choices(app, lst.slug),
        }
        for lst in lists
        if (lst.slug == slug if slug else lst.public)
    ]


def topic_choices(app: bootstrap.App, slug: str) -> list[dict[str, str]]:
    """The topics a list offers, as the pages show them (in the list's order)."""
    cfg = topics.list_config(app, slug)
    return [
        {"slug": t.slug, "name": t.name, "description": t.description} for t in (cfg.topics if cfg else [])
    ]


def with_ticked_topics(lists: list[dict[str, Any]], ticked: list[str] | None) -> list[dict[str, Any]]:
    """A form shown again keeps the topics the reader ticked (`list/topic` each)."""
    if ticked is None:
        return lists
    return [
        {
            **lst,
            "chosen_topics": [e.split("/", 1)[1] for e in ticked if e.startswith(lst["slug"] + "/")] or None,
        }
        for lst in lists
    ]


def offered_topics(app: bootstrap.App) -> dict[str, list[str]]:
    return {c.slug: [t.slug for t in c.topics] for c in app.cfg.lists}


async def private_slugs(app: bootstrap.App) -> list[str]:
    async with app.db.read() as s:
        return [lst.slug for lst in await sources_store.active_lists(s) if not lst.public]


def signup_page(
    request: Request,
    now: datetime,
    lists: list[dict[str, Any]],
    single: str | None,
    *,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
    ref: str | None = None,
) -> HTMLResponse:
    web = web_state(request)
    values = values or {}
    chosen = values.get("list") or ([single] if single else [])
    lists = with_ticked_topics(lists, values.get("topics"))
    return page(
        request,
        "subscribe.html",
        status,
        form=True,
        title=f"Subscribe to {lists[0]['name']}" if single and lists else "Subscribe",
        lists=lists,
        single=single,
        chosen=chosen,
        values=values,
        errors=errors or {},
        stamp=web.forms.stamp(now),
        ref=ref or "",
        weekdays=WEEKDAYS,
        zones=ZONES,
        consent_text=web.consent_text,
    )


@router.get("/", include_in_schema=False)
@router.head("/", include_in_schema=False)
async def home(web: Web) -> RedirectResponse:
    """The site's front door is the signup page (a fixed target, never one from the request)."""
    return RedirectResponse(f"{web.base_url}/subscribe", status_code=303)


@readable(router, "/subscribe")
async def subscribe_page(request: Request, app: DigestApp, now: Now) -> HTMLResponse:
    """The signup form for every public list."""
    lists = await signup_lists(app, None)
    return signup_page(request, now, lists, None, ref=web_url(request.headers.get("referer")))


@readable(router, "/subscribe/{slug}")
async def subscribe_one_page(request: Request, slug: str, app: DigestApp, now: Now) -> HTMLResponse:
    """The signup form for one list."""
    lists = await signup_lists(app, slug)
    if not lists:
        return message(request, "No such list", "There is no list by that name.", status=404)
    return signup_page(request, now, lists, slug, ref=web_url(request.headers.get("referer")))


def accepted_page(request: Request, address: str) -> HTMLResponse:
    return message(
        request,
        "Check your inbox",
        f"If {address} can receive mail and is not subscribed yet, a confirmation link is on its way "
        "to it. If we sent one there in the last 24 hours, that link still works: we send at most one "
        "a day. If you are already subscribed, nothing changes.",
        "Open the link in that email to confirm. Nothing else is sent to you until you do. "
        "If it does not arrive within a few minutes, look in your spam folder.",
    )


def queue_signup(web: WebState, item: signup_form.Signup, method: str, now: datetime) -> None:
    """Hand the state-dependent part of a signup (rows, the confirmation mail) to the work queue."""
    web.work.submit(
        f"signup ({method})",
        lambda: signup.request_confirmation(
            web.app, item, now, method=method, hourly_budget=web.confirmations_per_hour
        ),
    )


@router.post(
    "/subscribe",
    tags=["signup"],
    response_model=Accepted,
    status_code=202,
    summary="Sign up for one or more lists (double opt-in)",
    description=(
        "Accepts JSON (below) or the same fields form-encoded from the signup page (which also "
        "needs its CSRF token). The answer is the same for new, pending, confirmed and "
        "unsubscribed addresses; one confirmation email covers every list of the request, at "
        "most once per address and list every 24 hours."
    ),
    responses={
        422: {"description": "A field needs fixing: {error: {code, message, fields}}"},
        429: {"description": "Too many signups from this address"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": SignupIn.model_json_schema()},
                "application/x-www-form-urlencoded": {"schema": SignupIn.model_json_schema()},
            },
        }
    },
)
async def subscribe(request: Request, web: Web, now: Now) -> Response:
    ctype = content_type(request)
    if ctype == "application/json":
        return await subscribe_json(request, web, now)
    if ctype in FORM_TYPES:
        return await subscribe_form(request, web, now)
    return error_json(
        415, "unsupported_media_type", "Send JSON or a form (application/x-www-form-urlencoded)."
    )


async def subscribe_json(request: Request, web: WebState, now: datetime) -> Response:
    if (limited := await rate_limited(request)) is not None:
        return limited
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return error_json(400, "bad_json", "The body is not valid JSON.")
    if not isinstance(body, dict):
        return error_json(422, "invalid", "The body must be a JSON object.")
    version = body.get("consent_text_version")
    consent = readers.Consent(
        ip=client_ip(request),
        user_agent=user_agent(request),
        source=web_url(body.get("source"))
        or web_url(request.headers.get("origin"))
        or web_url(request.headers.get("referer"))
        or "api",
        referer=web_url(request.headers.get("referer")),
        text_version=signup_form.clean_text(version, 64)
        if isinstance(version, str) and version
        else web.consent_version,
    )
    known = [lst["slug"] for lst in await signup_lists(web.app, None)] + await private_slugs(web.app)
    try:
        item = signup_form.parse_signup(body, known, consent, offered_topics=offered_topics(web.app))
    except signup_form.SignupInvalid as exc:
        return error_json(422, "invalid", "Some fields need fixing.", fields=exc.fields)
    if not body.get("website"):
        # The reader's own signup, as through the form ("api" is the operator API's: it may not
        # bring back an erased address).
        queue_signup(web, item, "web", now)
    return JSONResponse({"status": "accepted", "message": ACCEPTED_TEXT}, status_code=202)


async def subscribe_form(request: Request, web: WebState, now: datetime) -> Response:
    if (limited := await rate_limited(request)) is not None:
        return limited
    form = await read_form(request)
    if form is None:
        return message(request, "That did not work", "The form could not be read.", status=400)
    single = form.get("single")
    single = single if isinstance(single, str) and TOKEN.fullmatch(single) else None
    lists = await signup_lists(web.app, single)
    if not lists:
        lists, single = await signup_lists(web.app, None), None
    values: dict[str, Any] = {
        k: signup_form.clean_text(v, 320)
        for k, v in form.multi_items()
        if isinstance(v, str) and k not in ("list", "topics")
    }
    values["list"] = [v for v in form.getlist("list") if isinstance(v, str)]
    values["topics"] = [v for v in form.getlist("topics") if isinstance(v, str)]
    ref = web_url(form.get("ref"))
    if not csrf_ok(request, form):
        expired = {"form": "This form had expired. Please check it and submit it again."}
        return signup_page(request, now, lists, single, values=values, errors=expired, status=403, ref=ref)
    fields: dict[str, object] = {k: form.get(k) for k in form if k not in ("list", "topics")}
    fields["list"], fields["topics"] = values["list"], values["topics"]
    referer = request.headers.get("referer", "")
    consent = readers.Consent(
        ip=client_ip(request),
        user_agent=user_agent(request),
        source=web_url(referer) if referer.startswith(web.base_url + "/") else f"{web.base_url}/subscribe",
        referer=ref,
        text_version=web.consent_version,
    )
    known = [lst["slug"] for lst in lists]
    try:
        item = signup_form.parse_signup(fields, known, consent, offered_topics=offered_topics(web.app))
    except signup_form.SignupInvalid as exc:
        return signup_page(request, now, lists, single, values=values, errors=exc.fields, status=422, ref=ref)
    if form.get("website"):  # the honeypot: only a robot fills a field it cannot see
        return accepted_page(request, item.address)
    if web.forms.too_fast(form.get(csrf.STAMP_FIELD), now, web.min_fill):
        # Robots post at once; a person with a form filler can too. Ask for the button once more
        # (the form comes back filled in) rather than drop the signup without a word.
        again = {"form": "That was quick! Please check your details and press Subscribe again."}
        return signup_page(request, now, lists, single, values=values, errors=again, status=422, ref=ref)
    queue_signup(web, item, "web", now)
    return accepted_page(request, item.address)
