"""Flow rules: the API's JSON rule objects <-> the binary form in a config's `R` key [Capability.hpp:
serializeRules/deserializeRules; include/ZeroTierOne.h; EmbeddedNetworkController.cpp: _parseRule].

Each rule is `[1] type | [1] field length L | [L] field`, big-endian numbers. The type byte's bit 7 is NOT, bit 6
is OR, the low 6 bits the rule. The length lets a member skip types it does not know, so decode does the same.
There is no rule count: the blob is the rules back to back. Allow-all is `01 00`.

The JSON accepted here is hactl's canonical form (hactl/fsm/rules.py has already validated it). Two deliberate
differences from the reference controller, whose JSON parser drops both rule types:
- INTEGER_RANGE is encoded (type 51): the reference forgets to set its type bits, so the rule vanishes, and a
  vanished match widens the action after it; members do understand type 51.
- ACTION_PRIORITY is encoded as type 6 with an empty field, exactly as the reference's serializer writes it
  (its qosBucket never goes on the wire), so it decodes with qosBucket 0.
"""
from __future__ import annotations

import ipaddress
import struct
from typing import Any

from hactl.zt.errors import ProtocolError

NOT_FLAG, OR_FLAG, TYPE_MASK = 0x80, 0x40, 0x3F
MAX_RULES = 1024  # ZT_MAX_NETWORK_RULES: the reference stops adding rules there, and so do we

RULE_IDS: dict[str, int] = {
    "ACTION_DROP": 0, "ACTION_ACCEPT": 1, "ACTION_TEE": 2, "ACTION_WATCH": 3, "ACTION_REDIRECT": 4,
    "ACTION_BREAK": 5, "ACTION_PRIORITY": 6,
    "MATCH_SOURCE_ZEROTIER_ADDRESS": 24, "MATCH_DEST_ZEROTIER_ADDRESS": 25, "MATCH_VLAN_ID": 26,
    "MATCH_VLAN_PCP": 27, "MATCH_VLAN_DEI": 28, "MATCH_MAC_SOURCE": 29, "MATCH_MAC_DEST": 30,
    "MATCH_IPV4_SOURCE": 31, "MATCH_IPV4_DEST": 32, "MATCH_IPV6_SOURCE": 33, "MATCH_IPV6_DEST": 34,
    "MATCH_IP_TOS": 35, "MATCH_IP_PROTOCOL": 36, "MATCH_ETHERTYPE": 37, "MATCH_ICMP": 38,
    "MATCH_IP_SOURCE_PORT_RANGE": 39, "MATCH_IP_DEST_PORT_RANGE": 40, "MATCH_CHARACTERISTICS": 41,
    "MATCH_FRAME_SIZE_RANGE": 42, "MATCH_RANDOM": 43, "MATCH_TAGS_DIFFERENCE": 44, "MATCH_TAGS_BITWISE_AND": 45,
    "MATCH_TAGS_BITWISE_OR": 46, "MATCH_TAGS_BITWISE_XOR": 47, "MATCH_TAGS_EQUAL": 48, "MATCH_TAG_SENDER": 49,
    "MATCH_TAG_RECEIVER": 50, "INTEGER_RANGE": 51,
}
RULE_NAMES: dict[int, str] = {v: k for k, v in RULE_IDS.items()}

_FWD = {"ACTION_TEE", "ACTION_WATCH", "ACTION_REDIRECT"}
_ZT = {"MATCH_SOURCE_ZEROTIER_ADDRESS", "MATCH_DEST_ZEROTIER_ADDRESS"}
_MAC = {"MATCH_MAC_SOURCE", "MATCH_MAC_DEST"}
_IP4 = {"MATCH_IPV4_SOURCE", "MATCH_IPV4_DEST"}
_IP6 = {"MATCH_IPV6_SOURCE", "MATCH_IPV6_DEST"}
_RANGE16 = {"MATCH_IP_SOURCE_PORT_RANGE", "MATCH_IP_DEST_PORT_RANGE", "MATCH_FRAME_SIZE_RANGE"}
_TAG = {"MATCH_TAGS_DIFFERENCE", "MATCH_TAGS_BITWISE_AND", "MATCH_TAGS_BITWISE_OR", "MATCH_TAGS_BITWISE_XOR",
        "MATCH_TAGS_EQUAL", "MATCH_TAG_SENDER", "MATCH_TAG_RECEIVER"}
_U8 = {"MATCH_VLAN_PCP": "vlanPcp", "MATCH_VLAN_DEI": "vlanDei", "MATCH_IP_PROTOCOL": "ipProtocol"}
_U16 = {"MATCH_VLAN_ID": "vlanId", "MATCH_ETHERTYPE": "etherType"}

# Field sizes the member reads for each known type; a shorter field is malformed.
_FIELD_SIZE: dict[str, int] = {
    **{t: 14 for t in _FWD}, **{t: 5 for t in _ZT}, **{t: 6 for t in _MAC}, **{t: 5 for t in _IP4},
    **{t: 17 for t in _IP6}, **{t: 4 for t in _RANGE16}, **{t: 8 for t in _TAG}, **{t: 1 for t in _U8},
    **{t: 2 for t in _U16}, "MATCH_IP_TOS": 3, "MATCH_ICMP": 3, "MATCH_CHARACTERISTICS": 8, "MATCH_RANDOM": 4,
    "INTEGER_RANGE": 19,
}


def _field(rule: dict[str, Any]) -> bytes:
    t = rule["type"]
    if t in _FWD:
        return struct.pack(">QIH", int(rule["address"], 16), rule.get("flags", 0), rule.get("length", 0))
    if t in _ZT:
        return int(rule["zt"], 16).to_bytes(5, "big")
    if t in _U8:
        return bytes((rule[_U8[t]],))
    if t in _U16:
        return struct.pack(">H", rule[_U16[t]])
    if t in _MAC:
        return bytes.fromhex(rule["mac"].replace(":", ""))
    if t in _IP4 or t in _IP6:
        net = ipaddress.ip_interface(rule["ip"])
        return net.ip.packed + bytes((net.network.prefixlen,))
    if t == "MATCH_IP_TOS":
        return bytes((rule["mask"], rule["start"], rule["end"]))
    if t == "MATCH_ICMP":
        code = rule.get("icmpCode")
        # flags bit 0 says "code matters"; without it the member matches any code
        return bytes((rule["icmpType"], code or 0, 0 if code is None else 1))
    if t in _RANGE16:
        return struct.pack(">HH", rule["start"], rule["end"])
    if t == "MATCH_CHARACTERISTICS":
        return struct.pack(">Q", int(rule["mask"], 16))
    if t == "MATCH_RANDOM":
        return struct.pack(">I", rule["probability"])
    if t in _TAG:
        return struct.pack(">II", rule["id"], rule["value"])
    if t == "INTEGER_RANGE":
        start, end = int(rule["start"], 16), int(rule["end"], 16)
        # The reference keeps end as a 32-bit offset from start and writes start + offset back out.
        end = (start + ((end - start) & 0xFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        fmt = (0x80 if rule.get("little") else 0) | ((rule.get("bits", 1) - 1) & 63)
        return struct.pack(">QQHB", start, end, rule.get("idx", 0), fmt)
    return b""  # DROP, ACCEPT, BREAK, PRIORITY


def encode_rule(rule: dict[str, Any]) -> bytes:
    t = rule["type"]
    if t not in RULE_IDS:
        raise ValueError(f"unknown rule type {t!r}")
    flags = (NOT_FLAG if rule.get("not") else 0) | (OR_FLAG if rule.get("or") else 0)
    body = _field(rule)
    return bytes((RULE_IDS[t] | flags, len(body))) + body


def encode_rules(rules: list[dict[str, Any]]) -> bytes:
    """The `R` value for a list of canonical rule objects (the first MAX_RULES, as the reference does)."""
    return b"".join(encode_rule(r) for r in rules[:MAX_RULES])


def _decode_field(t: str, f: bytes) -> dict[str, Any]:
    if t in _FWD:
        addr, flags, length = struct.unpack(">QIH", f[:14])
        out: dict[str, Any] = {"address": f"{addr & 0xFFFFFFFFFF:010x}", "flags": flags}
        if t != "ACTION_REDIRECT":
            out["length"] = length
        return out
    if t in _ZT:
        return {"zt": f[:5].hex()}
    if t in _U8:
        return {_U8[t]: f[0]}
    if t in _U16:
        return {_U16[t]: struct.unpack(">H", f[:2])[0]}
    if t in _MAC:
        return {"mac": ":".join(f"{b:02x}" for b in f[:6])}
    if t in _IP4 or t in _IP6:
        size = 4 if t in _IP4 else 16
        bits = f[size]
        if bits > size * 8:
            raise ProtocolError(f"{t}: prefix length {bits} too long")
        ip = ipaddress.ip_address(f[:size])
        return {"ip": f"{ip}/{bits}"}
    if t == "MATCH_IP_TOS":
        return {"mask": f[0], "start": f[1], "end": f[2]}
    if t == "MATCH_ICMP":
        return {"icmpType": f[0], "icmpCode": f[1] if f[2] & 1 else None}
    if t in _RANGE16:
        s, e = struct.unpack(">HH", f[:4])
        return {"start": s, "end": e}
    if t == "MATCH_CHARACTERISTICS":
        return {"mask": f"{struct.unpack('>Q', f[:8])[0]:016x}"}
    if t == "MATCH_RANDOM":
        return {"probability": struct.unpack(">I", f[:4])[0]}
    if t in _TAG:
        i, v = struct.unpack(">II", f[:8])
        return {"id": i, "value": v}
    if t == "INTEGER_RANGE":
        s, e, idx, fmt = struct.unpack(">QQHB", f[:19])
        return {"start": f"{s:016x}", "end": f"{e:016x}", "idx": idx, "little": bool(fmt & 0x80),
                "bits": (fmt & 63) + 1}
    if t == "ACTION_PRIORITY":
        return {"qosBucket": 0}
    return {}


def decode_rules(data: bytes) -> list[dict[str, Any]]:
    """Rule objects in hactl's canonical form. Unknown types are skipped by their length, as a member does."""
    out: list[dict[str, Any]] = []
    p = 0
    while p < len(data):
        if p + 2 > len(data):
            raise ProtocolError("rule header truncated")
        tb, length = data[p], data[p + 1]
        f = data[p + 2:p + 2 + length]
        if len(f) != length:
            raise ProtocolError("rule field truncated")
        p += 2 + length
        name = RULE_NAMES.get(tb & TYPE_MASK)
        if name is None:
            continue
        if length < _FIELD_SIZE.get(name, 0):
            raise ProtocolError(f"{name}: field of {length} bytes is too short")
        if len(out) >= MAX_RULES:
            raise ProtocolError(f"more than {MAX_RULES} rules")
        rule: dict[str, Any] = {"type": name}
        rule.update(_decode_field(name, f))
        rule["not"] = bool(tb & NOT_FLAG)
        rule["or"] = bool(tb & OR_FLAG)
        out.append(rule)
    return out
