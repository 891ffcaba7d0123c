"""Peak resident memory of a `perf` job, counted from the moment its input is in memory.

Each `perf` measurement runs in a fresh process, and what a row reports is that process's peak
RSS. Without a reset, the synthetic input generator's temporaries (often larger than the input)
would set the peak; on Linux the count restarts when the input is ready (clear_refs 5 resets
VmHWM), elsewhere the peak is the process's ru_maxrss since start.
"""

from __future__ import annotations

import resource

GIB = float(2**30)


def _status_gib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / GIB  # kB
    except OSError:
        pass
    return None


def reset_peak() -> float:
    """Restart the peak-RSS count here; returns the current RSS in GiB (the job's base)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return _status_gib("VmRSS") or peak_gib()


def peak_gib() -> float:
    """Peak RSS in GiB since the last `reset_peak` (Linux), else since the process started."""
    hwm = _status_gib("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: KiB
