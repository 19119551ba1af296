"""docker-compose.yml: valid for Debian's docker-compose, and the containers get the same config keys as dev up."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from hactl.dev.cluster import init_cluster
from tests.test_config import keys

ROOT = Path(__file__).resolve().parent.parent



def test_compose_file_is_valid_and_shaped_for_ha() -> None:
    exe = shutil.which("docker-compose")
    assert exe, "Debian's docker-compose is required (make test installs it)"
    out = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(out.stdout)
    services = doc["services"]
    ctrls = sorted(k for k in services if k.startswith("ctrl"))
    assert ctrls == ["ctrl1", "ctrl2", "ctrl3"]
    published = set()
    data_volumes = set()
    for name in ctrls:
        svc = services[name]
        assert svc["restart"] == "unless-stopped"
        assert svc["depends_on"]["init"]["condition"] == "service_completed_successfully"
        published |= {p["published"] for p in svc["ports"]}
        mounts = [v.split(":") if isinstance(v, str) else [v["source"], v["target"]] for v in svc["volumes"]]
        vols = {m[0] for m in mounts if m[1] == "/data"}
        assert len(vols) == 1
        data_volumes |= vols
        assert svc["command"][:2] == ["controller", "run"]
    assert len(published) == 3 and len(data_volumes) == 3
    assert services["init"]["command"][:3] == ["dev", "init", "--compose"]


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
    from hactl.config import load
    cfg = load(compose[0].config, overrides={"data_dir": "/data"})
    assert cfg.data_dir == "/data" and cfg.id == "ctrl1"
