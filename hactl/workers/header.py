"""X-Hactl-Worker: which process of a node answered (0: the node itself, 1..N: its API workers).

Set only on nodes that run workers (a node with `workers: 0` answers exactly as before), and never over a value
already there: a response a worker proxied from its node keeps the node's 0, since the node made it."""
from __future__ import annotations

from typing import Callable

from aiohttp import web

HEADER = "X-Hactl-Worker"


def served_by(index: int) -> Callable[[web.Application], None]:
    """A ``configure`` for hactl.api.server.serve that marks every response with ``index``."""
    value = str(index)

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault(HEADER, value)

    def configure(app: web.Application) -> None:
        app.on_response_prepare.append(on_prepare)
    return configure
