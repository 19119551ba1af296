"""What ZeroTier's crypto costs hactl: Salsa20/12 throughput, armor+dearmor of a 1400-byte packet, and one
identity validation (the memory-hard hash every new member's identity costs once), with the C accelerator
(hactl/zt/_mhh.c, `make zt-native`) and with the pure-Python reference, on one thread and on two.

Prints `BENCH <name> <value> <unit>` lines. Run: make zt-native && .venv/bin/python bench/zt_crypto.py
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hactl.zt import _mhh, crypto  # noqa: E402
from hactl.zt.identity import Identity  # noqa: E402
from hactl.zt.packet import Packet, Verb, armor, dearmor  # noqa: E402

# The selftest known-good identity (see tests/zt/vectors.py).
KNOWN_GOOD = ("8e4df28b72:0:ac3d46abe0c21f3cfe7a6c8d6a85cfcffcb82fbd55af6a4d6350657c68200843fa2e16f9418bbd9702cae365"
              "f2af5fb4c420908b803a681d4daef6114d78a2d7")


def bench(name: str, unit: str, fn, per_call: float, seconds: float = 1.0) -> None:
    """Call fn repeatedly for about `seconds`; report per_call units per second (or ms per call)."""
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    if unit == "ms":
        print(f"BENCH {name} {elapsed / n * 1000:.3f} ms", flush=True)
    else:
        print(f"BENCH {name} {n * per_call / elapsed:.1f} {unit}", flush=True)


def bench_threads(name: str, unit: str, fn, threads: int, seconds: float = 3.0) -> None:
    """Call fn from `threads` threads at once for about `seconds`; report the total calls per second."""
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def worker(k: int) -> None:
        while time.perf_counter() < deadline:
            fn()
            counts[k] += 1

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print(f"BENCH {name} {sum(counts) / (time.perf_counter() - start):.1f} {unit}", flush=True)


def bench_native_variants(public_key: bytes) -> None:
    """The bare hash with each Salsa20 variant this CPU supports (the library picks the fastest by itself)."""
    import ctypes
    lib = ctypes.CDLL(str(_mhh.LIBRARY))
    lib.hactl_zt_mhh_variant.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    lib.hactl_zt_mhh_variant.restype = ctypes.c_int
    out = ctypes.create_string_buffer(64)
    for variant, name in ((1, "generic"), (2, "avx2"), (3, "avx512f")):
        if lib.hactl_zt_mhh_variant(public_key, out, variant) == 0:
            bench(f"zt_mhh_native_{name}", "hashes/s", lambda v=variant: lib.hactl_zt_mhh_variant(public_key, out, v),
                  1, seconds=2.0)


def bench_identity_backends() -> None:
    """Validations per second with each backend of the memory-hard hash (HACTL_ZT_PURE selects it per call)."""
    ident = Identity.from_string(KNOWN_GOOD)
    saved = os.environ.pop(_mhh.PURE_ENV, None)
    try:
        if _mhh.native() is None:
            print(f"# no native backend ({_mhh._error}): make zt-native", file=sys.stderr, flush=True)
        else:
            print(f"# native backend: {_mhh.implementation()}", file=sys.stderr, flush=True)
            bench("zt_identity_validate_native", "validations/s", ident.locally_validate, 1, seconds=3.0)
            bench_threads("zt_identity_validate_native_2threads", "validations/s", ident.locally_validate, 2)
            bench("zt_identity_generate_native", "ms", Identity.generate, 1, seconds=3.0)
            bench_native_variants(ident.public_key)
        os.environ[_mhh.PURE_ENV] = "1"
        bench("zt_identity_validate_pure", "validations/s", ident.locally_validate, 1, seconds=3.0)
    finally:
        os.environ.pop(_mhh.PURE_ENV, None)
        if saved is not None:
            os.environ[_mhh.PURE_ENV] = saved


def main() -> None:
    key, nonce = os.urandom(32), os.urandom(8)
    data = os.urandom(1 << 20)
    bench("zt_salsa2012_xor", "MB/s", lambda: crypto.salsa20_12_xor(key, nonce, data), 1.0)
    bench("zt_salsa2012_xor_1400B", "MB/s", lambda: crypto.salsa20_12_xor(key, nonce, data[:1400]), 1400 / 1e6)

    key48 = os.urandom(48)
    pkt = Packet(os.urandom(8), 0x1122334455, 0x2233445566, Verb.FRAME, os.urandom(1400 - 28))
    bench("zt_armor_dearmor_1400B", "packets/s", lambda: dearmor(armor(pkt, key48), key48), 1)

    ident = Identity.from_string(KNOWN_GOOD)
    bench("zt_identity_validate", "ms", ident.locally_validate, 1, seconds=3.0)  # the backend in use
    bench_identity_backends()
    a = Identity.from_string(KNOWN_GOOD)
    priv = crypto.generate_private()
    bench("zt_key_agreement", "ms", lambda: crypto.agree(priv, a.public_key), 1)


if __name__ == "__main__":
    main()
