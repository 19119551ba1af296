"""netem's stand-in where the kernel has no sch_netem: delay with jitter, loss and reordering of the packets an
NFQUEUE rule hands to this process (run inside a node's namespace by ChaosNet.netem; stdlib only, raw netlink).

    python delayer.py QUEUE DELAY_MS JITTER_MS LOSS_PCT REORDER_PCT SEED

Each queued packet is dropped with probability LOSS_PCT, released at once with probability REORDER_PCT (it
overtakes those held: netem's reordering), else released DELAY_MS +- JITTER_MS later (jitter reorders too, as
netem's does without rate). Only metadata is copied to user space; verdicts name packets by id. The rules use
--queue-bypass, so packets pass unharmed if this process is gone. Prints "ready" once bound.
"""
from __future__ import annotations

import heapq
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


def _msg(queue: int, msg: int, attrs: bytes, seq: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, NLM_F_REQUEST, seq, 0) + body


def _packet_ids(data: bytes) -> list[int]:
    """The packet ids in one recv of netlink messages (packet messages only)."""
    ids, off = [], 0
    while off + 16 <= len(data):
        length, mtype = struct.unpack_from("=IH", data, off)
        if length < 16:
            break
        if mtype == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            a = off + 20  # nlmsghdr + nfgenmsg
            while a + 4 <= off + length:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, a + 4)[0])
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
    return ids


def main(argv: list[str]) -> None:
    queue, delay, jitter, loss, reorder, seed = int(argv[0]), *map(float, argv[1:5]), int(argv[5])
    rng = random.Random(seed)
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((0, 0))
    s.send(_msg(queue, NFQNL_MSG_CONFIG, _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0))))
    s.send(_msg(queue, NFQNL_MSG_CONFIG, _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 10000))))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    held: list[tuple[float, int, int]] = []  # (release time, order, packet id)
    order = 0

    def verdict(pid: int, v: int) -> None:
        s.send(_msg(queue, NFQNL_MSG_VERDICT, _attr(NFQA_VERDICT_HDR, struct.pack("!II", v, pid))))
    while True:
        now = time.monotonic()
        while held and held[0][0] <= now:
            verdict(heapq.heappop(held)[2], NF_ACCEPT)
        wait = max(0.0, held[0][0] - now) if held else 1.0
        if not select.select([s], [], [], wait)[0]:
            continue
        try:
            data = s.recv(1 << 16)
        except OSError:  # ENOBUFS: the kernel dropped some (as a full link would); carry on
            continue
        for pid in _packet_ids(data):
            r = rng.random() * 100
            if r < loss:
                verdict(pid, NF_DROP)
            elif rng.random() * 100 < reorder:
                verdict(pid, NF_ACCEPT)
            else:
                order += 1
                hold = max(0.0, delay + rng.uniform(-jitter, jitter)) / 1000
                heapq.heappush(held, (time.monotonic() + hold, order, pid))


if __name__ == "__main__":
    main(sys.argv[1:])
