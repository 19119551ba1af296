"""Identities against the brief's known-good/known-bad identities (selftest.cpp), real root identities and the
appendix C keys captured with a real libzt node."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from hactl.zt.errors import ProtocolError
from hactl.zt.identity import PUBLIC_FORM_SIZE, Identity, memory_hard_hash
from tests.zt import vectors as v


@pytest.fixture(scope="module")
def good() -> Identity:
    return Identity.from_string(v.KNOWN_GOOD_IDENTITY)


def test_known_good_identity_hash_and_validation(good: Identity) -> None:
    assert good.address == 0x8E4DF28B72 and good.has_private
    assert memory_hard_hash(good.public_key).hex() == v.KNOWN_GOOD_HASH
    assert good.locally_validate()


def test_known_bad_identity_parses_but_fails_validation() -> None:
    bad = Identity.from_string(v.KNOWN_BAD_IDENTITY)
    assert bad.address == 0x9E4DF28B72
    assert not bad.locally_validate()


def test_real_root_identity_validates() -> None:
    assert Identity.from_string(v.MKWORLD_ROOTS[0]).locally_validate()


def test_string_form_round_trips_exactly(good: Identity) -> None:
    assert good.to_string(include_private=True) == v.KNOWN_GOOD_IDENTITY
    assert str(good) == v.KNOWN_GOOD_IDENTITY.rsplit(":", 1)[0]
    assert Identity.from_string(v.KNOWN_GOOD_IDENTITY + "\n") == good


def test_binary_form(good: Identity) -> None:
    # Public form as in HELLO / OK(WHOIS): address, type 0, key, private length 0.
    public = good.to_bytes()
    assert len(public) == PUBLIC_FORM_SIZE == 71
    assert public == bytes.fromhex("8e4df28b72" "00") + good.public_key + b"\x00"
    assert Identity.from_bytes(public) == good.public_only()
    secret = good.to_bytes(include_private=True)
    assert len(secret) == 135 and secret[70] == 64
    assert Identity.from_bytes(secret) == good


def test_identity_inside_hello_vector() -> None:
    hello = bytes.fromhex(v.HELLO)
    ident, end = Identity.from_bytes_prefix(hello, 41)
    assert ident.to_string() == v.NODE_PUBLIC and end == 112


def test_key_agreement_matches_real_node_vectors() -> None:
    root = Identity.from_string(v.ROOT_SECRET)
    assert root.agree(Identity.from_string(v.NODE_PUBLIC)).hex() == v.KEY48
    assert root.agree(Identity.from_string(v.NODE2_PUBLIC)).hex() == v.NODE2_KEY48


def test_signature_on_real_config_chunk_verifies_and_is_reproduced() -> None:
    root = Identity.from_string(v.ROOT_SECRET)
    chunk = bytes.fromhex(v.CONFIG_CHUNK)
    signed, signature = chunk[:653], chunk[-96:]
    assert chunk[653:656] == bytes.fromhex("010060")  # signature type 1, length 96
    assert root.public_only().verify(signed, signature)
    assert root.sign(signed) == signature  # Ed25519 is deterministic
    assert not root.verify(signed[:-1], signature)


def test_generate_makes_a_valid_identity() -> None:
    # A replayed random source whose search ends after one hash keeps this test fast; the loop is the real one.
    ident = Identity.generate(random.Random(11).randbytes)
    assert ident.to_string() == ("333c559250:0:794e6a8a24705723a5924c2b3fa7b860ad87051dcc120a6f55ab807b1ae73441"
                                 "c097f77573bb080921161bc65dddc40d4baa45f94987d4cca44713e5cd1dea04")
    assert ident.locally_validate()
    assert Identity.from_string(ident.to_string(include_private=True)) == ident


GOOD_PUB_HEX = v.KNOWN_GOOD_IDENTITY.split(":")[2]


@pytest.mark.parametrize("text", [
    "",
    "8e4df28b72:0",
    "8e4df28b72:1:" + GOOD_PUB_HEX,
    "8e4df28b72:00:" + GOOD_PUB_HEX,
    "0000000000:0:" + GOOD_PUB_HEX,  # reserved
    "ff4df28b72:0:" + GOOD_PUB_HEX,  # reserved
    "8e4df28b7:0:" + GOOD_PUB_HEX,
    "8e4df28b72:0:" + GOOD_PUB_HEX[:-2],
    "8e4df28b72:0:" + GOOD_PUB_HEX[:-1] + "g",
    "8e4df28b72:0:" + GOOD_PUB_HEX + ":" + "00" * 64,  # private key of another public key
    "8e4df28b72:0:" + GOOD_PUB_HEX + ":ab:cd",
])
def test_bad_strings_are_refused(text: str) -> None:
    with pytest.raises(ProtocolError):
        Identity.from_string(text)


def test_bad_binary_forms_are_refused(good: Identity) -> None:
    public = good.to_bytes()
    for bad in (public[:70],  # truncated
                public[:5] + b"\x01" + public[6:],  # type 1
                public[:70] + b"\x40",  # private length without a key
                public[:70] + b"\x20" + bytes(32),  # private length 32
                b"\xff" + public[1:],  # reserved address
                public + b"x"):
        with pytest.raises(ProtocolError):
            Identity.from_bytes(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=160))
def test_fuzz_binary_parser(data: bytes) -> None:
    try:
        Identity.from_bytes(data)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_string_parser(text: str) -> None:
    try:
        Identity.from_string(text)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(0, 134), bit=st.integers(0, 7))
def test_fuzz_bit_flips_of_a_valid_binary_identity(good: Identity, pos: int, bit: int) -> None:
    data = bytearray(good.to_bytes(include_private=True))
    data[pos] ^= 1 << bit
    try:
        Identity.from_bytes(bytes(data))
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789abcdef:", max_size=300))
def test_fuzz_hex_like_strings(text: str) -> None:
    try:
        Identity.from_string(text)
    except ProtocolError:
        pass
