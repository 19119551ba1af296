"""GET /events: this node's events as Server-Sent Events (token required like the rest of the API).

Each client is a pull subscription of the node's EventBus (hactl/events/bus.py) with a bounded queue: emit() never
waits for a client; a client that reads too slowly loses events, and the next one it gets is preceded by a `gap`
event saying how many. A client that has not taken a write for WRITE_TIMEOUT_S is cut off. The subscription goes
when the connection does (noticed at the latest at the next heartbeat).

Messages: ``id: <incarnation>.<seq>`` and ``data: <the event's JSON>``; gap events carry no id (resuming after one
would skip what preceded it). A reconnecting client sends ``Last-Event-ID`` (or ``?last_event_id=``): the kept
history after it is replayed first, or, when the history cannot reach back that far (a restart, another node, an
evicted id), a `gap` event with a `reason` comes first."""
from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Iterable

from aiohttp import web

from hactl.api.context import context
from hactl.api.errors import ApiError, bad_request, retry_after
from hactl.api.spec import Route
from hactl.config import EVENT_NAMESPACES
from hactl.events.bus import EventBus, Subscription
from hactl.events.model import Event

log = logging.getLogger("hactl.api")

HEARTBEAT_S = 15.0
GONE_CHECK_S = 1.0
WRITE_TIMEOUT_S = 60.0  # a client that takes no bytes for this long is cut off (its queue was dropping anyway)
CLIENT_QUEUE = 2_000  # events waiting for one client; beyond it they are dropped (gap event)
MAX_CLIENTS = 64
CHUNK = 256  # events per write
SSE_PREFIX = "sse-"
LAST_EVENT_ID = "Last-Event-ID"
_EVENT_ID = re.compile(r"^([0-9a-f]{1,32})\.([0-9]{1,19})$")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _list_param(request: web.Request, name: str) -> list[str]:
    """A repeatable, comma-separated query parameter."""
    return [v.strip() for raw in request.query.getall(name, []) for v in raw.split(",") if v.strip()]


def _bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return False
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise bad_request(name, f"{name}: expected true or false, got {raw!r}")


def _last_event_id(request: web.Request) -> tuple[str, int] | None:
    raw = request.headers.get(LAST_EVENT_ID) or request.query.get("last_event_id")
    if not raw:
        return None
    m = _EVENT_ID.match(raw.strip())
    if m is None:
        field = LAST_EVENT_ID if LAST_EVENT_ID in request.headers else "last_event_id"
        raise bad_request(field, f"{field}: expected <incarnation>.<seq> as sent in an event's id, got {raw[:80]!r}")
    return m.group(1), int(m.group(2))


def _message(event: Event) -> str:
    # A gap event is about this stream, not in the history: no id, so a resume goes on from the last real event.
    head = "" if is_gap(event) else f"id: {event.incarnation}.{event.seq}\n"
    return f"{head}data: {event.to_json()}\n\n"


def is_gap(event: Event) -> bool:
    return event.namespace == "cluster" and event.event_type == "gap"


async def _send(request: web.Request, resp: web.StreamResponse, events: Iterable[Event]) -> None:
    batch = list(events)
    for i in range(0, len(batch), CHUNK):
        text = "".join(_message(e) for e in batch[i:i + CHUNK])
        await _write(request, resp, text)


async def _write(request: web.Request, resp: web.StreamResponse, text: str) -> None:
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await resp.write(text.encode())
    except TimeoutError:
        log.info("API: GET /events client %s took nothing for %gs; cutting it off", request.remote, WRITE_TIMEOUT_S)
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("client stalled") from None


async def get_events(request: web.Request) -> web.StreamResponse:
    bus: EventBus | None = context(request).cluster.event_bus()
    if bus is None or bus.closed:
        raise ApiError(503, "EVENTS_UNAVAILABLE", "this node has no event bus (it is starting or stopping)",
                       headers=retry_after(1.0))
    namespaces = _list_param(request, "namespace")
    for ns in namespaces:
        if ns not in EVENT_NAMESPACES:
            raise bad_request("namespace", f"namespace: unknown namespace {ns!r} (known: "
                                           f"{', '.join(EVENT_NAMESPACES)})")
    types = _list_param(request, "type")
    propagate_always = _bool_param(request, "propagate_always")
    last = _last_event_id(request)
    clients = sum(1 for s in bus.subscriptions if s.name.startswith(SSE_PREFIX))
    if clients >= MAX_CLIENTS:
        raise ApiError(429, "TOO_MANY_STREAMS", f"{clients} event streams are open (the limit is {MAX_CLIENTS}); "
                       "retry later", headers=retry_after(5.0))
    sub = Subscription(f"{SSE_PREFIX}{request.remote}", set(namespaces) or None, None, CLIENT_QUEUE,
                       propagate_always=propagate_always, event_types=set(types) or None)
    # Subscribing and reading the history in one step (no await between): every event is either in the backlog
    # or queued for the client, never both, never neither.
    bus.subscribe(sub)
    backlog: list[Event] = []
    if last is not None:
        missed = bus.history_after(*last)
        if missed is None:
            backlog.append(bus.gap_event(reason=f"history does not reach back to {last[0]}.{last[1]}"))
        else:
            backlog.extend(e for e in missed if sub.wants(e))
    try:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        await _write(request, resp, ": hactl events\n\n")  # headers out now: the client knows it is subscribed
        await _send(request, resp, backlog)
        del backlog
        quiet_since = time.monotonic()
        while not sub.closed:
            if request.transport is None or request.transport.is_closing():
                break  # the client left (aiohttp does not cancel the handler): checked at least every second
            if not sub.queue:
                sub.wake.clear()
                try:
                    async with asyncio.timeout(GONE_CHECK_S):
                        await sub.wake.wait()
                except TimeoutError:
                    if time.monotonic() - quiet_since >= HEARTBEAT_S:
                        await _write(request, resp, ": keepalive\n\n")
                        quiet_since = time.monotonic()
                continue
            events = [sub.queue.popleft() for _ in range(min(CHUNK, len(sub.queue)))]
            await _send(request, resp, events)
            quiet_since = time.monotonic()
        if not sub.closed:
            return resp
        await resp.write_eof()  # the node is stopping: a clean end, the client reconnects elsewhere
    except ConnectionError:
        pass  # the client went away
    finally:
        bus.unsubscribe(sub)
    return resp


ROUTES: list[Route] = [
    Route("GET", "/events", get_events, "getEvents", "This node's events as Server-Sent Events", {"type": "string"},
          tags=("status",), content_type="text/event-stream", errors=(400, 429, 503),
          description="A text/event-stream of this node's events (the JSON objects of the `events:` sinks). Query "
                      "parameters, each repeatable or comma-separated: `namespace` (cluster, entityChange, "
                      "zerotier; default all), `type` (eventType, default all), and `propagate_always=true` for "
                      "every node's view of replicated events. Each message is `id: <incarnation>.<seq>` and "
                      "`data: <event JSON>`; a `: keepalive` comment every 15 s. Resume with the `Last-Event-ID` "
                      "header (or `?last_event_id=`): the events kept since (up to 10,000) are sent first, or a "
                      "`gap` event (namespace cluster, with `reason`) when the history does not reach back that "
                      "far. A client reading too slowly loses events: a `gap` event (with `dropped`) says how "
                      "many. Token required."),
]
