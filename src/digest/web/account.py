"""A subscribed reader's pages, reached with the token in every digest: unsubscribe, preferences, leave.

POST /u/{token} is also the RFC 8058 one-click endpoint, which mail providers call without
cookies: it needs no CSRF token and answers 200 without a redirect.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from digest import bootstrap, preferences, readers, signup_form
from digest.models import SubscriptionStatus, topic_choice_slugs
from digest.schedule import describe_schedule
from digest.store import readers as readers_store
from digest.store import reports as reports_store
from digest.store import sources as sources_store
from digest.web.deps import DigestApp, Now, Web, client_ip, user_agent, web_state
from digest.web.errors import content_type
from digest.web.render import (
    FORM_TYPES,
    WEEKDAYS,
    ZONES,
    csrf_ok,
    message,
    not_a_reader,
    page,
    rate_limited,
    read_form,
    readable,
    unknown,
)
from digest.web.subscribe import offered_topics, topic_choices, with_ticked_topics

router = APIRouter()


@readable(router, "/u/{token}")
async def unsubscribe_page(request: Request, token: str, app: DigestApp) -> HTMLResponse:
    """A page with one button; the GET itself changes nothing."""
    if (shown := not_a_reader(request, token)) is not None:
        return shown
    async with app.db.read() as s:
        sub = await readers_store.subscription_by_token(s, token)
        lst = await reports_store.list_by_id(s, sub.list_id) if sub else None
    if sub is None or lst is None:
        return unknown(request)
    if sub.status == SubscriptionStatus.UNSUBSCRIBED:
        return unsubscribed_page(request, token, lst.name)
    base_url = web_state(request).base_url
    return message(
        request,
        f"Unsubscribe from {lst.name}?",
        "One click and you will get no more digests from this list.",
        form_action=f"{base_url}/u/{token}",
        button="Unsubscribe",
        link={"url": f"{base_url}/p/{token}", "text": "Or change how often you hear from us"},
    )


def unsubscribed_page(request: Request, token: str, name: str, *, one_click: bool = False) -> HTMLResponse:
    base_url = web_state(request).base_url
    if one_click:
        # A mail provider's RFC 8058 call: no form, so no cookie is set on a cookie-less client.
        return message(
            request,
            "You are unsubscribed",
            f"You will get no more digests from {name}.",
            link={"url": f"{base_url}/u/{token}", "text": "Changed your mind? Resubscribe"},
        )
    return message(
        request,
        "You are unsubscribed",
        f"You will get no more digests from {name}.",
        "Changed your mind? One click brings you back, with the settings you had.",
        form_action=f"{base_url}/u/{token}/resubscribe",
        button=f"Resubscribe to {name}",
        link={"url": f"{base_url}/p/{token}", "text": "Or open your preferences"},
    )


@router.post("/u/{token}/resubscribe", response_class=HTMLResponse, tags=["pages"])
async def resubscribe(request: Request, token: str, web: Web, now: Now) -> HTMLResponse:
    """Come back from the unsubscribe page: following the link from the digest proved the mailbox."""
    if (shown := not_a_reader(request, token)) is not None:
        return shown
    form = await read_form(request)
    if form is None or not csrf_ok(request, form):
        return message(
            request,
            "Please press the button again",
            "The form had expired (or your browser did not send back its cookie).",
            status=403,
            form_action=f"{web.base_url}/u/{token}/resubscribe",
            button="Resubscribe",
        )
    consent = readers.Consent(
        ip=client_ip(request),
        user_agent=user_agent(request),
        source=f"{web.base_url}/u",
        text_version=web.consent_version,
    )
    found = await preferences.resubscribe_token(web.app, token, now, consent)
    if found is None:
        return unknown(request)
    name, state = found
    if state == "mailed" and web.wake is not None:
        web.wake.set()
    prefs = {"url": f"{web.base_url}/p/{token}", "text": "Your preferences"}
    if state == "back":
        return message(
            request, "Welcome back", f"You are subscribed to {name} again.", COMING_BACK, link=prefs
        )
    return message(request, *_RESUBSCRIBE_PAGES[state], link=prefs)


COMING_BACK = "Your digests come on your usual schedule, starting with the next one."

_RESUBSCRIBE_PAGES = {
    "mailed": ("Check your inbox", "We have sent you a confirmation link: open it to start again."),
    "waiting": (
        "Check your inbox",
        "We sent you a confirmation link less than a day ago, and it still works: open it to start "
        "again. We send at most one a day.",
    ),
    "refused": (
        "We cannot send to this address",
        "Mail to this address bounced or was stopped, so we cannot subscribe it again. "
        "Please contact us if that is a mistake.",
    ),
}


@router.post("/u/{token}", response_class=HTMLResponse, tags=["pages"])
async def unsubscribe(request: Request, token: str, app: DigestApp, now: Now) -> HTMLResponse:
    """The page's button and RFC 8058 one-click: no cookie or CSRF token, 200, never a redirect."""
    if (shown := not_a_reader(request, token)) is not None:
        return shown
    body = await request.body()
    one_click = False
    if content_type(request) in FORM_TYPES:
        form = await read_form(request)
        one_click = form is not None and form.get("List-Unsubscribe") == "One-Click"
    else:
        one_click = b"List-Unsubscribe=One-Click" in body
    name = await preferences.unsubscribe_token(app, token, "one-click" if one_click else "link", now)
    if name is None:
        return unknown(request)
    return unsubscribed_page(request, token, name, one_click=one_click)


async def preferences_page(
    request: Request,
    app: bootstrap.App,
    token: str,
    *,
    status: int = 200,
    notice: str | None = None,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
) -> HTMLResponse:
    reader = await preferences.reader_for_token(app, token)
    if reader is None:
        return unknown(request)
    async with app.db.read() as s:
        active = await sources_store.active_lists(s)
    mine = set(reader.subscribed) | set(reader.pending)
    lists = [
        {
            "slug": lst.slug,
            "name": lst.name,
            "description": lst.description,
            "schedule": describe_schedule(lst.schedule, lst.timezone),
            "pending": lst.slug in reader.pending,
            "topics": topic_choices(app, lst.slug),
            "chosen_topics": topic_choice_slugs(reader.topics.get(lst.slug)),
        }
        for lst in active
        if lst.public or lst.slug in mine
    ]
    if values is not None:
        lists = with_ticked_topics(lists, values.get("topics"))
    p = reader.prefs
    shown = values or {
        "name": reader.name,
        "cadence": p.cadence,
        "weekday": "" if p.weekday is None else str(p.weekday),
        "send_hour": "" if p.send_hour is None else str(p.send_hour),
        "timezone": p.timezone or "",
        "list": sorted(mine),
    }
    return page(
        request,
        "preferences.html",
        status,
        form=True,
        title="Your preferences",
        token=token,
        email=reader.email,
        name=reader.name,
        lists=lists,
        values=shown,
        chosen=shown.get("list", []),
        errors=errors or {},
        notice=notice,
        weekdays=WEEKDAYS,
        zones=ZONES,
        consent_text=web_state(request).consent_text,
    )


@readable(router, "/p/{token}")
async def preferences_show(request: Request, token: str, app: DigestApp) -> HTMLResponse:
    """Lists, cadence, weekday, send hour, time zone and name; or leave everything."""
    if (shown := not_a_reader(request, token)) is not None:
        return shown
    return await preferences_page(request, app, token)


@router.post("/p/{token}", response_class=HTMLResponse, tags=["pages"])
async def preferences_save(request: Request, token: str, web: Web, now: Now) -> Response:
    if (shown := not_a_reader(request, token)) is not None:
        return shown
    form = await read_form(request)
    reader = await preferences.reader_for_token(web.app, token)
    if reader is None:
        return unknown(request)
    if form is None or not csrf_ok(request, form):
        expired = {"form": "This form had expired. Please save again."}
        return await preferences_page(request, web.app, token, status=403, errors=expired)
    if (limited := await rate_limited(request)) is not None:
        return limited
    fields: dict[str, object] = {k: form.get(k) for k in form if k not in ("list", "topics")}
    fields["list"] = [v for v in form.getlist("list") if isinstance(v, str)]
    fields["topics"] = [v for v in form.getlist("topics") if isinstance(v, str)]
    fields["email"], fields["consent"] = reader.email, True
    async with web.app.db.read() as s:
        known = [lst.slug for lst in await sources_store.active_lists(s)]
    values = {k: signup_form.clean_text(v, 320) if isinstance(v, str) else v for k, v in fields.items()}
    try:
        item = signup_form.parse_signup(
            fields, known, readers.Consent(), require_list=False, offered_topics=offered_topics(web.app)
        )
    except signup_form.SignupInvalid as exc:
        return await preferences_page(request, web.app, token, status=422, errors=exc.fields, values=values)
    consent = readers.Consent(
        ip=client_ip(request),
        user_agent=user_agent(request),
        source=f"{web.base_url}/p",
        text_version=web.consent_version,
    )
    outcome = await preferences.change_preferences(
        web.app,
        token,
        item.lists,
        item.prefs,
        now,
        consent=consent,
        hourly_budget=web.confirmations_per_hour,
        chosen_topics=item.topics,
    )
    if outcome is None:
        return unknown(request)
    if outcome.confirmation_for and web.wake is not None:
        web.wake.set()
    return await preferences_page(request, web.app, token, notice=" ".join(_saved_notes(outcome)))


def _saved_notes(outcome: preferences.PrefsOutcome) -> list[str]:
    """What saving did, and only that: no mail is claimed unless one was queued."""
    notes = ["Your preferences are saved."]
    if outcome.left:
        notes.append(f"You left {', '.join(outcome.left)}.")
    if outcome.back:
        notes.append(f"You are back on {', '.join(outcome.back)}: {COMING_BACK.lower()}")
    if outcome.confirmation_for:
        notes.append(
            f"We sent a confirmation link for {', '.join(outcome.confirmation_for)}: "
            "it starts once you confirm."
        )
    for slug, at in outcome.waiting:
        notes.append(
            f"{slug} is waiting for you to confirm: use the link we sent at {at:%H:%M} UTC on "
            f"{at:%d %b}; it still works. We send at most one a day."
        )
    return notes


@router.post("/p/{token}/leave", response_class=HTMLResponse, tags=["pages"])
async def leave(request: Request, token: str, app: DigestApp, now: Now) -> HTMLResponse:
    if (shown := not_a_reader(request, token)) is not None:
        return shown
    base_url = web_state(request).base_url
    form = await read_form(request)
    if form is None or not csrf_ok(request, form):
        return message(
            request,
            "Please press the button again",
            "The form had expired (or your browser did not send back its cookie).",
            status=403,
            form_action=f"{base_url}/p/{token}/leave",
            button="Leave every list",
        )
    left = await preferences.leave_everything(app, token, now)
    if left is None:
        return unknown(request)
    return message(
        request,
        "You have left every list",
        "You will get no more digests from us." if left else "You were not on any list.",
        link={"url": f"{base_url}/p/{token}", "text": "Changed your mind? Your preferences"},
    )
