"""zerotier.endpoints: [auto] with real processes on separate hosts (one network namespace each, on one bridge):
a node bound to 0.0.0.0 learns its address from what the other nodes see (their control-plane connections with
it), and the cluster's planet lists it there; nothing outside the namespaces is asked or reached.

    bridge namespace   10.203.N.1  (this test's HTTP client thread)
    ctrl1 namespace    10.203.N.2  zerotier.bind 10.203.N.2:9993
    ctrl2 namespace    10.203.N.3  zerotier.bind 10.203.N.3:9993
    ctrl3 namespace    10.203.N.4  zerotier.bind 0.0.0.0:9993, endpoints [auto]
Needs root (network namespaces).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from hactl.dev.cluster import node_ids
from hactl.zt.world import World
from tests.proc_cluster import ProcCluster, poll
from tests.zt.libzt.cluster_ns import InNetNS
from tests.zt.libzt.netns import NetNS


def test_a_node_with_endpoints_auto_is_listed_where_the_others_see_it(tmp_path: Path) -> None:
    ids = node_ids(3)
    cluster: ProcCluster | None = None
    client: InNetNS | None = None
    with NetNS(4) as ns:
        try:
            hosts = [ns.separate_host(i) for i in (1, 2, 3)]
            addr = {nid: ns.addrs[1 + i] for i, nid in enumerate(ids)}
            zt = {nid: {"zerotier": {"bind": f"{addr[nid]}:9993"}} for nid in ids}
            zt["ctrl3"] = {"zerotier": {"bind": "0.0.0.0:9993", "endpoints": ["auto"]}}
            client = InNetNS(ns.name)
            cluster = ProcCluster(tmp_path / "cluster", 3, node_config=zt, call=client,
                                  node_prefix={nid: ["ip", "netns", "exec", hosts[i]] for i, nid in enumerate(ids)},
                                  api_host=addr)
            # Each node's control plane and API on its own host's address (ports as dev init chose them).
            ctrl = {nid: f"{addr[nid]}:{cluster.specs[nid].ctrl_addr.rsplit(':', 1)[1]}" for nid in ids}
            for nid in ids:
                path = cluster.specs[nid].config
                doc = yaml.safe_load(path.read_text())
                doc["cluster"]["initial_cluster"] = ctrl
                doc["control"].update(listen=ctrl[nid], advertise=ctrl[nid])
                doc["api"]["listen"] = f"{addr[nid]}:{cluster.port(nid)}"
                path.write_text(yaml.safe_dump(doc))
            cluster.start_all()
            cluster.wait_ready(timeout=60)

            def planet() -> World | None:
                code, body, _ = cluster.request("ctrl1", "GET", "/planet", auth=False, timeout=5)
                if code != 200:
                    return None
                w = World.decode(bytes(body))
                return w if len(w.roots) == 3 else None
            world = poll(planet, 60, "a planet listing the three nodes",
                         context=lambda: cluster.log("ctrl3")[-3000:])
            st = (cluster.status("ctrl3") or {}).get("zerotier") or {}
            assert st["root"]["endpoints"] == [f"{addr['ctrl3']}/9993"], st
            listed = {f"{r.identity.address:010x}": [str(e) for e in r.stable_endpoints] for r in world.roots}
            assert listed[st["root"]["address"]] == [f"{addr['ctrl3']}/9993"], listed
            assert "endpoints auto: a majority of the other nodes see this one at" in cluster.log("ctrl3")
        finally:
            if cluster is not None:
                cluster.close()
            if client is not None:
                client.close()
