"""Who may use the control channel (hactl.transport.mesh.PeerAuthorizer): authentication is the cluster CA's mutual
TLS; authorization is this: current members, joiners the leader is adding, and nobody whose certificate is denied.

The deny-list is replicated (ctrl.db): `hactl agent cluster revoke ID` adds certificates to it, and removing a
member adds every certificate recorded for it, so a removed node's still-valid certificate is worthless. The leader
records the certificate serial each member connects with (a `cluster.certificate` entry, once per serial).

Two cases need care, because a node's view of the membership can be behind:
* a node that is not in its own membership view (a new node, before or while it replays the log it is being sent)
  accepts any controller of the CA that is not denied: it has to learn the membership from someone;
* a member that missed the addition of another (it was down) asks its connected members to vouch for the unknown
  peer (mesh.VOUCH_METHOD) and accepts it if one does; it forgets the vouch when its membership changes.
"""
from __future__ import annotations

import logging
import time

from hactl.fsm.machine import StateMachine
from hactl.raft.node import RaftNode
from hactl.transport.mesh import Refusal

log = logging.getLogger("hactl.server")


LEAVING_GRACE = 3.0  # seconds a removed member's open connection is kept for the answers in flight


class PeerPolicy:
    def __init__(self, node_id: str, machine: StateMachine):
        self.node_id = node_id
        self.machine = machine
        self.node: RaftNode | None = None  # set once the raft node exists (the mesh is built before it)
        self._approved: dict[str, float] = {}  # joiner id -> monotonic deadline of its `cluster add`
        self._vouched: dict[str, str] = {}  # peer -> the member that vouched for it
        self._leaving: dict[str, float] = {}  # member just removed -> until when its open connection may finish
        self._records: tuple[int, tuple[dict[str, list[str]], dict[str, dict]]] | None = None

    # ------------------------------------------------------------------ PeerAuthorizer

    def check(self, peer: str, serial: str | None, *, established: bool = False) -> Refusal | None:
        if established and self._leaving.get(peer, 0.0) > time.monotonic():
            # Removed a moment ago: its open connection may still carry the answers to calls in flight (the
            # removal's own, when the leader was asked to remove itself); new connections are refused at once.
            return None
        _, revoked = self._certificates()
        if serial is not None and serial in revoked:
            r = revoked[serial]
            return Refusal(f"certificate {serial} of {r.get('node', peer)} was {r.get('reason', 'revoked')} "
                           f"(entry {r.get('index')}); issue it a new certificate if it is to come back", False)
        members = self._members()
        if self.node_id not in members:
            return None  # not a member itself (yet): see the module docstring
        if peer in members or peer in self._vouched or self._approved.get(peer, 0.0) > time.monotonic():
            return None
        return Refusal(f"{peer} is not a member of this cluster (members here: {', '.join(sorted(members))}); "
                       f"add it with `hactl agent cluster add ADDR`", True)

    def is_member(self, peer: str, serial: str | None) -> bool:
        return peer in self._members() and self.check(peer, serial) is None

    def vouchers(self) -> list[str]:
        return sorted(m for m in self._members() if m != self.node_id)

    def vouched(self, peer: str, by: str) -> None:
        self._vouched[peer] = by

    # ------------------------------------------------------------------ the controller's side

    def approve(self, joiner: str, seconds: float) -> None:
        """The leader is adding ``joiner`` (`cluster add`): accept it before its membership entry applies."""
        self._approved[joiner] = time.monotonic() + seconds

    def membership_changed(self, removed: str | None = None) -> None:
        """Vouches were for a view that is now replaced; approved joiners that became members need none; a
        member that just left (``removed``) gets a short grace on its open connection (see check)."""
        self._vouched.clear()
        members = self._members()
        now = time.monotonic()
        if removed is not None:
            self._leaving[removed] = now + LEAVING_GRACE
        for p in [p for p, t in self._leaving.items() if t <= now]:
            del self._leaving[p]
        for j in [j for j in self._approved if j in members or self._approved[j] <= time.monotonic()]:
            del self._approved[j]

    def unrecorded(self, peer: str, serial: str | None) -> bool:
        """A member's certificate serial the replicated record does not hold yet."""
        if serial is None or peer not in self._members():
            return False
        certs, revoked = self._certificates()
        return serial not in certs.get(peer, []) and serial not in revoked

    def _certificates(self) -> tuple[dict[str, list[str]], dict[str, dict]]:
        """ctrl.db's certificate records, read again only when something was applied (check() runs for every
        call a peer makes, e.g. each forwarded write)."""
        index = self.machine.applied()[0]
        if self._records is None or self._records[0] != index:
            self._records = (index, self.machine.certificates())
        return self._records[1]

    def _members(self) -> tuple[str, ...]:
        return self.node.membership.members() if self.node is not None else ()
