"""Worlds: the signed lists of root servers a ZeroTier node trusts (a planet, type 1) or adds (a moon, type 127).

Wire form (big-endian): [1] type | [8] world id | [8] timestamp | [64] updates-must-be-signed-by (C25519
public key) | [96] signature | [1] root count (at most 4) | per root: identity public form (71) | [1] stable
endpoint count (at most 32) | InetAddress each | moons only: [2] length of a reserved dictionary (written 0,
skipped on read).

The signature covers the same bytes minus the signature field, framed by eight 0x7f and eight 0xf7 bytes.
A world does not sign itself with its own key: its signature is made with the key the *previous* world names,
and its own key says who may sign the next one. That chain is what lets a node accept a replacement in-band
(inside OK(HELLO)) from any root: only the holder of the key it already trusts can move its roots.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from hactl.zt import crypto
from hactl.zt.errors import ProtocolError
from hactl.zt.identity import Identity
from hactl.zt.inetaddress import InetAddress, Reader

MAX_ROOTS = 4  # a node refuses to parse a world with more, so one with 5 roots is unusable, not degraded
MAX_STABLE_ENDPOINTS = 32
_SIGN_PREFIX = b"\x7f" * 8
_SIGN_SUFFIX = b"\xf7" * 8

# ZeroTier's own planet, compiled into every node (ZT_DEFAULT_WORLD in node/Topology.cpp; brief appendix B).
ZEROTIER_PLANET_ID = 149604618
ZEROTIER_PLANET = bytes.fromhex(
    "010000000008eac90a0000017ee95760cdb8b388a469221491aa9acd66cc764cdefd56039f1067ae15e69c6fb42d7b55330e3fdaac529c07"
    "92fd7340a6aa21aba8a489fdaea44a39bf2d00659ac9c818eb3600927637ef4d1404a44d544684851379751faa79b4c4ea85040175ea0658"
    "60482402e1eb342052000e6290061a9be0cd293c8b55f1c3d2524808afc54922080e3539a75addc3cef0f6ad260d588293bb7786e71efa4b"
    "9057dad9867afe12dd04cafe9efeb900ccdef76bc7b97ded904eabc5df09886d9c1514a610036cb9139cc214001a2958978efcec15712dd3"
    "948c6e6b3a8e893df01ff493d1f8d9806a860c5420571bf000020468c208862709062605988002001200003005710e3400512709778cde71"
    "90003f6681a99e5ad1895e9fba33e6212d4454e168bcec7112101bf000956ed8e92e42892cb6f2ec410881a84ab19da50e1287ba3d926c3a"
    "1f755cccf299a120705500020467c3674227090626059880040000c30254f2bca1f70019270962f865ae7100e2076c57de870e6288d7d5e7"
    "404408b1545efca37d67f77b87e9e54168c25d3ef1a9abf2905ea5e785c01dff23887ad4232d95c7a8fd2c27111a72bd159322dc00020432"
    "07fc8a270906200149f0d0db000200000000000000022709cafe04eba9006c6a9d1dea55c1616bfe2a2b8f0ff9a8cacaf70374fb1f39e3be"
    "f81cbfebef17b7228268a0a2a29d3488c752565c6c965cbd6506ec24397cc8a5d9d15285a87f0002045411359b2709062a026ea0d4050000"
    "00000000000099932709")


class WorldType(IntEnum):
    NULL = 0
    PLANET = 1
    MOON = 127


@dataclass(frozen=True)
class Root:
    """A root server: its identity (public form only) and the addresses nodes may always try it at."""
    identity: Identity
    stable_endpoints: tuple[InetAddress, ...] = ()

    def __post_init__(self) -> None:
        if self.identity.has_private:
            raise ValueError("a world carries public identities only")
        if len(self.stable_endpoints) > MAX_STABLE_ENDPOINTS:
            raise ValueError(f"a root has at most {MAX_STABLE_ENDPOINTS} stable endpoints")


@dataclass(frozen=True)
class World:
    type: WorldType
    id: int
    timestamp: int
    updates_must_be_signed_by: bytes
    signature: bytes = field(repr=False)
    roots: tuple[Root, ...]

    def __post_init__(self) -> None:
        if not (0 <= self.id < 1 << 64 and 0 <= self.timestamp < 1 << 64):
            raise ValueError("world id and timestamp are unsigned 64-bit")
        if len(self.updates_must_be_signed_by) != crypto.PUBLIC_KEY_SIZE:
            raise ValueError(f"update key must be {crypto.PUBLIC_KEY_SIZE} bytes")
        if len(self.signature) != crypto.SIGNATURE_SIZE:
            raise ValueError(f"signature must be {crypto.SIGNATURE_SIZE} bytes")
        if len(self.roots) > MAX_ROOTS:
            raise ValueError(f"a world has at most {MAX_ROOTS} roots")

    # --- wire form -------------------------------------------------------------------------------------------

    def _body(self) -> bytes:
        out = bytearray([len(self.roots)])
        for root in self.roots:
            out += root.identity.to_bytes()
            out.append(len(root.stable_endpoints))
            for ep in root.stable_endpoints:
                out += ep.encode()
        if self.type == WorldType.MOON:
            out += b"\x00\x00"  # the reserved dictionary, always empty
        return bytes(out)

    def _head(self) -> bytes:
        return (bytes([self.type]) + self.id.to_bytes(8, "big") + self.timestamp.to_bytes(8, "big")
                + self.updates_must_be_signed_by)

    def signed_bytes(self) -> bytes:
        return _SIGN_PREFIX + self._head() + self._body() + _SIGN_SUFFIX

    def encode(self) -> bytes:
        return self._head() + self.signature + self._body()

    @classmethod
    def read(cls, r: Reader) -> World:
        kind = r.u8("world type")
        try:
            wtype = WorldType(kind)
        except ValueError:
            raise ProtocolError(f"unknown world type {kind}") from None
        wid = r.u64("world id")
        ts = r.u64("world timestamp")
        key = r.take(crypto.PUBLIC_KEY_SIZE, "world update key")
        sig = r.take(crypto.SIGNATURE_SIZE, "world signature")
        count = r.u8("root count")
        if count > MAX_ROOTS:
            raise ProtocolError(f"world lists {count} roots, the limit is {MAX_ROOTS}")
        roots = []
        for _ in range(count):
            ident, r.pos = Identity.from_bytes_prefix(r.data, r.pos)
            if ident.has_private:
                raise ProtocolError(f"root {ident.address:010x} in a world carries its private key")
            n = r.u8("endpoint count")
            if n > MAX_STABLE_ENDPOINTS:
                raise ProtocolError(f"root lists {n} endpoints, the limit is {MAX_STABLE_ENDPOINTS}")
            roots.append(Root(ident, tuple(InetAddress.read(r) for _ in range(n))))
        if wtype == WorldType.MOON:
            r.take(r.u16("moon dictionary length"), "moon dictionary")
        return cls(wtype, wid, ts, key, sig, tuple(roots))

    @classmethod
    def decode_prefix(cls, data: bytes, offset: int = 0) -> tuple[World, int]:
        """One world at data[offset:] and the offset after it (OK(HELLO) carries worlds back to back)."""
        r = Reader(data, offset)
        return cls.read(r), r.pos

    @classmethod
    def decode(cls, data: bytes) -> World:
        r = Reader(data)
        world = cls.read(r)
        r.expect_end("world")
        return world

    # --- signatures and replacement ---------------------------------------------------------------------------

    def verify(self, public_key: bytes | None = None) -> bool:
        """Is this world signed by public_key (default: its own update key, which holds for a world signed by
        the same key it names, e.g. ZeroTier's built-in planet or a first planet we made)?"""
        return crypto.verify(public_key if public_key is not None else self.updates_must_be_signed_by,
                             self.signed_bytes(), self.signature)

    def should_be_replaced_by(self, update: World) -> bool:
        """The node's rule: an empty current world takes anything (that is how a cached file is loaded);
        otherwise only the same id and type, a strictly newer timestamp, signed with the key we name."""
        if self.id == 0 or self.type == WorldType.NULL:
            return True
        return (update.id == self.id and update.type == self.type and update.timestamp > self.timestamp
                and update.verify(self.updates_must_be_signed_by))

    @classmethod
    def make(cls, wtype: WorldType, world_id: int, timestamp: int, updates_must_be_signed_by: bytes,
             roots: tuple[Root, ...] | list[Root], sign_with: bytes) -> World:
        """A world signed with the 64-byte C25519 private key sign_with: for an update, the private half of the
        key the current world names; updates_must_be_signed_by names who signs the one after."""
        unsigned = cls(WorldType(wtype), world_id, timestamp, updates_must_be_signed_by,
                       bytes(crypto.SIGNATURE_SIZE), tuple(roots))
        return cls(unsigned.type, world_id, timestamp, updates_must_be_signed_by,
                   crypto.sign(sign_with, unsigned.signed_bytes()), unsigned.roots)

    def as_moon(self, sign_with: bytes, world_id: int | None = None) -> World:
        """The same roots as a moon (for nodes that keep ZeroTier's planet and `orbit` ours). A moon's id is by
        convention the address of its first root."""
        if world_id is None:
            if not self.roots:
                raise ValueError("a moon without roots needs an explicit id")
            world_id = self.roots[0].identity.address
        return World.make(WorldType.MOON, world_id, self.timestamp, self.updates_must_be_signed_by, self.roots,
                          sign_with)


def zerotier_planet() -> World:
    return World.decode(ZEROTIER_PLANET)
