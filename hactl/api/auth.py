"""API token authentication, the three ways ZeroTier clients present it.

``X-ZT1-Auth: TOKEN``, ``?auth=TOKEN`` or ``Authorization: Bearer TOKEN`` (the scheme word in any case). The
comparison itself is the cluster's (``Cluster.check_token``, constant time against the hash in ctrl.db).
Anything else is 401 with the body ``{}``. Only ``/health`` and ``/planet`` are open: load balancers and compose
healthchecks probe the first without a secret, and ZeroTier clients fetch the second (public keys and addresses
only) before they have anything else.
"""
from __future__ import annotations

from typing import Iterator

from aiohttp import web

from hactl.api.context import context
from hactl.api.errors import Handler, unauthorized

OPEN_PATHS = frozenset({"/health", "/livez", "/readyz", "/planet"})  # the routes declared with auth=False (a test checks)
TOKEN_HEADER = "X-ZT1-Auth"
TOKEN_QUERY = "auth"
MAX_TOKEN_CHARS = 1024  # a token longer than this is not ours: do not even hash it


def presented_tokens(request: web.Request) -> Iterator[str]:
    """Every token the request carries, in any of the accepted forms."""
    yield from request.headers.getall(TOKEN_HEADER, [])
    yield from request.query.getall(TOKEN_QUERY, [])
    for value in request.headers.getall("Authorization", []):
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer":
            yield token.strip()


def is_authorized(request: web.Request) -> bool:
    check = context(request).cluster.check_token
    # Every candidate is checked (no early exit on a malformed one): which form was wrong is not leaked by timing.
    ok = False
    for token in presented_tokens(request):
        token = token.strip()
        if token and len(token) <= MAX_TOKEN_CHARS and _is_text(token) and check(token):
            ok = True
    return ok


def _is_text(token: str) -> bool:
    """Header bytes that are not UTF-8 reach us as lone surrogates (surrogateescape): such a token cannot be
    ours, and hashing it would raise."""
    if token.isascii():
        return True
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in OPEN_PATHS or is_authorized(request):
        return await handler(request)
    return unauthorized()
