"""Fixtures for the API tests (the controllers, server and client live in api_helpers.py).

`async def` tests run in a fresh event loop each (pytest_pyfunc_call below); fixtures that return an
`AsyncResource` are entered inside that loop, so the controllers, server and client all live in the test's loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
from pathlib import Path

import pytest

from api_helpers import ApiEnv, AsyncResource

TEST_TIMEOUT = 60.0


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture
def env(tmp_path: Path) -> ApiEnv:
    """A real single-node controller: the leader of an initialised cluster, serving the API."""
    return ApiEnv(tmp_path / "env")


@pytest.fixture
def noleader_env(tmp_path: Path) -> ApiEnv:
    """A real controller whose initial cluster has a second voter that never runs: it never elects a leader, so
    the cluster is never initialised."""
    return ApiEnv(tmp_path / "noleader", state="never_elected")


@pytest.fixture
def quorum_lost_env(tmp_path: Path) -> ApiEnv:
    """A real controller of an initialised two-voter cluster whose other voter has stopped: no leader."""
    return ApiEnv(tmp_path / "quorum-lost", state="quorum_lost")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    kwargs = {n: pyfuncitem.funcargs[n] for n in pyfuncitem._fixtureinfo.argnames}

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            for k, v in list(kwargs.items()):
                if isinstance(v, AsyncResource):
                    kwargs[k] = await stack.enter_async_context(v)
            await fn(**kwargs)

    asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT))
    return True
