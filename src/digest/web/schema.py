"""/openapi.json: the public endpoints for everyone, the operator API too for the operator.

The operator's routes (under /api/) are listed only to a request that carries
`Authorization: Bearer <[api] token>`; anyone else sees the signup and reader endpoints.
There is no /docs or /redoc page.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute

from digest.web import auth
from digest.web.deps import Web

router = APIRouter(include_in_schema=False)
OPERATOR_PREFIX = "/api/"
_PRIVATE = {"vary": "authorization", "cache-control": "no-store"}


def _is_public(route: BaseRoute) -> bool:
    return not str(getattr(route, "path", "")).startswith(OPERATOR_PREFIX)


def public_schema(app: FastAPI) -> dict[str, Any]:
    return get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        routes=[r for r in app.routes if _is_public(r)],
    )


@router.get("/openapi.json")
async def openapi(request: Request, web: Web) -> JSONResponse:
    asgi: FastAPI = request.app
    if auth.bearer_ok(request, web.app.cfg.api.token):
        return JSONResponse(asgi.openapi(), headers=_PRIVATE)
    cached: dict[str, Any] | None = getattr(asgi.state, "public_openapi", None)
    if cached is None:
        cached = asgi.state.public_openapi = public_schema(asgi)
    return JSONResponse(cached, headers={"vary": "authorization"})
