"""The webhook sink: each batch of events is POSTed as one JSON array.

Headers: ``Content-Type: application/json``, ``X-Hactl-Event-Source: <node id>`` and, with a secret,
``X-Hactl-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes, keyed by the secret file's stripped bytes>``.

An attempt fails on a connection error, a timeout (``timeout_s``) or a non-2xx answer; it is retried after 0.5 s,
1 s, 2 s, ... (at most 30 s) up to ``retries`` times, then the batch is dropped, counted and logged. Meanwhile the
bus keeps queueing for this sink, and drops beyond its bound (a gap event tells the receiver later): a dead
receiver costs its own queue, never the node. Runs on the subscription's own thread, hence the blocking
standard-library client.
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import ssl
import threading
import time
import urllib.parse
from pathlib import Path

log = logging.getLogger("hactl.events")

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STOP_GRACE_S = 5.0  # after interrupt(): the time left for delivering what is still queued, then it is dropped
SIGNATURE_HEADER = "X-Hactl-Signature"
SOURCE_HEADER = "X-Hactl-Event-Source"
MAX_ANSWER_BYTES = 64 << 10  # a receiver's answer body is read (to reuse the connection), never kept


# What a kept-alive connection the receiver has since closed fails with, before any answer.
_STALE = ("RemoteDisconnected", "BrokenPipeError", "ConnectionResetError")


class WebhookError(ValueError):
    """The sink cannot be built (its secret file is unreadable)."""


def sign(secret: bytes, body: bytes) -> str:
    """The X-Hactl-Signature value a receiver recomputes (and compares with hmac.compare_digest)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def read_secret(path: str) -> bytes:
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as e:
        raise WebhookError(f"cannot read the webhook secret {path}: {e.strerror or e}") from None
    if not secret:
        raise WebhookError(f"the webhook secret {path} is empty")
    return secret


class WebhookSink:
    def __init__(self, url: str, source: str, *, secret_file: str = "", timeout_s: float = 5.0, retries: int = 5,
                 cacert: str | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookError(f"a webhook needs an http:// or https:// url, got {url!r}")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._ssl = ssl.create_default_context(cafile=cacert) if self._https else None
        self.source = source
        self.secret = read_secret(secret_file) if secret_file else None  # at start: a bad file stops the start
        self.timeout_s = timeout_s
        self.retries = retries
        self.dropped_total = 0  # events given up on after the retries
        self.delivered_total = 0
        self._conn: http.client.HTTPConnection | None = None
        self._interrupted = threading.Event()
        self._deadline = float("inf")  # monotonic; set by interrupt()

    def write(self, lines: list[str]) -> int:
        body = ("[" + ",".join(lines) + "]").encode()
        headers = {"Content-Type": "application/json", SOURCE_HEADER: self.source}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        delay = BACKOFF_FIRST_S
        reason, tried = "the node is stopping", 0
        for attempt in range(self.retries + 1):
            if attempt:
                if self._interrupted.wait(min(delay, max(0.0, self._deadline - time.monotonic()))):
                    # Stopping: no more waiting, but what the grace period allows is still tried once.
                    if time.monotonic() >= self._deadline:
                        break
                delay = min(delay * 2, BACKOFF_MAX_S)
            timeout = min(self.timeout_s, self._deadline - time.monotonic())
            if timeout <= 0:
                break
            tried += 1
            reason = self._post(body, headers, timeout)
            if reason is None:
                self.delivered_total += len(lines)
                return 0
        self.dropped_total += len(lines)
        log.warning("events: webhook %s: dropped %d events after %d attempts: %s", self.url, len(lines),
                    tried, reason)
        return len(lines)

    def _post(self, body: bytes, headers: dict[str, str], timeout: float) -> str | None:
        """One attempt: None when the receiver answered 2xx, else why not. A kept-alive connection the receiver
        closed while idle is not a failure: the attempt is made again at once on a new one."""
        reused = self._conn is not None
        reason = self._post_once(body, headers, timeout)
        if reason is not None and reused and self._conn is None and reason.startswith(_STALE):
            reason = self._post_once(body, headers, timeout)
        return reason

    def _post_once(self, body: bytes, headers: dict[str, str], timeout: float) -> str | None:
        try:
            if self._conn is None:
                if self._https:
                    self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                                             context=self._ssl)
                else:
                    self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            else:
                self._conn.timeout = timeout
                if self._conn.sock is not None:
                    self._conn.sock.settimeout(timeout)
            self._conn.request("POST", self._target, body=body, headers=headers)
            resp = self._conn.getresponse()
            resp.read(MAX_ANSWER_BYTES)
            if resp.will_close or not resp.isclosed():
                self._close_conn()  # closed by the receiver, or an answer too long to skip: a fresh connection
            if 200 <= resp.status < 300:
                return None
            return f"HTTP {resp.status} {resp.reason}"
        except (OSError, http.client.HTTPException) as e:
            self._close_conn()
            return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def interrupt(self) -> None:
        """From another thread, at stop: stop waiting between retries; attempts end within STOP_GRACE_S."""
        self._deadline = time.monotonic() + STOP_GRACE_S
        self._interrupted.set()

    def close(self) -> None:
        self._close_conn()
