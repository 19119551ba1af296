"""Names each API request (X-Request-Id: the client's when it sent a sane one, else ours): echoed in the answer
and put on every log record written while the request is handled (log.format: json)."""
from __future__ import annotations

import re
import uuid

from aiohttp import web

from hactl import logs

REQUEST_ID_HEADER = "X-Request-Id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@web.middleware
async def request_id_middleware(request: web.Request, handler) -> web.StreamResponse:  # type: ignore[no-untyped-def]
    rid = request.headers.get(REQUEST_ID_HEADER, "")
    if not _SANE_ID.fullmatch(rid):
        rid = uuid.uuid4().hex[:16]
    logs.REQUEST_ID.set(rid)  # (the request's own task: aiohttp runs each request in one)
    response = await handler(request)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = rid
    return response
