"""Hypothesis fuzzing of the whole HTTP API against a real single-node cluster, in-process.

Random methods, paths (valid and junk ids), query strings, headers and bodies (malformed JSON, wrong types, huge
numbers, nested junk, oversized arrays, field-shaped junk). Whatever arrives: never a 5xx other than 503/504,
always a JSON answer, the server keeps answering, and afterwards the model is readable and its counters agree
with its contents.
"""
from __future__ import annotations

import asyncio
import json
import urllib.parse
from pathlib import Path
from typing import Any

import yarl
from hypothesis import HealthCheck, given, settings, strategies as st

from api_helpers import ApiEnv

from hactl.fsm.model import MEMBER_SETTABLE, NETWORK_SETTABLE
from hactl.fsm.rules import RULE_TYPES

EXAMPLES = 600

# ------------------------------------------------------------------------------------------- strategies

ADDRS = ["abcdef0123", "0000000001", "fedcba9876"]

hex_str = lambda n: st.text("0123456789abcdefABCDEF", min_size=n, max_size=n)  # noqa: E731
junk_segment = st.text(max_size=24).map(lambda s: urllib.parse.quote(s, safe=""))
addr_seg = st.one_of(st.sampled_from(ADDRS), hex_str(10), st.sampled_from(["0000000000", "ff00000000"]),
                     junk_segment)

big_ints = st.integers(min_value=-(10 ** 40), max_value=10 ** 40)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), big_ints,
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=16),
                    st.text(st.characters(exclude_categories=()), max_size=4),  # lone surrogates too
                    st.sampled_from(["true", "false", "0", "1", "zt", "10.0.0.1", "fd00::1", "10.0.0.0/24", ""]))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                        max_size=4),
                           max_leaves=12)
ips = st.one_of(st.ip_addresses().map(str), st.sampled_from(["10.0.0.300", "x", "", "10.0.0.1/24", "::ffff:1.2.3.4"]))
cidrs = st.one_of(st.tuples(st.ip_addresses(), st.integers(-1, 130)).map(lambda t: f"{t[0]}/{t[1]}"), scalars)
rules = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(RULE_TYPES) + ["NOPE", ""])},
    optional={k: st.one_of(big_ints, st.integers(0, 70000), st.text(max_size=20), cidrs)
              for k in ("not", "or", "etherType", "vlanId", "zt", "mac", "ip", "start", "end", "id", "value",
                        "mask", "flags", "probability", "qosBucket", "ipProtocol", "ipTos", "length", "icmpType")})
field_values: dict[str, Any] = {
    "routes": st.lists(st.fixed_dictionaries({"target": cidrs}, optional={"via": st.one_of(ips, scalars)}),
                       max_size=4),
    "ipAssignmentPools": st.lists(st.fixed_dictionaries({"ipRangeStart": ips, "ipRangeEnd": ips}), max_size=3),
    "rules": st.lists(rules, max_size=4),
    "capabilities": st.lists(st.one_of(st.fixed_dictionaries({"id": scalars}, optional={
        "default": scalars, "rules": st.lists(rules, max_size=2)}), scalars), max_size=3),
    "ipAssignments": st.lists(ips, max_size=4),
    "dns": st.fixed_dictionaries({}, optional={"domain": scalars, "servers": st.lists(ips, max_size=3)}),
}
shaped = st.fixed_dictionaries({}, optional={f: st.one_of(field_values.get(f, scalars), json_values)
                                             for f in (*NETWORK_SETTABLE, *MEMBER_SETTABLE)})
SPECIAL_BODIES = [
    b'{"mtu": ' + b"9" * 6000 + b"}",
    b"[" * 50_000 + b"]" * 50_000,
    b'{"x":' * 2000 + b"1" + b"}" * 2000,
    b'{"name": NaN}', b'{"mtu": -Infinity}', b"\x00\xff", b"", b"{", b"[]", b"1e999",
    json.dumps({"routes": [{"target": "10.0.0.0/8"}] * 16385}).encode(),
    json.dumps({"capabilities": list(range(16385))}).encode(),
    json.dumps({"rules": [{"type": "ACTION_ACCEPT"}] * 16385}).encode(),
    json.dumps({"tags": [[1, 2]] * 20000}).encode(),
    json.dumps({"ipAssignments": ["10.0.0.1"] * 16384}).encode(),
    json.dumps({"name": "n" * 5000}).encode(),
]
bodies = st.one_of(
    st.none(),
    shaped.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    shaped.map(lambda d: json.dumps(d).encode()[:-1]),  # truncated
    st.sampled_from(SPECIAL_BODIES),
)
extra_headers = st.fixed_dictionaries({}, optional={
    "Idempotency-Key": st.one_of(st.sampled_from(["k1", "k2", "k3"]), st.text(max_size=140).filter(
        lambda s: all(c == "\t" or (c >= " " and c != "\x7f") for c in s))),  # what clients will send
    "Content-Type": st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]),
})
methods = st.sampled_from(["GET", "GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])


def known_nwids(address: str) -> list[str]:
    return [f"{address}{n:06x}" for n in (1, 2, 0xABC)]


def cluster_strategies(address: str, token: str) -> dict[str, st.SearchStrategy[Any]]:
    """The strategies that name the cluster's controller address or its API token (random per cluster, so they
    are built once the cluster exists): requests, auth headers and queries."""
    nwids = known_nwids(address)
    nwid_seg = st.one_of(st.sampled_from(nwids), st.sampled_from(nwids).map(str.upper), hex_str(16),
                         st.just(f"{address}______"), st.just(f"{address}000000"), junk_segment)
    paths = st.one_of(
        st.sampled_from(["/status", "/controller", "/health", "/openapi.json", "/controller/network",
                         "/unstable/controller/network", f"/controller/network/{address}______", "/", ""]),
        nwid_seg.map(lambda n: f"/controller/network/{n}"),
        nwid_seg.map(lambda n: f"/controller/network/{n}/member"),
        nwid_seg.map(lambda n: f"/unstable/controller/network/{n}/member"),
        st.tuples(nwid_seg, addr_seg).map(lambda t: f"/controller/network/{t[0]}/member/{t[1]}"),
        st.lists(junk_segment, max_size=5).map(lambda s: "/" + "/".join(s)),
    )
    # Mostly a method the path has (so requests get past routing into validation and the state machine), and
    # sometimes anything at all.
    member_path = st.tuples(nwid_seg, addr_seg).map(lambda t: f"/controller/network/{t[0]}/member/{t[1]}")
    routed = st.one_of(
        st.tuples(st.sampled_from(["POST", "PUT", "DELETE", "GET"]), member_path),
        st.tuples(st.sampled_from(["POST", "PUT", "DELETE", "GET"]),
                  nwid_seg.map(lambda n: f"/controller/network/{n}")),
        st.tuples(st.sampled_from(["POST", "PUT"]), st.sampled_from(["/controller/network",
                                                                   f"/controller/network/{address}______"])),
        st.tuples(st.just("GET"), paths),
    )
    return {
        "request": st.one_of(routed, routed, routed, st.tuples(methods, paths)),
        "auth": st.one_of(
            st.just({"X-ZT1-Auth": token}), st.just({"X-ZT1-Auth": token}), st.just({"X-ZT1-Auth": token}),
            st.just({"Authorization": f"bEaReR {token}"}), st.just({}), st.just({"X-ZT1-Auth": "nope"})),
        "query": st.fixed_dictionaries({}, optional={
            "consistency": st.one_of(st.sampled_from(["local", "linearizable"]), st.text(max_size=10)),
            "auth": st.sampled_from([token, "bad"])}),
    }


# ----------------------------------------------------------------------------------------------- test

def test_fuzz_never_5xx_and_the_model_stays_readable(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    env = ApiEnv(tmp_path / "fuzz")
    loop.run_until_complete(env.__aenter__())
    try:
        assert env.address is not None
        # Known networks, so member requests reach the state machine rather than stopping at 404.
        for n in known_nwids(env.address)[:2]:
            loop.run_until_complete(env.ok("POST", f"/controller/network/{n}", {}))

        async def send(method: str, path: str, query: dict[str, str], headers: dict[str, str],
                       body: bytes | None) -> tuple[int, str, bytes]:
            assert env.session is not None and env.server is not None
            # An absolute, pre-encoded URL: the client must send the path as generated ("//x" included).
            url = yarl.URL.build(scheme="http", host="127.0.0.1", port=env.server.port, path=path,
                                 query_string=urllib.parse.urlencode(query), encoded=True)
            async with env.session.request(method, url, data=body, headers=headers) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), await resp.read()

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(**cluster_strategies(env.address, env.token), extra=extra_headers, body=bodies)
        def one(request: tuple[str, str], query: dict[str, str], auth: dict[str, str], extra: dict[str, str],
                body: bytes | None) -> None:
            method, path = request
            status, ctype, raw = loop.run_until_complete(
                asyncio.wait_for(send(method, "/" + path.lstrip("/") if not path.startswith("/") else path,
                                      query, {**auth, **extra}, body), 20))
            seen[status] = seen.get(status, 0) + 1
            assert status < 500 or status in (503, 504), (method, path, query, extra, body and body[:80], status, raw)
            assert ctype.startswith("application/json"), (method, path, status, ctype)
            if method != "HEAD":
                json.loads(raw)

        seen: dict[int, int] = {}
        one()
        # the fuzz reached validation and the state machine, not just routing and auth
        assert seen.get(200, 0) > 10 and seen.get(400, 0) > 10 and seen.get(404, 0) > 0, seen

        async def check_model() -> None:
            assert (await env.get("/controller")).status == 200
            networks = await env.ok("GET", "/controller/network")
            unstable = await env.ok("GET", "/unstable/controller/network")
            assert sorted(networks) == sorted(n["id"] for n in unstable["data"])
            assert unstable["meta"]["networkCount"] == len(networks)
            for n in unstable["data"]:
                net = await env.ok("GET", f"/controller/network/{n['id']}")
                assert {k: v for k, v in n.items() if k != "meta"} == net
                listing = await env.ok("GET", f"/controller/network/{n['id']}/member")
                members = await env.ok("GET", f"/unstable/controller/network/{n['id']}/member")
                assert sorted(listing) == [m["id"] for m in members["data"]]
                authorized = sum(m["authorized"] for m in members["data"])
                assert members["meta"] == {"totalCount": len(listing), "authorizedCount": authorized}
                assert n["meta"] == {"totalMemberCount": len(listing), "authorizedMemberCount": authorized}
                for a, rev in listing.items():
                    m = await env.ok("GET", f"/controller/network/{n['id']}/member/{a}")
                    assert m["revision"] == rev

        loop.run_until_complete(check_model())
    finally:
        loop.run_until_complete(env.__aexit__(None, None, None))
        loop.close()


# ------------------------------------------------------------------------------ raw bytes, below the client

header_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b""))
path_bytes = st.binary(max_size=30).map(lambda b: bytes(c for c in b if c > 0x20 and c != 0x7F))


def test_fuzz_raw_bytes_in_headers_and_paths(tmp_path: Path) -> None:
    """Bytes no HTTP client library would send (non-UTF-8 header values, raw path bytes): aiohttp either
    rejects the request line (its own plain-text 400) or our application answers in JSON, never with a 500."""
    loop = asyncio.new_event_loop()
    env = ApiEnv(tmp_path / "raw")
    loop.run_until_complete(env.__aenter__())
    try:
        assert env.address is not None
        nwid = known_nwids(env.address)[0]
        loop.run_until_complete(env.ok("POST", f"/controller/network/{nwid}", {}))

        async def send(raw: bytes) -> bytes:
            assert env.server is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
            try:
                writer.write(raw)
                await writer.drain()
                return await asyncio.wait_for(reader.read(), 10)
            finally:
                writer.close()

        @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(method=st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE"]),
               path=st.one_of(path_bytes.map(lambda p: f"/controller/network/{nwid}/member/".encode() + p),
                              path_bytes.map(lambda p: b"/controller/network/" + p), path_bytes.map(lambda p: b"/" + p)),
               auth=st.one_of(st.just(env.token.encode()), header_bytes),
               key=st.one_of(st.none(), header_bytes),
               body=st.sampled_from([b"", b"{}", b'{"name": "\xff\xfe"}', b'{"authorized": true}']))
        def one(method: bytes, path: bytes, auth: bytes, key: bytes | None, body: bytes) -> None:
            raw = (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-ZT1-Auth: " + auth +
                   (b"\r\nIdempotency-Key: " + key if key is not None else b"") +
                   b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            reply = loop.run_until_complete(send(raw))
            head, _, payload = reply.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            assert status < 500 or status in (503, 504), (raw, reply[:300])
            ctype = next((line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
                          if line.lower().startswith(b"content-type:")), b"")
            if not ctype.startswith(b"application/json"):
                assert status == 400 and ctype.startswith(b"text/plain"), reply[:300]  # aiohttp's parser refused it
            else:
                json.loads(payload)

        one()
        assert loop.run_until_complete(env.ok("GET", "/controller/network")) == [nwid]
    finally:
        loop.run_until_complete(env.__aexit__(None, None, None))
        loop.close()
