"""Shared fixtures for the state machine and snapshot tests: a machine, and a driver that numbers entries."""
from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from hactl.fsm import commands as C
from hactl.fsm.machine import StateMachine
from hactl.fsm.membership import Membership
from hactl.fsm.result import Result
from tests.identities import bound_key

CONTROLLER = "a1b2c3d4e5"
SIGNING_KEY = bound_key(CONTROLLER)  # a key pair under CONTROLLER (not derived from it: see tests/identities.py)
POOL_NET = {
    "v4AssignMode": {"zt": True},
    "ipAssignmentPools": [{"ipRangeStart": "10.0.0.1", "ipRangeEnd": "10.0.0.254"}],
    "routes": [{"target": "10.0.0.0/24", "via": None}],
}


def member_identity(address: str, key: int = 0) -> str:
    """A public identity string for ``address`` (``key`` picks another key pair for the same address). Its address
    is NOT derived from its key: apply never runs the memory-hard hash (the proposer does), so member.request
    accepts it, and making real ones for many addresses would take a 40-bit search each."""
    public = hashlib.sha512(f"{address}/{key}".encode()).digest()
    return f"{address}:0:{public.hex()}"


class Driver:
    """Feeds a machine one entry at a time with fresh indexes, request ids and times."""

    controller = CONTROLLER
    pool_net = POOL_NET
    identity = staticmethod(member_identity)  # (test modules cannot import conftest by name)

    def __init__(self, machine: StateMachine, term: int = 1) -> None:
        self.m = machine
        self.term = term
        self.index = machine.applied()[0]
        self._ids = itertools.count(1)
        self.time = 1_700_000_000_000

    def rid(self) -> str:
        return f"req-{next(self._ids)}"

    def tick(self) -> int:
        self.time += 1000
        return self.time

    def apply(self, data: bytes) -> Result:
        self.index += 1
        r = self.m.apply(self.index, self.term, data)
        assert r is not None
        return r

    def membership(self, voters: tuple[str, ...], learners: tuple[str, ...] = (),
                   addresses: dict[str, str] | None = None) -> None:
        """Apply a membership entry (what the FSM adapter hands over for a raft membership change)."""
        self.index += 1
        assert self.m.apply_batch([(self.index, self.term, Membership(voters, learners, addresses or {}))]) == [None]

    def init(self, **kw: Any) -> Result:
        args: dict[str, Any] = dict(cluster_id="cluster-1", timeline_id="timeline-1", address=CONTROLLER,
                                    signing_key=SIGNING_KEY, token_hash="sha256:abc")
        args.update(kw)
        return self.apply(C.build_cluster_init(self.rid(), self.tick(), **args))

    def network(self, body: dict[str, Any] | None = None, *, start: int = 1) -> Result:
        return self.apply(C.build_network_create(self.rid(), self.tick(), body or {}, start=start))

    def nwid(self, body: dict[str, Any] | None = None, *, start: int = 1) -> str:
        r = self.network(body, start=start)
        assert r.ok, r
        assert r.value is not None
        return str(r.value["id"])

    def update_network(self, nwid: str, body: dict[str, Any]) -> Result:
        return self.apply(C.build_network_update(self.rid(), self.tick(), nwid, body))

    def delete_network(self, nwid: str) -> Result:
        return self.apply(C.build_network_delete(self.rid(), self.tick(), nwid))

    def member(self, nwid: str, address: str, body: dict[str, Any] | None = None) -> Result:
        return self.apply(C.build_member_update(self.rid(), self.tick(), nwid, address, body or {}))

    def create_member(self, nwid: str, address: str, body: dict[str, Any] | None = None) -> Result:
        return self.apply(C.build_member_create(self.rid(), self.tick(), nwid, address, body or {}))

    def authorize(self, nwid: str, address: str, authorized: bool = True) -> Result:
        return self.apply(C.build_member_authorize(self.rid(), self.tick(), nwid, address, authorized))

    def request(self, nwid: str, address: str, identity: str | None = None, **versions: int) -> Result:
        """member.request: a ZeroTier node's config request (identity: member_identity(address) by default)."""
        return self.apply(C.build_member_request(self.rid(), self.tick(), nwid, address,
                                                 identity or member_identity(address), **versions))

    def delete_member(self, nwid: str, address: str) -> Result:
        return self.apply(C.build_member_delete(self.rid(), self.tick(), nwid, address))


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[StateMachine]:
    m = StateMachine(tmp_path / "ctrl.db")
    yield m
    m.close()


@pytest.fixture
def raw(machine: StateMachine) -> Driver:
    """A driver on an uninitialised machine."""
    return Driver(machine)


@pytest.fixture
def drv(machine: StateMachine) -> Driver:
    """A driver on an initialised machine (controller a1b2c3d4e5)."""
    d = Driver(machine)
    assert d.init().ok
    return d


@pytest.fixture
def make_driver(tmp_path: Path) -> Iterator[Callable[[str], Driver]]:
    """A factory of drivers on further (uninitialised) machines in the test's directory."""
    opened: list[StateMachine] = []

    def make(name: str) -> Driver:
        m = StateMachine(tmp_path / name)
        opened.append(m)
        return Driver(m)

    yield make
    for m in opened:
        m.close()
