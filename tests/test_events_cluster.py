"""Events from real controller processes: GET /events (token, filters, resume with Last-Event-ID after a missed
peer event), `hactl events tail` as a subprocess, a webhook whose secret file is missing refusing the start, and
the issue's throughput requirement: API writes/s with a stalled SSE client and a dead webhook attached is not much
below writes/s with no consumers at all."""
from __future__ import annotations

import http.client
import json
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.proc_cluster import ProcCluster, poll
from tests.silent_listener import SilentListener


class Stream:
    """GET /events on a node, read by a thread: ``next(timeout)`` gives {"id": ..., "data": {...}} messages."""

    def __init__(self, c: ProcCluster, nid: str, query: str = "", headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", c.port(nid), timeout=10)
        self.conn.request("GET", "/events" + (f"?{query}" if query else ""),
                          headers={"X-ZT1-Auth": c.token, **(headers or {})})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, (self.resp.status, self.resp.read())
        assert self.resp.getheader("Content-Type", "").startswith("text/event-stream")
        self.sock = self.conn.sock
        self.sock.settimeout(None)
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        cur: dict[str, Any] = {}
        try:
            for raw in self.resp.fp:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if "data" in cur:
                        self.messages.put(cur)
                    cur = {}
                elif not line.startswith(":"):
                    k, _, v = line.partition(": ")
                    cur[k] = json.loads(v) if k == "data" else v
        except (OSError, ValueError):
            pass

    def until(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> list[dict[str, Any]]:
        """Every message up to and including the first one ``pred`` accepts."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {what}; got {[m['data'] for m in seen]}"
            try:
                m = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            seen.append(m)
            if pred(m):
                return seen

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # ends the reader thread's blocking read
            except OSError:
                pass
        self.conn.close()


def is_event(event_type: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["data"]["eventType"] == event_type and all(m["data"].get(k) == v for k, v in fields.items())


def lines_of(proc: subprocess.Popen) -> queue.Queue[str]:
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line)
    threading.Thread(target=pump, daemon=True).start()
    return out


def hactl(*args: str, **kw: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hactl.cli", *args], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


@pytest.mark.timeout(180)
def test_sse_needs_the_token_filters_resumes_and_hactl_events_tail_follows(cluster, tmp_path: Path) -> None:
    c: ProcCluster = cluster()
    ctrl = c.wait_ready()
    node, victim = c.ids[0], c.ids[2]
    assert c.request(node, "GET", "/events", auth=False)[:2] == (401, {})
    code, body, _ = c.request(node, "GET", "/events?namespace=cluster&namespace=nope")
    assert code == 400 and body["field"] == "namespace"

    tail = hactl("events", "tail", "--url", f"http://127.0.0.1:{c.port(node)}", "--token-file",
                 str(c.root / "api-token"), "--propagate-always")
    printed = lines_of(tail)
    stream = Stream(c, node, "namespace=cluster")
    try:
        # The tail is connected once it prints this node's view of a write (a follower's is propagated).
        code, net = c.write(node, "POST", f"/controller/network/{ctrl}______", {"name": "events"})
        assert code == 200

        def tail_saw(pred: Callable[[dict], bool], what: str) -> dict:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if tail.poll() is not None:
                    raise AssertionError(f"hactl events tail exited {tail.returncode}: {tail.stderr.read()}")
                try:
                    line = printed.get(timeout=0.5)
                except queue.Empty:
                    c.write(node, "POST", f"/controller/network/{net['id']}", {"name": f"n{time.monotonic()}"})
                    continue
                event = json.loads(line)
                if pred(event):
                    return event
            raise AssertionError(f"hactl events tail never printed {what}")
        tail_saw(lambda e: e["namespace"] == "entityChange" and e["event_src_id"] == node, "an entity change")

        c.kill(victim)
        got = stream.until(is_event("peer.disconnected", peer=victim), 20, f"peer.disconnected {victim}")
        assert all(m["data"]["namespace"] == "cluster" and m["data"]["event_src_id"] == node for m in got)
        tail_saw(lambda e: e["eventType"] == "peer.disconnected" and e["peer"] == victim, "peer.disconnected")
        last_id = got[-1]["id"]
        incarnation, seq = last_id.split(".")
        stream.close()

        # While no stream is open the victim comes back: the node reports it, and the resume delivers it.
        c.start(victim)
        c.wait_ready()
        resumed = Stream(c, node, "namespace=cluster", headers={"Last-Event-ID": last_id})
        got = resumed.until(is_event("peer.connected", peer=victim), 10, f"the missed peer.connected {victim}")
        assert all(m["id"].split(".")[0] == incarnation and int(m["id"].split(".")[1]) > int(seq) for m in got)
        assert all(m["data"]["namespace"] == "cluster" for m in got)
        resumed.close()

        # An id the node cannot resume from (another node's, or before a restart): a gap event comes first.
        other = Stream(c, c.ids[1], "namespace=cluster", headers={"Last-Event-ID": last_id})
        first = other.until(lambda m: True, 10, "the first message")[0]
        assert first["data"]["eventType"] == "gap" and last_id in first["data"]["reason"] and "id" not in first
        other.close()

        # The node restarts under the tail: it reconnects, sending the last id it printed, and the new process
        # (another incarnation) answers with a gap event first.
        assert c.stop(node) == 0
        c.start(node)
        gap = tail_saw(lambda e: e["eventType"] == "gap", "a gap event after the restart")
        assert gap["reason"].startswith(f"history does not reach back to {incarnation}.")
        assert gap["event_src_id"] == node and not gap["id"].startswith(f"{node}-{incarnation}-")
    finally:
        stream.close()
        tail.send_signal(signal.SIGINT)
        try:
            assert tail.wait(10) == 0
        finally:
            tail.kill()

    # `| head -1`: the node's config names the API and the token; a closed stdout ends the tail quietly.
    head = hactl("events", "tail", "--config", str(c.specs[node].config), "--propagate-always")
    c.wait_ready()
    assert head.stdout is not None
    deadline = time.monotonic() + 20
    while not select.select([head.stdout], [], [], 0.5)[0]:  # (a reader thread would hold the pipe: no close)
        assert time.monotonic() < deadline and head.poll() is None, "hactl events tail --config printed nothing"
        c.write(node, "POST", f"/controller/network/{net['id']}", {"name": f"n{time.monotonic()}"})
    json.loads(head.stdout.readline())
    head.stdout.close()
    for _ in range(5):  # the next events go to a closed pipe
        c.write(node, "POST", f"/controller/network/{net['id']}", {"name": f"n{time.monotonic()}"})
    assert head.wait(10) == 0 and "Traceback" not in (head.stderr.read() if head.stderr else "")

    bad_token = tmp_path / "wrong-token"
    bad_token.write_text("not-the-token\n")
    refused = hactl("events", "tail", "--url", f"http://127.0.0.1:{c.port(node)}", "--token-file", str(bad_token))
    out, err = refused.communicate(timeout=20)
    assert refused.returncode == 1 and "401" in err and out == ""
    unknown = hactl("events", "tail", "--url", f"http://127.0.0.1:{c.port(node)}", "--token-file",
                    str(c.root / "api-token"), "--namespace", "nope")
    _, err = unknown.communicate(timeout=20)
    assert unknown.returncode == 2 and "--namespace" in err


def test_a_webhook_with_a_missing_secret_file_refuses_the_start(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    c = ProcCluster(tmp_path / "c", 3, config={"events": [
        {"type": "webhook", "url": "http://127.0.0.1:9/hook", "secret_file": str(missing)}]})
    try:
        c.start(c.ids[0])
        code = c.procs[c.ids[0]].wait(30)
        assert code == 2, c.log(c.ids[0])
        assert "events[0].secret_file" in c.log(c.ids[0]) and str(missing) in c.log(c.ids[0])
    finally:
        c.close()


def writes_per_second(c: ProcCluster, n: int = 300) -> float:
    ctrl = c.wait_ready()
    leader = c.leader()
    code, net = c.write(leader, "POST", f"/controller/network/{ctrl}______", {"name": "rate"})
    assert code == 200
    t0 = time.monotonic()
    for i in range(n):
        code, _ = c.write(leader, "POST", f"/controller/network/{net['id']}/member/{0x1000000000 + i:010x}",
                          {"authorized": True})
        assert code == 200
    return n / (time.monotonic() - t0)


def metric(c: ProcCluster, nid: str, name: str, subscription: str) -> float:
    code, text, _ = c.request(nid, "GET", "/metrics")
    assert code == 200
    text = text.decode() if isinstance(text, bytes) else str(text)
    m = re.search(rf'^{name}\{{subscription="{re.escape(subscription)}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.timeout(180)
def test_writes_are_not_slowed_by_a_stalled_sse_client_and_a_dead_webhook(cluster) -> None:
    plain = cluster()
    rate_a = writes_per_second(plain)
    plain.close()

    silent = SilentListener()
    try:
        c: ProcCluster = cluster(events=[{"type": "webhook", "url": f"http://127.0.0.1:{silent.port}/hook",
                                          "propagate_always": True, "queue": 100, "timeout_s": 2, "retries": 5}])
        c.wait_ready()
        leader = c.leader()
        # A client that opens /events and never reads: a tiny receive buffer, the request sent, no recv.
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        stalled.connect(("127.0.0.1", c.port(leader)))
        stalled.sendall(f"GET /events?propagate_always=true HTTP/1.1\r\nHost: x\r\nX-ZT1-Auth: {c.token}\r\n"
                        "\r\n".encode())

        def subscribed() -> bool:
            return 'subscription="sse-127.0.0.1"' in c.request(leader, "GET", "/metrics")[1].decode()
        poll(subscribed, 10, "the stalled client's subscription")
        rate_b = writes_per_second(c)
        assert subscribed()  # still connected, never read from (its bytes sit in the kernel's buffers, then in
        # its bounded queue: how far it got depends on the buffer sizes, hence printed, not asserted)
        dropped = metric(c, leader, "hactl_event_dropped_total", "webhook-0")
        queued = metric(c, leader, "hactl_event_queue_events", "webhook-0")
        sse = (metric(c, leader, "hactl_event_queue_events", "sse-127.0.0.1"),
               metric(c, leader, "hactl_event_dropped_total", "sse-127.0.0.1"))
        print(f"writes/s: {rate_a:.0f} without consumers, {rate_b:.0f} with a stalled SSE client and a dead "
              f"webhook (webhook: {queued:.0f} queued, {dropped:.0f} dropped; SSE client: {sse[0]:.0f} queued, "
              f"{sse[1]:.0f} dropped)")
        assert dropped > 0 and queued > 0  # the webhook never took anything, and its queue is bounded
        assert rate_b >= 0.5 * rate_a, (rate_a, rate_b)
        stalled.close()
    finally:
        silent.close()
