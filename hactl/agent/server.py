"""The agent server: a unix socket in the data directory through which a local operator drives this controller.

Access control is the file system plus a credential check: the socket is mode 0600 (and normally sits in the 0700
data directory), and every connection's peer uid (SO_PEERCRED) must be ours or root's. Nothing a client sends can
crash the controller: bad frames get an error reply and the connection is closed; a handler's exception becomes an
error reply; every request runs under a deadline.
"""
from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import socket
import stat
import struct
import time
from dataclasses import dataclass
from typing import Any

from hactl.agent import protocol as P
from hactl.agent.handle import CALLER, AgentError, AgentHandle

log = logging.getLogger("hactl.agent")

SERVER_GRACE = 1.0  # beyond the request's timeout, for handles that do not honour theirs
IDLE_TIMEOUT = 30.0  # a connection that sends no request for this long is closed
BODY_TIMEOUT = 10.0  # a frame whose body trickles in slower than this is dropped
WRITE_TIMEOUT = 10.0  # a client that does not read its reply is dropped
MAX_CONNECTIONS = 32
PROBE_TIMEOUT = 1.0  # how long start() waits for an existing socket to answer


class AgentServerError(Exception):
    """The agent socket cannot be served (path in use by a live controller, missing directory, ...)."""


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def peer_cred(sock: socket.socket | None) -> PeerCred | None:
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None  # not Linux: the 0600 mode is the only guard
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return PeerCred(*struct.unpack("3i", raw))


class _Conn:
    def __init__(self, task: asyncio.Task):
        self.task = task
        self.busy = False  # running a request (stop() lets it finish) rather than waiting for one


class AgentServer:
    def __init__(self, handle: AgentHandle, path: str, *, max_frame: int = P.MAX_FRAME,
                 idle_timeout: float = IDLE_TIMEOUT, max_connections: int = MAX_CONNECTIONS):
        self.handle = handle
        self.path = os.path.abspath(path)
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._conns: set[_Conn] = set()
        self._stopping = False
        self._allowed_uids = {0, os.geteuid()}

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise AgentServerError(f"{self.path}: the directory {parent} does not exist")
        if len(os.fsencode(self.path)) > 107:  # sun_path is 108 bytes with the terminating NUL
            raise AgentServerError(f"{self.path}: too long for a unix socket path (at most 107 bytes); "
                                   f"set agent.socket to a shorter path")
        await self._clear_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # No umask dance: umask is process-wide and the controller has other threads creating files. The
            # mode is safe anyway because nobody can connect to a unix socket before listen(): bind, chmod 0600,
            # then listen. bind() itself fails with EADDRINUSE if another process took the path meanwhile.
            try:
                sock.bind(self.path)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise AgentServerError(f"another process is serving {self.path}") from None
                raise AgentServerError(f"{self.path}: cannot bind: {e.strerror}") from None
            os.chmod(self.path, 0o600)
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            sock.listen(16)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._on_connect, sock=sock, limit=self.max_frame + 64)
        except BaseException:
            sock.close()
            self._remove_socket_file()
            raise
        log.info("agent: serving %s (mode 0600)", self.path)

    async def _clear_stale(self) -> None:
        """Remove a socket file left by a controller that died, but never one a live process is serving."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise AgentServerError(f"{self.path} exists and is not a socket; refusing to replace it")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path), PROBE_TIMEOUT)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("agent: removing the stale socket %s (nothing listens on it)", self.path)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return
        except asyncio.TimeoutError:
            raise AgentServerError(f"another process is serving {self.path} (it accepts no connection)") from None
        except PermissionError:
            raise AgentServerError(f"{self.path} belongs to another user and cannot be checked; "
                                   f"refusing to replace it") from None
        except OSError as e:
            raise AgentServerError(f"{self.path}: cannot check the existing socket: {e.strerror}") from None
        who = await self._identify(reader, writer)
        raise AgentServerError(f"another controller{who} is serving {self.path}")

    async def _identify(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Ask the live socket who it is, for a better error message; never fails."""
        try:
            writer.write(P.encode_frame(P.make_request("status", timeout=PROBE_TIMEOUT)))
            reply = P.parse_reply(await asyncio.wait_for(P.read_frame(reader), PROBE_TIMEOUT + SERVER_GRACE) or {})
            if reply.ok and isinstance(reply.result, dict) and reply.result.get("id"):
                return f" ({reply.result['id']})"
        except Exception:
            pass
        finally:
            writer.close()
        return ""

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let requests already running finish (up to `grace` seconds: a restore's reply must
        reach the operator before the controller exits), then drop everything and remove the socket file."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            if not c.busy:
                c.task.cancel()
        busy = [c.task for c in self._conns if c.busy]
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for c in list(self._conns):
            c.task.cancel()
        if self._conns:
            await asyncio.gather(*(c.task for c in self._conns), return_exceptions=True)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass
            self._server = None
        self._remove_socket_file()
        log.info("agent: stopped serving %s", self.path)

    def _remove_socket_file(self) -> None:
        # Only our own socket: if the file was replaced (an operator started another controller on this path after
        # removing ours by hand), unlinking it would cut that controller off.
        try:
            st = os.lstat(self.path)
            if self._inode is not None and (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._inode = None

    # ------------------------------------------------------------------------------------------ connections

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Conn(task)
        self._conns.add(conn)
        try:
            await self._serve(conn, reader, writer)
        except asyncio.CancelledError:
            pass  # stop(): the controller is going away
        except Exception:  # a bug here must cost one connection, never the controller
            log.exception("agent: connection failed")
        finally:
            self._conns.discard(conn)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (Exception, asyncio.CancelledError):
                pass

    async def _serve(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cred = peer_cred(writer.get_extra_info("socket"))
        if cred is not None and cred.uid not in self._allowed_uids:
            log.warning("agent: refused a connection from uid %d (pid %d)", cred.uid, cred.pid)
            await self._refuse(reader, writer, P.error_reply(P.E_PERMISSION,
                                                             f"uid {cred.uid} may not use this socket"))
            return
        if len(self._conns) > self.max_connections:
            await self._refuse(reader, writer, P.error_reply(P.E_BUSY,
                                                             f"more than {self.max_connections} agent connections"))
            return
        who = f"pid {cred.pid} uid {cred.uid}" if cred else "a local client"
        CALLER.set({"kind": "agent", "node": self.handle.node_id,
                    **({"uid": str(cred.uid), "pid": str(cred.pid)} if cred else {})})
        while not self._stopping:
            try:
                obj = await P.read_frame(reader, self.max_frame, header_timeout=self.idle_timeout,
                                         body_timeout=BODY_TIMEOUT)
            except asyncio.TimeoutError:
                return  # idle
            except P.ProtocolError as e:
                # The stream is out of step after a bad frame: answer if we can, then hang up.
                log.warning("agent: %s from %s; closing the connection", e.message, who)
                await self._send(writer, P.error_reply(e.code, e.message))
                return
            except (ConnectionError, OSError):
                return
            if obj is None:
                return  # the client hung up
            conn.busy = True
            reply = await self._dispatch(obj, who)
            ok = await self._send(writer, reply)
            conn.busy = False
            if not ok:
                return

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      reply: dict[str, Any]) -> None:
        """Send the reason, then swallow what the client sent: closing a unix socket with unread data makes the
        peer's read fail with ECONNRESET, and the client would see a broken connection instead of the reason."""
        if not await self._send(writer, reply):
            return
        try:
            if writer.can_write_eof():
                writer.write_eof()  # the client sees the reason and EOF at once, closes, and our drain ends
        except (ConnectionError, OSError):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        budget = self.max_frame + 4
        try:
            while budget > 0 and (left := deadline - loop.time()) > 0:
                chunk = await asyncio.wait_for(reader.read(min(budget, 1 << 16)), left)
                if not chunk:
                    return
                budget -= len(chunk)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass

    async def _send(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> bool:
        try:
            frame = P.encode_frame(reply, self.max_frame)
        except P.ProtocolError as e:
            log.error("agent: cannot send a reply: %s", e.message)
            frame = P.encode_frame(P.error_reply(P.E_INTERNAL, f"the controller's reply could not be sent: "
                                                               f"{e.message}"))
        try:
            writer.write(frame)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
            return True
        except (ConnectionError, OSError, asyncio.TimeoutError):
            return False

    # ------------------------------------------------------------------------------------------ requests

    async def _dispatch(self, obj: dict[str, Any], who: str) -> dict[str, Any]:
        try:
            req = P.parse_request(obj)
        except P.ProtocolError as e:
            log.info("agent: refused a request from %s: %s", who, e.message)
            return P.error_reply(e.code, e.message)
        # Operator commands change the cluster: log each one, with who sent it, as an audit trail.
        log.info("agent: %s %s from %s", req.cmd, req.args or "", who)
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(self._call(req), req.timeout + SERVER_GRACE)
        except asyncio.TimeoutError:
            log.warning("agent: %s timed out after %.1f s", req.cmd, time.monotonic() - started)
            return P.error_reply(P.E_TIMEOUT, f"{req.cmd} did not finish within {req.timeout:g} s; its outcome "
                                              f"is unknown (check with `hactl agent cluster list`)")
        except AgentError as e:
            log.info("agent: %s failed: %s: %s", req.cmd, e.code, e.message)
            return P.error_reply(str(e.code), str(e.message))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("agent: %s failed with an unexpected error", req.cmd)
            return P.error_reply(P.E_INTERNAL, f"{req.cmd}: {type(e).__name__}: {e} (see the controller's log)")
        log.info("agent: %s done in %.2f s", req.cmd, time.monotonic() - started)
        return P.ok_reply(result)

    async def _call(self, req: P.Request) -> Any:
        h, a, t = self.handle, req.args, req.timeout
        if req.cmd == "status":
            out: Any = h.status()
        elif req.cmd == "cluster.list":
            out = h.cluster_list()
        elif req.cmd == "cluster.add":
            out = h.cluster_add(a["address"], a["learner"], t)
        elif req.cmd == "cluster.remove":
            out = h.cluster_remove(a["id"], t)
        elif req.cmd == "cluster.revoke":
            out = h.cluster_revoke(a["id"], a["serial"], t)
        elif req.cmd == "cluster.transfer":
            out = h.transfer_leadership(a["id"], t)
        elif req.cmd == "snapshot_db":
            out = h.snapshot_db(a["path"])
        elif req.cmd == "restore":
            out = h.restore_from_db(a["path"], t)
        else:  # parse_request only lets known commands through; a new one must be wired here
            raise AgentError(P.E_UNKNOWN_COMMAND, f"{req.cmd} is not implemented by this controller")
        if inspect.isawaitable(out):
            out = await out
        return out

