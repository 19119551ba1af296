"""One API worker process: `python -m hactl.workers.main --link-fd N`, started by its node (supervisor.py).

It reads its settings from the link (the node's hello), opens ctrl.db read-only, serves the API on the node's
host:port with SO_REUSEPORT (and the node's TLS certificate), says it is ready, and runs until the link ends or
SIGTERM. Meanwhile it signs the ZeroTier configs the node hands it over the link (netconf.py). It never outlives its node: PR_SET_PDEATHSIG has the kernel SIGKILL it when the node dies (a node that
restarts on purpose replaces ctrl.db: no worker may keep serving the old file), and a link that ends stops it too.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys

from hactl import logs
from hactl.agent.protocol import ProtocolError
from hactl.api.context import CONTEXT
from hactl.api.server import serve
from hactl.fsm.machine import StateMachine
from hactl.workers import messages as M
from hactl.workers.cluster import NodeLink, WorkerCluster
from hactl.workers.header import served_by
from hactl.workers.netconf import ConfigSigner
from hactl.workers.proxy import NodeProxy

log = logging.getLogger("hactl.workers")

PR_SET_PDEATHSIG = 1
EXIT_OK, EXIT_FAILED = 0, 1
SHUTDOWN_TIMEOUT = 2.0  # requests in flight when the worker stops (its node is stopping too)


def die_with_parent() -> None:
    """SIGKILL when the thread that spawned us exits (Linux; the node spawns from its event loop's thread, which
    lives as long as the node). Elsewhere the link's end of stream is the only signal."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("API worker: prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
    except (OSError, AttributeError):
        pass


async def run(sock: socket.socket) -> int:
    reader, writer = await asyncio.open_connection(sock=sock)
    link = NodeLink(reader, writer, M.MIN_FRAME)
    try:
        settings = await link.hello()
    except (ProtocolError, ConnectionError, OSError) as e:
        print(f"hactl API worker: no usable hello from the node: {e}", file=sys.stderr)
        return EXIT_FAILED
    if os.getppid() != settings.node_pid:
        return EXIT_OK  # the node died before prctl took effect: nobody to serve for
    logs.setup(settings.log_level, settings.log_format, settings.node_id)
    logs.set_context(lambda: {"worker": settings.index})
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    reading = asyncio.create_task(link.run(), name="worker-link")
    machine = StateMachine(settings.ctrl_db, readonly=True, map_size=settings.ctrl_db_max_bytes)
    link.signer = ConfigSigner(machine).sign
    proxy = NodeProxy(settings.node_api_socket)
    api = None
    try:
        ssl_context = None
        if settings.tls_cert:
            from hactl.api.tls import server_ssl_context
            ssl_context = server_ssl_context(settings.tls_cert, settings.tls_key)

        def configure(app):  # type: ignore[no-untyped-def]
            served_by(settings.index)(app)
            app[CONTEXT].streams.limit = settings.stream_limit

        api = await serve(WorkerCluster(settings, link, machine), settings.host, settings.port,
                          max_body_bytes=settings.max_body_bytes, version=settings.version,
                          shutdown_timeout=SHUTDOWN_TIMEOUT, ssl_context=ssl_context, reuse_port=True,
                          outer_middlewares=[proxy.middleware()], configure=configure)
        link.send(M.Ready(os.getpid()))
        log.info("API worker %d (pid %d) serving %s:%d from %s", settings.index, os.getpid(), settings.host,
                 api.port, settings.ctrl_db)
        waiters = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(link.closed.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        return EXIT_OK
    except Exception as e:  # (typically the port: another process listens there without SO_REUSEPORT)
        log.error("API worker %d cannot serve: %s: %s", settings.index, type(e).__name__, e)
        return EXIT_FAILED
    finally:
        if api is not None:
            await api.stop()
        await proxy.close()
        reading.cancel()
        machine.close()


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    ap = argparse.ArgumentParser(prog="python -m hactl.workers.main", description="an API worker of a hactl node")
    ap.add_argument("--link-fd", type=int, required=True, help="this worker's end of the node's socketpair")
    args = ap.parse_args(argv)
    sock = socket.socket(fileno=args.link_fd)
    try:
        return asyncio.run(run(sock))
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
