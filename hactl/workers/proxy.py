"""In a worker: requests about the node itself are answered by the node, through its API on <data>/api.sock.

Proxy rather than a state the node pushes to its workers: /health, /livez, /readyz, /status, /metrics and /events
are made of live node state (the Raft status and I/O stalls, the mesh, the ZeroTier endpoint, Prometheus
collectors, an event bus with per-client queues and replay). A pushed copy would be stale by its push interval,
would need every field serialised twice (and every future field remembered), and could not carry /events at all.
Forwarding gives the client the very bytes the node sends (status, headers, body; the node also checks the
token), at the cost of one local hop on requests that are rare next to model reads. /livez through a worker is
then also a true answer about the node: when the node is gone the worker answers 503, and exits.

The proxy is the worker application's outermost middleware: a proxied request meets none of the worker's own
middlewares (request id, metrics, auth): the node's apply. Responses are streamed through, so /events works.
"""
from __future__ import annotations

import logging

import aiohttp
from aiohttp import web
from yarl import URL

from hactl.api.cluster import ClusterUnavailable
from hactl.api.errors import Handler, cluster_error
from hactl.workers.cluster import NODE_GONE

log = logging.getLogger("hactl.workers")

# The operation ids (hactl.api.spec.Route) of the routes made of node state rather than of ctrl.db.
PROXIED = frozenset({"getHealth", "getLivez", "getReadyz", "getStatus", "getMetrics", "getEvents"})
# Hop-by-hop headers (RFC 9110 7.6.1): about one connection, never forwarded. The body is re-framed by aiohttp
# (Content-Length is kept when the node sent one: the same framing).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "proxy-authenticate", "proxy-authorization"})
CONNECT_TIMEOUT = 5.0


class NodeProxy:
    def __init__(self, socket_path: str) -> None:
        self._path = socket_path
        self._session: aiohttp.ClientSession | None = None

    def middleware(self) -> Handler:
        proxy = self

        @web.middleware
        async def node_proxy_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.match_info.route.name in PROXIED:
                return await proxy.forward(request)
            return await handler(request)
        return node_proxy_middleware  # type: ignore[return-value]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No total timeout: /events streams for as long as its client stays; a node that stops answering is
            # a node on its way out, and the worker exits with it.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self._path), auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT))
        return self._session

    async def forward(self, request: web.Request) -> web.StreamResponse:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        body = await request.read() if request.can_read_body else None
        url = URL("http://hactl-node" + request.raw_path, encoded=True)  # (the path and query as the client sent)
        try:
            upstream = await self._client().request(request.method, url, headers=headers, data=body,
                                                    allow_redirects=False, skip_auto_headers=("User-Agent",
                                                                                              "Accept-Encoding"))
        except (aiohttp.ClientError, OSError) as e:
            log.info("API worker: the node did not take a proxied %s %s: %s", request.method, request.path, e)
            return cluster_error(ClusterUnavailable(NODE_GONE, retry_after=2))
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    response.headers.add(k, v)
            try:
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (aiohttp.ClientError, ConnectionError) as e:
                # Either side went away mid-body: the client sees a truncated transfer, as it would from the node.
                log.debug("API worker: proxied %s %s cut short: %s", request.method, request.path, e)
                if request.transport is not None:
                    request.transport.close()
            return response
