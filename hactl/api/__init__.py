"""The HTTP management API (ZeroTier controller compatible), health and status.

    cluster.py          the interface to the controller (Cluster protocol and its three exceptions)
    server.py           build_app() / serve(): middlewares, routes, the listener
    context.py          per-application state (the Cluster, limits, version)
    auth.py             the token forms (X-ZT1-Auth, ?auth=, Bearer) and the auth middleware
    errors.py           JSON responses and the mapping of every failure to a status
    inputs.py           path ids, the JSON body (413/400), Idempotency-Key, ?consistency
    access.py           linearizable/local reads and writes through Cluster.submit
    streaming.py        streamed JSON listings (bounded memory; capped in number and time)
    routes_status.py    /health, /status, /controller
    routes_network.py   /controller/network..., /unstable/controller/network
    routes_member.py    .../member..., /unstable/controller/network/{nwid}/member
    spec.py, schemas.py, openapi.py   route declarations and GET /openapi.json

This package imports nothing of Raft or the transport: it sees the cluster only through cluster.Cluster.
"""
