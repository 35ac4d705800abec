"""The admin page: a read-only operator overview of what `reports.admin_overview` gathers.

The page takes the `[api] token` as a bearer header, or as ?token= so that a browser can open it.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from digest import reports
from digest.web.deps import DigestApp, Now
from digest.web.render import message, page

router = APIRouter(include_in_schema=False)


def _token_ok(request: Request, expected: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        given = request.query_params.get("token", "")
    return hmac.compare_digest(given.strip().encode(), expected.encode())


@router.get("/admin", response_class=HTMLResponse)
async def admin(request: Request, app: DigestApp, now: Now) -> HTMLResponse:
    """Read-only operator overview: lists, recent editions, sends per hour, bounces, unsubscribes."""
    if not app.cfg.api.token:
        return message(request, "Admin is off", "Set [api] token in the config to use this page.", status=403)
    if not _token_ok(request, app.cfg.api.token):
        return message(request, "Not authorized", "Send Authorization: Bearer <the [api] token>.", status=401)
    overview = await reports.admin_overview(app, now)
    peak = max((h.sent for h in overview.sends_per_hour), default=0) or 1
    response = page(
        request,
        "admin.html",
        title="digest: operator overview",
        overview=overview,
        hours=[(f"{h.hour:%H}:00", h.sent, round(100 * h.sent / peak)) for h in overview.sends_per_hour],
        sent_total=sum(h.sent for h in overview.sends_per_hour),
    )
    response.headers["referrer-policy"] = "no-referrer"  # the URL may carry the token
    return response
