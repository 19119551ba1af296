"""Certificates of membership against the COM inside the config a real libzt 1.8.4 node accepted (appendix C):
it parses, its signature verifies with the controller R, and building + signing one from (nwid, member identity,
timestamp, ctmd) reproduces it byte for byte (C25519 signatures are deterministic). Revocations: layout written
out from Revocation.hpp, signature over the 0x7f-padded form. Both parsers are fuzzed."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from hactl.zt.com import INFORMATIONAL, CertificateOfMembership, Qualifier, identity_hash_words
from hactl.zt.dictionary import Dictionary
from hactl.zt.errors import ProtocolError
from hactl.zt.identity import Identity
from hactl.zt.revocation import SIZE, Revocation, network_credentials_payload
from tests.zt import vectors as v

R = Identity.from_string(v.ROOT_SECRET)
NODE = Identity.from_string(v.NODE2_PUBLIC)
NWID = 0x8EB1AF42A4000001
REAL_COM = Dictionary.parse(bytes.fromhex(v.CONFIG_CHUNK)[10:10 + 626]).get("C") or b""
TS = 0x1A230C9042A


def test_real_com_parses_and_verifies() -> None:
    com = CertificateOfMembership.from_bytes(REAL_COM)
    assert (com.timestamp, com.network_id, com.issued_to, com.signed_by) == (TS, NWID, NODE.address, R.address)
    assert com.qualifiers[0].max_delta == 1_800_000
    assert [q.value for q in com.qualifiers[3:]] == identity_hash_words(NODE)
    assert com.qualifiers[3].value == 0x6AAB0F0FFEA3CFAB
    assert com.verify(R.public_only())
    assert com.to_bytes() == REAL_COM


def test_build_and_sign_reproduces_real_com() -> None:
    assert CertificateOfMembership.build(NWID, NODE, TS, 1_800_000).sign(R).to_bytes() == REAL_COM


def test_verify_rejects_tampering_and_foreign_signers() -> None:
    com = CertificateOfMembership.from_bytes(REAL_COM)
    bad = dataclasses.replace(com, qualifiers=(Qualifier(0, TS + 1, 1_800_000),) + com.qualifiers[1:])
    assert not bad.verify(R)
    other = Identity(0x1122334455, NODE.public_key)
    assert not com.verify(other)
    # Signed by R but for a network R does not control.
    foreign = CertificateOfMembership.build(0x1122334455000001, NODE, TS, 1000).sign(R)
    assert not foreign.verify(R)


def test_agrees_with() -> None:
    a_id = NODE
    b_id = R.public_only()
    a = CertificateOfMembership.build(NWID, a_id, TS, 1_800_000).sign(R)
    b = CertificateOfMembership.build(NWID, b_id, TS + 1_800_000, 1_800_000).sign(R)
    assert a.agrees_with(b, b_id) and b.agrees_with(a, a_id)
    late = CertificateOfMembership.build(NWID, b_id, TS + 1_800_001, 1_800_000).sign(R)
    assert not a.agrees_with(late, b_id)
    other_net = CertificateOfMembership.build(NWID + 1, b_id, TS, 1_800_000).sign(R)
    assert not a.agrees_with(other_net, b_id)
    assert not a.agrees_with(b, a_id)  # b's identity hash is not a_id's: a COM cannot be borrowed
    short = CertificateOfMembership(b.qualifiers[:3], b.signed_by, b.signature)
    assert not a.agrees_with(short, b_id)  # missing qualifiers 3..6


def test_com_parse_errors() -> None:
    for bad in (b"", b"\x02\x00\x00" + b"\x00" * 5, b"\x01\x00\x09" + b"\x00" * 300, REAL_COM[:-1],
                b"\x01\x00\x02" + bytes.fromhex("00" * 7 + "01" + "00" * 16 + "00" * 24) + b"\x00" * 5):
        with pytest.raises(ProtocolError):
            CertificateOfMembership.from_bytes(bad)
    unsigned = CertificateOfMembership((Qualifier(0, 1, INFORMATIONAL),))
    assert CertificateOfMembership.from_bytes(unsigned.to_bytes()) == unsigned


def test_revocation_layout_and_signature() -> None:
    rev = Revocation(id=0x01020304, network_id=NWID, target=NODE.address, threshold=TS).sign(R)
    wire = rev.to_bytes()
    assert len(wire) == SIZE
    head = ("00000000" "01020304" "8eb1af42a4000001" "00000000" "00000000" "000001a230c9042a" "0000000000000001"
            "4efbf013a1" "8eb1af42a4" "01")
    assert wire.hex() == head + "01" "0060" + rev.signature.hex() + "0000"
    signed = bytes.fromhex("7f" * 8 + head + "0000" + "7f" * 8)
    assert rev.signed_bytes() == signed and R.verify(signed, rev.signature)
    assert Revocation.from_bytes(wire) == rev and rev.verify(R.public_only())
    assert not dataclasses.replace(rev, threshold=TS + 1).verify(R)
    payload = network_credentials_payload([rev])
    assert payload == b"\x00" + b"\x00\x00" * 2 + b"\x00\x01" + wire + b"\x00\x00"


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_fuzz_parsers(data: bytes) -> None:
    for parse in (CertificateOfMembership.from_bytes, Revocation.from_bytes):
        try:
            parse(data)
        except ProtocolError:
            pass


@settings(max_examples=100)
@given(st.integers(0, len(REAL_COM) - 1), st.integers(1, 255))
def test_fuzz_mutated_real_com(pos: int, xor: int) -> None:
    data = bytearray(REAL_COM)
    data[pos] ^= xor
    try:
        com = CertificateOfMembership.from_bytes(bytes(data))
    except ProtocolError:
        return
    assert not com.verify(R)
