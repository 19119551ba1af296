"""The controller's configuration file (config/cluster.yaml): typed, defaulted, validated.

Errors name the file, the dotted key and what is wrong. Unknown keys are errors too: a misspelt key that is
silently ignored is how an operator ends up running with a default they thought they had changed. Relative paths
are resolved against the configuration file's directory, so the same file works from any working directory.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NODE_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
EVENT_NAMESPACES = ("cluster", "entityChange", "zerotier")
EVENT_SINK_TYPES = ("file", "stdout", "webhook")
MIN_STORAGE_BYTES = 1 << 20
PLANET_OWN, PLANET_ZEROTIER = "own", "zerotier"  # zerotier.planet's keywords (anything else is a file)
ENDPOINTS_AUTO = "auto"  # zerotier.endpoints: [auto]
MAX_ROOT_ENDPOINTS = 32  # stable endpoints per root in a ZeroTier world
MAX_WORKERS = 64  # API worker processes per node (each holds ctrl.db reader slots: 256 in all, see hactl/workers)


def default_workers() -> int:
    """`workers:` when the file does not say: one API worker process per core."""
    return min(os.cpu_count() or 1, MAX_WORKERS)


class ConfigError(Exception):
    def __init__(self, file: str, key: str, problem: str):
        super().__init__(f"{file}: {key}: {problem}")
        self.file, self.key, self.problem = file, key, problem


@dataclass
class ClusterConfig:
    trust_domain: str = "hactl.local"
    # Bootstrap only (empty data dir): every initial member's id -> control-channel address. Empty: this node
    # waits to be added to a running cluster with `hactl agent cluster add`.
    initial_cluster: dict[str, str] = field(default_factory=dict)


@dataclass
class ControlConfig:
    listen: str = "0.0.0.0:6262"
    advertise: str = "127.0.0.1:6262"  # what the other controllers dial
    max_frame_bytes: int = 4 << 20


@dataclass
class ApiConfig:
    listen: str = "127.0.0.1:9993"
    token_file: str = "api-token"  # created with the cluster; one secret shared by every node
    max_body_bytes: int = 1 << 20
    # HTTPS: this server certificate (its chain may follow it) and its key; both empty: plain HTTP.
    tls_cert: str = ""
    tls_key: str = ""


@dataclass
class RaftConfig:
    tick_ms: int = 100
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_msg_entries: int = 256
    max_inflight: int = 128
    apply_timeout_s: float = 10.0
    proposal_queue: int = 4096  # proposals waiting on the leader beyond this are refused with 429


@dataclass
class SnapshotConfig:
    every_entries: int = 10_000
    interval_s: float = 3600.0  # also snapshot on this timer when anything was applied; 0 disables
    retain: int = 5
    trailing_entries: int = 5_000


@dataclass
class StorageConfig:
    # The LMDB map sizes: the most each file can ever hold (address space, not disk: the files grow as needed).
    raft_db_max_bytes: int = 16 << 30
    ctrl_db_max_bytes: int = 64 << 30
    # The NOSPACE alarm (writes that add data refused cluster-wide) is raised before a map or the disk is full:
    # when a file's live data passes this share of its map, or the data directory's file system has less free.
    alarm_used_ratio: float = 0.9
    alarm_min_free_bytes: int = 256 << 20


@dataclass
class PkiConfig:
    ca: str = "pki/ca.crt"
    cert: str = "pki/node.crt"  # the names `hactl pki issue` writes into its --out directory
    key: str = "pki/node.key"


@dataclass
class AgentConfig:
    socket: str = ""  # default: <data_dir>/agent.sock


@dataclass
class ZeroTierConfig:
    # The UDP endpoint real ZeroTier nodes reach the controller identity on. Empty: no endpoint (the API still
    # works; ZeroTier members get no configs from this node). ZeroTier never uses loopback paths, so a
    # 127.x address here is refused.
    bind: str = "0.0.0.0:9993"
    # The roots this node HELLOs as the controller, so members can find it: "own" (the cluster's own planet, whose
    # roots are the cluster's nodes), "zerotier" (ZeroTier's built-in public planet, as a stock controller uses),
    # or a planet file (a serialized World, as zerotier-one keeps in /var/lib/zerotier-one/planet).
    planet: str = PLANET_OWN
    # Where members reach this node as a root of the cluster's own planet, in ZeroTier's "IP/port" notation (at
    # most 32). Empty: the bind address, when it is not a wildcard. [auto]: the address a majority of the other
    # nodes see this one's control-plane connections come from, with the bind port (a dynamic address).
    endpoints: list[str] = field(default_factory=list)
    # Hand members over to less busy nodes (PUSH_DIRECT_PATHS, cluster redirect) when this node serves more than
    # its share of them. Members otherwise stay with the node of the root they reached first.
    balance: bool = True


@dataclass
class EventSinkConfig:
    type: str = "file"  # file (JSON lines, rotated), stdout or webhook (HTTP POST)
    namespaces: list[str] = field(default_factory=list)  # empty: every namespace
    # Every node's view (OpenZiti's propagateAlways): entity changes as each node applies them (default: the
    # leader's only), and ZeroTier member events from every node that sees the member (default: one reporter).
    propagate_always: bool = False
    queue: int = 10_000  # events waiting for this sink; beyond it they are dropped, counted and reported (gap)
    path: str = ""  # file: default <data_dir>/events.jsonl; relative to the config file
    max_bytes: int = 16 << 20  # file: rotated beyond this
    keep: int = 5  # file: rotated files kept (events.jsonl.1 ... .5)
    url: str = ""  # webhook: http(s)://... receiving a POST of a JSON array of events
    secret_file: str = ""  # webhook: key for the X-Hactl-Signature HMAC-SHA256 header (empty: unsigned)
    timeout_s: float = 5.0  # webhook: per attempt
    retries: int = 5  # webhook: attempts after the first, with exponential backoff, before the batch is dropped


@dataclass
class LogConfig:
    level: str = "info"
    format: str = "text"  # or "json": one object per line with ts, level, logger, msg, node and term


@dataclass
class Config:
    id: str = ""
    data_dir: str = "data"
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    raft: RaftConfig = field(default_factory=RaftConfig)
    snapshots: SnapshotConfig = field(default_factory=SnapshotConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    pki: PkiConfig = field(default_factory=PkiConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    zerotier: ZeroTierConfig = field(default_factory=ZeroTierConfig)
    log: LogConfig = field(default_factory=LogConfig)
    events: list[EventSinkConfig] = field(default_factory=list)
    # API worker processes next to this node's own (hactl/workers): they serve reads from ctrl.db on every core
    # and hand writes to this process. 0: this process alone serves the API. None (not set, or `workers:` left
    # empty): one per core, see api_workers.
    workers: int | None = None
    source: str = field(default="<defaults>", compare=False)

    @property
    def api_workers(self) -> int:
        """How many API worker processes to run: `workers:`, or one per core when it is not set."""
        return default_workers() if self.workers is None else self.workers

    @property
    def agent_socket(self) -> str:
        return self.agent.socket or str(Path(self.data_dir) / "agent.sock")


def load(path: str | Path, *, overrides: dict[str, Any] | None = None) -> Config:
    """Read, default and validate a configuration file; `overrides` are dotted keys from the command line."""
    p = Path(path)
    src = str(p)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(src, "-", "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(src, "-", f"cannot read: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(src, "-", f"not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(src, "-", "the top level must be a mapping of keys")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    cfg = _build(Config, raw, src, "")
    cfg.source = src
    _resolve_paths(cfg, p.parent)
    validate(cfg)
    return cfg


def _build(cls: type, raw: Any, src: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(src, prefix or "-", f"expected a mapping, got {type(raw).__name__}")
    fields = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    hints = typing.get_type_hints(cls)  # resolves the string annotations (`from __future__ import annotations`)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(src, prefix + str(unknown[0]), f"unknown key (known here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name in fields:
        if name not in raw:
            continue
        key = prefix + name
        value = raw[name]
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, value if value is not None else {}, src, key + ".")
        else:
            kwargs[name] = _coerce(value, kind, src, key)
    return cls(**kwargs)


def _coerce(value: Any, kind: Any, src: str, key: str) -> Any:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: empty (None) or an X
        (inner,) = [k for k in typing.get_args(kind) if k is not type(None)]
        return None if value is None else _coerce(value, inner, src, key)
    origin = getattr(kind, "__origin__", None)
    if origin is list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(src, key, f"expected a list, got {type(value).__name__}")
        (item,) = kind.__args__
        return [_coerce(v, item, src, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(kind):
        return _build(kind, value if value is not None else {}, src, key + ".")
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(src, key, f"expected a mapping of id: address, got {type(value).__name__}")
        return {str(k): _coerce(v, str, src, f"{key}.{k}") for k, v in value.items()}
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(src, key, f"expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(src, key, f"expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(src, key, f"expected a number, got {value!r}")
    if kind is str:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(src, key, f"expected a string, got {value!r}")
    raise ConfigError(src, key, f"unsupported type {kind!r}")


def _resolve_paths(cfg: Config, base: Path) -> None:
    def res(p: str) -> str:
        return p if not p or Path(p).is_absolute() else str((base / p).resolve())
    cfg.data_dir = res(cfg.data_dir)
    cfg.api.token_file = res(cfg.api.token_file)
    cfg.pki.ca, cfg.pki.cert, cfg.pki.key = res(cfg.pki.ca), res(cfg.pki.cert), res(cfg.pki.key)
    cfg.agent.socket = res(cfg.agent.socket)
    cfg.api.tls_cert, cfg.api.tls_key = res(cfg.api.tls_cert), res(cfg.api.tls_key)
    for sink in cfg.events:
        sink.path = res(sink.path)
        sink.secret_file = res(sink.secret_file)
    if cfg.zerotier.planet in ("", PLANET_OWN, PLANET_ZEROTIER):
        cfg.zerotier.planet = cfg.zerotier.planet or PLANET_OWN
    else:
        cfg.zerotier.planet = res(cfg.zerotier.planet)


def parse_hostport(value: str, src: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(src, key, f"expected host:port, got {value!r}")
    return host, int(port)


def validate(cfg: Config) -> None:
    src = cfg.source
    if not cfg.id:
        raise ConfigError(src, "id", "required: this controller's id (it must match its certificate)")
    if not NODE_ID_RE.match(cfg.id):
        raise ConfigError(src, "id", f"{cfg.id!r} is not a valid id ([A-Za-z0-9._-], 1-64 characters)")
    for key in ("control.listen", "control.advertise", "api.listen"):
        section, name = key.split(".")
        parse_hostport(getattr(getattr(cfg, section), name), src, key)
    for nid, addr in cfg.cluster.initial_cluster.items():
        if not NODE_ID_RE.match(nid):
            raise ConfigError(src, f"cluster.initial_cluster.{nid}", "not a valid node id")
        parse_hostport(addr, src, f"cluster.initial_cluster.{nid}")
    if cfg.cluster.initial_cluster and cfg.id not in cfg.cluster.initial_cluster:
        raise ConfigError(src, "cluster.initial_cluster", f"does not list this node ({cfg.id})")
    if not re.match(r"^[a-z0-9.-]{1,253}$", cfg.cluster.trust_domain):
        raise ConfigError(src, "cluster.trust_domain", f"{cfg.cluster.trust_domain!r} is not a valid trust domain")
    r = cfg.raft
    _positive(src, "raft.tick_ms", r.tick_ms)
    _positive(src, "raft.heartbeat_ticks", r.heartbeat_ticks)
    if r.election_ticks <= r.heartbeat_ticks:
        raise ConfigError(src, "raft.election_ticks", "must be greater than raft.heartbeat_ticks")
    for key, val in (("raft.max_msg_entries", r.max_msg_entries), ("raft.max_inflight", r.max_inflight),
                     ("raft.proposal_queue", r.proposal_queue), ("snapshots.retain", cfg.snapshots.retain),
                     ("control.max_frame_bytes", cfg.control.max_frame_bytes),
                     ("api.max_body_bytes", cfg.api.max_body_bytes)):
        _positive(src, key, val)
    if cfg.workers is not None and not 0 <= cfg.workers <= MAX_WORKERS:
        raise ConfigError(src, "workers", f"expected 0 (this process alone serves the API) to {MAX_WORKERS} API "
                          f"worker processes, got {cfg.workers}")
    if r.apply_timeout_s <= 0:
        raise ConfigError(src, "raft.apply_timeout_s", "must be > 0")
    s = cfg.snapshots
    if s.every_entries < 0 or s.trailing_entries < 0 or s.interval_s < 0:
        raise ConfigError(src, "snapshots", "every_entries, trailing_entries and interval_s must be >= 0")
    st = cfg.storage
    for key, val in (("storage.raft_db_max_bytes", st.raft_db_max_bytes),
                     ("storage.ctrl_db_max_bytes", st.ctrl_db_max_bytes),
                     ("storage.alarm_min_free_bytes", st.alarm_min_free_bytes)):
        if val < MIN_STORAGE_BYTES:
            raise ConfigError(src, key, f"must be at least 1 MiB ({MIN_STORAGE_BYTES} bytes), got {val}")
    if not 0 < st.alarm_used_ratio <= 1:
        raise ConfigError(src, "storage.alarm_used_ratio",
                          f"must be in (0, 1] (the share of a file's map it may fill), got {st.alarm_used_ratio}")
    # Half a TLS configuration is a mistake, not a request for plain HTTP. Whether the files load is checked at
    # start, where they are read.
    if cfg.api.tls_cert and not cfg.api.tls_key:
        raise ConfigError(src, "api.tls_key", "required when api.tls_cert is set (the certificate's private key)")
    if cfg.api.tls_key and not cfg.api.tls_cert:
        raise ConfigError(src, "api.tls_cert", "required when api.tls_key is set (the server certificate)")
    if cfg.zerotier.bind:
        zhost, _ = parse_hostport(cfg.zerotier.bind, src, "zerotier.bind")
        try:
            if ipaddress.ip_address(zhost).is_loopback:
                raise ConfigError(src, "zerotier.bind", "ZeroTier nodes never use loopback paths: bind a LAN, "
                                  "private or 0.0.0.0 address (or leave it empty for no endpoint)")
        except ValueError:
            raise ConfigError(src, "zerotier.bind", f"expected an IP address and port, got {cfg.zerotier.bind!r}") \
                from None
    if len(cfg.zerotier.endpoints) > MAX_ROOT_ENDPOINTS:
        raise ConfigError(src, "zerotier.endpoints", f"at most {MAX_ROOT_ENDPOINTS} endpoints (a planet's limit per "
                          f"root), got {len(cfg.zerotier.endpoints)}")
    if ENDPOINTS_AUTO in cfg.zerotier.endpoints and cfg.zerotier.endpoints != [ENDPOINTS_AUTO]:
        raise ConfigError(src, "zerotier.endpoints", f"{ENDPOINTS_AUTO!r} stands alone (the address the other nodes "
                          "see this one at), not among explicit endpoints")
    for i, ep in enumerate(cfg.zerotier.endpoints):
        problem = zt_endpoint_problem(ep) if ep != ENDPOINTS_AUTO else None
        if problem:
            raise ConfigError(src, f"zerotier.endpoints[{i}]", problem)
    if cfg.log.level not in LOG_LEVELS:
        raise ConfigError(src, "log.level", f"expected one of {', '.join(LOG_LEVELS)}, got {cfg.log.level!r}")
    for i, sink in enumerate(cfg.events):
        where = f"events[{i}]"
        if sink.type not in EVENT_SINK_TYPES:
            raise ConfigError(src, f"{where}.type", f"expected one of {', '.join(EVENT_SINK_TYPES)}, got "
                              f"{sink.type!r}")
        if sink.type == "webhook" and not sink.url.startswith(("http://", "https://")):
            raise ConfigError(src, f"{where}.url", f"a webhook needs an http:// or https:// url, got {sink.url!r}")
        if sink.queue < 1:
            raise ConfigError(src, f"{where}.queue", f"at least 1, got {sink.queue}")
        if sink.timeout_s <= 0:
            raise ConfigError(src, f"{where}.timeout_s", f"must be > 0, got {sink.timeout_s}")
        if sink.retries < 0:
            raise ConfigError(src, f"{where}.retries", f"must be >= 0, got {sink.retries}")
        for ns in sink.namespaces:
            if ns not in EVENT_NAMESPACES:
                raise ConfigError(src, f"{where}.namespaces", f"unknown namespace {ns!r} (known: "
                                  f"{', '.join(EVENT_NAMESPACES)})")
        if sink.max_bytes < 4096:
            raise ConfigError(src, f"{where}.max_bytes", f"at least 4096, got {sink.max_bytes}")
        if sink.keep < 0:
            raise ConfigError(src, f"{where}.keep", f"must be >= 0, got {sink.keep}")
    if cfg.log.format not in LOG_FORMATS:
        raise ConfigError(src, "log.format", f"expected one of {', '.join(LOG_FORMATS)}, got {cfg.log.format!r}")
    host, _ = parse_hostport(cfg.control.advertise, src, "control.advertise")
    try:
        if ipaddress.ip_address(host).is_unspecified:
            raise ConfigError(src, "control.advertise", "must be an address other nodes can dial, not 0.0.0.0")
    except ValueError:
        pass  # a DNS name


def zt_endpoint_problem(text: str) -> str | None:
    """What is wrong with an "IP/port" root endpoint, or None. Members must be able to use it: ZeroTier never uses
    loopback, link-local, multicast or unspecified addresses as paths."""
    host, sep, port = text.rpartition("/")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return f"expected IP/port (ZeroTier's notation, e.g. 203.0.113.7/9993), got {text!r}"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"{host!r} is not an IP address (a planet holds addresses, not names)"
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local:
        return f"{ip} cannot be a ZeroTier path (loopback, unspecified, multicast or link-local)"
    return None


def _positive(src: str, key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(src, key, f"must be >= 1, got {value}")


def to_dict(cfg: Config) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d.pop("source", None)
    return d
