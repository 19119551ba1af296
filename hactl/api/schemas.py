"""OpenAPI (3.1, i.e. JSON Schema 2020-12) schemas of the objects the API reads and writes.

They describe the *output* exactly (canonical forms) and the *input* loosely where the API coerces (a boolean
may be sent as 0/1 or "true", an integer as a numeric string); see shared/zerotier-api.md.
"""
from __future__ import annotations

from typing import Any

from hactl.fsm.model import ARRAY_MAX, MTU_DEFAULT, MTU_MAX, MTU_MIN
from hactl.fsm.rules import RULE_TYPES

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _ro(s: Schema) -> Schema:
    return {**s, "readOnly": True}


def _arr(items: Schema, **kw: Any) -> Schema:
    return {"type": "array", "items": items, "maxItems": ARRAY_MAX, **kw}


HEX16 = {"type": "string", "pattern": "^[0-9a-f]{16}$"}
HEX10 = {"type": "string", "pattern": "^[0-9a-f]{10}$"}
BOOL_IN = {"oneOf": [{"type": "boolean"}, {"enum": [0, 1]},
                     {"type": "string", "enum": ["true", "false", "1", "0"]}],
           "description": "true/false, 0/1, or those as strings (any case)"}
INT_IN = {"oneOf": [{"type": "integer"}, {"type": "string", "pattern": "^\\s*[+-]?[0-9]+\\s*$"}],
          "description": "an integer or a decimal string"}
U32_IN = {**INT_IN, "description": "0..4294967295 (an integer or a decimal string)"}
IP = {"type": "string", "description": "an IPv4 or IPv6 address"}
MS = {"type": "integer", "description": "milliseconds since the epoch"}

RULE = {
    "type": "object",
    "description": "a ZeroTier flow rule; the fields besides type/not/or depend on the type",
    "required": ["type"],
    "properties": {"type": {"type": "string", "enum": sorted(RULE_TYPES)},
                   "not": {"type": "boolean", "default": False}, "or": {"type": "boolean", "default": False}},
    "additionalProperties": True,
}
DEFAULT_RULES = [{"type": "ACTION_ACCEPT", "not": False, "or": False}]

ROUTE = {"type": "object", "required": ["target"],
         "properties": {"target": {"type": "string", "description": "a CIDR, stored in canonical form"},
                        "via": {"type": ["string", "null"], "description": "gateway IP, null for none"}}}
POOL = {"type": "object", "required": ["ipRangeStart", "ipRangeEnd"],
        "properties": {"ipRangeStart": IP, "ipRangeEnd": IP}}
NET_CAPABILITY = {"type": "object", "required": ["id"],
                  "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 0xFFFFFFFF},
                                 "default": {"type": "boolean", "default": False},
                                 "rules": _arr(RULE)}}
NET_TAG = {"type": "object", "required": ["id"],
           "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 0xFFFFFFFF},
                          "default": {"type": ["integer", "null"]}}}
V4_MODE = {"type": "object", "properties": {"zt": {"type": "boolean"}}}
V6_MODE = {"type": "object", "properties": {k: {"type": "boolean"} for k in ("rfc4193", "zt", "6plane")}}
DNS = {"type": "object", "properties": {"domain": {"type": "string"}, "servers": _arr(IP)}}

# Settable network fields: output form with defaults.
NETWORK_FIELDS: dict[str, Schema] = {
    "name": {"type": "string", "default": ""},
    "private": {"type": "boolean", "default": True},
    "enableBroadcast": {"type": "boolean", "default": True},
    "v4AssignMode": {**V4_MODE, "default": {"zt": False}},
    "v6AssignMode": {**V6_MODE, "default": {"rfc4193": False, "zt": False, "6plane": False}},
    "mtu": {"type": "integer", "minimum": MTU_MIN, "maximum": MTU_MAX, "default": MTU_DEFAULT},
    "multicastLimit": {"type": "integer", "minimum": 0, "maximum": 0xFFFFFFFF, "default": 32},
    "routes": _arr(ROUTE, default=[]),
    "ipAssignmentPools": _arr(POOL, default=[]),
    "rules": _arr(RULE, default=DEFAULT_RULES),
    "capabilities": _arr(NET_CAPABILITY, default=[], description="sorted by id"),
    "tags": _arr(NET_TAG, default=[], description="sorted by id"),
    "dns": {**DNS, "default": {"domain": "", "servers": []}},
}
NETWORK = {
    "type": "object",
    "properties": {
        "id": _ro(HEX16), "nwid": _ro(HEX16), "objtype": _ro({"const": "network"}),
        **NETWORK_FIELDS,
        "creationTime": _ro(MS), "revision": _ro({"type": "integer", "minimum": 1}),
    },
    "required": ["id", "nwid", "objtype", *NETWORK_FIELDS, "creationTime", "revision"],
}
NETWORK_INPUT = {
    "type": "object",
    "description": "any subset of the settable fields; read-only and unknown fields are ignored",
    "properties": {
        **NETWORK_FIELDS,
        "private": BOOL_IN, "enableBroadcast": BOOL_IN,
        "v4AssignMode": {"oneOf": [V4_MODE, {"type": "string", "enum": ["zt", "none", ""]}],
                         "description": "an object, or the legacy string \"zt\""},
        "v6AssignMode": {"oneOf": [V6_MODE, {"type": "string"}],
                         "description": "an object, or the legacy comma-separated mode names"},
        "mtu": {**INT_IN, "description": f"clamped to {MTU_MIN}..{MTU_MAX}"},
        "multicastLimit": U32_IN,
    },
}

MEMBER_FIELDS: dict[str, Schema] = {
    "name": {"type": "string", "default": ""},
    "authorized": {"type": "boolean", "default": False,
                   "description": "a change sets lastAuthorizedTime or lastDeauthorizedTime"},
    "activeBridge": {"type": "boolean", "default": False},
    "noAutoAssignIps": {"type": "boolean", "default": False},
    "ipAssignments": _arr(IP, default=[]),
    "tags": _arr({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "integer"}],
                  "minItems": 2, "maxItems": 2}, default=[], description="[id, value] pairs sorted by id"),
    "capabilities": _arr({"type": "integer", "minimum": 0, "maximum": 0xFFFFFFFF}, default=[],
                         description="sorted, de-duplicated"),
}
MEMBER = {
    "type": "object",
    "properties": {
        "id": _ro(HEX10), "address": _ro(HEX10), "nwid": _ro(HEX16), "objtype": _ro({"const": "member"}),
        **MEMBER_FIELDS,
        "identity": _ro({"type": "string", "default": ""}),
        "creationTime": _ro(MS), "revision": _ro({"type": "integer", "minimum": 1}),
        "lastAuthorizedTime": _ro({**MS, "default": 0}), "lastDeauthorizedTime": _ro({**MS, "default": 0}),
        "lastAuthorizedCredentialType": _ro({"type": ["string", "null"], "default": None}),
        **{k: _ro({"type": "integer", "default": -1}) for k in ("vMajor", "vMinor", "vRev", "vProto")},
    },
    "required": ["id", "address", "nwid", "objtype", *MEMBER_FIELDS, "identity", "creationTime", "revision",
                 "lastAuthorizedTime", "lastDeauthorizedTime", "vMajor", "vMinor", "vRev", "vProto"],
}
MEMBER_INPUT = {
    "type": "object",
    "description": "any subset of the settable fields; read-only and unknown fields are ignored",
    "properties": {**MEMBER_FIELDS, "authorized": BOOL_IN, "activeBridge": BOOL_IN, "noAutoAssignIps": BOOL_IN},
}

ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "INVALID, NOT_FOUND, CONFLICT, CLUSTER_NO_LEADER, OVERLOADED, "
                                                   "OUTCOME_UNKNOWN, BODY_TOO_LARGE, NOT_INITIALIZED, KEY_REUSED, "
                                                   "TOO_MANY_STREAMS, ..."},
        "message": {"type": "string"},
        "field": {"type": ["string", "null"],
                  "description": "the offending body field (dotted/indexed path), path or query parameter, "
                                 "or header; 'body' for the body as a whole"},
    },
}
CLUSTER_STATUS = {"type": "object", "description": "this node's view of the Raft cluster",
                  "properties": {"id": {"type": "string"}, "role": {"type": "string"},
                                 "term": {"type": "integer"}, "leader": {"type": ["string", "null"]},
                                 "commit": {"type": "integer"}, "applied": {"type": "integer"}},
                  "additionalProperties": True}
STATUS = {"type": "object",
          "properties": {"address": {"type": ["string", "null"], "pattern": "^[0-9a-f]{10}$",
                                     "description": "the cluster's controller address (null before init)"},
                         "online": {"type": "boolean"}, "version": {"type": "string"},
                         "versionMajor": {"type": "integer"}, "versionMinor": {"type": "integer"},
                         "versionRev": {"type": "integer"}, "versionBuild": {"type": "integer"},
                         "clock": MS, "tcpFallbackActive": {"type": "boolean"},
                         "cluster": ref("ClusterStatus"),
                         "zerotier": {"oneOf": [{"type": "null"}, ref("ZeroTierStatus")]}}}
ZEROTIER_STATUS = {"type": "object", "description": "this node's ZeroTier endpoint (null: it has none)",
                   "properties": {"address": {"type": ["string", "null"], "pattern": "^[0-9a-f]{10}$",
                                              "description": "the controller identity it answers for"},
                                  "endpoint": {"type": "string", "description": "bound UDP address, ADDR/PORT"},
                                  "online": {"type": "boolean",
                                             "description": "heard from one of its roots recently"},
                                  "problem": {"type": ["string", "null"],
                                              "description": "why it is not serving yet, if it is not"},
                                  "roots": {"type": "array", "items": {"type": "object"}},
                                  "stats": {"type": "object", "description": "datagram counters; drops by reason",
                                            "additionalProperties": {"type": "integer"}},
                                  "members_online": {"type": "integer"},
                                  "root": {"type": "object", "description": "this node's own root identity "
                                           "(address) and the endpoints members reach it at as a planet root",
                                           "properties": {"address": HEX10,
                                                          "endpoints": {"type": "array",
                                                                        "items": {"type": "string"}}}}},
                   "additionalProperties": True}
CONTROLLER = {"type": "object",
              "properties": {"controller": {"const": True}, "apiVersion": {"const": 4}, "clock": MS,
                             "databaseReady": {"type": "boolean"}}}
HEALTH = {"type": "object", "required": ["healthy"], "properties": {"healthy": {"type": "boolean"}},
          "additionalProperties": True}
LIVEZ = {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"},
                                                               "io_stalled_s": {"type": "number"}},
         "additionalProperties": True}
READYZ = {"type": "object", "required": ["ready", "reasons"],
          "properties": {"ready": {"type": "boolean"}, "reasons": {"type": "array", "items": {"type": "string"}}},
          "additionalProperties": True}
NETWORK_IDS = {"type": "array", "items": HEX16}
MEMBER_REVISIONS = {"type": "object", "description": "member address -> revision",
                    "propertyNames": HEX10, "additionalProperties": {"type": "integer"}}
UNSTABLE_NETWORKS = {
    "type": "object",
    "properties": {
        "data": {"type": "array", "items": {"allOf": [ref("Network"), {
            "type": "object", "properties": {"meta": {"type": "object", "properties": {
                "totalMemberCount": {"type": "integer"}, "authorizedMemberCount": {"type": "integer"}}}}}]}},
        "meta": {"type": "object", "properties": {"networkCount": {"type": "integer"}}},
    },
}
UNSTABLE_MEMBERS = {
    "type": "object",
    "properties": {
        "data": {"type": "array", "items": ref("Member")},
        "meta": {"type": "object", "properties": {"totalCount": {"type": "integer"},
                                                  "authorizedCount": {"type": "integer"}}},
    },
}

COMPONENTS: dict[str, Schema] = {
    "Network": NETWORK, "NetworkInput": NETWORK_INPUT, "Member": MEMBER, "MemberInput": MEMBER_INPUT,
    "Error": ERROR, "Status": STATUS, "ClusterStatus": CLUSTER_STATUS, "ZeroTierStatus": ZEROTIER_STATUS,
    "Controller": CONTROLLER,
    "Health": HEALTH, "Livez": LIVEZ, "Readyz": READYZ, "NetworkIds": NETWORK_IDS, "MemberRevisions": MEMBER_REVISIONS,
    "UnstableNetworks": UNSTABLE_NETWORKS, "UnstableMembers": UNSTABLE_MEMBERS,
    "Rule": RULE, "Route": ROUTE, "IpAssignmentPool": POOL,
}
