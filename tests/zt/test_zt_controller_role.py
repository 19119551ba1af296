"""The controller role end to end inside one process: a real Controller (Raft, ctrl.db, API) with its ZeroTier
endpoint on 127.0.0.1, and members speaking the protocol over real UDP sockets with our codec (the libzt tests in
test_libzt_controller.py do the same against real ZeroTier; these cover what libzt cannot report: ERROR codes,
revocations, signatures, the degraded mode).

Our own nodes accept loopback; real ZeroTier would not (so the config validator refuses a loopback bind, and
these tests build their Config objects directly, as every in-process test does)."""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp

from hactl.server.controller import Controller
from hactl.zt.dictionary import Dictionary
from hactl.zt.identity import Identity
from hactl.zt.inetaddress import InetAddress, Reader
from hactl.zt.netconf import assemble
from hactl.zt.packet import Cipher, ErrorCode, Packet, Verb, armor, dearmor, new_packet_id
from hactl.zt.revocation import Revocation
from hactl.zt.verbs import ConfigChunk, Error, Hello, NetworkConfigRequest, Ok, OkHello, OkNetworkConfig
from hactl.zt.world import Root, World, WorldType
from tests.api.api_helpers import initialised, make_configs, start_initialised, until
from tests.zt import vectors as v

LOCAL = "127.0.0.1"
METADATA = b"v=0000000000000007\nvend=0000000000000001\npv=000000000000000c\nmajv=0000000000000001\n" \
           b"minv=0000000000000008\nrevv=0000000000000004\nrevr=0000000000000001\n"
POOL_NET = {"name": "lab", "private": True, "v4AssignMode": {"zt": True},
            "ipAssignmentPools": [{"ipRangeStart": "10.147.17.10", "ipRangeEnd": "10.147.17.250"}],
            "routes": [{"target": "10.147.17.0/24", "via": None}]}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


def local_planet(path: Path) -> Path:
    """A planet whose one root sits on a local port nobody answers on: the endpoint must never reach out beyond
    this machine (the default planet would be ZeroTier's public roots)."""
    root = Identity.from_string(v.KNOWN_GOOD_IDENTITY)
    world = World.make(WorldType.PLANET, 0xC0FFEE, 1, root.public_key,
                       [Root(root.public_only(), (InetAddress(ipaddress.ip_address(LOCAL), free_udp_port()),))],
                       sign_with=root.private_key or b"")
    path.write_bytes(world.encode())
    return path


class Member(asyncio.DatagramProtocol):
    """A ZeroTier member built from our codec, on its own UDP socket."""

    def __init__(self, identity: Identity, controller: Identity, endpoint: tuple[str, int]) -> None:
        self.identity, self.controller, self.endpoint = identity, controller, endpoint
        self.key = identity.agree(controller)
        self.inbox: asyncio.Queue[Packet] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            p = dearmor(data, self.key)
        except Exception:
            return  # not a packet from the controller
        if p.verb == Verb.HELLO:
            # What a real member does: answer, which is how the controller learns a path to us.
            h = Hello.decode(p.payload, self.key, p.packet_id)
            ok = OkHello(p.packet_id, h.timestamp, 12, 1, 8, 4, InetAddress(ipaddress.ip_address(addr[0]), addr[1]))
            self.send(Verb.OK, ok.encode(), to=addr)
            return
        self.inbox.put_nowait(p)

    def send(self, verb: int, payload: bytes, *, cipher: int = Cipher.POLY1305_SALSA2012,
             pid: bytes | None = None, to: Any = None) -> bytes:
        pid = pid or new_packet_id()
        assert self.transport is not None
        self.transport.sendto(armor(Packet(pid, self.controller.address, self.identity.address, verb, payload,
                                           cipher=cipher), self.key), to or self.endpoint)
        return pid

    async def hello(self) -> None:
        pid = new_packet_id()
        h = Hello(12, 1, 8, 4, 1, self.identity.public_only(), InetAddress(ipaddress.ip_address(LOCAL),
                                                                            self.endpoint[1]), 0xC0FFEE, 1, moons=())
        self.send(Verb.HELLO, h.encode(self.key, pid), cipher=Cipher.POLY1305_NONE, pid=pid)
        await self.next(lambda p: p.verb == Verb.OK and Ok.decode(p.payload).in_re_packet_id == pid, 30)

    async def next(self, match: Any, timeout: float = 10) -> Packet | None:
        async def wait() -> Packet:
            while True:
                p = await self.inbox.get()
                if match(p):
                    return p
        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            return None

    async def request(self, nwid: int, timeout: float = 10, revision: int = 0) -> tuple[str, Any] | None:
        """("ok", config Dictionary) or ("error", code), or None when nothing came back in time."""
        pid = self.send(Verb.NETWORK_CONFIG_REQUEST, NetworkConfigRequest(nwid, METADATA, revision, 0).encode())

        def answers(p: Packet) -> bool:
            if p.verb == Verb.OK:
                ok = Ok.decode(p.payload)
                return ok.in_re_verb == Verb.NETWORK_CONFIG_REQUEST and ok.in_re_packet_id == pid
            return p.verb == Verb.ERROR and Error.decode(p.payload).in_re_packet_id == pid
        p = await self.next(answers, timeout)
        if p is None:
            return None
        if p.verb == Verb.ERROR:
            return "error", Error.decode(p.payload).code
        chunks = [OkNetworkConfig.decode(p.payload).chunk]
        while sum(len(c.data) for c in chunks) < chunks[0].total_length:
            more = await self.next(lambda q: q.verb == Verb.OK, 5)
            assert more is not None, "config chunks missing"
            chunks.append(OkNetworkConfig.decode(more.payload).chunk)
        return "ok", self.config(chunks)

    async def pushed(self, timeout: float = 10) -> Dictionary | None:
        p = await self.next(lambda q: q.verb == Verb.NETWORK_CONFIG, timeout)
        if p is None:
            return None
        chunks = [ConfigChunk.decode(p.payload)]
        while sum(len(c.data) for c in chunks) < chunks[0].total_length:
            more = await self.next(lambda q: q.verb == Verb.NETWORK_CONFIG, 5)
            assert more is not None
            chunks.append(ConfigChunk.decode(more.payload))
        return self.config(chunks)

    def config(self, chunks: list[ConfigChunk]) -> Dictionary:
        for c in chunks:
            assert c.verify(self.controller.public_key), "config chunk not signed by the controller identity"
        d = Dictionary.parse(assemble(chunks))
        assert d.get_str("id") == f"{self.identity.address:010x}"
        return d


def ipv4s(config: Dictionary) -> list[str]:
    r, out = Reader(config.get("I") or b""), []
    while r.remaining:
        a = InetAddress.read(r)
        if a.ip is not None and a.ip.version == 4:
            out.append(str(a.ip))
    return out


async def open_member(identity: Identity, controller: Identity, endpoint: tuple[str, int]) -> Member:
    loop = asyncio.get_running_loop()
    m = Member(identity, controller, endpoint)
    transport, _ = await loop.create_datagram_endpoint(lambda: m, local_addr=(LOCAL, 0))
    m.transport = transport
    await m.hello()
    return m


class Api:
    def __init__(self, c: Controller) -> None:
        self.c = c
        token = Path(c.cfg.api.token_file).read_text().strip()
        host, _, port = c.cfg.api.listen.rpartition(":")
        self.session = aiohttp.ClientSession(f"http://{host}:{port}", headers={"X-ZT1-Auth": token})

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, path, json=body) as r:
            data = await r.json()
            assert r.status == 200, (method, path, r.status, data)
            return data


def run(test: Any, *args: Any) -> None:
    asyncio.run(asyncio.wait_for(test(*args), 180))


@contextlib.asynccontextmanager
async def single(tmp_path: Path, workers: int = 0) -> AsyncIterator[tuple[Controller, Api]]:
    cfg = make_configs(tmp_path, ("n1",))[0]
    cfg.workers = workers
    cfg.zerotier.bind = f"{LOCAL}:{free_udp_port()}"
    cfg.zerotier.planet = str(local_planet(tmp_path / "planet"))
    c = await start_initialised(cfg)
    api = Api(c)
    try:
        await until(lambda: c.zerotier.endpoint is not None, "the zerotier endpoint is up")
        yield c, api
    finally:
        await api.session.close()
        await c.stop()


def endpoint_of(c: Controller) -> tuple[str, int]:
    return c.zerotier.endpoint.local_address


def test_join_refused_until_authorized_then_pushed_and_revoked(tmp_path: Path) -> None:
    run(join_refused_until_authorized_then_pushed_and_revoked, tmp_path)


async def join_refused_until_authorized_then_pushed_and_revoked(tmp_path: Path) -> None:
    async with single(tmp_path) as (c, api):
        ctl = c.model.machine.controller_identity()
        assert ctl is not None and f"{ctl.address:010x}" == initialised(c)["address"]
        status = await api.call("GET", "/status")
        assert status["zerotier"]["address"] == status["address"] == f"{ctl.address:010x}"
        net = await api.call("POST", f"/controller/network/{ctl.address:010x}______", POOL_NET)
        nwid = int(net["id"], 16)
        a_id, b_id = Identity.generate(), Identity.from_string(v.KNOWN_GOOD_IDENTITY)
        a = await open_member(a_id, ctl, endpoint_of(c))
        b = await open_member(b_id, ctl, endpoint_of(c))

        # A network of this controller that does not exist: OBJ_NOT_FOUND.
        assert await a.request(nwid + 1) == ("error", ErrorCode.OBJ_NOT_FOUND)
        # A network of another controller: no answer at all (ZeroTier's controller ignores them too).
        assert await a.request(0x1122334455000001, timeout=1.5) is None
        assert c.zerotier.status()["stats"].get("dropped.foreign_network", 0) >= 1

        # Unknown members are recorded, unauthorized, with what they reported, and refused.
        assert await a.request(nwid) == ("error", ErrorCode.NETWORK_ACCESS_DENIED)
        rec = await api.call("GET", f"/controller/network/{net['id']}/member/{a_id.address:010x}")
        assert rec["authorized"] is False and rec["identity"] == str(a_id.public_only())
        assert (rec["vMajor"], rec["vMinor"], rec["vRev"], rec["vProto"]) == (1, 8, 4, 12)
        assert rec["ipAssignments"] == []
        await asyncio.sleep(1.1)  # one request per member and network per second
        assert await b.request(nwid) == ("error", ErrorCode.NETWORK_ACCESS_DENIED)

        # Authorizing through the API pushes the config to the member at once (it asked recently).
        await api.call("POST", f"/controller/network/{net['id']}/member/{a_id.address:010x}", {"authorized": True})
        pushed = await a.pushed(timeout=10)
        assert pushed is not None, "no config pushed after authorization"
        rec = await api.call("GET", f"/controller/network/{net['id']}/member/{a_id.address:010x}")
        assert rec["authorized"] and rec["lastAuthorizedTime"] > 0 and len(rec["ipAssignments"]) == 1
        assert ipv4s(pushed) == rec["ipAssignments"]
        assert pushed.get_int("nwid") == nwid and pushed.get("C") and pushed.get("R")
        # A request gets the same addresses and a revision not older than the push.
        kind, cfg = await a.request(nwid)
        assert kind == "ok" and ipv4s(cfg) == rec["ipAssignments"] and cfg.get_int("r") >= pushed.get_int("r")

        await api.call("POST", f"/controller/network/{net['id']}/member/{b_id.address:010x}", {"authorized": True})
        assert await b.pushed(timeout=10) is not None
        b_rec = await api.call("GET", f"/controller/network/{net['id']}/member/{b_id.address:010x}")
        assert b_rec["ipAssignments"] and set(b_rec["ipAssignments"]).isdisjoint(rec["ipAssignments"])

        # A route added through the API reaches both by push.
        routes = POOL_NET["routes"] + [{"target": "10.99.0.0/16", "via": "10.147.17.1"}]
        await api.call("POST", f"/controller/network/{net['id']}", {"routes": routes})
        for m in (a, b):
            d = await m.pushed(timeout=10)
            assert d is not None and b"\x04\x0a\x63\x00\x00\x00\x10" in (d.get("RT") or b""), "route not pushed"

        # Deauthorizing B revokes its certificate on A, signed by the controller; B is refused from then on.
        await api.call("POST", f"/controller/network/{net['id']}/member/{b_id.address:010x}", {"authorized": False})
        p = await a.next(lambda q: q.verb == Verb.NETWORK_CREDENTIALS, 10)
        assert p is not None, "no revocation sent to the other member"
        # Layout (brief 5.13): 00 | 0000 caps | 0000 tags | count | revocations | 0000
        assert p.payload[:5] == b"\x00\x00\x00\x00\x00" and p.payload[5:7] == b"\x00\x01"
        rev, _ = Revocation.from_bytes_prefix(p.payload, 7)
        assert rev.target == b_id.address and rev.network_id == nwid and rev.verify(ctl)
        await asyncio.sleep(1.1)
        assert await b.request(nwid) == ("error", ErrorCode.NETWORK_ACCESS_DENIED)
        for m in (a, b):
            assert m.transport is not None
            m.transport.close()


def test_public_network_authorizes_on_first_request(tmp_path: Path) -> None:
    run(public_network_authorizes_on_first_request, tmp_path)


async def public_network_authorizes_on_first_request(tmp_path: Path) -> None:
    async with single(tmp_path) as (c, api):
        ctl = c.model.machine.controller_identity()
        net = await api.call("POST", f"/controller/network/{ctl.address:010x}______", {**POOL_NET, "private": False})
        m = await open_member(Identity.from_string(v.KNOWN_GOOD_IDENTITY), ctl, endpoint_of(c))
        kind, cfg = await m.request(int(net["id"], 16))
        assert kind == "ok" and cfg.get_int("t") == 1 and len(ipv4s(cfg)) == 1
        rec = await api.call("GET", f"/controller/network/{net['id']}/member/{m.identity.address:010x}")
        assert rec["authorized"] and rec["lastAuthorizedCredentialType"] == "public"
        assert rec["ipAssignments"] == ipv4s(cfg)
        assert m.transport is not None
        m.transport.close()


def test_api_workers_sign_the_configs_and_the_node_signs_when_they_are_gone(tmp_path: Path) -> None:
    run(workers_sign_configs, tmp_path)


async def workers_sign_configs(tmp_path: Path) -> None:
    async with single(tmp_path, workers=2) as (c, api):
        await until(lambda: c.workers.counts()["running"] == 2, "both API workers serve")
        ctl = c.model.machine.controller_identity()
        net = await api.call("POST", f"/controller/network/{ctl.address:010x}______", {**POOL_NET, "private": False})
        nwid = int(net["id"], 16)
        members = [await open_member(Identity.generate(), ctl, endpoint_of(c)) for _ in range(4)]
        for m in members:  # the first request writes the member through Raft, then its config is signed
            kind, cfg = await m.request(nwid)  # (Member.config checks the controller's signature)
            assert kind == "ok" and len(ipv4s(cfg)) == 1
        await asyncio.sleep(1.1)  # one request per member and network per second
        before = c.zerotier.status()["configs_signed_by_workers"]
        answers = await asyncio.gather(*(m.request(nwid) for m in members))
        assert all(kind == "ok" for kind, _ in answers)
        assert c.zerotier.status()["configs_signed_by_workers"] >= before + len(members)
        # What a worker signed is what the node would: the same addresses as on record.
        for m, (_, cfg) in zip(members, answers):
            rec = await api.call("GET", f"/controller/network/{net['id']}/member/{m.identity.address:010x}")
            assert ipv4s(cfg) == rec["ipAssignments"] and cfg.get_int("r") > 0

        # Every worker killed: the node signs the configs itself until they are back (a restart takes over a
        # second: 0.5 s of backoff and a fresh interpreter), here for members it has not seen before.
        for pid in c.workers.details()["pids"].values():
            os.kill(pid, signal.SIGKILL)
        await until(lambda: c.workers.counts()["running"] == 0, "the node saw its workers die")
        by_workers = c.zerotier.status()["configs_signed_by_workers"]
        late = [await open_member(Identity.generate(), ctl, endpoint_of(c)) for _ in range(2)]
        answers = await asyncio.gather(*(m.request(nwid) for m in late))
        assert all(kind == "ok" for kind, _ in answers), answers
        assert c.zerotier.status()["configs_signed_by_workers"] == by_workers
        await until(lambda: c.workers.counts()["running"] == 2, "the workers are restarted", timeout=30)
        for m in members + late:
            assert m.transport is not None
            m.transport.close()


def test_without_quorum_authorized_members_keep_their_config_and_nothing_is_written(tmp_path: Path) -> None:
    run(without_quorum, tmp_path)


async def without_quorum(tmp_path: Path) -> None:
    cfg, peer_cfg = make_configs(tmp_path, ("n1", "n2"), apply_timeout_s=1.0)
    cfg.zerotier.bind = f"{LOCAL}:{free_udp_port()}"
    cfg.zerotier.planet = str(local_planet(tmp_path / "planet"))
    c, peer = Controller(cfg), Controller(peer_cfg)
    await c.start()
    await peer.start()
    api: Api | None = None
    members: list[Member] = []
    try:
        await until(lambda: initialised(c) and c.zerotier.endpoint is not None, "n1 initialised and serving")
        api = Api(c)
        await until(lambda: c.node.leader is not None, "a leader")
        ctl = c.model.machine.controller_identity()
        net = await api.call("POST", f"/controller/network/{ctl.address:010x}______", POOL_NET)
        nwid = int(net["id"], 16)
        a = await open_member(Identity.from_string(v.KNOWN_GOOD_IDENTITY), ctl, endpoint_of(c))
        members.append(a)
        assert await a.request(nwid) == ("error", ErrorCode.NETWORK_ACCESS_DENIED)
        await api.call("POST", f"/controller/network/{net['id']}/member/{a.identity.address:010x}",
                       {"authorized": True})
        await asyncio.sleep(1.1)
        kind, before = await a.request(nwid)
        assert kind == "ok"

        await peer.stop()
        peer = None
        await until(lambda: c.node.leader is None, "n1 has no leader", timeout=20)
        # The authorized member still gets its last committed config, same addresses, same revision.
        await asyncio.sleep(1.1)
        kind, after = await a.request(nwid, revision=before.get_int("r"))
        assert kind == "ok" and ipv4s(after) == ipv4s(before) and after.get_int("r") == before.get_int("r")
        # A member claiming a newer config than this node has is not answered (it would go backwards).
        await asyncio.sleep(1.1)
        assert await a.request(nwid, timeout=3, revision=before.get_int("r") + 1) is None
        # A new member needs a write: no answer (no refusal either: that could be wrong).
        b = await open_member(Identity.generate(), ctl, endpoint_of(c))
        members.append(b)
        assert await b.request(nwid, timeout=4) is None
        assert c.model.machine.get_member(net["id"], f"{b.identity.address:010x}") is None
    finally:
        for m in members:
            if m.transport is not None:
                m.transport.close()
        if api is not None:
            await api.session.close()
        for x in (peer, c):
            if x is not None:
                await x.stop()


def test_members_online_before_a_restart_get_pushes_after_it(tmp_path: Path) -> None:
    run(pushes_after_restart, tmp_path)


async def pushes_after_restart(tmp_path: Path) -> None:
    # A restore restarts every node; the members that were asking must still get the new state within seconds.
    cfg = make_configs(tmp_path, ("n1",))[0]
    cfg.zerotier.bind = f"{LOCAL}:{free_udp_port()}"
    cfg.zerotier.planet = str(local_planet(tmp_path / "planet"))
    c: Controller | None = await start_initialised(cfg)
    api = Api(c)
    m: Member | None = None
    try:
        await until(lambda: c.zerotier.endpoint is not None, "the zerotier endpoint is up")
        ctl = c.model.machine.controller_identity()
        net = await api.call("POST", f"/controller/network/{ctl.address:010x}______", POOL_NET)
        m = await open_member(Identity.from_string(v.KNOWN_GOOD_IDENTITY), ctl, endpoint_of(c))
        await api.call("POST", f"/controller/network/{net['id']}/member/{m.identity.address:010x}",
                       {"authorized": True})
        kind, _ = await m.request(int(net["id"], 16))
        assert kind == "ok"
        await api.session.close()
        await c.stop()
        c = None
        assert (tmp_path / "n1" / "zt" / "online.msgpack").stat().st_mode & 0o777 == 0o600

        c = await start_initialised(cfg)
        api = Api(c)
        await until(lambda: c.zerotier.endpoint is not None, "the zerotier endpoint is up again")
        await api.call("POST", f"/controller/network/{net['id']}", {"name": "renamed"})
        # (the restarted node may first push the state it started with; the rename must follow)
        names = []
        while (d := await m.pushed(timeout=10)) is not None and d.get_str("n") != "renamed":
            names.append(d.get_str("n"))
        assert d is not None, f"no push of the rename after the restart (pushes seen: {names})"
    finally:
        if m is not None and m.transport is not None:
            m.transport.close()
        await api.session.close()
        if c is not None:
            await c.stop()


def test_the_planet_follows_the_nodes_root_records(tmp_path: Path) -> None:
    run(planet_follows, tmp_path)


async def planet_follows(tmp_path: Path) -> None:
    """Each node records its root identity and endpoints; the leader commits a planet listing them, and a newer
    one (same id, signed with the key the previous one names) when a node moves."""
    cfg = make_configs(tmp_path, ("n1",))[0]
    cfg.zerotier.bind = f"{LOCAL}:{free_udp_port()}"
    cfg.zerotier.planet = str(local_planet(tmp_path / "planet"))
    cfg.zerotier.endpoints = ["203.0.113.7/9993"]
    c: Controller | None = await start_initialised(cfg)
    try:
        machine = c.model.machine
        await until(lambda: machine.planet() is not None, "the first planet", timeout=30)
        first = World.decode(machine.planet())
        world_id, pub, _ = machine.planet_key()
        root = c.zerotier.root_identity
        assert first.type == WorldType.PLANET and first.id == world_id and first.verify(pub)
        assert [(r.identity, [str(e) for e in r.stable_endpoints]) for r in first.roots] == \
            [(root.public_only(), ["203.0.113.7/9993"])]
        await c.stop()
        c = None

        cfg.zerotier.endpoints = ["203.0.113.8/9993"]  # the node moved
        c = await start_initialised(cfg)
        machine = c.model.machine
        assert c.zerotier.root_identity == root  # its identity stays with its data directory

        def moved() -> World | None:
            w = World.decode(machine.planet())
            return w if [str(e) for e in w.roots[0].stable_endpoints] == ["203.0.113.8/9993"] else None
        second = await until(moved, "a planet with the new address", timeout=30)
        assert second.id == first.id and second.timestamp > first.timestamp
        assert first.should_be_replaced_by(second)  # what a client holding the first one checks
    finally:
        if c is not None:
            await c.stop()


def test_by_default_the_controller_finds_its_members_through_the_clusters_own_roots(tmp_path: Path) -> None:
    run(own_planet_upstreams, tmp_path)


async def own_planet_upstreams(tmp_path: Path) -> None:
    """zerotier.planet: own (the default): once the cluster has its planet, the controller identity says HELLO to
    the roots it lists (here the node's own root, over the same socket) and is online through them: they are its
    only upstreams (ZeroTier's public roots are not among them)."""
    cfg = make_configs(tmp_path, ("n1",))[0]
    port = free_udp_port()
    cfg.zerotier.bind = f"{LOCAL}:{port}"
    # A root endpoint must be one clients can reach (no loopback); the switch delivers the controller's HELLOs
    # to it internally (an address of this node), so nothing goes to this documentation address.
    cfg.zerotier.endpoints = ["203.0.113.7/9993"]
    assert cfg.zerotier.planet == "own"
    c = await start_initialised(cfg)
    try:
        zt = c.zerotier
        root = f"{zt.root_identity.address:010x}"

        def online() -> dict | None:
            st = zt.status()
            return st if st["online"] and [r["address"] for r in st.get("roots", [])] == [root] else None
        st = await until(online, "the controller online through the cluster's own root", timeout=30)
        assert st["roots"][0]["endpoints"] == ["203.0.113.7/9993"], st
        assert st["root_stats"].get("rx.hello", 0) >= 1, st  # the controller's HELLO reached the root
        # ... and what /metrics reports of it
        samples = {(x.name, tuple(sorted(x.labels.items()))): x.value
                   for fam in c.metrics_collector().collect() for x in fam.samples}
        assert samples[("hactl_zerotier_online", ())] == 1
        assert samples[("hactl_zerotier_events_total", (("event", "rx.hello"), ("identity", "root")))] >= 1
    finally:
        await c.stop()
