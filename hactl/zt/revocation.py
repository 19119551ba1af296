"""Revocation credential [Revocation.hpp, 1.x], what the controller sends in NETWORK_CREDENTIALS when a member is
deauthorized: members then refuse the target's credentials of that type issued at or before `threshold`, without
waiting for its COM to age out of the time window.

Wire: `[4] 0 | [4] id | [8] nwid | [4] 0 | [4] credential id | [8] threshold | [8] flags | [5] target |
[5] signedBy | [1] credential type | [1] 1 | [2] 96 | [96] signature | [2] 0`. The signed bytes are eight 0x7f,
the same without the `[1] 1 | [2] 96 | [96] signature` part, then eight 0x7f (the padding keeps a signature over
one credential type from ever being a valid signature over another's bytes).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from hactl.zt.address import address_from_bytes, address_to_bytes
from hactl.zt.crypto import SIGNATURE_SIZE
from hactl.zt.errors import ProtocolError
from hactl.zt.identity import Identity

FLAG_FAST_PROPAGATE = 0x1
CREDENTIAL_COM, CREDENTIAL_CAPABILITY, CREDENTIAL_TAG, CREDENTIAL_COO = 1, 2, 3, 4
_PAD = b"\x7f" * 8
_BODY = struct.Struct(">IIQIIQQ")  # zero, id, nwid, zero, credential id, threshold, flags
SIZE = _BODY.size + 5 + 5 + 1 + 1 + 2 + SIGNATURE_SIZE + 2


@dataclass(frozen=True)
class Revocation:
    id: int
    network_id: int
    target: int
    threshold: int
    signed_by: int = 0
    credential_type: int = CREDENTIAL_COM
    credential_id: int = 0
    flags: int = FLAG_FAST_PROPAGATE
    signature: bytes = b""

    def _body(self) -> bytes:
        return (_BODY.pack(0, self.id, self.network_id, 0, self.credential_id, self.threshold, self.flags)
                + address_to_bytes(self.target) + address_to_bytes(self.signed_by) + bytes((self.credential_type,)))

    def signed_bytes(self) -> bytes:
        return _PAD + self._body() + b"\x00\x00" + _PAD

    def sign(self, controller: Identity) -> Revocation:
        unsigned = Revocation(self.id, self.network_id, self.target, self.threshold, controller.address,
                              self.credential_type, self.credential_id, self.flags)
        return Revocation(unsigned.id, unsigned.network_id, unsigned.target, unsigned.threshold,
                          unsigned.signed_by, unsigned.credential_type, unsigned.credential_id, unsigned.flags,
                          controller.sign(unsigned.signed_bytes()))

    def verify(self, controller: Identity) -> bool:
        return (self.signed_by == controller.address and self.network_id >> 24 == controller.address
                and controller.verify(self.signed_bytes(), self.signature))

    def to_bytes(self) -> bytes:
        if len(self.signature) != SIGNATURE_SIZE:
            raise ValueError("revocation is not signed")
        return self._body() + b"\x01" + struct.pack(">H", SIGNATURE_SIZE) + self.signature + b"\x00\x00"

    @classmethod
    def from_bytes_prefix(cls, data: bytes, offset: int = 0) -> tuple[Revocation, int]:
        p = offset
        if len(data) < p + SIZE:
            raise ProtocolError("revocation truncated")
        _, rid, nwid, _, cred_id, threshold, flags = _BODY.unpack_from(data, p)
        p += _BODY.size
        target = address_from_bytes(bytes(data[p:p + 5]))
        signed_by = address_from_bytes(bytes(data[p + 5:p + 10]))
        ctype = data[p + 10]
        if data[p + 11] != 1 or struct.unpack_from(">H", data, p + 12)[0] != SIGNATURE_SIZE:
            raise ProtocolError("revocation signature is not a 96-byte C25519 signature")
        p += 14
        sig = bytes(data[p:p + SIGNATURE_SIZE])
        p += SIGNATURE_SIZE
        (extra,) = struct.unpack_from(">H", data, p)
        p += 2 + extra
        if p > len(data):
            raise ProtocolError("revocation extension truncated")
        return cls(rid, nwid, target, threshold, signed_by, ctype, cred_id, flags, sig), p

    @classmethod
    def from_bytes(cls, data: bytes) -> Revocation:
        rev, end = cls.from_bytes_prefix(data)
        if end != len(data):
            raise ProtocolError(f"{len(data) - end} bytes after the revocation")
        return rev


def network_credentials_payload(revocations: list[Revocation]) -> bytes:
    """NETWORK_CREDENTIALS payload carrying only revocations (brief 5.13): no COMs (0x00 ends that list), no
    capabilities, no tags, the revocations, no certificates of ownership."""
    body = b"".join(r.to_bytes() for r in revocations)
    return b"\x00" + b"\x00\x00" + b"\x00\x00" + struct.pack(">H", len(revocations)) + body + b"\x00\x00"
