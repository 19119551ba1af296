"""ZeroTier's cryptographic primitives: Salsa20 (12 and 20 rounds), Poly1305, SHA-512 and C25519.

Library choice (measured by bench/zt_crypto.py):
- `cryptography` (already a hactl dependency, OpenSSL inside) for X25519, Ed25519, SHA-512 and Poly1305.
- libsodium through ctypes (hactl/zt/_native.py) for Salsa20/12 and Salsa20/20, which `cryptography` lacks.
  A pure-Python Salsa20 would do a few MB/s at best; the identity hash alone streams 10 MiB of Salsa20/20 per
  validation, and every new member presents one.

C25519 is ZeroTier's name for a pair of keys used together: a 64-byte public key is the X25519 public key
followed by the Ed25519 public key; a 64-byte private key is the X25519 scalar followed by the Ed25519 seed.
Key agreement hashes the X25519 secret with SHA-512. A signature is Ed25519 over the first 32 bytes of the
message's SHA-512 digest, followed by those 32 bytes (96 bytes in all), so a verifier can reject a signature
for another message before any curve arithmetic.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.poly1305 import Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hactl.zt import _native
from hactl.zt.errors import ProtocolError

PUBLIC_KEY_SIZE = 64
PRIVATE_KEY_SIZE = 64
SIGNATURE_SIZE = 96
SYMMETRIC_KEY_SIZE = 48  # ZeroTier keeps 48 bytes of the agreed 64; Salsa20 uses the first 32
SALSA_KEY_SIZE = 32
SALSA_NONCE_SIZE = 8
POLY1305_KEY_SIZE = 32


def _check_salsa_args(key: bytes, nonce: bytes) -> None:
    # A wrong length here is a programming error, not bad network input: the C code would read past the buffer.
    if len(key) != SALSA_KEY_SIZE or len(nonce) != SALSA_NONCE_SIZE:
        raise TypeError("Salsa20 needs a 32-byte key and an 8-byte nonce")


def salsa20_12_keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    """Salsa20/12 keystream bytes [0:length): 64-bit nonce, 64-bit block counter from 0 (ZeroTier's layout)."""
    _check_salsa_args(key, nonce)
    out = ctypes.create_string_buffer(length)
    _native.sodium.crypto_stream_salsa2012(out, length, nonce, key)
    return out.raw


def salsa20_12_xor(key: bytes, nonce: bytes, data: bytes) -> bytes:
    """data XOR Salsa20/12 keystream from byte 0."""
    _check_salsa_args(key, nonce)
    out = ctypes.create_string_buffer(len(data))
    _native.sodium.crypto_stream_salsa2012_xor(out, bytes(data), len(data), nonce, key)
    return out.raw


def salsa20_20_keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    """Salsa20/20 keystream bytes [0:length) (used only by the identity hash)."""
    _check_salsa_args(key, nonce)
    out = ctypes.create_string_buffer(length)
    _native.sodium.crypto_stream_salsa20(out, length, nonce, key)
    return out.raw


def poly1305(key: bytes, data: bytes) -> bytes:
    """The 16-byte Poly1305 tag of data under a one-time 32-byte key."""
    return Poly1305.generate_tag(key, data)


def sha512(data: bytes) -> bytes:
    return hashlib.sha512(data).digest()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


# --- C25519 -----------------------------------------------------------------------------------------------

def public_from_private(private: bytes) -> bytes:
    """The 64-byte C25519 public key of a 64-byte private key."""
    if len(private) != PRIVATE_KEY_SIZE:
        raise ProtocolError(f"C25519 private key must be {PRIVATE_KEY_SIZE} bytes, got {len(private)}")
    dh = X25519PrivateKey.from_private_bytes(private[:32]).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ed = Ed25519PrivateKey.from_private_bytes(private[32:]).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    return dh + ed


def generate_private() -> bytes:
    """64 random bytes: any 32 bytes are a valid X25519 scalar (clamped when used) and a valid Ed25519 seed."""
    return os.urandom(PRIVATE_KEY_SIZE)


def agree(my_private: bytes, their_public: bytes) -> bytes:
    """The 64-byte shared secret SHA-512(X25519(my scalar, their X25519 key)); the per-peer symmetric key is
    its first SYMMETRIC_KEY_SIZE bytes. Raises ProtocolError for a peer key that yields no secret (a low-order
    point), since such a key would make every peer's traffic readable."""
    if len(my_private) != PRIVATE_KEY_SIZE:
        raise ProtocolError(f"C25519 private key must be {PRIVATE_KEY_SIZE} bytes, got {len(my_private)}")
    if len(their_public) != PUBLIC_KEY_SIZE:
        raise ProtocolError(f"C25519 public key must be {PUBLIC_KEY_SIZE} bytes, got {len(their_public)}")
    try:
        raw = X25519PrivateKey.from_private_bytes(my_private[:32]).exchange(
            X25519PublicKey.from_public_bytes(their_public[:32]))
    except ValueError as e:
        raise ProtocolError(f"peer X25519 key gives no shared secret: {e}") from None
    return sha512(raw)


def sign(private: bytes, message: bytes) -> bytes:
    """A 96-byte C25519 signature: Ed25519(seed = private[32:64]) over SHA-512(message)[0:32], then that digest."""
    if len(private) != PRIVATE_KEY_SIZE:
        raise ProtocolError(f"C25519 private key must be {PRIVATE_KEY_SIZE} bytes, got {len(private)}")
    digest = sha512(message)[:32]
    return _signing_key(bytes(private[32:])).sign(digest) + digest


@functools.lru_cache(maxsize=64)
def _signing_key(seed: bytes) -> Ed25519PrivateKey:
    # A controller signs every config with one key: building the key object each time was half a signature's cost.
    return Ed25519PrivateKey.from_private_bytes(seed)


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """True iff signature is a valid C25519 signature of message by public. Any malformed input is False:
    a signature is only ever a yes/no question to the caller."""
    if len(public) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    digest = sha512(message)[:32]
    if not constant_time_equal(signature[64:], digest):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public[32:]).verify(signature[:64], digest)
    except (InvalidSignature, ValueError):
        return False
    return True
