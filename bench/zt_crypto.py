"""What ZeroTier's crypto costs hactl: Salsa20/12 throughput, armor+dearmor of a 1400-byte packet, and one
identity validation (the memory-hard hash every new member's identity costs once).

Prints `BENCH <name> <value> <unit>` lines. Run: .venv/bin/python bench/zt_crypto.py
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hactl.zt import crypto  # noqa: E402
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


def main() -> None:
    key, nonce = os.urandom(32), os.urandom(8)
    data = os.urandom(1 << 20)
    bench("zt_salsa2012_xor", "MB/s", lambda: crypto.salsa20_12_xor(key, nonce, data), 1.0)
    bench("zt_salsa2012_xor_1400B", "MB/s", lambda: crypto.salsa20_12_xor(key, nonce, data[:1400]), 1400 / 1e6)

    key48 = os.urandom(48)
    pkt = Packet(os.urandom(8), 0x1122334455, 0x2233445566, Verb.FRAME, os.urandom(1400 - 28))
    bench("zt_armor_dearmor_1400B", "packets/s", lambda: dearmor(armor(pkt, key48), key48), 1)

    ident = Identity.from_string(KNOWN_GOOD)
    bench("zt_identity_validate", "ms", ident.locally_validate, 1, seconds=3.0)
    a = Identity.from_string(KNOWN_GOOD)
    priv = crypto.generate_private()
    bench("zt_key_agreement", "ms", lambda: crypto.agree(priv, a.public_key), 1)


if __name__ == "__main__":
    main()
