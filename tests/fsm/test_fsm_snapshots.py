"""The snapshot store: consistent creation while applies continue, retention, verification and corrupt-snapshot
fallback, streaming out and receiving in chunks, restoring into place."""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from hactl.fsm import commands as C
from hactl.fsm.machine import StateMachine
from hactl.fsm.membership import Membership
from hactl.snapshots.store import SnapshotError, SnapshotInfo, SnapshotStore


def fill(drv: Any, members: int = 20) -> str:
    nwid = drv.nwid(drv.pool_net)
    for i in range(1, members + 1):
        assert drv.member(nwid, f"{i:010x}", {"authorized": i % 2 == 0}).ok
    return nwid


def snap(store: SnapshotStore, m: StateMachine, **kw: Any) -> SnapshotInfo:
    args: dict[str, Any] = dict(cluster_id="cluster-1", timeline_id="timeline-1", created=1700000000.5)
    args.update(kw)
    return store.create(m, **args)


def dump_of(path: Path) -> list[dict[str, Any]]:
    with StateMachine(path, readonly=True, lock=False) as m:
        return list(m.iter_model())


def test_create_writes_data_and_meta(drv: Any, tmp_path: Path) -> None:
    drv.membership(("n1", "n2", "n3"), addresses={"n1": "h1:1", "n2": "h2:2", "n3": "h3:3"})
    fill(drv)
    store = SnapshotStore(tmp_path / "snapshots")
    info = snap(store, drv.m)
    assert (info.index, info.term) == drv.m.applied()
    assert info.path == tmp_path / "snapshots" / f"{info.index}-{info.term}"
    assert sorted(p.name for p in info.path.iterdir()) == ["ctrl.db", "meta.json"]
    data = (info.path / "ctrl.db").read_bytes()
    assert info.size == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
    meta = json.loads((info.path / "meta.json").read_text())
    assert meta == {"format": 1, "index": info.index, "term": info.term, "conf": {"voters": ["n1", "n2", "n3"],
                    "learners": [], "addresses": {"n1": "h1:1", "n2": "h2:2", "n3": "h3:3"}}, "cluster_id": "cluster-1", "timeline_id": "timeline-1",
                    "sha256": info.sha256, "size": info.size, "created": 1700000000.5}
    assert dump_of(info.data_path) == list(drv.m.iter_model())
    for private in (info.data_path, Path(drv.m.path), info.path):  # the signing key is in there
        assert private.stat().st_mode & 0o077 == 0, private
    store.verify(info)
    assert store.list() == [info] and store.newest_valid() == info
    assert snap(store, drv.m) == info  # same index: the existing snapshot stands
    assert store.names() == [info.name]


def test_meta_conf_is_the_membership_the_copy_holds(drv: Any, tmp_path: Path) -> None:
    """The membership comes from the copy's own transaction: the one in force at exactly the snapshot index."""
    drv.membership(("a",), ("b",), {"a": "h:1", "b": "h:2"})
    fill(drv, 3)
    store = SnapshotStore(tmp_path / "s")
    info = snap(store, drv.m)
    assert info.conf == {"voters": ["a"], "learners": ["b"], "addresses": {"a": "h:1", "b": "h:2"}}
    drv.membership(("a", "b"), (), {"a": "h:1", "b": "h:2"})  # the change is the last entry applied
    info2 = snap(store, drv.m)
    assert info2.index == info.index + 1 and info2.conf["voters"] == ["a", "b"] and info2.conf["learners"] == []
    assert drv.m.membership() == Membership(("a", "b"), (), {"a": "h:1", "b": "h:2"})


def test_retention_keeps_the_newest(drv: Any, tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots", retain=3)
    nwid = drv.nwid()
    made = []
    for i in range(6):
        assert drv.member(nwid, f"{i + 1:010x}").ok
        made.append(snap(store, drv.m).name)
    assert store.names() == made[-3:]
    assert [i.name for i in store.list()] == made[-3:]


def test_snapshot_is_consistent_while_applies_continue(drv: Any, tmp_path: Path) -> None:
    nwid = drv.nwid()
    store = SnapshotStore(tmp_path / "snapshots", retain=50)
    stop = threading.Event()
    log: list[tuple[int, int, bytes]] = list()
    errors: list[BaseException] = []

    def writer() -> None:  # the apply loop, on its own thread, in small batches
        try:
            i = 0
            while not stop.is_set() or i < 300:
                batch = []
                for _ in range(10):
                    i += 1
                    drv.index += 1
                    batch.append((drv.index, 1, C.build_member_update(f"w{i}", 1, nwid, f"{i:010x}",
                                                                      {"name": str(i)})))
                log.extend(batch)
                drv.m.apply_batch(batch)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    base = drv.index
    t = threading.Thread(target=writer)
    t.start()
    infos = []
    for _ in range(5):
        infos.append(snap(store, drv.m))
    stop.set()
    t.join()
    assert not errors
    for info in infos:
        # The copy holds exactly the entries up to its recorded index: as many members as applied by then.
        members = [x for x in dump_of(info.data_path) if x["objtype"] == "member"]
        assert len(members) == info.index - base
        assert members[-1]["name"] == str(info.index - base) if members else True


def corrupt(info: SnapshotInfo) -> None:
    data = bytearray(info.data_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    info.data_path.write_bytes(bytes(data))


def test_corrupt_or_truncated_snapshots_are_skipped_for_older_ones(drv: Any, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    nwid = drv.nwid()
    infos = []
    for i in range(4):
        assert drv.member(nwid, f"{i + 1:010x}").ok
        infos.append(snap(store, drv.m))
    corrupt(infos[3])
    with open(infos[2].data_path, "r+b") as f:
        f.truncate(infos[2].size // 2)
    (infos[1].path / "meta.json").write_text("{not json")  # type: ignore[operator]
    with pytest.raises(SnapshotError, match=r"ctrl\.db: sha256"):
        store.verify(infos[3])
    with pytest.raises(SnapshotError, match=r"ctrl\.db: .* bytes, meta.json says .*truncated"):
        store.verify(infos[2])
    with caplog.at_level(logging.WARNING, logger="hactl.snapshots"):
        assert store.newest_valid() == infos[0]
    text = caplog.text
    assert infos[3].name in text and infos[2].name in text and "meta.json" in text
    assert [i.name for i in store.list()] == [infos[0].name, infos[2].name, infos[3].name]
    corrupt(infos[0])
    assert store.newest_valid() is None
    (infos[0].path / "ctrl.db").unlink()  # type: ignore[operator]
    with pytest.raises(SnapshotError, match="missing"):
        store.verify(infos[0])


def test_meta_naming_another_snapshot_is_invalid(drv: Any, tmp_path: Path) -> None:
    fill(drv, 2)
    store = SnapshotStore(tmp_path / "snapshots")
    info = snap(store, drv.m)
    info.path.rename(info.path.with_name("999-9"))  # type: ignore[union-attr]
    assert store.newest_valid() is None
    with pytest.raises(SnapshotError, match="describes"):
        store.load("999-9")


def test_stream_out_and_receive_in_chunks(drv: Any, tmp_path: Path) -> None:
    fill(drv, 50)
    src = SnapshotStore(tmp_path / "a")
    info = snap(src, drv.m)
    dst = SnapshotStore(tmp_path / "b")
    with dst.receiver(info.to_meta()) as rx:
        for chunk in src.open_chunks(info, chunk_size=4096):
            assert len(chunk) <= 4096
            rx.write(chunk)
        got = rx.finish()
    assert got.name == info.name and got.sha256 == info.sha256 and got.path == tmp_path / "b" / info.name
    dst.verify(got)
    assert dst.newest_valid() == got
    assert [p.name for p in dst.dir.iterdir()] == [info.name]  # staging renamed away


def test_receiver_refuses_bad_data_and_cleans_up(drv: Any, tmp_path: Path) -> None:
    fill(drv, 5)
    src = SnapshotStore(tmp_path / "a")
    info = snap(src, drv.m)
    data = info.data_path.read_bytes()
    dst = SnapshotStore(tmp_path / "b")
    rx = dst.receiver(info.to_meta())
    rx.write(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(SnapshotError, match="sha256"):
        rx.finish()
    rx = dst.receiver(info.to_meta())
    rx.write(data[:100])
    with pytest.raises(SnapshotError, match="received 100 of"):
        rx.finish()
    rx = dst.receiver(info.to_meta())
    with pytest.raises(SnapshotError, match="more than"):
        rx.write(data + b"x")
    with dst.receiver(info.to_meta()) as rx:
        rx.write(data[:10])  # abandoned: the context manager aborts
    rx = dst.receiver(info.to_meta())
    rx.abort()
    assert list(dst.dir.iterdir()) == [] and dst.newest_valid() is None
    with pytest.raises(SnapshotError, match="sha256"):
        dst.receiver({**info.to_meta(), "sha256": "xyz"})
    with pytest.raises(SnapshotError, match="format"):
        dst.receiver({**info.to_meta(), "format": 7})


def test_streaming_a_snapshot_changed_underneath_fails(drv: Any, tmp_path: Path) -> None:
    fill(drv, 5)
    store = SnapshotStore(tmp_path / "a")
    info = snap(store, drv.m)
    corrupt(info)
    with pytest.raises(SnapshotError, match="corrupt while streaming"):
        for _ in store.open_chunks(info):
            pass


def test_staging_leftovers_are_removed_on_open(tmp_path: Path) -> None:
    d = tmp_path / "snapshots"
    (d / ".tmp-abc").mkdir(parents=True)
    (d / ".recv-xyz").mkdir()
    (d / ".recv-xyz" / "ctrl.db").write_bytes(b"partial")
    (d / "12-3").mkdir()
    SnapshotStore(d, readonly=True)
    assert sorted(p.name for p in d.iterdir()) == [".recv-xyz", ".tmp-abc", "12-3"]
    SnapshotStore(d)
    assert [p.name for p in d.iterdir()] == ["12-3"]


def test_readonly_store_refuses_writes(drv: Any, tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "none", readonly=True)
    assert store.names() == [] and not (tmp_path / "none").exists()
    with pytest.raises(SnapshotError, match="read-only"):
        snap(store, drv.m)


def test_restore_to_replaces_ctrl_db(drv: Any, tmp_path: Path) -> None:
    fill(drv, 10)
    store = SnapshotStore(tmp_path / "snapshots")
    info = snap(store, drv.m)
    target = tmp_path / "node2" / "ctrl.db"
    target.parent.mkdir()
    with StateMachine(target) as other:
        other.apply(1, 1, C.build_noop("x", 1))
    assert Path(f"{target}-lock").exists()
    store.restore_to(info, target)
    assert target.stat().st_mode & 0o077 == 0
    assert not Path(f"{target}-lock").exists() and not target.with_name("ctrl.db.restoring").exists()
    with StateMachine(target) as m:
        assert m.applied() == (info.index, info.term)
        assert list(m.iter_model()) == list(drv.m.iter_model())
    corrupt(info)
    with pytest.raises(SnapshotError, match="sha256"):
        store.restore_to(info, tmp_path / "node2" / "other.db")
    assert not (tmp_path / "node2" / "other.db").exists()
