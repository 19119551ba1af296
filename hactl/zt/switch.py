"""One UDP socket, two local identities (issue 11): the cluster's controller (a Node) and this machine's planet
root (a Root), sans-IO.

Dispatch is by the destination address of each datagram (packet header or fragment): the controller's goes to the
controller Node, everything else to the Root, which answers what is its own and relays the rest. The Switch has
the Node interface the Endpoint drives (receive / tick / take_datagrams / take_requests / take_validations /
validated, address, families), so the Endpoint runs a Switch exactly as it runs a lone Node.

What the two share:
  * the Root answers WHOIS for the controller identity (`Root.know`);
  * identity verdicts: one cache, so a member that HELLOs both identities is hashed once, and a validation
    asked by both is handed to the pool once (`take_validations` de-duplicates, `validated` tells both);
  * datagrams one of them sends to an address of this very machine (`self_endpoints`: the root's stable
    endpoints in the planet, plus any the glue adds) never touch the network: they are fed straight back in. So
    the controller, which HELLOs its planet roots, reaches the local root without a round trip, and the root
    relays to the controller the same way; both learn each other's path as the planet's endpoint, like any peer.
"""
from __future__ import annotations

from hactl.zt.fragment import is_fragment
from hactl.zt.identity import Identity
from hactl.zt.errors import ProtocolError
from hactl.zt.node import ConfigRequest, Node
from hactl.zt.packet import hops_of, increment_hops
from hactl.zt.peer import SockAddr
from hactl.zt.root import Root
from hactl.zt.world import World

MAX_HANDED = 1_024  # both nodes bound their queues (Limits.max_validations); this only guards against leaks
LOOPBACK_ROUNDS = 4  # self-addressed datagrams fed back per take_datagrams, at most (a reply to a reply...)


def destination_of(datagram: bytes) -> int | None:
    """The 40-bit destination of a packet or fragment (both at bytes 8-12); None if too short for either."""
    if len(datagram) < 13 or (len(datagram) < 28 and not is_fragment(datagram)):
        return None
    return int.from_bytes(datagram[8:13], "big")


class Switch:
    def __init__(self, root: Root, controller: Node | None = None, *,
                 self_endpoints: set[SockAddr] | None = None) -> None:
        self.root = root
        self.controller = controller
        self.self_endpoints: set[SockAddr] = set(self_endpoints or ())
        self._planet_endpoints: set[SockAddr] = set()
        self._now = 0
        self._handed: set[tuple[int, bytes]] = set()  # validations handed out, not yet answered
        # Members handed over to another node (the glue's balancing): their packets for the controller that still
        # reach us go on to that node's endpoint, so only it answers them (a member moves for good only once
        # nothing from us refreshes its old path to the controller).
        self.handoff: dict[int, SockAddr] = {}
        self._forwarded: list[tuple[bytes, SockAddr]] = []
        if controller is not None:
            root.know(controller.identity)
            # Our own identity needs no memory-hard check when it HELLOs our root.
            root.remember(controller.identity, [], 0)
            controller._verdicts = root._verdicts  # one verdict cache for both identities
        self._note_planet(root.planet)

    # --- the Node interface the Endpoint drives -----------------------------------------------------------------
    @property
    def address(self) -> int:
        """The identity the endpoint's log line names: the controller's, else the root's."""
        return self.controller.address if self.controller is not None else self.root.address

    @property
    def families(self) -> set[int]:
        return self.root.families

    @families.setter
    def families(self, value: set[int]) -> None:
        self.root.families = set(value)
        if self.controller is not None:
            self.controller.families = set(value)

    def receive(self, datagram: bytes, src: tuple[str, int], now: int) -> None:
        self._now = now
        dest = destination_of(datagram)
        if self.controller is not None and dest == self.controller.address:
            if self.handoff and self._hand_on(datagram, src):
                return
            self.controller.receive(datagram, src, now)
        else:
            # The root's own packets, relays, and garbage (the Root counts and drops it).
            self.root.receive(datagram, src, now)

    def _hand_on(self, datagram: bytes, src: SockAddr) -> bool:
        """Forward a handed-over member's packet (whole, sent by it: hops 0) to its node; True if done."""
        if len(datagram) < 28 or is_fragment(datagram):
            return False
        target = self.handoff.get(int.from_bytes(datagram[13:18], "big"))
        if target is None or target == src:
            return False
        try:
            if hops_of(datagram) != 0:
                return False
            self._forwarded.append((increment_hops(datagram), target))
        except ProtocolError:
            return False
        self.root._inc("handed_on")
        return True

    def tick(self, now: int) -> None:
        self._now = now
        self.root.tick(now)
        if self.controller is not None:
            self.controller.tick(now)

    def take_datagrams(self) -> list[tuple[bytes, tuple[str, int]]]:
        out: list[tuple[bytes, tuple[str, int]]] = self._forwarded
        self._forwarded = []
        local = self.self_endpoints | self._planet_endpoints
        for _ in range(LOOPBACK_ROUNDS):
            batch = self.root.take_datagrams()
            if self.controller is not None:
                batch += self.controller.take_datagrams()
            looped = [(d, dst) for d, dst in batch if dst in local]
            out += [(d, dst) for d, dst in batch if dst not in local]
            if not looped:
                break
            for d, dst in looped:
                # Sent by us to ourselves: it would come back from that same address.
                self.receive(d, dst, self._now)
        else:
            # Still looping after LOOPBACK_ROUNDS: whatever is left is dropped (cannot happen with sane peers).
            self.root.take_datagrams()
            if self.controller is not None:
                self.controller.take_datagrams()
            self.root.count("self_loop")
        return out

    def take_requests(self) -> list[ConfigRequest]:
        return self.controller.take_requests() if self.controller is not None else []

    def take_validations(self) -> list[Identity]:
        out = []
        pending = self.root.take_validations()
        if self.controller is not None:
            pending += self.controller.take_validations()
        for ident in pending:
            key = (ident.address, ident.public_key)
            if key not in self._handed:  # both asked: validate once, tell both
                if len(self._handed) >= MAX_HANDED:
                    self._handed.clear()  # answers lost (a stopped pool): forget rather than grow
                self._handed.add(key)
                out.append(ident)
        return out

    def validated(self, identity: Identity, ok: bool, now: int) -> None:
        self._now = now
        self._handed.discard((identity.address, identity.public_key))
        self.root.validated(identity, ok, now)
        if self.controller is not None:
            self.controller.validated(identity, ok, now)

    # --- for the glue -------------------------------------------------------------------------------------------
    def set_planet(self, world: World) -> None:
        """A new planet committed by the cluster: the root serves it. The controller keeps its own upstreams (the
        planet it was built with may be another one); Node.set_planet changes them if the glue wants to."""
        self.root.set_planet(world)
        self._note_planet(world)

    def _note_planet(self, world: World) -> None:
        self._planet_endpoints = {(str(ep.ip), ep.port) for r in world.roots
                                  if r.identity.address == self.root.address
                                  for ep in r.stable_endpoints if ep.ip is not None}

    def stats(self) -> dict[str, dict[str, int]]:
        out = {"root": self.root.stats()}
        if self.controller is not None:
            out["controller"] = self.controller.stats()
        return out


__all__ = ["Switch", "destination_of"]
