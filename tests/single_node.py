"""One real `hactl controller run` process that forms a cluster on its own, for tests that start from a config file.

single_node() changes only what running alone on a shared test machine needs; ControllerProcess runs the
process and polls it, failing at once (with its log) if it exits early.
"""
from __future__ import annotations

import copy
import http.client
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from hactl.config import parse_hostport
from tests.proc_cluster import poll

T = TypeVar("T")


def hactl_argv(*args: str) -> list[str]:
    """The `hactl ...` command line, run by this interpreter (the venv's) whatever is on PATH."""
    return [sys.executable, "-m", "hactl.cli", *args]


def _with_port(hostport: str, port: int) -> str:
    host, _ = parse_hostport(hostport, "<test>", "-")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def single_node(doc: dict[str, Any], base_port: int) -> dict[str, Any]:
    """A copy of config ``doc`` with the control channel on base_port and the API on base_port+1 (hosts kept), and
    initial_cluster reduced to this node so that it elects itself."""
    doc = copy.deepcopy(doc)
    control, api = doc.setdefault("control", {}), doc.setdefault("api", {})
    control["listen"] = _with_port(control.get("listen", "127.0.0.1:0"), base_port)
    control["advertise"] = _with_port(control.get("advertise", "127.0.0.1:0"), base_port)
    api["listen"] = _with_port(api.get("listen", "127.0.0.1:0"), base_port + 1)
    doc.setdefault("cluster", {})["initial_cluster"] = {doc["id"]: control["advertise"]}
    # No ZeroTier endpoint: with the default planet it would say HELLO to ZeroTier's public roots, and tests
    # send nothing beyond this machine.
    doc["zerotier"] = {"bind": "", "planet": ""}
    return doc


def api_port(doc: dict[str, Any]) -> int:
    return parse_hostport(doc["api"]["listen"], "<test>", "api.listen")[1]


def http_get(port: int, path: str, *, context: ssl.SSLContext | None = None, host: str = "127.0.0.1",
             headers: dict[str, str] | None = None, timeout: float = 5) -> tuple[int, bytes]:
    """(status, body) of GET path; HTTPS when ``context`` is given. Connection and TLS failures raise OSError."""
    conn: http.client.HTTPConnection = (http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
                                        if context is not None else
                                        http.client.HTTPConnection(host, port, timeout=timeout))
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class ControllerProcess:
    """`hactl controller run --config CONFIG`, output in LOG. Use as a context manager: killed on the way out."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        env = dict(os.environ, PYTHONUNBUFFERED="1", GRPC_VERBOSITY="NONE")
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(hactl_argv("controller", "run", "--config", str(config)),
                                         stdout=out, stderr=subprocess.STDOUT, env=env)

    def __enter__(self) -> ControllerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, cond: Callable[[], T], timeout: float, what: str) -> T:
        """Poll ``cond`` until it returns something true; fails at once if the controller exits meanwhile."""
        return poll(cond, timeout, what, context=lambda: self.output()[-4000:],
                    give_up=lambda: None if self.proc.poll() is None else
                    f"the controller exited with code {self.proc.poll()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)
