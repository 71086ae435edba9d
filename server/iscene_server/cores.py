"""How many CPU cores this process may run on (its affinity where the OS has one, else the machine's count)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may use, at least 1."""
    if hasattr(os, "sched_getaffinity"):  # Linux: respects taskset, cgroups' cpusets and container limits
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
