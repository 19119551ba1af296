"""The client side of the agent socket: one request, one reply; and finding the socket to talk to.

Socket discovery, first match wins:
  1. --socket PATH
  2. --data DIR          -> DIR/agent.sock (or, if that does not exist, the socket of the running controller whose
                            data directory is DIR, for configs that moved agent.socket elsewhere)
  3. $HACTL_AGENT_SOCKET
  4. the one controller running on this host (found in /proc); zero or several is an error that lists them.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from hactl.agent import protocol as P

ENV_SOCKET = "HACTL_AGENT_SOCKET"
CLIENT_GRACE = 3.0  # the server answers within timeout + 1 s; we wait a little longer to hear that answer
CONNECT_TIMEOUT = 5.0

# Client-side error codes (the server's come through unchanged).
E_NO_SOCKET = "no_socket"
E_UNREACHABLE = "unreachable"
E_PROTOCOL = "protocol"


class AgentClientError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class DiscoveryError(Exception):
    """No socket could be chosen (none or several controllers found); the message lists what was found."""


async def call(path: str, cmd: str, args: dict[str, Any] | None = None, timeout: float | None = None,
               *, max_frame: int = P.MAX_FRAME) -> Any:
    """Send one request to the agent at `path` and return its result; AgentClientError on any failure.

    `timeout` (default: the command's own) is passed to the controller, which answers within it; we give up
    CLIENT_GRACE seconds later."""
    spec = P.COMMANDS.get(cmd)
    if timeout is None:
        timeout = spec.default_timeout if spec else 10.0
    frame = P.encode_frame(P.make_request(cmd, args, timeout), max_frame)
    try:
        return await asyncio.wait_for(_exchange(path, frame, max_frame), timeout + CLIENT_GRACE)
    except asyncio.TimeoutError:
        raise AgentClientError(P.E_TIMEOUT, f"no answer from the controller at {path} within "
                                            f"{timeout + CLIENT_GRACE:g} s") from None


async def _exchange(path: str, frame: bytes, max_frame: int) -> Any:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), CONNECT_TIMEOUT)
    except FileNotFoundError:
        raise AgentClientError(E_NO_SOCKET, f"{path}: no such socket (is the controller running?)") from None
    except ConnectionRefusedError:
        raise AgentClientError(E_UNREACHABLE, f"{path}: nothing is listening (a socket left by a controller "
                                              f"that stopped?)") from None
    except PermissionError:
        raise AgentClientError(P.E_PERMISSION, f"{path}: permission denied (the socket is mode 0600: run as the "
                                               f"controller's user or root)") from None
    except asyncio.TimeoutError:
        raise AgentClientError(E_UNREACHABLE, f"{path}: the controller does not accept connections") from None
    except OSError as e:
        raise AgentClientError(E_UNREACHABLE, f"{path}: {e.strerror or e}") from None
    try:
        try:
            writer.write(frame)
            await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at once (busy, another uid): the server's reason is waiting to be read
        obj = await P.read_frame(reader, max_frame)
    except P.ProtocolError as e:
        raise AgentClientError(E_PROTOCOL, f"bad reply from {path}: {e.message}") from None
    except (ConnectionError, OSError) as e:
        raise AgentClientError(E_UNREACHABLE, f"{path}: connection lost: {e}") from None
    finally:
        writer.close()
    if obj is None:
        raise AgentClientError(E_UNREACHABLE, f"{path}: the controller closed the connection without answering "
                                              f"(is it stopping?)")
    try:
        reply = P.parse_reply(obj)
    except P.ProtocolError as e:
        raise AgentClientError(E_PROTOCOL, e.message) from None
    if not reply.ok:
        raise AgentClientError(reply.error, reply.message)
    return reply.result


def call_sync(path: str, cmd: str, args: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
    return asyncio.run(call(path, cmd, args, timeout))


# ---------------------------------------------------------------------------------------------- discovery

@dataclass(frozen=True)
class Found:
    """A controller process seen in /proc."""
    pids: tuple[int, ...]
    id: str | None
    socket: str | None
    data_dir: str | None
    problem: str | None = None  # why its socket could not be worked out

    def describe(self) -> str:
        pids = ",".join(map(str, self.pids))
        if self.socket:
            return f"pid {pids}: {self.id} {self.socket}"
        return f"pid {pids}: {self.problem}"


def find_socket(socket: str | None = None, data: str | None = None, env: Mapping[str, str] = os.environ,
                proc_root: str = "/proc") -> str:
    if socket:
        return os.path.abspath(socket)
    if data:
        default = os.path.abspath(os.path.join(data, "agent.sock"))
        if os.path.exists(default):
            return default
        real = os.path.realpath(data)
        for f in running_controllers(proc_root):
            if f.socket and f.data_dir and os.path.realpath(f.data_dir) == real:
                return f.socket
        return default  # connecting will say "no such socket", naming the path we tried
    if env.get(ENV_SOCKET):
        return os.path.abspath(env[ENV_SOCKET])
    found = running_controllers(proc_root)
    if len(found) == 1 and found[0].socket:
        return found[0].socket
    if not found:
        raise DiscoveryError("no running controller found on this host; use --socket PATH or --data DIR "
                             f"(or set {ENV_SOCKET})")
    if len(found) == 1:
        raise DiscoveryError(f"found a controller but not its agent socket ({found[0].describe()}); "
                             f"use --socket PATH or --data DIR")
    lines = "\n".join("  " + f.describe() for f in found)
    raise DiscoveryError(f"{len(found)} controllers run on this host; choose one with --socket PATH or "
                         f"--data DIR:\n{lines}")


def running_controllers(proc_root: str = "/proc") -> list[Found]:
    """Every `hactl controller run` process visible in `proc_root`, one entry per agent socket."""
    own_ns = _readlink(os.path.join(proc_root, "self", "ns", "mnt"))
    by_key: dict[str, Found] = {}
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return []
    for name in sorted(entries, key=lambda n: (len(n), n)):
        if not name.isdigit():
            continue
        pdir = os.path.join(proc_root, name)
        try:
            raw = Path(pdir, "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile, or not ours to read
        argv = [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")]
        if argv and argv[-1] == "":
            argv.pop()
        opts = parse_controller_cmdline(argv)
        if opts is None:
            continue
        ns = _readlink(os.path.join(pdir, "ns", "mnt"))
        if own_ns and ns and ns != own_ns:
            continue  # in another container: its paths mean nothing in our file system
        f = _describe(int(name), opts, _readlink(os.path.join(pdir, "cwd")))
        # A wrapper (sudo, timeout, a shell exec) shows the same command line as the controller under it.
        key = f.socket or f"pid:{name}"
        prev = by_key.get(key)
        by_key[key] = f if prev is None else Found(prev.pids + f.pids, prev.id, prev.socket, prev.data_dir,
                                                     prev.problem)
    return list(by_key.values())


def parse_controller_cmdline(argv: list[str]) -> dict[str, str | None] | None:
    """{"config", "id", "data"} if argv runs `hactl [...] controller run ...`, else None.

    Recognises the console script (`hactl ...`, `/usr/bin/python3 /venv/bin/hactl ...`) and `python -m hactl.cli`."""
    for i in range(len(argv) - 1):
        if argv[i] == "controller" and argv[i + 1] == "run" and _is_hactl(argv[:i]):
            break
    else:
        return None
    opts: dict[str, str | None] = {"config": None, "id": None, "data": None}
    rest = argv[i + 2:]
    j = 0
    while j < len(rest):
        a = rest[j]
        for key in opts:
            flag = f"--{key}"
            if a == flag and j + 1 < len(rest):
                opts[key] = rest[j + 1]
                j += 1
            elif a.startswith(flag + "="):
                opts[key] = a[len(flag) + 1:]
        j += 1
    return opts


def _is_hactl(prefix: list[str]) -> bool:
    for k, a in enumerate(prefix):
        if os.path.basename(a) == "hactl":
            return True
        if a == "-m" and k + 1 < len(prefix) and prefix[k + 1] in ("hactl", "hactl.cli"):
            return True
        if a in ("-mhactl", "-mhactl.cli"):
            return True
    return False


def _describe(pid: int, opts: dict[str, str | None], cwd: str | None) -> Found:
    from hactl.config import ConfigError, load  # yaml is only needed when discovering
    config = opts["config"]
    if not config:
        return Found((pid,), None, None, None, "no --config on its command line")
    if not os.path.isabs(config):
        if cwd is None:
            return Found((pid,), None, None, None, f"relative --config {config} and its working directory "
                                                   f"is not readable")
        config = os.path.join(cwd, config)
    try:
        # The same overrides as `controller run`: load() resolves a relative --data against the config file's
        # directory exactly as the controller did, so the socket path comes out the same.
        cfg = load(config, overrides={"id": opts["id"], "data_dir": opts["data"]})
    except ConfigError as e:
        return Found((pid,), opts["id"], None, None, f"cannot read its configuration: {e}")
    except Exception as e:  # a config that changed under a running process, or anything else unexpected
        return Found((pid,), opts["id"], None, None, f"cannot read its configuration {config}: {e}")
    return Found((pid,), cfg.id, os.path.abspath(cfg.agent_socket), cfg.data_dir)


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None
