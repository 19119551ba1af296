"""ZeroTier flow rules: parse a rule object strictly and render it in the controller's canonical form.

The canonical form is ZeroTier's rendering (type, its value fields, then "not" and "or"), so a rule read back is
what ZeroTier would have stored. Unlike ZeroTier, an unknown type or an out-of-range value is an error (400)
rather than a silently dropped rule or a value masked to its width.
"""
from __future__ import annotations

from typing import Any, Callable

from hactl.fsm.coerce import ValidationError, sub, to_bool, to_cidr, to_dict, to_hex, to_int, to_list

U8, U16, U32, U64 = 0xFF, 0xFFFF, 0xFFFFFFFF, (1 << 64) - 1

Parser = Callable[[dict[str, Any], str], dict[str, Any]]


def _req(rule: dict[str, Any], key: str, field: str) -> Any:
    if key not in rule or rule[key] is None:
        raise ValidationError(sub(field, key), "required for this rule type")
    return rule[key]


def _uint(key: str, hi: int) -> Parser:
    def parse(rule: dict[str, Any], field: str) -> dict[str, Any]:
        return {key: to_int(_req(rule, key, field), sub(field, key), 0, hi)}
    return parse


def _address(key: str) -> Parser:
    def parse(rule: dict[str, Any], field: str) -> dict[str, Any]:
        return {key: f"{to_hex(_req(rule, key, field), sub(field, key), 10):010x}"}
    return parse


def _mac(key: str) -> Parser:
    def parse(rule: dict[str, Any], field: str) -> dict[str, Any]:
        v = _req(rule, key, field)
        digits = v.replace(":", "").replace("-", "") if isinstance(v, str) else None
        if digits is None or len(digits) != 12:
            raise ValidationError(sub(field, key), f"expected a MAC address (aa:bb:cc:dd:ee:ff), got {v!r}")
        n = to_hex(digits, sub(field, key), 12)
        h = f"{n:012x}"
        return {key: ":".join(h[i:i + 2] for i in range(0, 12, 2))}
    return parse


def _ip(version: int) -> Parser:
    def parse(rule: dict[str, Any], field: str) -> dict[str, Any]:
        ip, bits = to_cidr(_req(rule, "ip", field), sub(field, "ip"))
        if ip.version != version:
            raise ValidationError(sub(field, "ip"), f"expected an IPv{version} address")
        return {"ip": f"{ip}/{bits}"}
    return parse


def _range(hi: int, start: str = "start", end: str = "end") -> Parser:
    """start (required) and end (defaults to start), end >= start."""
    def parse(rule: dict[str, Any], field: str) -> dict[str, Any]:
        s = to_int(_req(rule, start, field), sub(field, start), 0, hi)
        e = s if rule.get(end) is None else to_int(rule[end], sub(field, end), 0, hi)
        if e < s:
            raise ValidationError(sub(field, end), f"must not be below {start} ({s})")
        return {start: s, end: e}
    return parse


def _icmp(rule: dict[str, Any], field: str) -> dict[str, Any]:
    t = to_int(_req(rule, "icmpType", field), sub(field, "icmpType"), 0, U8)
    code = rule.get("icmpCode")
    return {"icmpType": t, "icmpCode": None if code is None else to_int(code, sub(field, "icmpCode"), 0, U8)}


def _characteristics(rule: dict[str, Any], field: str) -> dict[str, Any]:
    return {"mask": f"{to_hex(_req(rule, 'mask', field), sub(field, 'mask'), 16):016x}"}


def _integer_range(rule: dict[str, Any], field: str) -> dict[str, Any]:
    s = to_hex(_req(rule, "start", field), sub(field, "start"), 16)
    e = to_hex(_req(rule, "end", field), sub(field, "end"), 16)
    if not s <= e <= s + U32:
        raise ValidationError(sub(field, "end"), "must be at least start and at most start + 2^32-1")
    idx = to_int(rule.get("idx", 0), sub(field, "idx"), 0, U16)
    little = to_bool(rule.get("little", False), sub(field, "little"))
    bits = to_int(rule.get("bits", 1), sub(field, "bits"), 1, 64)
    return {"start": f"{s:016x}", "end": f"{e:016x}", "idx": idx, "little": little, "bits": bits}


def _fwd(with_length: bool) -> Parser:
    def parse(rule: dict[str, Any], field: str) -> dict[str, Any]:
        out = _address("address")(rule, field)
        out["flags"] = to_int(rule.get("flags", 0), sub(field, "flags"), 0, U32)
        if with_length:
            out["length"] = to_int(rule.get("length", 0), sub(field, "length"), 0, U16)
        return out
    return parse


def _tos(rule: dict[str, Any], field: str) -> dict[str, Any]:
    return {"mask": to_int(_req(rule, "mask", field), sub(field, "mask"), 0, U8), **_range(U8)(rule, field)}


def _tag(rule: dict[str, Any], field: str) -> dict[str, Any]:
    return {"id": to_int(_req(rule, "id", field), sub(field, "id"), 0, U32),
            "value": to_int(_req(rule, "value", field), sub(field, "value"), 0, U32)}


def _none(rule: dict[str, Any], field: str) -> dict[str, Any]:
    return {}


RULE_TYPES: dict[str, Parser] = {
    "ACTION_DROP": _none,
    "ACTION_ACCEPT": _none,
    "ACTION_TEE": _fwd(True),
    "ACTION_WATCH": _fwd(True),
    "ACTION_REDIRECT": _fwd(False),
    "ACTION_BREAK": _none,
    "ACTION_PRIORITY": _uint("qosBucket", 8),
    "MATCH_SOURCE_ZEROTIER_ADDRESS": _address("zt"),
    "MATCH_DEST_ZEROTIER_ADDRESS": _address("zt"),
    "MATCH_VLAN_ID": _uint("vlanId", U16),
    "MATCH_VLAN_PCP": _uint("vlanPcp", U8),
    "MATCH_VLAN_DEI": _uint("vlanDei", U8),
    "MATCH_MAC_SOURCE": _mac("mac"),
    "MATCH_MAC_DEST": _mac("mac"),
    "MATCH_IPV4_SOURCE": _ip(4),
    "MATCH_IPV4_DEST": _ip(4),
    "MATCH_IPV6_SOURCE": _ip(6),
    "MATCH_IPV6_DEST": _ip(6),
    "MATCH_IP_TOS": _tos,
    "MATCH_IP_PROTOCOL": _uint("ipProtocol", U8),
    "MATCH_ETHERTYPE": _uint("etherType", U16),
    "MATCH_ICMP": _icmp,
    "MATCH_IP_SOURCE_PORT_RANGE": _range(U16),
    "MATCH_IP_DEST_PORT_RANGE": _range(U16),
    "MATCH_CHARACTERISTICS": _characteristics,
    "MATCH_FRAME_SIZE_RANGE": _range(U16),
    "MATCH_RANDOM": _uint("probability", U32),
    "MATCH_TAGS_DIFFERENCE": _tag,
    "MATCH_TAGS_BITWISE_AND": _tag,
    "MATCH_TAGS_BITWISE_OR": _tag,
    "MATCH_TAGS_BITWISE_XOR": _tag,
    "MATCH_TAGS_EQUAL": _tag,
    "MATCH_TAG_SENDER": _tag,
    "MATCH_TAG_RECEIVER": _tag,
    "INTEGER_RANGE": _integer_range,
}


def parse_rule(v: Any, field: str) -> dict[str, Any]:
    rule = to_dict(v, field)
    t = rule.get("type")
    if not isinstance(t, str) or t not in RULE_TYPES:
        raise ValidationError(sub(field, "type"), f"unknown rule type {t!r}")
    out: dict[str, Any] = {"type": t}
    out.update(RULE_TYPES[t](rule, field))
    out["not"] = to_bool(rule.get("not", False), sub(field, "not"))
    out["or"] = to_bool(rule.get("or", False), sub(field, "or"))
    return out


def parse_rules(v: Any, field: str) -> list[dict[str, Any]]:
    return [parse_rule(r, sub(field, i)) for i, r in enumerate(to_list(v, field))]
