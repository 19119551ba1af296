"""The cluster membership as the state machine stores it: plain data, applied in the same transaction as the model.

Raft's membership changes are entries of the log like model commands. The FSM adapter (hactl/server) turns each
one into the Membership in force after it and the state machine writes that into ctrl.db with the applied index,
so a consistent copy of ctrl.db (a snapshot) carries (index, term, membership) together, by construction.
This module knows nothing of Raft: voters, learners and their control-channel addresses are just names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Membership:
    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()
    addresses: dict[str, str] = field(default_factory=dict)  # member id -> control-channel host:port

    def to_plain(self) -> dict[str, Any]:
        """The JSON/msgpack form (also what snapshot meta.json's ``conf`` holds)."""
        return {"voters": sorted(self.voters), "learners": sorted(self.learners),
                "addresses": {k: self.addresses[k] for k in sorted(self.addresses)}}

    @staticmethod
    def from_plain(value: Any, where: str = "membership") -> "Membership":
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a map, got {type(value).__name__}")
        voters, learners, addrs = value.get("voters") or [], value.get("learners") or [], value.get("addresses") or {}
        if not (isinstance(voters, list) and isinstance(learners, list) and isinstance(addrs, dict)
                and all(isinstance(x, str) for x in [*voters, *learners, *addrs, *addrs.values()])):
            raise ValueError(f"{where}: expected {{voters: [str], learners: [str], addresses: {{str: str}}}}")
        return Membership(tuple(sorted(voters)), tuple(sorted(learners)), dict(addrs))
