"""Liveness, readiness and Prometheus metrics, for load balancers and scrapers (not in the API docs)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from digest import observability
from digest.errors import DigestError
from digest.store import migrate
from digest.store import reports as reports_store
from digest.web.deps import DigestApp, Now

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz(app: DigestApp) -> dict[str, str]:
    async with app.db.read() as s:
        await reports_store.ping(s)
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(app: DigestApp) -> JSONResponse:
    """Ready to serve: the database answers and its schema is the one this code needs."""
    try:
        async with app.db.read() as s:
            await reports_store.ping(s)
        await migrate.check_schema(app.db)
    except DigestError as exc:
        return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
    except Exception as exc:
        reason = f"database: {type(exc).__name__}"
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
async def metrics(app: DigestApp, now: Now) -> Response:
    """Prometheus metrics computed from the database at scrape time (see digest.observability)."""
    body = await observability.render_metrics(app, now)
    return Response(body, media_type=observability.CONTENT_TYPE)
