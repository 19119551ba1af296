"""One libzt 1.8.4 node in this process, driven over stdin/stdout JSON lines (test tooling, not part of hactl).

    python tests/zt/libzt/node.py --shim SHIM.so --lib _libzt...so      # usually under `ip netns exec NS`

Each request is one JSON object per line with "cmd" (and an optional "id" echoed back); each answer is one
line {"id":..., "ok": true, ...} or {"id":..., "ok": false, "error": "..."}. Every command runs with a time
limit ("timeout", seconds). The process exits when stdin closes. libzt allows one node per process.

Commands:
  make_root {storage, endpoints: ["10.203.0.1/29993"], world_id?}  -> {identity_public, planet (hex)}
      create an identity in `storage` and a signed one-root world (planet) naming it with `endpoints`
  start {storage, planet? (hex), port}                               -> {node_id, port, identity_public}
  wait_online {timeout}                                              -> {online}
  join {nwid (16 hex)} / leave {nwid}
  status {nwid?}                                                     -> {node_id, online, net: {...}}
  wait_network {nwid, family: "inet"|"inet6", timeout}               -> {net: {...}} once transport + address
  net_info {nwid}                   -> {net: {..., name, mtu, addresses: [...], routes: [{target, via, flags,
                                       metric}]}}: the config as of libzt's last config callback (a push shows)
  listen {port, addr?}              start a TCP echo server (one thread per connection) on the ZT stack
  echo {addr, port, data, timeout}  connect, send data, read the same number of bytes back -> {data}
                                    (the connect and each send/recv are bounded by `timeout`)

libzt 1.8.4 quirks handled here: zts_tcp_client/zts_tcp_server overwrite their fd with zts_connect's/zts_bind's
0 return (they only work for socket 0), so sockets are made with zts_bsd_socket + a non-blocking zts_bsd_connect
asked again until connected (zts_connect ignores its timeout on a blocking socket, and lwIP's poll crashes
libzt: see _connect) / zts_bind + zts_bsd_listen + zts_accept; zts_accept
insists on an address buffer length of exactly 46. The library's stdout is redirected to stderr so that nothing
it prints can corrupt the JSON channel.
"""
from __future__ import annotations

import argparse
import ctypes as C
import json
import os
import sys
import threading
import time
import traceback

AF_INET, AF_INET6, SOCK_STREAM = 0x02, 0x0A, 0x01
ADDRSTRLEN = 46  # ZTS_INET6_ADDRSTRLEN; zts_accept rejects any other length
NAME_LEN = 127  # ZTS_MAX_NETWORK_SHORT_NAME_LENGTH; zts_net_get_name rejects any other length
EISCONN, EALREADY, EINPROGRESS = 106, 114, 115
NET_STATUS = {0: "REQUESTING_CONFIGURATION", 1: "OK", 2: "ACCESS_DENIED", 3: "NOT_FOUND", 4: "PORT_ERROR",
              5: "CLIENT_TOO_OLD"}


class RootSet(C.Structure):  # zts_root_set_t: ZTS_MAX_NUM_ROOTS=16, ZTS_MAX_ENDPOINTS_PER_ROOT=32
    _fields_ = [("public_id_str", C.c_char_p * 16), ("endpoint_ip_str", (C.c_char_p * 32) * 16)]


def load(shim: str, lib: str) -> C.CDLL:
    C.CDLL(shim, mode=C.RTLD_GLOBAL)
    z = C.CDLL(lib, mode=C.RTLD_GLOBAL)
    sig = {
        "zts_id_new": (C.c_int, [C.c_char_p, C.POINTER(C.c_uint)]),
        "zts_util_sign_root_set": (C.c_int, [C.c_char_p, C.POINTER(C.c_uint), C.c_char_p, C.POINTER(C.c_uint),
                                             C.c_char_p, C.POINTER(C.c_uint), C.c_uint64, C.c_uint64,
                                             C.POINTER(RootSet)]),
        "zts_init_from_storage": (C.c_int, [C.c_char_p]),
        "zts_init_set_roots": (C.c_int, [C.c_void_p, C.c_uint]),
        "zts_init_set_port": (C.c_int, [C.c_ushort]),
        "zts_init_allow_secondary_port": (C.c_int, [C.c_uint]),
        "zts_init_allow_port_mapping": (C.c_int, [C.c_uint]),
        "zts_init_allow_roots_cache": (C.c_int, [C.c_uint]),
        "zts_node_start": (C.c_int, []),
        "zts_node_is_online": (C.c_int, []),
        "zts_node_get_id": (C.c_uint64, []),
        "zts_node_get_port": (C.c_int, []),
        "zts_net_join": (C.c_int, [C.c_uint64]),
        "zts_net_leave": (C.c_int, [C.c_uint64]),
        "zts_net_get_status": (C.c_int, [C.c_uint64]),
        "zts_net_transport_is_ready": (C.c_int, [C.c_uint64]),
        "zts_addr_is_assigned": (C.c_int, [C.c_uint64, C.c_uint]),
        "zts_addr_get_str": (C.c_int, [C.c_uint64, C.c_uint, C.c_char_p, C.c_uint]),
        "zts_core_lock_obtain": (C.c_int, []),
        "zts_core_lock_release": (C.c_int, []),
        "zts_core_query_addr_count": (C.c_int, [C.c_uint64]),
        "zts_core_query_addr": (C.c_int, [C.c_uint64, C.c_uint, C.c_char_p, C.c_uint]),
        "zts_core_query_route_count": (C.c_int, [C.c_uint64]),
        "zts_core_query_path_count": (C.c_int, [C.c_uint64]),
        "zts_core_query_path": (C.c_int, [C.c_uint64, C.c_uint, C.c_char_p, C.c_uint]),
        "zts_core_query_route": (C.c_int, [C.c_uint64, C.c_uint, C.c_char_p, C.c_char_p, C.c_uint,
                                           C.POINTER(C.c_uint16), C.POINTER(C.c_uint16)]),
        "zts_net_get_name": (C.c_int, [C.c_uint64, C.c_char_p, C.c_uint]),
        "zts_net_get_mtu": (C.c_int, [C.c_uint64]),
        "zts_util_ipstr_to_saddr": (C.c_int, [C.c_char_p, C.c_ushort, C.c_void_p, C.POINTER(C.c_uint32)]),
        "zts_set_blocking": (C.c_int, [C.c_int, C.c_int]),
        "zts_bsd_connect": (C.c_int, [C.c_int, C.c_void_p, C.c_uint32]),
        "zts_bsd_socket": (C.c_int, [C.c_int, C.c_int, C.c_int]),
        "zts_bind": (C.c_int, [C.c_int, C.c_char_p, C.c_ushort]),
        "zts_bsd_listen": (C.c_int, [C.c_int, C.c_int]),
        "zts_accept": (C.c_int, [C.c_int, C.c_char_p, C.c_int, C.POINTER(C.c_ushort)]),
        "zts_connect": (C.c_int, [C.c_int, C.c_char_p, C.c_ushort, C.c_int]),
        "zts_send": (C.c_ssize_t, [C.c_int, C.c_void_p, C.c_size_t, C.c_int]),
        "zts_recv": (C.c_ssize_t, [C.c_int, C.c_void_p, C.c_size_t, C.c_int]),
        "zts_close": (C.c_int, [C.c_int]),
        "zts_set_recv_timeout": (C.c_int, [C.c_int, C.c_int, C.c_int]),
        "zts_set_send_timeout": (C.c_int, [C.c_int, C.c_int, C.c_int]),
    }
    for name, (res, args) in sig.items():
        f = getattr(z, name)
        f.restype, f.argtypes = res, args
    return z


class Node:
    def __init__(self, z: C.CDLL) -> None:
        self.z = z
        self.errno = C.c_int.in_dll(z, "zts_errno")

    def _check(self, what: str, rc: int) -> int:
        if rc < 0:
            raise RuntimeError(f"{what} returned {rc} (zts_errno {self.errno.value})")
        return rc

    # -- commands ---------------------------------------------------------------------------------------
    def make_root(self, storage: str, endpoints: list[str], world_id: int = 0xC0FFEE) -> dict:
        z = self.z
        os.makedirs(storage, exist_ok=True)
        buf, n = C.create_string_buffer(384), C.c_uint(384)
        self._check("zts_id_new", z.zts_id_new(buf, C.byref(n)))
        secret = buf.raw[:n.value].rstrip(b"\0").decode()
        public = ":".join(secret.split(":")[:3])
        with open(os.path.join(storage, "identity.secret"), "w") as f:
            f.write(secret)
        with open(os.path.join(storage, "identity.public"), "w") as f:
            f.write(public)
        spec = RootSet()
        keep = [public.encode()] + [e.encode() for e in endpoints]
        spec.public_id_str[0] = keep[0]
        for j, e in enumerate(keep[1:]):
            spec.endpoint_ip_str[0][j] = e
        out, out_n = C.create_string_buffer(4096), C.c_uint(4096)
        prev, prev_n = C.create_string_buffer(256), C.c_uint(256)
        cur, cur_n = C.create_string_buffer(256), C.c_uint(256)
        cwd = os.getcwd()
        os.chdir(storage)  # zts_util_sign_root_set reads previous.c25519/current.c25519 from the cwd if present
        try:
            self._check("zts_util_sign_root_set", z.zts_util_sign_root_set(
                out, C.byref(out_n), prev, C.byref(prev_n), cur, C.byref(cur_n), world_id, int(time.time() * 1000),
                C.byref(spec)))
        finally:
            os.chdir(cwd)
        return {"identity_public": public, "node_id": public.split(":")[0], "planet": out.raw[:out_n.value].hex()}

    def start(self, storage: str, port: int, planet: str | None = None) -> dict:
        z = self.z
        os.makedirs(storage, exist_ok=True)
        self._check("zts_init_from_storage", z.zts_init_from_storage(storage.encode()))
        if planet:
            data = bytes.fromhex(planet)
            self._planet = C.create_string_buffer(data, len(data))
            self._check("zts_init_set_roots", z.zts_init_set_roots(self._planet, len(data)))
        self._check("zts_init_set_port", z.zts_init_set_port(port))
        self._check("zts_init_allow_secondary_port", z.zts_init_allow_secondary_port(0))
        self._check("zts_init_allow_port_mapping", z.zts_init_allow_port_mapping(0))
        self._check("zts_node_start", z.zts_node_start())
        deadline = time.monotonic() + 10
        # zts_node_get_id returns ZTS_ERR_SERVICE (-2, i.e. 0xfffffffffffffffe as uint64) until the node is up
        while not 0 < z.zts_node_get_id() < 1 << 40:
            if time.monotonic() > deadline:
                raise TimeoutError("node did not come up within 10 s")
            time.sleep(0.05)
        try:  # written by libzt at start (zts_init_from_storage)
            with open(os.path.join(storage, "identity.public")) as f:
                public = f.read().strip()
        except OSError:
            public = None
        return {"node_id": f"{z.zts_node_get_id():010x}", "port": z.zts_node_get_port(), "identity_public": public}

    def wait_online(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.z.zts_node_is_online() == 1:
                return {"online": True}
            time.sleep(0.1)
        return {"online": False}

    def join(self, nwid: str) -> dict:
        self._check("zts_net_join", self.z.zts_net_join(int(nwid, 16)))
        return {}

    def leave(self, nwid: str) -> dict:
        self._check("zts_net_leave", self.z.zts_net_leave(int(nwid, 16)))
        return {}

    def _addr(self, nwid: int, family: int) -> str | None:
        buf = C.create_string_buffer(ADDRSTRLEN)
        if self.z.zts_addr_get_str(nwid, family, buf, ADDRSTRLEN) < 0:
            return None
        return buf.value.decode() or None

    def _net(self, nwid_hex: str) -> dict:
        z, nwid = self.z, int(nwid_hex, 16)
        st = z.zts_net_get_status(nwid)
        return {"nwid": nwid_hex, "status": NET_STATUS.get(st, st), "status_code": st,
                "transport_ready": z.zts_net_transport_is_ready(nwid) == 1,
                "ipv4": self._addr(nwid, AF_INET), "ipv6": self._addr(nwid, AF_INET6)}

    def net_info(self, nwid: str) -> dict:
        """Name, MTU, addresses and routes of the network's current config. The zts_core_query_* calls read
        libzt's map of networks unlocked, so they run under zts_core_lock_obtain (the map's mutex, which is not
        recursive: zts_net_get_name, which takes it itself, runs outside). A route's target is its address
        only (libzt 1.8.4 drops the prefix length); `via` is "0.0.0.0" for none."""
        z, n = self.z, int(nwid, 16)
        out = self._net(nwid)
        name = C.create_string_buffer(NAME_LEN + 1)
        out["name"] = name.value.decode(errors="replace") if z.zts_net_get_name(n, name, NAME_LEN) == 0 else None
        out["mtu"] = z.zts_net_get_mtu(n)
        addrs, routes = [], []
        self._check("zts_core_lock_obtain", z.zts_core_lock_obtain())
        try:
            for i in range(max(0, z.zts_core_query_addr_count(n))):
                buf = C.create_string_buffer(64)
                if z.zts_core_query_addr(n, i, buf, 64) == 0:
                    addrs.append(buf.value.decode())
            for i in range(max(0, z.zts_core_query_route_count(n))):
                target, via = C.create_string_buffer(64), C.create_string_buffer(64)
                flags, metric = C.c_uint16(0), C.c_uint16(0)
                if z.zts_core_query_route(n, i, target, via, 64, C.byref(flags), C.byref(metric)) == 0:
                    routes.append({"target": target.value.decode(), "via": via.value.decode(),
                                   "flags": flags.value, "metric": metric.value})
        finally:
            z.zts_core_lock_release()
        out["addresses"], out["routes"] = addrs, routes
        return {"net": out}

    def paths(self, peer: str) -> dict:
        """The physical paths this node has to a peer (10-hex address), as libzt reports them, best first is not
        guaranteed: in its own order."""
        z, n = self.z, int(peer, 16)
        found = []
        self._check("zts_core_lock_obtain", z.zts_core_lock_obtain())
        try:
            for i in range(max(0, z.zts_core_query_path_count(n))):
                buf = C.create_string_buffer(64)
                if z.zts_core_query_path(n, i, buf, 64) == 0:
                    found.append(buf.value.decode())
        finally:
            z.zts_core_lock_release()
        return {"paths": found}

    def status(self, nwid: str | None = None) -> dict:
        out = {"node_id": f"{self.z.zts_node_get_id():010x}", "online": self.z.zts_node_is_online() == 1}
        if nwid:
            out["net"] = self._net(nwid)
        return out

    def wait_network(self, nwid: str, family: str = "inet6", timeout: float = 60) -> dict:
        key = "ipv6" if family == "inet6" else "ipv4"
        deadline = time.monotonic() + timeout
        net = self._net(nwid)
        while time.monotonic() < deadline:
            net = self._net(nwid)
            if net["transport_ready"] and net[key]:
                return {"net": net}
            time.sleep(0.1)
        raise TimeoutError(f"network {nwid} not ready with {family} after {timeout}s: {net}")

    def listen(self, port: int, addr: str = "::") -> dict:
        z = self.z
        family = AF_INET6 if ":" in addr else AF_INET
        fd = self._check("zts_bsd_socket", z.zts_bsd_socket(family, SOCK_STREAM, 0))
        self._check("zts_bind", z.zts_bind(fd, addr.encode(), port))
        self._check("zts_bsd_listen", z.zts_bsd_listen(fd, 8))
        threading.Thread(target=self._accept_loop, args=(fd,), daemon=True).start()
        return {"fd": fd}

    def _accept_loop(self, lfd: int) -> None:
        while True:
            buf, port = C.create_string_buffer(ADDRSTRLEN), C.c_ushort(0)
            fd = self.z.zts_accept(lfd, buf, ADDRSTRLEN, C.byref(port))
            if fd < 0:
                time.sleep(0.1)
                continue
            log(f"accepted from {buf.value.decode()}/{port.value} fd {fd}")
            threading.Thread(target=self._echo_conn, args=(fd,), daemon=True).start()

    def _echo_conn(self, fd: int) -> None:
        buf = C.create_string_buffer(4096)
        try:
            while True:
                n = self.z.zts_recv(fd, buf, len(buf), 0)
                if n <= 0:
                    return
                sent = 0
                while sent < n:
                    m = self.z.zts_send(fd, C.byref(buf, sent), n - sent, 0)
                    if m <= 0:
                        return
                    sent += m
        finally:
            self.z.zts_close(fd)

    def _connect(self, family: int, addr: str, port: int, timeout: float) -> int:
        """A connected socket within `timeout` seconds. zts_connect ignores its timeout on a blocking socket (it
        waits as long as lwIP retries SYNs), and lwIP's poll crashes libzt 1.8.4 (a poll waiter left on its
        select list is walked when the SYN-ACK arrives: SIGSEGV in select_check_waiters), so: a non-blocking
        zts_bsd_connect asked again every 50 ms until it says EISCONN. A failed attempt (e.g. EHOSTUNREACH while
        the neighbour is not resolved yet, or a reset) starts over with a new socket, as zts_connect retries."""
        z = self.z
        ss, n = C.create_string_buffer(128), C.c_uint32(128)
        self._check("zts_util_ipstr_to_saddr", z.zts_util_ipstr_to_saddr(addr.encode(), port, ss, C.byref(n)))
        deadline = time.monotonic() + timeout
        why = "no attempt"
        while time.monotonic() < deadline:
            fd = self._check("zts_bsd_socket", z.zts_bsd_socket(family, SOCK_STREAM, 0))
            self._check("zts_set_blocking", z.zts_set_blocking(fd, 0))
            while time.monotonic() < deadline:
                if z.zts_bsd_connect(fd, ss, n) == 0 or self.errno.value == EISCONN:
                    self._check("zts_set_blocking", z.zts_set_blocking(fd, 1))
                    return fd
                if self.errno.value not in (EINPROGRESS, EALREADY):
                    why = f"zts_errno {self.errno.value}"
                    break
                time.sleep(0.05)
            z.zts_close(fd)
            time.sleep(0.25)
        raise TimeoutError(f"connect to {addr}/{port}: not connected within {timeout}s (last: {why})")

    def echo(self, addr: str, port: int, data: str, timeout: float = 30) -> dict:
        z = self.z
        family = AF_INET6 if ":" in addr else AF_INET
        t0 = time.monotonic()
        fd = self._connect(family, addr, port, timeout)
        try:
            t_conn = time.monotonic() - t0
            z.zts_set_recv_timeout(fd, max(1, int(timeout)), 0)
            z.zts_set_send_timeout(fd, max(1, int(timeout)), 0)
            payload = data.encode()
            self._check("zts_send", z.zts_send(fd, payload, len(payload), 0))
            got = b""
            buf = C.create_string_buffer(4096)
            while len(got) < len(payload):
                n = z.zts_recv(fd, buf, len(buf), 0)
                if n <= 0:
                    raise RuntimeError(f"zts_recv returned {n} (zts_errno {self.errno.value}) after {got!r}")
                got += buf.raw[:n]
            return {"data": got.decode(), "connect_s": round(t_conn, 3), "total_s": round(time.monotonic() - t0, 3)}
        finally:
            z.zts_close(fd)


def log(msg: str) -> None:
    print(f"[node {os.getpid()}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shim", required=True)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--role", default="member", help="only a label for logs: root or member")
    args = ap.parse_args()
    # The JSON channel is a private copy of stdout; fd 1 (whatever libzt prints) goes to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    node = Node(load(args.shim, args.lib))
    lock = threading.Lock()

    def answer(msg: dict) -> None:
        with lock:
            out.write(json.dumps(msg) + "\n")

    def run(req: dict) -> None:
        rid = req.pop("id", None)
        cmd = req.pop("cmd", None)
        req.pop("timeout_cmd", None)
        try:
            fn = getattr(node, cmd) if cmd and not cmd.startswith("_") else None
            if fn is None:
                raise ValueError(f"unknown command {cmd!r}")
            answer({"id": rid, "ok": True, **fn(**req)})
        except Exception as e:  # noqa: BLE001 - every failure goes back to the test as an answer
            log(traceback.format_exc())
            answer({"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}"})

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
        except ValueError as e:
            answer({"id": None, "ok": False, "error": f"bad json: {e}"})
            continue
        # Each command runs in its own thread; the caller enforces the time limit, so a call stuck inside
        # libzt cannot stop this loop from noticing that stdin has closed.
        threading.Thread(target=run, args=(req,), daemon=True).start()
    os._exit(0)  # stdin closed: leave without zts_node_stop (it can block); the kernel frees the sockets


if __name__ == "__main__":
    main()
