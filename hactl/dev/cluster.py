"""`hactl dev init` and `hactl dev up`: a local (or compose) cluster's PKI and configs, and a foreground supervisor.

`dev init` is the one place cluster configs are generated: `dev up` calls it for loopback nodes and the compose
file's one-shot service calls it with `--compose` (service names as hosts), so both get the same keys.

Local layout under --data:  pki/ca/ (CA), pki/<id>/ (node cert, key, ca.crt), config/<id>.yaml, <id>/ (data dir),
api-token, dev-cluster.json (written by dev up). One user runs every node there, so one tree is fine.

Compose layout (`--compose`): no directory is shared between containers. The CA (ca.crt, ca.key, and the master copy
of api-token) stays in --ca-dir, a volume only the init service mounts, because whoever holds ca.key can mint a
certificate for any identity. Each node gets a self-contained bundle in --node-dirs/<id>/, a volume only that node
mounts (read-only):

    <id>/config.yaml    paths relative to the bundle (pki/..., api-token); data_dir /data (the node's data volume)
    <id>/pki/ca.crt     the CA certificate (never the CA key)
    <id>/pki/node.crt   this node's certificate, and
    <id>/pki/node.key   its key (0600)
    <id>/api-token      the API token (0600), identical in every bundle

Without --ca-dir/--node-dirs they default to <data>/ca and <data>/nodes. Re-running keeps the CA, the keys, the
token and the configs; it refuses a bundle whose certificate the CA in --ca-dir did not issue.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hactl._fs import atomic_write
from hactl.config import PLANET_OWN
from hactl.server.controller import EXIT_RESTART
from hactl.server.tokens import TokenError, read_or_create_token
from hactl.transport.pki import CA_CERT, CA_KEY, NODE_CERT, NODE_KEY, PkiError, init_ca, issue, load_identity

log = logging.getLogger("hactl.dev")

TRUST_DOMAIN = "hactl.local"
DEFAULT_API_PORT = 9993
DEFAULT_CONTROL_PORT = 6262
DEFAULT_ZT_PORT = 9993           # UDP; a compose node's endpoint (each container has its own address)
TOKEN_FILE = "api-token"
BUNDLE_CONFIG = "config.yaml"    # a compose node's config, at the top of its bundle
CONTAINER_DATA_DIR = "/data"     # where the compose file mounts each node's data volume


class DevInitError(Exception):
    """`dev init` cannot proceed; the message says what to do about it."""


@dataclass
class NodeSpec:
    id: str
    config: Path
    data_dir: Path
    api_url: str
    ctrl_addr: str
    agent_socket: Path
    zt_endpoint: str = ""  # "ADDR/PORT" (ZeroTier's notation) of the node's UDP endpoint; "" if it has none


def node_ids(n: int) -> list[str]:
    return [f"ctrl{i + 1}" for i in range(n)]


def ports(i: int, base_port: int | None) -> tuple[int, int]:
    """(api, control) ports of node i: 9993+i and 6262+i by default; with --base-port N: N+2i and N+2i+1."""
    if base_port is None:
        return DEFAULT_API_PORT + i, DEFAULT_CONTROL_PORT + i
    return base_port + 2 * i, base_port + 2 * i + 1


def init_cluster(data: Path, nodes: int, *, base_port: int | None = None, compose: bool = False,
                 log_level: str = "info", ca_dir: Path | None = None,
                 node_dirs: Path | None = None, zt_host: str | None = None,
                 zt_planet: str | None = None, zt_hosts: list[str] | None = None) -> list[NodeSpec]:
    """Create (or reuse) the CA, node certificates, token and per-node configs. Idempotent: an existing
    cluster's files are kept, so running again resumes the same cluster.

    compose=True writes the compose layout (see the module docstring): the CA in ``ca_dir`` (default
    ``data/ca``), one bundle per node in ``node_dirs/<id>`` (default ``data/nodes``)."""
    if compose:
        return init_compose(ca_dir if ca_dir is not None else Path(data) / "ca",
                            node_dirs if node_dirs is not None else Path(data) / "nodes", nodes, log_level=log_level)
    if ca_dir is not None or node_dirs is not None:
        raise DevInitError("--ca-dir and --node-dirs only apply with --compose")
    if zt_host and zt_hosts:
        raise DevInitError("give --zt-host or --zt-hosts, not both")
    if zt_hosts is not None and len(zt_hosts) != nodes:
        raise DevInitError(f"--zt-hosts lists {len(zt_hosts)} addresses for {nodes} nodes (one each)")
    hosts = zt_hosts or ([zt_host] * nodes if zt_host else [])
    if zt_planet and not hosts:
        raise DevInitError("--zt-planet needs --zt-host or --zt-hosts (the addresses the ZeroTier endpoints bind)")
    for h in dict.fromkeys(hosts):
        _check_zt_host(h)
    if zt_planet:
        from hactl.server.zerotier import ZeroTierStartupError, load_planet
        try:
            load_planet(zt_planet)
        except ZeroTierStartupError as e:
            raise DevInitError(f"--zt-planet: {e}") from None
    data = data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o700)
    ca_dir = data / "pki" / "ca"
    if not (ca_dir / "ca.crt").exists():
        init_ca(ca_dir, TRUST_DOMAIN)
    token_file = data / "api-token"
    read_or_create_token(str(token_file))
    ids = node_ids(nodes)
    addr = {nid: f"127.0.0.1:{ports(i, base_port)[1]}" for i, nid in enumerate(ids)}
    specs = []
    for i, nid in enumerate(ids):
        pki_dir = data / "pki" / nid
        if not (pki_dir / "node.crt").exists():
            issue(ca_dir, pki_dir, kind="controller", node_id=nid, trust_domain=TRUST_DOMAIN)
        api_port, ctrl_port = ports(i, base_port)
        cfg_path = data / "config" / f"{nid}.yaml"
        if not cfg_path.exists():
            cfg_path.parent.mkdir(parents=True, exist_ok=True)
            cfg_path.write_text(render_config(
                nid, data_dir=f"../{nid}", initial_cluster=addr,
                control_listen=f"127.0.0.1:{ctrl_port}", control_advertise=addr[nid],
                api_listen=f"127.0.0.1:{api_port}", token_file="../api-token",
                pki_dir=f"../pki/{nid}", log_level=log_level), encoding="utf-8")
        # The ZeroTier endpoint follows this run's flags (the rest of the file is kept as the user left it): UDP
        # on the node's API port number, on its --zt-hosts address (or --zt-host); none without them. The
        # controller's planet: --zt-planet's file, else the cluster's own.
        _set_zerotier(cfg_path, f"{hosts[i]}:{api_port}" if hosts else "",
                      str(Path(zt_planet).resolve()) if zt_planet else PLANET_OWN)
        from hactl.config import load
        cfg = load(cfg_path)
        host, _, port = cfg.api.listen.rpartition(":")
        zt = cfg.zerotier.bind.rpartition(":")
        specs.append(NodeSpec(nid, cfg_path, Path(cfg.data_dir), f"http://{host}:{port}",
                              cfg.control.advertise, Path(cfg.agent_socket),
                              f"{zt[0]}/{zt[2]}" if cfg.zerotier.bind else ""))
    return specs


def _check_zt_host(host: str) -> None:
    import ipaddress
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise DevInitError(f"--zt-host(s) {host!r} is not an IP address") from None
    if ip.is_loopback or ip.is_unspecified:
        raise DevInitError(f"--zt-host(s) {host}: ZeroTier nodes never use loopback paths and must be told one "
                           "address to reach; give a LAN or private address of this machine (e.g. a dummy "
                           "interface's 10.x address)")


def _set_zerotier(cfg_path: Path, bind: str, planet: str) -> None:
    doc = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    want = {"bind": bind, "planet": planet}
    if doc.get("zerotier") != want:
        doc["zerotier"] = want
        text = cfg_path.read_text(encoding="utf-8")
        header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
        atomic_write(cfg_path, header + yaml.safe_dump(doc, sort_keys=False), 0o644, overwrite=True)


def _private_dir(d: Path) -> None:
    """``d`` exists, is a directory and is 0700 (its files are for one user: the init's, which is the node's)."""
    d.mkdir(parents=True, exist_ok=True)
    if not d.is_dir():
        raise DevInitError(f"{d} is not a directory")
    if d.stat().st_mode & 0o777 != 0o700:
        os.chmod(d, 0o700)


def _tighten(path: Path, mode: int) -> None:
    if path.stat().st_mode & 0o777 != mode:
        os.chmod(path, mode)


def _write_if_changed(path: Path, data: bytes, mode: int) -> None:
    """``path`` holds exactly ``data`` with exactly ``mode``; untouched (same inode, same mtime) if it already does."""
    try:
        if path.read_bytes() == data:
            _tighten(path, mode)
            return
    except FileNotFoundError:
        pass
    atomic_write(path, data, mode, overwrite=True)


def _master_token(ca_dir: Path, bundle_tokens: list[Path]) -> bytes:
    """The API token's master copy in the CA directory. Created once; if the CA volume was recreated while the
    bundles survived, their (single) token is adopted, since the cluster's ctrl.db holds that token's hash."""
    master = ca_dir / TOKEN_FILE
    if not master.exists():
        seen = {p.read_text(encoding="utf-8").strip() for p in bundle_tokens if p.exists()} - {""}
        if len(seen) > 1:
            raise DevInitError(f"the node bundles hold {len(seen)} different API tokens and {master} is missing: "
                               "copy the right one to it, then run init again")
        if seen:
            try:
                atomic_write(master, seen.pop() + "\n", 0o600, overwrite=False)
            except FileExistsError:
                pass
    read_or_create_token(str(master))
    _tighten(master, 0o600)
    return master.read_bytes()


def _check_bundle_identity(pki_dir: Path, ca_dir: Path, nid: str) -> None:
    """An existing bundle must hold this node's identity, issued by this CA (else the CA volume was replaced)."""
    try:
        ident = load_identity(pki_dir / NODE_CERT, pki_dir / NODE_KEY, ca_dir / CA_CERT)
    except PkiError as e:
        raise DevInitError(f"{e}. Restore the CA that issued this bundle to {ca_dir}, or delete the node "
                           "bundles to start a new cluster") from None
    if (ident.kind, ident.node_id, ident.trust_domain) != ("controller", nid, TRUST_DOMAIN):
        raise DevInitError(f"{pki_dir / NODE_CERT} is the certificate of {ident.kind}/{ident.node_id} "
                           f"({ident.trust_domain}), not of controller/{nid}")


def init_compose(ca_dir: Path, node_dirs: Path, nodes: int, *, log_level: str = "info") -> list[NodeSpec]:
    """The compose layout: the CA in ``ca_dir`` only, one self-contained bundle per node in ``node_dirs/<id>``.
    Idempotent: existing files are kept byte for byte (modes are tightened to 0600/0700 if they were looser)."""
    ca_dir, node_dirs = Path(ca_dir).resolve(), Path(node_dirs).resolve()
    if ca_dir.is_relative_to(node_dirs) or node_dirs.is_relative_to(ca_dir):
        raise DevInitError(f"--ca-dir {ca_dir} and --node-dirs {node_dirs} must not contain each other: "
                           "the CA key must not end up in a node's bundle")
    ids = node_ids(nodes)
    _private_dir(ca_dir)
    if not (ca_dir / CA_CERT).exists():
        issued = [str(node_dirs / nid) for nid in ids if (node_dirs / nid / "pki" / NODE_CERT).exists()]
        if issued:  # a new CA would not have issued them: refuse before creating one
            raise DevInitError(f"no CA in {ca_dir}, but node bundles exist ({', '.join(issued)}): restore the CA "
                               "(ca.crt, ca.key) that issued them, or delete the bundles to start a new cluster")
        init_ca(ca_dir, TRUST_DOMAIN)
    if (ca_dir / CA_KEY).exists():  # it may have been taken offline: only issuing a new bundle needs it
        _tighten(ca_dir / CA_KEY, 0o600)
    ca_pem = (ca_dir / CA_CERT).read_bytes()
    token = _master_token(ca_dir, [node_dirs / nid / TOKEN_FILE for nid in ids])
    addr = {nid: f"{nid}:{DEFAULT_CONTROL_PORT}" for nid in ids}
    specs = []
    for nid in ids:
        bundle = node_dirs / nid
        _private_dir(bundle)
        pki_dir = bundle / "pki"
        if (pki_dir / NODE_CERT).exists() and (pki_dir / NODE_KEY).exists():
            _check_bundle_identity(pki_dir, ca_dir, nid)
            _tighten(pki_dir / NODE_KEY, 0o600)
            _write_if_changed(pki_dir / CA_CERT, ca_pem, 0o644)
        else:  # new, or a half-written bundle: (re)issue the pair
            issue(ca_dir, pki_dir, kind="controller", node_id=nid, trust_domain=TRUST_DOMAIN, dns=[nid],
                  overwrite=True)
        _private_dir(pki_dir)
        _write_if_changed(bundle / TOKEN_FILE, token, 0o600)
        cfg_path = bundle / BUNDLE_CONFIG
        if not cfg_path.exists():
            text = render_config(
                nid, data_dir=CONTAINER_DATA_DIR, initial_cluster=addr,
                control_listen=f"0.0.0.0:{DEFAULT_CONTROL_PORT}", control_advertise=addr[nid],
                api_listen=f"0.0.0.0:{DEFAULT_API_PORT}", token_file=TOKEN_FILE, pki_dir="pki", log_level=log_level,
                zt_bind=f"0.0.0.0:{DEFAULT_ZT_PORT}")
            atomic_write(cfg_path, text, 0o644, overwrite=False)
        from hactl.config import load
        cfg = load(cfg_path)
        specs.append(NodeSpec(nid, cfg_path, Path(cfg.data_dir), f"http://{nid}:{DEFAULT_API_PORT}",
                              cfg.control.advertise, Path(cfg.agent_socket)))
    return specs


def render_config(nid: str, *, data_dir: str, initial_cluster: dict[str, str], control_listen: str,
                  control_advertise: str, api_listen: str, token_file: str, pki_dir: str, log_level: str,
                  zt_bind: str = "", zt_planet: str = PLANET_OWN) -> str:
    doc: dict[str, Any] = {
        "id": nid,
        "data_dir": data_dir,
        "cluster": {"trust_domain": TRUST_DOMAIN, "initial_cluster": dict(initial_cluster)},
        "control": {"listen": control_listen, "advertise": control_advertise},
        "api": {"listen": api_listen, "token_file": token_file},
        "pki": {"ca": f"{pki_dir}/ca.crt", "cert": f"{pki_dir}/node.crt", "key": f"{pki_dir}/node.key"},
        "zerotier": {"bind": zt_bind, "planet": zt_planet},
        "log": {"level": log_level},
    }
    header = (f"# {nid}: generated by `hactl dev init`; see config/cluster.yaml in the source tree for every key.\n"
              "# Paths are relative to this file.\n")
    return header + yaml.safe_dump(doc, sort_keys=False)


class Supervisor:
    """Runs one `hactl controller run` per node; restarts exit code 3 at once and crashes with backoff."""

    def __init__(self, data: Path, specs: list[NodeSpec], planet: str = ""):
        self.data = data
        # The planet file members use: --zt-planet's, or (""): the cluster's own, kept in <data>/planet
        self.planet = planet
        self.own_planet = not planet
        self.specs = specs
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.restarts: dict[str, int] = {s.id: 0 for s in specs}

    async def _spawn(self, spec: NodeSpec) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hactl.cli", "controller", "run",
                                                    "--config", str(spec.config))
        self.procs[spec.id] = proc
        self.write_state()
        return proc

    async def _keep(self, spec: NodeSpec) -> None:
        backoff = 1.0
        while not self.stopping:
            started = time.monotonic()
            proc = await self._spawn(spec)
            code = await proc.wait()
            if self.stopping:
                return
            self.restarts[spec.id] += 1
            if time.monotonic() - started > 30:
                backoff = 1.0
            if code == EXIT_RESTART:
                log.info("%s asked for a restart (exit code 3); restarting now", spec.id)
                continue
            log.warning("%s exited with code %s; restarting in %.0f s", spec.id, code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    def write_state(self) -> None:
        state = {"nodes": [{"id": s.id, "pid": self.procs[s.id].pid if s.id in self.procs else None,
                            "api_url": s.api_url, "ctrl_addr": s.ctrl_addr, "data_dir": str(s.data_dir),
                            "agent_socket": str(s.agent_socket), "config": str(s.config),
                            "zt_endpoint": s.zt_endpoint} for s in self.specs],
                 "token_file": str(self.data / "api-token"), "planet": self.planet}
        atomic_write(self.data / "dev-cluster.json", json.dumps(state, indent=2) + "\n", 0o600)

    async def _keep_planet(self) -> None:
        """<data>/planet follows the cluster's planet (GET /planet from any node), for members to be given."""
        path = self.data / "planet"
        while not self.stopping:
            for spec in self.specs:
                data = await asyncio.to_thread(_get_planet, spec.api_url)
                if data is None:
                    continue
                if not path.exists() or path.read_bytes() != data:
                    atomic_write(path, data, 0o644)
                    log.info("the cluster's planet is in %s (give it to the members as their planet)", path)
                if self.planet != str(path):
                    self.planet = str(path)
                    self.write_state()
                break
            await asyncio.sleep(2.0)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        keepers = [asyncio.create_task(self._keep(s)) for s in self.specs]
        if self.own_planet and any(s.zt_endpoint for s in self.specs):
            keepers.append(asyncio.create_task(self._keep_planet()))
        await stop.wait()
        self.stopping = True
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in self.procs.values())), 20)
        except asyncio.TimeoutError:
            for proc in self.procs.values():
                if proc.returncode is None:
                    proc.kill()
        for k in keepers:
            k.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        return 0


def _get_planet(api_url: str) -> bytes | None:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"{api_url}/planet", timeout=2) as r:  # noqa: S310 - our own node's URL
            return r.read() if r.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _zt_hosts(value: str | None) -> list[str] | None:
    return [h.strip() for h in value.split(",")] if value else None


def _dev_init(args: argparse.Namespace) -> int:
    ca_dir = Path(args.ca_dir) if args.ca_dir else None
    node_dirs = Path(args.node_dirs) if args.node_dirs else None
    try:
        if args.compose and (args.zt_host or args.zt_hosts or args.zt_planet):
            raise DevInitError("--zt-host(s)/--zt-planet do not apply with --compose (each container binds "
                               f"0.0.0.0:{DEFAULT_ZT_PORT}; set zerotier.planet in its config.yaml)")
        specs = init_cluster(Path(args.data), args.nodes, base_port=args.base_port, compose=args.compose,
                             ca_dir=ca_dir, node_dirs=node_dirs, zt_host=args.zt_host, zt_planet=args.zt_planet,
                             zt_hosts=_zt_hosts(args.zt_hosts))
    except (DevInitError, PkiError, TokenError) as e:
        print(f"hactl dev init: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        print(f"hactl dev init: {e}. The directories must belong to the user init runs as (uid {os.geteuid()}); "
              "with compose, rebuild the image (docker compose build) so its mount points belong to uid 10001",
              file=sys.stderr)
        return 2
    if args.compose:
        print(f"CA: {(ca_dir or Path(args.data) / 'ca').resolve()} (ca.key stays there: mount it in no node)")
        for s in specs:
            print(f"{s.id}: bundle {s.config.parent} (config {s.config.name})")
        if os.geteuid() == 0:
            print("warning: init ran as root, so the bundles belong to root and their keys are 0600: the "
                  "controllers can read them only if they run as root too", file=sys.stderr)
        return 0
    for s in specs:
        print(f"{s.id}: config {s.config}")
    return 0


def _dev_up(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = Path(args.data).resolve()
    try:
        specs = init_cluster(data, args.nodes, base_port=args.base_port, zt_host=args.zt_host,
                             zt_planet=args.zt_planet, zt_hosts=_zt_hosts(args.zt_hosts))
    except (DevInitError, PkiError, TokenError) as e:
        print(f"hactl dev up: {e}", file=sys.stderr)
        return 2
    sup = Supervisor(data, specs, str(Path(args.zt_planet).resolve()) if args.zt_planet else "")
    print(f"hactl dev cluster ({len(specs)} controllers), data in {data}")
    for s in specs:
        zt = f"  zerotier {s.zt_endpoint}" if s.zt_endpoint else ""
        print(f"  {s.id}: API {s.api_url}  control {s.ctrl_addr}  agent {s.agent_socket}{zt}")
    if not any(s.zt_endpoint for s in specs):
        print("  No ZeroTier endpoints (give --zt-host ADDR or --zt-hosts A,B,C, non-loopback addresses, for "
              "members to join)")
    elif not args.zt_planet:
        print(f"  The nodes are the roots of the cluster's own planet; its file will be {data / 'planet'} (give "
              "it to members as their planet, or `hactl zt planet --moon`)")
    print(f"  API token: {data / 'api-token'}   (curl -H \"X-ZT1-Auth: $(cat {data / 'api-token'})\" "
          f"{specs[0].api_url}/status)")
    print("  Ctrl-C stops the cluster; `hactl dev up` again resumes it with its data.", flush=True)
    return asyncio.run(sup.run())


def add_dev_commands(sub: Any) -> None:
    dev = sub.add_parser("dev", help="a local development cluster").add_subparsers(dest="sub", required=True)
    for name, fn, text in (("up", _dev_up, "create (or resume) and run a local cluster in the foreground"),
                           ("init", _dev_init, "only create the PKI and configs")):
        p = dev.add_parser(name, help=text)
        p.add_argument("--nodes", type=int, default=3, choices=(1, 3, 5))
        p.add_argument("--data", default="./data")
        p.add_argument("--base-port", type=int, default=None,
                       help="node i gets API port N+2i and control port N+2i+1 (default: 9993+i and 6262+i)")
        p.add_argument("--zt-host", default=None, metavar="ADDR",
                       help="bind each node's ZeroTier UDP endpoint on ADDR (a non-loopback address of this "
                            "machine), port = the node's API port; default: no endpoints")
        p.add_argument("--zt-hosts", default=None, metavar="A,B,C",
                       help="like --zt-host, one address per node (each its own root address)")
        p.add_argument("--zt-planet", default=None, metavar="FILE",
                       help="the planet (roots) the controller says HELLO to (default: the cluster's own, whose "
                            "roots are the nodes; written to <data>/planet)")
        if name == "init":
            p.add_argument("--compose", action="store_true",
                           help="hosts are the compose service names; listen on 0.0.0.0; the CA and one bundle "
                                "per node in separate directories (--ca-dir, --node-dirs)")
            p.add_argument("--ca-dir", default=None,
                           help="with --compose: the CA (ca.key) and the token's master copy; mount it only in "
                                "init (default: <data>/ca)")
            p.add_argument("--node-dirs", default=None,
                           help="with --compose: node <id>'s bundle goes to DIR/<id>/ (config.yaml, pki/, "
                                "api-token); mount each only in its node (default: <data>/nodes)")
        p.set_defaults(func=fn)
