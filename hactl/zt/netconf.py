"""The network config a controller sends a member: the netconf Dictionary [NetworkConfig.cpp: toDictionary;
EmbeddedNetworkController.cpp: _request] and its signed chunks [Node.cpp: ncSendConfig; Network.cpp:
handleConfigChunk].

Pure functions: the network and member come in as the API's JSON views (hactl/fsm/model.py), time, revision and
the signed COM as arguments. IPv4 pool allocation is not done here: it changes the member record, so it happens
through Raft before the config is built and arrives here in the member's ipAssignments.

Keys in the reference's order: v nwid ts ctmd r id tt tl f ml t n mtu C [CAP TAG COO S] RT I R [DNS]. We leave out
what a 1.8.4 member accepts without (brief appendix C, 9): `ssov`/`ssoe` (no SSO) and `DNS` when the network has
no DNS settings; CAP/TAG/COO/S are not issued yet.
"""
from __future__ import annotations

import ipaddress
import os
from typing import Any

from hactl.zt.com import CertificateOfMembership
from hactl.zt.dictionary import Dictionary
from hactl.zt.errors import ProtocolError
from hactl.zt.identity import Identity
from hactl.zt.inetaddress import InetAddress
from hactl.zt.rules import encode_rules
from hactl.zt.verbs import DEFAULT_CHUNK_SIZE, ConfigChunk, chunk_config

NETCONF_VERSION = 7
MTU_MIN, MTU_MAX, MTU_DEFAULT = 1280, 10000, 2800
CTMD_DEFAULT, CTMD_MIN, CTMD_MAX = 1_800_000, 300_000, 7_200_000
FLAG_ENABLE_BROADCAST, FLAG_IPV6_NDP_EMULATION = 0x2, 0x4
MAX_ROUTES, MAX_STATIC_IPS, MAX_DNS_SERVERS = 32, 32, 4
NAME_MAX = 127
# Small enough that a chunk plus headers fits one UDP datagram; the reference uses ~9.7 KB and fragments.

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def inet_bytes(ip: IPAddress | None, port: int = 0) -> bytes:
    """InetAddress serialization (brief 1.1); in configs the port field carries the prefix length."""
    return InetAddress(ip, port).encode()


def rfc4193_address(nwid: int, address: int) -> ipaddress.IPv6Address:
    """fd | nwid (8 bytes) | 99 93 | member address (5 bytes), used with /88."""
    return ipaddress.IPv6Address(b"\xfd" + nwid.to_bytes(8, "big") + b"\x99\x93" + address.to_bytes(5, "big"))


def sixplane_address(nwid: int, address: int) -> ipaddress.IPv6Address:
    """fc | low 32 bits of (nwid ^ nwid >> 32) | member address | zeros | 01, used with /40."""
    folded = (nwid ^ (nwid >> 32)) & 0xFFFFFFFF
    return ipaddress.IPv6Address(b"\xfc" + folded.to_bytes(4, "big") + address.to_bytes(5, "big")
                                 + b"\x00" * 5 + b"\x01")


def _routes(network: dict[str, Any]) -> list[tuple[IPNetwork, IPAddress | None]]:
    out: list[tuple[IPNetwork, IPAddress | None]] = []
    for r in network.get("routes") or []:
        if len(out) >= MAX_ROUTES:
            break
        target = ipaddress.ip_network(r["target"], strict=False)
        via = ipaddress.ip_address(r["via"]) if r.get("via") else None
        if via is not None and via.version != target.version:
            via = None  # the reference keeps a via only of the target's family
        out.append((target, via))
    return out


def static_ips(network: dict[str, Any], member: dict[str, Any], nwid: int, address: int,
               routes: list[tuple[IPNetwork, IPAddress | None]]) -> tuple[list[tuple[IPAddress, int]], int]:
    """(ip, prefix) pairs for `I` in the reference's order, and the flags they imply. Assigned addresses go in
    only if a route contains them, with the most specific such route's prefix: a member configures its
    interface from these, so an address without a route would be unreachable."""
    ips: list[tuple[IPAddress, int]] = []
    flags = 0
    v6 = network.get("v6AssignMode") or {}
    if not member.get("noAutoAssignIps"):
        if v6.get("rfc4193"):
            ips.append((rfc4193_address(nwid, address), 88))
            flags |= FLAG_IPV6_NDP_EMULATION
        if v6.get("6plane"):
            ips.append((sixplane_address(nwid, address), 40))
            flags |= FLAG_IPV6_NDP_EMULATION
    for text in member.get("ipAssignments") or []:
        ip = ipaddress.ip_address(text)
        bits = max((t.prefixlen for t, _ in routes if t.version == ip.version and ip in t), default=-1)
        if bits >= 0 and len(ips) < MAX_STATIC_IPS:
            ips.append((ip, bits))
    return ips[:MAX_STATIC_IPS], flags


def dns_bytes(dns: dict[str, Any] | None) -> bytes | None:
    """128-byte NUL-padded domain and exactly four InetAddresses; None when the network sets no DNS."""
    dns = dns or {}
    domain = (dns.get("domain") or "").encode()[:127]
    servers = [ipaddress.ip_address(s) for s in (dns.get("servers") or [])[:MAX_DNS_SERVERS]]
    if not domain and not servers:
        return None
    padded: list[IPAddress | None] = [*servers, *([None] * (MAX_DNS_SERVERS - len(servers)))]
    return domain.ljust(128, b"\x00") + b"".join(inet_bytes(s) for s in padded)


def build_netconf(network: dict[str, Any], member: dict[str, Any], *, now: int, com: CertificateOfMembership | None,
                  revision: int | None = None, ctmd: int = CTMD_DEFAULT, rules_engine: bool = True) -> Dictionary:
    """The config Dictionary for member on network (JSON views as model.py's network_view/member_view make them).
    revision defaults to the network's; rules_engine=False (a member whose request metadata has revr <= 0) gets
    allow-all, as the reference does."""
    nwid = int(network["id"], 16)
    address = int(member["address"], 16)
    ctmd = min(max(ctmd, CTMD_MIN), CTMD_MAX)
    routes = _routes(network)
    ips, ip_flags = static_ips(network, member, nwid, address, routes)
    flags = ip_flags | (FLAG_ENABLE_BROADCAST if network.get("enableBroadcast", True) else 0)
    mtu = min(max(int(network.get("mtu", MTU_DEFAULT)), MTU_MIN), MTU_MAX)

    d = Dictionary()
    d.add_u64("v", NETCONF_VERSION)
    d.add_u64("nwid", nwid)
    d.add_u64("ts", now)
    d.add_u64("ctmd", ctmd)
    d.add_u64("r", network.get("revision", 0) if revision is None else revision)
    d.add("id", f"{address:010x}")
    d.add("tt", "0000000000")  # no remote trace target
    d.add_u64("tl", 0)
    d.add_u64("f", flags)
    d.add_u64("ml", int(network.get("multicastLimit", 32)))
    d.add_u64("t", 0 if network.get("private", True) else 1)
    d.add("n", (network.get("name") or "").encode()[:NAME_MAX])
    d.add_u64("mtu", mtu)
    if com is not None:
        d.add("C", com.to_bytes())
    if routes:
        d.add("RT", b"".join(inet_bytes(t.network_address, t.prefixlen) + inet_bytes(via) + b"\x00\x00\x00\x00"
                             for t, via in routes))
    if ips:
        d.add("I", b"".join(inet_bytes(ip, bits) for ip, bits in ips))
    rules = encode_rules(network.get("rules") or []) if rules_engine else b"\x01\x00"
    if rules:
        d.add("R", rules)
    dns = dns_bytes(network.get("dns"))
    if dns is not None:
        d.add("DNS", dns)
    return d


# --- chunks -----------------------------------------------------------------------------------------------

def new_update_id() -> int:
    """Random and non-zero: members track at most three updates by this id."""
    while True:
        uid = int.from_bytes(os.urandom(8), "big")
        if uid:
            return uid


def sign_chunks(config: bytes, network_id: int, controller: Identity, update_id: int,
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[ConfigChunk]:
    """Split the encoded dictionary (no NUL) into signed chunks under one update id (the wire form is
    verbs.ConfigChunk)."""
    return chunk_config(controller, network_id, config, update_id, chunk_size)


def assemble(chunks: list[ConfigChunk]) -> bytes:
    """The config from a complete set of chunks (any order), checked the way a member checks it."""
    if not chunks:
        raise ProtocolError("no chunks")
    total = chunks[0].total_length
    buf = bytearray(total)
    covered = 0
    for c in sorted(chunks, key=lambda c: c.index):
        if c.total_length != total or c.update_id != chunks[0].update_id:
            raise ProtocolError("chunks of different updates")
        if c.index != covered:
            raise ProtocolError("chunks overlap or leave a gap")
        buf[c.index:c.index + len(c.data)] = c.data
        covered += len(c.data)
    if covered != total:
        raise ProtocolError("config incomplete")
    return bytes(buf)


def config_revision(network: dict[str, Any], member: dict[str, Any]) -> int:
    """The `r` of a member's config: grows with every change to its network or to it (the network's revision
    in the high 32 bits, the member's in the low: hactl.server.zerotier explains why)."""
    return (int(network.get("revision", 0)) << 32) | (int(member.get("revision", 0)) & 0xFFFFFFFF)


def signed_config(network: dict[str, Any], member: dict[str, Any], member_identity: Identity,
                  controller: Identity, now: int, rules_engine: bool) -> list[ConfigChunk]:
    nwid = int(network["id"], 16)
    ctmd = CTMD_DEFAULT
    com = CertificateOfMembership.build(nwid, member_identity, now, ctmd).sign(controller)
    d = build_netconf(network, member, now=now, com=com, revision=config_revision(network, member), ctmd=ctmd,
                      rules_engine=rules_engine)
    return sign_chunks(d.encode(), nwid, controller, new_update_id())
