"""Frames: validation, and bad frames closing only the connection that sent them."""
from __future__ import annotations

import asyncio
import logging
import os
import socket

import msgpack
import pytest

from hactl.raft.types import Message, MsgType
from hactl.transport import frames as F
from hactl.transport.channel import open_stream
from hactl.transport.raft_transport import RaftTransport

from transport_helpers import until as _until, CLUSTER, PkiFixture, run, start_cluster, stop_all, test_pki  # noqa: F401 (test_pki is a fixture)


def test_round_trip_and_validation() -> None:
    samples: list[F.Frame] = [
        F.Hello("controller", "n1", "c", 1, "sw", "inc", b"n" * 32, b"cert", b"sig"), F.Hello("router"),
        F.Ping(1), F.Pong(2), F.Close("bye"), F.RaftFrame([1, "a"]), F.Call(1, "m", {"k": [1, b"x"]}),
        F.Reply(1, None), F.ErrorReply(1, "code", "msg"), F.SnapBegin(5, {"size": 1}, [1]),
        F.SnapChunk(5, 0, b"data"), F.SnapEnd(5, 1), F.SnapAck(5, 1), F.SnapDone(5, True, ""),
        F.SnapAbort(5, "why"),
    ]
    for f in samples:
        assert F.decode(F.encode(f)) == f
    bad = [
        b"", b"\xc1", b"\x92\xa4ping", msgpack.packb(["ping", -1]), msgpack.packb(["ping", 1, 2]),
        msgpack.packb(["snap_chunk", 1, 0, "not bytes"]), msgpack.packb({"type": "gateway"}),
        msgpack.packb({"type": "controller", "id": 5}), msgpack.packb(7), msgpack.packb([]),
        msgpack.packb(["call", 1, "", None]), msgpack.packb(["ping", 1]) + b"\x00",  # trailing garbage
        msgpack.packb(["reply", 1, msgpack.ExtType(5, b"x")]),  # extension types are refused
        msgpack.packb({1: 2}),  # non-string map keys
    ]
    for raw in bad:
        with pytest.raises(F.FrameError):
            F.decode(raw)
    with pytest.raises(F.FrameError, match="exceeds the limit"):
        F.decode(msgpack.packb(["snap_chunk", 1, 0, b"x" * 2000]), max_frame=1024)
    # A well-formed frame of an unknown kind is ignored, not fatal (rolling upgrades).
    assert F.decode(msgpack.packb(["future", 1, 2])) == F.UnknownFrame("future", [1, 2])
    with pytest.raises(TypeError):
        F.encode(F.Reply(1, object()))  # never pickled


async def _connected_raw(test_pki: PkiFixture, port: int, ident: str = "n3"):  # type: ignore[no-untyped-def]
    s = open_stream(f"127.0.0.1:{port}", test_pki.identity(ident))
    await s.write(F.encode(F.Hello("controller", ident, CLUSTER, nonce=os.urandom(32), incarnation="i")))
    assert isinstance(F.decode(await s.read()), F.Hello)
    return s


async def _read_until_close(s) -> str:  # type: ignore[no-untyped-def]
    """Frames until the server closes: returns the close reason (pings may come first)."""
    while True:
        raw = await s.read()
        if raw is None:
            return "<eof>"
        f = F.decode(raw)
        if isinstance(f, F.Close):
            return f.reason


def test_bad_frames_close_only_that_connection(test_pki: PkiFixture, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hactl.transport")

    async def main() -> None:
        limit = 64 * 1024
        meshes = await start_cluster(test_pki, ["n1", "n2"], max_frame=limit)
        n1, n2 = meshes["n1"], meshes["n2"]
        got: list[Message] = []
        t1, t2 = RaftTransport(n2), RaftTransport(n1)
        t2.set_receiver(lambda m, p: got.append(m))

        async def still_serving(term: int) -> None:
            t1.send(Message(MsgType.HEARTBEAT, "n2", "n1", term))
            await _until(lambda: any(m.term == term for m in got))
            assert n1.connection("n2") is not None

        try:
            # 1. A frame just over our limit (still read, within the slack): closed with our reason.
            s = await _connected_raw(test_pki, n1.port)
            await s.write(F.encode(F.Reply(1, b"x" * (limit + 10))))
            assert "exceeds the limit" in await _read_until_close(s)
            await s.close()
            await still_serving(1)
            # 2. A grossly oversized frame: aborted before its body is read; only that stream.
            s = await _connected_raw(test_pki, n1.port)
            try:
                await s.write(b"\x00" * (limit * 4))
                await _read_until_close(s)
            except Exception:
                pass  # RESOURCE_EXHAUSTED
            await s.close()
            await still_serving(2)
            # 3. Garbage after the hello.
            s = await _connected_raw(test_pki, n1.port)
            await s.write(b"\xc1\xc1 garbage")
            assert "bad frame" in await _read_until_close(s)
            await s.close()
            await still_serving(3)
            # 4. Garbage as the very first frame.
            s = open_stream(f"127.0.0.1:{n1.port}", test_pki.identity("n3"))
            await s.write(b"\xff\x00 not msgpack")
            with pytest.raises(Exception, match="bad frame"):
                await s.read()
            await s.close()
            # 5. Raw bytes that are not even TLS, on the listener's TCP port.
            loop = asyncio.get_running_loop()
            sock = socket.create_connection(("127.0.0.1", n1.port))
            sock.setblocking(False)
            await loop.sock_sendall(sock, b"GET / HTTP/1.0\r\n\r\n" + os.urandom(4096))
            await asyncio.sleep(0.1)
            sock.close()
            await still_serving(4)
            # 6. A connection that is fine gets accepted afterwards too.
            s = await _connected_raw(test_pki, n1.port, "n4")
            await s.write(F.encode(F.Ping(5)))
            while (f := F.decode(await s.read())) != F.Pong(5):
                assert isinstance(f, F.Ping)
            await s.close()
            assert n1.stats["bad_frames"] >= 1
            await t1.close()
            await t2.close()
        finally:
            await stop_all(n1, n2)
    run(main())
    assert "closing the connection: bad frame: frame of" in caplog.text
    assert "bad first frame" in caplog.text



def test_batch_frames_carry_frames_in_order_and_refuse_nesting() -> None:
    inner = [F.encode(F.Ping(1)), F.encode(F.RaftFrame([1, "a"])), F.encode(F.Call(7, "m", {"x": 1}))]
    batch = F.decode(F.encode(F.Batch(inner)))
    assert isinstance(batch, F.Batch) and F.unbatch(batch) == [F.Ping(1), F.RaftFrame([1, "a"]), F.Call(7, "m", {"x": 1})]
    for bad in ([F.encode(F.Batch([F.encode(F.Ping(1))]))], [F.encode(F.Hello("router"))], [b"\xc1"]):
        with pytest.raises(F.FrameError):
            F.unbatch(F.decode(F.encode(F.Batch(bad))))
    for raw in (msgpack.packb(["batch", []]), msgpack.packb(["batch", ["text"]]), msgpack.packb(["batch", 5])):
        with pytest.raises(F.FrameError):
            F.decode(raw)


def test_a_burst_of_raft_messages_goes_out_in_batches_and_arrives_in_order(test_pki: PkiFixture) -> None:
    """Everything queued for a peer in one turn of the loop leaves as one gRPC message (peers of protocol 2);
    the receiver handles the frames in the order they were queued."""
    async def main() -> None:
        meshes = await start_cluster(test_pki, ["n1", "n2"])
        n1, n2 = meshes["n1"], meshes["n2"]
        got: list[Message] = []
        t1, t2 = RaftTransport(n1), RaftTransport(n2)
        t2.set_receiver(lambda m, p: got.append(m))
        try:
            conn = n1.connection("n2")
            assert conn is not None and conn.version == F.PROTOCOL_VERSION
            for term in range(1, 1001):  # one loop turn: nothing is written before the loop runs again
                t1.send(Message(MsgType.HEARTBEAT, "n1", "n2", term))
            await _until(lambda: len(got) == 1000)
            assert [m.term for m in got] == list(range(1, 1001))
            assert conn.batched >= 990 and conn.frames_out < 50, (conn.batched, conn.frames_out)
        finally:
            await t1.close()
            await t2.close()
            await stop_all(n1, n2)
    run(main())


def test_a_controller_of_an_older_protocol_is_refused_with_the_reason(test_pki: PkiFixture) -> None:
    """Protocols 1 and 2 ran over gRPC: such a peer cannot reach a hello; one that claims an old version in a
    hello is refused naming both versions, and an HTTP/2 (gRPC) preface is answered with what it is."""
    async def main() -> None:
        meshes = await start_cluster(test_pki, ["n1"])
        n1 = meshes["n1"]
        s = open_stream(f"127.0.0.1:{n1.port}", test_pki.identity("n3"))
        try:
            await s.write(F.encode(F.Hello("controller", "n3", CLUSTER, version=2, nonce=os.urandom(32),
                                           incarnation="old")))
            with pytest.raises(Exception, match="speaks control protocol 2, this node needs >= 3"):
                await s.read()
            assert n1.connection("n3") is None
        finally:
            await s.close()
        # What a gRPC client sends first, on a TLS connection with our CA's certificate.
        s = open_stream(f"127.0.0.1:{n1.port}", test_pki.identity("n4"))
        try:
            await (await s._ready()).writer.drain()
            (await s._ready()).writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            with pytest.raises(Exception, match="gRPC"):
                await s.read()
        finally:
            await s.close()
            await stop_all(n1)
    run(main())
