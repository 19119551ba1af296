"""The deterministic state machine: applies journal entries to ctrl.db (LMDB) and serves reads from it.

Each ``apply_batch`` is one LMDB write transaction that also stores the applied (index, term), so ctrl.db is
always exactly the result of applying the journal up to that index. Each command runs in a nested transaction:
a command that fails (deterministically: bad input, missing network, address conflict, even a bug) is rolled
back alone and yields an error Result; only environment failures (disk, map full) abort the batch and raise.

Nothing here reads a clock or an RNG; nothing keeps model data in Python containers between calls.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from typing import Any, Callable, Iterator, Sequence

import lmdb
import msgpack

from hactl._lmdb import usage as lmdb_usage

from hactl.fsm import layout as L
from hactl.fsm.coerce import ValidationError
from hactl.fsm.commands import (AlarmClear, AlarmRaise, ClusterCertificate, ClusterInit, ClusterRevoke, Command,
                                CommandError, MemberAuthorize, MemberCreate, MemberDelete, MemberRequest,
                                MemberUpdate, NetworkCreate, NetworkDelete, NetworkUpdate, NoOp, PlanetInit,
                                PlanetSet, RestoreAbort, RestoreBegin, RestoreChunk, RestoreCommit, ZtRoot, decode,
                                parse_alarm_message, parse_alarm_name)
from hactl.fsm.ipassign import V4Plan, has_routed_v4, pick_v4
from hactl.fsm.membership import Membership
from hactl.fsm.model import (ARRAY_MAX, MEMBER_RECORD, NETWORK_N_MAX, RECORD_FORMAT, format_address, format_nwid,
                             M_AUTHORIZED, M_IDENTITY, M_IP_ASSIGNMENTS, M_REVISION, member_defaults,
                             member_revision, member_values, member_view, network_defaults, network_id,
                             network_view, pack_member, pack_network, unpack_member, unpack_network)
from hactl.fsm.result import ErrorCode, Result
from hactl.fsm.validate import (check_controller_address, check_network_id, controller_identity, member_identity,
                                member_record, network_record, parse_address, parse_endpoints, parse_label,
                                parse_nwid, parse_planet_key, parse_serial, parse_token_hash, parse_version_field,
                                parse_world, parse_world_id, root_identity, validate_member_changes,
                                validate_network_changes)
from hactl.zt.identity import PRIVATE_FORM_SIZE, Identity
from hactl.zt.world import World

log = logging.getLogger("hactl.fsm")

# Request ids are remembered for the last DEDUPE_WINDOW entries: a retry landing later than that is applied
# again. Pruning by index (not time) keeps it deterministic, and bounds the table (~25 MB) however fast writes come.
DEDUPE_WINDOW = 100_000
_PRUNE_EVERY = 64  # commands at indexes that are multiples of this prune (a cursor per command costs ~5%)
CHANGES_KEPT = 10_000  # indexes whose entity changes stay readable (entityChange replays after a crash/leader change)
_PRUNE_MAX = 4 * _PRUNE_EVERY  # > _PRUNE_EVERY, so a backlog (pruning indexes that held no command) drains
DEFAULT_MAP_SIZE = 64 << 30  # address space only; the file grows as needed


# Commands applied without a nested transaction: their handlers check everything, and fail if they are to fail,
# before their first write, and set _writing just before it; after it they only write (LMDB calls, whose failures
# abort the batch anyway). Should one fail after _writing all the same (a bug), its writes could not be undone
# alone: the batch is aborted and applied again with a nested transaction for every command (_PartialWrite).
_DIRECT = (MemberCreate, MemberUpdate, MemberAuthorize, MemberRequest, MemberDelete)

# Commands that never read, copy or delete member-count rows: count changes may stay summed in memory across
# them (see _bump_counts). Every other command first writes the sums out.
_COUNTS_MAY_WAIT = (MemberCreate, MemberUpdate, MemberAuthorize, MemberRequest, MemberDelete, NoOp)


class _PartialWrite(Exception):
    """A command applied without a nested transaction failed after its first write (a bug: see _DIRECT)."""


class FormatError(RuntimeError):
    """ctrl.db was written by an incompatible version (its record format differs)."""


class _Fail(Exception):
    """A deterministic failure of one command: becomes its error Result."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


class StateMachine:
    def __init__(self, path: str | os.PathLike[str], *, sync: bool = False, readonly: bool = False,
                 lock: bool = True, map_size: int = DEFAULT_MAP_SIZE) -> None:
        """Open (creating unless ``readonly``) the ctrl.db file at ``path``.

        lock=False is only for files no process writes (snapshot copies): it skips LMDB's lock file.

        sync=False by default: ctrl.db is not the system of record. raft.db is fsynced; ctrl.db is rebuilt from
        a snapshot plus the journal on every start, so losing (or tearing) its last transactions in a crash
        costs nothing, and skipping fsync per batch is most of the apply throughput.
        """
        self.path = os.fspath(path)
        self.readonly = readonly
        self._apply_lock = threading.Lock()
        # (key, packed record) of the member the current command wrote, if it did (see _result_wire)
        self._packed: tuple[bytes, bytes] | None = None
        self._changed: list[list[Any]] = []  # entity changes of the command being applied (the changes table)
        self._alarms_stamp = 0
        self._deltas: dict[tuple[bytes, int], list[int]] = {}  # count changes of this batch, not yet written
        self._cmd_deltas: dict[tuple[bytes, int], list[int]] = {}  # ... of the command being applied
        self._direct: tuple[type[Command], ...] = _DIRECT  # the types applied without a nested transaction
        self._writing = False  # a command applied without one has started writing (see _DIRECT)
        # Networks read by the member commands of this batch: nwid as the command spells it -> (nwid, packed
        # record, its key). Emptied before every command that is not a member write (only those write networks)
        # and at both ends of apply_batch, so it never outlives the transaction that read it.
        self._nets: dict[str, tuple[int, bytes, bytes]] = {}
        # One msgpack packer for apply (under _apply_lock): msgpack.packb builds a new Packer per call. Same
        # options, so the same bytes.
        self._pack: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack
        if readonly and not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no ctrl.db here")
        # mode 0600: ctrl.db holds the controller identity's private key.
        self._env = lmdb.open(self.path, subdir=False, map_size=map_size, max_dbs=len(L.DB_NAMES) + len(L.LATER_DB_NAMES) + 1,
                              sync=sync, metasync=sync, readonly=readonly, lock=lock, max_readers=256,
                              mode=0o600)
        try:
            self._open_tables()
        except Exception:
            self._env.close()
            raise

    def _open_tables(self) -> None:
        try:  # (py-lmdb keeps handles opened without an explicit txn; read-only ones need create=False)
            dbs = {n: self._env.open_db(n.encode(), create=not self.readonly) for n in L.DB_NAMES}
        except lmdb.NotFoundError:
            raise FormatError(f"{self.path}: not a ctrl.db (missing tables)") from None
        self._changes_db: Any = None
        try:
            self._changes_db = self._env.open_db(b"changes", create=not self.readonly)
        except lmdb.NotFoundError:
            pass  # a read-only copy made before the changes table: it has none to offer
        self._db = dbs
        self._meta, self._requests, self._reqlog = dbs["meta"], dbs["requests"], dbs["reqlog"]
        self._live = L.Tables(dbs["networks"], dbs["members"], dbs["ips"], dbs["netstat"], b"netcount")
        self._staging = L.Tables(dbs["s_networks"], dbs["s_members"], dbs["s_ips"], dbs["s_netstat"],
                                 b"s_netcount")
        with self._env.begin(write=not self.readonly) as txn:
            fmt = txn.get(L.META_FORMAT, db=self._meta)
            if fmt is None and not self.readonly:
                txn.put(L.META_FORMAT, L.u64(RECORD_FORMAT), db=self._meta)
            elif fmt is None or L.read_u64(fmt) != RECORD_FORMAT:
                found = "none" if fmt is None else L.read_u64(fmt)
                raise FormatError(f"{self.path}: record format {found}, this version reads {RECORD_FORMAT}")
            self._applied = L.unpack_applied(txn.get(L.META_APPLIED, db=self._meta))
        self._handlers: dict[type[Command], Callable[[L.Txn, Any, int], Result]] = {
            NoOp: self._noop, ClusterInit: self._cluster_init,
            NetworkCreate: self._network_create, NetworkUpdate: self._network_update,
            NetworkDelete: self._network_delete,
            MemberCreate: self._member_upsert, MemberUpdate: self._member_upsert,
            MemberAuthorize: self._member_upsert, MemberDelete: self._member_delete,
            MemberRequest: self._member_request,
            RestoreBegin: self._restore_begin, RestoreChunk: self._restore_chunk,
            RestoreCommit: self._restore_commit, RestoreAbort: self._restore_abort,
            ClusterCertificate: self._cluster_certificate, ClusterRevoke: self._cluster_revoke,
            AlarmRaise: self._alarm_raise, AlarmClear: self._alarm_clear,
            PlanetInit: self._planet_init, ZtRoot: self._zt_root, PlanetSet: self._planet_set,
        }

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> "StateMachine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================================================ apply

    def apply_batch(self, entries: Sequence[tuple[int, int, bytes | Membership]]) -> list[Result | None]:
        """Apply (index, term, data) entries, in index order, in one write transaction.

        ``data`` is an encoded command, or the Membership in force after a membership change (stored in the same
        transaction, so a consistent copy holds the membership of its own index). Empty data (raft's term-start
        no-op), memberships and entries at or below the applied index give None. The applied index advances over
        every entry, so the driver should hand over every committed index.
        """
        with self._apply_lock:  # one applier at a time: the per-batch scratch state below is the instance's
            try:
                return self._apply_entries(entries, direct=_DIRECT)
            except _PartialWrite as e:  # (its transaction was aborted: nothing of the batch was written)
                log.error("%s: applying the batch again with a nested transaction per command", e)
                return self._apply_entries(entries, direct=())

    def _apply_entries(self, entries: Sequence[tuple[int, int, bytes | Membership]],
                       direct: tuple[type[Command], ...]) -> list[Result | None]:
        """apply_batch in one write transaction; ``direct``: the command types applied without a nested one."""
        results: list[Result | None] = []
        index0, term0 = last = self._applied
        self._deltas = {}
        self._nets = {}
        self._direct = direct
        try:
            with self._env.begin(write=True) as txn:
                for index, term, data in entries:
                    if index <= last[0]:
                        results.append(None)
                        continue
                    if isinstance(data, Membership):
                        self._put_membership(txn, data, index)
                        results.append(None)
                    else:
                        results.append(self._apply_one(txn, index, data) if data else None)
                    last = (index, term)
                self._flush_counts(txn)
                if last != (index0, term0):
                    txn.put(L.META_APPLIED, L.pack_applied(*last), db=self._meta)
        finally:
            self._deltas = {}
            self._nets = {}
        self._applied = last
        return results

    def apply(self, index: int, term: int, data: bytes) -> Result | None:
        return self.apply_batch([(index, term, data)])[0]

    def applied(self) -> tuple[int, int]:
        return self._applied

    def _apply_one(self, txn: L.Txn, index: int, data: bytes) -> Result:
        try:
            cmd = decode(bytes(data))
        except CommandError as e:
            return Result.failure(ErrorCode.BAD_COMMAND, e.message, e.field)
        rid = cmd.request_id.encode("utf-8", "surrogatepass")
        prior = txn.get(rid, db=self._requests)
        if prior is not None:
            # A KEY_REUSED answer is not remembered (the first result stays the key's) and changes nothing.
            return _replay(prior, cmd.fingerprint)
        ikey = L.u64(index)
        if type(cmd) not in _COUNTS_MAY_WAIT:
            self._flush_counts(txn)
            self._nets = {}  # (this command may write networks)
        # A command runs in a nested transaction, so that its failure rolls back its writes alone; but the types in
        # _DIRECT do every check before their first write (see _writing), so a failure leaves nothing to roll back
        # and they run in the batch's transaction itself (a nested one per command was ~7% of member apply time).
        direct = type(cmd) in self._direct
        child = txn if direct else self._env.begin(write=True, parent=txn)
        self._packed = None
        # Count changes go straight into the batch's sums when the command cannot fail after making them (they
        # come after _writing); otherwise they are added to them when it succeeds.
        self._cmd_deltas = self._deltas if direct else {}
        self._changed = []
        self._writing = False
        try:
            result = self._handlers[type(cmd)](child, cmd, index)
            if not direct:
                child.commit()
                for k, (total, authorized) in self._cmd_deltas.items():
                    d = self._deltas.setdefault(k, [0, 0])
                    d[0] += total
                    d[1] += authorized
            if self._changed:
                self._record_changes(txn, index, ikey, cmd)
        except (lmdb.Error, MemoryError, OSError):
            if not direct:
                child.abort()
            raise  # the environment failed, not the command: must not become a (node-local) result
        except Exception as e:
            if direct and self._writing:  # (a bug) after some writes, which only a nested transaction could undo
                raise _PartialWrite(f"entry {index} ({cmd.TYPE}) failed after writing: {type(e).__name__}: {e}")
            if not direct:
                child.abort()
            if isinstance(e, _Fail):
                result = Result.failure(e.code, e.message, e.field)
            elif isinstance(e, ValidationError):
                result = Result.failure(ErrorCode.INVALID, e.message, e.field)
            else:  # a bug: every node hits it identically, so its result is deterministic too
                log.exception("apply of entry %d (%s) failed", index, cmd.TYPE)
                result = Result.failure(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}")
        self._remember(txn, index, ikey, rid, result, self._packed if result.ok else None, cmd.fingerprint)
        return result

    def _record_changes(self, txn: L.Txn, index: int, ikey: bytes, cmd: Command) -> None:
        txn.put(ikey, self._pack([cmd.by, cmd.time, self._changed]), db=self._changes_db)
        if index % _PRUNE_EVERY:
            return
        # By index alone, as the request log: the same on every node. The oldest first: a deletion leaves the
        # cursor on the next entry (b"" past the last).
        cur = txn.cursor(db=self._changes_db)
        key, limit = cur.key() if cur.first() else b"", index - CHANGES_KEPT
        for _ in range(_PRUNE_MAX):
            if not key or L.read_u64(key) > limit:
                break
            cur.delete()
            key = cur.key()

    def _remember(self, txn: L.Txn, index: int, ikey: bytes, rid: bytes, result: Result,
                  packed: tuple[bytes, bytes] | None, fingerprint: bytes | None) -> None:
        txn.put(rid, self._pack(_result_wire(index, result, packed, fingerprint)), db=self._requests)
        txn.put(ikey, rid, db=self._reqlog)
        if index % _PRUNE_EVERY:
            return
        # Pruning is decided by the entry's index alone, never by how the driver batched entries, so every
        # node forgets the same request ids at the same point of the journal.
        cur = txn.cursor(db=self._reqlog)
        key, limit = cur.key() if cur.first() else b"", index - DEDUPE_WINDOW
        for _ in range(_PRUNE_MAX):
            if not key or L.read_u64(key) > limit:
                break
            txn.delete(cur.value(), db=self._requests)
            cur.delete()
            key = cur.key()

    # ============================================================================================ handlers

    def _noop(self, txn: L.Txn, cmd: NoOp, index: int) -> Result:
        return Result.success()

    def _controller(self, txn: L.Txn) -> int:
        c = txn.get(L.META_CONTROLLER, db=self._meta)
        if c is None:
            raise _Fail(ErrorCode.NOT_INITIALIZED, "the cluster has not been initialised")
        return int.from_bytes(c, "big")

    def _cluster_init(self, txn: L.Txn, cmd: ClusterInit, index: int) -> Result:
        if txn.get(L.META_CONTROLLER, db=self._meta) is not None:
            raise _Fail(ErrorCode.ALREADY_INITIALIZED, "the cluster is already initialised")
        address = parse_address(cmd.address)
        identity = controller_identity(cmd.signing_key)  # no memory-hard check here: see controller_identity
        check_controller_address(identity, address)
        info = {"cluster_id": parse_label(cmd.cluster_id, "cluster_id"),
                "timeline_id": parse_label(cmd.timeline_id, "timeline_id"),
                "address": format_address(address),
                "identity": str(identity),  # public: address:0:public key
                "token_hash": parse_token_hash(cmd.token_hash),
                "initialized_time": cmd.time}
        planet = None
        if cmd.planet_key is not None or cmd.world_id is not None:
            planet = self._planet_record(cmd.planet_key, cmd.world_id)
        self._put_cluster(txn, info, cmd.signing_key)
        if planet is not None:
            self._put_planet_key(txn, planet)
        return Result.success(dict(info))

    def _put_cluster(self, txn: L.Txn, info: dict[str, Any], signing_key: bytes) -> None:
        txn.put(L.META_CLUSTER, msgpack.packb(info, use_bin_type=True), db=self._meta)
        txn.put(L.META_SIGNING_KEY, bytes(signing_key), db=self._meta)
        txn.put(L.META_CONTROLLER, L.address_bytes(int(info["address"], 16)), db=self._meta)

    # ------------------------------------------------------------------------------------------- networks

    def _network_create(self, txn: L.Txn, cmd: NetworkCreate, index: int) -> Result:
        controller = self._controller(txn)
        if not 1 <= cmd.start <= NETWORK_N_MAX:
            raise ValidationError("start", f"expected 1..{NETWORK_N_MAX}, got {cmd.start}")
        changes = validate_network_changes(cmd.changes)
        if self._count(txn, self._live) >= NETWORK_N_MAX:
            raise _Fail(ErrorCode.FULL, f"all {NETWORK_N_MAX} network ids of this controller are taken")
        nwid = network_id(controller, self._free_n(txn, controller, cmd.start))
        return Result.success(self._write_network(txn, self._live, nwid, None, changes, cmd.time))

    def _free_n(self, txn: L.Txn, controller: int, start: int) -> int:
        """The first free n probing start, start+1, ..., NETWORK_N_MAX, 1, 2, ... The cursor walks the run of
        taken ids, so the cost is that run's length, not the number of networks."""
        cur = txn.cursor(db=self._live.networks)
        n = start
        for _ in range(2):  # the second pass is the wrap-around to 1
            found = cur.set_range(L.network_key(network_id(controller, n)))
            while found and cur.key() == L.network_key(network_id(controller, n)):
                if n == NETWORK_N_MAX:
                    break
                n += 1
                found = cur.next()
            else:
                return n
            n = 1
        raise _Fail(ErrorCode.FULL, f"all {NETWORK_N_MAX} network ids of this controller are taken")

    def _network_update(self, txn: L.Txn, cmd: NetworkUpdate, index: int) -> Result:
        controller = self._controller(txn)
        nwid = parse_nwid(cmd.nwid)
        check_network_id(nwid, controller, "nwid")
        changes = validate_network_changes(cmd.changes)
        raw = txn.get(L.network_key(nwid), db=self._live.networks)
        old = None if raw is None else unpack_network(raw)
        return Result.success(self._write_network(txn, self._live, nwid, old, changes, cmd.time))

    def _write_network(self, txn: L.Txn, t: L.Tables, nwid: int, old: dict[str, Any] | None,
                       changes: dict[str, Any], time: int) -> dict[str, Any]:
        rec = dict(old) if old is not None else network_defaults(time)
        rec.update(changes)
        if old is not None and rec == old:
            return network_view(nwid, old)  # nothing changed: no write, same revision
        rec["revision"] = 1 if old is None else old["revision"] + 1
        self._store_network(txn, t, nwid, rec, created=old is None)
        self._changed.append([L.CHANGE_NETWORK, nwid, 0, None if old is None else pack_network(old),
                              pack_network(rec)])
        return network_view(nwid, rec)

    def _store_network(self, txn: L.Txn, t: L.Tables, nwid: int, rec: dict[str, Any], *,
                       created: bool) -> None:
        txn.put(L.network_key(nwid), pack_network(rec), db=t.networks)
        if created:
            txn.put(L.network_key(nwid), L.pack_counts(0, 0), db=t.netstat)
            txn.put(t.netcount_key, L.u64(self._count(txn, t) + 1), db=self._meta)

    def _count(self, txn: L.Txn, t: L.Tables) -> int:
        return _network_count(txn, self._meta, t)

    def _network_delete(self, txn: L.Txn, cmd: NetworkDelete, index: int) -> Result:
        self._controller(txn)
        nwid = parse_nwid(cmd.nwid)
        key = L.network_key(nwid)
        raw = txn.get(key, db=self._live.networks)
        if raw is None:
            raise _Fail(ErrorCode.NOT_FOUND, f"network {format_nwid(nwid)} not found", "nwid")
        for db in (self._live.members, self._live.ips):  # the cascade: one key range per table
            cur = txn.cursor(db=db)
            if cur.set_range(key):
                while cur.key()[:8] == key and cur.delete():
                    pass
        txn.delete(key, db=self._live.netstat)
        txn.delete(key, db=self._live.networks)
        txn.put(self._live.netcount_key, L.u64(self._count(txn, self._live) - 1), db=self._meta)
        self._changed.append([L.CHANGE_NETWORK, nwid, 0, bytes(raw), None])
        return Result.success(network_view(nwid, unpack_network(raw)))

    # -------------------------------------------------------------------------------------------- members

    def _member_target(self, txn: L.Txn, cmd: Any) -> tuple[int, int, bytes, bytes]:
        """(nwid, address, the network's packed record, the member's key) or the deterministic failure. The
        network is read once per batch (self._nets), not once per member command."""
        net = self._nets.get(cmd.nwid)
        if net is not None:
            address = parse_address(cmd.address)
            return net[0], address, net[1], net[2] + address.to_bytes(5, "big")
        nwid = parse_nwid(cmd.nwid)
        address = parse_address(cmd.address)
        prefix = L.network_key(nwid)
        net_raw = txn.get(prefix, db=self._live.networks)
        if net_raw is None:
            self._controller(txn)  # (a network exists only in an initialised cluster: checked when none does)
            raise _Fail(ErrorCode.NOT_FOUND, f"network {format_nwid(nwid)} not found", "nwid")
        self._nets[cmd.nwid] = (nwid, net_raw, prefix)
        return nwid, address, net_raw, L.member_key(nwid, address)

    def _member_upsert(self, txn: L.Txn, cmd: MemberCreate | MemberUpdate | MemberAuthorize,
                       index: int) -> Result:
        nwid, address, net_raw, key = self._member_target(txn, cmd)
        if isinstance(cmd, MemberAuthorize):
            changes: dict[str, Any] = {"authorized": cmd.authorized}
        else:
            changes = validate_member_changes(cmd.changes)
        old_raw = txn.get(key, db=self._live.members)
        if old_raw is not None and isinstance(cmd, MemberCreate):
            raise _Fail(ErrorCode.CONFLICT, f"member {format_address(address)} already exists", "address")
        if old_raw is None and isinstance(cmd, MemberAuthorize):
            raise _Fail(ErrorCode.NOT_FOUND, f"member {format_address(address)} not found", "address")
        old = None if old_raw is None else member_values(old_raw)
        rec = member_defaults(cmd.time) if old is None else dict(zip(MEMBER_RECORD, old))
        for k, v in changes.items():
            if k != "authorized":
                rec[k] = v
            elif v != rec["authorized"]:
                rec["authorized"] = v
                rec["lastAuthorizedTime" if v else "lastDeauthorizedTime"] = cmd.time
                rec["lastAuthorizedCredentialType"] = "api"
        # Assign when this command authorizes the member, or changes what assignment depends on for an
        # authorized one; a rename of an authorized member assigns nothing (its next config request may).
        assign = old is None or not old[M_AUTHORIZED] or "ipAssignments" in changes or "noAutoAssignIps" in changes
        return self._save_member(txn, nwid, address, key, net_raw, old_raw, old, rec, assign)

    def _save_member(self, txn: L.Txn, nwid: int, address: int, key: bytes, net_raw: bytes,
                     old_raw: bytes | None, old: list[Any] | None, rec: dict[str, Any], assign: bool) -> Result:
        """The common end of every member write: auto-assign IPv4 if ``assign`` (and the member is authorized and
        lets us), then store ``rec`` with revision + 1, or, when it equals ``old`` (the stored record's values,
        member_values), write nothing at all (same revision, and an unchanged ctrl.db for a repeated request). The
        result is the member view. ``rec`` is a record dict with its keys in record order (made from
        member_defaults or a stored record, keys only assigned to), so its values() are the record's fields."""
        fresh_ip = fresh_key = None
        if assign and rec["authorized"] and not rec["noAutoAssignIps"]:
            fresh_ip, fresh_key = self._auto_assign(txn, key, address, net_raw, rec)
        values = list(rec.values())
        if old is not None and values == old:
            return Result(True, member_view(nwid, address, rec))
        rec["revision"] = values[M_REVISION] = 1 if old is None else old[M_REVISION] + 1
        t = self._live
        old_ips = () if old is None else old[M_IP_ASSIGNMENTS]
        new_ips = rec["ipAssignments"]
        if old is None and fresh_key is not None and len(new_ips) == 1:  # (new, holding only the address just
            ip_puts, ip_deletes = [fresh_key], []                          # picked as free: nothing to look up)
        elif new_ips != old_ips:
            ip_puts, ip_deletes = self._ip_writes(txn, t, nwid, address, old_ips, new_ips, fresh_ip, fresh_key)
        else:
            ip_puts = ip_deletes = []
        packed = self._pack(values)  # = pack_member(rec)
        view = member_view(nwid, address, rec)
        self._writing = True  # nothing fails from here on (see _DIRECT)
        if ip_puts or ip_deletes:
            me = key[8:]  # (the member's address)
            for k in ip_puts:
                txn.put(k, me, db=t.ips)
            for k in ip_deletes:
                txn.delete(k, db=t.ips)
        total, authorized = (1, int(rec["authorized"])) if old is None else (
            0, int(rec["authorized"]) - int(old[M_AUTHORIZED]))
        if total or authorized:  # (_bump_counts, inline)
            d = self._cmd_deltas.setdefault((t.netcount_key, nwid), [0, 0])
            d[0] += total
            d[1] += authorized
        txn.put(key, packed, db=t.members)
        self._packed = (key, packed)
        self._changed.append([L.CHANGE_MEMBER, nwid, address, old_raw, packed])
        return Result(True, view)

    def _member_request(self, txn: L.Txn, cmd: MemberRequest, index: int) -> Result:
        """A ZeroTier node asked for its config: what the reference controller records at that point
        (EmbeddedNetworkController::_request, brief 10.1 steps 3-8), deterministically.

        Unauthorized members are recorded too (so an operator can authorize them); the caller answers them
        ACCESS_DENIED. Proposed by whichever node heard the request, possibly several for one member: a second
        request finds the member as the first left it and changes nothing (no write, same revision) unless it
        reports another version.
        """
        controller = self._controller(txn)
        check_network_id(parse_nwid(cmd.nwid), controller, "nwid")
        nwid, address, net_raw, key = self._member_target(txn, cmd)
        identity = member_identity(cmd.identity, address)  # parse only: the proposer checked the hash
        versions = {k: parse_version_field(getattr(cmd, k), k) for k in ("vMajor", "vMinor", "vRev", "vProto")}
        old_raw = txn.get(key, db=self._live.members)
        old = None if old_raw is None else member_values(old_raw)
        if old is not None and old[M_IDENTITY] and not _same_identity(old[M_IDENTITY], identity):
            # ZeroTier answers NETWORK_ACCESS_DENIED: someone else claims an address whose owner we know.
            raise _Fail(ErrorCode.CONFLICT, f"another identity already holds address {format_address(address)} "
                                            f"on network {format_nwid(nwid)}", "identity")
        rec = member_defaults(cmd.time) if old is None else dict(zip(MEMBER_RECORD, old))
        if not rec["identity"]:
            rec["identity"] = identity
        for k, v in versions.items():
            if v != -1:  # -1: the request did not say; keep what an earlier one reported
                rec[k] = v
        if not rec["authorized"] and not unpack_network(net_raw)["private"]:
            rec["authorized"] = True
            rec["lastAuthorizedTime"] = cmd.time
            rec["lastAuthorizedCredentialType"] = "public"
        # ZeroTier assigns at every request of an authorized member; _auto_assign does nothing for a member that
        # already holds a routed IPv4 address, so a repeated request changes nothing.
        return self._save_member(txn, nwid, address, key, net_raw, old_raw, old, rec, True)

    def _auto_assign(self, txn: L.Txn, key: bytes, address: int, net_raw: bytes,
                     rec: dict[str, Any]) -> tuple[str | None, bytes | None]:
        """Our addition to ZeroTier: assign when authorized through the API, so the address shows at once.
        Returns the address added (known free) and its address-index key, if any. ``key``: the member's."""
        ips = rec["ipAssignments"]
        plan = _v4_plan(net_raw)
        if plan is None or len(ips) >= ARRAY_MAX or (ips and has_routed_v4(ips, plan)):
            return None, None
        db, prefix, get = self._live.ips, key[:8] + b"\x04", txn.get  # (key[:8]: the network's id)
        probed = [b""]  # the last key looked up: the free address's, once one is found

        def taken(n: int) -> bool:
            probed[0] = k = prefix + n.to_bytes(4, "big")
            return get(k, db=db) is not None

        ip = pick_v4(address, plan, taken)
        if ip is None:
            return None, None
        rec["ipAssignments"] = [*ips, ip]
        return ip, probed[0]

    def _store_new_member(self, txn: L.Txn, t: L.Tables, nwid: int, address: int, rec: dict[str, Any]) -> None:
        """Write a member that is not there yet (a restored one), indexing its addresses and counting it;
        CONFLICT if an address is taken."""
        self._write_ips(txn, t, L.address_bytes(address),
                        *self._ip_writes(txn, t, nwid, address, (), rec["ipAssignments"], None))
        self._bump_counts(t, nwid, 1, int(rec["authorized"]))
        txn.put(L.member_key(nwid, address), self._pack([rec[f] for f in MEMBER_RECORD]), db=t.members)

    def _ip_writes(self, txn: L.Txn, t: L.Tables, nwid: int, address: int, old_ips: Sequence[str],
                   new_ips: Sequence[str], fresh_ip: str | None,
                   fresh_key: bytes | None = None) -> tuple[list[bytes], list[bytes]]:
        """What keeps the address index in step with a member's addresses going from ``old_ips`` to ``new_ips``:
        (index keys to point at the member, index keys to delete); CONFLICT if an address is another member's.
        Reads only (_write_ips writes). ``fresh_ip``: one just picked as free (not looked up), whose key is
        ``fresh_key``."""
        me = L.address_bytes(address)
        old_set = set(old_ips)
        puts = []
        for ip in new_ips:
            if ip not in old_set:
                if ip == fresh_ip:
                    puts.append(fresh_key or L.ip_key(nwid, ip))
                    continue
                ip_key = L.ip_key(nwid, ip)
                holder = txn.get(ip_key, db=t.ips)
                if holder is not None and holder != me:
                    raise _Fail(ErrorCode.CONFLICT, f"{ip} is already assigned to member {holder.hex()}",
                                "ipAssignments")
                puts.append(ip_key)
        return puts, [L.ip_key(nwid, ip) for ip in old_set.difference(new_ips)]

    @staticmethod
    def _write_ips(txn: L.Txn, t: L.Tables, me: bytes, puts: list[bytes], deletes: list[bytes]) -> None:
        for k in puts:
            txn.put(k, me, db=t.ips)
        for k in deletes:
            txn.delete(k, db=t.ips)

    def _bump_counts(self, t: L.Tables, nwid: int, total: int, authorized: int) -> None:
        """Member count changes are summed in memory and written once per network per batch (see
        _flush_counts): a read-modify-write of the counts row per member write was ~6% of apply time."""
        d = self._cmd_deltas.setdefault((t.netcount_key, nwid), [0, 0])
        d[0] += total
        d[1] += authorized

    def _flush_counts(self, txn: L.Txn) -> None:
        """Write the summed count changes. Runs in the batch transaction (never inside a command's nested one,
        which could roll back after the sums were cleared): before every command that is not a member write
        (those read, copy or delete count rows) and at the end of the batch."""
        for (table_key, nwid), (total, authorized) in self._deltas.items():
            if total or authorized:
                db = self._live.netstat if table_key == self._live.netcount_key else self._staging.netstat
                key = L.network_key(nwid)
                a, b = L.unpack_counts(txn.get(key, db=db))
                txn.put(key, L.pack_counts(a + total, b + authorized), db=db)
        self._deltas = {}

    def _member_delete(self, txn: L.Txn, cmd: MemberDelete, index: int) -> Result:
        nwid, address, _, key = self._member_target(txn, cmd)
        raw = txn.get(key, db=self._live.members)
        if raw is None:
            raise _Fail(ErrorCode.NOT_FOUND, f"member {format_address(address)} not found", "address")
        old = unpack_member(raw)
        ip_keys = [L.ip_key(nwid, ip) for ip in old["ipAssignments"]]
        authorized = int(old["authorized"])
        view = member_view(nwid, address, old)
        self._writing = True  # nothing fails from here on (see _DIRECT)
        for ip_key in ip_keys:
            txn.delete(ip_key, db=self._live.ips)
        self._bump_counts(self._live, nwid, -1, -authorized)
        txn.delete(key, db=self._live.members)
        self._changed.append([L.CHANGE_MEMBER, nwid, address, bytes(raw), None])
        return Result.success(view)

    # -------------------------------------------------------------------------------------------- restore

    def _restore_begin(self, txn: L.Txn, cmd: RestoreBegin, index: int) -> Result:
        self._controller(txn)  # restoring needs a running (initialised) cluster
        address = parse_address(cmd.address)
        identity = controller_identity(cmd.signing_key)  # (a backup from before identities is refused here)
        check_controller_address(identity, address)
        pending = {"restore_id": parse_label(cmd.restore_id, "restore_id"),
                   "timeline_id": parse_label(cmd.timeline_id, "timeline_id"),
                   "address": format_address(address),
                   "identity": str(identity),
                   "signing_key": bytes(cmd.signing_key),
                   "token_hash": None if cmd.token_hash is None else parse_token_hash(cmd.token_hash),
                   "next_seq": 0, "networks": 0, "members": 0}
        if cmd.planet_key is not None or cmd.world_id is not None or cmd.planet is not None:
            planet = self._planet_record(cmd.planet_key, cmd.world_id)
            if cmd.planet is not None:
                world = parse_world(cmd.planet, "planet")
                self._check_own_world(world, planet, "planet")
            pending["planet_key"] = planet
            pending["planet"] = None if cmd.planet is None else bytes(cmd.planet)
        self._clear(txn, self._staging)  # a begin discards whatever an abandoned restore left behind
        txn.put(L.META_RESTORE, msgpack.packb(pending, use_bin_type=True), db=self._meta)
        return Result.success({"restore_id": pending["restore_id"], "state": "begun"})

    def _pending(self, txn: L.Txn, restore_id: str) -> dict[str, Any]:
        raw = txn.get(L.META_RESTORE, db=self._meta)
        pending: dict[str, Any] | None = None if raw is None else msgpack.unpackb(raw, raw=False)
        if pending is None or pending["restore_id"] != restore_id:
            raise _Fail(ErrorCode.RESTORE, f"no restore {restore_id!r} is in progress", "restore_id")
        return pending

    def _restore_chunk(self, txn: L.Txn, cmd: RestoreChunk, index: int) -> Result:
        pending = self._pending(txn, cmd.restore_id)
        if cmd.seq != pending["next_seq"]:
            raise _Fail(ErrorCode.RESTORE, f"expected chunk {pending['next_seq']}, got {cmd.seq}", "seq")
        t = self._staging
        controller = int(pending["address"], 16)
        for i, d in enumerate(cmd.networks):
            try:
                nwid, rec = network_record(d, controller)
            except ValidationError as e:
                raise ValidationError(f"networks[{i}].{e.field}" if e.field else f"networks[{i}]", e.message)
            if txn.get(L.network_key(nwid), db=t.networks) is not None:
                raise _Fail(ErrorCode.CONFLICT, f"network {format_nwid(nwid)} appears twice", f"networks[{i}]")
            self._store_network(txn, t, nwid, rec, created=True)
        for i, d in enumerate(cmd.members):
            try:
                nwid, address, rec = member_record(d)
            except ValidationError as e:
                raise ValidationError(f"members[{i}].{e.field}" if e.field else f"members[{i}]", e.message)
            if txn.get(L.network_key(nwid), db=t.networks) is None:
                raise _Fail(ErrorCode.NOT_FOUND, f"member of unknown network {format_nwid(nwid)}",
                            f"members[{i}].nwid")
            if txn.get(L.member_key(nwid, address), db=t.members) is not None:
                raise _Fail(ErrorCode.CONFLICT, f"member {format_address(address)} appears twice",
                            f"members[{i}]")
            try:
                self._store_new_member(txn, t, nwid, address, rec)
            except _Fail as e:
                raise _Fail(e.code, e.message, f"members[{i}].{e.field}") from None
        pending["next_seq"] += 1
        pending["networks"] += len(cmd.networks)
        pending["members"] += len(cmd.members)
        txn.put(L.META_RESTORE, msgpack.packb(pending, use_bin_type=True), db=self._meta)
        return Result.success({"restore_id": cmd.restore_id, "seq": cmd.seq})

    def _restore_commit(self, txn: L.Txn, cmd: RestoreCommit, index: int) -> Result:
        pending = self._pending(txn, cmd.restore_id)
        if "identity" not in pending:  # staged by a version whose controller key was not a ZeroTier identity
            raise _Fail(ErrorCode.RESTORE, "this restore was begun by an earlier version, with a key that is not a "
                                           "ZeroTier identity; abort it and restore again", "restore_id")
        want = {"chunks": pending["next_seq"], "networks": pending["networks"], "members": pending["members"]}
        got = {"chunks": cmd.chunks, "networks": cmd.networks, "members": cmd.members}
        if want != got:
            raise _Fail(ErrorCode.RESTORE, f"staged {want}, the commit expects {got}")
        self._clear(txn, self._live)
        for name in ("networks", "members", "ips", "netstat"):
            src = txn.cursor(db=getattr(self._staging, name))
            txn.cursor(db=getattr(self._live, name)).putmulti(src.iternext(), append=True)
        txn.put(self._live.netcount_key, L.u64(self._count(txn, self._staging)), db=self._meta)
        self._clear(txn, self._staging)
        info = msgpack.unpackb(txn.get(L.META_CLUSTER, db=self._meta), raw=False)
        info.update(timeline_id=pending["timeline_id"], address=pending["address"], identity=pending["identity"])
        info.pop("public_key", None)  # (a cluster initialised before identities: its old Ed25519 public key)
        if pending["token_hash"] is not None:
            info["token_hash"] = pending["token_hash"]
        self._put_cluster(txn, info, pending["signing_key"])
        self._restore_planet(txn, pending)
        txn.delete(L.META_RESTORE, db=self._meta)
        self._changed.append([L.CHANGE_RESTORE, 0, 0, None, msgpack.packb(
            {"timeline_id": pending["timeline_id"], "networks": pending["networks"], "members": pending["members"]})])
        return Result.success({"restore_id": cmd.restore_id, "timeline_id": pending["timeline_id"],
                               "networks": pending["networks"], "members": pending["members"]})

    def _restore_abort(self, txn: L.Txn, cmd: RestoreAbort, index: int) -> Result:
        self._pending(txn, cmd.restore_id)
        self._clear(txn, self._staging)
        txn.delete(L.META_RESTORE, db=self._meta)
        return Result.success({"restore_id": cmd.restore_id, "state": "aborted"})

    # ------------------------------------------------------------------------------- controller certificates

    def _put_membership(self, txn: L.Txn, m: Membership, index: int) -> None:
        """The membership in force from ``index`` on. A controller that leaves it loses its certificates for good:
        they move to the deny-list in this same transaction (a removed node's certificate is still valid for
        years; only this makes it worthless). Its alarms go too: no one else would ever clear them."""
        old = _membership(txn.get(L.META_MEMBERSHIP, db=self._meta))
        gone = set(old.voters + old.learners) - set(m.voters + m.learners) if old is not None else set()
        if gone:
            certs, revoked = self._certs(txn), self._revoked(txn)
            for node in sorted(gone):
                for serial in certs.pop(node, []):
                    revoked[serial] = {"node": node, "reason": "removed", "index": index}
            self._put_certs(txn, certs, revoked)
            alarms = self._alarms(txn)
            if any(a["node"] in gone for a in alarms):
                self._put_alarms(txn, [a for a in alarms if a["node"] not in gone])
            roots = self._roots(txn)  # a node that left is no root of ours (the next planet drops it)
            if any(node in roots for node in gone):
                self._put_roots(txn, {k: v for k, v in roots.items() if k not in gone})
        txn.put(L.META_MEMBERSHIP, msgpack.packb(m.to_plain(), use_bin_type=True), db=self._meta)

    def _cluster_certificate(self, txn: L.Txn, cmd: ClusterCertificate, index: int) -> Result:
        node, serial = parse_label(cmd.node, "node"), parse_serial(cmd.serial)
        certs, revoked = self._certs(txn), self._revoked(txn)
        if serial in revoked:
            raise _Fail(ErrorCode.CONFLICT, f"certificate {serial} is revoked", "serial")
        if serial not in certs.setdefault(node, []):
            certs[node].append(serial)
            self._put_certs(txn, certs, revoked)
        return Result.success({"node": node, "serial": serial})

    def _cluster_revoke(self, txn: L.Txn, cmd: ClusterRevoke, index: int) -> Result:
        node = parse_label(cmd.node, "node")
        certs, revoked = self._certs(txn), self._revoked(txn)
        if cmd.serial is None:
            serials = certs.pop(node, [])
            if not serials:
                raise _Fail(ErrorCode.NOT_FOUND, f"no certificate of {node} is recorded; name its serial", "serial")
        else:
            serials = [parse_serial(cmd.serial)]
            if serials[0] in certs.get(node, []):
                certs[node].remove(serials[0])
        for serial in serials:
            revoked[serial] = {"node": node, "reason": "revoked", "index": index}
        self._put_certs(txn, {k: v for k, v in certs.items() if v}, revoked)
        return Result.success({"node": node, "revoked": serials})

    def _certs(self, txn: L.Txn) -> dict[str, list[str]]:
        raw = txn.get(L.META_CERTS, db=self._meta)
        return {} if raw is None else msgpack.unpackb(raw, raw=False)

    def _revoked(self, txn: L.Txn) -> dict[str, dict[str, Any]]:
        raw = txn.get(L.META_REVOKED, db=self._meta)
        return {} if raw is None else msgpack.unpackb(raw, raw=False)

    def _put_certs(self, txn: L.Txn, certs: dict[str, list[str]], revoked: dict[str, dict[str, Any]]) -> None:
        txn.put(L.META_CERTS, msgpack.packb(certs, use_bin_type=True), db=self._meta)
        txn.put(L.META_REVOKED, msgpack.packb(revoked, use_bin_type=True), db=self._meta)

    # ------------------------------------------------------------------------------------------------ alarms

    def _alarm_raise(self, txn: L.Txn, cmd: AlarmRaise, index: int) -> Result:
        node, name = parse_label(cmd.node, "node"), parse_alarm_name(cmd.name)
        message = parse_alarm_message(cmd.message)
        membership = _membership(txn.get(L.META_MEMBERSHIP, db=self._meta))
        if membership is not None and node not in membership.voters + membership.learners:
            # A raise from a node removed while it was in flight would refuse writes for good: nobody clears it.
            raise _Fail(ErrorCode.NOT_FOUND, f"{node} is not a member of the cluster", "node")
        alarms = self._alarms(txn)
        for a in alarms:
            if a["node"] == node and a["name"] == name:
                return Result.success(dict(a))  # already on: the first raise (its index and message) stands
        rec = {"node": node, "name": name, "message": message, "index": index, "time": cmd.time}
        self._put_alarms(txn, [*alarms, rec])
        return Result.success(dict(rec))

    def _alarm_clear(self, txn: L.Txn, cmd: AlarmClear, index: int) -> Result:
        node, name = parse_label(cmd.node, "node"), parse_alarm_name(cmd.name)
        alarms = self._alarms(txn)
        kept = [a for a in alarms if (a["node"], a["name"]) != (node, name)]
        if len(kept) != len(alarms):
            self._put_alarms(txn, kept)
        # Clearing an alarm that is not on succeeds too: a retried or duplicate clear is not an error.
        return Result.success({"node": node, "name": name, "cleared": len(kept) != len(alarms)})

    def _alarms(self, txn: L.Txn) -> list[dict[str, Any]]:
        raw = txn.get(L.META_ALARMS, db=self._meta)
        return [] if raw is None else msgpack.unpackb(raw, raw=False)

    @property
    def alarms_stamp(self) -> int:
        """Changes whenever a batch may have changed the alarms (a cheap "look again" for watchers)."""
        return self._alarms_stamp

    def _put_alarms(self, txn: L.Txn, alarms: list[dict[str, Any]]) -> None:
        self._alarms_stamp += 1
        if not alarms:
            txn.delete(L.META_ALARMS, db=self._meta)  # absent means none: the check before every write is a miss
            return
        ordered = sorted(alarms, key=lambda a: (a["node"], a["name"]))
        txn.put(L.META_ALARMS, msgpack.packb(ordered, use_bin_type=True), db=self._meta)

    # ------------------------------------------------------------------------------------------------ planet

    @staticmethod
    def _planet_record(planet_key: bytes | None, world_id: int | None) -> dict[str, Any]:
        """{world_id, public, private} from a command's optional pair (both or neither, checked here)."""
        if planet_key is None or world_id is None:
            raise ValidationError("planet_key" if planet_key is None else "world_id",
                                  "planet_key and world_id come together")
        public, private = parse_planet_key(planet_key)
        return {"world_id": parse_world_id(world_id), "public": public, "private": private}

    def _planet_key(self, txn: L.Txn) -> dict[str, Any] | None:
        raw = txn.get(L.META_PLANET_KEY, db=self._meta)
        return None if raw is None else msgpack.unpackb(raw, raw=False)

    def _put_planet_key(self, txn: L.Txn, planet: dict[str, Any]) -> None:
        rec = {"world_id": planet["world_id"], "public": bytes(planet["public"]), "private": bytes(planet["private"])}
        txn.put(L.META_PLANET_KEY, msgpack.packb(rec, use_bin_type=True), db=self._meta)

    @staticmethod
    def _check_own_world(world: World, planet: dict[str, Any], field: str) -> None:
        """A world of this cluster: its id, and it names the cluster's planet key as the next signer."""
        if world.id != planet["world_id"]:
            raise ValidationError(field, f"world id {world.id} is not the cluster's planet id {planet['world_id']}")
        if world.updates_must_be_signed_by != planet["public"]:
            raise ValidationError(field, "the world must name the cluster's planet key as the signer of the next "
                                         "update (or the cluster loses control of its clients)")

    def _planet_init(self, txn: L.Txn, cmd: PlanetInit, index: int) -> Result:
        self._controller(txn)
        planet = self._planet_record(cmd.planet_key, cmd.world_id)
        if txn.get(L.META_PLANET_KEY, db=self._meta) is not None:
            raise _Fail(ErrorCode.ALREADY_INITIALIZED, "the cluster already has its planet key", "planet_key")
        self._put_planet_key(txn, planet)
        return Result.success({"world_id": planet["world_id"], "public_key": planet["public"].hex()})

    def _zt_root(self, txn: L.Txn, cmd: ZtRoot, index: int) -> Result:
        node = parse_label(cmd.node, "node")
        ident = root_identity(cmd.identity)
        rec = {"identity": str(ident), "endpoints": parse_endpoints(cmd.endpoints)}
        membership = _membership(txn.get(L.META_MEMBERSHIP, db=self._meta))
        if membership is not None and node not in membership.voters + membership.learners:
            # A record from a node removed while it was in flight would stay for good: nobody drops it.
            raise _Fail(ErrorCode.NOT_FOUND, f"{node} is not a member of the cluster", "node")
        roots = self._roots(txn)
        for other, r in roots.items():
            if other != node and r["identity"].split(":", 1)[0] == f"{ident.address:010x}":
                raise _Fail(ErrorCode.CONFLICT, f"{other} already holds root identity {ident.address:010x}",
                            "identity")
        changed = roots.get(node) != rec
        if changed:
            roots[node] = rec
            self._put_roots(txn, roots)
        return Result.success({"node": node, **rec, "changed": changed})

    def _planet_set(self, txn: L.Txn, cmd: PlanetSet, index: int) -> Result:
        self._controller(txn)
        planet = self._planet_key(txn)
        if planet is None:
            raise _Fail(ErrorCode.NOT_INITIALIZED, "the cluster has no planet key (planet.init gives it one)",
                        "world")
        world = parse_world(cmd.world)
        self._check_own_world(world, planet, "world")
        current_raw = txn.get(L.META_PLANET, db=self._meta)
        if current_raw == cmd.world:
            return Result.success(_planet_summary(world, changed=False))
        signer = planet["public"]
        if current_raw is not None:
            current = World.decode(current_raw)
            if world.timestamp <= current.timestamp:
                raise _Fail(ErrorCode.CONFLICT, f"the world's timestamp {world.timestamp} is not newer than the "
                                                f"current planet's {current.timestamp}", "world")
            signer = current.updates_must_be_signed_by
        if not world.verify(signer):
            raise ValidationError("world", "the signature does not verify with the key the current planet names "
                                           "(the first planet: the cluster's planet key)")
        txn.put(L.META_PLANET, bytes(cmd.world), db=self._meta)
        return Result.success(_planet_summary(world, changed=True))

    def _restore_planet(self, txn: L.Txn, pending: dict[str, Any]) -> None:
        """A restore keeps the planet its clients trust. A backup without a planet key (made before planets)
        leaves the cluster's planet as it is. A backup of this same planet (same key) keeps whichever world is
        newer, so the planet's timestamps never go back. A backup of another planet (another cluster's, or this
        one made before it had a key) brings its key, id and world along: its networks' clients trust that key,
        and the next planet.set is signed with it. Root records are the running cluster's: they stay."""
        theirs = pending.get("planet_key")
        if theirs is None:
            return
        ours = self._planet_key(txn)
        backup_world = pending.get("planet")
        if ours is not None and bytes(ours["public"]) == bytes(theirs["public"]) \
                and ours["world_id"] == theirs["world_id"]:
            current_raw = txn.get(L.META_PLANET, db=self._meta)
            if backup_world is not None and (current_raw is None or World.decode(backup_world).timestamp
                                             > World.decode(current_raw).timestamp):
                txn.put(L.META_PLANET, bytes(backup_world), db=self._meta)
            return
        self._put_planet_key(txn, theirs)
        if backup_world is None:
            txn.delete(L.META_PLANET, db=self._meta)
        else:
            txn.put(L.META_PLANET, bytes(backup_world), db=self._meta)

    def _roots(self, txn: L.Txn) -> dict[str, dict[str, Any]]:
        raw = txn.get(L.META_ROOTS, db=self._meta)
        return {} if raw is None else msgpack.unpackb(raw, raw=False)

    def _put_roots(self, txn: L.Txn, roots: dict[str, dict[str, Any]]) -> None:
        if not roots:
            txn.delete(L.META_ROOTS, db=self._meta)
            return
        ordered = {k: roots[k] for k in sorted(roots)}
        txn.put(L.META_ROOTS, msgpack.packb(ordered, use_bin_type=True), db=self._meta)

    def _clear(self, txn: L.Txn, t: L.Tables) -> None:
        for db in (t.networks, t.members, t.ips, t.netstat):
            txn.drop(db, delete=False)
        txn.put(t.netcount_key, L.u64(0), db=self._meta)

    # ================================================================================================ reads

    def cluster_info(self) -> dict[str, Any] | None:
        """cluster_id, timeline_id, address, identity (the controller's public ZeroTier identity string),
        token_hash, initialized_time; None before init. (A cluster initialised before controller identities has
        public_key, its old Ed25519 public key in hex, instead of identity.)"""
        with self._env.begin() as txn:
            raw = txn.get(L.META_CLUSTER, db=self._meta)
        info: dict[str, Any] | None = None if raw is None else msgpack.unpackb(raw, raw=False)
        return info

    def membership(self) -> Membership | None:
        """The cluster membership at the applied index (None before the first membership entry)."""
        with self._env.begin() as txn:
            return _membership(txn.get(L.META_MEMBERSHIP, db=self._meta))

    def certificates(self) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
        """(node -> recorded certificate serials, revoked serial -> {node, reason, index}), read together."""
        with self._env.begin() as txn:
            return self._certs(txn), self._revoked(txn)

    def alarms(self) -> list[dict[str, Any]]:
        """The alarms on, as applied: [{node, name, message, index (of the raise), time (the raiser's clock)}]
        ordered by (node, name). While any is on, writes that add data are refused (commands.ALARM_EXEMPT_TYPES)."""
        with self._env.begin() as txn:
            return self._alarms(txn)

    def planet(self) -> bytes | None:
        """The cluster's current planet, a serialized signed world (World.decode), as the last accepted planet.set
        (or a restore) left it; None before the first."""
        with self._env.begin() as txn:
            return txn.get(L.META_PLANET, db=self._meta)

    def planet_key(self) -> tuple[int, bytes, bytes] | None:
        """(world id, public key, private key) of the cluster's planet, 64-byte C25519 keys; None for a cluster
        without one (not initialised, or initialised before planets and no planet.init since). The private key
        signs every next planet: keep it out of anything shown."""
        with self._env.begin() as txn:
            p = self._planet_key(txn)
        return None if p is None else (p["world_id"], bytes(p["public"]), bytes(p["private"]))

    def planet_info(self) -> dict[str, Any] | None:
        """The public part: {world_id, public_key (hex)}; None without a planet key."""
        key = self.planet_key()
        return None if key is None else {"world_id": key[0], "public_key": key[1].hex()}

    def root_records(self) -> dict[str, dict[str, Any]]:
        """Cluster node id -> {identity (its public root identity string), endpoints ["IP/port"]}, ordered by node
        id: each node's last zt.root, for the nodes still members."""
        with self._env.begin() as txn:
            return self._roots(txn)

    def usage(self) -> tuple[int, int]:
        """(bytes of live data, map size): the pages every table and the main database use now. Unlike the file
        size, which never shrinks, this goes down when data is deleted (LMDB reuses freed pages before it grows
        the file), so it tells how close an apply is to MDB_MAP_FULL."""
        return lmdb_usage(self._env, self._db.values())

    def signing_key(self) -> bytes | None:
        """The controller identity's binary form with its private key, as cluster.init or restore carried it (kept
        out of cluster_info so it is not shown by accident); None before init. A ctrl.db initialised before
        controller identities holds a 32-byte Ed25519 key here instead."""
        with self._env.begin() as txn:
            return txn.get(L.META_SIGNING_KEY, db=self._meta)

    def controller_identity(self) -> Identity | None:
        """The cluster's ZeroTier controller identity, private key included; None before init, and None for a
        ctrl.db initialised before controller identities (a legacy 32-byte Ed25519 key). Such a cluster still
        opens and keeps serving the API, but cannot answer over ZeroTier: its address was a random stand-in, not
        derived from any key, so no identity will ever hold it (and its network ids embed that address)."""
        return _identity_of(self.signing_key())

    def restore_pending(self) -> dict[str, Any] | None:
        """The restore being staged (restore_id, next_seq, counts), without its key material."""
        with self._env.begin() as txn:
            raw = txn.get(L.META_RESTORE, db=self._meta)
        if raw is None:
            return None
        p = msgpack.unpackb(raw, raw=False)
        return {k: p[k] for k in ("restore_id", "timeline_id", "address", "next_seq", "networks", "members")}

    def changes(self, after: int, upto: int, limit: int = 100_000) -> Iterator[EntityChange]:
        """The entity changes of entries after..upto that are still kept (CHANGES_KEPT), in index order: what
        each did to networks and members, the state before and after (API views), and who asked."""
        if self._changes_db is None:
            return
        out: list[EntityChange] = []
        with self._env.begin() as txn:
            cur = txn.cursor(db=self._changes_db)
            ok = cur.set_range(L.u64(after + 1))
            while ok and len(out) < limit:
                index = L.read_u64(cur.key())
                if index > upto:
                    break
                out.extend(_decode_changes(index, cur.value()))
                ok = cur.next()
        yield from out

    def result_for(self, request_id: str, fingerprint: bytes | None = None) -> Result | None:
        """The result of an applied request (for a follower answering a forwarded write), if still remembered.
        ``fingerprint``: the asking command's; when the id is remembered for another request, the KEY_REUSED
        failure its apply produced (the remembered result belongs to that other request)."""
        with self._env.begin() as txn:
            raw = txn.get(request_id.encode("utf-8", "surrogatepass"), db=self._requests)
        return None if raw is None else _replay(raw, fingerprint)

    @contextlib.contextmanager
    def reader(self) -> Iterator["Reader"]:
        """Model reads that all see one state (one LMDB read transaction), for answers built from several reads
        (a count and the listing it counts). The transaction is held until the block ends: keep it short, it
        holds one of ctrl.db's 256 reader slots and the pages it sees."""
        reader = Reader(self._env.begin(), self._meta, self._live)
        try:
            yield reader
        finally:
            reader.close()

    # Single reads, each in a transaction of its own.

    def get_network(self, nwid: str) -> dict[str, Any] | None:
        with self.reader() as r:
            return r.get_network(nwid)

    def list_networks(self) -> list[str]:
        with self.reader() as r:
            return r.list_networks()

    def network_count(self) -> int:
        with self.reader() as r:
            return r.network_count()

    def iter_networks(self) -> Iterator[dict[str, Any]]:
        """Every network in id order, from one read transaction (consume or close() the iterator)."""
        with self.reader() as r:
            yield from r.iter_networks()

    def get_member(self, nwid: str, address: str) -> dict[str, Any] | None:
        with self.reader() as r:
            return r.get_member(nwid, address)

    def list_members(self, nwid: str) -> dict[str, int] | None:
        """{address: revision} of a network's members, or None if there is no such network."""
        with self.reader() as r:
            return r.list_members(nwid)

    def iter_member_revisions(self, nwid: str) -> Iterator[tuple[str, int]]:
        with self.reader() as r:
            yield from r.iter_member_revisions(nwid)

    def iter_members(self, nwid: str) -> Iterator[dict[str, Any]]:
        """A network's members in address order, from one read transaction (consume or close() it)."""
        with self.reader() as r:
            yield from r.iter_members(nwid)

    def iter_all_members(self) -> Iterator[dict[str, Any]]:
        """Every member ordered by (nwid, address), from one read transaction."""
        with self.reader() as r:
            yield from r.iter_all_members()

    def iter_model(self) -> Iterator[dict[str, Any]]:
        """Networks by id, then members by (nwid, address), all from one read transaction (one consistent view:
        what `hactl db dump` prints)."""
        with self.reader() as r:
            yield from r.iter_networks()
            yield from r.iter_all_members()

    def counts(self, nwid: str) -> tuple[int, int]:
        """(total members, authorized members); (0, 0) for an unknown network."""
        with self.reader() as r:
            return r.counts(nwid)

    # ============================================================================================ snapshots

    def copy_consistent(self, fd: int) -> tuple[int, int, Membership | None]:
        """Write a compacted copy of ctrl.db to ``fd`` and return the applied (index, term) and the membership
        it holds.

        All three are read in the same read transaction the copy is made from, so they always match (LMDB copies
        the snapshot that transaction sees). Applies continue meanwhile: the copy releases the GIL and LMDB
        readers never block the writer.
        """
        with self._env.begin() as txn:
            index, term = L.unpack_applied(txn.get(L.META_APPLIED, db=self._meta))
            membership = _membership(txn.get(L.META_MEMBERSHIP, db=self._meta))
            self._env.copyfd(fd, compact=True, txn=txn)
        return index, term, membership

    def tables(self) -> tuple[lmdb.Environment, dict[str, Any]]:
        """The environment and named sub-databases, for the consistency checker (fsck.py)."""
        return self._env, dict(self._db)


class Reader:
    """The model as one read transaction sees it (StateMachine.reader()): every read through one Reader is of the
    same applied state, whatever is applied meanwhile. Iterators are valid until the reader's block ends."""

    def __init__(self, txn: L.Txn, meta: Any, live: L.Tables) -> None:
        self._txn_or_none: L.Txn | None = txn
        self._meta, self._live = meta, live

    def close(self) -> None:
        """End the transaction and let go of it. py-lmdb frees the reader slot only when the Transaction object
        is freed, not on abort: so no reference may outlive the block, not even one from a Reader (or an
        iterator's frame holding it) that an exception's traceback keeps alive until the next GC pass."""
        txn, self._txn_or_none = self._txn_or_none, None
        if txn is not None:
            txn.abort()  # also invalidates its cursors, which then let go of it too

    @property
    def _txn(self) -> L.Txn:
        if self._txn_or_none is None:
            raise RuntimeError("this Reader's transaction has ended (use it inside its `with machine.reader()`)")
        return self._txn_or_none

    def get_network(self, nwid: str) -> dict[str, Any] | None:
        n = _nwid_or_none(nwid)
        if n is None:
            return None
        raw = self._txn.get(L.network_key(n), db=self._live.networks)
        return None if raw is None else network_view(n, unpack_network(raw))

    def list_networks(self) -> list[str]:
        return [format_nwid(L.read_u64(k)) for k in self._txn.cursor(db=self._live.networks).iternext(values=False)]

    def network_count(self) -> int:
        return _network_count(self._txn, self._meta, self._live)

    def iter_networks(self) -> Iterator[dict[str, Any]]:
        """Every network in id order."""
        for k, v in self._txn.cursor(db=self._live.networks):
            yield network_view(L.read_u64(k), unpack_network(v))

    def get_member(self, nwid: str, address: str) -> dict[str, Any] | None:
        n, a = _nwid_or_none(nwid), _address_or_none(address)
        if n is None or a is None:
            return None
        raw = self._txn.get(L.member_key(n, a), db=self._live.members)
        return None if raw is None else member_view(n, a, unpack_member(raw))

    def list_members(self, nwid: str) -> dict[str, int] | None:
        """{address: revision} of a network's members, or None if there is no such network. For very large
        networks prefer iter_member_revisions, which streams."""
        if self.get_network(nwid) is None:
            return None
        return dict(self.iter_member_revisions(nwid))

    def iter_member_revisions(self, nwid: str) -> Iterator[tuple[str, int]]:
        """(address, revision) of a network's members in address order, without building member dicts
        (GET .../member streams its JSON from this)."""
        n = _nwid_or_none(nwid)
        if n is None:
            return
        for k, v in self._member_range(n):
            yield format_address(L.split_member_key(k)[1]), member_revision(v)

    def iter_members(self, nwid: str) -> Iterator[dict[str, Any]]:
        """A network's members in address order."""
        n = _nwid_or_none(nwid)
        if n is None:
            return
        for k, v in self._member_range(n):
            yield member_view(n, L.split_member_key(k)[1], unpack_member(v))

    def iter_all_members(self) -> Iterator[dict[str, Any]]:
        """Every member ordered by (nwid, address)."""
        for k, v in self._txn.cursor(db=self._live.members):
            n, a = L.split_member_key(k)
            yield member_view(n, a, unpack_member(v))

    def counts(self, nwid: str) -> tuple[int, int]:
        """(total members, authorized members); (0, 0) for an unknown network."""
        n = _nwid_or_none(nwid)
        if n is None:
            return 0, 0
        return L.unpack_counts(self._txn.get(L.network_key(n), db=self._live.netstat))

    def _member_range(self, nwid: int) -> Iterator[tuple[bytes, bytes]]:
        prefix = L.network_key(nwid)
        cur = self._txn.cursor(db=self._live.members)
        if not cur.set_range(prefix):
            return
        for k, v in cur.iternext():
            if k[:8] != prefix:
                return
            yield k, v


# =================================================================================================== helpers

def _network_count(txn: L.Txn, meta: Any, t: L.Tables) -> int:
    raw = txn.get(t.netcount_key, db=meta)
    return 0 if raw is None else L.read_u64(raw)


def _membership(raw: bytes | None) -> Membership | None:
    return None if raw is None else Membership.from_plain(msgpack.unpackb(raw, raw=False))


def _nwid_or_none(s: str) -> int | None:
    try:
        return parse_nwid(s)
    except ValidationError:
        return None


def _address_or_none(s: str) -> int | None:
    try:
        return parse_address(s)
    except ValidationError:
        return None


@functools.lru_cache(maxsize=4)  # a key of a few bytes, asked for on every config request
def _identity_of(raw: bytes | None) -> Identity | None:
    """The stored controller key as an Identity (None if absent or legacy). Parsed without the memory-hard hash:
    apply already checked everything but that, and the proposer generated the identity."""
    if raw is None or len(raw) != PRIVATE_FORM_SIZE:
        return None
    try:
        ident = Identity.from_bytes(raw)
    except ValueError:
        return None
    return ident if ident.has_private else None


def _same_identity(stored: str, canonical: str) -> bool:
    """Whether a member's stored identity string is ``canonical`` (restored records may hold another spelling of
    the same identity: upper-case hex, a trailing newline)."""
    if stored == canonical:
        return True
    try:
        return Identity.from_string(stored).to_string() == canonical
    except ValueError:
        return False


@functools.lru_cache(maxsize=16)  # keyed by whole network records: keep it small
def _v4_plan(net_raw: bytes) -> V4Plan | None:
    """The auto-assign plan of a packed network, None if it does not auto-assign IPv4. Cached by the packed
    bytes (a pure function of them), so a burst of member writes parses its network once."""
    net = unpack_network(net_raw)
    if not net["v4AssignMode"]["zt"] or not net["ipAssignmentPools"]:
        return None
    return V4Plan.of(net["routes"], net["ipAssignmentPools"])


def _planet_summary(world: World, *, changed: bool) -> dict[str, Any]:
    return {"world_id": world.id, "timestamp": world.timestamp,
            "roots": [f"{r.identity.address:010x}" for r in world.roots], "changed": changed}


# A remembered result is stored compactly, as [index, kind, fingerprint, ...]: a member or network value in its
# packed record form with a binary id (a member result is ~75 bytes rather than ~400 as a map). This table is
# written once per command, so its size is apply time as well as disk. (The fingerprint arrived with RECORD_FORMAT 2.)
_FAILED, _PLAIN, _MEMBER, _NETWORK = 0, 1, 2, 3

# The answer to a request id remembered for another request. Only the API sets fingerprints, and only for request
# ids made from a client's Idempotency-Key, so the header is what the client has to change.
_KEY_REUSED = Result.failure(
    ErrorCode.KEY_REUSED, "this Idempotency-Key was already used for another request (its method, path or body "
    "differ); use a new key for a new request", "Idempotency-Key")


class EntityChange:
    """One network or member created, updated or deleted (or the model restored) by the entry at ``index``;
    ``n`` numbers the changes of one entry (a network delete is one change: its members go with it).

    ``before`` and ``after`` (API views of the record, or None) are decoded on first use: the event stream builds
    one of these per change on every node, and most are never written out."""
    __slots__ = ("index", "n", "entity", "action", "id", "by", "time", "_states", "_views")

    def __init__(self, index: int, n: int, entity: str, action: str, id: str, by: dict[str, str] | None,
                 time: int, states: Callable[[], tuple[dict[str, Any] | None, dict[str, Any] | None]]) -> None:
        self.index, self.n, self.entity, self.action, self.id = index, n, entity, action, id
        self.by = by
        self.time = time  # the proposer's clock, ms
        self._states = states
        self._views: tuple[dict[str, Any] | None, dict[str, Any] | None] | None = None

    def _decoded(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        if self._views is None:
            self._views = self._states()
        return self._views

    @property
    def before(self) -> dict[str, Any] | None:
        return self._decoded()[0]

    @property
    def after(self) -> dict[str, Any] | None:
        return self._decoded()[1]


def _views(unpack: Callable[[bytes], Any], view: Callable[[Any], dict[str, Any]], before: bytes | None,
           after: bytes | None) -> Callable[[], tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    return lambda: (None if before is None else view(unpack(before)), None if after is None else view(unpack(after)))


def _decode_changes(index: int, raw: bytes) -> list[EntityChange]:
    by, time, records = msgpack.unpackb(raw, raw=False)
    out = []
    for n, (kind, nwid, address, before, after) in enumerate(records):
        action = "created" if before is None else "deleted" if after is None else "updated"
        if kind == L.CHANGE_RESTORE:
            info = msgpack.unpackb(after, raw=False)
            out.append(EntityChange(index, n, "model", "restored", info["timeline_id"], by, time,
                                    lambda info=info: (None, info)))
        elif kind == L.CHANGE_NETWORK:
            out.append(EntityChange(index, n, "network", action, format_nwid(nwid), by, time,
                                    _views(unpack_network, functools.partial(network_view, nwid), before, after)))
        else:
            out.append(EntityChange(index, n, "member", action, f"{format_nwid(nwid)}/{format_address(address)}",
                                    by, time, _views(unpack_member, functools.partial(member_view, nwid, address),
                                                     before, after)))
    return out


def _result_wire(index: int, r: Result, packed: tuple[bytes, bytes] | None, fingerprint: bytes | None) -> list[Any]:
    """What the requests table stores for a result (packed by the caller). ``packed``: the member's key and record
    as just written, when the value is that member (saves packing twice)."""
    v = r.value
    if not r.ok:
        wire: list[Any] = [index, _FAILED, fingerprint, r.error, r.field, r.message]
    elif v is not None and v.get("objtype") == "member":
        if packed is None:
            packed = (bytes.fromhex(v["nwid"] + v["id"]), pack_member(v))
        wire = [index, _MEMBER, fingerprint, *packed]
    elif v is not None and v.get("objtype") == "network":
        wire = [index, _NETWORK, fingerprint, bytes.fromhex(v["id"]), pack_network(v)]
    else:
        wire = [index, _PLAIN, fingerprint, v]
    return wire


def _replay(raw: bytes, fingerprint: bytes | None) -> Result:
    """The remembered result for a command with ``fingerprint``: KEY_REUSED when both sides have a fingerprint
    and they differ (a side without one cannot tell, so it gets the remembered result, as before fingerprints)."""
    wire = msgpack.unpackb(raw, raw=False)
    kind, stored, rest = wire[1], wire[2], wire[3:]
    if fingerprint is not None and stored is not None and stored != fingerprint:
        return _KEY_REUSED
    if kind == _FAILED:
        return Result(False, None, *rest)
    if kind == _MEMBER:
        nwid, address = L.split_member_key(rest[0])
        return Result(True, member_view(nwid, address, unpack_member(rest[1])))
    if kind == _NETWORK:
        return Result(True, network_view(L.read_u64(rest[0]), unpack_network(rest[1])))
    return Result(True, rest[0])
