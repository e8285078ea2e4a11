"""The process's resident memory on Linux, for peaks on the CPU: revdet's ``PeakMemory`` hook
and the benchmarks (``tools/measure.py``) read it the same way. Standard library only."""

from __future__ import annotations

from typing import Optional


def status_mb(field: str) -> Optional[float]:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux; False elsewhere). ``ru_maxrss`` cannot be
    reset and is inherited across ``exec``, so it is no use for one step's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
