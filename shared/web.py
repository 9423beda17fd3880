"""FastAPI app factory: health, readiness, Prometheus metrics, RFC 9457 problem responses and
bearer-token auth, the same for every service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from sqlalchemy import Engine
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.auth import Authenticator
from shared.db import ping
from shared.errors import RtopsError
from shared.jetstream import NatsLink
from shared.logging import configure_logging
from shared.params import reject_unknown_query
from shared.settings import RtopsSettings
from shared.ui.session import check_session_settings

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
ReadinessCheck = Callable[[], Awaitable[None]]


def problem(
    status: int, title: str, detail: str | None = None, *, instance: str | None = None, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for problem+json errors, so clients and schemathesis know them."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {"schema": _PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


# What any API route may answer besides its success: no or a bad token, a missing role, an
# unknown id, a state conflict, a request that breaks the schema or a rule, a dependency away.
API_PROBLEMS = problem_responses(401, 403, 404, 409, 422, 503)


def create_app(
    *,
    title: str,
    settings: RtopsSettings,
    registry: CollectorRegistry,
    readiness: dict[str, ReadinessCheck],
    routers: Sequence[APIRouter] = (),
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
) -> FastAPI:
    """``readiness`` maps a dependency name ("database", "nats") to a check that raises when
    it is not usable; ``/readyz`` answers 503 naming each failing one."""
    app = FastAPI(title=title, lifespan=lifespan, dependencies=[Depends(reject_unknown_query)])
    app.state.settings = settings
    app.state.authenticator = Authenticator(settings)
    check_session_settings(settings)
    app.state.registry = registry

    requests = Counter(
        "http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
    )
    latency = Histogram(
        "http_request_seconds", "HTTP request latency", ["method", "route"], registry=registry
    )

    @app.middleware("http")
    async def _metrics(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        response: Response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        requests.labels(request.method, route, str(response.status_code)).inc()
        latency.labels(request.method, route).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(RtopsError)
    async def _rtops_error(request: Request, exc: RtopsError) -> JSONResponse:
        return problem(exc.status, exc.title, str(exc) or None, instance=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        log.info("request rejected", path=request.url.path, errors=errors)
        return problem(
            422,
            "Invalid request",
            "the request does not match the API schema; see 'errors'",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError) -> JSONResponse:
        # Numbers and dates past what Python or the database hold come from the request (a
        # 2**63 id, a date at the end of the calendar): the caller's to fix, never a 500.
        log.info("request value out of range", path=request.url.path, error=str(exc))
        return problem(
            422,
            "Value out of range",
            "a number or date in the request is outside the range this API handles",
            instance=request.url.path,
        )

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the request carried (a number past its column's range,
        # a string past its length on PostgreSQL); the transaction rolled back, nothing changed.
        log.info("value refused by the database", path=request.url.path, error=str(exc.orig))
        return problem(
            422,
            "Value out of range",
            "a value in the request does not fit what the database stores",
            instance=request.url.path,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Still problem+json (clients parse one error shape), with nothing of the internals.
        log.exception("unhandled error", path=request.url.path)
        return problem(
            500,
            "Internal error",
            "the error is logged; retry or report it",
            instance=request.url.path,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(
            exc.status_code, _reason(exc.status_code), str(exc.detail), instance=request.url.path
        )

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses=problem_responses(503))
    async def readyz() -> Response:
        failing: dict[str, str] = {}
        for name, check in readiness.items():
            try:
                await check()
            except Exception as exc:
                failing[name] = str(exc) or type(exc).__name__
        if failing:
            return problem(
                503,
                "Not ready",
                "; ".join(f"{k}: {v}" for k, v in failing.items()),
                checks={k: ("fail" if k in failing else "ok") for k in readiness},
            )
        return JSONResponse({"status": "ready", "checks": {k: "ok" for k in readiness}})

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router, responses=API_PROBLEMS)
    return app


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def background_lifespan(
    *,
    link: NatsLink,
    close: Callable[[], None],
    tasks: Callable[[], Sequence[Coroutine[Any, Any, None]]],
    on_start: Callable[[FastAPI], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The lifespan every service shares: keep the NATS link and the service's background
    tasks running while the app serves; on shutdown stop them, drain NATS, then ``close``
    (the database pools)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if on_start is not None:
            on_start(app)
        running = [asyncio.create_task(c) for c in (link.run(), *tasks())]
        try:
            yield
        finally:
            if on_stop is not None:
                on_stop()
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await link.close()
            close()

    return lifespan


def readiness_checks(engine: Engine, link: NatsLink) -> dict[str, ReadinessCheck]:
    async def database() -> None:
        await asyncio.to_thread(ping, engine)

    return {"database": database, "nats": link.check}


def serve(
    create: Callable[[], FastAPI], settings: RtopsSettings, *, host: str, port: int, service: str
) -> None:
    """``python -m services.<name>``: JSON logs, then uvicorn in the foreground.

    A setting that cannot work (a port in use, a bad device registry, a short signing key) is
    one line on stderr naming the setting, and exit status 2: no traceback. Every port the
    settings name (``<x>_port`` with its ``<x>_host``) is checked before anything starts; the
    HTTP socket is bound here and handed to uvicorn, so no other process can take it between."""
    import sys

    import uvicorn

    from shared.collector import tune_collector
    from shared.natsd import check_port, listening_socket
    from shared.settings import SettingError

    configure_logging(settings.log_level, settings.log_format, service=service)
    ports = {
        name: getattr(settings, name)
        for name in type(settings).model_fields
        if name.endswith("_port") and isinstance(getattr(settings, name), int)
    }
    http_setting = next((n for n, p in ports.items() if p == port and "http" in n), "http_port")
    try:
        sock = listening_socket(host, port, f"RTOPS_{http_setting.upper()}")
        for name, other in ports.items():
            if name != http_setting:
                other_host = getattr(settings, name.removesuffix("_port") + "_host", host)
                check_port(other_host, other, f"RTOPS_{name.upper()}")
        app = create()
        tune_collector()
    except SettingError as exc:
        print(f"{service}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            root_path=settings.root_path,
        )
    )
    server.run(sockets=[sock])
    if not server.started:
        raise SystemExit(3)  # the lifespan failed: its log says why
