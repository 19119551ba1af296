"""ZeroTier identities (type 0, C25519): an address, a 64-byte public key and optionally the private key.

The address is not chosen: it is the tail of a deliberately slow, memory-hard hash of the public key, and a key
is only usable if that hash also starts with a byte below 17 (hashcash). Claiming an address therefore costs a
search, and anyone can check a claim (`locally_validate`) at the price of one hash. The hash is the expensive
part of accepting a new peer, so callers cache the verdict per identity and rate-limit new ones.

Forms: binary (71 bytes public, 135 with the private key; inside HELLO, WHOIS replies and worlds) and string
(`<address>:0:<public hex>[:<private hex>]`, the identity.public / identity.secret files).
"""
from __future__ import annotations

import os
import sys
from array import array
from dataclasses import dataclass, field
from typing import Callable

from hactl.zt import _mhh, crypto
from hactl.zt.address import (ADDRESS_SIZE, address_from_bytes, address_from_str, address_to_bytes,
                              address_to_str, is_reserved)
from hactl.zt.errors import ProtocolError

IDENTITY_TYPE_C25519 = 0
PUBLIC_FORM_SIZE = ADDRESS_SIZE + 1 + crypto.PUBLIC_KEY_SIZE + 1  # 71
PRIVATE_FORM_SIZE = PUBLIC_FORM_SIZE + crypto.PRIVATE_KEY_SIZE  # 135

# Fixed by the identity type: changing them changes every address.
_HASHCASH_FIRST_BYTE_BELOW = 17
_GEN_MEMORY = 2_097_152
_GEN_BLOCKS = _GEN_MEMORY // 64  # 32 768 blocks of 64 bytes
_GEN_WORDS = _GEN_MEMORY // 8  # 262 144 words of 8 bytes
_MIX_ROUNDS = _GEN_WORDS // 2  # each round reads two words
_WORD_MASK = (1 << 64) - 1


def memory_hard_hash(public_key: bytes) -> bytes:
    """ZeroTier's address-derivation hash of a 64-byte public key (the 64-byte final digest).

    Computed by the C accelerator (hactl/zt/_mhh.c, built by `make zt-native`) when it is built, else by
    memory_hard_hash_python; HACTL_ZT_PURE=1 forces the latter (hactl/zt/_mhh.py)."""
    if len(public_key) != crypto.PUBLIC_KEY_SIZE:
        raise ProtocolError(f"public key must be {crypto.PUBLIC_KEY_SIZE} bytes, got {len(public_key)}")
    native = _mhh.active()
    return native(bytes(public_key)) if native is not None else memory_hard_hash_python(public_key)


def memory_hard_hash_python(public_key: bytes) -> bytes:
    """memory_hard_hash in Python: the reference for the C version, and its fallback.

    The reference fills 2 MiB with Salsa20/20 chained block to block, then walks it in pairs of words: the
    first word picks a digest word, the second a memory word, the two are swapped and the digest is encrypted
    by the next keystream block. Two observations make this fast in Python without changing the result:
    Salsa20's keystream does not depend on the data, so memory block i is the XOR of keystream blocks 0..i, and
    all 10 MiB of keystream can come from libsodium in one call; and the 64-byte digest can live in one 512-bit
    int, so the per-round XOR is a single operation.
    """
    if len(public_key) != crypto.PUBLIC_KEY_SIZE:
        raise ProtocolError(f"public key must be {crypto.PUBLIC_KEY_SIZE} bytes, got {len(public_key)}")
    digest = crypto.sha512(public_key)
    stream = crypto.salsa20_20_keystream(digest[:32], digest[32:40], (_GEN_BLOCKS + _MIX_ROUNDS) * 64)

    # Memory blocks as prefix XOR of the first 32 768 keystream blocks.
    from_bytes = int.from_bytes
    acc = 0
    blocks: list[bytes] = []
    for off in range(0, _GEN_MEMORY, 64):
        acc ^= from_bytes(stream[off:off + 64], "big")
        blocks.append(acc.to_bytes(64, "big"))
    words = array("Q", b"".join(blocks))
    if sys.byteorder == "little":
        words.byteswap()  # the reference reads the index words big-endian
    mem = words.tolist()

    d = from_bytes(digest, "big")
    mask = _WORD_MASK
    for r in range(_MIX_ROUNDS):
        i = r << 1
        shift = (7 - (mem[i] & 7)) << 6  # digest word idx1 sits this many bits from the right
        j = mem[i + 1] & (_GEN_WORDS - 1)
        old = (d >> shift) & mask
        d ^= (old ^ mem[j]) << shift
        mem[j] = old
        off = _GEN_MEMORY + (r << 6)
        d ^= from_bytes(stream[off:off + 64], "big")
    return d.to_bytes(64, "big")


def _hash_satisfies(digest: bytes) -> bool:
    return digest[0] < _HASHCASH_FIRST_BYTE_BELOW


@dataclass(frozen=True)
class Identity:
    address: int
    public_key: bytes
    private_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if is_reserved(self.address) or self.address >> 40:
            raise ProtocolError(f"identity address {self.address:#x} is reserved or too large")
        if len(self.public_key) != crypto.PUBLIC_KEY_SIZE:
            raise ProtocolError(f"identity public key must be {crypto.PUBLIC_KEY_SIZE} bytes")
        if self.private_key is not None and len(self.private_key) != crypto.PRIVATE_KEY_SIZE:
            raise ProtocolError(f"identity private key must be {crypto.PRIVATE_KEY_SIZE} bytes")

    # --- creation and checks ---------------------------------------------------------------------------

    @classmethod
    def generate(cls, random_bytes: Callable[[int], bytes] = os.urandom) -> Identity:
        """A new identity with a valid address. Like the reference, the Ed25519 half is fixed and only part of
        the X25519 scalar is re-drawn until the hash qualifies (~15 tries on average, one hash each).
        random_bytes is a parameter only so that tests can replay a short search."""
        base = bytearray(random_bytes(crypto.PRIVATE_KEY_SIZE))
        ed_public = crypto.public_from_private(bytes(base))[32:]
        while True:
            base[8:24] = random_bytes(16)
            private = bytes(base)
            public = crypto.public_from_private(private)[:32] + ed_public
            digest = memory_hard_hash(public)
            address = address_from_bytes(digest[59:64])
            if _hash_satisfies(digest) and not is_reserved(address):
                return cls(address, public, private)

    def locally_validate(self) -> bool:
        """True iff the address really is derived from the public key (one memory-hard hash: ~3-8 ms in C,
        ~0.15 s in Python)."""
        digest = memory_hard_hash(self.public_key)
        return (_hash_satisfies(digest) and digest[59:64] == address_to_bytes(self.address)
                and not is_reserved(self.address))

    @property
    def has_private(self) -> bool:
        return self.private_key is not None

    def public_only(self) -> Identity:
        return Identity(self.address, self.public_key)

    def agree(self, other: Identity) -> bytes:
        """The 48-byte symmetric key shared with other (needs our private key)."""
        if self.private_key is None:
            raise ValueError("key agreement needs this identity's private key")
        return crypto.agree(self.private_key, other.public_key)[:crypto.SYMMETRIC_KEY_SIZE]

    def sign(self, message: bytes) -> bytes:
        if self.private_key is None:
            raise ValueError("signing needs this identity's private key")
        return crypto.sign(self.private_key, message)

    def verify(self, message: bytes, signature: bytes) -> bool:
        return crypto.verify(self.public_key, message, signature)

    # --- binary form ------------------------------------------------------------------------------------

    def to_bytes(self, include_private: bool = False) -> bytes:
        out = address_to_bytes(self.address) + bytes([IDENTITY_TYPE_C25519]) + self.public_key
        if include_private and self.private_key is not None:
            return out + bytes([crypto.PRIVATE_KEY_SIZE]) + self.private_key
        return out + b"\x00"

    @classmethod
    def from_bytes_prefix(cls, data: bytes, offset: int = 0) -> tuple[Identity, int]:
        """Parse one identity at data[offset:]; returns it and the offset just after it (identities are
        embedded in longer messages)."""
        end = offset + PUBLIC_FORM_SIZE
        if len(data) < end:
            raise ProtocolError(f"identity truncated: need {PUBLIC_FORM_SIZE} bytes, have {len(data) - offset}")
        address = address_from_bytes(bytes(data[offset:offset + ADDRESS_SIZE]))
        if data[offset + ADDRESS_SIZE] != IDENTITY_TYPE_C25519:
            raise ProtocolError(f"unsupported identity type {data[offset + ADDRESS_SIZE]}")
        public = bytes(data[offset + ADDRESS_SIZE + 1:end - 1])
        private_len = data[end - 1]
        private = None
        if private_len == crypto.PRIVATE_KEY_SIZE:
            if len(data) < end + private_len:
                raise ProtocolError("identity private key truncated")
            private = bytes(data[end:end + private_len])
            end += private_len
        elif private_len != 0:
            raise ProtocolError(f"identity private key length must be 0 or 64, got {private_len}")
        if is_reserved(address):
            raise ProtocolError(f"identity address {address_to_str(address)} is reserved")
        ident = cls(address, public, private)
        ident._check_private_matches()
        return ident, end

    @classmethod
    def from_bytes(cls, data: bytes) -> Identity:
        ident, end = cls.from_bytes_prefix(data)
        if end != len(data):
            raise ProtocolError(f"{len(data) - end} bytes after the identity")
        return ident

    # --- string form ------------------------------------------------------------------------------------

    def to_string(self, include_private: bool = False) -> str:
        text = f"{address_to_str(self.address)}:{IDENTITY_TYPE_C25519}:{self.public_key.hex()}"
        if include_private and self.private_key is not None:
            text += ":" + self.private_key.hex()
        return text

    def __str__(self) -> str:
        return self.to_string()

    @classmethod
    def from_string(cls, text: str) -> Identity:
        text = text.strip()  # identity files usually end in a newline
        fields = text.split(":")
        if not 3 <= len(fields) <= 4:
            raise ProtocolError(f"identity string needs 3 or 4 ':'-separated fields, got {len(fields)}")
        address = address_from_str(fields[0])
        if is_reserved(address):
            raise ProtocolError(f"identity address {fields[0]} is reserved")
        if fields[1] != "0":
            raise ProtocolError(f"unsupported identity type {fields[1][:8]!r}")
        public = _unhex(fields[2], crypto.PUBLIC_KEY_SIZE, "public key")
        private = _unhex(fields[3], crypto.PRIVATE_KEY_SIZE, "private key") if len(fields) == 4 else None
        ident = cls(address, public, private)
        ident._check_private_matches()
        return ident

    def _check_private_matches(self) -> None:
        # The reference does not check this; we do, because a mismatched secret would sign and agree keys
        # that no peer could verify, a failure far from its cause.
        if self.private_key is not None and crypto.public_from_private(self.private_key) != self.public_key:
            raise ProtocolError("identity private key does not match its public key")


def _unhex(text: str, size: int, what: str) -> bytes:
    if len(text) != 2 * size:
        raise ProtocolError(f"identity {what} must be {2 * size} hex digits, got {len(text)}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ProtocolError(f"identity {what} is not hex") from None
