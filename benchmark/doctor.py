"""`python -m benchmark doctor [--gpu] [--json]`: is this machine ready for the paper profile?

One command, one table, a few minutes: the checks that decide whether a paper suite runs and how
fast, each with its target where the project states one.

- evaluation from 2048-d features (MSMT17 scale on a GPU; a tenth of Market-1501 on CPU);
- the paper-scale training step, fp32 against bf16 + channels_last (`perf --train`);
- one Cluster Contrast epoch on synthetic-reid, a few iterations (paper profile, 256x128, on a
  GPU; the ci profile on CPU, where a paper epoch takes far longer than a check should);
- the same epoch launched through torchrun with one process, as multi-GPU runs are launched.

Backbones start from random weights unless `--weights` names the ImageNet file: the checks time
and exercise the paths, they do not score a model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

EPOCH_PARAMS = {"epochs": 1, "iters": 5}
CHECK_METHOD = "cluster-contrast"
CHECK_DATASET = "synthetic-reid"


@dataclass
class Check:
    check: str
    device: str
    result: str
    seconds: float | None
    target: str = ""
    target_met: bool | None = None
    ok: bool = True


def _timed(name: str, device: str, work: Any) -> Check:
    """Run `work()` -> (result text, target, met); an exception becomes a failed check."""
    start = time.perf_counter()
    try:
        result, target, met = work()
        return Check(name, device, result, time.perf_counter() - start, target, met)
    except Exception as exc:  # one broken check must not hide the others
        detail = traceback.format_exc(limit=3).strip().splitlines()[-1]
        return Check(name, device, f"FAILED: {detail or exc}", time.perf_counter() - start,
                     ok=False)


def _evaluation(device: str) -> tuple[str, str, bool | None]:
    from benchmark.evaluation.perf import _in_fresh_process
    from benchmark.evaluation.perf_gpu import GPU_EVAL_SECONDS, job_features_evaluation

    on_gpu = device.startswith("cuda")
    scale, fraction = ("msmt17", 1.0) if on_gpu else ("market", 0.1)
    done = _in_fresh_process(job_features_evaluation, scale_name=scale, seed=0, device=device,
                             fraction=fraction)
    result = (f"{scale} {done['size']} in {done['seconds']:.3f} s, mAP "
              f"{100 * done['metrics']['mAP']:.1f}%")
    if not on_gpu:
        return result, "(GPU: MSMT17 < 1 s)", None
    return result, f"< {GPU_EVAL_SECONDS:g} s", done["seconds"] < GPU_EVAL_SECONDS


def _training_step(device: str) -> tuple[str, str, bool | None]:
    from benchmark.evaluation.perf_train import SPEEDUP_TARGET, train_rows

    on_gpu = device.startswith("cuda")
    rows = train_rows(device, methods=[CHECK_METHOD], batch=None if on_gpu else 2,
                      steps=None if on_gpu else 1)
    row = rows[0]
    result = (f"batch {row.batch}: fp32 {row.fp32_images_per_s:.1f} img/s, bf16+channels_last "
              f"{row.bf16_images_per_s:.1f} img/s ({row.speedup:.2f}x); peak "
              f"{row.fp32_peak_gib:.2f} / {row.bf16_peak_gib:.2f} GiB")
    return result, f">= {SPEEDUP_TARGET:g}x" if on_gpu else "(GPU: >= 2.5x)", row.target_met


def _profile(device: str) -> str:
    return "paper" if device.startswith("cuda") else "ci"


def _epoch(device: str, out: Path, weights: str | None) -> tuple[str, str, bool | None]:
    from benchmark.engine.runner import run_cell

    record = run_cell(CHECK_METHOD, CHECK_DATASET, 0, _profile(device), out / "in-process",
                      device, params=EPOCH_PARAMS, weights=weights, tracking=False,
                      init="profile" if weights else "random", log=None, force=True)
    return _epoch_result(record), "finishes", record["status"] == "finished"


def _epoch_result(record: dict[str, Any]) -> str:
    if record["status"] != "finished":
        return f"FAILED: {record['error']['type']}: {record['error']['message'][:200]}"
    history = record.get("history") or [{}]
    return (f"{record['profile']} profile, {record['precision']['mode']}, "
            f"{int(history[-1].get('iterations', 0))} iterations, "
            f"{history[-1].get('num_clusters', 0):.0f} clusters; train {record['train_time_s']:.1f} s, "
            f"cell {record['wall_time_s']:.1f} s")


def _torchrun(device: str, out: Path, weights: str | None) -> tuple[str, str, bool | None]:
    params = out / "params.json"
    params.write_text(json.dumps(EPOCH_PARAMS))
    command = [sys.executable, "-m", "benchmark", "run", "--method", CHECK_METHOD, "--dataset",
               CHECK_DATASET, "--profile", _profile(device), "--out", str(out / "torchrun"),
               "--params", str(params), "--no-tracking", "--force", "--gpus", "1", "--json",
               "--device", "cpu" if device == "cpu" else "cuda"]
    command += ["--weights", weights] if weights else ["--init", "random"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not done.stdout.strip():
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"exit {done.returncode}: {tail[0]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    launcher = (record.get("distributed") or {}).get("launcher")
    return (f"{_epoch_result(record)}; launcher {launcher}", "finishes under torchrun",
            record["status"] == "finished" and launcher == "torchrun")


def run_checks(device: str, weights: str | None = None) -> list[Check]:
    with tempfile.TemporaryDirectory(prefix="benchmark-doctor-") as tmp:
        out = Path(tmp)
        return [
            _timed("evaluation from 2048-d features", device, lambda: _evaluation(device)),
            _timed("training step fp32 vs bf16 (perf --train)", device,
                   lambda: _training_step(device)),
            _timed(f"one {CHECK_METHOD} epoch, {EPOCH_PARAMS['iters']} iterations", device,
                   lambda: _epoch(device, out, weights)),
            _timed("the same epoch through torchrun, 1 process", device,
                   lambda: _torchrun(device, out, weights)),
        ]


def format_checks(checks: list[Check]) -> str:
    head = ("check", "device", "s", "target", "met", "result")
    lines = [(c.check, c.device, "-" if c.seconds is None else f"{c.seconds:.1f}", c.target or "-",
              "-" if c.target_met is None else ("yes" if c.target_met else "NO"), c.result)
             for c in checks]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(out)


def run_doctor(args: argparse.Namespace) -> int:
    """Exit 0 when every check ran (targets are reported, met or not), 1 when one failed, 2 when
    --gpu was asked for on a machine without CUDA."""
    import torch

    if args.gpu and not torch.cuda.is_available():
        print("doctor: --gpu: no CUDA device on this machine (run without --gpu for the CPU "
              "checks)", file=sys.stderr)
        return 2
    device = "cuda" if args.gpu or torch.cuda.is_available() else "cpu"
    if args.weights and not Path(args.weights).is_file():
        print(f"doctor: --weights {args.weights}: no such file", file=sys.stderr)
        return 2
    start = time.perf_counter()
    checks = run_checks(device, args.weights)
    total = time.perf_counter() - start
    machine = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
               "cpus": os.cpu_count(), "torch": torch.__version__, "total_seconds": total}
    if args.json:
        print(json.dumps({"machine": machine, "checks": [asdict(c) for c in checks]}))
    else:
        print(format_checks(checks))
        print(f"\n{machine['device']}, {machine['cpus']} CPUs, torch {machine['torch']}: "
              f"{total:.0f} s in all" + ("" if device == "cuda" else
                                          "; CPU-sized checks, the GPU targets stay open"))
    return 0 if all(c.ok for c in checks) else 1
