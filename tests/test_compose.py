"""docker-compose.yml: valid for Debian's docker-compose, the containers get the same config keys as dev up, and
secrets are split by volume: the CA key only in init's volume, each node's key only in that node's bundle."""
from __future__ import annotations

import os
import posixpath
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hactl.cli import main as hactl_main
from hactl.config import load
from hactl.dev.cluster import init_cluster
from hactl.transport.pki import load_identity
from tests.test_config import keys

ROOT = Path(__file__).resolve().parent.parent
BUNDLE_FILES = {"config.yaml", "api-token", "pki/ca.crt", "pki/node.crt", "pki/node.key"}


def compose_config() -> dict[str, Any]:
    """The compose file as docker-compose normalises it (anchors merged, defaults filled in)."""
    exe = shutil.which("docker-compose")
    assert exe, "Debian's docker-compose is required (make test installs it)"
    out = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def mounts(svc: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of a service's volumes, short ("src:dst[:mode]") or long syntax."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            out.append((v["source"], v["target"], bool(v.get("read_only"))))
    return out


def published_ports(svc: dict[str, Any], protocol: str = "tcp") -> list[tuple[str, int, int]]:
    """(host ip, published port, container port) of one protocol; short ("ip:pub:target/proto") or long syntax."""
    out = []
    for p in svc.get("ports", []):
        if isinstance(p, str):
            spec, _, proto = p.partition("/")
            if (proto or "tcp") != protocol:
                continue
            parts = spec.split(":")
            ip = parts[0] if len(parts) == 3 else ""
            out.append((ip, int(parts[-2]) if len(parts) >= 2 else 0, int(parts[-1])))
        elif p.get("protocol", "tcp") == protocol:
            out.append((p.get("host_ip", ""), int(p["published"]), int(p["target"])))
    return out


def flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def controllers(services: dict[str, Any]) -> list[str]:
    return sorted(k for k in services if k.startswith("ctrl"))


def test_compose_file_is_valid_and_shaped_for_ha() -> None:
    services = compose_config()["services"]
    ctrls = controllers(services)
    assert ctrls == ["ctrl1", "ctrl2", "ctrl3"]
    published = set()
    udp_published: set[int] = set()
    data_volumes = set()
    for name in ctrls:
        svc = services[name]
        assert svc["restart"] == "unless-stopped"
        assert svc["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert svc["healthcheck"]["test"][0] == "CMD" and "/health" in " ".join(svc["healthcheck"]["test"])
        assert str(svc["user"]) == "10001"  # the same non-root user as init, which owns the bundle files
        ports = published_ports(svc)
        assert ports and all(ip == "127.0.0.1" for ip, _, _ in ports), f"{name}: API published beyond loopback"
        published |= {pub for _, pub, _ in ports}
        # The ZeroTier endpoint is for members anywhere (its traffic is authenticated and encrypted): every
        # address, container port 9993, one host port per node.
        udp = published_ports(svc, "udp")
        assert [(ip, target) for ip, _, target in udp] in ([("", 9993)], [("0.0.0.0", 9993)]), (name, udp)
        udp_published.add(udp[0][1])
        vols = {src for src, dst, _ in mounts(svc) if dst == "/data"}
        assert len(vols) == 1
        data_volumes |= vols
        assert svc["command"][:2] == ["controller", "run"]
    assert published == {9993, 9994, 9995} and len(data_volumes) == 3
    assert udp_published == {9993, 9994, 9995}
    assert services["init"]["command"][:3] == ["dev", "init", "--compose"]
    assert str(services["init"]["user"]) == "10001"


def test_only_init_mounts_the_ca_and_each_controller_only_its_own_bundle() -> None:
    doc = compose_config()
    services = doc["services"]
    init_cmd = services["init"]["command"]
    ca_path, node_root = flag(init_cmd, "--ca-dir"), flag(init_cmd, "--node-dirs")
    assert ca_path and node_root, "init must write the CA and the node bundles to separate directories"
    init_mounts = {dst: src for src, dst, _ in mounts(services["init"])}
    ca_vol = init_mounts.get(ca_path)
    assert ca_vol in doc["volumes"], f"--ca-dir {ca_path} must be a named volume of init's"
    ctrls = controllers(services)
    bundle_vols = {c: init_mounts.get(posixpath.join(node_root, c)) for c in ctrls}
    assert all(v in doc["volumes"] for v in bundle_vols.values()), bundle_vols
    assert len(set(bundle_vols.values()) | {ca_vol}) == len(ctrls) + 1, "one volume per bundle, another for the CA"
    assert set(init_mounts) == {ca_path} | {posixpath.join(node_root, c) for c in ctrls}

    for name, svc in services.items():
        if name != "init":
            assert ca_vol not in {src for src, _, _ in mounts(svc)}, f"{name} mounts the CA volume {ca_vol}"
    for name in ctrls:
        svc = services[name]
        conf_dir = posixpath.dirname(flag(svc["command"], "--config"))
        data_dir = flag(svc["command"], "--data")
        m = mounts(svc)
        assert len(m) == 2, f"{name} must mount only its bundle and its data: {m}"
        assert (bundle_vols[name], conf_dir, True) in m, f"{name} must mount its own bundle read-only at {conf_dir}"
        (data_vol,) = [src for src, dst, _ in m if dst == data_dir]
        assert data_vol not in bundle_vols.values() and data_vol != ca_vol
        others = set(bundle_vols.values()) - {bundle_vols[name]}
        assert not others & {src for src, _, _ in m}


def _run_compose_init(root: Path, init_cmd: list[str]) -> None:
    """Run init's command with `root` standing for the container's /: each mount target is a volume's directory."""
    argv = [str(root) + a if a.startswith("/") else a for a in init_cmd]
    assert hactl_main(argv) == 0


def _snapshot(root: Path) -> dict[str, tuple[bytes | None, int, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (p.read_bytes() if p.is_file() else None, stat.S_IMODE(st.st_mode),
                                         st.st_mtime_ns)
    return out


def test_init_puts_the_ca_key_only_in_the_ca_volume_and_one_key_per_bundle(tmp_path: Path) -> None:
    services = compose_config()["services"]
    init_cmd = services["init"]["command"]
    root = tmp_path / "root"
    vol_dir = {src: root / dst.lstrip("/") for src, dst, _ in mounts(services["init"])}
    ca_dir = root / flag(init_cmd, "--ca-dir").lstrip("/")
    for d in vol_dir.values():  # the image provides the mount points, owned by the init user
        d.mkdir(parents=True)
    _run_compose_init(root, init_cmd)

    assert sorted(root.rglob("ca.key")) == [ca_dir / "ca.key"]
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    token = (ca_dir / "api-token").read_bytes()
    node_keys = {}
    for name in controllers(services):
        svc = services[name]
        conf_path, data_dir = flag(svc["command"], "--config"), flag(svc["command"], "--data")
        conf_dir = posixpath.dirname(conf_path)
        (vol,) = [src for src, dst, _ in mounts(svc) if dst == conf_dir]
        bundle = vol_dir[vol]
        files = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
        assert files == BUNDLE_FILES, f"{name}: {files}"
        for p in [bundle, *bundle.rglob("*")]:
            st = p.stat()
            assert st.st_uid == os.geteuid(), f"{p} must belong to the user the node runs as (init's)"
            mode = stat.S_IMODE(st.st_mode)
            if p.is_dir():
                assert mode == 0o700, f"{p}: {oct(mode)}"
            elif p.name in ("node.key", "api-token"):
                assert mode == 0o600, f"{p}: {oct(mode)}"
            else:
                assert mode & 0o022 == 0, f"{p}: {oct(mode)}"
        assert (bundle / "api-token").read_bytes() == token
        node_keys[name] = (bundle / "pki" / "node.key").read_bytes()

        # the config as the container sees it: the bundle at conf_dir, the data volume at data_dir
        cfg = load(bundle / posixpath.relpath(conf_path, conf_dir), overrides={"data_dir": data_dir})
        assert cfg.id == name and cfg.data_dir == data_dir
        for path in (cfg.pki.ca, cfg.pki.cert, cfg.pki.key, cfg.api.token_file):
            assert Path(path).is_relative_to(bundle.resolve()), f"{name}: {path} is outside its bundle"
        ident = load_identity(cfg.pki.cert, cfg.pki.key, cfg.pki.ca)
        assert (ident.kind, ident.node_id) == ("controller", name)
        assert Path(cfg.pki.ca).read_bytes() == (ca_dir / "ca.crt").read_bytes()
    assert len(set(node_keys.values())) == len(node_keys), "every node has its own key"

    before = _snapshot(root)
    _run_compose_init(root, init_cmd)
    assert _snapshot(root) == before, "re-running init must keep the CA, the keys, the token and the configs"


def test_compose_init_is_idempotent_and_refuses_a_replaced_ca(tmp_path: Path) -> None:
    ca, nodes = tmp_path / "ca", tmp_path / "nodes"
    specs = init_cluster(tmp_path / "unused", 3, compose=True, ca_dir=ca, node_dirs=nodes)
    assert [s.config for s in specs] == [nodes / f"ctrl{i}" / "config.yaml" for i in (1, 2, 3)]
    assert not (tmp_path / "unused").exists()
    before = _snapshot(tmp_path)
    # the CA key may be taken offline once the nodes are issued: re-running still works and changes nothing
    key = (ca / "ca.key").read_bytes()
    (ca / "ca.key").unlink()
    init_cluster(tmp_path / "unused", 3, compose=True, ca_dir=ca, node_dirs=nodes)
    (ca / "ca.key").write_bytes(key)
    os.chmod(ca / "ca.key", 0o644)  # a loosened key mode is tightened again
    os.chmod(nodes / "ctrl2" / "pki" / "node.key", 0o644)
    init_cluster(tmp_path / "unused", 3, compose=True, ca_dir=ca, node_dirs=nodes)
    after = _snapshot(tmp_path)
    assert {k: v[:2] for k, v in after.items()} == {k: v[:2] for k, v in before.items()}

    # a lost CA volume: no new CA may silently appear next to bundles the old one issued
    shutil.rmtree(ca)
    assert hactl_main(["dev", "init", "--compose", "--ca-dir", str(ca), "--node-dirs", str(nodes)]) == 2
    assert not (ca / "ca.key").exists()
    # nor may the CA end up inside a bundle directory
    assert hactl_main(["dev", "init", "--compose", "--ca-dir", str(nodes / "ctrl1" / "ca"),
                       "--node-dirs", str(nodes)]) == 2
    assert not (nodes / "ctrl1" / "ca").exists()


def test_ca_and_node_dirs_flags_need_compose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hactl_main(["dev", "init", "--data", str(tmp_path / "d"), "--ca-dir", str(tmp_path / "ca")]) == 2
    assert "--compose" in capsys.readouterr().err
    assert not (tmp_path / "ca").exists() and not (tmp_path / "d").exists()


def test_container_and_dev_up_configs_have_the_same_keys(tmp_path: Path) -> None:
    dev = init_cluster(tmp_path / "dev", 3, base_port=31000)
    compose = init_cluster(tmp_path / "compose", 3, compose=True)
    for a, b in zip(dev, compose):
        da, db = yaml.safe_load(a.config.read_text()), yaml.safe_load(b.config.read_text())
        assert keys(da) == keys(db)
        assert da["cluster"]["initial_cluster"].keys() == db["cluster"]["initial_cluster"].keys()
    c1 = yaml.safe_load(compose[0].config.read_text())
    assert c1["control"]["advertise"] == "ctrl1:6262" and c1["api"]["listen"] == "0.0.0.0:9993"
    # what the compose command line runs must load: the ctrl1 config with --data overridden
    cfg = load(compose[0].config, overrides={"data_dir": "/data"})
    assert cfg.data_dir == "/data" and cfg.id == "ctrl1"
