"""The entityChange emitter over a real ctrl.db and a real event bus: a replay of many changes goes out in
order, in chunks that let the loop run in between, ahead of changes applied meanwhile; the cursor file records
only what the sinks wrote."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

from hactl.events.bus import EventBus, Subscription
from hactl.events.sinks import FileSink
from hactl.fsm import commands as C
from hactl.fsm.machine import StateMachine
from hactl.server import entity_events
from hactl.server.entity_events import EntityChangeEmitter
from tests.identities import bound_key

CONTROLLER = "a1b2c3d4e5"


def filled(path: Path, members: int) -> tuple[StateMachine, str]:
    m = StateMachine(path)
    m.apply(1, 1, C.build_cluster_init("init", 1, cluster_id="c", timeline_id="t", address=CONTROLLER,
                                       signing_key=bound_key(CONTROLLER), token_hash="sha256:abc"))
    nwid = m.apply(2, 1, C.build_network_create("net", 2, {"name": "n"}, start=1)).value["id"]
    m.apply_batch([(3 + i, 1, C.build_member_update(f"m{i}", 3 + i, nwid, f"{i + 1:010x}", {"name": f"m{i}"}))
                   for i in range(members)])
    return m, nwid


def test_a_long_replay_is_chunked_in_order_ahead_of_new_changes(tmp_path: Path) -> None:
    m, nwid = filled(tmp_path / "ctrl.db", 1500)
    cursor = tmp_path / "events.cursor"
    cursor.write_text(json.dumps({"index": 2, "leader": True}))  # delivered through the network's creation

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        bus = EventBus("ctrl1")
        bus.subscribe(Subscription("file", {"entityChange"}, FileSink(tmp_path / "ev.jsonl", 1 << 30, 1)))
        bus.start()
        em = EntityChangeEmitter(bus, m, cursor, lambda: True)
        seen_between: list[int] = []
        loop.call_soon(lambda: seen_between.append(bus.last_seq))  # runs after the first chunk, not at the end
        em.start(loop)
        assert bus.last_seq == entity_events.CHUNK  # the first chunk only, at once
        m.apply(1503, 1, C.build_member_update("late", 9, nwid, "00000fffff", {"name": "late"}))
        em.applied(1503)  # as the controller does on the loop after the Raft thread applied it
        while em._todo or em._draining:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        em.save()
        await bus.stop()
        return seen_between
    seen_between = asyncio.run(main())
    assert 0 < seen_between[0] < 1500
    events = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    idx = [e["metadata"]["raft_index"] for e in events]
    assert idx == list(range(3, 1504)), (idx[:5], idx[-5:])
    assert events[-1]["finalState"]["name"] == "late" and all(e["metadata"]["leader"] for e in events)
    assert json.loads(cursor.read_text()) == {"index": 1503, "leader": True}
    m.close()


def test_the_cursor_stays_behind_what_a_stuck_sink_has_not_written(tmp_path: Path) -> None:
    m, _ = filled(tmp_path / "ctrl.db", 10)
    cursor = tmp_path / "events.cursor"
    cursor.write_text(json.dumps({"index": 2, "leader": False}))

    class Stuck:
        def write(self, lines: list[str]) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            pass

    async def main() -> None:
        bus = EventBus("ctrl2")
        sub = Subscription("stuck", None, Stuck(), propagate_always=True)  # (a follower's own view)
        bus.subscribe(sub)
        em = EntityChangeEmitter(bus, m, cursor, lambda: False)
        em.start(asyncio.get_running_loop())  # queued: the drain task has not run (the bus is not started)
        em.save()
        assert json.loads(cursor.read_text())["index"] == 2  # nothing written yet: nothing claimed
        bus.start()
        await asyncio.sleep(0.2)  # the sink fails: its events are dropped and counted, so they are accounted for
        em.save()
        assert sub.dropped_total == 10 and json.loads(cursor.read_text())["index"] == 12
        await bus.stop()
    asyncio.run(main())
    m.close()
