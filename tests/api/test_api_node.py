"""What the API reports and does because of the real controller behind it: /status and /health from its raft node,
tokens checked against the hash in ctrl.db, and honest answers once its raft node has failed."""
from __future__ import annotations

from api_helpers import VERSION, ApiEnv, initialised

from hactl.raft.storage import StorageError


async def test_status_reports_the_node(env: ApiEnv) -> None:
    c = env.controller
    assert c is not None and c.node is not None
    before = (await env.ok("GET", "/status"))["cluster"]
    await env.new_network()
    st = await env.ok("GET", "/status")
    assert st["address"] == initialised(c)["address"] and len(st["address"]) == 10
    assert st["online"] is True and st["version"] == VERSION
    cl = st["cluster"]
    assert cl["id"] == cl["leader"] == c.node_id == "n1" and cl["role"] == "leader"
    assert cl["term"] == c.node.term >= 1
    # the write was acknowledged once applied here: it is committed and applied, and moved both
    assert cl["commit"] == cl["applied"] == c.node.commit_index > before["commit"]
    assert cl["voters"] == ["n1"] and cl["learners"] == [] and cl["alarms"] == []


async def test_health_is_200_on_the_initialised_leader(env: ApiEnv) -> None:
    r = await env.request("GET", "/health", auth=False)
    assert r.status == 200, r
    h = r.json
    assert h["healthy"] is True and h["leader"] == "n1" and h["role"] == "leader" and h["alarms"] == []
    assert h["applied"] >= h["commit"] >= 1


async def test_health_is_503_once_the_quorum_is_lost(quorum_lost_env: ApiEnv) -> None:
    r = await quorum_lost_env.request("GET", "/health", auth=False)
    assert r.status == 503, r
    assert r.json["healthy"] is False and r.json["leader"] is None and r.json["role"] != "leader"


async def test_a_write_with_a_wrong_token_is_401_and_applies_nothing(env: ApiEnv) -> None:
    c = env.controller
    assert c is not None
    stored = initialised(c)["token_hash"]
    for auth in ({"X-ZT1-Auth": env.token[:-1]}, {"Authorization": f"Bearer {stored}"}, {}):
        for method, path in [("POST", env.create_path), ("POST", f"/controller/network/{env.nwid(1)}"),
                             ("DELETE", f"/controller/network/{env.nwid(1)}")]:
            r = await env.request(method, path, body={"name": "x"} if method == "POST" else None, auth=False,
                                  headers=auth)
            assert r.status == 401 and r.json == {}, (auth, method, path, r)
    assert c.model is not None and c.model.machine.network_count() == 0
    await env.ok("POST", f"/controller/network/{env.nwid(1)}", {})  # the right token still writes


async def test_after_the_raft_node_failed_writes_and_reads_are_503_not_500(env: ApiEnv) -> None:
    c = env.controller
    assert c is not None and c.node is not None and c.storage is not None
    nwid = (await env.new_network())["id"]
    # raft.db becomes unusable under the running node, as on a failed disk: the next save raises StorageError
    c.storage.close()
    key = {"Idempotency-Key": "during-the-failure"}
    r = await env.post(env.create_path, {"name": "lost"}, headers=key)
    # This write was appended (and, in a cluster, possibly sent to followers) before its save failed: its outcome
    # is unknown, so 504, never 503 (a client without a key would retry and could create it twice).
    assert r.status == 504 and r.json["error"] == "OUTCOME_UNKNOWN", r
    cause = await c.node.wait_failed()  # the node fail-stopped (in production the process exits 1 and restarts)
    assert isinstance(cause, StorageError), cause
    # From now on nothing can be appended: "retry later", with Retry-After, for writes (the same key included)
    # and reads alike.
    for method, path, kw in [("POST", env.create_path, {"body": {"name": "lost"}, "headers": key}),
                             ("POST", f"/controller/network/{nwid}", {"body": {"name": "x"}}),
                             ("DELETE", f"/controller/network/{nwid}", {}),
                             ("GET", f"/controller/network/{nwid}", {}),
                             ("GET", "/controller/network", {"params": {"consistency": "local"}}),
                             ("GET", "/unstable/controller/network", {})]:
        r = await env.request(method, path, **kw)
        assert r.status == 503 and r.json["error"] == "CLUSTER_NO_LEADER", (method, path, r)
        assert int(r.headers["Retry-After"]) >= 1
    r = await env.request("GET", "/health", auth=False)
    assert r.status == 503 and r.json["healthy"] is False, r
    st = await env.ok("GET", "/status")
    assert st["online"] is False
    # A stopped node points nobody at itself: no leader, role "stopped" (until the process exits).
    assert st["cluster"]["role"] == "stopped" and st["cluster"]["leader"] is None, st["cluster"]
