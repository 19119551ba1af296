"""mesh.call()/register(): forwarding requests between controllers."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hactl.transport.errors import ConnectionLost, PeerUnavailable, RemoteError

from transport_helpers import PkiFixture, run, start_cluster, stop_all, test_pki  # noqa: F401 (test_pki is a fixture)


def test_call_reply_errors_timeouts(test_pki: PkiFixture) -> None:
    async def main() -> None:
        meshes = await start_cluster(test_pki, ["n1", "n2"])
        n1, n2 = meshes["n1"], meshes["n2"]
        seen: list[tuple[str, Any]] = []
        release = asyncio.Event()

        async def propose(peer: str, body: Any) -> Any:
            seen.append((peer, body))
            return {"index": 42, "echo": body}

        async def not_leader(peer: str, body: Any) -> Any:
            raise RemoteError("not_leader", "n3 is the leader")

        async def buggy(peer: str, body: Any) -> Any:
            raise KeyError("oops")

        async def slow(peer: str, body: Any) -> Any:
            await release.wait()
            return "late"

        async def unpackable(peer: str, body: Any) -> Any:
            return object()

        for name, h in [("propose", propose), ("not_leader", not_leader), ("buggy", buggy), ("slow", slow),
                        ("unpackable", unpackable)]:
            n2.register(name, h)
        try:
            body = {"cmd": "put", "data": b"\x00\x01", "n": [1, 2.5, None, True]}
            assert await n1.call("n2", "propose", body, timeout=5) == {"index": 42, "echo": body}
            assert seen == [("n1", body)]  # the handler learns the authenticated caller
            results = await asyncio.gather(*(n1.call("n2", "propose", i, timeout=5) for i in range(50)))
            assert [r["echo"] for r in results] == list(range(50))

            with pytest.raises(RemoteError) as e:
                await n1.call("n2", "not_leader", None, timeout=5)
            assert (e.value.code, e.value.message) == ("not_leader", "n3 is the leader")
            with pytest.raises(RemoteError) as e:
                await n1.call("n2", "buggy", None, timeout=5)
            assert e.value.code == "internal" and "KeyError" in e.value.message
            with pytest.raises(RemoteError) as e:
                await n1.call("n2", "nope", None, timeout=5)
            assert e.value.code == "unknown_method"
            with pytest.raises(RemoteError) as e:
                await n1.call("n2", "unpackable", None, timeout=5)
            assert e.value.code == "bad_reply"
            with pytest.raises(asyncio.TimeoutError):
                await n1.call("n2", "slow", None, timeout=0.2)
            release.set()
            await asyncio.sleep(0.05)  # the late reply is ignored
            with pytest.raises(PeerUnavailable, match="peer n7 unavailable: not connected"):
                await n1.call("n7", "propose", None, timeout=1)
            with pytest.raises(TypeError):
                await n1.call("n2", "propose", object(), timeout=1)  # bodies are msgpack values only
            # The connection closes while a call is outstanding: ConnectionLost (a PeerUnavailable).
            release.clear()
            pending = asyncio.ensure_future(n1.call("n2", "slow", None, timeout=5))
            await asyncio.sleep(0.1)
            n1.connection("n2").close("test closes it")  # type: ignore[union-attr]
            with pytest.raises(ConnectionLost):
                await pending
            release.set()
        finally:
            await stop_all(n1, n2)
    run(main())
