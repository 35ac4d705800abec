"""Confirming a signup: the link's page, its button, and a fresh link once the old one has expired.

The page only shows a button (mail scanners prefetch links); its POST confirms.
"""

from __future__ import annotations

import re
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from itsdangerous import BadSignature

from digest import bootstrap, signup
from digest.models import SubscriptionStatus
from digest.store import readers as readers_store
from digest.store import reports as reports_store
from digest.web.deps import DigestApp, Now, Web, client_ip, user_agent, web_state
from digest.web.render import (
    csrf_ok,
    join_names,
    message,
    rate_limited,
    read_form,
    readable,
    unknown,
)

router = APIRouter()

_CONFIRM_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,2000}")


def confirm_pairs(
    request: Request, app: bootstrap.App, token: str, now: datetime
) -> list[tuple[int, int]] | HTMLResponse:
    """The (subscription, signup time) pairs a confirm token names, or the page to show instead."""
    if not _CONFIRM_TOKEN.fullmatch(token):
        return unknown(request)
    try:
        return signup.read_confirm_token(app.keys, token, now)
    except signup.TokenExpired:
        return expired_page(request, token)
    except BadSignature:
        return unknown(request)


def expired_page(request: Request, token: str) -> HTMLResponse:
    return message(
        request,
        "This link has expired",
        "Confirmation links work for 48 hours. You can ask for a fresh one: it goes to the same address.",
        status=410,
        form_action=f"{web_state(request).base_url}/confirm/{token}/resend",
        button="Send me a fresh link",
    )


async def pending_names(app: bootstrap.App, pairs: list[tuple[int, int]]) -> tuple[list[str], bool]:
    """(names of the lists still awaiting this link, whether all of them are confirmed already)."""
    names, confirmed = [], []
    async with app.db.read() as s:
        for sub_id, stamp in pairs:
            sub = await readers_store.subscription_by_id(s, sub_id)
            if sub is None or int(sub.signup_at.timestamp()) != stamp:
                continue
            lst = await reports_store.list_by_id(s, sub.list_id)
            if lst is None:
                continue
            if sub.status == SubscriptionStatus.PENDING:
                names.append(lst.name)
            elif sub.status == SubscriptionStatus.CONFIRMED:
                confirmed.append(lst.name)
    return names, bool(confirmed) and not names


def gone(request: Request) -> HTMLResponse:
    return message(
        request,
        "This link is no longer valid",
        "The signup it belonged to was withdrawn or has lapsed. You are welcome to sign up again.",
        status=410,
        link={"url": f"{web_state(request).base_url}/subscribe", "text": "Sign up"},
    )


@readable(router, "/confirm/{token}")
async def confirm_page(request: Request, token: str, app: DigestApp, now: Now) -> HTMLResponse:
    """Shows a button; only its POST confirms (mail scanners prefetch links)."""
    pairs = confirm_pairs(request, app, token, now)
    if isinstance(pairs, HTMLResponse):
        return pairs
    names, done = await pending_names(app, pairs)
    if done:
        return message(
            request, "You are already subscribed", "Nothing more to do: your subscription is confirmed."
        )
    if not names:
        return gone(request)
    return message(
        request,
        "Confirm your subscription",
        f"Press the button to confirm your subscription to {join_names(names)}.",
        form_action=f"{web_state(request).base_url}/confirm/{token}",
        button="Confirm my subscription",
    )


@router.post("/confirm/{token}", response_class=HTMLResponse, tags=["pages"])
async def confirm_post(request: Request, token: str, web: Web, now: Now) -> HTMLResponse:
    pairs = confirm_pairs(request, web.app, token, now)
    if isinstance(pairs, HTMLResponse):
        return pairs
    form = await read_form(request)
    if form is None or not csrf_ok(request, form):
        return message(
            request,
            "Please press the button again",
            "The form had expired (or your browser did not send back its cookie).",
            status=403,
            form_action=f"{web.base_url}/confirm/{token}",
            button="Confirm my subscription",
        )
    done = await signup.confirm(web.app, pairs, now, ip=client_ip(request), user_agent=user_agent(request))
    if not done.lists:
        return gone(request)
    if done.welcomed and web.wake is not None:
        web.wake.set()  # the welcome goes out now, not at the delivery loop's next poll
    thanks = f"Thank you, {done.name}" if done.name else "Thank you"
    return message(
        request,
        "You are subscribed",
        f"{thanks}: your subscription to {join_names(list(done.lists))} is confirmed.",
        *(["A welcome email with what comes next is on its way to you."] if done.welcomed else []),
        link={"url": f"{web.base_url}/p/{done.token}", "text": "Choose how often you hear from us"}
        if done.token
        else None,
    )


@router.post("/confirm/{token}/resend", response_class=HTMLResponse, tags=["pages"])
async def confirm_resend(request: Request, token: str, web: Web, now: Now) -> Response:
    if not _CONFIRM_TOKEN.fullmatch(token):
        return unknown(request)
    if (limited := await rate_limited(request)) is not None:
        return limited
    try:
        pairs = signup.read_confirm_token(web.app.keys, token, now, max_age=signup.RESEND_WITHIN)
    except BadSignature:
        return unknown(request)
    except signup.TokenExpired:
        return gone(request)
    form = await read_form(request)
    if form is None or not csrf_ok(request, form):
        return expired_page(request, token)
    web.work.submit(
        "resending a confirmation",
        lambda: signup.resend_confirmation(web.app, pairs, now, hourly_budget=web.confirmations_per_hour),
    )
    return message(
        request,
        "Check your inbox",
        "If this signup is still waiting, a fresh confirmation link is on its way to the same address.",
    )
