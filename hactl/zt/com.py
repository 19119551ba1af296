"""Certificate of Membership (COM) [CertificateOfMembership.hpp/.cpp, 1.x].

A COM is a list of (id, value, maxDelta) qualifiers signed by the network's controller. Two members talk only if
each one's COM "agrees" with the other's: every qualifier must be present in both and differ by at most the
checker's maxDelta. The reference controller issues seven: 0 timestamp (delta = the network's credential time
window, so members whose COMs were issued too far apart cannot talk), 1 network id (delta 0: must be equal),
2 member address and 3..6 the SHA-384 of the member's address and public key (delta all-ones: informational, but
3..6 are checked against the peer's real identity, so a COM cannot be replayed by another identity).

Wire: `[1] 0x01 | [2] Q | Q x ([8] id | [8] value | [8] maxDelta) | [5] signedBy | [96] signature if signedBy != 0`;
the signature covers the qualifier triples only.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from hactl.zt.address import address_from_bytes, address_to_bytes
from hactl.zt.crypto import SIGNATURE_SIZE
from hactl.zt.errors import ProtocolError
from hactl.zt.identity import Identity

MAX_QUALIFIERS = 8  # ZT_NETWORK_COM_MAX_QUALIFIERS
INFORMATIONAL = 0xFFFFFFFFFFFFFFFF
Q_TIMESTAMP, Q_NETWORK_ID, Q_ISSUED_TO = 0, 1, 2


@dataclass(frozen=True)
class Qualifier:
    id: int
    value: int
    max_delta: int


def identity_hash_words(identity: Identity) -> list[int]:
    """Qualifiers 3..6: the first 32 bytes of SHA-384(address || public key) as four big-endian u64."""
    digest = hashlib.sha384(address_to_bytes(identity.address) + identity.public_key).digest()
    return [int.from_bytes(digest[8 * k:8 * k + 8], "big") for k in range(4)]


@dataclass(frozen=True)
class CertificateOfMembership:
    qualifiers: tuple[Qualifier, ...]
    signed_by: int = 0
    signature: bytes = b""

    @classmethod
    def build(cls, network_id: int, member: Identity, timestamp: int, max_delta: int) -> CertificateOfMembership:
        """The unsigned seven-qualifier COM the reference controller issues."""
        qs = [Qualifier(Q_TIMESTAMP, timestamp, max_delta), Qualifier(Q_NETWORK_ID, network_id, 0),
              Qualifier(Q_ISSUED_TO, member.address, INFORMATIONAL)]
        qs += [Qualifier(3 + k, w, INFORMATIONAL) for k, w in enumerate(identity_hash_words(member))]
        return cls(tuple(qs))

    # --- accessors ----------------------------------------------------------------------------------------

    def _value(self, qid: int) -> int:
        for q in self.qualifiers:
            if q.id == qid:
                return q.value
        return 0

    @property
    def timestamp(self) -> int:
        return self._value(Q_TIMESTAMP)

    @property
    def network_id(self) -> int:
        return self._value(Q_NETWORK_ID)

    @property
    def issued_to(self) -> int:
        return self._value(Q_ISSUED_TO)

    # --- signing ------------------------------------------------------------------------------------------

    def signed_bytes(self) -> bytes:
        return b"".join(struct.pack(">QQQ", q.id, q.value, q.max_delta) for q in self.qualifiers)

    def sign(self, controller: Identity) -> CertificateOfMembership:
        return CertificateOfMembership(self.qualifiers, controller.address, controller.sign(self.signed_bytes()))

    def verify(self, controller: Identity) -> bool:
        """Signed by controller, and controller is this network's controller (nwid >> 24)."""
        return (self.signed_by != 0 and self.signed_by == controller.address
                and self.network_id >> 24 == controller.address
                and controller.verify(self.signed_bytes(), self.signature))

    def agrees_with(self, other: CertificateOfMembership, other_identity: Identity) -> bool:
        """What a member holding self checks before talking to the holder of other (whose identity the member
        knows): every one of our qualifiers is in theirs within our maxDelta, and if ours carry the identity hash
        (3..6), theirs must carry the hash of their real identity."""
        if not self.qualifiers or not other.qualifiers:
            return False
        theirs = {q.id: q.value for q in other.qualifiers}
        full_identity = False
        for q in self.qualifiers:
            if 3 <= q.id <= 6:
                full_identity = True
            if q.id not in theirs or abs(q.value - theirs[q.id]) > q.max_delta:
                return False
        if full_identity:
            words = identity_hash_words(other_identity)
            if any(theirs.get(3 + k) != w for k, w in enumerate(words)):
                return False
        return True

    # --- wire form ----------------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        out = bytes((1,)) + struct.pack(">H", len(self.qualifiers)) + self.signed_bytes()
        out += address_to_bytes(self.signed_by)
        if self.signed_by:
            out += self.signature
        return out

    @classmethod
    def from_bytes_prefix(cls, data: bytes, offset: int = 0) -> tuple[CertificateOfMembership, int]:
        """One COM at data[offset:] (COMs are embedded in longer messages); returns it and the offset after it."""
        p = offset
        if len(data) < p + 3:
            raise ProtocolError("COM truncated")
        if data[p] != 1:
            raise ProtocolError(f"COM type {data[p]} is not 1")
        (count,) = struct.unpack_from(">H", data, p + 1)
        p += 3
        if count > MAX_QUALIFIERS:
            raise ProtocolError(f"COM has {count} qualifiers, at most {MAX_QUALIFIERS} allowed")
        if len(data) < p + 24 * count + 5:
            raise ProtocolError("COM truncated")
        qs = []
        last = 0
        for _ in range(count):
            qid, value, delta = struct.unpack_from(">QQQ", data, p)
            p += 24
            if qid < last:
                raise ProtocolError("COM qualifier ids are not ascending")
            last = qid
            qs.append(Qualifier(qid, value, delta))
        signed_by = address_from_bytes(bytes(data[p:p + 5]))
        p += 5
        signature = b""
        if signed_by:
            signature = bytes(data[p:p + SIGNATURE_SIZE])
            if len(signature) != SIGNATURE_SIZE:
                raise ProtocolError("COM signature truncated")
            p += SIGNATURE_SIZE
        return cls(tuple(qs), signed_by, signature), p

    @classmethod
    def from_bytes(cls, data: bytes) -> CertificateOfMembership:
        com, end = cls.from_bytes_prefix(data)
        if end != len(data):
            raise ProtocolError(f"{len(data) - end} bytes after the COM")
        return com
