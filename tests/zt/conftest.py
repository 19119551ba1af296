"""Fixtures of the real-ZeroTier tests."""
from __future__ import annotations

import pytest

from tests.zt.libzt import fetch


@pytest.fixture(scope="session")
def libzt() -> fetch.Libzt:
    """libzt 1.8.4 ready to load (fetched from PyPI and its shim built once). The tests fail, never skip, without
    it: a machine that cannot run real ZeroTier must not pass for one that did."""
    try:
        return fetch.ensure()
    except fetch.LibztUnavailable as e:
        pytest.fail(f"libzt 1.8.4 is needed for the real-ZeroTier tests and could not be prepared:\n{e}")
