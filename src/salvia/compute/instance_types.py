"""SageMaker instance types: vCPUs, memory and GPUs of each, and what they become on this host.

Figures are AWS's published specifications of the EC2 instance behind each `ml.*` type. Two local
types exist as in the SageMaker SDK's local mode: `local` (the whole host, no limits) and
`local_gpu` (the same, with the host's GPUs).

On a local host an instance gets at most what the host has (`InstanceType.host_limits`): an
instance asking for more vCPUs than the host has gets all of the host's CPUs, and its memory limit
is the type's memory capped at the host's memory. A job therefore runs on a laptop even when it
names an `ml.p3.16xlarge`; it is just slower.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from salvia.errors import ValidationException

_GIB = 1024


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int | None  # None: no limit (the local types)
    memory_mib: int | None  # None: no limit
    gpus: int | None = 0  # None: all of the host's GPUs (local_gpu)

    def host_limits(
        self, host_cpus: int | None = None, host_memory_mib: int | None = None
    ) -> tuple[int | None, int | None]:
        """(vcpus, memory_mib) for `InstanceSpec` on this host: the type's, capped by the host's."""
        cpus = host_cpus if host_cpus is not None else host_cpu_count()
        memory = host_memory_mib if host_memory_mib is not None else host_memory()
        vcpus = None if self.vcpus is None else min(self.vcpus, cpus)
        memory_mib = None if self.memory_mib is None else min(self.memory_mib, memory)
        return vcpus, memory_mib

    @property
    def vcpus_on_host(self) -> int | None:
        """The vCPUs this type gets on this host (None: no limit)."""
        return self.host_limits()[0]

    @property
    def memory_mib_on_host(self) -> int | None:
        """The memory limit this type gets on this host, in MiB (None: no limit)."""
        return self.host_limits()[1]


def host_cpu_count() -> int:
    """The CPUs this process may run on (its affinity set, which a container may narrow)."""
    return len(os.sched_getaffinity(0))


def host_memory() -> int:
    """The host's physical memory in MiB."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


def _family(prefix: str, sizes: dict[str, tuple[int, float, int]]) -> dict[str, InstanceType]:
    return {
        f"{prefix}.{size}": InstanceType(f"{prefix}.{size}", vcpus, int(gib * _GIB), gpus)
        for size, (vcpus, gib, gpus) in sizes.items()
    }


# size: (vCPUs, memory GiB, GPUs)
CATALOG: dict[str, InstanceType] = {
    "local": InstanceType("local", None, None, 0),
    "local_gpu": InstanceType("local_gpu", None, None, None),
    **_family("ml.t3", {"medium": (2, 4, 0), "large": (2, 8, 0), "xlarge": (4, 16, 0),
                        "2xlarge": (8, 32, 0)}),
    **_family("ml.m4", {"xlarge": (4, 16, 0), "2xlarge": (8, 32, 0), "4xlarge": (16, 64, 0),
                        "10xlarge": (40, 160, 0), "16xlarge": (64, 256, 0)}),
    **_family("ml.m5", {"large": (2, 8, 0), "xlarge": (4, 16, 0), "2xlarge": (8, 32, 0),
                        "4xlarge": (16, 64, 0), "12xlarge": (48, 192, 0),
                        "24xlarge": (96, 384, 0)}),
    **_family("ml.m6i", {"large": (2, 8, 0), "xlarge": (4, 16, 0), "2xlarge": (8, 32, 0),
                         "4xlarge": (16, 64, 0), "8xlarge": (32, 128, 0),
                         "12xlarge": (48, 192, 0), "16xlarge": (64, 256, 0),
                         "24xlarge": (96, 384, 0), "32xlarge": (128, 512, 0)}),
    **_family("ml.c4", {"xlarge": (4, 7.5, 0), "2xlarge": (8, 15, 0), "4xlarge": (16, 30, 0),
                        "8xlarge": (36, 60, 0)}),
    **_family("ml.c5", {"large": (2, 4, 0), "xlarge": (4, 8, 0), "2xlarge": (8, 16, 0),
                        "4xlarge": (16, 32, 0), "9xlarge": (36, 72, 0),
                        "18xlarge": (72, 144, 0)}),
    **_family("ml.c6i", {"large": (2, 4, 0), "xlarge": (4, 8, 0), "2xlarge": (8, 16, 0),
                         "4xlarge": (16, 32, 0), "8xlarge": (32, 64, 0),
                         "12xlarge": (48, 96, 0), "16xlarge": (64, 128, 0),
                         "24xlarge": (96, 192, 0), "32xlarge": (128, 256, 0)}),
    **_family("ml.r5", {"large": (2, 16, 0), "xlarge": (4, 32, 0), "2xlarge": (8, 64, 0),
                        "4xlarge": (16, 128, 0), "8xlarge": (32, 256, 0),
                        "12xlarge": (48, 384, 0), "16xlarge": (64, 512, 0),
                        "24xlarge": (96, 768, 0)}),
    **_family("ml.g4dn", {"xlarge": (4, 16, 1), "2xlarge": (8, 32, 1), "4xlarge": (16, 64, 1),
                          "8xlarge": (32, 128, 1), "12xlarge": (48, 192, 4),
                          "16xlarge": (64, 256, 1)}),
    **_family("ml.g5", {"xlarge": (4, 16, 1), "2xlarge": (8, 32, 1), "4xlarge": (16, 64, 1),
                        "8xlarge": (32, 128, 1), "12xlarge": (48, 192, 4),
                        "16xlarge": (64, 256, 1), "24xlarge": (96, 384, 4),
                        "48xlarge": (192, 768, 8)}),
    **_family("ml.p2", {"xlarge": (4, 61, 1), "8xlarge": (32, 488, 8),
                        "16xlarge": (64, 732, 16)}),
    **_family("ml.p3", {"2xlarge": (8, 61, 1), "8xlarge": (32, 244, 4),
                        "16xlarge": (64, 488, 8)}),
    **_family("ml.p3dn", {"24xlarge": (96, 768, 8)}),
}  # fmt: skip

_EXAMPLES = ("local", "ml.m5.large", "ml.m5.xlarge", "ml.c5.xlarge", "ml.g4dn.xlarge")


def lookup(instance_type: str) -> InstanceType:
    """The catalog entry for `instance_type`; `ValidationException` for a type we do not know."""
    found = CATALOG.get(instance_type)
    if found is None:
        raise ValidationException(
            f"Invalid InstanceType {instance_type!r}: not a known instance type "
            f"(for example {', '.join(_EXAMPLES)}; {len(CATALOG)} types are known)."
        )
    return found


__all__ = ["CATALOG", "InstanceType", "host_cpu_count", "host_memory", "lookup"]
