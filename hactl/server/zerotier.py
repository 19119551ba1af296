"""The controller role over the ZeroTier protocol: every node answers for the cluster's one controller identity.

The endpoint (hactl.zt) hands over config requests from members it has authenticated; this module decides the
answer from the replicated model and writes what ZeroTier's controller writes at request time (a new member's
record, its version fields, a public network's authorization, an auto-assigned IPv4 address) through Raft, as a
`member.request` command that has its effect once however many nodes propose it.

Why configs never go backwards: every answer and every push is built after a ReadIndex barrier, so it reflects at
least everything committed before the request arrived, which includes whatever any node had applied when it
built an earlier answer. Without a leader (quorum lost) a node still answers members it can serve from its own
last committed state, but only if that state is not older than the config the member says it holds: the config's
revision `r` is (network revision << 32 | member revision), which only grows, and members send it back in every
request. Requests that would need a write, and refusals (which could be stale), get no answer then: the member
retries every few seconds, and a wrong answer is worse than none.

Pushes: a node pushes to the members that asked *it* within the last two minutes (it has their identity and a
path), after any committed change to their network or to them, debounced and behind one barrier per round. A
deauthorization sends a signed revocation of the member's certificate of membership to the other online members,
so it is cut off at once rather than when its certificate ages out.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import logging
import os
import socket
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from hactl._fs import atomic_write
from hactl.api.cluster import ClusterUnavailable, OutcomeUnknown, Overloaded
from hactl.config import (ENDPOINTS_AUTO, PLANET_OWN, PLANET_ZEROTIER, ZeroTierConfig, parse_hostport,
                          zt_endpoint_problem)
from hactl.fsm.coerce import ValidationError
from hactl.fsm.commands import (CommandError, build_member_request, build_planet_init, build_planet_set,
                                build_zt_root, decode, new_planet_key, new_world_id, with_origin)
from hactl.fsm.ipassign import V4Plan, has_routed_v4
from hactl.fsm.model import format_address, format_nwid
from hactl.fsm.result import Result
from hactl.zt.dictionary import Dictionary
from hactl.zt.endpoint import Endpoint
from hactl.zt.errors import ProtocolError
from hactl.zt.identity import Identity
from hactl.workers.netconf import EncodedChunk, SignJob
from hactl.zt.netconf import config_revision, signed_config
from hactl.zt.node import ConfigRequest, Node
from hactl.zt.packet import ErrorCode
from hactl.zt.planet import desired_roots, next_world
from hactl.zt.revocation import Revocation, network_credentials_payload
from hactl.zt.root import Root
from hactl.zt.switch import Switch
from hactl.zt.world import World, WorldType, zerotier_planet

if TYPE_CHECKING:
    from hactl.server.controller import Controller

log = logging.getLogger("hactl.zerotier")

ONLINE_MS = 120_000  # a member that asked within this long is "online" and gets pushes (as ZeroTier's controller)
MAX_ONLINE = 1_000_000  # members remembered for pushes on this node (least recently seen forgotten first)
MAX_HANDLERS = 4096  # requests waiting for an answer; more are dropped ("busy") and the members retry
MAX_WRITERS = 512  # of which waiting for their Raft write
BARRIER_TIMEOUT_S = 2.0
PUSH_DEBOUNCE_S = 0.2
PLANET_CHECK_S = 2.0  # how often a node checks its root record and, on the leader, the planet
WRITE_RATE = 20.0  # writes per second per source (an IP, or a member address when relayed)...
WRITE_BURST = 40.0  # ...with this burst: one source cannot fill the Raft log
MAX_WRITE_SOURCES = 100_000
SERVED_MS = 90_000  # a member is "served here" while its requests (every 60 s) come here
BALANCE_CHECK_S = 10.0  # how often a node compares its load with the other nodes'
BALANCE_SLACK = 1  # members above the fair share before any is handed over (no ping-pong over one member)
MAX_REDIRECTS = 32  # per round
REDIRECT_COOLDOWN_MS = 600_000  # a member handed over is left alone this long
LOAD_METHOD = "zt.load"


class ZeroTierStartupError(Exception):
    """The endpoint cannot be set up as configured (bad planet file, address not bindable)."""


def load_planet(path: str) -> World | None:
    """The planet zerotier.planet names: None for the cluster's own (it follows the replicated one)."""
    if path in ("", PLANET_OWN):
        return None
    if path == PLANET_ZEROTIER:
        return zerotier_planet()
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ZeroTierStartupError(f"zerotier.planet: cannot read {path}: {e.strerror or e}") from None
    try:
        world = World.decode(data)
    except ProtocolError as e:
        raise ZeroTierStartupError(f"zerotier.planet: {path} is not a serialized planet: {e}") from None
    if not world.roots:
        raise ZeroTierStartupError(f"zerotier.planet: {path} lists no roots")
    return world


def load_or_create_root_identity(zt_dir: Path) -> Identity:
    """This node's own ZeroTier identity, as a root of the cluster's planet: created once with the data directory
    (identity.secret 0600, identity.public), never replicated (each root is its own peer to members)."""
    secret, public = zt_dir / "identity.secret", zt_dir / "identity.public"
    try:
        text = secret.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        zt_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ident = Identity.generate()
        try:
            atomic_write(secret, ident.to_string(include_private=True) + "\n", 0o600, overwrite=False)
        except FileExistsError:  # another process made one meanwhile: use it
            return load_or_create_root_identity(zt_dir)
        atomic_write(public, str(ident) + "\n", 0o644)
        log.info("zerotier: created this node's root identity %010x in %s", ident.address, secret)
        return ident
    except (OSError, UnicodeDecodeError) as e:
        raise ZeroTierStartupError(f"{secret}: cannot read this node's root identity: {e}") from None
    if secret.stat().st_mode & 0o077:
        raise ZeroTierStartupError(f"{secret}: holds a private key but is readable by others; chmod 600 it")
    try:
        ident = Identity.from_string(text)
    except (ProtocolError, ValueError) as e:
        raise ZeroTierStartupError(f"{secret}: not a ZeroTier identity with its private key: {e}") from None
    if not ident.has_private or not ident.locally_validate():
        raise ZeroTierStartupError(f"{secret}: the identity has no private key or does not validate (its address "
                                   "is not derived from its key)")
    return ident


def root_endpoints(cfg: ZeroTierConfig) -> list[str]:
    """Where members reach this node as a root ("IP/port"): zerotier.endpoints, else a specific bind address;
    none yet with [auto] (learned from the other nodes, ZeroTierService._auto_endpoints)."""
    if cfg.endpoints == [ENDPOINTS_AUTO]:
        return []
    if cfg.endpoints:
        return list(cfg.endpoints)
    if not cfg.bind:
        return []
    host, port = parse_hostport(cfg.bind, "zerotier", "zerotier.bind")
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return []
    return [] if unspecified else [f"{host}/{port}"]


def _no_planet() -> World:
    """What a root serves before the cluster has committed its planet: a world with no roots (pushed to nobody:
    no client holds its id, 0)."""
    pub, priv = new_planet_key()
    return World.make(WorldType.PLANET, 0, 0, pub, [], sign_with=priv)


def auto_endpoint(votes: list[str], n_others: int, port: int) -> tuple[str | None, str | None]:
    """(endpoint, None) when a majority of the other voters (n_others) see this node at one IP (votes: the IPs
    those that answered reported), else (None, why not; None if there is simply no majority yet)."""
    if not votes:
        return None, None
    ip, n = collections.Counter(votes).most_common(1)[0]
    if n < n_others // 2 + 1:
        return None, None
    endpoint = f"{ip}/{port}"
    problem = zt_endpoint_problem(endpoint)
    if problem:
        return None, (f"the other nodes see this one at {ip}, which members cannot use ({problem}): run the "
                      "control plane over the members' network, or set zerotier.endpoints")
    return endpoint, None


def _sockaddrs(endpoints: list[str]) -> list[tuple[str, int]]:
    out = []
    for ep in endpoints:
        host, _, port = ep.rpartition("/")
        out.append((host, int(port)))
    return out


def check_bindable(bind: str) -> tuple[str, int]:
    """Fail at start, with the address in the message, rather than when the cluster identity appears."""
    host, port = parse_hostport(bind, "zerotier", "zerotier.bind")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.bind((host, port))
    except OSError as e:
        raise ZeroTierStartupError(f"zerotier.bind: cannot bind UDP {host}:{port}: {e.strerror or e}") from None
    finally:
        s.close()
    return host, port


# ----------------------------------------------------------------------------------------- pure decisions

@dataclass(frozen=True)
class Versions:
    """What a member reports about itself in its request metadata (hex integers; -1 when absent)."""
    major: int = -1
    minor: int = -1
    rev: int = -1
    proto: int = -1
    rules_engine: int = 1

    @classmethod
    def of(cls, metadata: bytes) -> "Versions":
        try:
            d = Dictionary.parse(metadata) if metadata else Dictionary()
        except ProtocolError:
            return cls()

        def num(key: str, default: int, hi: int = 65535) -> int:
            try:
                v = d.get_int(key, default) if key in d else default
            except (ProtocolError, ValueError):
                return default
            return v if -1 <= v <= hi else default
        return cls(num("majv", -1), num("minv", -1), num("revv", -1), num("pv", -1),
                   num("revr", 1, 1 << 62))


@functools.lru_cache(maxsize=1024)
def versions_of(metadata: bytes) -> Versions:
    """Versions.of, remembered: every member of one software version sends the same metadata bytes."""
    return Versions.of(metadata)


def needs_write(network: dict[str, Any], member: dict[str, Any] | None, v: Versions) -> bool:
    """Whether answering needs a member.request write (what ZeroTier's controller saves at request time)."""
    if member is None or not member.get("identity"):
        return True
    reported = (("vMajor", v.major), ("vMinor", v.minor), ("vRev", v.rev), ("vProto", v.proto))
    if any(value != -1 and member.get(field) != value for field, value in reported):
        return True  # (a field the request did not carry, -1, leaves the stored one as it is)
    if not member.get("authorized"):
        return not network.get("private", True)
    return needs_v4(network, member)


def needs_v4(network: dict[str, Any], member: dict[str, Any]) -> bool:
    if member.get("noAutoAssignIps") or not network.get("v4AssignMode", {}).get("zt"):
        return False
    if not network.get("ipAssignmentPools"):
        return False
    plan = _v4_plan(network)
    return bool(plan.pools) and not has_routed_v4(member.get("ipAssignments") or [], plan)


_plans: OrderedDict[tuple[str, str], V4Plan] = OrderedDict()


def _v4_plan(network: dict[str, Any]) -> V4Plan:
    """A network's IPv4 plan, parsed once per routes-and-pools rather than once per request (keyed by their
    text, not by the network's revision: a deleted and re-created network starts its revisions again)."""
    key = (str(network.get("routes")), str(network.get("ipAssignmentPools")))
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = V4Plan.of(network.get("routes") or [], network.get("ipAssignmentPools") or [])
        if len(_plans) > 1024:
            _plans.popitem(last=False)
    return plan


# ----------------------------------------------------------------------------------------- the service

@dataclass
class _Due:
    """A config reply decided on and waiting for its signature."""
    req: ConfigRequest
    entry: "Online"
    network: dict[str, Any]
    member: dict[str, Any]
    job: SignJob


@dataclass
class Online:
    identity: Identity
    rules_engine: bool
    seen: int  # ms (wall clock) of its last request here
    sent: int = -1  # the config revision last sent to it from here (a push of the same one is skipped)


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, now: float) -> None:
        self.tokens, self.stamp = WRITE_BURST, now


class ZeroTierService:
    """Owns the UDP endpoint once the cluster has a controller identity; answers and pushes."""

    def __init__(self, controller: "Controller", cfg: ZeroTierConfig) -> None:
        self.ctl = controller
        self.cfg = cfg
        self.planet = load_planet(cfg.planet)  # the controller's upstreams; None: the cluster's own planet
        self.bind = check_bindable(cfg.bind)
        self.root_identity = load_or_create_root_identity(Path(controller.data) / "zt")
        self.root_endpoints = root_endpoints(cfg)
        self.identity: Identity | None = None
        self.node: Node | None = None  # the controller identity's node (the switch's other one is the root)
        self.switch: Switch | None = None
        self.endpoint: Endpoint | None = None
        self.problem: str | None = None  # why there is no endpoint yet, for /status
        self.signed_by_workers = 0  # config replies whose signatures the API workers made (/status)
        self._tasks: list[asyncio.Task] = []
        self._handlers: set[asyncio.Task] = set()
        self._pending: list[ConfigRequest] = []
        self._writers = 0
        self._online: OrderedDict[tuple[int, int], Online] = OrderedDict()
        self._dirty_networks: set[int] = set()
        self._dirty_members: set[tuple[int, int]] = set()
        self._revoked: set[tuple[int, int]] = set()
        self._dirty_event = asyncio.Event()
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._futile: dict[tuple[int, int], int] = {}  # write attempts that changed nothing, by config revision
        self._registry_dirty = False
        self._auto_problem: str | None = None  # why zerotier.endpoints: [auto] has no endpoint (said once)
        self._redirected: dict[int, tuple[int, str]] = {}  # member -> (when, ms; node) it was handed over
        self._root_seen: set[int] = set()  # members with a live direct path to this node's root (events)
        controller.mesh.register(LOAD_METHOD, self._serve_load)

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._run(), name="zerotier-service"))

    async def stop(self) -> None:
        from hactl.aio import cancel_and_wait
        await cancel_and_wait(self._tasks)
        await cancel_and_wait(list(self._handlers))
        if self.endpoint is not None:
            self._save_registry()
            await self.endpoint.stop()

    # -------------------------------------------------------------- the online registry across restarts

    @property
    def _registry_path(self) -> Path:
        return Path(self.ctl.data) / "zt" / "online.msgpack"

    def _save_registry(self) -> None:
        """Who asked here recently, so that after a restart (a restore restarts every node) the changes still
        reach them by push within seconds rather than at their next refresh."""
        ep = self.endpoint
        if ep is None:
            return
        rows = [[nwid, address, str(o.identity), o.rules_engine, o.seen,
                 [list(p) for p in self.node.peer_paths(address)]] for (nwid, address), o in self._online.items()]
        try:
            self._registry_path.parent.mkdir(mode=0o700, exist_ok=True)
            atomic_write(self._registry_path, msgpack.packb({"v": 1, "members": rows}), 0o600)
            self._registry_dirty = False
        except OSError as e:
            log.warning("zerotier: cannot save the online members to %s: %s (pushes after a restart will wait "
                        "for their next request)", self._registry_path, e)

    def _load_registry(self) -> None:
        ep = self.endpoint
        assert ep is not None
        path = self._registry_path
        try:
            doc = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
            rows = doc["members"] if isinstance(doc, dict) and doc.get("v") == 1 else None
            if not isinstance(rows, list):
                raise ValueError("not a registry of version 1")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
            log.warning("zerotier: ignoring %s: %s", path, e)
            return
        now, mono, loaded = self.ctl.now_ms(), ep.now(), 0
        for row in rows[-MAX_ONLINE:]:
            try:
                nwid, address, ident_s, rules_engine, seen, paths = row
                ident = Identity.from_string(ident_s)
                if ident.address != address or now - int(seen) > ONLINE_MS:
                    continue
                self.node.remember(ident, [(str(h), int(p)) for h, p in paths], mono)
            except (ValueError, TypeError, ProtocolError):
                continue  # one bad row costs that member its push, not the others
            self._online[(int(nwid), int(address))] = Online(ident.public_only(), bool(rules_engine), int(seen))
            self._dirty_networks.add(int(nwid))
            loaded += 1
        if loaded:
            log.info("zerotier: %d members online before the restart get pushes of the current state", loaded)
            self._dirty_event.set()

    # -------------------------------------------------------------- the cluster's own planet

    async def _planet_loop(self) -> None:
        """Keeps the replicated planet following the cluster: every node records its own root identity and
        endpoints; the leader makes sure there is a planet key, and commits a newer planet (same id, signed with
        the key the current one names) whenever the roots it should list differ from the ones it lists."""
        refused: str | None = None  # this node's record, as last refused (an invalid config: said once)
        while True:
            await asyncio.sleep(PLANET_CHECK_S)
            try:
                machine = self.ctl.machine()
                refused = await self._record_root(machine, refused)
                if self.ctl.node.is_leader:
                    await self._lead_planet(machine)
            except (ClusterUnavailable, Overloaded, OutcomeUnknown) as e:
                log.debug("zerotier: planet upkeep deferred: %s", e)

    async def _auto_endpoints(self) -> list[str]:
        """zerotier.endpoints: [auto]: the IP a majority of the other voters see this node at, with the bind port,
        as a distributed dynamic DNS (no outside service). Without such a majority, the endpoints stay as they
        were."""
        others = [v for v in self.ctl.model.membership.voters if v != self.ctl.node_id]
        if not others:
            return self.root_endpoints
        votes = await self.ctl.mesh.seen_as(others)
        endpoint, problem = auto_endpoint(votes, len(others), self.bind[1])
        if endpoint is None:
            if problem and problem != self._auto_problem:
                log.warning("zerotier: endpoints auto: %s", problem)
            self._auto_problem = problem
            return self.root_endpoints
        self._auto_problem = None
        if [endpoint] != self.root_endpoints:
            log.info("zerotier: endpoints auto: a majority of the other nodes see this one at %s: endpoint %s",
                     endpoint.rpartition("/")[0], endpoint)
        return [endpoint]

    async def _record_root(self, machine: Any, refused: str | None) -> str | None:
        if self.cfg.endpoints == [ENDPOINTS_AUTO]:
            self.root_endpoints = await self._auto_endpoints()
            self.switch.self_endpoints.update(_sockaddrs(self.root_endpoints))
        want = {"identity": str(self.root_identity.public_only()), "endpoints": self.root_endpoints}
        have = machine.root_records().get(self.ctl.node_id)
        if have is not None and have.get("identity") == want["identity"] and \
                sorted(have.get("endpoints", [])) == sorted(want["endpoints"]):
            return None
        key = repr(want)
        if key == refused:
            return refused
        rid = f"zt-root-{uuid.uuid4().hex}"
        try:
            cmd = build_zt_root(rid, self.ctl.now_ms(), self.ctl.node_id, want["identity"], want["endpoints"])
        except ValidationError as e:
            log.error("zerotier: this node cannot be a root of the cluster's planet: %s", e)
            return key
        result = await self.ctl.submit(cmd, rid)
        if not result.ok:
            log.error("zerotier: this node's root record was refused: %s %s", result.error, result.message)
            return key
        if result.value and result.value.get("changed") is not False:
            log.info("zerotier: root %010x of the cluster's planet at %s", self.root_identity.address,
                     ", ".join(want["endpoints"]) or "(no endpoints: not listed)")
        return None

    async def _lead_planet(self, machine: Any) -> None:
        key = machine.planet_key()
        if key is None:  # a cluster initialised before planets: the first leader that sees it makes the key
            pub, priv = new_planet_key()
            rid = "planet-init"  # one fixed id: however many leaders try, it is made once
            await self.ctl.submit(build_planet_init(rid, self.ctl.now_ms(), priv, new_world_id()), rid)
            return
        world_id, pub, priv = key
        raw = machine.planet()
        current = World.decode(raw) if raw is not None else None
        voters = self.ctl.model.membership.voters
        roots = desired_roots(machine.root_records(), voters, current=current)
        world = next_world(current, roots, world_id, pub, priv, self.ctl.now_ms())
        if world is None:
            return
        rid = f"planet-{world.timestamp}"
        result = await self.ctl.submit(build_planet_set(rid, self.ctl.now_ms(), world.encode()), rid)
        if result.ok:
            log.info("zerotier: the cluster's planet %016x is now at %d with roots %s", world_id, world.timestamp,
                     ", ".join(f"{r.identity.address:010x}" for r in world.roots))
        else:
            log.warning("zerotier: planet update refused: %s %s", result.error, result.message)

    # -------------------------------------------------------------- handing members over to other nodes

    def _served(self, now_ms: int) -> set[int]:
        """Members whose requests come to this node (they ask every 60 s) and that it has not handed over: the
        load that balancing moves."""
        return {address for (_, address), o in self._online.items()
                if now_ms - o.seen <= SERVED_MS and address not in self._redirected}

    async def _serve_load(self, peer: str, body: Any) -> dict[str, Any]:
        return {"served": len(self._served(self.ctl.now_ms())) if self.endpoint is not None else None}

    async def _loads(self) -> dict[str, int]:
        """Members served by each other node that serves ZeroTier (asked over the control plane)."""
        mesh = self.ctl.mesh
        peers = list(mesh.connected())

        async def ask(peer: str) -> int | None:
            try:
                reply = await mesh.call(peer, LOAD_METHOD, {}, timeout=1.0)
            except Exception:  # down, no such method (no ZeroTier endpoint), slow: not a candidate
                return None
            served = reply.get("served") if isinstance(reply, dict) else None
            return served if isinstance(served, int) and served >= 0 else None
        answers = await asyncio.gather(*(ask(p) for p in peers))
        return {p: n for p, n in zip(peers, answers) if n is not None}

    async def _balance_loop(self) -> None:
        """The recipient decides, as in ZeroTier's clustered roots: a node serving more than its share of the
        members hands the surplus to the least busy nodes' endpoints (PUSH_DIRECT_PATHS, cluster redirect).
        Every node answers for the same controller identity, so the member simply goes on at the other one."""
        while True:
            await asyncio.sleep(BALANCE_CHECK_S)
            try:
                await self._balance()
            except ClusterUnavailable:
                continue

    async def _balance(self) -> None:
        now = self.ctl.now_ms()
        for address, (at, _) in list(self._redirected.items()):
            if now - at > REDIRECT_COOLDOWN_MS:
                del self._redirected[address]
                self.switch.handoff.pop(address, None)
        # Members handed over lately are no longer ours, and count at their new node until it has seen them
        # (their next request, within a minute): counted twice at worst, which only makes us hand over less.
        served = self._served(now)
        if len(served) <= BALANCE_SLACK and not self._redirected:
            return
        loads = await self._loads()
        for address, (_, peer) in list(self._redirected.items()):
            if peer not in loads:  # its node is gone or does not answer: we serve it again
                del self._redirected[address]
                self.switch.handoff.pop(address, None)
        if len(served) <= BALANCE_SLACK:
            return
        for at, peer in self._redirected.values():
            if peer in loads and now - at <= SERVED_MS:
                loads[peer] += 1
        records = self.ctl.machine().root_records()
        targets: dict[str, tuple[str, int]] = {}
        for peer in loads:
            eps = [ep for ep in _sockaddrs((records.get(peer) or {}).get("endpoints") or [])
                   if (6 if ":" in ep[0] else 4) in self.node.families]
            if eps:
                targets[peer] = eps[0]
        if not targets:
            return
        total = len(served) + sum(loads[p] for p in targets)
        fair = -(-total // (len(targets) + 1))
        surplus = len(served) - fair - BALANCE_SLACK
        if surplus <= 0:
            return
        assert self.endpoint is not None
        mono = self.endpoint.now()
        moved: dict[str, int] = {}
        for address in sorted(served)[:min(surplus, MAX_REDIRECTS)]:
            peer = min(targets, key=lambda p: (loads[p] + moved.get(p, 0), p))
            if self.node.redirect(address, targets[peer], mono):
                self._redirected[address] = (now, peer)
                self.switch.handoff[address] = targets[peer]
                moved[peer] = moved.get(peer, 0) + 1
        self.endpoint.flush()
        if moved:
            log.info("zerotier: serving %d members, fair share %d: handed %s", len(served), fair,
                     ", ".join(f"{n} to {p}" for p, n in sorted(moved.items())))

    async def _save_loop(self) -> None:
        while True:
            for _ in range(3):
                await asyncio.sleep(10)
                self._expire(self.ctl.now_ms())  # member.offline events within ~10 s of ONLINE_MS
                self._root_view()
            if self._registry_dirty:
                self._save_registry()

    def _expire(self, now_ms: int) -> None:
        """Forget members that have not asked for ONLINE_MS (no more pushes to them): they are offline here."""
        expired = [(k, o.seen) for k, o in self._online.items() if now_ms - o.seen > ONLINE_MS]
        for k, seen in expired:
            del self._online[k]
            self._event("member.offline", k, lastSeenMs=seen)
            self._registry_dirty = True

    def _root_view(self) -> None:
        """The root's view of member traffic, as propagated events (every node that is a root sees every member
        that HELLOs it: the primary report is the controller view above, from the node the member asks)."""
        if self.switch is None or self.endpoint is None or self.identity is None:
            return
        now = self.switch.root.direct_peers(self.endpoint.now()) - {self.identity.address}
        for address in sorted(now - self._root_seen):
            self.ctl.events.emit("zerotier", "member.online", propagated=True, view="root",
                                 memberId=f"{address:010x}")
        for address in sorted(self._root_seen - now):
            self.ctl.events.emit("zerotier", "member.offline", propagated=True, view="root",
                                 memberId=f"{address:010x}")
        self._root_seen = now

    def _event(self, event_type: str, key: tuple[int, int], **fields: Any) -> None:
        """A zerotier event about one member as this node sees it. The node a member's requests come to reports
        it; once the member is handed over to another node, this node's view is only propagated (that node
        reports)."""
        nwid, address = key
        self.ctl.events.emit("zerotier", event_type, propagated=address in self._redirected, view="controller",
                             networkId=f"{nwid:016x}", memberId=f"{address:010x}", **fields)

    async def _run(self) -> None:
        """Waits for the controller identity (created with the cluster), then serves and pushes."""
        while self.identity is None:
            try:
                ident = self.ctl.machine().controller_identity()
            except ClusterUnavailable:
                ident = None
            if ident is not None:
                self.identity = ident
                break
            info = self._info()
            self.problem = ("the cluster is not initialised yet" if info is None else
                            "this cluster's controller address is not a ZeroTier identity (initialised by an "
                            "older hactl): restore its backup into a new cluster to serve ZeroTier nodes")
            await asyncio.sleep(0.5)
        # One socket, two identities: the cluster's controller (upstreams: the configured planet, by default the
        # cluster's own) and this node's root of the cluster's own planet (served once the cluster has one).
        own = self._cluster_planet() or _no_planet()
        self.node = Node(self.identity, self.planet or own)
        root = Root(self.root_identity, own)
        self.switch = Switch(root, self.node, self_endpoints={self.bind, *_sockaddrs(self.root_endpoints)})
        # Two validation threads: the native hash releases the GIL. Ticks every 250 ms keep WHOIS retries at the
        # 500 ms cadence ZeroTier nodes use.
        self.endpoint = Endpoint(self.switch, self.bind, on_request=self._on_request, validation_workers=2,
                                 tick_ms=250)
        try:
            await self.endpoint.start()
        except OSError as e:
            self.problem = f"cannot bind UDP {self.bind[0]}:{self.bind[1]}: {e}"
            log.critical("zerotier endpoint: %s; this node cannot serve ZeroTier members, stopping it", self.problem)
            self.ctl.fail(f"zerotier endpoint: {self.problem}")
            return
        self.problem = None
        log.info("zerotier endpoint %s:%d answers as controller %010x", *self.endpoint.local_address,
                 self.identity.address)
        self._load_registry()
        self._tasks.append(asyncio.create_task(self._save_loop(), name="zerotier-registry"))
        self._tasks.append(asyncio.create_task(self._planet_loop(), name="zerotier-planet"))
        if self.cfg.balance:
            self._tasks.append(asyncio.create_task(self._balance_loop(), name="zerotier-balance"))
        await self._push_loop()

    def _cluster_planet(self) -> World | None:
        try:
            raw = self.ctl.machine().planet()
        except ClusterUnavailable:
            return None
        return World.decode(raw) if raw is not None else None

    def _info(self) -> dict[str, Any] | None:
        try:
            return self.ctl.machine().cluster_info()
        except ClusterUnavailable:
            return None

    def status(self) -> dict[str, Any]:
        ep = self.endpoint
        out: dict[str, Any] = {"address": f"{self.identity.address:010x}" if self.identity else None,
                               "endpoint": f"{self.bind[0]}/{self.bind[1]}", "online": False, "problem": self.problem,
                               "root": {"address": f"{self.root_identity.address:010x}",
                                        "endpoints": self.root_endpoints}}
        if ep is not None:
            st = self.node.status(ep.now())
            out.update(online=bool(st.get("online")), roots=st.get("roots", []), stats=self.node.stats(),
                       root_stats=self.switch.root.stats(),
                       members_online=len(self._online), members_served=len(self._served(self.ctl.now_ms())),
                       configs_signed_by_workers=self.signed_by_workers)
        return out

    # -------------------------------------------------------------- requests

    def _on_request(self, req: ConfigRequest) -> None:
        """Requests are answered in batches: all that arrived in one pass of the event loop share one ReadIndex
        barrier (started after the last of them arrived) and one read transaction; only those that need a Raft
        write get a task of their own."""
        if len(self._pending) + self._writers >= MAX_HANDLERS:
            assert self.endpoint is not None
            self.node.count("busy")
            return
        self._pending.append(req)
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._start_batch)

    def _start_batch(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            self._spawn(self._answer_batch(batch))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._handlers.add(task)
        task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task) -> None:
        self._handlers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("zerotier: answering config requests failed: %r", task.exception(),
                      exc_info=task.exception())

    async def _barrier(self) -> bool:
        """True once this node has applied everything committed before the call; False without a leader."""
        node = self.ctl.node
        try:
            await node.read_barrier(timeout=BARRIER_TIMEOUT_S)
            return True
        except Exception:  # no leader, not running, timed out: serve in degraded mode
            return False

    def _read(self, nwid: int, address: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        with self.ctl.machine().reader() as r:
            n, a = format_nwid(nwid), format_address(address)
            return r.get_network(n), r.get_member(n, a)

    async def _answer_batch(self, batch: list[ConfigRequest]) -> None:
        ep = self.endpoint
        assert ep is not None
        fresh = await self._barrier()
        due: list[_Due] = []
        try:
            with self.ctl.machine().reader() as r:
                for req in batch:
                    n, a = format_nwid(req.request.network_id), format_address(req.source)
                    network = r.get_network(n)
                    self._answer(req, fresh, network, r.get_member(n, a) if network is not None else None, due)
        except ClusterUnavailable:
            self.node.count("unavailable")
        ep.flush()  # (the errors: they need no signature)
        if due:
            await self._sign_and_send(due)

    def _answer(self, req: ConfigRequest, fresh: bool, network: dict[str, Any] | None,
                member: dict[str, Any] | None, due: list["_Due"]) -> None:
        ep = self.endpoint
        assert ep is not None
        node = self.node
        nwid, address = req.request.network_id, req.source
        if network is None:
            if fresh:
                node.answer_error(req, ErrorCode.OBJ_NOT_FOUND, ep.now())
            return
        identity_str = str(req.identity.public_only())
        if member is not None and member.get("identity") and member["identity"] != identity_str:
            log.warning("zerotier: member %010x of %016x presents an identity other than the one on record; "
                        "refused (delete the member through the API if it really was re-keyed)", address, nwid)
            if fresh:
                node.answer_error(req, ErrorCode.NETWORK_ACCESS_DENIED, ep.now())
                self._event("access.denied", (nwid, address), reason="identity differs from the one on record")
            return
        versions = versions_of(req.request.metadata)
        if needs_write(network, member, versions) and (
                member is None or self._futile.get((nwid, address)) != config_revision(network, member)):
            if not fresh:
                node.count("no_leader_write")
            elif self._writers >= MAX_WRITERS:
                node.count("busy")
            else:
                self._writers += 1
                self._spawn(self._answer_after_write(req, network, member, identity_str, versions))
            return
        assert member is not None
        self._reply(req, fresh, network, member, versions, identity_str, due)

    async def _answer_after_write(self, req: ConfigRequest, network: dict[str, Any], member: dict[str, Any] | None,
                                  identity_str: str, versions: Versions) -> None:
        try:
            member = await self._write(req, network, member, identity_str, versions)
        finally:
            self._writers -= 1
        if member is None:
            return
        network, _ = self._read(req.request.network_id, req.source)  # as of our write (applied here)
        if network is not None:
            due: list[_Due] = []
            self._reply(req, True, network, member, versions, identity_str, due)
            assert self.endpoint is not None
            self.endpoint.flush()
            if due:
                await self._sign_and_send(due)

    def _reply(self, req: ConfigRequest, fresh: bool, network: dict[str, Any], member: dict[str, Any],
               versions: Versions, identity_str: str, due: list["_Due"]) -> None:
        """Answer an error now, or add the config to sign to ``due``."""
        ep = self.endpoint
        assert ep is not None
        entry = self._remember(req, versions)
        if not member.get("authorized"):
            if fresh:
                self.node.answer_error(req, ErrorCode.NETWORK_ACCESS_DENIED, ep.now())
                self._event("access.denied", (req.request.network_id, req.source), reason="not authorized")
            return
        rev = config_revision(network, member)
        if not fresh and req.request.revision and rev < req.request.revision:
            self.node.count("stale_without_leader")  # an answer now could be older than what it holds
            return
        due.append(_Due(req, entry, network, member, SignJob(req.request.network_id, req.source, identity_str,
                                                              versions.rules_engine > 0, self.ctl.now_ms())))

    async def _sign_and_send(self, due: list["_Due"]) -> None:
        """Sign the configs (in the API workers when there are any: see hactl.workers.netconf) and send them."""
        ident, ep = self.identity, self.endpoint
        assert ident is not None and ep is not None
        answers: list[tuple[int, list[Any]] | None] | None = None
        workers = self.ctl.workers
        if workers is not None:
            signed = await workers.sign([d.job for d in due])  # None: no worker could (the node signs)
            if signed is not None:
                self.signed_by_workers += len(due)
                answers = [None if s is None else (s.revision, [EncodedChunk(c) for c in s.chunks])
                           for s in signed]
        if answers is None:
            answers = [(config_revision(d.network, d.member),
                        signed_config(d.network, d.member, d.req.identity, ident, d.job.now_ms, d.job.rules_engine))
                       for d in due]
        now = ep.now()
        for d, answer in zip(due, answers):
            if answer is None:
                self.node.count("declined_by_worker")
                continue
            rev, chunks = answer
            self.node.answer_config(d.req, chunks, now)
            d.entry.sent = rev
            self._event("config.sent", (d.req.request.network_id, d.req.source), revision=rev, why="request")
        ep.flush()

    def _reply_error(self, req: ConfigRequest, code: ErrorCode) -> None:
        assert self.endpoint is not None
        self.node.answer_error(req, code, self.endpoint.now())
        self.endpoint.flush()

    def _write_allowed(self, req: ConfigRequest) -> bool:
        source = req.path[0] if req.path else f"{req.source:010x}"
        now = time.monotonic()
        b = self._buckets.get(source)
        if b is None:
            b = self._buckets[source] = _Bucket(now)
            if len(self._buckets) > MAX_WRITE_SOURCES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
            b.tokens = min(WRITE_BURST, b.tokens + (now - b.stamp) * WRITE_RATE)
            b.stamp = now
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True

    async def _write(self, req: ConfigRequest, network: dict[str, Any], member: dict[str, Any] | None,
                     identity_str: str, v: Versions) -> dict[str, Any] | None:
        assert self.endpoint is not None
        node = self.node
        if not self._write_allowed(req):
            node.count("write_rate")
            return None
        rid = f"zt-{uuid.uuid4().hex}"
        cmd = build_member_request(rid, self.ctl.now_ms(), nwid=network["id"], address=f"{req.source:010x}",
                                   identity=identity_str, vMajor=v.major, vMinor=v.minor, vRev=v.rev,
                                   vProto=v.proto)
        cmd = with_origin(cmd, {"kind": "zerotier", "member": f"{req.source:010x}", "node": self.ctl.node_id,
                                "path": req.path[0] if req.path else "relayed"})
        try:
            result: Result = await self.ctl.submit(cmd, rid)
        except (ClusterUnavailable, Overloaded, OutcomeUnknown) as e:
            node.count("write_unavailable")
            log.debug("zerotier: member.request for %010x not applied: %s", req.source, e)
            return None
        if result.ok:
            value: dict[str, Any] = result.value or {}
            if member is not None and value.get("revision") == member.get("revision"):
                # Nothing changed (e.g. the pool is full): do not write again until something else changes.
                self._futile[(int(network["id"], 16), req.source)] = config_revision(network, value)
                if len(self._futile) > MAX_ONLINE:
                    self._futile.clear()
            return value
        if result.error == "CONFLICT":
            self._reply_error(req, ErrorCode.NETWORK_ACCESS_DENIED)
            self._event("access.denied", (int(network["id"], 16), req.source), reason=result.message or "conflict")
        elif result.error == "NOT_FOUND":
            self._reply_error(req, ErrorCode.OBJ_NOT_FOUND)
        else:
            node.count("write_refused")
            log.warning("zerotier: member.request for %010x refused: %s %s", req.source, result.error,
                        result.message)
        return None

    def _remember(self, req: ConfigRequest, v: Versions) -> Online:
        key = (req.request.network_id, req.source)
        entry = self._online.get(key)
        now = self.ctl.now_ms()
        if entry is None or now - entry.seen > ONLINE_MS:
            self._event("member.online", key, path=req.path[0] if req.path else "relayed",
                        version=f"{v.major}.{v.minor}.{v.rev}")
        if entry is None:
            self._registry_dirty = True
            entry = self._online[key] = Online(req.identity.public_only(), v.rules_engine > 0, now)
            if len(self._online) > MAX_ONLINE:
                self._online.popitem(last=False)
        else:
            entry.seen, entry.rules_engine = now, v.rules_engine > 0
            self._online.move_to_end(key)
        return entry

    # -------------------------------------------------------------- pushes

    def on_applied(self, commands: list[bytes]) -> None:
        """Called from the Raft I/O thread with the commands of an applied batch that succeeded."""
        loop = getattr(self, "_loop", None)
        if loop is not None and commands:
            loop.call_soon_threadsafe(self._mark, commands)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _mark(self, commands: list[bytes]) -> None:
        for data in commands:
            try:
                cmd = decode(data)
            except CommandError:
                continue
            kind = cmd.TYPE
            if kind in ("network.update", "network.delete"):
                self._dirty_networks.add(int(cmd.nwid, 16))
            elif kind.startswith("member."):
                key = (int(cmd.nwid, 16), int(cmd.address, 16))
                self._dirty_members.add(key)
                changes = getattr(cmd, "changes", None) or {}
                if (kind == "member.delete" or (kind == "member.authorize" and not cmd.authorized)
                        or changes.get("authorized") is False):
                    self._revoked.add(key)
            elif kind == "restore.commit":
                self._dirty_networks.update(n for n, _ in self._online)
            elif kind == "planet.set" and self.switch is not None:
                world = self._cluster_planet()
                if world is not None:
                    self.switch.set_planet(world)
                    self.ctl.events.emit("zerotier", "planet.updated", propagated=not self.ctl.node.is_leader,
                                         worldId=f"{world.id:016x}", timestamp=world.timestamp,
                                         roots=[{"identity": f"{r.identity.address:010x}", "endpoints": [
                                             str(e) for e in r.stable_endpoints]} for r in world.roots])
                    if self.planet is None:  # zerotier.planet: own
                        self.node.set_planet(world)
        if self._dirty_networks or self._dirty_members or self._revoked:
            self._dirty_event.set()

    async def _push_loop(self) -> None:
        while True:
            await self._dirty_event.wait()
            await asyncio.sleep(PUSH_DEBOUNCE_S)  # a burst of writes becomes one round
            self._dirty_event.clear()
            networks, members, revoked = self._dirty_networks, self._dirty_members, self._revoked
            self._dirty_networks, self._dirty_members, self._revoked = set(), set(), set()
            if not await self._barrier():
                # Committed changes, but no leader to confirm we see the latest: try again shortly.
                self._dirty_networks |= networks
                self._dirty_members |= members
                self._revoked |= revoked
                await asyncio.sleep(1.0)
                self._dirty_event.set()
                continue
            try:
                self._push(networks, members, revoked)
            except ClusterUnavailable:
                return

    def _push(self, networks: set[int], members: set[tuple[int, int]], revoked: set[tuple[int, int]]) -> None:
        ep, ident = self.endpoint, self.identity
        assert ep is not None and ident is not None
        now_ms = self.ctl.now_ms()
        self._expire(now_ms)
        targets = [k for k in self._online if k[0] in networks or k in members]
        pushed = 0
        machine = self.ctl.machine()
        networks_read: dict[int, dict[str, Any] | None] = {}  # one read per network, not one per member
        with machine.reader() as r:
            for nwid, address in targets:
                entry = self._online[(nwid, address)]
                if nwid not in networks_read:
                    networks_read[nwid] = r.get_network(format_nwid(nwid))
                network = networks_read[nwid]
                member = r.get_member(format_nwid(nwid), format_address(address)) if network else None
                if network is None or member is None or not member.get("authorized") \
                        or member.get("identity") != str(entry.identity):
                    continue
                rev = config_revision(network, member)
                if rev == entry.sent:
                    continue  # it has this one already (typically: the answer to the request that admitted it)
                chunks = signed_config(network, member, entry.identity, ident, now_ms, entry.rules_engine)
                if self.node.push_config(address, chunks, ep.now()):
                    entry.sent = rev
                    pushed += 1
                    self._event("config.sent", (nwid, address), revision=rev, why="push")
        revocations = 0
        for nwid, target in revoked:
            others = [a for (n, a) in self._online if n == nwid and a != target]
            if not others:
                continue
            rev = Revocation(int.from_bytes(os.urandom(4), "big"), nwid, target, now_ms).sign(ident)
            payload = network_credentials_payload([rev])
            revocations += sum(self.node.push_credentials(a, payload, ep.now()) for a in others)
        ep.flush()
        if pushed or revocations:
            log.info("zerotier: pushed %d configs and %d revocations to members online here", pushed, revocations)
