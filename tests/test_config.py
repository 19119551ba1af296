"""config/cluster.yaml and the configuration loader: defaults, and errors that name the file and the key."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from hactl.config import Config, ConfigError, _build, load, to_dict

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
    ("id: a\napi: {tls_cert: api.crt}\n", "api.tls_key", "required when api.tls_cert is set"),
    ("id: a\napi: {tls_key: api.key}\n", "api.tls_cert", "required when api.tls_key is set"),
    ("id: a\napi: {tls_cert: [a]}\n", "api.tls_cert", "expected a string"),
    ("id: a\nstorage: {ctrl_db_max_bytes: 1048575}\n", "storage.ctrl_db_max_bytes", "at least 1 MiB"),
    ("id: a\nstorage: {raft_db_max_bytes: 0}\n", "storage.raft_db_max_bytes", "at least 1 MiB"),
    ("id: a\nstorage: {alarm_min_free_bytes: 4096}\n", "storage.alarm_min_free_bytes", "at least 1 MiB"),
    ("id: a\nstorage: {ctrl_db_max_bytes: 64GiB}\n", "storage.ctrl_db_max_bytes", "expected an integer"),
    ("id: a\nstorage: {alarm_used_ratio: 0}\n", "storage.alarm_used_ratio", "must be in (0, 1]"),
    ("id: a\nstorage: {alarm_used_ratio: 1.01}\n", "storage.alarm_used_ratio", "must be in (0, 1]"),
    ("id: a\nstorage: {alarm_used_ratio: high}\n", "storage.alarm_used_ratio", "expected a number"),
    ("id: a\nstorage: {alarm_ratio: 0.5}\n", "storage.alarm_ratio", "unknown key"),
    ("id: a\nzerotier: {bind: '127.0.0.1:9993'}\n", "zerotier.bind", "loopback"),
    ("id: a\nzerotier: {bind: 'host:9993'}\n", "zerotier.bind", "IP address"),
    ("id: a\nzerotier: {endpoints: '10.0.0.1/9993'}\n", "zerotier.endpoints", "expected a list"),
    ("id: a\nzerotier: {endpoints: ['10.0.0.1:9993']}\n", "zerotier.endpoints[0]", "IP/port"),
    ("id: a\nzerotier: {endpoints: ['10.0.0.1/9993', '127.0.0.1/9993']}\n", "zerotier.endpoints[1]", "loopback"),
    ("id: a\nzerotier: {endpoints: ['ctrl1/9993']}\n", "zerotier.endpoints[0]", "not an IP address"),
    ("id: a\nzerotier: {endpoints: [auto, '10.0.0.1/9993']}\n", "zerotier.endpoints", "stands alone"),
    ("id: a\nzerotier: {endpoints: [" + ", ".join(f"'10.0.0.{i}/9993'" for i in range(1, 34)) + "]}\n",
     "zerotier.endpoints", "at most 32"),
])
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(p)
    assert e.value.key == key and words in e.value.problem and str(p) in str(e.value)


def test_zerotier_endpoints_are_a_list_of_ip_port(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("id: a\nzerotier: {bind: '10.0.0.1:9993', endpoints: ['203.0.113.7/9993', '2001:db8::7/9993']}\n")
    cfg = load(p)
    assert cfg.zerotier.endpoints == ["203.0.113.7/9993", "2001:db8::7/9993"]
    assert Config().zerotier.endpoints == [] and Config().zerotier.bind == "0.0.0.0:9993"
    p.write_text("id: a\nzerotier: {endpoints: [auto]}\n")  # learned from the other nodes
    assert load(p).zerotier.endpoints == ["auto"]


def test_storage_defaults_are_the_map_sizes_and_alarm_levels(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("id: n1\n")
    st = load(p).storage
    assert (st.raft_db_max_bytes, st.ctrl_db_max_bytes) == (16 << 30, 64 << 30)
    assert (st.alarm_used_ratio, st.alarm_min_free_bytes) == (0.9, 256 << 20)
    p.write_text("id: n1\nstorage: {ctrl_db_max_bytes: 1048576, alarm_used_ratio: 1, alarm_min_free_bytes: 1048576}\n")
    st = load(p).storage
    assert (st.ctrl_db_max_bytes, st.alarm_used_ratio, st.alarm_min_free_bytes) == (1 << 20, 1.0, 1 << 20)
    assert st.raft_db_max_bytes == 16 << 30  # keys not given keep their defaults


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text("id: n1\ndata_dir: ../d\npki: {ca: ca.crt}\n")
    cfg = load(p, overrides={"data_dir": None, "id": "n2"})
    assert cfg.id == "n2" and cfg.data_dir == str(tmp_path / "d")
    assert cfg.pki.ca == str(tmp_path / "sub" / "ca.crt") and cfg.agent_socket == str(tmp_path / "d" / "agent.sock")
    assert dataclasses.asdict(cfg)["raft"]["tick_ms"] == 100


def test_tls_paths_resolve_against_the_file_and_default_to_plain_http(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("id: n1\napi: {tls_cert: pki/node.crt, tls_key: /etc/k.key}\n")
    cfg = load(p)
    assert cfg.api.tls_cert == str(tmp_path / "pki" / "node.crt") and cfg.api.tls_key == "/etc/k.key"
    p.write_text("id: n1\n")
    assert load(p).api.tls_cert == load(p).api.tls_key == ""


def test_default_pki_paths_are_what_pki_issue_writes() -> None:
    from hactl.transport.pki import CA_CERT, NODE_CERT, NODE_KEY
    pki = Config().pki
    assert (pki.ca, pki.cert, pki.key) == (f"pki/{CA_CERT}", f"pki/{NODE_CERT}", f"pki/{NODE_KEY}")


@dataclasses.dataclass
class _Inner:
    n: int = 1


@dataclasses.dataclass
class _Outer:
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    ids: dict[str, str] = dataclasses.field(default_factory=dict)


def test_build_resolves_annotations_in_the_dataclass_own_module() -> None:
    # The annotations here are strings naming this module's classes (from __future__ import annotations).
    built = _build(_Outer, {"inner": {"n": 5}, "ids": {"a": "h:1"}}, "t.yaml", "")
    assert built == _Outer(_Inner(5), {"a": "h:1"})
    with pytest.raises(ConfigError, match="inner.n: expected an integer"):
        _build(_Outer, {"inner": {"n": "x"}}, "t.yaml", "")
