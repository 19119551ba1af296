"""The mesh: mutual TLS, hellos and refusals, routers, raft messages over real gRPC on 127.0.0.1."""
from __future__ import annotations

import asyncio
import logging
import os

import pytest

from hactl.raft.types import ConfState, Entry, Message, MsgType, SnapshotMeta
from hactl.transport import handshake
from hactl.transport.channel import open_stream
from hactl.transport.errors import HandshakeError
from hactl.transport.frames import PROTOCOL_VERSION, Hello, Ping, Pong, RaftFrame, decode, encode
from hactl.transport.raft_transport import RaftTransport

from transport_helpers import until as _until, CLUSTER, TD, PkiFixture, run, start_cluster, stop_all, test_pki  # noqa: F401 (test_pki is a fixture)


def msg(frm: str, to: str, term: int = 1, **kw) -> Message:  # type: ignore[no-untyped-def]
    return Message(MsgType.APPEND, frm, to, term, **kw)


def test_three_nodes_exchange_raft_messages(test_pki: PkiFixture) -> None:
    async def main() -> None:
        meshes = await start_cluster(test_pki, ["n1", "n2", "n3"])
        try:
            got: dict[str, list[Message]] = {i: [] for i in meshes}
            transports = {}
            for i, m in meshes.items():
                t = RaftTransport(m)
                t.set_receiver(lambda msg, payload, i=i: got[i].append(msg))
                transports[i] = t
            sent = []
            for a in meshes:
                for b in meshes:
                    if a != b:
                        m = msg(a, b, term=3, log_term=2, index=7, commit=5,
                                entries=(Entry(8, 3, data=os.urandom(100)), Entry(9, 3, data=b"")),
                                context=b"ctx")
                        transports[a].send(m)
                        sent.append(m)
            await _until(lambda: sum(len(v) for v in got.values()) == len(sent))
            for m in sent:
                assert m in got[m.to]  # intact: every field equal, frm as sent
            # A message claiming another sender is dropped by the receiver.
            forged = msg("n3", "n2")
            assert meshes["n1"].send("n2", RaftFrame(forged.to_wire()))
            transports["n1"].send(msg("n1", "n2", term=9))  # a genuine one behind it
            await _until(lambda: any(x.term == 9 for x in got["n2"]))
            assert forged not in got["n2"]
            assert transports["n2"].stats["dropped_wrong_sender"] == 1
            # A malformed raft message inside a valid frame: dropped and counted, connection stays up.
            assert meshes["n1"].send("n2", RaftFrame([5, "n1"]))
            transports["n1"].send(msg("n1", "n2", term=10))
            await _until(lambda: any(x.term == 10 for x in got["n2"]))
            assert transports["n2"].stats["dropped_malformed"] == 1
            info = meshes["n1"].connected()
            assert set(info) == {"n2", "n3"}
            assert info["n2"].version == PROTOCOL_VERSION and info["n2"].addr == f"127.0.0.1:{meshes['n2'].port}"
            for t in transports.values():
                await t.close()
        finally:
            await stop_all(*meshes.values())
    run(main())



async def _raw_hello(test_pki: PkiFixture, port: int, ident_id: str, *, claimed: str | None = None,
                     cluster: str = CLUSTER, kind: str = "controller", hello_type: str = "controller"):  # type: ignore[no-untyped-def]
    stream = open_stream(f"127.0.0.1:{port}", test_pki.identity(ident_id, kind))
    await stream.write(encode(Hello(hello_type, claimed or ident_id, cluster, nonce=os.urandom(32),
                                    incarnation="x")))
    return stream


def test_refusals_are_logged_with_reasons(test_pki: PkiFixture, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hactl.transport")

    async def main() -> None:
        meshes = await start_cluster(test_pki, ["n1", "n2"])
        port = meshes["n1"].port
        try:
            # hello id differs from the certificate
            s = await _raw_hello(test_pki, port, "n3", claimed="n2")
            with pytest.raises(Exception) as e:
                await s.read()
            assert "hello says controller n2 but certificate is for n3" in str(e.value)
            await s.close()
            # other cluster id
            s = await _raw_hello(test_pki, port, "n3", cluster="cluster-b")
            with pytest.raises(Exception) as e:
                await s.read()
            assert "belongs to cluster 'cluster-b'" in str(e.value)
            await s.close()
            # a router certificate claiming to be a controller
            s = await _raw_hello(test_pki, port, "r9", kind="router", claimed="r9")
            with pytest.raises(Exception) as e:
                await s.read()
            assert "certificate is for a router" in str(e.value)
            await s.close()
            assert meshes["n1"].stats["refused"] == 3
            assert set(meshes["n1"].connected()) == {"n2"}

            # A node whose certificate comes from another CA: TLS itself refuses, the dialer logs why.
            stranger = test_pki.mesh("n3", ca="other-ca", peers={"n1": f"127.0.0.1:{port}"})
            await stranger.start()
            meshes["n1"].update_peers({"n2": f"127.0.0.1:{meshes['n2'].port}",
                                       "n3": f"127.0.0.1:{stranger.port}"})
            await _until(lambda: stranger.stats["dial_failures"] >= 2 and meshes["n1"].stats["dial_failures"] >= 2)
            assert not stranger.connected() and "n3" not in meshes["n1"].connected()
            await stranger.stop()

            # The dialer checks the server is the controller it meant: n1 thinks n3 lives at n2's address.
            meshes["n1"].update_peers({"n2": f"127.0.0.1:{meshes['n2'].port}",
                                       "n3": f"127.0.0.1:{meshes['n2'].port}"})
            await _until(lambda: "dialed controller n3 but the server's certificate is for n2" in caplog.text)
            assert "n3" not in meshes["n1"].connected()
        finally:
            await stop_all(*meshes.values())
    run(main())
    text = caplog.text
    assert "peer n2 refused (from ipv4:127.0.0.1" in text
    assert "hello says controller n2 but certificate is for n3" in text
    assert "cannot connect to peer n3" in text and "TLS handshake failed" in text
    assert "cannot connect to peer n1" in text  # the stranger's side of the story


def test_own_certificate_check_on_the_dialer() -> None:
    # check_controller_hello in isolation: trust domain and kind mismatches.
    h = Hello("controller", "a", CLUSTER, nonce=os.urandom(32))
    with pytest.raises(HandshakeError, match="trust domain 'other.td'"):
        handshake.check_controller_hello(h, ("other.td", "controller", "a"), my_id="b", cluster_id=CLUSTER,
                                         trust_domain=TD)
    with pytest.raises(HandshakeError, match="this node's own id"):
        handshake.check_controller_hello(h, (TD, "controller", "a"), my_id="a", cluster_id=CLUSTER,
                                         trust_domain=TD)
    with pytest.raises(HandshakeError, match="no spiffe"):
        handshake.check_controller_hello(h, None, my_id="b", cluster_id=CLUSTER, trust_domain=TD)
    assert handshake.check_controller_hello(h, (TD, "controller", "a"), my_id="b", cluster_id=CLUSTER,
                                            trust_domain=TD) == "a"


def test_routers_are_accepted_and_pinged(test_pki: PkiFixture) -> None:
    async def main() -> None:
        m = test_pki.mesh("n1", hello_timeout=0.3)
        await m.start()
        addr = f"127.0.0.1:{m.port}"
        try:
            # 1. A router that says nothing at all: after hello_timeout it is a router, and gets pinged.
            silent = open_stream(addr, test_pki.identity("r1", "router"))
            first = decode(await silent.read())
            assert isinstance(first, Hello) and first.id == "n1" and first.type == "controller"
            ping = decode(await silent.read())
            assert isinstance(ping, Ping)
            await silent.write(encode(Pong(ping.n)))
            await _until(lambda: any(r.last_pong for r in m.routers()))
            (r,) = m.routers()
            assert r.id == "r1" and not r.hello
            # 2. A router hello.
            hello = open_stream(addr, test_pki.identity("r2", "router"))
            await hello.write(encode(Hello("router", "r2", CLUSTER, software="router/1")))
            assert isinstance(decode(await hello.read()), Hello)
            assert isinstance(decode(await hello.read()), Ping)
            await _until(lambda: len(m.routers()) == 2)
            assert {r.id: r.hello for r in m.routers()} == {"r1": False, "r2": True}
            # 3. A first frame that is not a hello: a router, and that frame is handled (a ping gets its pong).
            other = open_stream(addr, test_pki.identity("r3", "router"))
            await other.write(encode(Ping(77)))
            frames = [decode(await other.read()) for _ in range(2)]
            assert isinstance(frames[0], Hello) and frames[1] == Pong(77)
            await _until(lambda: len(m.routers()) == 3)
            # A router may not speak raft: the frame is ignored, the router stays connected.
            await other.write(encode(RaftFrame(Message(MsgType.HEARTBEAT, "r3", "n1", 1).to_wire())))
            await other.write(encode(Ping(78)))
            while (f := decode(await other.read())) != Pong(78):
                assert isinstance(f, Ping)
            # A router hello with another router's id is refused.
            liar = open_stream(addr, test_pki.identity("r4", "router"))
            await liar.write(encode(Hello("router", "r1", CLUSTER)))
            with pytest.raises(Exception, match="hello says router r1 but certificate is for r4"):
                await liar.read()
            for s in (silent, hello, other, liar):
                await s.close()
            await _until(lambda: not m.routers())
        finally:
            await m.stop()
    run(main())


def test_slow_peer_does_not_block_others(test_pki: PkiFixture) -> None:
    """A controller that never reads fills only its own queue; its raft messages are dropped and counted."""
    async def main() -> None:
        meshes = await start_cluster(test_pki, ["n1", "n2"], queue_bytes=2 << 20, max_frame=1 << 20)
        n1 = meshes["n1"]
        stuck = await _raw_hello(test_pki, n1.port, "n3")
        assert isinstance(decode(await stuck.read()), Hello)  # then never read again
        try:
            await n1.wait_connected(["n3"], 5)
            got: list[Message] = []
            t1, t2 = RaftTransport(n1), RaftTransport(meshes["n2"])
            t2.set_receiver(lambda m, p: got.append(m))
            big = (Entry(1, 1, data=os.urandom(256 * 1024)),)
            for i in range(200):
                t1.send(Message(MsgType.APPEND, "n1", "n3", 1, entries=big))
                t1.send(msg("n1", "n2", term=i + 1))
                await asyncio.sleep(0)
            await _until(lambda: len(got) == 200)
            assert [m.term for m in got] == list(range(1, 201))
            assert t1.stats["dropped_queue_full"] > 0
            assert n1.connected()["n3"].dropped == t1.stats["dropped_queue_full"]
            await t1.close()
            await t2.close()
        finally:
            await stuck.close()
            await stop_all(*meshes.values())
    run(main())


def test_listen_conflicts_and_identity_mismatch_are_clear(test_pki: PkiFixture) -> None:
    async def main() -> None:
        a = test_pki.mesh("n1")
        await a.start()
        try:
            b = test_pki.mesh("n2", addr=f"127.0.0.1:{a.port}")
            with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{a.port}"):
                await b.start()
        finally:
            await a.stop()
    run(main())
    from hactl.transport.mesh import Mesh
    with pytest.raises(ValueError, match="certificate is for spiffe://test.hactl/controller/n1, but this node is "
                                         "spiffe://test.hactl/controller/n2"):
        Mesh("n2", CLUSTER, TD, test_pki.identity("n1"), "127.0.0.1:0")


def test_a_snapshot_message_on_the_message_lane_is_dropped(test_pki: PkiFixture) -> None:
    """Snapshots travel only as a stream with their verified data: a SNAPSHOT raft message sent as a plain frame
    (what a pruned leader used to fall back to) never reaches the node, and is counted."""
    async def main() -> None:
        meshes = await start_cluster(test_pki, ["n1", "n2"])
        try:
            got: list[Message] = []
            t2 = RaftTransport(meshes["n2"])
            t2.set_receiver(lambda m, payload: got.append(m))
            snap = Message(MsgType.SNAPSHOT, "n1", "n2", 3,
                           snapshot=SnapshotMeta(50, 2, ConfState(("n1", "n2"))))
            assert meshes["n1"].send("n2", RaftFrame(snap.to_wire()))
            assert meshes["n1"].send("n2", RaftFrame(msg("n1", "n2", term=3).to_wire()))  # a genuine one behind
            await _until(lambda: len(got) == 1)
            assert got[0].type == MsgType.APPEND and t2.stats["dropped_snapshot_without_stream"] == 1
        finally:
            await stop_all(*meshes.values())
    run(main())


def test_peers_say_which_ip_they_see_us_at(test_pki: PkiFixture) -> None:
    """mesh.seen over real connections: each peer answers with the IP our connection comes from (or the one it
    dialed us at); an unknown or disconnected peer gives no answer."""
    from hactl.transport.mesh import ip_of

    async def main() -> None:
        meshes = await start_cluster(test_pki, ["n1", "n2", "n3"])
        try:
            await _until(lambda: all(len(m.connected()) == 2 for m in meshes.values()))
            for name, m in meshes.items():
                others = [p for p in meshes if p != name]
                assert await m.seen_as(others + ["n9"]) == ["127.0.0.1", "127.0.0.1"]
        finally:
            await stop_all(*meshes.values())
    run(main())
    assert ip_of("ipv4:203.0.113.7:41000") == "203.0.113.7"
    assert ip_of("ipv6:[2001:db8::7]:41000") == ip_of("ipv6:%5B2001:db8::7%5D:41000") == "2001:db8::7"
    assert ip_of("198.51.100.2:6262") == "198.51.100.2"
    assert ip_of("ctrl2:6262") is None
