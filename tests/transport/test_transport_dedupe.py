"""One connection per pair: simultaneous dials, restarts with backoff, membership changes."""
from __future__ import annotations

import asyncio
import logging

import pytest

from hactl.raft.types import Message, MsgType
from hactl.transport.raft_transport import RaftTransport

from transport_helpers import until as _until, PkiFixture, agree, run, settled, stop_all, test_pki  # noqa: F401 (test_pki is a fixture)


def test_simultaneous_dial_ends_with_one_connection(test_pki: PkiFixture) -> None:
    async def main() -> None:
        for round_ in range(3):
            a, b = test_pki.mesh("n1", backoff_min=0.01), test_pki.mesh("n2", backoff_min=0.01)
            await a.start()
            await b.start()
            addrs = {"n1": f"127.0.0.1:{a.port}", "n2": f"127.0.0.1:{b.port}"}
            try:
                # Both handshakes run at the same instant (the dialers' own first step, without their loop),
                # so each side sees the pair's two connections and has to apply the tie-break.
                results = await asyncio.gather(a._dial("n2", addrs["n2"]), b._dial("n1", addrs["n1"]),
                                               return_exceptions=True)
                for mesh, r in zip((a, b), results):
                    if not isinstance(r, BaseException) and mesh._install(r):
                        r.start()
                # Now let the normal dialers run too: they must not disturb the settled pair.
                a.update_peers(addrs)
                b.update_peers(addrs)
                await settled([a, b])
                ca, cb = a.connection("n2"), b.connection("n1")
                await asyncio.sleep(0.5)  # and it stays that way: no flapping
                assert a.connection("n2") is ca and b.connection("n1") is cb and agree([a, b])
                assert ca.initiator == "n1"  # the connection dialed by the lower id won
                dupes = sum(m.stats["duplicates_closed"] + m.stats["duplicates_refused"] for m in (a, b))
                assert dupes >= 1
            finally:
                await stop_all(a, b)
        # And the plain way: both dialers started at once, whatever the timing, one connection per pair.
        a, b = test_pki.mesh("n1", backoff_min=0.01), test_pki.mesh("n2", backoff_min=0.01)
        await a.start()
        await b.start()
        addrs = {"n1": f"127.0.0.1:{a.port}", "n2": f"127.0.0.1:{b.port}"}
        a.update_peers(addrs)
        b.update_peers(addrs)
        try:
            await settled([a, b])
        finally:
            await stop_all(a, b)
    run(main())


def test_restarted_peer_is_redialed_with_backoff(test_pki: PkiFixture, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hactl.transport")

    async def main() -> None:
        a, b = test_pki.mesh("n1"), test_pki.mesh("n2")
        await a.start()
        await b.start()
        port_b = b.port
        addrs = {"n1": f"127.0.0.1:{a.port}", "n2": f"127.0.0.1:{port_b}"}
        a.update_peers(addrs)
        b.update_peers(addrs)
        await settled([a, b])
        await b.stop()
        await _until(lambda: a.connection("n2") is None)
        failures = a.stats["dial_failures"]
        await asyncio.sleep(1.0)  # n2 is down: n1 keeps retrying, spaced by a growing backoff (<= 0.5 s here)
        retried = a.stats["dial_failures"] - failures
        assert 2 <= retried <= 12, retried
        b2 = test_pki.mesh("n2", addr=f"127.0.0.1:{port_b}", peers=addrs)  # same port, new incarnation
        await b2.start()
        try:
            await settled([a, b2])
            got: list[Message] = []
            ta, tb = RaftTransport(a), RaftTransport(b2)
            tb.set_receiver(lambda m, p: got.append(m))
            ta.send(Message(MsgType.HEARTBEAT, "n1", "n2", 4))
            await _until(lambda: len(got) == 1)
            assert a.connected()["n2"].addr == f"127.0.0.1:{port_b}"
            await ta.close()
            await tb.close()
        finally:
            await stop_all(a, b2)
    run(main())
    assert "cannot connect to peer n2" in caplog.text


def test_update_peers_adds_and_removes(test_pki: PkiFixture) -> None:
    async def main() -> None:
        a, b, c = test_pki.mesh("n1"), test_pki.mesh("n2"), test_pki.mesh("n3")
        for m in (a, b, c):
            await m.start()
        addr = {m.node_id: f"127.0.0.1:{m.port}" for m in (a, b, c)}
        try:
            a.update_peers({"n2": addr["n2"]})
            b.update_peers({"n1": addr["n1"]})
            await settled([a, b])
            assert set(a.connected()) == {"n2"} and not c.connected()
            # n3 joins: only the existing members learn its address; n3 accepts them without knowing theirs.
            a.update_peers({"n2": addr["n2"], "n3": addr["n3"]})
            b.update_peers({"n1": addr["n1"], "n3": addr["n3"]})
            await a.wait_connected(["n2", "n3"], 10)
            await b.wait_connected(["n1", "n3"], 10)
            await settled([a, b, c])
            assert set(c.connected()) == {"n1", "n2"}
            # n3 is removed again: the members drop their connection and stop dialing.
            a.update_peers({"n2": addr["n2"]})
            b.update_peers({"n1": addr["n1"]})
            await _until(lambda: not c.connected())
            await asyncio.sleep(0.3)
            assert not c.connected() and set(a.connected()) == {"n2"}
        finally:
            await stop_all(a, b, c)
    run(main())

