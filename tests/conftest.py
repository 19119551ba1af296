"""Fixtures shared by the real-process test modules."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.identities import next_controller_identity
from tests.proc_cluster import ProcCluster


@pytest.fixture(autouse=True)
def _pooled_controller_identities(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clusters started in-process take their controller identity from a pool of pre-generated ones
    (tests/identities.py): generating one searches a memory-hard hash, ~1-3 s per cluster in pure Python.
    (Controllers run as processes still generate theirs.)"""
    monkeypatch.setattr("hactl.server.controller.new_controller_identity", next_controller_identity)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[..., ProcCluster]]:
    """cluster(**config) starts three real controllers (config sections override dev init's; node_config: per
    node, on top); all are killed at the end of the test."""
    made: list[ProcCluster] = []

    def make(node_config: dict[str, dict] | None = None, **config: dict) -> ProcCluster:
        c = ProcCluster(tmp_path / f"c{len(made)}", 3, config=config, node_config=node_config)
        made.append(c)
        c.start_all()
        return c
    yield make
    for c in made:
        c.close()
