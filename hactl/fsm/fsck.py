"""Consistency check of a ctrl.db: every record canonical, every index and count agreeing with the records.

Streams with cursors and point lookups; the only Python container grows with the number of networks (at most
2^24-1 by construction), never with the number of members.
"""
from __future__ import annotations

from typing import Any, Callable

import msgpack

from hactl.fsm import layout as L
from hactl.fsm.coerce import ValidationError
from hactl.fsm.machine import StateMachine
from hactl.fsm.model import (format_address, format_nwid, member_view, network_view, unpack_member,
                             unpack_network)
from hactl.fsm.validate import (LEGACY_SIGNING_KEY_SIZE, controller_identity, member_record, network_record,
                                parse_endpoints, parse_planet_key, parse_world, parse_world_id, root_identity)

MAX_PROBLEMS = 100


def check_machine(machine: StateMachine) -> list[str]:
    """Problems found in an open ctrl.db (empty when consistent); at most MAX_PROBLEMS are listed."""
    problems: list[str] = []
    extra = 0

    def bad(msg: str) -> None:
        nonlocal extra
        if len(problems) < MAX_PROBLEMS:
            problems.append(f"{machine.path}: {msg}")
        else:
            extra += 1

    env, db = machine.tables()
    with env.begin() as txn:
        meta = db["meta"]
        raw_controller = txn.get(L.META_CONTROLLER, db=meta)
        raw_cluster = txn.get(L.META_CLUSTER, db=meta)
        controller = None if raw_controller is None else int.from_bytes(raw_controller, "big")
        if (raw_controller is None) != (raw_cluster is None):
            bad("cluster info and controller address disagree on whether the cluster is initialised")
        elif raw_cluster is not None:
            info = msgpack.unpackb(raw_cluster, raw=False)
            if info.get("address") != format_address(controller or 0):
                bad(f"cluster address {info.get('address')} differs from the controller key {controller:010x}")
            key = txn.get(L.META_SIGNING_KEY, db=meta)
            if key is None:
                bad("the controller identity is missing")
            else:
                try:  # (the memory-hard hash is not checked: ~0.15 s, and only Identity.generate made this one)
                    ident = controller_identity(key)
                    if ident.address != controller:
                        bad(f"the controller identity's address {ident.address:010x} differs from the controller "
                            f"address {controller:010x}")
                    if info.get("identity") != str(ident):
                        bad("cluster info's identity differs from the stored controller identity")
                except ValidationError as e:
                    if len(key) == LEGACY_SIGNING_KEY_SIZE:
                        bad("the controller key is a 32-byte Ed25519 key from before controller identities: the "
                            "cluster serves the API but cannot answer over ZeroTier (its address is no identity's)")
                    else:
                        bad(f"the stored controller key is not usable: {e.message}")

        _check_planet(txn, meta, bad)

        counts: dict[int, list[int]] = {}
        for k, v in txn.cursor(db=db["networks"]):
            if len(k) != 8:
                bad(f"networks: malformed key {k.hex()}")
                continue
            nwid = L.read_u64(k)
            counts[nwid] = [0, 0]
            try:
                rec = unpack_network(v)
                if controller is None:
                    raise ValidationError("id", "a network exists before cluster initialisation")
                if network_record(network_view(nwid, rec), controller)[1] != rec:
                    bad(f"network {format_nwid(nwid)}: record is not in canonical form")
            except (ValidationError, ValueError, TypeError, KeyError) as e:
                bad(f"network {format_nwid(nwid)}: {e}")
        raw_count = txn.get(b"netcount", db=meta)
        stored = 0 if raw_count is None else L.read_u64(raw_count)
        if stored != len(counts):
            bad(f"network count says {stored}, there are {len(counts)}")

        ip_total = 0
        for k, v in txn.cursor(db=db["members"]):
            if len(k) != 13:
                bad(f"members: malformed key {k.hex()}")
                continue
            nwid, address = L.split_member_key(k)
            where = f"member {format_nwid(nwid)}/{format_address(address)}"
            if nwid not in counts:
                bad(f"{where}: its network does not exist")
                continue
            try:
                rec = unpack_member(v)
                if member_record(member_view(nwid, address, rec))[2] != rec:
                    bad(f"{where}: record is not in canonical form")
            except (ValidationError, ValueError, TypeError, KeyError) as e:
                bad(f"{where}: {e}")
                continue
            counts[nwid][0] += 1
            counts[nwid][1] += bool(rec["authorized"])
            for ip in rec["ipAssignments"]:
                ip_total += 1
                if txn.get(L.ip_key(nwid, ip), db=db["ips"]) != L.address_bytes(address):
                    bad(f"{where}: {ip} is missing from the address index")

        ip_entries = 0
        for k, v in txn.cursor(db=db["ips"]):
            ip_entries += 1
            nwid = L.read_u64(k[:8])
            raw = txn.get(L.network_key(nwid) + v, db=db["members"])
            ip = L.ip_from_key(k)
            if raw is None or ip not in unpack_member(raw)["ipAssignments"]:
                bad(f"address index: {format_nwid(nwid)} {ip} -> {v.hex()}, which does not hold it")
        if ip_entries != ip_total:
            bad(f"address index has {ip_entries} entries, members hold {ip_total} addresses")

        seen_stats = 0
        for k, v in txn.cursor(db=db["netstat"]):
            seen_stats += 1
            nwid = L.read_u64(k)
            want = counts.get(nwid)
            got = list(L.unpack_counts(v))
            if want is None:
                bad(f"member counts kept for missing network {format_nwid(nwid)}")
            elif got != want:
                bad(f"network {format_nwid(nwid)}: counts say {got} (total, authorized), members say {want}")
        if seen_stats != len(counts):
            bad(f"member counts kept for {seen_stats} networks, there are {len(counts)}")

        logged = 0
        for k, v in txn.cursor(db=db["reqlog"]):
            logged += 1
            if txn.get(v, db=db["requests"]) is None:
                bad(f"request log entry {L.read_u64(k)} names a forgotten request")
        remembered = txn.stat(db["requests"])["entries"]
        if remembered != logged:
            bad(f"{remembered} remembered requests, {logged} in the request log")
    if extra:
        problems.append(f"{machine.path}: ... and {extra} more problems")
    return problems



def _check_planet(txn: L.Txn, meta: Any, bad: Callable[[str], None]) -> None:
    """The planet key, the current planet and the root records (issue 11)."""
    raw_key = txn.get(L.META_PLANET_KEY, db=meta)
    key = None
    if raw_key is not None:
        try:
            key = msgpack.unpackb(raw_key, raw=False)
            public, _ = parse_planet_key(key["private"])
            parse_world_id(key["world_id"])
            if public != key["public"]:
                bad("the planet's public key does not belong to its private key")
        except (ValidationError, ValueError, TypeError, KeyError) as e:
            bad(f"the planet key record is not usable: {e}")
            key = None
    raw_planet = txn.get(L.META_PLANET, db=meta)
    if raw_planet is not None:
        if raw_key is None:
            bad("a planet is stored but no planet key")
        try:
            world = parse_world(raw_planet, "planet")
            if key is not None and (world.id != key["world_id"] or world.updates_must_be_signed_by != key["public"]):
                bad("the planet's id or signer is not the cluster's planet key")
            elif key is not None and not world.verify(key["public"]):
                bad("the planet's signature does not verify with the cluster's planet key")
        except ValidationError as e:
            bad(f"the stored planet is not usable: {e}")
    raw_roots = txn.get(L.META_ROOTS, db=meta)
    if raw_roots is not None:
        roots = msgpack.unpackb(raw_roots, raw=False)
        if not isinstance(roots, dict) or list(roots) != sorted(roots) or not roots:
            bad("root records are not a non-empty map sorted by node id")
            return
        for node, rec in roots.items():
            try:
                if rec != {"identity": str(root_identity(rec["identity"])),
                           "endpoints": parse_endpoints(rec["endpoints"])}:
                    bad(f"root record of {node} is not in canonical form")
            except (ValidationError, TypeError, KeyError) as e:
                bad(f"root record of {node}: {e}")
