"""JSON responses and the one place every failure becomes an HTTP answer.

Every response the API sends is ``application/json``, errors included. Error bodies share one shape,
``{"error": CODE, "message": text, "field": name-or-null}``, except 401 whose body is ``{}`` as ZeroTier's is.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

from hactl.api.cluster import ClusterUnavailable, NoSpace, OutcomeUnknown, Overloaded
from hactl.fsm.coerce import ValidationError
from hactl.fsm.result import ErrorCode, Result

log = logging.getLogger("hactl.api")

JSON = "application/json"
BODY_FIELD = "body"  # what a ValidationError about the whole body (field None) is reported as

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def dumps(value: Any) -> str:
    # allow_nan=False: NaN/Infinity are not JSON; nothing we store can hold them, so this only trips on a bug.
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def json_response(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(text=dumps(value), status=status, content_type=JSON, headers=headers)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": code, "message": message, "field": field}


def retry_after(seconds: float) -> dict[str, str]:
    """Retry-After takes whole seconds; never advertise 0 (clients would spin)."""
    try:
        s = math.ceil(seconds)
    except (TypeError, ValueError, OverflowError):
        s = 1
    return {"Retry-After": str(max(1, min(s, 3600)))}


class ApiError(Exception):
    """Raised anywhere in a handler to answer with an error body."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return json_response(error_body(self.code, self.message, self.field), self.status, self.headers)


def bad_request(field: str | None, message: str) -> ApiError:
    return ApiError(400, str(ErrorCode.INVALID), message, field or BODY_FIELD)


def not_found(message: str, field: str | None = None) -> ApiError:
    return ApiError(404, str(ErrorCode.NOT_FOUND), message, field)


def unauthorized() -> web.Response:
    return json_response({}, 401)


def result_response(result: Result) -> web.Response:
    """A state machine Result as the HTTP answer: the object on success, the mapped error otherwise."""
    if result.ok:
        return json_response(result.value if result.value is not None else {})
    try:
        status = ErrorCode(result.error or "").http_status
    except ValueError:  # a code a newer fsm invented: we cannot say more than "failed"
        status = 500
    # NOT_INITIALIZED passes (the first leader initialises the cluster); FULL (all ids taken) does not.
    headers = retry_after(1.0) if result.error == ErrorCode.NOT_INITIALIZED else None
    return json_response(error_body(str(result.error), result.message or "", result.field), status, headers)


def cluster_error(e: Exception) -> web.Response:
    """The controller's exceptions (see cluster.py) as HTTP answers."""
    if isinstance(e, NoSpace):  # before Overloaded, its base class
        # No Retry-After: the alarm clears when an operator frees space, not after some seconds.
        return json_response(error_body("NOSPACE", str(e)), 507)
    if isinstance(e, ClusterUnavailable):
        return json_response(error_body("CLUSTER_NO_LEADER", str(e) or "no leader is known; retry later"),
                             503, retry_after(e.retry_after))
    if isinstance(e, Overloaded):
        return json_response(error_body("OVERLOADED", str(e) or "the leader's proposal queue is full"),
                             429, retry_after(1.0))
    assert isinstance(e, OutcomeUnknown)
    detail = f" ({e})" if str(e) else ""
    return json_response(error_body(
        "OUTCOME_UNKNOWN",
        f"the write was proposed but not seen applied in time{detail}; it may still commit; retry with the same "
        "Idempotency-Key to learn its outcome without applying it twice"), 504)


# aiohttp's own exceptions (unknown path 404, 405, 413 from its body reader) keep their status, get our body.
_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "BODY_TOO_LARGE"}


def _http_exception(e: web.HTTPException, request: web.Request) -> web.Response:
    status = e.status
    if status == 404:
        message = f"no such path: {request.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.path}"
    else:
        message = e.reason
    headers = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "retry-after", "location")}
    code = _HTTP_CODES.get(status, "INVALID" if 400 <= status < 500 else "HTTP_ERROR")
    return json_response(error_body(code, message), status, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: turns every failure into a JSON answer. Client mistakes are ApiError / ValidationError
    (400 naming the field); anything else reaching the last branch is a bug in hactl, logged with its stack."""
    try:
        return await handler(request)
    except ApiError as e:
        return e.response()
    except ValidationError as e:  # the fsm's validators (path ids, bodies) raise it for bad client input
        return bad_request(e.field, e.message).response()
    except (ClusterUnavailable, Overloaded, OutcomeUnknown) as e:
        return cluster_error(e)
    except web.HTTPException as e:
        return _http_exception(e, request)
    except asyncio.CancelledError:
        raise
    except ConnectionError as e:
        if request.transport is None or request.transport.is_closing():
            # The client went away mid-request (e.g. while sending its body): nobody to answer, nothing wrong.
            log.debug("API: client left during %s %s: %s", request.method, request.path, e)
            return json_response(error_body("CLIENT_GONE", "the connection was closed"), 400)
        log.exception("API: unexpected error answering %s %s", request.method, request.path)
        return json_response(error_body(str(ErrorCode.INTERNAL), "internal error (logged on the server)"), 500)
    except Exception:
        # The request line only: the query may carry ?auth=TOKEN.
        log.exception("API: unexpected error answering %s %s", request.method, request.path)
        return json_response(error_body(str(ErrorCode.INTERNAL), "internal error (logged on the server)"), 500)
