"""Snapshot streaming: chunks with flow control, heartbeats interleaved, failures reported to raft."""
from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from hactl.raft.types import ConfState, Message, MsgType, SnapshotMeta
from hactl.transport.raft_transport import RaftTransport
from hactl.transport.snapshot_stream import BytesSource, FileSource

from transport_helpers import PkiFixture, run, start_cluster, stop_all, test_pki  # noqa: F401 (test_pki is a fixture)


class FileSink:
    """Writes to a file, slowly (so the transfer overlaps with heartbeats), and reports timings."""

    def __init__(self, path: Path, meta: dict, delay: float = 0.0, fail_at: int | None = None,
                 block: threading.Event | None = None):
        self.path, self.meta, self.delay, self.fail_at, self.block = path, meta, delay, fail_at, block
        self.f = open(path, "wb")
        self.writes = 0
        self.first_write: float | None = None
        self.finished_at: float | None = None
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert threading.current_thread() is not threading.main_thread()  # never on the event loop
        if self.block is not None:
            self.block.wait(10)
        if self.fail_at is not None and self.writes == self.fail_at:
            raise OSError("disk full (test)")
        self.first_write = self.first_write or time.monotonic()
        self.f.write(data)
        self.writes += 1
        time.sleep(self.delay)

    def finish(self) -> Any:
        self.f.close()
        self.finished_at = time.monotonic()
        return ("installed", str(self.path))

    def abort(self) -> None:
        self.aborted = True
        self.f.close()


def snap_msg(frm: str, to: str, index: int = 100, term: int = 3) -> Message:
    return Message(MsgType.SNAPSHOT, frm, to, term, snapshot=SnapshotMeta(index, term, ConfState(("n1", "n2"))))


def test_20mb_snapshot_arrives_while_heartbeats_flow(test_pki: PkiFixture, tmp_path: Path) -> None:
    data = os.urandom(20 * 1024 * 1024)
    src_path = tmp_path / "snap.bin"
    src_path.write_bytes(data)

    async def main() -> None:
        meshes = await start_cluster(test_pki, ["n1", "n2"])
        sinks: list[FileSink] = []
        status: list[tuple[str, bool]] = []
        received: list[tuple[float, Message, Any]] = []

        def make_sink(meta: dict) -> FileSink:
            s = FileSink(tmp_path / f"recv-{len(sinks)}.bin", meta, delay=0.03)
            sinks.append(s)
            return s

        leader = RaftTransport(meshes["n1"], on_snapshot_status=lambda to, ok: status.append((to, ok)))
        follower = RaftTransport(meshes["n2"], snapshot_sink=make_sink)
        follower.set_receiver(lambda m, p: received.append((time.monotonic(), m, p)))
        try:
            msg = snap_msg("n1", "n2")
            leader.send(msg, FileSource(src_path, extra={"index": 100}))
            hb = 0
            while not status:
                hb += 1
                leader.send(Message(MsgType.HEARTBEAT, "n1", "n2", 3, commit=hb))
                await asyncio.sleep(0.02)
            assert status == [("n2", True)]
            await _until(lambda: any(m.type == MsgType.SNAPSHOT for _, m, _ in received))
            (sink,) = sinks
            assert sink.meta["size"] == len(data) and sink.meta["index"] == 100
            assert hashlib.sha256((tmp_path / "recv-0.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
            assert sink.writes == 20  # 1 MiB chunks
            snap = [(t, m, p) for t, m, p in received if m.type == MsgType.SNAPSHOT]
            assert len(snap) == 1 and snap[0][1] == msg and snap[0][2] == ("installed", str(sink.path))
            # Heartbeats kept arriving while the chunks were being written.
            assert sink.first_write is not None and sink.finished_at is not None
            during = [m for t, m, _ in received
                      if m.type == MsgType.HEARTBEAT and sink.first_write < t < sink.finished_at]
            assert len(during) >= 5, len(during)
            assert leader.sender.sent_ok == 1 and follower.receiver.received == 1
        finally:
            await leader.close()
            await follower.close()
            await stop_all(*meshes.values())
    run(main())


def test_snapshot_failures_are_reported(test_pki: PkiFixture, tmp_path: Path) -> None:
    async def main() -> None:
        meshes = await start_cluster(test_pki, ["n1", "n2"])
        status: list[tuple[str, bool]] = []
        sinks: list[FileSink] = []
        mode: dict[str, Any] = {}

        def make_sink(meta: dict) -> FileSink:
            s = FileSink(tmp_path / f"r{len(sinks)}.bin", meta, **mode)
            sinks.append(s)
            return s

        leader = RaftTransport(meshes["n1"], on_snapshot_status=lambda to, ok: status.append((to, ok)),
                               chunk_size=64 * 1024, ack_timeout=0.5)
        follower = RaftTransport(meshes["n2"], snapshot_sink=make_sink)
        delivered: list[Message] = []
        follower.set_receiver(lambda m, p: delivered.append(m))
        data = os.urandom(1024 * 1024)
        try:
            # 1. The sink raises: the sender hears ok=False, the sink is aborted, the connection stays up.
            mode.update(fail_at=3)
            leader.send(snap_msg("n1", "n2"), BytesSource(data))
            await _until(lambda: status)
            assert status.pop() == ("n2", False)
            await _until(lambda: sinks[-1].aborted)
            assert meshes["n1"].connection("n2") is not None
            # 2. Corrupted in transit (here: a meta that does not match the data): refused before finish().
            mode.clear()
            bad = BytesSource(data)
            bad.meta = lambda: {"size": len(data), "sha256": "00" * 32}  # type: ignore[method-assign]
            leader.send(snap_msg("n1", "n2", index=101), bad)
            await _until(lambda: status)
            assert status.pop() == ("n2", False) and sinks[-1].aborted
            # 3. A receiver that stops acknowledging: abandoned after ack_timeout.
            gate = threading.Event()
            mode.update(block=gate)
            leader.send(snap_msg("n1", "n2", index=102), BytesSource(data))
            await _until(lambda: status)
            assert status.pop() == ("n2", False)
            gate.set()
            await _until(lambda: sinks[-1].aborted)
            # 4. A peer without a connection: reported at once.
            leader.send(snap_msg("n1", "n9", index=103), BytesSource(data))
            await _until(lambda: status)
            assert status.pop() == ("n9", False)
            # 5. And a good one still works on the same connection afterwards.
            mode.clear()
            leader.send(snap_msg("n1", "n2", index=104), BytesSource(data))
            await _until(lambda: status)
            assert status.pop() == ("n2", True)
            assert [m.snapshot.index for m in delivered if m.snapshot] == [104]  # type: ignore[union-attr]
            assert (tmp_path / f"r{len(sinks) - 1}.bin").read_bytes() == data
        finally:
            await leader.close()
            await follower.close()
            await stop_all(*meshes.values())
    run(main())


async def _until(cond, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
