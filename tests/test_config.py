"""config/cluster.yaml and the configuration loader: defaults, and errors that name the file and the key."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from hactl.config import Config, ConfigError, load, to_dict

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "cluster.yaml"


def flat(d: dict, prefix: str = "") -> dict:
    """Dotted key -> value; initial_cluster counts as one key (its own keys are node ids, not settings)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "initial_cluster":
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def keys(d: dict) -> set[str]:
    return set(flat(d))


def test_example_documents_every_key_with_its_default() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    defaults = to_dict(Config())
    assert keys(raw) == keys(defaults)
    text = EXAMPLE.read_text()
    for k in keys(defaults):  # every key carries a comment somewhere above it
        assert f"{k.split('.')[-1]}:" in text
    flat_raw, flat_def = flat(raw), flat(defaults)
    for k in keys(defaults) - {"id", "cluster.initial_cluster"}:
        assert flat_raw[k] == flat_def[k], f"{k}: example shows {flat_raw[k]!r}, default is {flat_def[k]!r}"
    cfg = load(EXAMPLE)
    assert cfg.id == "ctrl1" and cfg.raft.tick_ms == 100



@pytest.mark.parametrize("text, key, words", [
    ("id: a\nraft: {tick_msx: 1}\n", "raft.tick_msx", "unknown key"),
    ("id: a\nraft: {tick_ms: fast}\n", "raft.tick_ms", "expected an integer"),
    ("id: a\nraft: {election_ticks: 1, heartbeat_ticks: 1}\n", "raft.election_ticks", "greater than"),
    ("id: 'a b'\n", "id", "not a valid id"),
    ("data_dir: x\n", "id", "required"),
    ("id: a\ncluster: {initial_cluster: {b: 'h:1'}}\n", "cluster.initial_cluster", "does not list this node"),
    ("id: a\ncontrol: {listen: 'nohost'}\n", "control.listen", "host:port"),
    ("id: a\ncontrol: {advertise: '0.0.0.0:6262'}\n", "control.advertise", "not 0.0.0.0"),
    ("id: a\nlog: {level: loud}\n", "log.level", "expected one of"),
    ("id: a\nsnapshots: {retain: 0}\n", "snapshots.retain", ">= 1"),
    ("- a list\n", "-", "mapping"),
    ("id: [unclosed\n", "-", "not valid YAML"),
])
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(p)
    assert e.value.key == key and words in e.value.problem and str(p) in str(e.value)


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text("id: n1\ndata_dir: ../d\npki: {ca: ca.crt}\n")
    cfg = load(p, overrides={"data_dir": None, "id": "n2"})
    assert cfg.id == "n2" and cfg.data_dir == str(tmp_path / "d")
    assert cfg.pki.ca == str(tmp_path / "sub" / "ca.crt") and cfg.agent_socket == str(tmp_path / "d" / "agent.sock")
    assert dataclasses.asdict(cfg)["raft"]["tick_ms"] == 100
