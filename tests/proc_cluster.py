"""Real controller processes on loopback for tests and benchmarks: start, kill -9, SIGSTOP, restart, HTTP calls.

The harness is its own supervisor (so tests decide when a killed node comes back), except that a controller
exiting with code 3 (a restart it asked for, e.g. to load an installed snapshot) is restarted at once, like
`hactl dev up` does.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml

from hactl.dev.cluster import init_cluster


REFUSED = "refused"  # send_once: the connection was refused, the request was never sent
UNKNOWN = "unknown"  # send_once: no answer (reset, timeout): the request may have run


def poll(cond: Callable[[], Any], timeout: float, what: str, *, context: Callable[[], str] = lambda: "",
         give_up: Callable[[], str | None] = lambda: None, interval: float = 0.1) -> Any:
    """Poll ``cond`` (an OSError counts as "not yet") until it returns something true, and return that. Fails
    after ``timeout`` seconds (a give-up bound, not a speed requirement), or at once when ``give_up()`` says why
    waiting is pointless; the failure carries ``context()`` (e.g. the nodes' logs)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except OSError:
            value = None
        if value:
            return value
        why = give_up()
        if why is not None:
            raise AssertionError(f"{why} while waiting for {what}\n{context()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{context()}")
        time.sleep(interval)


def free_port_block(n: int) -> int:
    """A base port such that base..base+n-1 are all free on 127.0.0.1 right now, below the ephemeral range
    (32768+) so outgoing connections cannot take them between this check and the bind."""
    for _ in range(200):
        base = 20000 + (uuid.uuid4().int % 12000)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block found")


class ProcCluster:
    """``config``: sections merged into every node's YAML; ``node_config``: {node id: sections} merged on top for
    one node (e.g. its own ZeroTier bind address). ``prefix``: a command prefix for the controller processes (e.g.
    ``ip netns exec NS``; it must exec the command, so that the process's pid and signals are the controller's).
    ``call``: runs each HTTP exchange, e.g. on a thread inside that namespace (default: in the calling thread).
    ``node_prefix`` and ``api_host``: per node, a prefix of its own (a namespace per node: separate hosts) and the
    address its API is reached at (default 127.0.0.1)."""

    def __init__(self, root: Path, nodes: int = 3, config: dict[str, Any] | None = None, *,
                 node_config: dict[str, dict[str, Any]] | None = None, prefix: list[str] | None = None,
                 call: Callable[[Callable[[], Any]], Any] | None = None,
                 node_prefix: dict[str, list[str]] | None = None, api_host: dict[str, str] | None = None):
        self.root = root
        self.prefix = list(prefix or [])
        self.node_prefix = dict(node_prefix or {})
        self.api_host = dict(api_host or {})
        self._call = call or (lambda fn: fn())
        self.specs = {s.id: s for s in init_cluster(root, nodes, base_port=free_port_block(2 * nodes))}
        self.ids = sorted(self.specs)
        for s in self.specs.values():  # test-specific settings on top of what dev init writes
            doc = yaml.safe_load(s.config.read_text())
            # No API worker processes unless a test asks (tests/test_workers.py): the suite's many clusters would
            # pay for starting them (2 cores: the suite's time), and tests of other things reason about one process.
            doc.setdefault("workers", 0)
            for sections in (config or {}, (node_config or {}).get(s.id, {})):
                for section, values in sections.items():
                    if isinstance(values, dict):
                        doc.setdefault(section, {}).update(values)
                    else:  # a top-level list (events) replaces the section
                        doc[section] = values
            s.config.write_text(yaml.safe_dump(doc))
        self.token = (root / "api-token").read_text().strip()
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {i: 0 for i in self.ids}
        self._watch_stop = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    # ------------------------------------------------------------------ processes

    def start(self, nid: str) -> None:
        log = open(self.root / f"{nid}.log", "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", GRPC_VERBOSITY="NONE")
        with self._lock:
            self.procs[nid] = subprocess.Popen(
                [*self.node_prefix.get(nid, self.prefix), sys.executable, "-m", "hactl.cli", "controller", "run",
                 "--config",
                 str(self.specs[nid].config)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def start_all(self) -> None:
        for nid in self.ids:
            self.start(nid)

    def _watch(self) -> None:
        while not self._watch_stop.wait(0.1):
            with self._lock:
                exited = [(k, p) for k, p in self.procs.items() if p.poll() == 3]
            for nid, _ in exited:
                self.restarts[nid] += 1
                self.start(nid)

    def signal(self, nid: str, sig: int) -> None:
        self.procs[nid].send_signal(sig)

    def kill(self, nid: str) -> None:
        with self._lock:
            p = self.procs.pop(nid)
        p.kill()
        p.wait()

    def stop(self, nid: str, timeout: float = 20) -> int:
        with self._lock:
            p = self.procs.pop(nid)
        p.send_signal(signal.SIGTERM)
        return p.wait(timeout)

    def close(self) -> None:
        self._watch_stop.set()
        self._watcher.join()
        for nid, p in list(self.procs.items()):
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.wait()
        self.procs.clear()

    def log(self, nid: str) -> str:
        return (self.root / f"{nid}.log").read_text(errors="replace")

    # ------------------------------------------------------------------ HTTP

    def port(self, nid: str) -> int:
        return int(self.specs[nid].api_url.rsplit(":", 1)[1])

    def request(self, nid: str, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
                timeout: float = 15, auth: bool = True) -> tuple[int, Any, dict[str, str]]:
        return self._call(lambda: self._request(nid, method, path, body, headers, timeout, auth))

    def _request(self, nid: str, method: str, path: str, body: Any, headers: dict[str, str] | None,
                 timeout: float, auth: bool) -> tuple[int, Any, dict[str, str]]:
        conn = http.client.HTTPConnection(self.api_host.get(nid, "127.0.0.1"), self.port(nid), timeout=timeout)
        hdrs = {"X-ZT1-Auth": self.token} if auth else {}
        hdrs.update(headers or {})
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw
            return resp.status, parsed, {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    def send_once(self, nid: str, method: str, path: str, body: Any = None, *, timeout: float = 20) -> int | str:
        """One request, never retried, as a client without Idempotency-Key sees it: the HTTP status, or
        REFUSED when the connection was refused (nothing was sent, so nothing can have been applied), or UNKNOWN
        when the connection broke or timed out after the request may have reached the node."""
        try:
            return self.request(nid, method, path, body, timeout=timeout)[0]
        except ConnectionRefusedError:
            return REFUSED
        except (OSError, http.client.HTTPException):  # reset, timeout, garbled answer: it may have run
            return UNKNOWN

    def status(self, nid: str) -> dict[str, Any] | None:
        try:
            code, body, _ = self.request(nid, "GET", "/status", timeout=2)
        except OSError:
            return None
        return body if code == 200 else None

    def wait(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        return poll(cond, timeout, what, context=lambda: "\n".join(f"--- {n} ---\n{self.log(n)[-3000:]}"
                                                                   for n in self.ids))

    def leader(self, among: list[str] | None = None, timeout: float = 20) -> str:
        def find() -> str | None:
            seen = set()
            for nid in among or list(self.procs):
                st = self.status(nid)
                if st and st["cluster"]["role"] == "leader":
                    seen.add(nid)
            return seen.pop() if len(seen) == 1 else None
        return self.wait(find, timeout, "a single leader")

    def role(self, nid: str) -> str | None:
        st = self.status(nid)
        return st["cluster"]["role"] if st else None

    def wait_new_leader(self, old: str, timeout: float = 20) -> str:
        """Until exactly one of the running nodes other than ``old`` says it is the leader; its id. ``old`` is
        not asked: it may be frozen (its /status would hang) or still believe it leads."""
        return self.leader(among=[n for n in self.ids if n != old and n in self.procs], timeout=timeout)

    def wait_applied(self, index: int, nids: list[str] | None = None, timeout: float = 30) -> None:
        """Until every given node (default: every running one) has applied ``index``."""
        def done() -> bool:
            for nid in nids or list(self.procs):
                st = self.status(nid)
                if not st or st["cluster"]["applied"] < index:
                    return False
            return True
        self.wait(done, timeout, f"every node to apply index {index}")

    def wait_caught_up(self, nids: list[str] | None = None, timeout: float = 30) -> int:
        """Until every given node (default: every running one) has applied what the leader had committed when
        this was called; that index."""
        leader = self.leader(among=nids, timeout=timeout)
        target = self.wait(lambda: (self.status(leader) or {}).get("cluster", {}).get("commit"), timeout,
                           f"the commit index of {leader}")
        self.wait_applied(target, nids, timeout)
        return target

    def wait_ready(self, nids: list[str] | None = None, timeout: float = 30) -> str:
        """Until every given node answers /status with the cluster's controller address and a leader."""
        def ready() -> bool:
            for nid in nids or self.ids:
                st = self.status(nid)
                if not st or not st.get("address") or not st["cluster"]["leader"]:
                    return False
            return True
        self.wait(ready, timeout, "cluster ready")
        return self.status((nids or self.ids)[0])["address"]

    def write(self, nid: str, method: str, path: str, body: Any, *, key: str | None = None,
              timeout: float = 30) -> tuple[int, Any]:
        """A client that retries 503/504 and connection errors with one Idempotency-Key until success."""
        key = key or uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        while True:
            try:
                code, body_, _ = self.request(nid, method, path, body, headers={"Idempotency-Key": key})
                if code not in (503, 504):
                    return code, body_
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {path} on {nid} kept failing for {timeout}s")
            time.sleep(0.1)
