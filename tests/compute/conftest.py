"""A local Ray cluster shared by every Ray test of the session (starting one takes seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest


class RayCluster(NamedTuple):
    address: str
    state_dir: Path  # the state directory whose local cluster this is


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    pytest.importorskip("ray")
    from salvia.compute.ray_executor import RayExecutor, stop_local_cluster

    state_dir = tmp_path_factory.mktemp("ray-cluster")
    # Held open for the session, so the tests' executors share this process's connection
    # instead of connecting and disconnecting each time.
    holder = RayExecutor(state_dir)
    try:
        yield RayCluster(holder.address, state_dir)
    finally:
        holder.close()
        stop_local_cluster(state_dir)
