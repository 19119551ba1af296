"""One controller process: raft journal + ctrl.db + snapshot store + control channel + API + agent, and its lifecycle.

Exit codes (a supervisor restarts the process on any exit): 0 clean stop, 1 a fatal runtime failure (the raft
node stopped: raft.db or ctrl.db could not be written, a snapshot could not be installed...), 2 bad configuration
or data directory, 3 restart on purpose (a snapshot install or a restore needs a fresh process).

Fail-stop: a node whose storage failed never lingers. Its raft loop stops (nothing more is persisted, applied or
acknowledged), every waiting request is answered, and the process exits 1 so its supervisor restarts it; a
restart that fails again keeps failing visibly instead of serving a frozen model. For full LMDB maps and disks
that is the last line of defence: the storage alarms (alarms.py) refuse writes well before.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from hactl import __version__, logs
from hactl.agent.handle import AgentError
from hactl._fs import atomic_write
from hactl.aio import cancel_and_wait
from hactl.api.cluster import ClusterUnavailable
from hactl.config import Config, parse_hostport
from hactl.events.bus import EventBus
from hactl.events.setup import build_bus
from hactl.fsm.commands import (build_cluster_certificate, build_cluster_init, new_controller_identity,
                                new_planet_key, new_world_id)
from hactl.fsm.machine import StateMachine
from hactl.fsm.result import Result
from hactl.raft import core as raft_core
from hactl.raft.node import NodeOptions, NoLeader, RaftError, RaftNode
from hactl.raft.storage import RaftStorage
from hactl.raft.types import ConfChange, ConfChangeType, ConfState, Entry, Role
from hactl.server.alarms import StorageMonitor
from hactl.server.entity_events import EntityChangeEmitter
from hactl.server.fsm_adapter import ControllerFSM, MembershipTracker, meta_of
from hactl.server.health import Health
from hactl.server.peers import LEAVING_GRACE, PeerPolicy
from hactl.server.tokens import TokenError, check_token, read_or_create_token, token_hash
from hactl.server.writes import WritePath
from hactl.snapshots.rebuild import rebuild_ctrl_db
from hactl.snapshots.store import SnapshotStore
from hactl.transport.mesh import Mesh, MeshOptions
from hactl.transport.pki import cert_serial, load_identity
from hactl.transport.raft_transport import RaftTransport

log = logging.getLogger("hactl.server")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_RESTART = 3

REFUSED_EVENT_EVERY_S = 60.0
ADDRESS_RETRY_S = 5.0  # a moved node asks the leader to record its new control address this often until it is
INIT_REQUEST_ID = "cluster-init"  # one fixed id: however many leaders try, the model is initialised once


class StartupError(Exception):
    """The controller cannot start with this configuration or data directory (exit code 2)."""


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
        self._addresses: dict[str, str] = dict(cfg.cluster.initial_cluster)
        self._last_snapshot_time = time.monotonic()
        self._address_task: asyncio.Task | None = None
        self._address_next = 0.0
        self._api: Any = None
        self._agent: Any = None
        self.workers: Any = None  # hactl.workers.supervisor.WorkerSupervisor when workers: > 0
        self.ops: Any = None
        self.storage: RaftStorage | None = None
        self.model: ControllerFSM | None = None
        self.node: RaftNode | None = None
        self.mesh: Mesh | None = None
        self.writes: WritePath | None = None
        self.health_: Health | None = None
        self.storage_alarms: StorageMonitor | None = None
        self.zerotier: Any = None
        self.events: EventBus | None = None
        self.entity_events: EntityChangeEmitter | None = None
        self._read_only = False
        self._read_only_seen: tuple[int, str | None] | None = None
        self._refused_told: dict[tuple[str, str], float] = {}
        self._seen_role: Role | None = None
        self._seen_leader: str | None = None
        self.raft_transport: RaftTransport | None = None

    # ------------------------------------------------------------------ start and stop

    async def start(self) -> None:
        cfg = self.cfg
        self._loop = asyncio.get_running_loop()
        self.data.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data, 0o700)
        self._lock_data_dir()
        self._check_node_id()
        self.events = self._event_bus()
        try:
            identity = load_identity(cfg.pki.cert, cfg.pki.key, cfg.pki.ca)
        except Exception as e:
            raise StartupError(f"pki: cannot load this node's identity: {e}") from e
        self.storage = RaftStorage(self.data / "raft.db", map_size=cfg.storage.raft_db_max_bytes)
        store = SnapshotStore(self.data / "snapshots", retain=cfg.snapshots.retain)
        machine, used = rebuild_ctrl_db(self.data, store, self._journal_after, map_size=cfg.storage.ctrl_db_max_bytes)
        restored = meta_of(used) if used is not None else None
        membership = machine.membership()
        if membership is not None:  # what ctrl.db holds supersedes initial_cluster (members come and go)
            self._addresses = dict(membership.addresses)
        self.model = ControllerFSM(machine, store, on_restart_needed=self._restart_needed)
        self.entity_events = EntityChangeEmitter(self.events, machine, self.data / "events.cursor",
                                                 lambda: self.node is not None and self.node.is_leader)
        self.entity_events.start(self._loop)  # (before the node applies anything new: events stay in order)
        self.model.on_batch = self._batch_applied
        self.model.on_membership = lambda index, m: self._loop.call_soon_threadsafe(self._members_changed, index, m)
        mesh_id = hashlib.sha256(Path(cfg.pki.ca).read_bytes()).hexdigest()[:16]  # the CA defines the cluster
        peers = {k: v for k, v in self._addresses.items() if k != self.node_id}
        self.peers = PeerPolicy(self.node_id, machine)
        self._own_serial = cert_serial(identity.cert_pem)
        self.mesh = Mesh(self.node_id, mesh_id, cfg.cluster.trust_domain, identity, cfg.control.listen, peers,
                         options=MeshOptions(max_frame=cfg.control.max_frame_bytes), authorizer=self.peers)
        self.mesh.on_connect(self._on_peer_connected)
        self.mesh.on_disconnect(self._on_peer_disconnected)
        self.mesh.on_refuse(self._on_peer_refused)
        transport = RaftTransport(self.mesh, snapshot_sink=store.receiver,
                                  on_snapshot_status=lambda to, ok: self.node and self.node.report_snapshot(to, ok),
                                  on_unreachable=lambda to: self.node and self.node.report_unreachable(to))
        self.raft_transport = transport
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
        logs.set_context(lambda: {"term": self.node.term} if self.node is not None else {})
        self.peers.node = self.node
        self.node.on_role_change = self._on_role_change
        self.node.on_conf_change = self._on_conf_change
        transport.set_receiver(self.node.receive)
        self.health_ = Health(self.node, self.mesh, machine.alarms)
        self.storage_alarms = StorageMonitor(self.node_id, self.data, cfg.storage, raft_usage=self.storage.usage,
                                             ctrl_usage=machine.usage, alarms=machine.alarms, submit=self.submit,
                                             now_ms=self.now_ms)
        self.writes = WritePath(self.node, self.mesh, machine, self.machine, apply_timeout=r.apply_timeout_s,
                                proposal_queue=r.proposal_queue)
        from hactl.server.operations import Operations
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
        from hactl.api.tls import plain_http_warning, server_ssl_context
        host, port = parse_hostport(cfg.api.listen, cfg.source, "api.listen")
        ssl_context = None
        if cfg.api.tls_cert:  # config validation guarantees api.tls_key too
            try:
                ssl_context = server_ssl_context(cfg.api.tls_cert, cfg.api.tls_key)
            except ValueError as e:
                raise StartupError(f"api.tls_cert: {e}") from None
        elif (warning := plain_http_warning(host)) is not None:
            log.warning("%s", warning)
        if cfg.api_workers == 0:
            self._api = await serve(self, host, port, max_body_bytes=cfg.api.max_body_bytes, version=__version__,
                                    ssl_context=ssl_context)
        else:  # the port shared with the workers (SO_REUSEPORT); answers say which process made them
            from hactl.workers.header import served_by
            from hactl.workers.supervisor import WorkerStartError, WorkerSupervisor, check_port_free
            try:
                check_port_free(host, port, cfg.source)
                self._api = await serve(self, host, port, max_body_bytes=cfg.api.max_body_bytes,
                                        version=__version__, ssl_context=ssl_context, reuse_port=True,
                                        configure=served_by(0))
                self.workers = WorkerSupervisor(self, cfg, host, self._api.port)
                await self.workers.start(self._api)
            except WorkerStartError as e:
                raise StartupError(str(e)) from None
        if cfg.zerotier.bind:
            from hactl.server.zerotier import ZeroTierService, ZeroTierStartupError
            try:
                self.zerotier = ZeroTierService(self, cfg.zerotier)
            except ZeroTierStartupError as e:
                raise StartupError(str(e)) from None
            self.zerotier.attach(self._loop)
            self.model.on_applied = self.zerotier.on_applied
            await self.zerotier.start()
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="controller-housekeeping"))
        log.info("controller %s started: control %s, api %s, zerotier %s, data %s", self.node_id,
                 cfg.control.listen, cfg.api.listen, cfg.zerotier.bind or "off", self.data)

    def _journal_after(self, machine: StateMachine) -> Iterator[tuple[int, int, Any]]:
        """The committed journal after what ``machine`` holds, as it applies it (memberships included)."""
        storage = self.storage
        assert storage is not None
        commit = storage.load().hard_state.commit
        lo = max(machine.applied()[0] + 1, storage.first_index())
        entries: list[Entry] = storage.entries(lo, commit + 1) if commit >= lo else []
        return MembershipTracker(machine.membership()).translate(entries)

    def _check_node_id(self) -> None:
        """A data directory belongs to one node id for life (`hactl cluster recover` reads it from here too)."""
        path = self.data / "node-id"
        try:
            owner = path.read_text().strip()
        except FileNotFoundError:
            atomic_write(path, self.node_id + "\n", 0o600)
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
        if self.events is not None:
            await self.events.stop()  # (flushes every queue: then the cursor can say all was delivered)
        if self.entity_events is not None:
            self.entity_events.save()
        if self.zerotier is not None:
            await self.zerotier.stop()
        if self.storage_alarms is not None:
            await self.storage_alarms.stop()
        if self.workers is not None:  # (before the API and the model: their calls are answered until they exit)
            await self.workers.stop()
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
        """Start, serve until SIGTERM/SIGINT, a restart request or a node failure, stop; returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        waiters: list[asyncio.Future] = []
        try:
            await self.start()
            assert self.node is not None
            failed = asyncio.ensure_future(self.node.wait_failed())
            waiters = [failed, asyncio.ensure_future(self._stopping.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if failed.done():
                cause = failed.result()
                log.critical("controller %s exits with code %d: its raft node stopped (%s: %s); the supervisor "
                             "restarts it. If this repeats, check the disk holding %s.", self.node_id, EXIT_FAILED,
                             type(cause).__name__, cause, self.data)
                self.exit_code = EXIT_FAILED
        finally:
            for w in waiters:
                w.cancel()
            await self.stop()
        return self.exit_code

    def fail(self, reason: str) -> None:
        """A part this node cannot run without failed: exit 1 so the supervisor restarts it, never linger."""
        log.critical("controller %s exits with code %d: %s", self.node_id, EXIT_FAILED, reason)
        self.exit_code = EXIT_FAILED
        self._stopping.set()

    def _restart_needed(self, reason: str) -> None:
        """May be called from the I/O thread; the stop waits a moment so answers in flight still go out."""
        log.warning("controller %s restarting (exit code %d): %s", self.node_id, EXIT_RESTART, reason)
        self.exit_code = EXIT_RESTART
        if self.health_ is not None:
            self.health_.restart_reason = reason
        self._loop.call_soon_threadsafe(self._watch_read_only)
        if self.workers is not None:  # they refuse reads too, at once: ctrl.db is about to be replaced
            self._loop.call_soon_threadsafe(self.workers.node_state_changed)
        self._loop.call_soon_threadsafe(self._loop.call_later, 1.0, self._stopping.set)

    # ------------------------------------------------------------------ raft callbacks and housekeeping

    def _event_bus(self) -> EventBus:
        bus = build_bus(self.node_id, self.cfg.events, self.data, self.now_ms)
        bus.start()
        return bus

    def _emit_role_events(self, role: Role, leader: str | None) -> None:
        term = self.node.term if self.node else 0
        was_leader, had = self._seen_role == Role.LEADER, self._seen_leader
        self._seen_role, self._seen_leader = role, leader
        if role == Role.LEADER and not was_leader:
            self.events.emit("cluster", "leadership.gained", term=term)
            if self.entity_events is not None:
                self.entity_events.leadership_gained()
        elif was_leader and role != Role.LEADER:
            self.events.emit("cluster", "leadership.lost", term=term, newRole=role.name.lower())
        if leader != had:
            if leader is None:
                self.events.emit("cluster", "state.is_leaderless", term=term)
            else:
                self.events.emit("cluster", "state.has_leader", leaderId=leader, term=term)

    def _on_role_change(self, role: Role, leader: str | None) -> None:
        log.info("controller %s is now %s (leader: %s, term %d)", self.node_id, role.name.lower(), leader,
                 self.node.term if self.node else 0)
        self._emit_role_events(role, leader)
        if role == Role.LEADER:
            self._tasks.append(asyncio.create_task(self._ensure_initialized()))
            for peer, serial in [(self.node_id, self._own_serial)] + [
                    (c.peer_id, c.serial) for c in map(self.mesh.connection, self.mesh.connected()) if c]:
                self._record_certificate(peer, serial)

    def _batch_applied(self, first: int, last: int) -> None:
        """From the Raft I/O thread after each applied batch: one hop to the loop for its events (an alarm may be
        raised and cleared within a second: state.ro/rw must not depend on the once-a-second housekeeping)."""
        self._loop.call_soon_threadsafe(self._after_batch, last)

    def _after_batch(self, last: int) -> None:
        self.entity_events.applied(last)
        self._watch_read_only()

    def _members_changed(self, index: int, m: Any) -> None:
        """A membership change applied (every node applies it: the leader's event is the primary one)."""
        self.events.emit("cluster", "members.changed", key=f"mc-{index}", propagated=not self.node.is_leader,
                         index=index, voters=list(m.voters), learners=list(m.learners),
                         peers=dict(m.addresses))

    def _watch_read_only(self) -> None:
        """state.ro / state.rw: the cluster refuses writes that add data while an alarm is on, and this node
        refuses everything while a restart is pending."""
        seen = (self.model.machine.alarms_stamp, self.model.restart_reason)
        if seen == self._read_only_seen:
            return  # nothing that decides it changed (most batches): no read
        self._read_only_seen = seen
        try:
            alarms = self.model.machine.alarms() if self.model.restart_reason is None else []
        except Exception:  # ctrl.db closed (stopping) or unreadable: the next batch or restart tells
            return
        reason = self.model.restart_reason or "; ".join(f"{a['name']} on {a['node']}: {a['message']}"
                                                        for a in alarms)
        if bool(reason) != self._read_only:
            self._read_only = bool(reason)
            if reason:
                self.events.emit("cluster", "state.ro", reason=reason)
            else:
                self.events.emit("cluster", "state.rw")

    def _on_peer_refused(self, peer: str, reason: str) -> None:
        """peer.not_member, at most once a minute per peer and reason (a refused node keeps dialling)."""
        now = time.monotonic()
        if now - self._refused_told.get((peer, reason), -REFUSED_EVENT_EVERY_S) < REFUSED_EVENT_EVERY_S:
            return
        if len(self._refused_told) > 1000:
            self._refused_told.clear()
        self._refused_told[(peer, reason)] = now
        self.events.emit("cluster", "peer.not_member", peer=peer, reason=reason)

    def _on_peer_disconnected(self, conn: Any) -> None:
        if conn.kind == "controller" and self.mesh is not None and self.mesh.connection(conn.peer_id) is None:
            if self.node is not None and conn.peer_id == self.node.leader:
                self.node.leader_lost()  # a dead leader's socket closes at once: elect without the full timeout
            self.events.emit("cluster", "peer.disconnected", peer=conn.peer_id, reason=conn.close_reason)

    def _on_peer_connected(self, conn: Any) -> None:
        if conn.kind == "controller":
            self.events.emit("cluster", "peer.connected", peer=conn.peer_id, address=conn.addr)
        if self.node is not None and self.node.is_leader:
            self._record_certificate(conn.peer_id, conn.serial)

    def _record_certificate(self, peer: str, serial: str | None) -> None:
        """The leader records each member's certificate serial once, so that removal or revocation can deny it."""
        if serial is None or not self.peers.unrecorded(peer, serial):
            return

        async def record() -> None:
            rid = f"cert-{peer}-{serial}"  # one fixed id: however many leaders try, it is recorded once
            try:
                await self.submit(build_cluster_certificate(rid, self.now_ms(), peer, serial), rid)
            except Exception as e:  # the next connection or leader tries again
                log.info("recording the certificate of %s not done yet: %s", peer, e)
        self._tasks.append(asyncio.create_task(record()))

    def _on_conf_change(self, cc: ConfChange, conf: ConfState) -> None:
        removed = cc.node if cc.type == ConfChangeType.REMOVE else None
        self.peers.membership_changed(removed)
        # An address book, not a mirror of the membership: while the bootstrap entries replay one member at a
        # time, the others are briefly not members yet, and dropping their connections would be churn.
        if removed is not None:
            if self._addresses.pop(removed, None) is None:
                return
            # Its connection may still carry answers in flight (the removal's own, when the leader was asked to
            # remove itself): drop it from the mesh after the same grace its authorization gets.
            self._loop.call_later(LEAVING_GRACE, self._sync_peers)
            return
        if not cc.context:
            return
        addr = cc.context.decode("utf-8", "replace")
        if self._addresses.get(cc.node) == addr:
            return
        self._addresses[cc.node] = addr
        self._sync_peers()

    def _sync_peers(self) -> None:
        if self.mesh is not None:
            self.mesh.update_peers({k: v for k, v in self._addresses.items() if k != self.node_id})

    async def _ensure_initialized(self) -> None:
        """The first leader of a new cluster creates its identity, exactly once (fixed request id)."""
        try:
            await self.node.read_barrier(timeout=self.cfg.raft.apply_timeout_s)
            if self.model.machine.cluster_info() is not None:
                return
            token = read_or_create_token(self.cfg.api.token_file)
            # The cluster's ZeroTier identity: its address is the controller address every network id starts
            # with. Finding one takes a search over a memory-hard hash (seconds in pure Python): off the loop.
            identity = await asyncio.get_running_loop().run_in_executor(None, new_controller_identity)
            cmd = build_cluster_init(INIT_REQUEST_ID, self.now_ms(), cluster_id=uuid.uuid4().hex,
                                     timeline_id=uuid.uuid4().hex, address=f"{identity.address:010x}",
                                     signing_key=identity.to_bytes(include_private=True),
                                     token_hash=token_hash(token), planet_key=new_planet_key()[1],
                                     world_id=new_world_id())  # (the cluster's own planet: issue 11)
            result = await self.submit(cmd, INIT_REQUEST_ID)
            if result.ok:
                log.info("cluster initialised: controller address %s", (result.value or {}).get("address"))
            elif result.error != "ALREADY_INITIALIZED":
                log.error("cluster initialisation failed: %s %s", result.error, result.message)
        except (TokenError, OSError) as e:
            log.error("cluster initialisation failed: %s", e)
        except Exception as e:  # the next leader will try again
            log.warning("cluster initialisation not done yet: %s", e)

    async def _housekeeping(self) -> None:
        interval = self.cfg.snapshots.interval_s
        while True:
            await asyncio.sleep(1.0)
            node = self.node
            self.health_.observe()
            self.mesh.enforce()  # revocations applied since (ctrl.db's deny-list) close their connections
            self.storage_alarms.tick()  # raises or clears this node's NOSPACE alarm before a map or the disk is full
            self.entity_events.save()
            self._check_own_address()
            if interval and time.monotonic() - self._last_snapshot_time >= interval:
                self._last_snapshot_time = time.monotonic()
                if node.running and node.applied > node.snapshot_index and not node.snapshot_in_progress:
                    node.request_snapshot()

    def _check_own_address(self) -> None:
        """After a move (a new control.advertise) the others still dial the address the membership holds, and two
        moved nodes would never find each other: ask the leader to record the new one (what `etcdctl member
        update` does by hand). One request at a time, again every ADDRESS_RETRY_S until the membership has it."""
        node, want = self.node, self.cfg.control.advertise
        have = self._addresses.get(self.node_id)
        if (have is None or have == want or not node.running or self._address_task is not None
                or time.monotonic() < self._address_next):
            return
        self._address_next = time.monotonic() + ADDRESS_RETRY_S
        log.info("control address changed: the membership has %s, this node advertises %s; asking the leader "
                 "(%s) to record it", have, want, node.leader or "not known yet")

        async def record() -> None:
            try:
                await self.ops.record_own_address(want, ADDRESS_RETRY_S)
                log.info("control address %s recorded in the membership", want)
            except AgentError as e:
                log.warning("recording control address %s failed (%s: %s); trying again in %.0f s", want, e.code,
                            e.message, ADDRESS_RETRY_S)
            finally:
                self._address_task = None
        self._address_task = asyncio.create_task(record(), name="record-address")

    # ------------------------------------------------------------------ the Cluster interface (for the API)

    def machine(self) -> StateMachine:
        if self.model is None or self.model.restart_reason is not None:
            raise ClusterUnavailable("this controller is restarting to load a new snapshot", retry_after=2)
        if self.node is not None and not self.node.running:
            raise ClusterUnavailable("this controller's raft node stopped; it is restarting", retry_after=2)
        return self.model.machine

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def check_token(self, token: str) -> bool:
        return check_token(self.model.machine.cluster_info() if self.model else None, token)

    def _workers(self, detail: bool = False) -> dict[str, Any]:
        if self.workers is None:
            return {"configured": 0, "running": 0}
        return self.workers.details() if detail else self.workers.counts()

    def status(self) -> dict[str, Any]:
        return {**self.health_.status(), "workers": self._workers(detail=True)}

    def zerotier_status(self) -> dict[str, Any] | None:
        return self.zerotier.status() if self.zerotier is not None else None

    def health(self) -> tuple[bool, dict[str, Any]]:
        healthy, details = self.health_.health()
        return healthy, {**details, "workers": self._workers()}

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        return self.health_.liveness()

    def event_bus(self) -> EventBus | None:
        return self.events

    def metrics_collector(self) -> Any:
        from hactl.server.metrics import ControllerCollector
        return ControllerCollector(self)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.health_.readiness()

    async def read_barrier(self) -> None:
        try:
            await self.node.read_barrier(timeout=self.cfg.raft.apply_timeout_s)
        except (NoLeader, raft_core.NotLeader, asyncio.TimeoutError, RaftError) as e:
            raise ClusterUnavailable(f"cannot confirm the leader for a linearizable read: {e}") from None

    async def submit(self, command: bytes, request_id: str) -> Result:
        """See WritePath.submit: 503/429 only when certainly not applied, 504 when it may have been."""
        assert self.writes is not None
        return await self.writes.submit(command, request_id)
