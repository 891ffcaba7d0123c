"""Command line: `python -m benchmark <command>`.

Each command is a small function here that parses arguments and calls into the package; the work
itself lives in the modules named by the folders (data, evaluation, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmark import __version__


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
        dataset = entry(args.name).load(location, card)
        report["splits"] = found_counts(dataset)
        problems = count_problems(dataset, card)
        if args.checksums:
            sums, notes = checksum_problems(location, card)
            problems += sums
            report["notes"] += notes
        report["problems"] = [p.as_dict() for p in problems]
        report["ok"] = not problems
    except DatasetError as exc:
        report["problems"].append({"message": str(exc)})
    if args.json:
        print(json.dumps(report, indent=None))
    else:
        for split, counts in report["splits"].items():
            shown = ", ".join(f"{k} {v}" for k, v in counts.items() if v is not None)
            print(f"{args.name} {split}: {shown}")
        for note in report["notes"]:
            print(f"note: {note}")
        for p in report["problems"]:
            print(f"MISMATCH: {p['message']}", file=sys.stderr)
        print(f"{args.name}: {'OK' if report['ok'] else 'FAILED'}")
    return 0 if report["ok"] else 1


def _cmd_datasets_synth(args: argparse.Namespace) -> int:
    from benchmark.data.synthetic_reid import write_synthetic_reid

    out = write_synthetic_reid(Path(args.out), seed=args.seed)
    print(f"synthetic-reid (seed {args.seed}) written to {out}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    print(
        "run: not implemented yet: the run engine (method adapters, training, records) is the "
        "subject of issue 4. Available now: `datasets list|verify|synth` and `perf`.",
        file=sys.stderr,
    )
    return 2


def _cmd_perf(args: argparse.Namespace) -> int:
    from benchmark.evaluation.perf import run_perf

    return run_perf(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark",
        description="Reproducibility benchmark for unsupervised person re-ID and image clustering.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_datasets_verify)

    p = ds_sub.add_parser("synth", help="write synthetic-reid in the Market-1501 layout")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_datasets_synth)

    p = sub.add_parser("run", help="run methods on datasets (not implemented yet)")
    p.add_argument("--method")
    p.add_argument("--dataset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", choices=["paper", "quick", "ci"], default="quick")
    p.add_argument("--all", action="store_true")
    p.add_argument("--seeds")
    p.add_argument("--out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("perf", help="evaluation and re-ranking speed beside reference implementations")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument(
        "--scale", choices=["market", "msmt17", "small"], action="append",
        help="which scales to run (repeatable; default: market and msmt17)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_perf)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
