"""One error shape for every failure: ``{"error": {"code": ..., "message": ...}}``.

Clients branch on ``code``; ``message`` is for people. Framework errors (validation,
unknown routes, wrong methods) are reshaped into the same form, and anything unexpected
becomes a 500 in that form too, without a traceback in the body.
"""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from shared.schemas import ErrorResponse

log = logging.getLogger("segcam.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


# Redis unreachable: a 503 with Retry-After, or an SSE stream's last event.
BACKEND_DOWN = ("backend_unavailable", "the job store is unreachable; retry shortly")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses=`` entry documenting the error body for the given statuses."""
    return {s: {"model": ErrorResponse} for s in statuses}


_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "invalid_request", 429: "too_many_requests",
}  # fmt: skip


def _describe(err: dict) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
    return f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid"))


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = "; ".join(_describe(e) for e in exc.errors()[:5])
        return error_response(422, "invalid_request", msgs or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(redis.RedisError)
    async def _redis_down(_req: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("redis unavailable: %s", exc)
        return error_response(503, *BACKEND_DOWN, {"Retry-After": "5"})

    @app.exception_handler(ClientDisconnect)
    async def _gone(req: Request, _exc: ClientDisconnect) -> JSONResponse:
        # A client that hangs up mid-upload (a cancel, a mobile link) is not a server error:
        # nothing was queued, nobody is there to read an answer, and a traceback per hang-up
        # would bury the real ones.
        log.info("client went away before its request to %s was complete; nothing queued", req.url.path)
        return error_response(400, "client_disconnected", "the request body ended before it was complete")

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")
