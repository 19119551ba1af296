"""Known-answer tests of the primitives, from ZeroTierOne's selftest.cpp as quoted in the protocol brief (§14)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from hactl.zt import crypto
from hactl.zt.errors import ProtocolError
from tests.zt.c25519_vectors import C25519_VECTORS

SALSA_KEY = bytes.fromhex("0f62b5085bae0154a7fa4da0f34699ec3f92e5388bde3184d72a7dd02376c91c")
SALSA_IV = bytes.fromhex("288ff65dc42b92f9")


def test_salsa20_12_known_answer() -> None:
    assert crypto.salsa20_12_keystream(SALSA_KEY, SALSA_IV, 64).hex() == (
        "99db33ad11ce0ccb3bfdbf8d0c18160452d014cde989b4c411a559ff7c20a169"
        "e6dc9909d816becedc4063ce07cea828f44bf9b6c9a0a0b200e1b52af41859c5")


def test_salsa20_20_known_answer() -> None:
    assert crypto.salsa20_20_keystream(SALSA_KEY, SALSA_IV, 64).hex() == (
        "5e5e71f90199340304abb22a37b6625bf883fb89ce3b21f54a10b81066ef87da"
        "30b77699aa7379da595c77dd59542da208e5954f89e40eb7aa80a84a6176663f")


def test_salsa20_12_xor_is_keystream_xor() -> None:
    data = bytes(range(200))
    stream = crypto.salsa20_12_keystream(SALSA_KEY, SALSA_IV, 200)
    assert crypto.salsa20_12_xor(SALSA_KEY, SALSA_IV, data) == bytes(a ^ b for a, b in zip(data, stream))


def test_salsa_rejects_wrong_key_sizes() -> None:
    with pytest.raises(TypeError):
        crypto.salsa20_12_keystream(SALSA_KEY[:31], SALSA_IV, 64)
    with pytest.raises(TypeError):
        crypto.salsa20_12_xor(SALSA_KEY, SALSA_IV[:7], b"x")


def test_poly1305_known_answers() -> None:
    key = bytes.fromhex("746869732069732033322d62797465206b657920666f7220506f6c7931333035")
    assert crypto.poly1305(key, bytes(32)).hex() == "49ec78090e481ec6c26b33b91ccc0307"
    assert crypto.poly1305(key, b"Hello world!").hex() == "a6f745008f81c916a20dcc74eef2b2f0"


def test_sha512_known_answer() -> None:
    assert crypto.sha512(b"supercalifragilisticexpealidocious").hex() == (
        "182a855969e5d3e6cbf60524adf288d1bbf25292812431f6d252f1dbc1cb44df"
        "21573de1b06b6875959f3b6f87b11381d0bc792c433a13553ce084c29255311c")


@pytest.mark.parametrize("n", range(len(C25519_VECTORS)))
def test_c25519_vectors(n: int) -> None:
    pub1, priv1, pub2, priv2, agreement, signed1, signed2 = (bytes.fromhex(h) for h in C25519_VECTORS[n])
    assert crypto.public_from_private(priv1) == pub1
    assert crypto.public_from_private(priv2) == pub2
    assert crypto.agree(priv1, pub2) == agreement
    assert crypto.agree(priv2, pub1) == agreement
    # Ed25519 is deterministic, so all 96 bytes must match, not only the 64 selftest compares.
    assert crypto.sign(priv1, agreement) == signed1
    assert crypto.sign(priv2, agreement) == signed2
    assert crypto.verify(pub1, agreement, signed1)
    assert crypto.verify(pub2, agreement, signed2)
    assert not crypto.verify(pub2, agreement, signed1)
    assert not crypto.verify(pub1, agreement[:-1] + bytes([agreement[-1] ^ 1]), signed1)


def test_verify_rejects_digest_tail_that_does_not_match() -> None:
    pub1, priv1, *_ = (bytes.fromhex(h) for h in C25519_VECTORS[0])
    sig = bytearray(crypto.sign(priv1, b"m"))
    sig[95] ^= 1
    assert not crypto.verify(pub1, b"m", bytes(sig))


def test_agree_refuses_low_order_peer_key() -> None:
    _, priv1, *_ = (bytes.fromhex(h) for h in C25519_VECTORS[0])
    with pytest.raises(ProtocolError):
        crypto.agree(priv1, bytes(64))  # X25519 of the all-zero point is all zero


@settings(max_examples=200, deadline=None)
@given(pub=st.binary(max_size=70), msg=st.binary(max_size=40), sig=st.binary(max_size=100))
def test_verify_is_only_true_or_false(pub: bytes, msg: bytes, sig: bytes) -> None:
    assert crypto.verify(pub, msg, sig) in (True, False)


@settings(max_examples=100, deadline=None)
@given(pub=st.binary(min_size=64, max_size=64))
def test_agree_with_any_64_bytes_gives_key_or_protocol_error(pub: bytes) -> None:
    _, priv1, *_ = (bytes.fromhex(h) for h in C25519_VECTORS[0])
    try:
        assert len(crypto.agree(priv1, pub)) == 64
    except ProtocolError:
        pass
