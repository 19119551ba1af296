"""The write path: propose on the leader (or forward to it), wait until THIS node applied the entry, answer honestly.

Exactly-once: every write carries a request id (the client's Idempotency-Key, or a fresh one); the state machine
remembers each id's first result, so proposing the same command again after a leader change cannot apply it
twice, and the retry loop below may re-propose freely.

Honest answers. Each attempt either certainly did not append the entry anywhere (no leader known, the leader
refused it before proposing, the proposal queue was full) or may have (the entry was appended, or a forwarded
call was sent and its answer lost). Once any attempt may have appended, every failure is OutcomeUnknown (504):
answering 503 or 429 then would invite a key-less client (ZeroTier tools send no Idempotency-Key) to retry and
create a duplicate. Before a 504 the local ctrl.db is checked one last time: an entry applied meanwhile is a 200.

Storage alarms. While ctrl.db holds an alarm (alarm.raise by a node whose raft.db, ctrl.db or disk is nearly
full, see alarms.py), a command that would add data is refused with NoSpace (507) before anything is proposed;
deletes and the other ALARM_EXEMPT_TYPES still go through, so an operator can free space and the alarm can clear.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Callable

from hactl.api.cluster import ClusterUnavailable, NoSpace, OutcomeUnknown, Overloaded
from hactl.fsm.commands import ALARM_EXEMPT_TYPES, command_type, fingerprint_of
from hactl.fsm.machine import StateMachine
from hactl.fsm.result import Result
from hactl.raft import core as raft_core
from hactl.raft.node import NodeFailed, NoLeader, ProposalDropped, RaftNode, ResultUnknown
from hactl.server.alarms import refusal_message
from hactl.transport.errors import ConnectionLost, PeerUnavailable, RemoteError
from hactl.transport.mesh import Mesh

log = logging.getLogger("hactl.server")

FORWARD_METHOD = "raft.propose"
# Remote error codes after which the leader certainly did not append the forwarded entry (or appended it and saw
# another entry commit at its index, so it never can): a retry or a 503/429 is safe.
_NOT_APPENDED = frozenset({"not_leader", "overloaded", "bad_request", "busy", "unknown_method", "forbidden"})
_RETRY_PAUSE = 0.05
# How a write ended, as hactl_writes_total{outcome} counts it (each with the HTTP status it becomes).
_OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (NoSpace, "no_space"),  # 507
    (Overloaded, "overloaded"),  # 429
    (OutcomeUnknown, "unknown"),  # 504
    (ClusterUnavailable, "unavailable"),  # 503
    (asyncio.CancelledError, "cancelled"),  # the client went away
)


class WritePath:
    def __init__(self, node: RaftNode, mesh: Mesh, machine: StateMachine, available: Callable[[], object], *,
                 apply_timeout: float, proposal_queue: int):
        self.node = node
        self.mesh = mesh
        self.machine = machine  # results are read here even while a restart is pending: they were applied
        self._available = available  # raises ClusterUnavailable while this node cannot take writes
        self.apply_timeout = apply_timeout
        self.proposal_queue = proposal_queue
        self._inflight = 0
        # Read by the Prometheus collector: writes by outcome, and followers' writes this node proposed as leader.
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.forwarded_served = 0
        mesh.register(FORWARD_METHOD, self._serve_forwarded)

    @property
    def in_flight(self) -> int:
        """Proposals this node (as leader) made for writes, its own and forwarded ones, not applied yet."""
        return self._inflight

    async def submit(self, command: bytes, request_id: str) -> Result:
        """Replicate ``command``; its Result once applied on this node (read-your-writes). Raises
        ClusterUnavailable (503), Overloaded (429) or NoSpace (507) only if the entry was certainly not appended
        anywhere, OutcomeUnknown (504) otherwise."""
        try:
            result = await self._replicate(command, request_id)
        except BaseException as e:
            self.outcomes[next((name for cls, name in _OUTCOMES if isinstance(e, cls)), "error")] += 1
            raise
        self.outcomes["applied"] += 1
        return result

    async def _replicate(self, command: bytes, request_id: str) -> Result:
        self._refuse_under_alarm(command)
        try:
            return await self._submit(command, request_id)
        except _MaybeAppended as e:
            result = self._applied_result(request_id, command)
            if result is not None:
                return result
            raise OutcomeUnknown(f"write {request_id}: {e}") from None
        except NodeFailed as e:
            raise ClusterUnavailable(str(e), retry_after=2) from None

    def _refuse_under_alarm(self, command: bytes) -> None:
        """NoSpace if an alarm is on and ``command`` is not exempt. This node's applied alarms decide: every node
        applies the same alarm.raise, so every node refuses (a write arriving in the instant before this node has
        applied a raise still goes through: the alarm fires well before a map is full, which covers that)."""
        alarms = self.machine.alarms()  # one LMDB read of a key that is absent when no alarm is on
        if alarms and command_type(command) not in ALARM_EXEMPT_TYPES:
            raise NoSpace(refusal_message(alarms))

    def _applied_result(self, request_id: str, command: bytes) -> Result | None:
        return self.machine.result_for(request_id, fingerprint_of(command))

    async def _submit(self, command: bytes, request_id: str) -> Result:
        """Raises _MaybeAppended once any attempt may have appended the entry; before that, the definite
        ClusterUnavailable, Overloaded or NodeFailed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.apply_timeout
        maybe = False  # did any attempt possibly append the entry?
        last: Exception = ClusterUnavailable("no leader accepted the write in time")
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                if maybe:
                    raise _MaybeAppended(f"not applied within {self.apply_timeout:g}s ({last})")
                raise last if isinstance(last, ClusterUnavailable) else ClusterUnavailable(str(last))
            try:
                self._available()  # refuses while restarting
                node = self.node
                if node.is_leader:
                    index = await self._propose_here(command, remaining)
                    maybe = True
                else:
                    leader = node.leader
                    if leader is None:
                        await asyncio.sleep(min(_RETRY_PAUSE, remaining))
                        continue
                    maybe_before, maybe = maybe, True  # once the call is sent the leader may append it
                    try:
                        reply = await self.mesh.call(leader, FORWARD_METHOD, {"cmd": command}, timeout=remaining)
                    except ConnectionLost:
                        # A PeerUnavailable subclass, but the call WAS sent: the connection closed before the
                        # answer (e.g. the leader was killed after appending and replicating the entry, which
                        # the next leader then commits). Resetting `maybe` here answered 503 for applied writes.
                        raise
                    except PeerUnavailable:
                        maybe = maybe_before  # not connected, or the send was refused: nothing was sent
                        raise
                    except RemoteError as e:
                        if e.code in _NOT_APPENDED:
                            maybe = maybe_before
                        raise
                    index = int(reply["index"])
                await node.wait_applied(index, timeout=max(0.01, deadline - loop.time()))
            except _MaybeAppended as e:
                maybe, last = True, e
                continue  # the deadline check decides; a retry with the same request id applies at most once
            except (raft_core.NotLeader, NoLeader, raft_core.ProposalRefused, ProposalDropped, PeerUnavailable,
                    ConnectionLost, RemoteError, ResultUnknown, asyncio.TimeoutError) as e:
                if isinstance(e, RemoteError) and e.code == "overloaded" and not maybe:
                    raise Overloaded(str(e)) from None
                log.debug("write %s: retrying after %s: %s", request_id, type(e).__name__, e)
                last = e if maybe else ClusterUnavailable(f"no leader accepted the write: {e}")
                await asyncio.sleep(min(_RETRY_PAUSE, max(0.0, deadline - loop.time())))
                continue
            except (ClusterUnavailable, Overloaded, NodeFailed) as e:
                if maybe:
                    raise _MaybeAppended(str(e)) from None
                raise
            result = self._applied_result(request_id, command)
            if result is None:
                # Index `index` holds another leader's entry: this proposal was overwritten and can never commit,
                # so proposing it again (same request id) cannot apply it twice.
                log.debug("write %s: entry %d was replaced by another leader's; proposing again", request_id, index)
                continue
            return result

    async def _propose_here(self, command: bytes, timeout: float) -> int:
        """Propose on this node (the leader); the index once applied here."""
        if not self.node.running:
            raise NodeFailed(f"raft node {self.node.id} is not running")  # before anything was appended
        if self._inflight >= self.proposal_queue:
            raise Overloaded(f"{self._inflight} proposals already waiting on the leader")
        self._inflight += 1
        try:
            index, _ = await self.node.propose(command, timeout=timeout)
            return index
        except raft_core.ProposalRefused as e:
            raise NoLeader(str(e)) from None
        except (ResultUnknown, NodeFailed) as e:  # appended; its fate is not known
            raise _MaybeAppended(str(e)) from None
        finally:
            self._inflight -= 1

    async def _serve_forwarded(self, peer: str, body: Any) -> dict[str, Any]:
        """On the leader: propose a follower's write; answers once applied here (the follower then waits for its
        own apply). Error codes say whether the entry may have been appended (see _NOT_APPENDED)."""
        if not isinstance(body, dict) or not isinstance(body.get("cmd"), bytes):
            raise RemoteError("bad_request", "expected {cmd: bytes}")
        if not self.node.is_leader:
            raise RemoteError("not_leader", f"{self.node.id} is not the leader (leader: {self.node.leader})")
        self.forwarded_served += 1
        try:
            index = await self._propose_here(body["cmd"], self.apply_timeout)
        except Overloaded as e:
            raise RemoteError("overloaded", str(e)) from None
        except (raft_core.NotLeader, NoLeader, ProposalDropped, NodeFailed) as e:
            raise RemoteError("not_leader", str(e)) from None
        except _MaybeAppended as e:
            raise RemoteError("unknown", str(e)) from None
        return {"index": index}


class _MaybeAppended(Exception):
    """An attempt failed after the entry may have been appended somewhere."""
