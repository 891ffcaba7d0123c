"""Named points where the fault-injection suite (tests/faults/) kills the process, as SIGKILL would.

Inert unless `BENCHMARK_FAILPOINT` is set, to `NAME` or `NAME:N` (die the N-th time NAME is
reached, default the first). The points are the moments a crash can hurt most: after the data is
loaded, after an epoch's training, inside a checkpoint write, at the start of evaluation, inside
the write of a named file (`write:record.json`), and inside MLflow logging. Under torchrun,
`BENCHMARK_FAILPOINT_RANK=R` arms it in rank R only (every rank when unset), to kill one process
of a data-parallel run.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "BENCHMARK_FAILPOINT"
RANK_ENV = "BENCHMARK_FAILPOINT_RANK"
POINTS = ("load", "epoch", "checkpoint-write", "evaluate", "write:record.json", "mlflow")
_reached: Counter[str] = Counter()


def reached(name: str) -> None:
    """Count a pass through `name`; SIGKILL this process when it is the armed pass."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, count = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "")
    if target != name:
        return
    rank = os.environ.get(RANK_ENV)
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return
    _reached[name] += 1
    if _reached[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
