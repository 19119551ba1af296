"""ZeroTier config replies signed by the API workers: the node dispatches, the workers read and sign.

The node keeps the ZeroTier UDP socket and everything stateful about it: the peers and their keys, paths, the
rate limits, the ReadIndex barrier, the decision to answer (authorized? needs a Raft write first?), and the
encryption of the reply. What it hands a worker, in batches, is the expensive part that needs no state: read the
network and member records (the worker's own LMDB read transaction, begun after the node's barrier, so at least
as fresh) and sign the config (the certificate of membership and the chunk signatures). The worker sends back
the encoded chunks; the node wraps each in its OK and encrypts it.

Why a dispatcher rather than the UDP port shared with SO_REUSEPORT, as the API's TCP port is: the kernel hashes a
datagram to a socket by its source address, so each worker would see a fixed share of the peers. A worker would
then need its own copy of every peer's key and path (the root role relays between peers that hash to different
workers, and a root must know both ends), of the per-member request limits (a member hashed elsewhere after a NAT
rebinding would get a fresh allowance), and of the online members the controller pushes to; a change to any of
them would have to reach every process. The dispatcher costs the node one msgpack round trip per batch instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hactl.agent.protocol import E_BAD_REQUEST, ProtocolError
from hactl.fsm.machine import StateMachine
from hactl.fsm.model import format_address, format_nwid
from hactl.zt.errors import ProtocolError as ZtProtocolError
from hactl.zt.identity import Identity
from hactl.zt.netconf import config_revision, signed_config

MAX_JOBS = 4096  # per message (the node's batches are bounded by its MAX_HANDLERS)


@dataclass(frozen=True)
class SignJob:
    """Sign the config of member ``address`` of ``network_id``, whose public identity the node checked against
    the record (the worker checks it again on its own read)."""
    network_id: int
    address: int
    identity: str
    rules_engine: bool
    now_ms: int

    def to_wire(self) -> list[Any]:
        return [self.network_id, self.address, self.identity, self.rules_engine, self.now_ms]

    @staticmethod
    def from_wire(value: Any) -> "SignJob":
        if not (isinstance(value, list) and len(value) == 5):
            raise ProtocolError(E_BAD_REQUEST, "sign job: expected [network_id, address, identity, rules_engine, "
                                               "now_ms]")
        nwid, address, identity, rules, now = value
        if not (isinstance(nwid, int) and 0 <= nwid < 1 << 64 and isinstance(address, int)
                and 0 <= address < 1 << 40 and isinstance(identity, str) and len(identity) < 1024
                and isinstance(rules, bool) and isinstance(now, int) and now >= 0):
            raise ProtocolError(E_BAD_REQUEST, f"sign job: bad field in {value!r:.200}")
        return SignJob(nwid, address, identity, rules, now)


@dataclass(frozen=True)
class Signed:
    """A signed config: its revision and its chunks, each ConfigChunk.encode()d."""
    revision: int
    chunks: list[bytes]

    def to_wire(self) -> list[Any]:
        return [self.revision, self.chunks]

    @staticmethod
    def from_wire(value: Any) -> "Signed | None":
        if value is None:
            return None
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
                and isinstance(value[1], list) and value[1] and all(isinstance(c, bytes) for c in value[1])):
            raise ProtocolError(E_BAD_REQUEST, "signed: expected [revision, [chunk bytes...]] or nil")
        return Signed(value[0], value[1])


class EncodedChunk(bytes):
    """A chunk a worker encoded, where the node's sans-IO Node expects a ConfigChunk (it only calls encode())."""

    def encode(self) -> bytes:
        return bytes(self)


class ConfigSigner:
    """The worker's side: one read transaction per batch, one signed config (or None) per job."""

    def __init__(self, machine: StateMachine) -> None:
        self.machine = machine
        self._controller: Identity | None = None

    def controller(self) -> Identity | None:
        """The cluster's controller identity (secret included), from ctrl.db: it never changes once created."""
        if self._controller is None:
            self._controller = self.machine.controller_identity()
        return self._controller

    def sign(self, jobs: list[SignJob]) -> list[Signed | None]:
        controller = self.controller()
        if controller is None:
            return [None] * len(jobs)
        out: list[Signed | None] = []
        with self.machine.reader() as r:
            for job in jobs:
                n, a = format_nwid(job.network_id), format_address(job.address)
                network = r.get_network(n)
                member = r.get_member(n, a) if network is not None else None
                # The node decided on its own read; this one may be newer. Anything that no longer allows a
                # config (deleted, deauthorized, re-keyed) is declined: the node then sends nothing, and the
                # member's next request gets the node's answer.
                if network is None or member is None or not member.get("authorized") \
                        or member.get("identity") != job.identity:
                    out.append(None)
                    continue
                try:
                    identity = Identity.from_string(job.identity)
                except (ValueError, ZtProtocolError):
                    out.append(None)
                    continue
                chunks = signed_config(network, member, identity, controller, job.now_ms, job.rules_engine)
                out.append(Signed(config_revision(network, member), [c.encode() for c in chunks]))
        return out
