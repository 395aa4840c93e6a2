from __future__ import annotations

import pytest

from salvia.compute.instance_types import CATALOG, host_cpu_count, host_memory, lookup
from salvia.errors import ValidationException


def test_known_types_carry_awss_figures() -> None:
    assert (lookup("ml.m5.xlarge").vcpus, lookup("ml.m5.xlarge").memory_mib) == (4, 16 * 1024)
    assert (lookup("ml.c5.large").vcpus, lookup("ml.c5.large").memory_mib) == (2, 4 * 1024)
    assert lookup("ml.r5.24xlarge").memory_mib == 768 * 1024
    assert lookup("ml.p3.16xlarge").gpus == 8
    assert lookup("ml.g4dn.12xlarge").gpus == 4
    assert lookup("ml.m5.large").gpus == 0
    assert all(name == t.name for name, t in CATALOG.items())


def test_local_types_have_no_limits() -> None:
    assert lookup("local").host_limits() == (None, None)
    assert lookup("local_gpu").host_limits() == (None, None)
    assert lookup("local").gpus == 0
    assert lookup("local_gpu").gpus is None  # all of the host's


def test_limits_are_capped_by_the_host() -> None:
    big = lookup("ml.m5.24xlarge")
    assert big.host_limits(host_cpus=2, host_memory_mib=4096) == (2, 4096)
    small = lookup("ml.t3.medium")
    assert small.host_limits(host_cpus=64, host_memory_mib=1 << 20) == (2, 4096)
    vcpus, memory = big.host_limits()
    assert vcpus == min(96, host_cpu_count())
    assert memory == min(384 * 1024, host_memory())
    assert (big.vcpus_on_host, big.memory_mib_on_host) == (vcpus, memory)


def test_an_unknown_type_names_itself_and_some_valid_ones() -> None:
    with pytest.raises(ValidationException) as raised:
        lookup("ml.m5.huge")
    assert "ml.m5.huge" in raised.value.message
    assert "ml.m5.large" in raised.value.message
