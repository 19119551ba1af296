"""Authorization on the control channel: a refused peer is refused at the hello with the reason, a peer that
stops being authorized loses its connection and its calls, and an unknown peer is accepted when a member the
refusing node trusts vouches for it. Real meshes, real mutual TLS on 127.0.0.1."""
from __future__ import annotations

from hactl.transport.errors import HandshakeError, RemoteError
from hactl.transport.mesh import Refusal

from transport_helpers import PkiFixture, run, settled, stop_all, test_pki, until  # noqa: F401 (fixture)


class Policy:
    """A PeerAuthorizer over an explicit member set (the controller's is server/peers.py)."""

    def __init__(self, members: set[str], revoked: set[str] | None = None):
        self.members, self.revoked, self.vouched_by = set(members), set(revoked or ()), {}

    def check(self, peer: str, serial: str | None, *, established: bool = False) -> Refusal | None:
        if serial in self.revoked:
            return Refusal(f"certificate {serial} of {peer} was revoked", False)
        if peer in self.members or peer in self.vouched_by:
            return None
        return Refusal(f"{peer} is not a member", True)

    def is_member(self, peer: str, serial: str | None) -> bool:
        return peer in self.members and serial not in self.revoked

    def vouchers(self) -> list[str]:
        return sorted(self.members)

    def vouched(self, peer: str, by: str) -> None:
        self.vouched_by[peer] = by


def mesh(p: PkiFixture, nid: str, policy: Policy):  # type: ignore[no-untyped-def]
    return p.mesh(nid, authorizer=policy)


def test_refusal_at_hello_then_a_revocation_closes_the_connection_and_refuses_calls(test_pki: PkiFixture) -> None:
    async def main() -> None:
        pa, pb = Policy({"b"}), Policy({"a"})
        a, b = mesh(test_pki, "a", pa), mesh(test_pki, "b", pb)
        x = mesh(test_pki, "x", Policy({"a"}))  # holds a certificate of the same CA, but is no member of a's
        for m in (a, b, x):
            await m.start()
        try:
            # A non-member is refused at the hello, and told why (and nobody vouches for it).
            try:
                await x.probe(f"127.0.0.1:{a.port}")
                raise AssertionError("x was accepted")
            except HandshakeError as e:
                assert "x is not a member" in str(e)
            # Members connect and call each other.
            a.register("echo", lambda peer, body: _echo(peer, body))
            b.update_peers({"a": f"127.0.0.1:{a.port}"})
            await b.wait_connected(["a"], timeout=10)
            assert await b.call("a", "echo", {"v": 1}, timeout=5) == {"from": "b", "v": 1}
            # b's certificate gets revoked at a: its calls are refused at once, enforce() closes it...
            pa.revoked.add(a.connection("b").serial)
            try:
                await b.call("a", "echo", {"v": 2}, timeout=5)
                raise AssertionError("a revoked peer's call ran")
            except RemoteError as e:
                assert e.code == "forbidden" and "was revoked" in e.message
            a.enforce()
            await until(lambda: a.connection("b") is None)
            # ...and its redials are refused (b keeps trying; a never installs it again).
            await until(lambda: a.stats["refused"] >= 1)
            assert a.connection("b") is None
        finally:
            await stop_all(a, b, x)
    run(main())


async def _echo(peer: str, body: dict) -> dict:
    return {"from": peer, **body}


def test_a_member_that_missed_an_addition_accepts_the_new_peer_when_a_member_vouches(test_pki: PkiFixture) -> None:
    async def main() -> None:
        # c was added while a was down: b knows c, a does not.
        pa, pb, pc = Policy({"b"}), Policy({"a", "c"}), Policy({"a", "b"})
        a, b, c = mesh(test_pki, "a", pa), mesh(test_pki, "b", pb), mesh(test_pki, "c", pc)
        for m in (a, b, c):
            await m.start()
        try:
            b.update_peers({"a": f"127.0.0.1:{a.port}", "c": f"127.0.0.1:{c.port}"})
            await b.wait_connected(["a", "c"], timeout=10)
            c.update_peers({"a": f"127.0.0.1:{a.port}", "b": f"127.0.0.1:{b.port}"})
            await c.wait_connected(["a", "b"], timeout=10)  # a asked b, b vouched
            assert pa.vouched_by == {"c": "b"}
            await settled([a, b, c])
            # Nobody vouches for a peer no member knows.
            pb.members.discard("c")
            pa.vouched_by.clear()
            a.enforce()
            await until(lambda: a.connection("c") is None)
            await until(lambda: a.stats["refused"] >= 1)
            assert a.connection("c") is None and pa.vouched_by == {}
        finally:
            await stop_all(a, b, c)
    run(main())
