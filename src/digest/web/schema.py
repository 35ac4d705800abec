"""/openapi.json: the public endpoints for everyone, the operator API too for the operator.

The operator's routes (under /api/) are listed only to a request that carries
`Authorization: Bearer <[api] token>`; anyone else sees the signup and reader endpoints.
There is no /docs or /redoc page.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from digest.web import auth
from digest.web.deps import Web

router = APIRouter(include_in_schema=False)
OPERATOR_PREFIX = "/api/"
_REF = re.compile(r'"#/components/schemas/([^"]+)"')
_PRIVATE = {"vary": "authorization", "cache-control": "no-store"}


def public_schema(full: dict[str, Any]) -> dict[str, Any]:
    """`full` without the operator's paths, and without the component schemas only they use."""
    paths = {p: ops for p, ops in full["paths"].items() if not p.startswith(OPERATOR_PREFIX)}
    components = full.get("components", {})
    defined = components.get("schemas", {})
    kept: dict[str, Any] = {}
    pending = _refs(paths)
    while pending:
        name = pending.pop()
        if name not in kept and name in defined:
            kept[name] = defined[name]
            pending |= _refs(defined[name])
    return {**full, "paths": paths, "components": {**components, "schemas": kept}}


def _refs(value: object) -> set[str]:
    return set(_REF.findall(json.dumps(value)))


@router.get("/openapi.json")
async def openapi(request: Request, web: Web) -> JSONResponse:
    asgi: FastAPI = request.app
    if auth.bearer_ok(request, web.app.cfg.api.token):
        return JSONResponse(asgi.openapi(), headers=_PRIVATE)
    cached: dict[str, Any] | None = getattr(asgi.state, "public_openapi", None)
    if cached is None:
        cached = asgi.state.public_openapi = public_schema(asgi.openapi())
    return JSONResponse(cached, headers={"vary": "authorization"})
