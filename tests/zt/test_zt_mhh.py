"""The C accelerator of the identity hash (hactl/zt/_mhh.c) against the Python reference.

`make test` builds the library first (`make zt-native`), so its absence is a failure here, not a skip."""
from __future__ import annotations

import ctypes
import logging
import random
import subprocess
import threading

import pytest

from hactl.zt import _mhh
from hactl.zt.errors import ProtocolError
from hactl.zt.identity import Identity, memory_hard_hash, memory_hard_hash_python
from tests.zt import vectors as v

GOOD_KEY = bytes.fromhex(v.KNOWN_GOOD_IDENTITY.split(":")[2])
ROOT_KEYS = [bytes.fromhex(text.split(":")[2]) for text in v.MKWORLD_ROOTS]
RANDOM_KEYS = [random.Random(seed).randbytes(64) for seed in range(20)]


@pytest.fixture(autouse=True)
def _not_forced_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_mhh.PURE_ENV, raising=False)


@pytest.fixture(scope="module")
def native():
    fn = _mhh.native()
    assert fn is not None, f"the C accelerator did not load ({_mhh._error}); build it with `make zt-native`"
    return fn


def test_native_backend_is_active() -> None:
    assert _mhh.backend() == "native", f"{_mhh._error}; build it with `make zt-native`"
    assert _mhh.implementation() in ("avx512f", "avx2", "generic")


def test_known_good_identity(native) -> None:
    assert native(GOOD_KEY).hex() == memory_hard_hash_python(GOOD_KEY).hex() == v.KNOWN_GOOD_HASH
    assert memory_hard_hash(GOOD_KEY).hex() == v.KNOWN_GOOD_HASH


def test_known_bad_identity(native) -> None:
    bad = Identity.from_string(v.KNOWN_BAD_IDENTITY)
    assert native(bad.public_key) == memory_hard_hash_python(bad.public_key)
    assert not bad.locally_validate()


@pytest.mark.parametrize("key", ROOT_KEYS + RANDOM_KEYS, ids=lambda k: k[:4].hex())
def test_native_equals_python(native, key: bytes) -> None:
    assert native(key) == memory_hard_hash_python(key)


def test_every_salsa20_variant_this_cpu_has_agrees(native) -> None:
    # The library picks AVX-512F, AVX2 or baseline code at run time; CI's CPU exercises only one of them unless
    # each is called explicitly.
    lib = ctypes.CDLL(str(_mhh.LIBRARY))
    lib.hactl_zt_mhh_variant.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    lib.hactl_zt_mhh_variant.restype = ctypes.c_int
    ran = []
    for variant in (1, 2, 3):
        for key in (GOOD_KEY, *RANDOM_KEYS[:3]):
            out = ctypes.create_string_buffer(64)
            rc = lib.hactl_zt_mhh_variant(key, out, variant)
            if rc == -2:  # not supported by this CPU
                break
            assert rc == 0 and out.raw == native(key), (variant, key.hex())
        else:
            ran.append(variant)
    assert 1 in ran


def test_locally_validate_agrees_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    identities = [Identity.from_string(v.KNOWN_GOOD_IDENTITY), Identity.from_string(v.KNOWN_BAD_IDENTITY),
                  *(Identity.from_string(text) for text in v.MKWORLD_ROOTS),
                  Identity(0x1234567890, rng.randbytes(64)),  # an address that is not the key's
                  Identity.generate(random.Random(11).randbytes)]
    assert _mhh.backend() == "native"
    native_verdicts = [ident.locally_validate() for ident in identities]
    monkeypatch.setenv(_mhh.PURE_ENV, "1")
    assert _mhh.backend() == "python"
    python_verdicts = [ident.locally_validate() for ident in identities]
    assert native_verdicts == python_verdicts == [True, False, True, True, False, True]


def test_wrong_key_length_is_refused_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    for pure in ("0", "1"):
        monkeypatch.setenv(_mhh.PURE_ENV, pure)
        for key in (b"", GOOD_KEY[:63], GOOD_KEY + b"\x00"):
            with pytest.raises(ProtocolError):
                memory_hard_hash(key)


def test_threads_hash_concurrently(native) -> None:
    keys = RANDOM_KEYS[:8]
    expected = [native(key) for key in keys]
    results: dict[int, bytes] = {}

    def work(i: int) -> None:
        results[i] = native(keys[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(keys))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(keys))] == expected


def test_missing_library_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(_mhh, "_tried", True)
    monkeypatch.setattr(_mhh, "_native", None)
    monkeypatch.setattr(_mhh, "_error", "hactl/zt/libhactl_mhh.so: cannot open shared object file")
    monkeypatch.setattr(_mhh, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="hactl.zt"):
        assert _mhh.backend() == "python"
        assert memory_hard_hash(GOOD_KEY).hex() == v.KNOWN_GOOD_HASH
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "make zt-native" in warnings[0].getMessage()


def _reload_from(monkeypatch: pytest.MonkeyPatch, path) -> None:
    monkeypatch.setattr(_mhh, "LIBRARY", path)
    monkeypatch.setattr(_mhh, "_tried", False)
    monkeypatch.setattr(_mhh, "_native", None)
    monkeypatch.setattr(_mhh, "_error", "")
    monkeypatch.setattr(_mhh, "_warned", set())


def test_unloadable_library_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    fake = tmp_path / "libhactl_mhh.so"
    fake.write_bytes(b"not an ELF file")
    _reload_from(monkeypatch, fake)
    assert _mhh.native() is None and str(fake) in _mhh._error
    assert memory_hard_hash(GOOD_KEY).hex() == v.KNOWN_GOOD_HASH


def test_library_computing_a_wrong_answer_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    source = tmp_path / "wrong.c"
    source.write_text("int hactl_zt_mhh_abi(void) { return 1; }\n"
                      "const char *hactl_zt_mhh_impl(void) { return \"generic\"; }\n"
                      "int hactl_zt_mhh(const unsigned char *k, unsigned char *d)"
                      " { for (int i = 0; i < 64; i++) d[i] = k[i]; return 0; }\n")
    wrong = tmp_path / "libhactl_mhh.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(wrong), str(source)], check=True)
    _reload_from(monkeypatch, wrong)
    assert _mhh.native() is None and "wrong hash" in _mhh._error
    assert _mhh.backend() == "python"
    assert memory_hard_hash(GOOD_KEY).hex() == v.KNOWN_GOOD_HASH
