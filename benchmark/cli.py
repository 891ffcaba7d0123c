"""Command line: `python -m benchmark <command>`.

Each command is a small function here that parses arguments and calls into the package; the work
itself lives in the modules named by the folders (data, evaluation, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TextIO

from benchmark import __version__
from benchmark.engine.precision import PRECISIONS  # light: no torch
from benchmark.engine.profiles import PROFILES  # light: no torch


def _cmd_datasets_list(args: argparse.Namespace) -> int:
    from benchmark.data.cards import all_cards
    from benchmark.data.registry import is_present

    rows = [
        {
            "name": card.name,
            "kind": card.kind,
            "embedded": card.embedded,
            "present": is_present(card.name, args.root),
        }
        for card in all_cards().values()
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'name':<20} {'kind':<11} {'embedded':<9} present")
    for r in rows:
        print(f"{r['name']:<20} {r['kind']:<11} {str(r['embedded']).lower():<9} {str(r['present']).lower()}")
    return 0


def _cmd_datasets_verify(args: argparse.Namespace) -> int:
    from benchmark.data.cards import get_card
    from benchmark.data.errors import DatasetError
    from benchmark.data.registry import entry, locate_dataset
    from benchmark.data.verify import checksum_problems, count_problems, found_counts

    report: dict = {"dataset": args.name, "ok": False, "splits": {}, "problems": [], "notes": []}
    try:
        card = get_card(args.name)
        location = locate_dataset(args.name, args.root)
        report["location"] = str(location)
        report["kind"] = card.kind
        dataset = entry(args.name).load(location, card)
        report["splits"] = found_counts(dataset)
        problems = count_problems(dataset, card)
        if args.checksums:
            sums, notes = checksum_problems(location, card)
            problems += sums
            report["notes"] += notes
        report["problems"] = [p.as_dict() for p in problems]
        if args.deep:
            report["problems"] += _deep_problems(dataset, report, progress=not args.json)
        report["ok"] = not report["problems"]
    except DatasetError as exc:
        report["problems"].append({"message": str(exc)})
    except OSError as exc:  # e.g. a symlink loop or an unreadable folder inside the dataset
        where = getattr(exc, "filename", None) or "the dataset folder"
        report["problems"].append({"message": f"{where}: {exc.strerror or exc}"})
    if args.json:
        print(json.dumps(report, indent=None))
    else:
        clustering = report.get("kind") == "clustering"
        for split, counts in report["splits"].items():
            shown = ", ".join(
                f"{'classes' if clustering and k == 'identities' else k} {v}"
                for k, v in counts.items() if v is not None
            )
            print(f"{args.name} {split}: {shown}")
        for note in report["notes"]:
            print(f"note: {note}")
        for p in report["problems"]:
            print(f"MISMATCH: {p['message']}", file=sys.stderr)
        print(f"{args.name}: {'OK' if report['ok'] else 'FAILED'}")
    return 0 if report["ok"] else 1


def _deep_problems(dataset, report: dict, progress: bool) -> list[dict]:
    """`verify --deep`: every image decoded (in parallel), every unreadable one listed by path."""
    from benchmark.data.decoding import unreadable_images
    from benchmark.data.types import ReidDataset

    if not isinstance(dataset, ReidDataset):
        report["notes"].append("--deep: the images were decoded to arrays when loading")
        return []
    paths = [p for split in dataset.splits().values() for p in split.paths]
    bad = unreadable_images(paths, progress=progress, remember=False)
    report["notes"].append(f"--deep: {len(paths)} images decoded, {len(bad)} unreadable")
    return [{"message": f"{path}: unreadable image ({problem})", "path": str(path)}
            for path, problem in bad]


def _cmd_datasets_synth(args: argparse.Namespace) -> int:
    from benchmark.data.synthetic_reid import write_synthetic_reid

    from benchmark.data.errors import DatasetError

    try:
        out = write_synthetic_reid(Path(args.out), seed=args.seed)
    except (FileExistsError, ValueError, DatasetError) as exc:
        print(f"datasets synth: {exc}", file=sys.stderr)
        return 1
    print(f"synthetic-reid (seed {args.seed}) written to {out}")
    return 0


@contextmanager
def _stdout_reserved(reserve: bool) -> Iterator[TextIO]:
    """With `--json`, stdout carries one JSON object and nothing else: while the work runs, whatever
    writes to stdout (Python code or C libraries, through file descriptor 1) goes to stderr."""
    if not reserve:
        yield sys.stdout
        return
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None  # not a real file (e.g. captured): redirecting the Python object is enough
    saved = os.dup(fd) if fd is not None else None
    real = os.fdopen(saved, "w", closefd=False) if saved is not None else sys.stdout
    try:
        if fd is not None:
            os.dup2(sys.stderr.fileno(), fd)
        with redirect_stdout(sys.stderr):
            yield real
    finally:
        sys.stderr.flush()
        if saved is not None:
            real.flush()
            os.dup2(saved, fd)
            os.close(saved)


def _read_params(path: str) -> dict:
    """Config overrides from a JSON or TOML file (by extension; otherwise JSON, then TOML)."""
    import tomllib

    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--params {file}: cannot read ({exc.strerror or exc})") from None
    suffix = file.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"--params {file}: not valid {suffix[1:].upper() or 'JSON or TOML'} ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--params {file}: must hold a table / object of config values")
    return data


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


def _seed_list(text: str) -> list[int]:
    """--seeds: at least one, each in range; a repeated seed runs once (with a note)."""
    from benchmark.engine.seeding import check_seed

    seeds = [check_seed(seed, "--seeds") for seed in _int_list(text, "--seeds")]
    if not seeds:
        raise ValueError(f"--seeds {text!r}: no seed given (e.g. --seeds 0,1,2)")
    unique = list(dict.fromkeys(seeds))
    if len(unique) < len(seeds):
        print(f"note: --seeds {text}: each seed runs once ({','.join(map(str, unique))})",
              file=sys.stderr)
    return unique


def _names(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _cmd_run(args: argparse.Namespace) -> int:
    from benchmark.data.errors import DatasetError
    from benchmark.engine.contract import ConfigError
    from benchmark.engine.records import RecordError
    from benchmark.engine.slurm import SlurmError

    out = Path(args.out)
    tracking = not args.no_tracking
    try:
        if args.gpus is not None:
            return _relaunch_under_torchrun(args)
        from benchmark.engine import distributed

        world, args.device = distributed.init_from_torchrun(args.device)
        if world.size > 1 and (args.replay_tracking or args.status or args.jobs > 1
                               or args.launcher != "local"):
            raise ValueError("under torchrun, `run` trains cells with every process together: "
                             "--replay-tracking, --status, --jobs and --launcher slurm run alone")
        try:
            return _run_cells(args, out, tracking, world.main)
        finally:
            distributed.shutdown()
    except (ValueError, ConfigError, DatasetError, RecordError, FileNotFoundError,
            SlurmError) as exc:
        print(f"run: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the results folder failed under us (e.g. the disk is full)
        print(f"run: {exc}", file=sys.stderr)
        return 1


def _run_cells(args: argparse.Namespace, out: Path, tracking: bool, main: bool) -> int:
    """`run`'s work; under torchrun every rank calls it and rank 0 (`main`) alone prints."""
    from benchmark.engine.records import FINISHED, cell_dir, jsonable, record_path

    if args.replay_tracking:
        return _replay(args, out)
    if args.status:
        if not args.all:
            raise ValueError("--status goes with --all: `run --all --status --out DIR`")
        return _run_status(args, out)
    options = _slurm_options(args)
    if args.all:
        if args.method or args.dataset or args.params:
            raise ValueError("--all runs every applicable pair: use --methods / --datasets "
                             "to narrow it (not --method / --dataset / --params)")
        seeds = _seed_list(args.seeds) if args.seeds is not None else [args.seed]
        if options is not None:
            return _run_all_slurm(args, out, seeds, tracking, options)
        return _run_all(args, out, seeds, tracking, main)
    if options is not None:
        raise ValueError("--launcher slurm goes with --all (or `sweep`); a single cell runs "
                         "here")
    if not args.method or not args.dataset:
        raise ValueError("give --method and --dataset (or --all, or --replay-tracking)")
    params = _read_params(args.params) if args.params else None
    from benchmark.engine.runner import run_cell

    with _stdout_reserved(args.json) as stdout:
        record = run_cell(
            args.method, args.dataset, args.seed, args.profile, out, args.device,
            args.tracking_uri, params, args.weights, args.force, root=args.root,
            tracking=tracking, init=args.init, precision=args.precision,
        )
        if args.json and main:
            stdout.write(json.dumps(jsonable(record)) + "\n")
    if not args.json and main:
        _print_cell(record, record_path(cell_dir(
            out, record["dataset"], record["method"], record["profile"], record["seed"])))
    return 0 if record["status"] == FINISHED else 1


def _relaunch_under_torchrun(args: argparse.Namespace) -> int:
    """`run --gpus N`: the same command under `torchrun --standalone --nproc-per-node N`, one
    process per GPU (or, with --device cpu, N CPU processes on gloo: how the tests run DDP)."""
    import subprocess

    import torch

    from benchmark.engine.distributed import launched_by_torchrun

    if launched_by_torchrun():
        raise ValueError("--gpus starts torchrun itself; under torchrun, leave it out")
    if args.gpus < 1:
        raise ValueError(f"--gpus {args.gpus}: must be at least 1")
    on_cpu = args.device is not None and str(args.device) == "cpu"
    if not on_cpu:
        if args.device is not None and str(args.device) not in ("cuda", "auto"):
            raise ValueError(f"--gpus gives each process its own GPU (cuda:LOCAL_RANK); "
                             f"--device {args.device} cannot go with it (use cuda or cpu)")
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if found < args.gpus:
            raise ValueError(f"--gpus {args.gpus}: this machine has {found} CUDA GPU(s); "
                             "give fewer, or --device cpu for CPU processes")
    argv = _without_option(list(args.argv), "--gpus")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(args.gpus), "-m", "benchmark", *argv]
    print("starting: " + " ".join(command[1:]), file=sys.stderr)
    return subprocess.call(command)


def _without_option(argv: list[str], option: str) -> list[str]:
    """`argv` without `option VALUE` / `option=VALUE`."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == option:
            skip = True
        elif not token.startswith(option + "="):
            kept.append(token)
    return kept


def _print_cell(record: dict, record_file: Path) -> None:
    from benchmark.metrics import TABLE_ORDER, TASKS, percent

    where = f"{record['method']} on {record['dataset']} ({record['profile']}, seed {record['seed']})"
    if record["status"] != "finished":
        print(f"{where}: FAILED: {record['error']['type']}: {record['error']['message']} "
              f"(traceback in {record_file})")
        return
    metrics = record.get("metrics") or {}
    shown = "  ".join(
        f"{k} {percent(metrics[k])}" for task in TASKS for k in TABLE_ORDER[task]
        if metrics.get(k) is not None
    )
    note = " [synthetic data]" if (record.get("dataset_facts") or {}).get("synthetic") else ""
    if record.get("skipped"):
        note += " (finished earlier: not re-run; --force re-runs it)"
    print(f"{where}: {shown} (%){note}")
    tracking = record.get("tracking") or {}
    print(f"record: {record_file}; MLflow: {tracking.get('status')}"
          + (f" ({tracking['uri']}, run {tracking.get('run_id')})" if tracking.get("run_id") else ""))


def _run_all(args: argparse.Namespace, out: Path, seeds: list[int], tracking: bool,
             main: bool = True) -> int:
    from benchmark.engine.records import jsonable
    from benchmark.engine.runner import run_all, summary_table

    with _stdout_reserved(args.json) as stdout:
        records = run_all(
            seeds, args.profile, out, methods=_names(args.methods), datasets=_names(args.datasets),
            device=args.device, tracking_uri=args.tracking_uri, tracking=tracking,
            weights=args.weights, root=args.root, force=args.force, jobs=args.jobs,
            init=args.init, precision=args.precision, progress=main,
        )
        if args.json and main:
            stdout.write(json.dumps({"records": jsonable(records)}) + "\n")
    if not main:
        return 0 if all(r["status"] == "finished" for r in records) else 1
    if not args.json:
        table = summary_table(records)
        print(f"\nsummary ({args.profile} profile; metrics in %; records under {out}):")
        print(table.to_string(index=False, na_rep=""))
    return 0 if all(r["status"] == "finished" for r in records) else 1


_SLURM_ONLY = ("partition", "gpus_per_cell", "cpus_per_cell", "mem", "time", "max_parallel",
               "slurm_extra", "max_requeue", "no_wait")


def _slurm_options(args: argparse.Namespace):  # -> SlurmOptions | None
    """The Slurm options of `--launcher slurm` (None for local; a Slurm option without it is an
    error rather than silently ignored)."""
    given = [name for name in _SLURM_ONLY if getattr(args, name, None) not in (None, False, [])]
    if args.launcher != "slurm":
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"{flags}: only with --launcher slurm")
        return None
    from benchmark.engine.slurm import (
        DEFAULT_MAX_REQUEUE,
        DEFAULT_TIME_MIN,
        SlurmOptions,
        parse_extra,
        parse_time,
    )

    for name in ("gpus_per_cell", "cpus_per_cell", "max_parallel", "max_requeue"):
        value = getattr(args, name)
        if value is not None and value < (0 if name in ("gpus_per_cell", "max_requeue") else 1):
            raise ValueError(f"--{name.replace('_', '-')} {value}: must be at least "
                             f"{0 if name in ('gpus_per_cell', 'max_requeue') else 1}")
    return SlurmOptions(
        partition=args.partition, gpus_per_cell=args.gpus_per_cell,
        cpus_per_cell=args.cpus_per_cell, mem=args.mem,
        time_min=parse_time(args.time) if args.time else DEFAULT_TIME_MIN,
        max_parallel=args.max_parallel, extra=parse_extra(args.slurm_extra),
        max_requeue=DEFAULT_MAX_REQUEUE if args.max_requeue is None else args.max_requeue,
    )


def _run_all_slurm(args: argparse.Namespace, out: Path, seeds: list[int], tracking: bool,
                   options) -> int:
    from benchmark.engine.records import check_writable, jsonable
    from benchmark.engine.runner import INIT_CHOICES, applicable_cells, summary_table
    from benchmark.engine.slurm_cells import run_all_slurm

    if args.jobs != 1:
        raise ValueError("--jobs is for the local launcher; on Slurm every cell is its own job "
                         "(--max-parallel caps how many run at once)")
    if args.weights is not None and not Path(args.weights).expanduser().is_file():
        raise FileNotFoundError(f"--weights {args.weights}: no such file")
    if args.init not in INIT_CHOICES:
        raise ValueError(f"--init must be one of {', '.join(INIT_CHOICES)}")
    cells = applicable_cells(seeds, methods=_names(args.methods), datasets=_names(args.datasets),
                             root=args.root)
    check_writable(out)
    with _stdout_reserved(args.json) as stdout:
        result = run_all_slurm(
            cells, args.profile, out, options, device=args.device,
            tracking_uri=args.tracking_uri, tracking=tracking, weights=args.weights,
            root=args.root, force=args.force, init=args.init, wait=not args.no_wait,
            poll_s=float(os.environ.get("BENCHMARK_SLURM_POLL_S", "10")),
        )
        if args.json:
            stdout.write(json.dumps(jsonable(result)) + "\n")
    if args.json:
        records = result.get("records")
        return 0 if records is None or all(r["status"] == "finished" for r in records) else 1
    for kind, what in (("submitted", "submitted"), ("queued", "already in the queue")):
        if result[kind]:
            ids = ", ".join(f"{x['cell']} (job {x['job_id']})" for x in result[kind])
            print(f"{what}: {ids}")
    if "records" not in result:
        print(f"{len(result['skipped'])} finished cell(s) skipped; `python -m benchmark run --all "
              f"--status --out {out}` shows the states")
        return 0
    table = summary_table(result["records"])
    print(f"\nsummary ({args.profile} profile, on Slurm; metrics in %; records under {out}):")
    print(table.to_string(index=False, na_rep=""))
    return 0 if all(r["status"] == "finished" for r in result["records"]) else 1


def _run_status(args: argparse.Namespace, out: Path) -> int:
    from benchmark.engine.slurm_cells import cell_status

    if not out.is_dir():
        raise ValueError(f"--out {out}: no such results folder")
    rows = cell_status(out)
    if args.json:
        print(json.dumps({"cells": rows}))
        return 0
    if not rows:
        print(f"no cells under {out}")
        return 0
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["dataset", "method", "profile", "seed", "state", "job_id",
                                        "slurm_state", "node", "note"]).fillna("")
    print(frame.to_string(index=False))
    counts = frame["state"].value_counts()
    print(", ".join(f"{n} {state}" for state, n in counts.items()))
    return 0


def _add_slurm_options(p: argparse.ArgumentParser, unit: str) -> None:
    """The options of `--launcher slurm`, shared by `run --all` and `sweep`."""
    p.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help=f"where each {unit} runs: here (default), or as a Slurm job through "
                   "submitit")
    p.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    p.add_argument("--gpus-per-cell", type=int, help=f"GPUs per {unit} job (default: none)")
    p.add_argument("--cpus-per-cell", type=int,
                   help=f"CPUs per {unit} job (default: the cluster's, usually 1)")
    p.add_argument("--mem", help=f"memory per {unit} job in Slurm's syntax, e.g. 32G (default: "
                   "the cluster's)")
    p.add_argument("--time", help=f"time limit per {unit} job: minutes or [D-]HH:MM:SS (default "
                   "24 h); a job that reaches it is requeued and resumes")
    p.add_argument("--max-parallel", type=int,
                   help="the array throttle: at most this many jobs run at once")
    p.add_argument("--slurm-extra", action="append", metavar="KEY=VALUE",
                   help="one more sbatch option, e.g. account=myproj or constraint=a100 "
                   "(repeatable)")
    p.add_argument("--max-requeue", type=int,
                   help="times a job is requeued after a time limit or preemption before its "
                   f"{unit} counts as failed (default 3)")
    p.add_argument("--no-wait", action="store_true",
                   help="submit and return at once (default: wait, with a progress bar, then "
                   "print the summary)")


def _replay(args: argparse.Namespace, out: Path) -> int:
    from benchmark.engine.tracking import replay_pending

    with _stdout_reserved(args.json) as stdout:
        results = replay_pending(out, args.tracking_uri)
        if args.json:
            stdout.write(json.dumps({"replayed": results}) + "\n")
    if not args.json:
        if not results:
            print(f"no pending tracking under {out}")
        for r in results:
            print(f"{r['cell']}: {r['status']}")
    return 0 if all(r["status"] == "logged" for r in results) else 1


def _cmd_methods_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from benchmark.engine.method_registry import get_method, method_names

    rows = []
    for name in method_names():
        cls = get_method(name)
        rows.append({
            "name": name,
            "paper": asdict(cls.paper) if cls.paper else None,
            "tasks": list(cls.tasks),
            "uses_camera_ids": cls.uses_camera_ids,
            "uses_labels": cls.uses_labels,
            "deviations": cls.deviations(),
        })
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'name':<24} {'tasks':<17} {'camera ids':<11} paper")
    for r in rows:
        paper = r["paper"] or {}
        venue, year = paper.get("venue") or "", str(paper.get("year") or "")
        where = venue if year in venue else f"{venue} {year}".strip()
        cite = f"{paper.get('title', '')} ({where})"
        if r["uses_labels"]:
            cite += " [uses labels: a ceiling, never ranked]"
        print(f"{r['name']:<24} {','.join(r['tasks']):<17} {str(r['uses_camera_ids']).lower():<11} {cite}")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from benchmark.doctor import run_doctor

    return run_doctor(args)


def _cmd_perf(args: argparse.Namespace) -> int:
    from benchmark.evaluation.perf import run_perf

    try:
        return run_perf(args)
    except ValueError as exc:
        print(f"perf: {exc}", file=sys.stderr)
        return 2


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from benchmark.reporting.claims import ClaimsError
    from benchmark.reporting.leaderboard import parse_formats, write_leaderboard
    from benchmark.reporting.results import ResultsError

    try:
        written = write_leaderboard(
            args.results, args.out, parse_formats(args.format), args.profile,
            plots=not args.no_plots,
        )
    except (ResultsError, ClaimsError, ValueError) as exc:
        print(f"leaderboard: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from benchmark.reporting.check import (
        ReferenceError,
        check_records,
        load_reference,
        uncovered_cells,
        write_reference,
    )
    from benchmark.reporting.claims import ClaimsError
    from benchmark.reporting.results import ResultsError, load_records

    if args.write_claims_reference:
        from benchmark.reporting.claims_reference import write_claims_reference

        try:
            n = write_claims_reference(args.write_claims_reference)
        except ClaimsError as exc:
            print(f"check: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {n} claim cells to {args.write_claims_reference}")
        return 0
    try:
        records = load_records(args.results)
        if args.write_reference:
            n = write_reference(records, args.write_reference, args.tolerance_default,
                                source=args.results)
            print(f"wrote {n} reference cells to {args.write_reference}")
            return 0
        if not args.reference:
            raise ReferenceError("give --reference FILE (or --write-reference FILE)")
        cells = load_reference(args.reference)
        if cells[0].kind == "claims":
            return _check_claims(args, cells, records)
        results = check_records(cells, records)
    except (ResultsError, ReferenceError) as exc:
        print(f"check: {exc}", file=sys.stderr)
        return 2
    uncovered = uncovered_cells(cells, records)
    if uncovered:
        print(f"note: {len(uncovered)} finished cell(s) not in the reference, not checked: "
              + "; ".join(uncovered))
    bad = [r for r in results if r.status != "ok"]
    for r in results:
        if r.status != "ok" or args.verbose:
            print(r.describe(), file=sys.stderr if r.status != "ok" else sys.stdout)
    outside = sum(r.status == "outside" for r in results)
    errors = sum(r.status == "error" for r in results)
    print(f"check: {len(results)} cells of {args.reference} against {args.results}: "
          f"{len(results) - len(bad)} within tolerance, {outside} outside, {errors} errors")
    return 1 if bad else 0


def _check_claims(args: argparse.Namespace, cells: list, records: list) -> int:
    """The statistical verdict of every claims-reference cell (benchmark.reporting.claims_reference);
    exit 0 only when every cell that was run is reproduced (inconclusive ones too with
    --allow-inconclusive; cells not run too only without --require-all)."""
    from benchmark.reporting.claims_reference import (
        INCONCLUSIVE,
        NOT_RUN,
        REPRODUCED,
        claim_verdict,
        verdict_table,
    )

    verdicts = [claim_verdict(cell, records) for cell in cells]
    run = [v for v in verdicts if v.status != NOT_RUN]
    shown = verdicts if args.verbose or args.require_all else run
    counts = {s: sum(v.status == s for v in verdicts) for s in dict.fromkeys(v.status for v in verdicts)}
    accepted = {REPRODUCED} | ({INCONCLUSIVE} if args.allow_inconclusive else set())
    failing = [v for v in (verdicts if args.require_all else run) if v.status not in accepted]
    if args.json:
        print(json.dumps({"reference": str(args.reference), "results": str(args.results),
                          "counts": counts, "passed": bool(run) and not failing,
                          "cells": [v.as_dict() for v in shown]}, indent=2))
    else:
        if shown:
            print(verdict_table(shown))
        for v in shown:
            if v.status != REPRODUCED and (v.note or v.left_out):
                print(f"  {v.cell.label}: {v.note}" + "".join(f"\n    left out: {x}"
                                                             for x in v.left_out))
        if args.allow_inconclusive:
            for v in run:
                if v.status == INCONCLUSIVE:
                    print(f"warning: {v.cell.label} is inconclusive ({v.note})", file=sys.stderr)
        print(f"check: {len(cells)} claim cells of {args.reference} against {args.results}: "
              + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if not run:
        print("check: no record of any cell of the reference: nothing was checked", file=sys.stderr)
        return 1
    return 1 if failing else 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from benchmark.data.errors import DatasetError
    from benchmark.engine.contract import ConfigError
    from benchmark.engine.slurm import SlurmError
    from benchmark.tuning.study import spec_from, sweep, sweep_on_slurm

    try:
        options = _slurm_options(args)
        if options is None and args.workers is not None:
            raise ValueError("--workers is for --launcher slurm; here, --jobs starts local "
                             "worker processes")
        params = _read_params(args.params) if args.params else None
        spec = spec_from(args, params)
        if options is not None:
            if args.jobs != 1:
                raise ValueError("--jobs is for the local launcher; on Slurm give --workers K")
            summary = sweep_on_slurm(spec, args.workers or 1, options, wait=not args.no_wait,
                                     poll_s=float(os.environ.get("BENCHMARK_SLURM_POLL_S", "10")))
        else:
            summary = sweep(spec, jobs=args.jobs)
    except (ValueError, ConfigError, DatasetError, FileNotFoundError, SlurmError) as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
        if "trials" not in summary:
            return 0
    elif "trials" not in summary:  # --no-wait
        print(f"study {summary['study']} ({summary['storage']}): worker jobs "
              f"{', '.join(summary['jobs'])} submitted; once they end, the same command "
              "without the Slurm options writes the outputs (joining the study as one more "
              "worker if trials remain)")
        return 0
    else:
        counts = ", ".join(f"{n} {state}" for state, n in summary["trials"].items())
        print(f"study {summary['study']} ({summary['storage']}): {counts}")
        best = summary["best"]
        if best:
            print(f"best: trial {best['trial']}, {summary['objective']} {best['value']:.4f}, "
                  f"params {best['params']}")
            print(f"best parameters: {summary['best_params_file']} (use with `run --params`)")
    if not summary["best"]:
        print("sweep: no trial completed", file=sys.stderr)
        return 1
    return 0


def _audit_datasets(method: str, dataset: str | None) -> list[str]:
    """The named dataset, or the embedded dataset of each task the method supports."""
    from benchmark.data.cards import all_cards
    from benchmark.engine.method_registry import get_method

    if dataset:
        return [dataset]
    cls = get_method(method)
    embedded = {card.kind: name for name, card in sorted(all_cards().items()) if card.embedded}
    return [embedded[task] for task in cls.tasks if task in embedded]


def _cmd_audit(args: argparse.Namespace) -> int:
    from benchmark.data.errors import DatasetError
    from benchmark.engine.audit import MODES, audit
    from benchmark.engine.contract import ConfigError
    from benchmark.engine.records import RecordError

    modes = list(MODES) if args.mode == "all" else [args.mode]
    reports = []
    try:
        params = _read_params(args.params) if args.params else None
        for dataset in _audit_datasets(args.method, args.dataset):
            with _stdout_reserved(args.json):
                report = audit(args.method, dataset, modes=modes, profile=args.profile,
                               seed=args.seed, params=params, device=args.device, root=args.root,
                               weights=args.weights, out=None if args.no_record else args.out,
                               jobs=args.jobs)
            reports.append(report)
            if not args.json:
                for verdict in report["modes"]:
                    word = "PASS" if verdict["passed"] else verdict["verdict"].upper()
                    print(f"{report['method']} on {dataset} ({args.profile}, seed {args.seed}) "
                          f"{verdict['mode']}: {word} ({verdict['trainings']} trainings, "
                          f"{verdict['time_s']:.0f} s)")
                    if not verdict["passed"]:
                        print(f"  {verdict['message']}")
                if report.get("file"):
                    print(f"verdicts: {report['file']}")
    except (ValueError, ConfigError, DatasetError, RecordError, FileNotFoundError) as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"passed": all(r["passed"] for r in reports), "audits": reports}))
    if any(v["verdict"] in ("error", "nondeterministic") for r in reports for v in r["modes"]) \
            and not any(v["verdict"] == "leak" for r in reports for v in r["modes"]):
        return 2
    return 0 if all(r["passed"] for r in reports) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark",
        description="Reproducibility benchmark for unsupervised person re-ID and image clustering.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True)

    ds = sub.add_parser("datasets", help="list, verify and generate datasets")
    ds_sub = ds.add_subparsers(dest="datasets_command", required=True)
    root_help = "data root (default: $BENCHMARK_DATA_ROOT, else ./data)"

    p = ds_sub.add_parser("list", help="every dataset with its kind and whether it is present")
    p.add_argument("--root", help=root_help)
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=_cmd_datasets_list)

    p = ds_sub.add_parser("verify", help="check a dataset's split counts against its protocol card")
    p.add_argument("name")
    p.add_argument("--root", help=root_help)
    p.add_argument("--checksums", action="store_true", help="also check the official file md5s")
    p.add_argument("--deep", action="store_true",
                   help="also decode every image (in parallel) and list each unreadable file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_datasets_verify)

    p = ds_sub.add_parser("synth", help="write synthetic-reid in the Market-1501 layout")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_datasets_synth)

    p = sub.add_parser(
        "run", help="run methods on datasets: one cell, or --all applicable pairs",
        description="Train a method on a dataset's unlabeled training view, evaluate it with the "
        "harness's protocol and write a result record to <out>/<dataset>/<method>/<profile>/"
        "seed<seed>/record.json (logged to MLflow too). Finished cells are skipped unless --force; "
        "an interrupted cell resumes from its last epoch checkpoint.",
    )
    p.add_argument("--method", help="registered key (see `methods list`) or package.module:Class")
    p.add_argument("--dataset", help="dataset key (see `datasets list`)")
    p.add_argument("--seed", type=int, default=0, help="the one seed of every RNG (default 0)")
    p.add_argument("--profile", choices=list(PROFILES), default="quick")
    p.add_argument("--all", action="store_true",
                   help="every applicable (method, dataset) pair on the datasets present")
    p.add_argument("--seeds", help="with --all: comma-separated seeds, e.g. 0,1,2 (default: --seed)")
    p.add_argument("--jobs", type=int, default=1,
                   help="with --all: cells run at once, each in its own process (default 1); the "
                   "numbers do not depend on it (quick and ci use one CPU thread per cell)")
    p.add_argument("--methods", help="with --all: only these methods (comma-separated)")
    p.add_argument("--datasets", help="with --all: only these datasets (comma-separated)")
    p.add_argument("--out", default="results", help="results folder (default ./results)")
    p.add_argument("--json", action="store_true",
                   help="print the result record (with --all: {\"records\": [...]}) as one JSON "
                   "object on stdout, and nothing else there")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    p.add_argument("--tracking-uri",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///<out>/mlflow.db)")
    p.add_argument("--no-tracking", action="store_true", help="write records only, no MLflow")
    p.add_argument("--replay-tracking", action="store_true",
                   help="push the records under --out whose MLflow logging failed, then exit")
    p.add_argument("--weights", help="local ImageNet weights file for pretrained backbones")
    p.add_argument("--init", choices=["profile", "random"], default="profile",
                   help="what backbones start from: the profile's (paper: ImageNet; quick / ci: "
                   "the pretrained stand-in on re-ID data), or random weights (default: profile)")
    p.add_argument("--params", help="JSON or TOML file of config overrides (single runs)")
    p.add_argument("--root", help=root_help)
    p.add_argument("--force", action="store_true", help="re-run finished cells from scratch")
    p.add_argument("--precision", choices=list(PRECISIONS), default="auto",
                   help="fp32, or bf16 (autocast for training and feature extraction, "
                   "channels_last); auto: bf16 for the paper profile on CUDA, else fp32")
    p.add_argument("--gpus", type=int, metavar="N",
                   help="train with N processes through torchrun (DDP), one GPU each; with "
                   "--device cpu, N CPU processes (gloo). `torchrun --nproc-per-node N -m "
                   "benchmark run ...` does the same")
    p.add_argument("--status", action="store_true",
                   help="with --all: each cell under --out (records and Slurm jobs) as pending, "
                   "running, finished or failed, with its Slurm job id and node, then exit")
    _add_slurm_options(p, "cell")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "sweep", help="Optuna TPE sweep of a method's search space on a validation split",
        description="Tune a method's search space with Optuna (TPE, MedianPruner on the per-epoch "
        "validation metric). The objective (re-ID mAP, clustering ACC) is measured on a validation "
        "split carved from the training data (held-out training identities / images), never on the "
        "test split. Writes <out>/sweeps/<study>/{best_params.json,trials.csv,summary.json}; "
        "best_params.json is accepted by `run --params`. Each trial is a nested MLflow run under "
        "the study's run. Storage: SQLite in <out>/sweeps/optuna.db by default; give a shared "
        "PostgreSQL URL with --storage and start the same command on each machine to share a "
        "study.",
    )
    p.add_argument("--method", required=True, help="registered key or package.module:Class")
    p.add_argument("--dataset", required=True, help="dataset key (see `datasets list`)")
    p.add_argument("--profile", choices=list(PROFILES), default="quick")
    p.add_argument("--trials", type=int, required=True,
                   help="trials in the study, counted over every worker (a retried trial once)")
    p.add_argument("--jobs", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--storage",
                   help="Optuna storage URL, e.g. postgresql://user:pass@host/db (default: "
                   "sqlite:///<out>/sweeps/optuna.db)")
    p.add_argument("--study-name",
                   help="default: <method>-<dataset>-<profile>-seed<seed>; workers joining one "
                   "study must give the same name and the same method, dataset, profile and seed")
    p.add_argument("--seed", type=int, default=0,
                   help="training seed of every trial, validation split and sampler (default 0)")
    p.add_argument("--params", help="JSON or TOML file of fixed config overrides (a parameter "
                   "fixed here is not searched)")
    p.add_argument("--tune", help="comma-separated names of the search space to tune (default: "
                   "all); the others keep their resolved values")
    p.add_argument("--grid", action="store_true",
                   help="try every combination of the tuned parameters' choices once (all must "
                   "be categorical; --trials at most their number) instead of TPE")
    p.add_argument("--no-prune", action="store_true",
                   help="no MedianPruner: every trial runs to its end (use when the tuned "
                   "parameters change the epoch schedule, so epoch e is not the same stage)")
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="share of training identities (re-ID) or images (clustering) held out "
                   "(default 0.2)")
    p.add_argument("--heartbeat-interval", type=int, default=60,
                   help="seconds between a running trial's heartbeats (default 60)")
    p.add_argument("--grace-period", type=int,
                   help="seconds without heartbeat before a trial counts as dead and is failed "
                   "(default: twice the interval)")
    p.add_argument("--max-retry", type=int, default=1,
                   help="times a dead worker's trial is retried (default 1)")
    p.add_argument("--worker-index", type=int, default=0,
                   help="seeds this command's sampler(s): give each machine joining one study its "
                   "own index (0, 1, ...), or their samplers propose the same first points")
    p.add_argument("--out", default="results", help="results folder (default ./results)")
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default as for `run`)")
    p.add_argument("--no-tracking", action="store_true", help="no MLflow runs")
    p.add_argument("--root", help=root_help)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    _add_slurm_options(p, "worker")
    p.add_argument("--workers", type=int,
                   help="with --launcher slurm: worker jobs on the study (default 1); the study "
                   "needs a shared --storage (PostgreSQL)")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "audit", help="prove a method's training sees no label, file name, validation label or "
        "test image",
        description="Trains the cell twice, each time in a fresh process: as is, and with the "
        "hidden training labels shuffled, the training file names replaced, the validation labels "
        "shuffled and the test split's images replaced. Passes when the trained encoder, the "
        "reported pseudo labels and the method's own metrics are bit-identical; otherwise each "
        "substitution is tried alone and the one the training depends on is named. Exit 0: "
        "passed; 1: a leak; 2: bad input, a cell that does not train, or a nondeterministic one.",
    )
    p.add_argument("--method", required=True,
                   help="registered key (see `methods list`) or package.module:Class")
    p.add_argument("--dataset", help="dataset key (default: the embedded dataset of each task the "
                   "method supports)")
    p.add_argument("--profile", choices=list(PROFILES), default="ci")
    p.add_argument("--mode", choices=["plain", "validation", "sweep", "all"], default="all",
                   help="plain: the last epoch's model; validation: model selection on a carved "
                   "hold-out; sweep: a sweep trial (default: all three)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--params", help="JSON or TOML file of config overrides")
    p.add_argument("--jobs", type=int, default=2, help="trainings at once (default 2)")
    p.add_argument("--out", default="results",
                   help="results folder: verdicts go to <out>/audits/<method>.json, and records of "
                   "cells run there say whether their method passed (default ./results)")
    p.add_argument("--no-record", action="store_true", help="write no verdict file")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--weights", help="local ImageNet weights file (paper profile)")
    p.add_argument("--root", help="data root (default: $BENCHMARK_DATA_ROOT, else ./data)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_audit)

    ms = sub.add_parser("methods", help="the registered method adapters")
    ms_sub = ms.add_subparsers(dest="methods_command", required=True)
    p = ms_sub.add_parser("list", help="every adapter: paper, tasks, camera-id use")
    p.add_argument("--json", action="store_true",
                   help="a JSON list of objects with name, paper, tasks, uses_camera_ids")
    p.set_defaults(func=_cmd_methods_list)

    p = sub.add_parser("perf", help="evaluation and re-ranking speed beside reference implementations")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument(
        "--scale", choices=["market", "msmt17", "small"], action="append",
        help="which scales to run (repeatable; default: market and msmt17)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", action="store_true",
                   help="the paper-scale training step instead (ResNet-50, 256x128): images/s and "
                   "peak memory, fp32 against bf16 + channels_last, per step shape of the re-ID "
                   "methods (with --scale: both tables)")
    p.add_argument("--train-batch", type=int,
                   help="with --train: the batch per step (default: the paper's per-GPU batch on "
                   "CUDA, at most 4 on CPU)")
    p.add_argument("--train-steps", type=int,
                   help="with --train: timed steps per measurement (default 20 on CUDA, 2 on CPU)")
    p.add_argument("--methods", help="with --train: only the step shapes of these methods "
                   "(comma-separated)")
    p.add_argument("--device", help="with --train: cpu, cuda, ... (default: CUDA when available)")
    p.set_defaults(func=_cmd_perf)

    p = sub.add_parser(
        "doctor", help="is this machine ready for the paper profile: evaluation, training step, "
        "an epoch, a torchrun run, as one table",
        description="Runs in a few minutes: evaluation from 2048-d features (MSMT17 scale on a "
        "GPU), the training step fp32 vs bf16 + channels_last, one Cluster Contrast epoch on "
        "synthetic-reid (paper profile on a GPU, ci on CPU) and the same epoch through torchrun "
        "with one process. Prints one table with each target and whether it is met.")
    p.add_argument("--gpu", action="store_true", help="require CUDA (exit 2 without it)")
    p.add_argument("--weights", help="local ImageNet weights file (default: random init)")
    p.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser(
        "leaderboard", help="tables and plots of the result records beside the papers' claims",
        description="Per dataset and profile: rows = methods, columns = metrics (percent, mean ± "
        "sample std over seeds, n), the paper's own claim and the difference where the run is "
        "comparable (paper profile, same backbone, fully unsupervised; never for synthetic data), "
        "provenance and flags. Writes leaderboard.{md,csv,tex,html} and plots/*.png.",
    )
    p.add_argument("--results", default="results", help="results folder (default ./results)")
    p.add_argument("--out", default="leaderboards/out",
                   help="output folder (default ./leaderboards/out)")
    p.add_argument("--format", default="md,csv,tex,html",
                   help="comma-separated formats among md, csv, tex, html (default: all)")
    p.add_argument("--profile", choices=list(PROFILES),
                   help="only this profile's records (default: every profile, one table each)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(func=_cmd_leaderboard)

    p = sub.add_parser(
        "check", help="compare result records with a tolerance reference (exit 1 on any miss)",
        description="Each [[cell]] of the reference (method, dataset, profile, metric, value, "
        "tolerance, optional seeds) is compared with the mean of its matching finished records; "
        "a cell outside its tolerance, or with no matching record, is printed and makes the exit "
        "status 1 (0 when every cell passes; 2 when the reference or the results folder cannot "
        "be read). With --write-reference, writes a reference from the results instead "
        "(refused while any record failed). A claims reference (leaderboards/reference/paper.toml, "
        "written by --write-claims-reference from the claims file) gets a statistical verdict per "
        "cell instead: reproduced, not reproduced or inconclusive, counting only records that are "
        "the paper's run.",
    )
    p.add_argument("--results", default="results", help="results folder (default ./results)")
    p.add_argument("--reference", help="reference TOML, e.g. leaderboards/reference/ci.toml")
    p.add_argument("--write-reference", metavar="FILE",
                   help="write a reference from the finished records under --results, then exit")
    p.add_argument("--tolerance-default", type=float, default=0.02,
                   help="with --write-reference: tolerance of mAP and NMI; 1.5x for R1, R5, R10, "
                   "mINP, ACC, ARI (default 0.02)")
    p.add_argument("--verbose", action="store_true", help="print the cells that pass too")
    p.add_argument("--write-claims-reference", metavar="FILE",
                   help="write the reference of the papers' headline claims (generated from "
                   "leaderboards/claims.toml, e.g. leaderboards/reference/paper.toml), then exit")
    p.add_argument("--allow-inconclusive", action="store_true",
                   help="claims reference: inconclusive cells (fewer than 3 seeds, or no record "
                   "that is the paper's run) are warnings, not failures")
    p.add_argument("--require-all", action="store_true",
                   help="claims reference: a cell with no record at all fails (default: only the "
                   "cells that were run are judged, and the rest are counted as not run)")
    p.add_argument("--json", action="store_true", help="claims reference: the verdicts as JSON")
    p.set_defaults(func=_cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # what no command anticipated: one line, the traceback on --debug
        if args.debug:
            raise
        print(f"{args.command}: {type(exc).__name__}: {exc} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return 1
