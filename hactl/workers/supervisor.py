"""The node's side: start its API workers, answer their calls, restart the ones that die, stop them.

Each worker is `python -m hactl.workers.main --link-fd N`, spawned from the event loop's thread (never a fork of
the running asyncio process: a fresh interpreter) with one end of a socketpair as its link. The link is a unix
socket without a path: nobody else can connect to it, so there is no socket file whose mode could be wrong, and
each side sees the other die as an end of stream (the worker also asks the kernel for SIGKILL when the node's
thread that spawned it dies: PR_SET_PDEATHSIG).

Calls from a worker (submit, barrier) run the node's own Controller.submit/read_barrier, and their outcome goes
back as it is (messages.Reply): forwarding to the leader, read-your-writes and the 503/429/507/504 mapping are the
node's, unchanged. What arrives is validated first: a bad frame drops that link (the worker exits and is
restarted), a bad call gets an error reply; neither can disturb the node.

A worker is `running` once it said it listens on the API port (ready) and until its link ends. Readiness
(/readyz) does not depend on workers: the node itself listens on the same port, and the kernel only hands new
connections to listening sockets, so while a worker restarts the node and the other workers take its share.
Only connections the dead worker held are reset, which no readiness answer could have prevented.
"""
from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hactl import __version__
from hactl.agent.protocol import E_BAD_REQUEST, ProtocolError, encode_frame, read_frame
from hactl.api.cluster import Cluster, ClusterUnavailable, Overloaded
from hactl.api.context import CONTEXT, MAX_STREAMS
from hactl.config import Config
from hactl.workers import messages as M
from hactl.workers.netconf import SignJob, Signed

log = logging.getLogger("hactl.workers")

API_SOCKET = "api.sock"  # in the data directory: the node's API for what workers proxy (proxy.py)
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when the node stops
FIRST_BACKOFF, MAX_BACKOFF = 0.5, 30.0
STABLE_AFTER = 30.0  # a worker that ran this long resets its restart backoff
MAX_CALLS_PER_LINK = 10_000  # calls in flight from one worker; beyond: 429 (the node's own queue bounds writes)
MIN_STREAMS = 2
SIGN_TIMEOUT = 1.0  # seconds a batch of ZeroTier configs may take in the workers before this process signs them


class WorkerStartError(Exception):
    """The workers cannot be set up (the API socket path is unusable, the port is taken)."""


def stream_share(workers: int) -> int:
    """Streamed listings at once per process (the node and each worker). They share ctrl.db's 256 LMDB reader
    slots, so the one-process limit (api.context.MAX_STREAMS) is split rather than multiplied."""
    return max(MIN_STREAMS, MAX_STREAMS // (workers + 1))


def check_port_free(host: str, port: int, src: str) -> None:
    """Before the node binds host:port with SO_REUSEPORT, make sure nobody listens there yet: with SO_REUSEPORT a
    second controller (or a stray worker of an old one) on the same port would silently share the connections
    instead of failing to start. A bind without SO_REUSEPORT fails while anyone listens."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise WorkerStartError(f"{src}: api.listen: cannot resolve {host!r}: {e}") from None
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise WorkerStartError(
                        f"api.listen {host}:{port}: another process listens there (another controller, or an API "
                        f"worker left by an earlier run of this one: `ss -ltnp 'sport = :{port}'` names it)") \
                        from None
                raise WorkerStartError(f"api.listen {host}:{port}: {e.strerror}") from None


def listen_unix(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600 before anyone can connect (bind, chmod, then listen). A file
    left there is stale: the data directory is locked by this node (Controller._lock_data_dir)."""
    if len(os.fsencode(path)) > 107:  # sun_path: 108 bytes with the terminating NUL
        raise WorkerStartError(f"{path}: too long for a unix socket path (at most 107 bytes): use a shorter "
                               "data_dir, or workers: 0")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise WorkerStartError(f"{path}: cannot listen: {e.strerror}") from None
    return sock


@dataclass
class _Slot:
    """One worker position (1..N): its current process and link, kept across restarts."""
    index: int
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    ready: bool = False
    restarts: int = 0
    calls: set[asyncio.Task] = field(default_factory=set)
    signs: dict[int, asyncio.Future] = field(default_factory=dict)  # this node's sign requests, by id


class WorkerSupervisor:
    def __init__(self, cluster: Cluster, cfg: Config, host: str, port: int) -> None:
        self.cluster = cluster
        self.configured = cfg.api_workers
        self._max_frame = M.max_frame(cfg.api.max_body_bytes)
        self._socket_path = Path(cfg.data_dir) / API_SOCKET
        self._settings = M.WorkerSettings(
            index=0, node_id=cfg.id, node_pid=os.getpid(), ctrl_db=str(Path(cfg.data_dir) / "ctrl.db"),
            ctrl_db_max_bytes=cfg.storage.ctrl_db_max_bytes, host=host, port=port, tls_cert=cfg.api.tls_cert,
            tls_key=cfg.api.tls_key, max_body_bytes=cfg.api.max_body_bytes, version=__version__,
            node_api_socket=str(self._socket_path), apply_timeout_s=cfg.raft.apply_timeout_s,
            stream_limit=stream_share(cfg.api_workers), log_level=cfg.log.level, log_format=cfg.log.format)
        self._slots = [_Slot(i) for i in range(1, cfg.api_workers + 1)]
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._unix: socket.socket | None = None
        self._sign_ids = itertools.count(1)
        self._turn = 0  # which worker takes the next batch of configs to sign first

    # ------------------------------------------------------------------ what /health and /status say

    def counts(self) -> dict[str, int]:
        return {"configured": self.configured, "running": sum(1 for s in self._slots if s.ready)}

    def details(self) -> dict[str, Any]:
        return {**self.counts(), "restarts": sum(s.restarts for s in self._slots),
                "pids": {str(s.index): s.proc.pid for s in self._slots if s.ready and s.proc is not None}}

    # ------------------------------------------------------------------ lifecycle

    async def start(self, api: Any) -> None:
        """``api``: the node's running hactl.api.server.ApiServer (bound with SO_REUSEPORT). It is also served on
        <data>/api.sock for the requests workers proxy, and its streamed listings get their share of slots."""
        api.app[CONTEXT].streams.limit = stream_share(self.configured)
        self._unix = listen_unix(self._socket_path)
        await api.add_socket(self._unix)
        self._tasks = [asyncio.create_task(self._keep(s), name=f"api-worker-{s.index}") for s in self._slots]
        log.info("API workers: starting %d next to this process on %s:%d (SO_REUSEPORT)", self.configured,
                 self._settings.host, self._settings.port)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every worker (they finish what they serve; their calls are still answered meanwhile), SIGKILL
        those still there after ``grace`` seconds."""
        self._stopping = True
        procs = [s.proc for s in self._slots if s.proc is not None and s.proc.returncode is None]
        for p in procs:
            _signal(p, signal.SIGTERM)
        if procs:
            done, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=grace)
            for p in procs:
                if p.returncode is None:
                    log.warning("API worker pid %d did not stop within %.0f s of SIGTERM; killing it", p.pid, grace)
                    _signal(p, signal.SIGKILL)
            if pending:
                await asyncio.wait(pending, timeout=grace)
        for t in self._tasks:
            t.cancel()
        calls = [c for s in self._slots for c in s.calls]
        for c in calls:
            c.cancel()
        await asyncio.gather(*self._tasks, *calls, return_exceptions=True)
        if self._unix is not None:
            try:
                self._socket_path.unlink()
            except FileNotFoundError:
                pass

    def node_state_changed(self) -> None:
        """The node's model became unservable (a restart is pending): tell every worker, so that it refuses
        reads as the node does (ClusterUnavailable) instead of serving a ctrl.db about to be replaced."""
        frame = encode_frame(self._state().to_wire(), self._max_frame)
        for s in self._slots:
            if s.writer is not None and not s.writer.is_closing():
                s.writer.write(frame)

    def _state(self) -> M.State:
        try:
            self.cluster.machine()
        except ClusterUnavailable as e:
            return M.State(str(e), e.retry_after)
        return M.State(None)

    # ------------------------------------------------------------------ ZeroTier configs signed by the workers

    async def sign(self, jobs: list[SignJob]) -> list[Signed | None] | None:
        """Have the running workers read and sign these configs (hactl.workers.netconf), split evenly among them;
        one result per job, in order. None when no worker can (none running, one went away or took longer than
        SIGN_TIMEOUT): the caller signs them itself. A late answer finds nobody waiting and is dropped."""
        slots = [s for s in self._slots if s.ready and s.writer is not None and not s.writer.is_closing()]
        if not slots or not jobs:
            return None
        self._turn += 1
        k = min(len(slots), len(jobs))
        slots = [slots[(self._turn + i) % len(slots)] for i in range(k)]
        size = -(-len(jobs) // k)
        parts = [(slot, jobs[i * size:(i + 1) * size]) for i, slot in enumerate(slots)]
        waits = []
        loop = asyncio.get_running_loop()
        for slot, part in parts:
            sid = next(self._sign_ids)
            fut = slot.signs[sid] = loop.create_future()
            waits.append((slot, sid, fut))
            assert slot.writer is not None
            slot.writer.write(encode_frame(M.Sign(sid, part).to_wire(), self._max_frame))
        try:
            answers = await asyncio.wait_for(asyncio.gather(*(f for _, _, f in waits)), SIGN_TIMEOUT)
        except (asyncio.TimeoutError, ConnectionError):
            log.warning("API workers did not sign %d ZeroTier configs within %.1f s; this process signs them",
                        len(jobs), SIGN_TIMEOUT)
            return None
        finally:
            for slot, sid, _ in waits:
                slot.signs.pop(sid, None)
        out: list[Signed | None] = []
        for (_, part), answer in zip(parts, answers):
            if len(answer) != len(part):
                log.error("an API worker answered %d signed configs for %d jobs; this process signs them",
                          len(answer), len(part))
                return None
            out.extend(answer)
        return out

    # ------------------------------------------------------------------ one worker position

    async def _keep(self, slot: _Slot) -> None:
        backoff = FIRST_BACKOFF
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._run_once(slot)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must cost one worker's life, never the node or the supervision
                log.exception("API worker %d: supervision failed; restarting it", slot.index)
            if self._stopping:
                return
            slot.restarts += 1
            if time.monotonic() - started >= STABLE_AFTER:
                backoff = FIRST_BACKOFF
            code = slot.proc.returncode if slot.proc is not None else None
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            log.warning("API worker %d (pid %s) %s after %.1f s; restarting it in %.1f s (the node and the other "
                        "workers serve its share meanwhile; if this repeats, see its log lines above, logger "
                        "hactl.workers)", slot.index, slot.proc.pid if slot.proc else "-", how,
                        time.monotonic() - started, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _run_once(self, slot: _Slot) -> None:
        """Spawn the worker, serve its link until it ends, and reap the process."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            slot.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hactl.workers.main", "--link-fd", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child has its copy: its death is then our end of stream
        reader, writer = await asyncio.open_connection(sock=ours)
        slot.writer = writer
        try:
            writer.write(encode_frame(replace(self._settings, index=slot.index).to_wire(), self._max_frame))
            writer.write(encode_frame(self._state().to_wire(), self._max_frame))
            await self._serve_link(slot, reader, writer)
        finally:
            slot.ready = False
            slot.writer = None
            writer.close()
            for fut in slot.signs.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("the API worker went away"))
            if slot.proc.returncode is None:
                _signal(slot.proc, signal.SIGKILL)  # a worker whose link broke cannot be trusted to serve on
            await slot.proc.wait()

    async def _serve_link(self, slot: _Slot, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                obj = await read_frame(reader, self._max_frame)
            except ProtocolError as e:
                log.error("API worker %d sent a bad frame (%s); dropping its link, it will be restarted",
                          slot.index, e.message)
                return
            except (ConnectionError, OSError):
                return
            if obj is None:
                return  # the worker exited
            try:
                msg = M.parse_to_node(obj)
            except ProtocolError as e:
                cid = M.call_id(obj)
                log.error("API worker %d sent a bad message: %s", slot.index, e.message)
                if cid is None:
                    return
                self._reply(writer, M.Reply(cid, error=E_BAD_REQUEST, message=e.message))
                continue
            if isinstance(msg, M.SignedConfigs):
                fut = slot.signs.get(msg.id)
                if fut is not None and not fut.done():
                    fut.set_result(msg.configs)
            elif isinstance(msg, M.Ready):
                slot.ready = True
                log.info("API worker %d (pid %d) is serving", slot.index, msg.pid)
            elif len(slot.calls) >= MAX_CALLS_PER_LINK:
                self._reply(writer, M.Reply.failure(msg.id, Overloaded(
                    f"{len(slot.calls)} calls from API worker {slot.index} already waiting on this node")))
            else:
                task = asyncio.create_task(self._call(writer, msg))
                slot.calls.add(task)
                task.add_done_callback(slot.calls.discard)

    async def _call(self, writer: asyncio.StreamWriter, msg: M.Submit | M.Barrier) -> None:
        try:
            if isinstance(msg, M.Submit):
                reply = M.Reply(msg.id, result=await self.cluster.submit(msg.command, msg.request_id))
            else:
                await self.cluster.read_barrier()
                reply = M.Reply(msg.id)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            reply = M.Reply.failure(msg.id, e)
            if reply.error == M.INTERNAL:  # what the node's API would log as a bug (a 500), logged here
                log.exception("API worker call %s failed", type(msg).__name__.lower())
        self._reply(writer, reply)

    def _reply(self, writer: asyncio.StreamWriter, reply: M.Reply) -> None:
        if writer.is_closing():
            return  # the worker is gone: nobody waits for it
        try:
            frame = encode_frame(reply.to_wire(), self._max_frame)
        except ProtocolError as e:  # (a Result too big to send: the worker's client gets a 500, logged here)
            log.error("API worker reply %d cannot be sent: %s", reply.id, e.message)
            frame = encode_frame(M.Reply(reply.id, error=M.INTERNAL, message=e.message).to_wire(), self._max_frame)
        writer.write(frame)


def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass
