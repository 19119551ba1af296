"""Fixtures shared by the real-process test modules."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.proc_cluster import ProcCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[..., ProcCluster]]:
    """cluster(**config) starts three real controllers (config sections override dev init's); all are killed
    at the end of the test."""
    made: list[ProcCluster] = []

    def make(**config: dict) -> ProcCluster:
        c = ProcCluster(tmp_path / f"c{len(made)}", 3, config=config)
        made.append(c)
        c.start_all()
        return c
    yield make
    for c in made:
        c.close()
