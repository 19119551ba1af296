"""ctypes bindings to the two C libraries hactl/zt/ uses from Debian: libsodium (Salsa20) and liblz4.

Why these and not Python packages: `cryptography` has no Salsa20 at all; PyNaCl bundles libsodium but its
bindings expose only the ChaCha20 family of stream ciphers; the identity hash streams 10 MiB of Salsa20/20, far
too slow in pure Python. libsodium's crypto_stream_salsa20/salsa2012 are the reference-quality implementations
with exactly ZeroTier's conventions (64-bit nonce, 64-bit block counter from 0). liblz4's LZ4_decompress_safe is
the decoder ZeroTier itself calls, hardened for hostile input and bounded by the caller's output capacity.
Both ship in Debian (libsodium23, liblz4-1); the Makefile installs them if a machine lacks them.

Only the functions used are declared, each with full argtypes so ctypes cannot pass a wrong width.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Sequence

_SODIUM_NAMES = ("libsodium.so.23", "libsodium.so")
_LZ4_NAMES = ("liblz4.so.1", "liblz4.so")


def _load(names: Sequence[str], short: str, package: str) -> ctypes.CDLL:
    found = ctypes.util.find_library(short)
    for name in (*names, *([found] if found else [])):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise ImportError(f"hactl.zt needs the C library {short!r} (Debian package {package}): "
                      f"run `make test` or `apt-get install {package}`")


_u8p = ctypes.c_char_p
_ull = ctypes.c_ulonglong

sodium = _load(_SODIUM_NAMES, "sodium", "libsodium23")
if sodium.sodium_init() < 0:  # pragma: no cover - only fails without an entropy source
    raise ImportError("libsodium failed to initialise")

# int crypto_stream_salsa20(unsigned char *c, unsigned long long clen, const unsigned char *n, const unsigned char *k)
for _fn in (sodium.crypto_stream_salsa20, sodium.crypto_stream_salsa2012):
    _fn.argtypes = [ctypes.c_void_p, _ull, _u8p, _u8p]
    _fn.restype = ctypes.c_int
# int crypto_stream_salsa2012_xor(unsigned char *c, const unsigned char *m, unsigned long long mlen, n, k)
for _fn in (sodium.crypto_stream_salsa20_xor, sodium.crypto_stream_salsa2012_xor):
    _fn.argtypes = [ctypes.c_void_p, _u8p, _ull, _u8p, _u8p]
    _fn.restype = ctypes.c_int

lz4 = _load(_LZ4_NAMES, "lz4", "liblz4-1")
# int LZ4_decompress_safe(const char *src, char *dst, int compressedSize, int dstCapacity)
lz4.LZ4_decompress_safe.argtypes = [_u8p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
lz4.LZ4_decompress_safe.restype = ctypes.c_int
