"""The controller role's pure decisions (hactl/server/zerotier.py): what a request's metadata says, when an answer
needs a Raft write, and the config revision that lets a node without a leader refuse to go backwards."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hactl.server.zerotier import Versions, config_revision, needs_write

# What a libzt 1.8.4 node sends (appendix C.1: exactly these keys).
LIBZT_META = (b"v=0000000000000007\nvend=0000000000000001\npv=000000000000000c\nmajv=0000000000000001\n"
              b"minv=0000000000000008\nrevv=0000000000000004\nmr=0000000000000400\nmc=0000000000000080\n"
              b"mcr=0000000000000040\nmt=0000000000000080\nf=0000000000000000\nrevr=0000000000000001\n")

NET = {"id": "8eb1af42a4000001", "private": True, "revision": 3, "v4AssignMode": {"zt": True},
       "ipAssignmentPools": [{"ipRangeStart": "10.1.0.10", "ipRangeEnd": "10.1.0.20"}],
       "routes": [{"target": "10.1.0.0/24", "via": None}]}
MEMBER = {"identity": "x", "authorized": True, "noAutoAssignIps": False, "ipAssignments": ["10.1.0.11"],
          "vMajor": 1, "vMinor": 8, "vRev": 4, "vProto": 12, "revision": 5}


def test_versions_from_a_real_request() -> None:
    v = Versions.of(LIBZT_META)
    assert (v.major, v.minor, v.rev, v.proto, v.rules_engine) == (1, 8, 4, 12, 1)
    assert Versions.of(b"") == Versions()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_versions_of_any_bytes_never_raise(meta: bytes) -> None:
    v = Versions.of(meta)
    assert all(-1 <= x <= 65535 for x in (v.major, v.minor, v.rev, v.proto))


def test_needs_write() -> None:
    v = Versions.of(LIBZT_META)
    assert not needs_write(NET, MEMBER, v)
    assert needs_write(NET, None, v)  # a new member is recorded
    assert needs_write(NET, {**MEMBER, "identity": ""}, v)
    assert needs_write(NET, {**MEMBER, "vRev": 3}, v)  # upgraded
    assert not needs_write(NET, {**MEMBER, "vRev": 3}, Versions())  # a request without versions keeps them
    assert needs_write(NET, {**MEMBER, "ipAssignments": []}, v)  # auto-assign at request time
    assert needs_write(NET, {**MEMBER, "ipAssignments": ["192.168.9.9"]}, v)  # not in any route
    assert not needs_write(NET, {**MEMBER, "ipAssignments": [], "noAutoAssignIps": True}, v)
    assert not needs_write({**NET, "v4AssignMode": {"zt": False}}, {**MEMBER, "ipAssignments": []}, v)
    unauth = {**MEMBER, "authorized": False, "ipAssignments": []}
    assert not needs_write(NET, unauth, v)  # refused, nothing to write
    assert needs_write({**NET, "private": False}, unauth, v)  # public: authorized on request


@given(st.lists(st.sampled_from(["network", "member"]), max_size=40))
def test_config_revision_grows_with_every_change(changes: list[str]) -> None:
    net, mem = {"revision": 1}, {"revision": 1}
    last = config_revision(net, mem)
    for c in changes:
        (net if c == "network" else mem)["revision"] += 1
        now = config_revision(net, mem)
        assert now > last
        last = now


def test_root_identity_is_created_once_private_and_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from hactl.server.zerotier import ZeroTierStartupError, load_or_create_root_identity
    zt = tmp_path / "zt"
    first = load_or_create_root_identity(zt)
    assert first.has_private and first.locally_validate()
    assert (zt / "identity.secret").stat().st_mode & 0o777 == 0o600
    assert (zt / "identity.public").read_text().strip() == str(first)
    assert load_or_create_root_identity(zt) == first  # kept for life
    (zt / "identity.secret").chmod(0o644)
    with pytest.raises(ZeroTierStartupError, match="readable by others"):
        load_or_create_root_identity(zt)
    (zt / "identity.secret").write_text("not an identity")
    (zt / "identity.secret").chmod(0o600)
    with pytest.raises(ZeroTierStartupError, match="not a ZeroTier identity"):
        load_or_create_root_identity(zt)


def test_root_endpoints_default_to_a_specific_bind_address() -> None:
    from hactl.config import ZeroTierConfig
    from hactl.server.zerotier import root_endpoints
    assert root_endpoints(ZeroTierConfig(bind="10.0.0.5:9993")) == ["10.0.0.5/9993"]
    assert root_endpoints(ZeroTierConfig(bind="0.0.0.0:9993")) == []
    assert root_endpoints(ZeroTierConfig(bind="")) == []
    assert root_endpoints(ZeroTierConfig(bind="0.0.0.0:9993", endpoints=["203.0.113.7/9993"])) == ["203.0.113.7/9993"]


def test_auto_endpoint_needs_a_majority_of_the_other_nodes_and_a_usable_address() -> None:
    from hactl.server.zerotier import auto_endpoint
    assert auto_endpoint(["203.0.113.7", "203.0.113.7"], 2, 9993) == ("203.0.113.7/9993", None)
    assert auto_endpoint(["203.0.113.7", "198.51.100.1"], 2, 9993) == (None, None)  # split: no majority of 2
    assert auto_endpoint(["203.0.113.7", "203.0.113.7", "198.51.100.1"], 4, 9993) == (None, None)  # 2 of 4
    assert auto_endpoint(["203.0.113.7"] * 3 + ["198.51.100.1"], 4, 9994) == ("203.0.113.7/9994", None)
    assert auto_endpoint(["2001:db8::7"] * 2, 2, 9993) == ("2001:db8::7/9993", None)
    assert auto_endpoint([], 2, 9993) == (None, None)
    endpoint, problem = auto_endpoint(["127.0.0.1", "127.0.0.1"], 2, 9993)
    assert endpoint is None and problem is not None and "127.0.0.1" in problem and "control plane" in problem


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["203.0.113.7", "198.51.100.1", "192.0.2.9"]), max_size=6),
       st.integers(min_value=1, max_value=6))
def test_auto_endpoint_is_only_ever_what_a_majority_reported(votes: list[str], n_others: int) -> None:
    from collections import Counter

    from hactl.server.zerotier import auto_endpoint
    endpoint, _ = auto_endpoint(votes, n_others, 9993)
    if endpoint is not None:
        assert Counter(votes)[endpoint.rpartition("/")[0]] > n_others // 2
