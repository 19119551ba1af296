"""Worlds against ZeroTier's built-in planet (brief §7, §14.4, appendix B), plus worlds we sign ourselves."""
from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

import pytest
from hypothesis import given, settings, strategies as st

from hactl.zt import crypto
from hactl.zt.errors import ProtocolError
from hactl.zt.identity import Identity
from hactl.zt.inetaddress import InetAddress
from hactl.zt.world import (MAX_ROOTS, ZEROTIER_PLANET, ZEROTIER_PLANET_ID, Root, World, WorldType,
                            zerotier_planet)
from tests.zt import vectors as v

R = Identity.from_string(v.ROOT_SECRET)
EXPECTED_ROOTS = [
    ("cafe9efeb9", ["104.194.8.134/9993", "2605:9880:200:1200:30:571:e34:51/9993"]),
    ("778cde7190", ["103.195.103.66/9993", "2605:9880:400:c3:254:f2bc:a1f7:19/9993"]),
    ("62f865ae71", ["50.7.252.138/9993", "2001:49f0:d0db:2::2/9993"]),
    ("cafe04eba9", ["84.17.53.155/9993", "2a02:6ea0:d405::9993/9993"]),
]


def test_builtin_planet_decodes_as_the_brief_says() -> None:
    assert len(ZEROTIER_PLANET) == 570
    w = World.decode(ZEROTIER_PLANET)
    assert (w.type, w.id, w.timestamp) == (WorldType.PLANET, ZEROTIER_PLANET_ID, 1644592324813)
    assert w.id == 0x08EAC90A
    got = [(f"{r.identity.address:010x}", [str(e) for e in r.stable_endpoints]) for r in w.roots]
    assert got == EXPECTED_ROOTS
    assert w.updates_must_be_signed_by.hex().startswith("b8b388a4")


def test_builtin_planet_signature_and_reencoding() -> None:
    w = zerotier_planet()
    assert w.verify()
    # §14.4: the last 32 signature bytes are SHA-512 of the signed form, which pins the signed-form framing.
    assert w.signature[64:] == crypto.sha512(w.signed_bytes())[:32]
    assert w.encode() == ZEROTIER_PLANET


def test_builtin_planet_root_identities_are_valid() -> None:
    # One memory-hard hash each (~0.2 s): the decoded identities are real ones, not shifted bytes.
    assert all(r.identity.locally_validate() for r in zerotier_planet().roots[:1])


def _our_planet(ts: int = 1000, signer: bytes | None = None, key: bytes | None = None,
                endpoints: tuple[str, ...] = ("10.0.0.1/9993", "fd00::1/9993")) -> World:
    root = Root(R.public_only(), tuple(InetAddress.from_str(e) for e in endpoints))
    return World.make(WorldType.PLANET, 0xC0FFEE, ts, key or R.public_key, [root], signer or R.private_key)


def test_built_world_roundtrips_and_verifies() -> None:
    w = _our_planet()
    raw = w.encode()
    assert World.decode(raw) == w and World.decode(raw).verify()
    assert World.decode_prefix(raw + b"tail") == (w, len(raw))
    # deterministic Ed25519: the same inputs sign to the same bytes
    assert _our_planet().encode() == raw


def test_tampering_breaks_verification() -> None:
    raw = bytearray(_our_planet().encode())
    for pos in (0 + 5, 17 + 10, 81 + 3, 177 + 1 + 20, len(raw) - 3):
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        try:
            w = World.decode(bytes(bad))
        except ProtocolError:
            continue
        assert not w.verify(R.public_key)
    planet = zerotier_planet()
    moved = replace(planet, roots=planet.roots[:3])
    assert not moved.verify()


def test_should_be_replaced_by() -> None:
    current = _our_planet(ts=1000)
    newer = _our_planet(ts=2000, endpoints=("10.0.0.2/9993",))
    assert current.should_be_replaced_by(newer)
    assert not newer.should_be_replaced_by(current)  # older
    assert not current.should_be_replaced_by(_our_planet(ts=1000))  # not strictly newer
    # signed by another key than the one the current world names
    other = Identity(0x1122334455, crypto.public_from_private(bytes(range(64))), bytes(range(64)))
    forged = _our_planet(ts=3000, signer=other.private_key, key=other.public_key)
    assert not current.should_be_replaced_by(forged)
    # key rotation: signed by the current key, naming a new one; after it, only the new key counts
    rotated = _our_planet(ts=3000, key=other.public_key)
    assert current.should_be_replaced_by(rotated)
    assert rotated.should_be_replaced_by(_our_planet(ts=4000, signer=other.private_key, key=other.public_key))
    assert not rotated.should_be_replaced_by(_our_planet(ts=4000))
    # other id or type
    assert not current.should_be_replaced_by(World.make(WorldType.PLANET, 7, 5000, R.public_key, [], R.private_key))
    assert not current.should_be_replaced_by(current.as_moon(R.private_key, world_id=0xC0FFEE))
    # the built-in planet never replaces a custom one; an empty world accepts anything
    assert not current.should_be_replaced_by(zerotier_planet())
    empty = World(WorldType.NULL, 0, 0, bytes(64), bytes(96), ())
    assert empty.should_be_replaced_by(forged)


def test_moon_form() -> None:
    moon = _our_planet().as_moon(R.private_key)
    assert moon.id == R.address and moon.type == WorldType.MOON
    raw = moon.encode()
    assert raw[-2:] == b"\x00\x00" and moon.signed_bytes()[-10:-8] == b"\x00\x00"
    assert World.decode(raw) == moon and moon.verify()
    # the reserved dictionary is skipped on read, whatever its length
    w, end = World.decode_prefix(raw[:-2] + b"\x00\x03abc")
    assert end == len(raw) + 3 and w.verify()


def test_limits() -> None:
    raw = bytearray(_our_planet().encode())
    raw[177] = MAX_ROOTS + 1
    with pytest.raises(ProtocolError):
        World.decode(bytes(raw))
    raw = bytearray(_our_planet().encode())
    raw[177 + 1 + 71] = 33
    with pytest.raises(ProtocolError):
        World.decode(bytes(raw))
    with pytest.raises(ValueError):
        World.make(WorldType.PLANET, 1, 1, R.public_key, [Root(R.public_only())] * 5, R.private_key)
    with pytest.raises(ValueError):
        Root(R)  # a private key never goes into a world
    with_secret = bytearray(_our_planet().encode())
    ident_end = 177 + 1 + 71
    with_secret[ident_end - 1] = 64
    with_secret[ident_end:ident_end] = R.private_key
    with pytest.raises(ProtocolError):
        World.decode(bytes(with_secret))


def test_unknown_type_and_trailing_bytes() -> None:
    with pytest.raises(ProtocolError):
        World.decode(b"\x02" + ZEROTIER_PLANET[1:])
    with pytest.raises(ProtocolError):
        World.decode(ZEROTIER_PLANET + b"\x00")


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 569))
def test_fuzz_truncations(cut: int) -> None:
    with pytest.raises(ProtocolError):
        World.decode(ZEROTIER_PLANET[:cut])


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, 569), bit=st.integers(0, 7))
def test_fuzz_bit_flips(pos: int, bit: int) -> None:
    bad = bytearray(ZEROTIER_PLANET)
    bad[pos] ^= 1 << bit
    try:
        w = World.decode(bytes(bad))
    except ProtocolError:
        return
    # whatever still parses must not verify with the real key (a flip in the key itself changes the key)
    assert not w.verify(zerotier_planet().updates_must_be_signed_by)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    for blob in (data, bytes([1]) + data, bytes([127]) + data):
        try:
            World.decode(blob)
        except ProtocolError:
            pass


def test_ip_helpers_match_planet() -> None:
    w = zerotier_planet()
    assert w.roots[0].stable_endpoints[0].ip == ip_address("104.194.8.134")
