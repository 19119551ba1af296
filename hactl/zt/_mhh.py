"""The C accelerator of the identity hash (hactl/zt/_mhh.c), loaded through ctypes.

identity.memory_hard_hash_python stays the reference and the fallback; the C version computes the same 64
bytes ~40x faster (about 3 ms with AVX-512, 5 ms with AVX2, 8 ms baseline, against ~120 ms), which is what
makes new-member admission cheap. ctypes releases the GIL during the call, so threads hash in parallel.

Building: `make zt-native` (a prerequisite of `make test`) runs `cc -O2 -shared -fPIC` on _mhh.c and writes
libhactl_mhh.so next to this file, where an editable install (`pip install -e .`) finds it as is; the Dockerfile
compiles it in a build stage and copies it next to the installed package. Nothing else is needed: the C file
has its own SHA-512 and Salsa20/20. (Not `_mhh.so`: Python's import system would take that for an extension
module named like this loader.)

Choice per call (`active`): HACTL_ZT_PURE=1 forces the Python path (tests compare both); otherwise the library
if it loads, reports the expected ABI and reproduces a known answer; otherwise the Python path, with one
WARNING saying how to build the library.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path
from typing import Callable

LIBRARY = Path(__file__).with_name("libhactl_mhh.so")
PURE_ENV = "HACTL_ZT_PURE"
_ABI = 1
_KEY_SIZE = 64

# The selftest known-good identity's public key and hash (tests/zt/vectors.py), checked once at load.
_CHECK_KEY = bytes.fromhex("ac3d46abe0c21f3cfe7a6c8d6a85cfcffcb82fbd55af6a4d6350657c68200843"
                           "fa2e16f9418bbd9702cae365f2af5fb4c420908b803a681d4daef6114d78a2d7")
_CHECK_HASH = bytes.fromhex("10b1afd388c4c1561f184ed54cd5bd012a1c8edf5a5975200bb15608dba0b5eb"
                            "b9faa360a0c6bf99cf684e015bf5bda9d347a4867a5515fa48c6c58e4df28b72")

log = logging.getLogger("hactl.zt")

_lock = threading.Lock()
_tried = False
_native: Callable[[bytes], bytes] | None = None
_impl = ""
_error = ""
_warned: set[str] = set()


def _load() -> None:
    global _tried, _native, _impl, _error
    with _lock:
        if _tried:
            return
        try:
            lib = ctypes.CDLL(str(LIBRARY))
            lib.hactl_zt_mhh_abi.argtypes = []
            lib.hactl_zt_mhh_abi.restype = ctypes.c_int
            if lib.hactl_zt_mhh_abi() != _ABI:
                raise OSError(f"ABI {lib.hactl_zt_mhh_abi()}, expected {_ABI} (rebuild: make zt-native)")
            # int hactl_zt_mhh(const unsigned char public_key[64], unsigned char digest[64])
            lib.hactl_zt_mhh.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
            lib.hactl_zt_mhh.restype = ctypes.c_int
            lib.hactl_zt_mhh_impl.argtypes = []
            lib.hactl_zt_mhh_impl.restype = ctypes.c_char_p
            c_hash = lib.hactl_zt_mhh

            def native(public_key: bytes) -> bytes:
                out = ctypes.create_string_buffer(64)
                if c_hash(public_key, out) != 0:
                    raise MemoryError("memory-hard hash: cannot allocate its 2 MiB")
                return out.raw

            if native(_CHECK_KEY) != _CHECK_HASH:
                raise OSError("it computes a wrong hash for the known-good identity (rebuild: make zt-native)")
            _native, _impl = native, lib.hactl_zt_mhh_impl().decode()
        except (OSError, AttributeError) as e:  # missing file, wrong architecture, missing symbol, bad answer
            _error = f"{LIBRARY}: {e}" if LIBRARY.name not in str(e) else str(e)
        _tried = True


def native() -> Callable[[bytes], bytes] | None:
    """The C hash (public key of exactly 64 bytes -> 64-byte digest), or None if the library is unusable."""
    if not _tried:
        _load()
    return _native


def pure_forced() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def active() -> Callable[[bytes], bytes] | None:
    """The C hash to use now, or None for the Python path (then warns, once per reason)."""
    if pure_forced():
        _warn_once("pure", "%s=1: identities are validated by the pure-Python memory-hard hash (~0.15 s each)",
                   PURE_ENV)
        return None
    fn = native()
    if fn is None:
        _warn_once("missing", "identity validation is slow (~0.15 s per new identity, pure-Python memory-hard "
                   "hash): the C accelerator is not available (%s); build it with `make zt-native`", _error)
    return fn


def backend() -> str:
    """Which path memory_hard_hash takes now: 'native' or 'python'."""
    return "native" if active() is not None else "python"


def implementation() -> str:
    """The Salsa20 variant the library picked for this CPU ('avx512f', 'avx2', 'generic'), or '' if not loaded."""
    native()
    return _impl


def _warn_once(reason: str, message: str, *args: object) -> None:
    if reason not in _warned:
        _warned.add(reason)
        log.warning(message, *args)
