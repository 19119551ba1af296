"""Event sinks and the bus's history with real sockets: the webhook (signed JSON arrays, retries, drops counted and
reported by a gap event, a dead receiver that blocks nothing and does not hold up stop), the history ring and
subscriptions after start, and GET /events served by the real API application over HTTP."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp
import pytest

from hactl.api.server import serve
from hactl.config import EventSinkConfig
from hactl.events.bus import EventBus, Subscription
from hactl.events.setup import EventSinkError, build_bus
from hactl.events.sinks import FileSink
from hactl.events.webhook import SIGNATURE_HEADER, SOURCE_HEADER, WebhookSink
from tests.silent_listener import SilentListener


class Receiver:
    """A webhook receiver on 127.0.0.1: records (headers, body) of every POST and answers statuses[i] to the
    i-th (200 once the list is used up)."""

    def __init__(self, statuses: list[int] | None = None, *, hang_up: bool = False) -> None:
        self.statuses = list(statuses or [])
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.answered: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.answered.append(status)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                # hang_up: close after answering, without saying so (as an idle keep-alive timeout does)
                self.close_connection = hang_up

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for (_, body), status in zip(self.posts, self.answered) if status == 200
                    for e in json.loads(body)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def until(cond: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return value


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------------------------------------- webhook


def test_webhook_posts_signed_json_arrays_naming_the_source(tmp_path: Path) -> None:
    secret = tmp_path / "hook.secret"
    secret.write_text("s3cret-value\n")  # stripped: the key is the file's content without the newline
    rx = Receiver()

    async def main() -> None:
        bus = build_bus("ctrl1", [EventSinkConfig(type="webhook", url=rx.url, secret_file=str(secret))], tmp_path,
                        lambda: 1_700_000_000_000)
        bus.start()
        for i in range(600):
            bus.emit("cluster", "tick", n=i)
            if i % 100 == 0:
                await asyncio.sleep(0.01)
        await until(lambda: len(rx.events()) == 600, "600 events at the receiver")
        await bus.stop()
    try:
        asyncio.run(main())
    finally:
        rx.close()
    assert [e["n"] for e in rx.events()] == list(range(600))  # in order, none twice
    assert len(rx.posts) > 1  # batches, not one request per event, nor one for everything
    for headers, body in rx.posts:
        assert headers["content-type"] == "application/json"
        assert headers[SOURCE_HEADER.lower()] == "ctrl1"
        want = "sha256=" + hmac.new(b"s3cret-value", body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers[SIGNATURE_HEADER.lower()], want)
        assert isinstance(json.loads(body), list) and len(json.loads(body)) <= 256


def test_webhook_without_secret_is_unsigned(tmp_path: Path) -> None:
    rx = Receiver()
    try:
        sink = WebhookSink(rx.url, "ctrl2")
        assert sink.write(['{"a":1}']) == 0
        sink.close()
    finally:
        rx.close()
    headers, body = rx.posts[0]
    assert body == b'[{"a":1}]' and SIGNATURE_HEADER.lower() not in headers


def test_webhook_reconnects_at_once_when_the_receiver_closed_the_kept_alive_connection() -> None:
    rx = Receiver(hang_up=True)
    try:
        sink = WebhookSink(rx.url, "ctrl1", retries=0)
        t0 = time.monotonic()
        for i in range(5):
            assert sink.write([f'{{"n":{i}}}']) == 0
            time.sleep(0.05)  # the receiver's close reaches us
        took = time.monotonic() - t0
        sink.close()
    finally:
        rx.close()
    assert [e["n"] for e in rx.events()] == list(range(5)) and took < 2, took


def test_webhook_retries_a_500_then_delivers_once(tmp_path: Path) -> None:
    rx = Receiver([500, 502])
    try:
        sink = WebhookSink(rx.url, "ctrl1", retries=3, timeout_s=2)
        t0 = time.monotonic()
        assert sink.write(['{"n":1}', '{"n":2}']) == 0
        took = time.monotonic() - t0
        sink.close()
    finally:
        rx.close()
    assert len(rx.posts) == 3 and len({body for _, body in rx.posts}) == 1  # the same batch each time
    assert 1.4 <= took < 10, took  # backoff 0.5 s then 1 s
    assert sink.dropped_total == 0 and sink.delivered_total == 2


def test_webhook_out_of_retries_drops_counts_and_reports_a_gap(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    rx = Receiver([503, 503])
    caplog.set_level(logging.WARNING, "hactl.events")

    async def main() -> Subscription:
        bus = EventBus("ctrl1")
        sub = Subscription("hook", None, WebhookSink(rx.url, "ctrl1", retries=1, timeout_s=2))
        bus.subscribe(sub)
        bus.start()
        bus.emit("cluster", "tick", n=1)  # two 503s: dropped
        await until(lambda: sub.dropped_total == 1, "the batch dropped after its retries")
        bus.emit("cluster", "tick", n=2)  # delivered, after a gap event saying one was lost
        await until(lambda: rx.events(), "the next batch")
        await bus.stop()
        return sub
    try:
        sub = asyncio.run(main())
    finally:
        rx.close()
    assert len(rx.posts) == 3
    got = rx.events()
    assert [(e["eventType"], e.get("dropped"), e.get("n")) for e in got] == [("gap", 1, None), ("tick", None, 2)]
    assert sub.sink.dropped_total == 1  # type: ignore[union-attr]
    assert any(rx.url in r.getMessage() and "HTTP 503" in r.getMessage() for r in caplog.records)


def test_dead_webhook_blocks_neither_the_loop_nor_other_sinks_and_stop_is_bounded(tmp_path: Path) -> None:
    """A receiver that accepts and never answers: each attempt waits its timeout. Meanwhile a file sink gets every
    event, the loop keeps running, the webhook's queue drops (counted), and stop() ends in seconds."""
    silent = SilentListener()
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - t0 - 0.01)

    async def main() -> tuple[Subscription, float]:
        bus = EventBus("ctrl1")
        hook = Subscription("hook", None, WebhookSink(silent.url, "ctrl1", timeout_s=1, retries=5), limit=100)
        bus.subscribe(hook)
        bus.subscribe(Subscription("file", None, FileSink(tmp_path / "e.jsonl", 1 << 24, 1)))
        bus.start()
        tick = asyncio.create_task(ticker())
        for i in range(3000):
            bus.emit("cluster", "tick", n=i)
            if i % 100 == 0:
                await asyncio.sleep(0.01)
        await until(lambda: len(read_lines(tmp_path / "e.jsonl")) == 3000, "every event in the file sink")
        t0 = time.monotonic()
        await bus.stop()
        stopped_in = time.monotonic() - t0
        tick.cancel()
        return hook, stopped_in
    try:
        hook, stopped_in = asyncio.run(main())
    finally:
        silent.close()
    assert [e["n"] for e in read_lines(tmp_path / "e.jsonl")] == list(range(3000))
    assert hook.dropped_total >= 2800  # beyond the queue's bound (100), and what the sink gave up on
    assert stopped_in < 10, stopped_in  # not retries x timeout per batch
    assert max(lags) < 0.5, max(lags)  # the loop never waited for the webhook


def test_unreadable_secret_file_is_an_error_naming_the_key(tmp_path: Path) -> None:
    cfgs = [EventSinkConfig(type="file"),
            EventSinkConfig(type="webhook", url="http://127.0.0.1:9/", secret_file=str(tmp_path / "missing"))]
    with pytest.raises(EventSinkError) as e:
        build_bus("ctrl1", cfgs, tmp_path, lambda: 0)
    assert "events[1].secret_file" in str(e.value) and str(tmp_path / "missing") in str(e.value)


# ---------------------------------------------------------------------------------------------- bus


def test_history_resumes_within_the_ring_and_says_when_it_cannot(tmp_path: Path) -> None:
    bus = EventBus("ctrl1", history=5)
    evs = [bus.emit("cluster", "tick", n=i) for i in range(8)]  # the ring keeps n=3..7
    after = bus.history_after(bus.incarnation, evs[4].seq)
    assert after is not None and [e.fields["n"] for e in after] == [5, 6, 7]
    assert bus.history_after(bus.incarnation, evs[2].seq) is not None  # n=3.. are all kept
    assert bus.history_after(bus.incarnation, evs[1].seq) is None  # n=2 fell out
    assert bus.history_after("ffffff", evs[7].seq) is None  # another incarnation of the node
    assert bus.history_after(bus.incarnation, evs[7].seq) == []


def test_subscribe_after_start_and_unsubscribe(tmp_path: Path) -> None:
    async def main() -> None:
        bus = EventBus("ctrl1")
        bus.start()
        bus.emit("cluster", "tick", n=0)  # before the subscription: not written
        sub = Subscription("late", {"cluster"}, FileSink(tmp_path / "late.jsonl", 1 << 20, 1))
        bus.subscribe(sub)
        bus.emit("cluster", "tick", n=1)
        bus.emit("zerotier", "tick", n=2)  # another namespace
        await until(lambda: len(read_lines(tmp_path / "late.jsonl")) == 1, "the late subscription's event")
        bus.unsubscribe(sub)
        assert sub not in bus.subscriptions
        bus.emit("cluster", "tick", n=3)
        await asyncio.sleep(0.1)
        await bus.stop()
        sub.sink.close()  # type: ignore[union-attr]
    asyncio.run(main())
    assert [e["n"] for e in read_lines(tmp_path / "late.jsonl")] == [1]


# ---------------------------------------------------------------------------------------------- GET /events


class OneNode:
    """What the API needs from a controller for GET /events: a token and an event bus (no Raft here; the
    ProcCluster tests serve it from real controllers)."""
    node_id = "ctrl1"

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    def check_token(self, token: str) -> bool:
        return hmac.compare_digest(token, "tok")

    def event_bus(self) -> EventBus:
        return self.bus

    def metrics_collector(self) -> None:
        return None


async def sse_messages(resp: aiohttp.ClientResponse, n: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The next n SSE messages as {"id": ..., "data": parsed JSON}."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while len(out) < n:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line == "":
                if "data" in cur:
                    out.append(cur)
                cur = {}
            elif not line.startswith(":"):
                k, _, v = line.partition(": ")
                cur[k] = json.loads(v) if k == "data" else v
    return out


def test_sse_filters_resumes_and_reports_slow_readers(tmp_path: Path) -> None:
    async def main() -> None:
        bus = EventBus("ctrl1")
        bus.start()
        server = await serve(OneNode(bus), "127.0.0.1", 0)  # type: ignore[arg-type]
        base = f"http://127.0.0.1:{server.port}/events"
        auth = {"X-ZT1-Auth": "tok"}
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(base) as r:
                    assert r.status == 401
                async with s.get(base + "?namespace=cluster,bogus", headers=auth) as r:
                    assert r.status == 400 and (await r.json())["field"] == "namespace"
                async with s.get(base + "?propagate_always=maybe", headers=auth) as r:
                    assert r.status == 400 and (await r.json())["field"] == "propagate_always"
                async with s.get(base, headers={**auth, "Last-Event-ID": "nonsense"}) as r:
                    assert r.status == 400 and (await r.json())["field"] == "Last-Event-ID"

                async with s.get(base + "?namespace=cluster&type=b", headers=auth) as r:
                    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                    await until(lambda: any(x.name.startswith("sse-") for x in bus.subscriptions), "subscribed")
                    for ns, t in [("zerotier", "b"), ("cluster", "a"), ("cluster", "b")]:
                        bus.emit(ns, t, n=1)
                    bus.emit("cluster", "b", n=2, propagated=True)  # another node's view: not by default
                    bus.emit("cluster", "b", n=3)
                    got = await sse_messages(r, 2)
                    assert [(m["data"]["namespace"], m["data"]["eventType"], m["data"]["n"]) for m in got] == \
                        [("cluster", "b", 1), ("cluster", "b", 3)]
                    seen = got[0]["id"]
                    assert seen == f"{bus.incarnation}.{got[0]['data']['id'].rsplit('-', 1)[1]}"
                await until(lambda: not any(x.name.startswith("sse-") for x in bus.subscriptions),
                            "the closed stream's subscription removed")
                # Missed while disconnected: the kept history after the id, filtered as asked, then live events.
                bus.emit("cluster", "b", n=4)
                async with s.get(base + "?type=b&propagate_always=true",
                                 headers={**auth, "Last-Event-ID": seen}) as r:
                    got = await sse_messages(r, 3)
                    assert [m["data"]["n"] for m in got] == [2, 3, 4]
                    bus.emit("cluster", "b", n=5)
                    assert [m["data"]["n"] for m in await sse_messages(r, 1)] == [5]
                # An id of another incarnation (the node restarted): a gap event first, without an id.
                async with s.get(base + "?last_event_id=abcdef.7", headers=auth) as r:
                    gap = (await sse_messages(r, 1))[0]
                    assert gap["data"]["eventType"] == "gap" and "abcdef.7" in gap["data"]["reason"]
                    assert "id" not in gap
                    bus.emit("cluster", "b", n=6)
                    assert [m["data"]["n"] for m in await sse_messages(r, 1)] == [6]

            # A client that stops reading: the node goes on (emit never waits); the client's queue drops, and
            # when it reads again a gap event says how many it lost.
            await until(lambda: not any(x.name.startswith("sse-") for x in bus.subscriptions), "streams closed")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\nX-ZT1-Auth: tok\r\n\r\n")
            await until(lambda: any(x.name.startswith("sse-") for x in bus.subscriptions), "subscribed")
            sub = next(x for x in bus.subscriptions if x.name.startswith("sse-"))
            t0 = time.monotonic()
            for i in range(20_000):
                bus.emit("cluster", "flood", n=i, pad="x" * 2000)  # 40 MB: more than the kernel buffers
                if i % 500 == 0:
                    await asyncio.sleep(0)
            assert time.monotonic() - t0 < 5
            await until(lambda: sub.dropped_total > 0, "the stalled client's queue dropping")
            sock.setblocking(False)
            data = b""
            deadline = time.monotonic() + 20
            emitted = False
            while b'"eventType":"after"' not in data:
                assert time.monotonic() < deadline, "the stalled client never got the newest event"
                if not emitted and len(sub.queue) < sub.limit:  # the client reads again: room in its queue
                    bus.emit("cluster", "after", n=-1)
                    emitted = True
                try:
                    chunk = sock.recv(1 << 20)
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                    continue
                assert chunk, "connection closed"
                data += chunk
            sock.close()
            text = data.decode()
            gap = text.index('"eventType":"gap"')
            assert '"dropped":' in text[gap:] and gap < text.index('"eventType":"after"')
        finally:
            await server.stop()
            await bus.stop()
    asyncio.run(main())
