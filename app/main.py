"""The web instance: one FastAPI app, run as N identical processes behind nginx."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from app import api, pages, redis_client
from app.admission import Busy
from app.config import Settings, get_settings
from app.hotpath import HotPath
from app.metrics import STORE_ERRORS, MetricsMiddleware
from app.middleware import (
    STORE_UNAVAILABLE,
    DeadlineMiddleware,
    RequestLimitsMiddleware,
    ServedByMiddleware,
    TrustedProxyMiddleware,
)
from app.services import Services

log = logging.getLogger("webfarm")


def create_instance() -> HotPath:
    """What `python -m app` serves: the app, behind the hot path (app.hotpath) for its two most
    frequent requests."""
    app = create_app()
    return HotPath(app, Services.of(app))


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app: every route, its middleware chain and error handlers."""
    settings = settings or get_settings()
    services = Services.build(settings)

    app = FastAPI(title="webfarm", version="1.0.0", lifespan=lambda _: services.running())
    services.bind(app)
    app.include_router(api.router)
    app.include_router(api.state_changing)
    app.include_router(pages.router)
    app.include_router(pages.forms)
    # add_middleware wraps: the last one added is the outermost.
    app.add_middleware(DeadlineMiddleware, seconds=settings.request_timeout_s)
    app.add_middleware(RequestLimitsMiddleware, max_body=settings.max_body_bytes, max_headers=settings.max_headers,
                       max_header_bytes=settings.max_header_bytes)
    app.add_middleware(TrustedProxyMiddleware, secret=settings.proxy_secret)
    app.add_middleware(ServedByMiddleware, instance=settings.instance_name, presence=services.presence)
    if settings.metrics:
        app.add_middleware(MetricsMiddleware)  # outermost: it counts what the others answer too

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the offending input back; for a login that is the password.
        errors = [{"type": e["type"], "loc": list(e["loc"]),
                   "msg": f"{e['msg']}: {e['ctx']['error']}" if e["type"] == "json_invalid" else e["msg"]}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(RedisError)
    async def store_unavailable(request: Request, exc: RedisError) -> JSONResponse:
        STORE_ERRORS.labels("unavailable").inc()
        await redis_client.store_failed(services.redis, exc)
        return JSONResponse({"detail": STORE_UNAVAILABLE}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(Busy)
    async def too_busy(request: Request, exc: Busy) -> JSONResponse:
        return JSONResponse({"detail": "too busy, try again shortly"}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Runs outside the middleware stack, so the X-Served-By header is added here.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500,
                            headers={"X-Served-By": settings.instance_name})

    return app
