"""The asyncio Endpoint over real UDP sockets on 127.0.0.1 (our own nodes accept loopback; real ZeroTier would
not, see test_libzt_node.py for that): a node comes online through another node acting as its root, a member
built from appendix C's keys gets validated off-loop, asks for a config and gets the glue's answer, and a glue
that raises does not stop the endpoint."""
from __future__ import annotations

import asyncio
import logging

import pytest

from hactl.zt.endpoint import Endpoint
from hactl.zt.node import ConfigRequest, Node
from hactl.zt.packet import Verb, dearmor
from hactl.zt.verbs import OkNetworkConfig, chunk_config
from hactl.zt.world import World, WorldType
from tests.zt.test_zt_node import KEY2, NODE2, NWID, R, ROOT, hello_from, planet, request

LOCAL = "127.0.0.1"


class Member(asyncio.DatagramProtocol):
    """A bare UDP socket standing in for a member: what arrives goes to a queue."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.got.put_nowait(data)

    async def next(self, verb: int, timeout: float = 5.0) -> bytes:
        """The payload of the next packet of `verb` (others skipped)."""
        async def wait() -> bytes:
            while True:
                p = dearmor(await self.got.get(), KEY2)
                if p.verb == verb:
                    return p.payload
        return await asyncio.wait_for(wait(), timeout)


def empty_planet() -> World:
    return World.make(WorldType.PLANET, 1, 1, R.public_key, [], sign_with=R.private_key or b"")


async def scenario(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    # B stands in for a root (its own Node answers HELLO); A is the controller whose planet names B.
    b = Endpoint(Node(ROOT, empty_planet()), (LOCAL, 0), on_request=lambda r: None, tick_ms=100)
    await b.start()
    requests: list[ConfigRequest] = []

    def on_request(req: ConfigRequest) -> None:
        requests.append(req)
        if req.request.network_id != NWID:
            raise RuntimeError("the glue broke")
        a.node.answer_config(req, chunk_config(R, NWID, b"v=7\n", 1234), a.now())
        a.flush()

    a = Endpoint(Node(R, planet((ROOT, b.local_address))), (LOCAL, 0), on_request=on_request,
                 validation_workers=2, tick_ms=100)
    await a.start()
    try:
        assert a.local_address[0] == LOCAL and a.local_address[1] > 0 and a.node.families == {4}
        for _ in range(100):
            if a.node.status(a.now())["online"]:
                break
            await asyncio.sleep(0.05)
        st = a.node.status(a.now())
        assert st["online"] and st["roots"][0]["online"] and st["roots"][0]["latency_ms"] is not None
        assert b.node.peer_identity(R.address) == R.public_only()  # B validated A's identity in its pool

        transport, member = await loop.create_datagram_endpoint(Member, local_addr=(LOCAL, 0))
        try:
            transport.sendto(hello_from(NODE2), a.local_address)
            await member.next(Verb.OK)  # OK(HELLO), after validation off-loop
            with caplog.at_level(logging.ERROR, logger="hactl.zt.endpoint"):
                transport.sendto(request(NODE2, nwid=NWID + 1), a.local_address)
                for _ in range(100):
                    if requests:
                        break
                    await asyncio.sleep(0.02)
            assert "on_request failed" in caplog.text and "8eb1af42a4000002" in caplog.text
            transport.sendto(request(NODE2), a.local_address)
            ok = OkNetworkConfig.decode(await member.next(Verb.OK))
            assert ok.chunk.network_id == NWID and ok.chunk.data == b"v=7\n"
            assert [r.request.network_id for r in requests] == [NWID + 1, NWID]
            assert a.node.stats()["requests"] == 2 and a.node.stats()["validations"] == 1
        finally:
            transport.close()

        # The port is taken: a clear error naming it.
        c = Endpoint(Node(R, empty_planet()), a.local_address, on_request=on_request)
        with pytest.raises(OSError, match=f"{LOCAL}:{a.local_address[1]}"):
            await c.start()
    finally:
        await a.stop()
        await b.stop()


def test_endpoint_over_loopback(caplog: pytest.LogCaptureFixture) -> None:
    asyncio.run(asyncio.wait_for(scenario(caplog), 30))


def test_dual_stack_socket_maps_ipv4() -> None:
    async def run() -> None:
        ep = Endpoint(Node(R, empty_planet()), ("::", 0),
                      on_request=lambda r: None)
        try:
            await ep.start()
        except OSError as e:  # no IPv6 on this machine: nothing to check
            assert "::" in str(e)
            return
        try:
            assert 4 in ep.node.families
            loop = asyncio.get_running_loop()
            transport, member = await loop.create_datagram_endpoint(Member, local_addr=(LOCAL, 0))
            try:
                transport.sendto(hello_from(NODE2), (LOCAL, ep.local_address[1]))
                await member.next(Verb.OK)
            finally:
                transport.close()
        finally:
            await ep.stop()
    asyncio.run(asyncio.wait_for(run(), 20))
