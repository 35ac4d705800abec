"""The page of every new story of a digest, which its "and N more" button opens."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from digest import stories
from digest.web.deps import DigestApp
from digest.web.render import message, page

router = APIRouter(tags=["pages"])


@router.get("/archive/{slug}/{edition_id}/stories", response_class=HTMLResponse)
async def edition_stories(
    request: Request, slug: str, edition_id: int, app: DigestApp, r: str = ""
) -> HTMLResponse:
    """Every story that was new in one digest, those it had no room for included."""
    found = await stories.edition_stories(app, slug, edition_id, r[:200])
    if found is None:
        return message(request, "No such digest", status=404)
    return page(
        request,
        "stories.html",
        title=f"{found.lst.name}: every new story of {found.day}",
        found=found,
        edition_url=f"{app.base_url}/archive/{slug}/{edition_id}",
    )
