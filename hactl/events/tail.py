"""``hactl events tail``: follow a node's GET /events, one event JSON per line on stdout.

After a dropped connection it reconnects with ``Last-Event-ID`` (the history on the node fills the hole, or a gap
event says it could not); a heartbeat arrives every 15 s, so a silent connection is taken as dead after
READ_TIMEOUT_S. Exit codes: 0 on Ctrl-C or a closed stdout (``| head``), 1 when the node refuses the token (401),
2 for bad arguments (ours, or a 400 from the node naming the parameter)."""
from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import sys
import time
import urllib.parse
from typing import Callable, TextIO

EXIT_OK, EXIT_AUTH, EXIT_USAGE = 0, 1, 2
READ_TIMEOUT_S = 45.0  # three missed heartbeats
RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.5, 10.0


class TailError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _target(args: argparse.Namespace) -> tuple[str, str, str | None]:
    """(url, token, cacert) from --url/--token-file/--cacert, or from a node's --config."""
    url, token_file, cacert = args.url, args.token_file, args.cacert
    if args.config:
        from hactl.config import ConfigError, load, parse_hostport
        try:
            cfg = load(args.config)
            host, port = parse_hostport(cfg.api.listen, cfg.source, "api.listen")
        except ConfigError as e:
            raise TailError(EXIT_USAGE, f"configuration error: {e}") from None
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        url = url or f"{'https' if cfg.api.tls_cert else 'http'}://{host}:{port}"
        token_file = token_file or cfg.api.token_file
    if not url or not token_file:
        raise TailError(EXIT_USAGE, "give --url URL and --token-file FILE, or --config NODE_CONFIG")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise TailError(EXIT_USAGE, f"--url: expected http://HOST:PORT or https://HOST:PORT, got {url!r}")
    try:
        token = open(token_file, encoding="utf-8").read().strip()
    except OSError as e:
        raise TailError(EXIT_USAGE, f"--token-file {token_file}: {e.strerror or e}") from None
    return url, token, cacert


def _query(args: argparse.Namespace) -> str:
    params: list[tuple[str, str]] = [("namespace", ns) for ns in args.namespace or []]
    params += [("type", t) for t in args.type or []]
    if args.propagate_always:
        params.append(("propagate_always", "true"))
    return urllib.parse.urlencode(params)


def _connect(url: str, token: str, cacert: str | None, query: str,
             last_id: str | None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        ctx = ssl.create_default_context(cafile=cacert)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port or 443, timeout=READ_TIMEOUT_S, context=ctx)
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=READ_TIMEOUT_S)
    headers = {"X-ZT1-Auth": token, "Accept": "text/event-stream"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    path = parts.path.rstrip("/") + "/events" + (f"?{query}" if query else "")
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    if resp.status == 401:
        conn.close()
        raise TailError(EXIT_AUTH, f"{url}: 401: the node refused the token")
    if resp.status == 400:
        try:
            message = json.loads(resp.read()).get("message")
        except ValueError:
            message = None
        conn.close()
        raise TailError(EXIT_USAGE, f"{url}: {message or 'bad request (400)'}")
    if resp.status != 200:
        resp.read()
        conn.close()
        raise ConnectionError(f"HTTP {resp.status} {resp.reason}")
    return conn, resp


def follow(url: str, token: str, cacert: str | None, query: str, out: TextIO, *,
           err: Callable[[str], None], max_connects: int | None = None) -> None:
    """Print events until interrupted (or ``max_connects`` connections ended: tests)."""
    last_id: str | None = None
    delay = RECONNECT_FIRST_S
    connects = 0
    while max_connects is None or connects < max_connects:
        connects += 1
        try:
            conn, resp = _connect(url, token, cacert, query, last_id)
        except (OSError, http.client.HTTPException) as e:
            err(f"{url}: {e}; retrying in {delay:g}s")
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
            continue
        delay = RECONNECT_FIRST_S
        try:
            data: list[str] = []
            event_id: str | None = None
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line:  # the end of a message
                    if data:
                        out.write("\n".join(data) + "\n")
                        out.flush()
                        if event_id is not None:
                            last_id = event_id
                    data, event_id = [], None
                elif line.startswith(":"):
                    continue  # a comment: the heartbeat
                else:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "data":
                        data.append(value)
                    elif name == "id":
                        event_id = value
            err(f"{url}: the node ended the stream; reconnecting")
        except BrokenPipeError:
            raise  # our stdout, not the connection
        except (OSError, http.client.HTTPException) as e:
            err(f"{url}: connection lost ({e or type(e).__name__}); reconnecting")
        finally:
            conn.close()
        time.sleep(RECONNECT_FIRST_S)


def run(args: argparse.Namespace) -> int:
    def err(message: str) -> None:
        print(f"hactl events tail: {message}", file=sys.stderr, flush=True)
    try:
        url, token, cacert = _target(args)
        follow(url, token, cacert, _query(args), sys.stdout, err=err)
    except TailError as e:
        err(str(e))
        return e.code
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # stdout was closed (| head): quietly done; point stdout at /dev/null so the exit's flush cannot fail
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return EXIT_OK


def add_events_commands(sub: argparse._SubParsersAction) -> None:
    from hactl.config import EVENT_NAMESPACES
    ev = sub.add_parser("events", help="follow a controller's events").add_subparsers(dest="sub", required=True)
    p = ev.add_parser("tail", help="print a node's events (GET /events) as JSON lines, following; reconnects and "
                                   "resumes after a dropped connection")
    p.add_argument("--namespace", action="append", choices=EVENT_NAMESPACES, metavar="NS",
                   help=f"only this namespace ({', '.join(EVENT_NAMESPACES)}); repeatable")
    p.add_argument("--type", action="append", metavar="T", help="only this eventType; repeatable")
    p.add_argument("--propagate-always", action="store_true",
                   help="every node's view of replicated events, not only the reporting node's")
    p.add_argument("--url", metavar="URL", help="the node's management API, e.g. http://127.0.0.1:9993")
    p.add_argument("--token-file", metavar="FILE", help="the API token (the cluster's api-token file)")
    p.add_argument("--cacert", metavar="FILE", help="CA certificate(s) for an https API")
    p.add_argument("--config", metavar="FILE", help="a node's config.yaml: its api.listen and api.token_file "
                                                    "(instead of --url and --token-file)")
    p.set_defaults(func=run)
