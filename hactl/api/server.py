"""The HTTP management API application: build_app() for tests and embedding, serve() for the controller.

Middlewares, outermost first: errors (every failure becomes JSON), then auth (401 ``{}`` unless a valid token
or the open /health). Routes come from the routes_* modules; the same declarations produce /openapi.json.
"""
from __future__ import annotations

import logging
import socket
import ssl
from typing import Any, Callable, Sequence

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from hactl.api import metrics, openapi, routes_events, routes_member, routes_network, routes_planet, routes_status
from hactl.api.auth import auth_middleware
from hactl.api.cluster import Cluster
from hactl.api.context import CONTEXT, ApiContext
from hactl.api.errors import error_middleware
from hactl.api.request_ids import request_id_middleware
from hactl.api.spec import Route

log = logging.getLogger("hactl.api")
access_log = logging.getLogger("hactl.api.access")


def all_routes() -> list[Route]:
    # Order matters where templates overlap: {ctrl}______ is declared before {nwid} in routes_network.
    return [*routes_status.ROUTES, *routes_network.ROUTES, *routes_member.ROUTES, *routes_planet.ROUTES,
            *metrics.ROUTES, *routes_events.ROUTES, *openapi.ROUTES]


def build_app(cluster: Cluster, *, max_body_bytes: int = 1 << 20, version: str,
              outer_middlewares: Sequence[Any] = ()) -> web.Application:
    """``outer_middlewares`` run before all of ours (an API worker's proxy to its node: hactl/workers/proxy.py)."""
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be positive")
    # client_max_size backs up our own limit (inputs.read_body) should anything use aiohttp's body readers.
    app = web.Application(middlewares=[*outer_middlewares, request_id_middleware, metrics.metrics_middleware,
                                       error_middleware, auth_middleware],
                          client_max_size=max_body_bytes)
    app[metrics.METRICS] = m = metrics.ApiMetrics()
    collector = cluster.metrics_collector()
    if collector is not None:
        m.registry.register(collector)
    app[CONTEXT] = ApiContext(cluster=cluster, max_body_bytes=max_body_bytes, version=version)
    routes = all_routes()
    for r in routes:
        app.router.add_route(r.method, r.path, r.handler, name=r.operation_id)
    app[openapi.DOC_KEY] = openapi.render(routes, version)
    return app


class AccessLogger(AbstractAccessLogger):
    """Method, path, status, time: never the query string, which may carry ?auth=TOKEN.

    At DEBUG (log.level: debug): one line per request costs about a third of the write throughput."""

    def log(self, request: Any, response: Any, time: float) -> None:
        self.logger.debug("%s %s %s %s %.1fms", request.remote, request.method, request.path, response.status,
                          time * 1000)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


class ApiServer:
    """A running API listener: ``.port`` (the bound port, useful with port 0) and ``await .stop()``."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.host = host
        self.port = port

    @property
    def app(self) -> web.Application:
        return self._runner.app

    async def add_socket(self, sock: socket.socket) -> None:
        """Serve the same application on another listening socket too (the unix socket through which the node's
        API workers reach it: hactl/workers/supervisor.py)."""
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        await self._runner.cleanup()


async def serve(cluster: Cluster, host: str, port: int, *, max_body_bytes: int = 1 << 20, version: str = "0.0.0",
                shutdown_timeout: float = 5.0, ssl_context: ssl.SSLContext | None = None, reuse_port: bool = False,
                outer_middlewares: Sequence[Any] = (),
                configure: Callable[[web.Application], None] | None = None) -> ApiServer:
    """Listen on host:port (0 picks a free port); HTTPS with ``ssl_context`` (hactl.api.tls.server_ssl_context),
    else plain HTTP. shutdown_timeout bounds how long stop() waits for requests in flight (a write waiting on
    the cluster, a long member listing). ``reuse_port``: SO_REUSEPORT, so that a node and its API workers share
    the port (the kernel spreads connections over them). ``configure`` may add to the application before it runs."""
    app = build_app(cluster, max_body_bytes=max_body_bytes, version=version, outer_middlewares=outer_middlewares)
    if configure is not None:
        configure(app)
    runner = web.AppRunner(app, access_log_class=AccessLogger, access_log=access_log,
                           shutdown_timeout=shutdown_timeout, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None,
                       ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("API listening on %s://%s:%d", "https" if ssl_context is not None else "http", host, bound)
    return ApiServer(runner, host, bound)
