"""Compare a loaded dataset (and optionally its files' md5s) with its protocol card."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.data.cards import ProtocolCard
from benchmark.data.types import ClusteringDataset, Dataset, ReidDataset


@dataclass(frozen=True)
class CountProblem:
    split: str
    field: str
    expected: object
    found: object

    def message(self) -> str:
        return f"split {self.split!r}: {self.field} expected {self.expected}, found {self.found}"

    def as_dict(self) -> dict[str, object]:
        return {
            "split": self.split,
            "field": self.field,
            "expected": self.expected,
            "found": self.found,
            "message": self.message(),
        }


def found_counts(dataset: Dataset) -> dict[str, dict[str, int | None]]:
    """Per split: images, identities (classes for clustering sets) and cameras (None there)."""
    if isinstance(dataset, ReidDataset):
        return {
            name: {
                "images": split.num_images,
                "identities": split.num_identities,
                "cameras": split.num_cameras,
            }
            for name, split in dataset.splits().items()
        }
    assert isinstance(dataset, ClusteringDataset)
    out: dict[str, dict[str, int | None]] = {}
    for name in dataset.parts:
        _, labels = dataset.part(name)
        classes = int(np.unique(labels).size)
        out[name] = {"images": int(len(labels)), "identities": classes, "cameras": None}
    return out


def count_problems(dataset: Dataset, card: ProtocolCard) -> list[CountProblem]:
    found = found_counts(dataset)
    problems: list[CountProblem] = []
    for split, expected in card.splits.items():
        if split not in found:
            problems.append(CountProblem(split, "split", "present", "missing"))
            continue
        for fld, value in expected.as_dict().items():
            key = "identities" if fld == "classes" else fld
            if found[split].get(key) != value:
                problems.append(CountProblem(split, fld, value, found[split].get(key)))
    return problems


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checksum_problems(location: Path, card: ProtocolCard) -> tuple[list[CountProblem], list[str]]:
    """md5 of every file the card lists that exists under `location`.

    Returns (problems, notes). A listed file that is absent is a note, not a problem, when an
    alternative form of it is present (MNIST idx files gzipped or not); the card lists both forms
    where the official md5 of both is known.
    """
    problems: list[CountProblem] = []
    notes: list[str] = []
    if not card.checksums:
        notes.append(f"{card.name}: the card records no official checksums")
        return problems, notes
    checked = 0
    unpacked = 0
    for rel, expected in card.checksums.items():
        path = location / rel
        if not path.exists():
            plain = path.with_suffix("") if path.suffix == ".gz" else None
            if plain is not None and plain.exists():
                unpacked += 1
                notes.append(
                    f"{path}: not present ({plain.name} is, unpacked; there is no official md5 of "
                    "the unpacked form), not checked"
                )
            else:
                notes.append(f"{path}: not present, md5 not checked")
            continue
        got = md5sum(path)
        checked += 1
        if got != expected:
            problems.append(CountProblem(str(path), "md5", expected, got))
    if checked == 0 and unpacked == 0:
        problems.append(CountProblem(str(location), "md5", "at least one listed file", "none found"))
    return problems, notes
