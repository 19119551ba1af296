"""One controller process: raft journal + ctrl.db + snapshot store + control channel + API, and its lifecycle.

Exit codes (a supervisor restarts the process on any exit): 0 clean stop, 3 restart on purpose (a snapshot
install or a restore needs a fresh process), 2 bad configuration or data directory, anything else a crash.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import hmac
import logging
import os
import secrets
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from hactl import __version__
from hactl.aio import cancel_and_wait
from hactl.api.cluster import ClusterUnavailable, OutcomeUnknown, Overloaded
from hactl.config import Config, parse_hostport
from hactl.fsm.commands import build_cluster_init, new_controller_address, new_signing_key
from hactl.fsm.machine import StateMachine
from hactl.fsm.result import Result
from hactl.raft import core as raft_core
from hactl.raft.node import NodeOptions, NoLeader, ProposalDropped, RaftError, RaftNode, ResultUnknown
from hactl.raft.storage import RaftStorage
from hactl.raft.types import ConfChange, ConfChangeType, ConfState, Role, SnapshotMeta
from hactl.replicated import ReplicatedModel, conf_from_json
from hactl.snapshots.rebuild import rebuild_ctrl_db
from hactl.snapshots.store import SnapshotStore
from hactl.transport.errors import ConnectionLost, PeerUnavailable, RemoteError
from hactl.transport.mesh import Mesh, MeshOptions
from hactl.transport.pki import load_identity
from hactl.transport.raft_transport import RaftTransport

log = logging.getLogger("hactl.controller")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_RESTART = 3

INIT_REQUEST_ID = "cluster-init"  # one fixed id: however many leaders try, the model is initialised once
FORWARD_METHOD = "raft.propose"


class StartupError(Exception):
    """The controller cannot start with this configuration or data directory (exit code 2)."""


def token_hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def read_or_create_token(path: str) -> str:
    p = Path(path)
    try:
        token = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, p)  # never replace a token another node wrote meanwhile
        except FileExistsError:
            token = p.read_text(encoding="utf-8").strip()
        finally:
            tmp.unlink(missing_ok=True)
        log.info("created the API token file %s", p)
    if not token:
        raise StartupError(f"{path}: the API token file is empty")
    return token


class Controller:
    """Implements hactl.api.cluster.Cluster for the API, and runs everything else."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.node_id = cfg.id
        self.data = Path(cfg.data_dir)
        self.exit_code = EXIT_OK
        self._stopping = asyncio.Event()
        self._lock_fd: int | None = None
        self._tasks: list[asyncio.Task] = []
        self._inflight = 0
        self._addresses: dict[str, str] = dict(cfg.cluster.initial_cluster)
        self._leader_commit_seen = 0
        self._last_snapshot_time = time.monotonic()
        self._api: Any = None
        self._agent: Any = None
        self.ops: Any = None
        self.storage: RaftStorage | None = None
        self.model: ReplicatedModel | None = None
        self.node: RaftNode | None = None
        self.mesh: Mesh | None = None

    # ------------------------------------------------------------------ start and stop

    async def start(self) -> None:
        cfg = self.cfg
        self._loop = asyncio.get_running_loop()
        self.data.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data, 0o700)
        self._lock_data_dir()
        self._check_node_id()
        try:
            identity = load_identity(cfg.pki.cert, cfg.pki.key, cfg.pki.ca)
        except Exception as e:
            raise StartupError(f"pki: cannot load this node's identity: {e}") from e
        self.storage = RaftStorage(self.data / "raft.db")
        st = self.storage.load()
        store = SnapshotStore(self.data / "snapshots", retain=cfg.snapshots.retain)
        commit = st.hard_state.commit
        storage = self.storage

        def committed_after(index: int):
            lo = max(index + 1, storage.first_index())
            for e in storage.entries(lo, commit + 1) if commit >= lo else []:
                yield e.index, e.term, e.data if e.type == 0 else b""

        machine = rebuild_ctrl_db(self.data, store, committed_after)
        restored = self._restored_meta(store, machine)
        self.model = ReplicatedModel(machine, store, addresses=lambda: dict(self._addresses),
                                     on_restart_needed=self._restart_needed)
        mesh_id = hashlib.sha256(Path(cfg.pki.ca).read_bytes()).hexdigest()[:16]  # the CA defines the cluster
        peers = {k: v for k, v in self._addresses.items() if k != self.node_id}
        self.mesh = Mesh(self.node_id, mesh_id, cfg.cluster.trust_domain, identity, cfg.control.listen, peers,
                         options=MeshOptions(max_frame=cfg.control.max_frame_bytes))
        transport = RaftTransport(self.mesh, snapshot_sink=store.receiver,
                                  on_snapshot_status=lambda to, ok: self.node and self.node.report_snapshot(to, ok),
                                  on_unreachable=lambda to: self.node and self.node.report_unreachable(to))
        r = cfg.raft
        bootstrap = ConfState(tuple(cfg.cluster.initial_cluster)) if cfg.cluster.initial_cluster else None
        self.node = RaftNode(
            raft_core.Config(self.node_id, election_tick=r.election_ticks, heartbeat_tick=r.heartbeat_ticks,
                             max_msg_entries=r.max_msg_entries, max_inflight=r.max_inflight),
            self.storage, self.model, transport,
            options=NodeOptions(tick_interval=r.tick_ms / 1000, snapshot_every=cfg.snapshots.every_entries,
                                snapshot_trailing=cfg.snapshots.trailing_entries),
            bootstrap=bootstrap, restored=restored,
            bootstrap_contexts={k: v.encode() for k, v in cfg.cluster.initial_cluster.items()})
        self.model.conf_at = self.node.conf_at
        self.node.on_role_change = self._on_role_change
        self.node.on_conf_change = self._on_conf_change
        transport.set_receiver(self.node.receive)
        self.mesh.register(FORWARD_METHOD, self._serve_forwarded_propose)
        from hactl.operations import Operations
        self.ops = Operations(self)
        await self.mesh.start()
        await self.node.start()
        from hactl.agent.server import AgentServer, AgentServerError
        self._agent = AgentServer(self.ops, cfg.agent_socket)
        try:
            await self._agent.start()
        except AgentServerError as e:
            raise StartupError(f"agent socket: {e}") from None
        from hactl.api.server import serve  # the API sits above the controller's parts; imported late
        host, port = parse_hostport(cfg.api.listen, cfg.source, "api.listen")
        self._api = await serve(self, host, port, max_body_bytes=cfg.api.max_body_bytes, version=__version__)
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="controller-housekeeping"))
        log.info("controller %s started: control %s, api %s, data %s", self.node_id, cfg.control.listen,
                 cfg.api.listen, self.data)

    def _restored_meta(self, store: SnapshotStore, machine: StateMachine) -> SnapshotMeta | None:
        index, term = machine.applied()
        if index == 0:
            return None
        try:
            info = store.load(f"{index}-{term}")
        except Exception:
            info = None
        if info is None:  # replayed past its snapshot: use the newest snapshot at or below what it holds
            infos = [i for i in store.list() if i.index <= index]
            if not infos:
                return None
            info = infos[-1]
        conf, addrs = conf_from_json(info.conf)
        # The snapshot's membership supersedes initial_cluster (members may have been removed or added since).
        self._addresses = {k: v for k, v in self._addresses.items() if k in conf.members()}
        self._addresses.update(addrs)
        return SnapshotMeta(info.index, info.term, conf)

    def _check_node_id(self) -> None:
        """A data directory belongs to one node id for life (`hactl cluster recover` reads it from here too)."""
        path = self.data / "node-id"
        try:
            owner = path.read_text().strip()
        except FileNotFoundError:
            path.write_text(self.node_id + "\n")
            return
        if owner != self.node_id:
            raise StartupError(f"{self.data} belongs to controller {owner}, not {self.node_id}")

    def addresses(self) -> dict[str, str]:
        return dict(self._addresses)

    def _lock_data_dir(self) -> None:
        path = self.data / "LOCK"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartupError(f"{self.data}: another controller process is using this data directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._agent is not None:
            await self._agent.stop()
        if self._api is not None:
            await self._api.stop()
        if self.node is not None:
            await self.node.stop()
        if self.mesh is not None:
            await self.mesh.stop()
        if self.model is not None:
            self.model.machine.close()
        if self.storage is not None:
            self.storage.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT or a restart request, stop; returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        try:
            await self.start()
            await self._stopping.wait()
        finally:
            await self.stop()
        return self.exit_code

    def _restart_needed(self, reason: str) -> None:
        """May be called from the I/O thread; the stop waits a moment so answers in flight still go out."""
        log.warning("controller %s restarting (exit code %d): %s", self.node_id, EXIT_RESTART, reason)
        self.exit_code = EXIT_RESTART
        self._loop.call_soon_threadsafe(self._loop.call_later, 1.0, self._stopping.set)

    # ------------------------------------------------------------------ raft callbacks and housekeeping

    def _on_role_change(self, role: Role, leader: str | None) -> None:
        log.info("controller %s is now %s (leader: %s, term %d)", self.node_id, role.name.lower(), leader,
                 self.node.core.term if self.node else 0)
        if role == Role.LEADER:
            self._tasks.append(asyncio.create_task(self._ensure_initialized()))

    def _on_conf_change(self, cc: ConfChange, conf: ConfState) -> None:
        # An address book, not a mirror of the membership: while the bootstrap entries replay one member at a
        # time, the others are briefly not members yet, and dropping their connections would be churn.
        if cc.type == ConfChangeType.REMOVE:
            if self._addresses.pop(cc.node, None) is None:
                return
        elif cc.context:
            addr = cc.context.decode("utf-8", "replace")
            if self._addresses.get(cc.node) == addr:
                return
            self._addresses[cc.node] = addr
        else:
            return
        if self.mesh is not None:
            self.mesh.update_peers({k: v for k, v in self._addresses.items() if k != self.node_id})

    async def _ensure_initialized(self) -> None:
        """The first leader of a new cluster creates its identity, exactly once (fixed request id)."""
        try:
            await self.node.read_barrier(timeout=self.cfg.raft.apply_timeout_s)
            if self.model.machine.cluster_info() is not None:
                return
            token = read_or_create_token(self.cfg.api.token_file)
            cmd = build_cluster_init(INIT_REQUEST_ID, self.now_ms(), cluster_id=uuid.uuid4().hex,
                                     timeline_id=uuid.uuid4().hex, address=new_controller_address(),
                                     signing_key=new_signing_key(), token_hash=token_hash(token))
            result = await self.submit(cmd, INIT_REQUEST_ID)
            if result.ok:
                log.info("cluster initialised: controller address %s", (result.value or {}).get("address"))
            elif result.error != "ALREADY_INITIALIZED":
                log.error("cluster initialisation failed: %s %s", result.error, result.message)
        except Exception as e:  # the next leader will try again
            log.warning("cluster initialisation not done yet: %s", e)

    async def _housekeeping(self) -> None:
        interval = self.cfg.snapshots.interval_s
        while True:
            await asyncio.sleep(1.0)
            node = self.node
            if node.core.role == Role.FOLLOWER and node.leader is not None:
                self._leader_commit_seen = node.core.log.committed
            if interval and time.monotonic() - self._last_snapshot_time >= interval:
                self._last_snapshot_time = time.monotonic()
                if node.applied > node.core.snapshot.index and not node._snapshotting:
                    node.request_snapshot()

    # ------------------------------------------------------------------ the Cluster interface (for the API)

    def machine(self) -> StateMachine:
        if self.model is None or self.model.restart_reason is not None:
            raise ClusterUnavailable("this controller is restarting to load a new snapshot", retry_after=2)
        return self.model.machine

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def check_token(self, token: str) -> bool:
        info = self.model.machine.cluster_info() if self.model else None
        if info is None:  # nothing to check against yet: "retry soon", not "wrong token"
            raise ClusterUnavailable("the cluster is not initialised yet", retry_after=1)
        expected = info.get("token_hash")
        if not expected or not isinstance(token, str):
            hmac.compare_digest("x", "y")  # same work either way
            return False
        return hmac.compare_digest(token_hash(token).encode(), str(expected).encode())

    def status(self) -> dict[str, Any]:
        st = self.node.status()
        return {"id": self.node_id, "role": st.role.name.lower(), "term": st.term, "leader": st.leader,
                "commit": st.commit, "applied": st.applied, "voters": list(st.conf.voters),
                "learners": list(st.conf.learners), "peers_connected": sorted(self.mesh.connected()),
                "routers": [{"id": r.id, "addr": r.addr, "hello": r.hello} for r in self.mesh.routers()]}

    def health(self) -> tuple[bool, dict[str, Any]]:
        st = self.node.status()
        target = st.commit if st.role == Role.LEADER else max(self._leader_commit_seen, 0)
        ok = st.leader is not None and st.applied >= min(target, st.commit) and self.model.restart_reason is None
        return ok, {"leader": st.leader, "applied": st.applied, "commit": st.commit, "role": st.role.name.lower()}

    async def read_barrier(self) -> None:
        try:
            await self.node.read_barrier(timeout=self.cfg.raft.apply_timeout_s)
        except (NoLeader, raft_core.NotLeader, asyncio.TimeoutError, RaftError) as e:
            raise ClusterUnavailable(f"cannot confirm the leader for a linearizable read: {e}") from None

    async def submit(self, command: bytes, request_id: str) -> Result:
        """Propose on the leader (forwarding from a follower), retrying with the same request id across leader
        changes; answer once THIS node has applied the entry."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.raft.apply_timeout_s
        proposed = False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                if proposed:
                    raise OutcomeUnknown(f"write {request_id} was proposed but not applied within "
                                         f"{self.cfg.raft.apply_timeout_s}s")
                raise ClusterUnavailable("no leader accepted the write in time")
            self.machine()  # refuses while restarting
            node = self.node
            try:
                if node.is_leader:
                    index = await self._propose_here(command, remaining)
                    proposed = True
                else:
                    leader = node.leader
                    if leader is None:
                        await asyncio.sleep(min(0.05, remaining))
                        continue
                    reply = await self.mesh.call(leader, FORWARD_METHOD, {"cmd": command}, timeout=remaining)
                    proposed = True
                    index = int(reply["index"])
                await node.wait_applied(index, timeout=max(0.01, deadline - loop.time()))
            except (raft_core.NotLeader, NoLeader, ProposalDropped, PeerUnavailable, ConnectionLost) as e:
                log.debug("write %s: retrying after %s", request_id, e)
                proposed = proposed or isinstance(e, (ProposalDropped, ConnectionLost))
                await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
                continue
            except (ResultUnknown, asyncio.TimeoutError):
                continue  # the deadline check above decides
            except RemoteError as e:
                if e.code == "overloaded":
                    raise Overloaded(str(e)) from None
                if e.code == "unknown":
                    raise OutcomeUnknown(f"write {request_id}: {e}") from None
                if e.code == "not_leader":
                    await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
                    continue
                raise ClusterUnavailable(f"the leader refused the write: {e}") from None
            result = self.model.machine.result_for(request_id)
            if result is None:
                # Index `index` holds another leader's entry: this proposal was overwritten and can never commit,
                # so proposing it again (same request id) cannot apply it twice.
                log.debug("write %s: entry %d was replaced by another leader's; proposing again", request_id, index)
                continue
            return result

    async def _propose_here(self, command: bytes, timeout: float) -> int:
        if self._inflight >= self.cfg.raft.proposal_queue:
            raise Overloaded(f"{self._inflight} proposals already waiting on the leader")
        self._inflight += 1
        try:
            index, _ = await self.node.propose(command, timeout=timeout)
            return index
        except raft_core.ProposalRefused as e:
            raise NoLeader(str(e)) from None
        finally:
            self._inflight -= 1

    async def _serve_forwarded_propose(self, peer: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("cmd"), bytes):
            raise RemoteError("bad_request", "expected {cmd: bytes}")
        if not self.node.is_leader:
            raise RemoteError("not_leader", f"{self.node_id} is not the leader (leader: {self.node.leader})")
        try:
            index = await self._propose_here(body["cmd"], self.cfg.raft.apply_timeout_s)
        except Overloaded as e:
            raise RemoteError("overloaded", str(e)) from None
        except (raft_core.NotLeader, NoLeader, ProposalDropped) as e:
            raise RemoteError("not_leader", str(e)) from None
        except ResultUnknown as e:
            raise RemoteError("unknown", str(e)) from None
        return {"index": index}
