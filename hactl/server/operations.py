"""Operator commands behind the agent socket (hactl.agent.handle.AgentHandle), run by a controller.

Membership operations run on the leader: a follower forwards them over the mesh. restore-from-db validates the
whole file before proposing anything, then streams it through Raft in chunks well under the frame limit; the
state machine stages it and swaps it in at commit, and every controller restarts with the restored model.
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from hactl import __version__
from hactl._fs import atomic_write, file_sha256
from hactl.agent.handle import CALLER, AgentError
from hactl.api.cluster import ClusterUnavailable, OutcomeUnknown, Overloaded
from hactl.config import ConfigError, parse_hostport
from hactl.fsm.coerce import ValidationError
from hactl.fsm.commands import (RestoreAbort, build_cluster_revoke, build_restore, decode, encode,
                                with_origin)
from hactl.fsm.machine import FormatError, StateMachine
from hactl.raft.core import NotLeader, ProposalRefused
from hactl.raft.node import RaftError
from hactl.raft.types import ConfChange, ConfChangeType
from hactl.transport.errors import ConnectionLost, PeerUnavailable, RemoteError

if TYPE_CHECKING:
    from hactl.server.controller import Controller

OP_METHOD = "agent.op"
_LEADER_OPS = ("add", "remove", "transfer", "update")


class Operations:
    def __init__(self, ctl: "Controller"):
        self.ctl = ctl
        self.node_id = ctl.node_id
        ctl.mesh.register(OP_METHOD, self._serve_forwarded)

    def status(self) -> dict[str, Any]:
        return {**self.ctl.status(), "version": __version__, "data_dir": str(self.ctl.data)}

    # ------------------------------------------------------------------ membership

    async def cluster_list(self) -> list[dict[str, Any]]:
        ctl = self.ctl
        st = ctl.node.status()
        conns = ctl.mesh.connected()
        now = time.time()  # (PeerInfo.last_contact is unix time)
        certs, _ = ctl.model.machine.certificates()
        rows = []
        for nid in list(st.conf.voters) + list(st.conf.learners):
            info = conns.get(nid)
            me = nid == self.node_id
            rows.append({
                "id": nid,
                "address": ctl.cfg.control.advertise if me else ctl.addresses().get(nid),
                "role": "voter" if nid in st.conf.voters else "learner",
                "leader": nid == st.leader,
                "connected": me or info is not None,
                "last_contact": 0.0 if me else (round(now - info.last_contact, 3) if info else None),
                "match": st.progress[nid][0] if nid in st.progress else None,
                "version": __version__ if me else (info.software if info else None),
                "certificates": certs.get(nid, []),  # serials recorded for it: what removal or revoke denies
            })
        return rows

    async def cluster_add(self, address: str, learner: bool, timeout: float) -> dict[str, Any]:
        try:
            node_id = await asyncio.wait_for(self.ctl.mesh.probe(address), min(timeout, 15))
        except Exception as e:
            raise AgentError("unreachable", f"could not verify a controller at {address}: {e}") from None
        return await self._on_leader("add", {"id": node_id, "address": address, "learner": learner}, timeout)

    async def cluster_remove(self, node_id: str, timeout: float) -> dict[str, Any]:
        return await self._on_leader("remove", {"id": node_id}, timeout)

    async def cluster_revoke(self, node_id: str, serial: str | None, timeout: float) -> dict[str, Any]:
        """Deny certificates of `node_id` through Raft (the write is forwarded to the leader like any other)."""
        rid = f"revoke-{uuid.uuid4().hex}"
        try:
            cmd = build_cluster_revoke(rid, self.ctl.now_ms(), node_id, serial)
        except ValidationError as e:
            raise AgentError("bad_request", f"{e.field}: {e.message}") from None
        try:
            result = await asyncio.wait_for(self.ctl.submit(cmd, rid), timeout)
        except (ClusterUnavailable, Overloaded) as e:
            raise AgentError("unavailable", f"revoke not applied: {e}") from None
        except (OutcomeUnknown, asyncio.TimeoutError) as e:
            raise AgentError("unknown", f"revoke may or may not have been applied: {e or 'timed out'}") from None
        if not result.ok:
            raise AgentError("not_found" if result.error == "NOT_FOUND" else "refused", result.message or "")
        self.ctl.mesh.enforce()
        return dict(result.value or {})

    async def record_own_address(self, address: str, timeout: float) -> dict[str, Any]:
        """This node's control address in the membership becomes ``address`` (a membership UPDATE on the leader).
        Through the leader if it can be reached, else through any member this node is connected to (see
        _serve_forwarded): after moves on both sides, the leader and this node may each dial the other's old
        address, while a member that stayed put is reached by both."""
        args = {"id": self.node_id, "address": address}
        try:
            return await self._on_leader("update", args, timeout)
        except AgentError as e:
            if e.code not in ("no_leader", "unavailable"):
                raise
            last = e
        for peer in sorted(self.ctl.mesh.connected()):
            try:
                return await self.ctl.mesh.call(peer, OP_METHOD, {"op": "update", "args": args, "timeout": timeout},
                                                timeout=timeout + 5)
            except RemoteError as e:
                last = AgentError(e.code, f"through {peer}: {e.message}")
            except (PeerUnavailable, ConnectionLost, asyncio.TimeoutError) as e:
                last = AgentError("unavailable", f"through {peer}: {e or 'timed out'}")
        raise last

    async def transfer_leadership(self, target: str | None, timeout: float) -> dict[str, Any]:
        return await self._on_leader("transfer", {"id": target}, timeout)

    async def _on_leader(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        node = self.ctl.node
        if node.is_leader:
            return await self._run_here(op, args, timeout)
        leader = node.leader
        if leader is None:
            raise AgentError("no_leader", "no leader is known: the cluster may have lost its quorum "
                                          "(see `hactl cluster recover` if the loss is permanent)")
        try:
            return await self.ctl.mesh.call(leader, OP_METHOD, {"op": op, "args": args, "timeout": timeout},
                                            timeout=timeout + 5)
        except RemoteError as e:
            raise AgentError(e.code, e.message) from None
        except (PeerUnavailable, ConnectionLost, asyncio.TimeoutError) as e:
            raise AgentError("unavailable", f"could not reach the leader {leader}: {e or 'timed out'}") from None

    async def _serve_forwarded(self, peer: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("op") not in _LEADER_OPS or not isinstance(body.get("args"), dict):
            raise RemoteError("bad_request", "expected {op, args, timeout}")
        timeout = body.get("timeout")
        timeout = float(timeout) if isinstance(timeout, (int, float)) and 0 < timeout <= 3600 else 60.0
        try:
            if not self.ctl.node.is_leader:
                if body["op"] != "update":
                    raise RemoteError("not_leader", f"{self.node_id} is not the leader")
                # A moved member that cannot reach the leader yet (the leader dials its old address, it may dial
                # the leader's old one) asks whoever it reaches: one hop on to the leader.
                return await self._on_leader("update", body["args"], timeout)
            return await self._run_here(body["op"], body["args"], timeout)
        except AgentError as e:
            raise RemoteError(e.code, e.message) from None

    async def _run_here(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        node = self.ctl.node
        nid = args.get("id")
        try:
            if op == "add":
                if not isinstance(nid, str) or not isinstance(args.get("address"), str):
                    raise AgentError("bad_request", "add needs an id and an address")
                if nid in node.membership.voters:
                    raise AgentError("exists", f"{nid} is already a voter")
                ctx = args["address"].encode()
                self.ctl.peers.approve(nid, timeout)  # it may connect before its membership entry applies
                if args.get("learner"):
                    if nid not in node.membership.learners:
                        await node.change_membership(ConfChange(ConfChangeType.ADD_LEARNER, nid, ctx), timeout)
                    return {"id": nid, "role": "learner"}
                await node.add_voter(nid, ctx, timeout=timeout)
                return {"id": nid, "role": "voter"}
            if op == "update":
                if not isinstance(nid, str) or not isinstance(args.get("address"), str):
                    raise AgentError("bad_request", "update needs an id and an address")
                try:
                    parse_hostport(args["address"], f"update of {nid}", "address")
                except ConfigError as e:
                    raise AgentError("bad_request", str(e)) from None
                await node.change_membership(ConfChange(ConfChangeType.UPDATE, nid, args["address"].encode()),
                                             timeout)
                return {"id": nid, "address": args["address"]}
            if op == "remove":
                if nid not in node.membership.members():
                    raise AgentError("not_found", f"{nid} is not a member (members: "
                                                  f"{', '.join(node.membership.members())})")
                if nid == self.node_id and len(node.membership.voters) > 1:
                    # Removing the leader: hand leadership over first and let the new leader remove us, so the
                    # answer does not travel over a connection the removal itself closes.
                    await node.transfer_leadership(None, timeout)
                    return await self._on_leader(op, args, timeout)
                await node.change_membership(ConfChange(ConfChangeType.REMOVE, nid), timeout)
                return {"id": nid, "removed": True}
            if nid is not None and nid not in node.membership.voters:
                raise AgentError("not_found", f"{nid} is not a voter")
            return {"leader": await node.transfer_leadership(nid, timeout)}
        except ProposalRefused as e:
            raise AgentError("refused", str(e)) from None
        except (NotLeader, RaftError, asyncio.TimeoutError) as e:
            raise AgentError("unavailable", f"{op} did not complete: {e or 'timed out'}") from None

    # ------------------------------------------------------------------ backup and restore

    async def snapshot_db(self, path: str | None) -> dict[str, Any]:
        machine = self.ctl.machine()
        target = Path(path) if path else None
        if target is not None and not target.is_absolute():
            raise AgentError("bad_request", f"{path}: give an absolute path (the controller's working directory "
                                            "is not yours)")
        return await asyncio.get_running_loop().run_in_executor(None, self._copy, machine, target)

    def _copy(self, machine: StateMachine, target: Path | None) -> dict[str, Any]:
        directory = target.parent if target else self.ctl.data
        tmp = directory / f".ctrl-copy-{uuid.uuid4().hex}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise AgentError("io", f"cannot write in {directory}: {e.strerror}") from None
        try:
            try:
                index, _, _ = machine.copy_consistent(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            final = target or directory / f"ctrl-{time.strftime('%Y%m%d-%H%M%S')}-{index}.db"
            try:
                os.link(tmp, final)  # never overwrite an existing backup
            except FileExistsError:
                raise AgentError("exists", f"{final} already exists") from None
        finally:
            tmp.unlink(missing_ok=True)
        digest = file_sha256(final)[0]
        atomic_write(Path(f"{final}.sha256"), f"{digest}  {final.name}\n", 0o600)
        return {"path": str(final), "sha256": digest, "index": index, "size": final.stat().st_size}

    async def restore_from_db(self, path: str, timeout: float) -> dict[str, Any]:
        p = Path(path)
        if not p.is_absolute():
            raise AgentError("bad_request", f"{path}: give an absolute path")
        if self.ctl.node.leader is None:
            raise AgentError("no_leader", "a restore goes through Raft and needs a leader; none is known")
        loop = asyncio.get_running_loop()
        current = self.ctl.machine().cluster_info() or {}
        summary = await loop.run_in_executor(None, self._validate_backup, p)
        restore_id = uuid.uuid4().hex
        timeline_id = uuid.uuid4().hex
        request_id = f"restore-{restore_id}"
        stamp = self.ctl.now_ms()

        def commands() -> Iterator[bytes]:
            with StateMachine(p, readonly=True, lock=False) as backup:
                info = backup.cluster_info() or {}
                yield from build_restore(backup.iter_networks(), backup.iter_all_members(), request_id=request_id,
                                         time=stamp, restore_id=restore_id, timeline_id=timeline_id,
                                         address=info["address"], signing_key=backup.signing_key() or b"",
                                         token_hash=current.get("token_hash"),  # (the identity, private key too)
                                         **_backup_planet(backup))  # (a restore keeps the planet clients trust)

        deadline = loop.time() + timeout
        it = commands()
        last = None
        try:
            while True:
                cmd = await loop.run_in_executor(None, next, it, None)  # reading the file stays off the loop
                if cmd is None:
                    break
                if loop.time() > deadline:
                    raise AgentError("timeout", f"restore did not finish within {timeout:g}s")
                cmd = with_origin(cmd, CALLER.get())
                last = await self.ctl.submit(cmd, decode(cmd).request_id)
                if not last.ok:
                    raise AgentError("restore_failed", f"{last.error}: {last.message}")
        except (ClusterUnavailable, Overloaded, OutcomeUnknown, AgentError) as e:
            await self._abort(restore_id, request_id)
            if isinstance(e, AgentError):
                raise
            raise AgentError("unavailable", f"restore interrupted, nothing changed: {e}") from None
        return {"restore_id": restore_id, "timeline_id": timeline_id, **summary,
                "index": self.ctl.node.applied,
                "note": "every controller restarts (exit code 3) to load the restored model"}

    async def _abort(self, restore_id: str, request_id: str) -> None:
        cmd = encode(RestoreAbort(request_id=request_id + "/abort", time=self.ctl.now_ms(), restore_id=restore_id))
        try:
            await self.ctl.submit(cmd, request_id + "/abort")
        except Exception:
            pass  # a staged restore that is never committed changes nothing; the next restore replaces it

    def _validate_backup(self, p: Path) -> dict[str, Any]:
        """Everything that can be checked before proposing: the file, its checksum, its format, its content."""
        if not p.is_file():
            raise AgentError("invalid_db", f"{p}: no such file")
        sidecar = Path(f"{p}.sha256")
        if sidecar.exists():
            want = sidecar.read_text().split()[0] if sidecar.read_text().split() else ""
            got = file_sha256(p)[0]
            if want != got:
                raise AgentError("invalid_db", f"{p}: sha256 {got} does not match {sidecar} ({want}): truncated or "
                                             "altered")
        try:
            backup = StateMachine(p, readonly=True, lock=False)
        except FormatError as e:
            raise AgentError("invalid_db", f"{p}: not a ctrl.db this version can read: {e}") from None
        except Exception as e:  # lmdb raises a family of unrelated errors for foreign files
            raise AgentError("invalid_db", f"{p}: not a hactl ctrl.db ({type(e).__name__}: {e})") from None
        try:
            info = backup.cluster_info()
            if info is None or not backup.signing_key():
                raise AgentError("invalid_db", f"{p}: holds no cluster initialisation (not a controller's ctrl.db)")
            if backup.controller_identity() is None:
                # Its networks live under a random stand-in address that no ZeroTier identity will ever have.
                raise AgentError("invalid_db", f"{p}: made by a version whose controller key was not a ZeroTier "
                                               "identity (a 32-byte Ed25519 key); a backup from before controller "
                                               "identities cannot be restored")
            networks = backup.network_count()
            members = sum(1 for _ in backup.iter_all_members())
            # A dry run of the whole command stream validates every record before anything is proposed.
            for _ in build_restore(backup.iter_networks(), backup.iter_all_members(), request_id="dry-run",
                                   time=0, restore_id="dry-run", timeline_id="dry-run", address=info["address"],
                                   signing_key=backup.signing_key() or b"", **_backup_planet(backup)):
                pass
        except AgentError:
            raise
        except Exception as e:
            raise AgentError("invalid_db", f"{p}: invalid content: {e}") from None
        finally:
            backup.close()
        return {"networks": networks, "members": members, "address": info["address"],
                "backup_applied_index": backup_index(p)}


def _backup_planet(backup: StateMachine) -> dict[str, Any]:
    """The backup's planet key, id and world for build_restore (nothing for a backup made before planets)."""
    key = backup.planet_key()
    return {} if key is None else {"planet_key": key[2], "world_id": key[0], "planet": backup.planet()}


def backup_index(p: Path) -> int:
    with StateMachine(p, readonly=True, lock=False) as m:
        return m.applied()[0]

