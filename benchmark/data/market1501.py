"""Parser for the Market-1501 folder layout, which several re-ID datasets share.

Market-1501, DukeMTMC-reID, the Market-style CUHK03-NP release and the embedded synthetic-reid all
keep `bounding_box_train/`, `query/` and `bounding_box_test/`, with identity and camera written into
each file name (`0002_c1s1_000451_03.jpg`, `0001_c2_f0046182.jpg`, `0001_c1_1.png`). One parser
keeps the conventions identical for all of them:

- the identity and camera come from the file name alone; images are never decoded here, so
  counting Market's 36k files takes a fraction of a second;
- junk images (id -1) are dropped, id 0 distractors stay (they are negatives in every gallery);
- camera ids become 0-based (`c1` -> 0);
- files are sorted by name, so a split's order is the same on every machine;
- hidden files (macOS `._*` resource forks, `.DS_Store`) and files without an image extension
  (`Thumbs.db`) are not part of the dataset and are skipped; any other image file whose name cannot
  be parsed is an error naming that file, because silently skipping it would change the counts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmark.data.cards import ProtocolCard
from benchmark.data.errors import DatasetFileError
from benchmark.data.registry import register_dataset
from benchmark.data.types import ReidDataset, ReidSplit

# Split name -> folder name, in the order the harness reports splits.
SPLIT_FOLDERS: dict[str, str] = {
    "train": "bounding_box_train",
    "query": "query",
    "gallery": "bounding_box_test",
}

# Identity (-1 junk, 0 distractor, else a person) and 1-based camera at the start of the name.
NAME_PATTERN = re.compile(r"(-?\d+)_c(\d+)")

JUNK_ID = -1


def parse_name(name: str, folder: Path) -> tuple[int, int]:
    """(identity, 0-based camera) of a Market-style file name; DatasetFileError if it has none."""
    match = NAME_PATTERN.match(name)
    if match is None:
        raise DatasetFileError(
            folder / name,
            "file name does not follow the Market-1501 convention "
            "'<identity>_c<camera>...' (e.g. 0002_c1s1_000451_03.jpg)",
        )
    pid, cam = int(match.group(1)), int(match.group(2))
    if pid < JUNK_ID:
        raise DatasetFileError(folder / name, f"identity {pid} is negative (only -1, junk, may be)")
    if cam < 1:
        raise DatasetFileError(folder / name, f"camera c{cam}: cameras are numbered from c1")
    return pid, cam - 1


def _image_names(folder: Path, exts: tuple[str, ...]) -> list[str]:
    with os.scandir(folder) as entries:
        names = [
            e.name
            for e in entries
            if not e.name.startswith(".") and e.name.lower().endswith(exts) and e.is_file()
        ]
    names.sort()
    return names


def parse_split(folder: Path, split: str, exts: Sequence[str] = (".jpg",)) -> ReidSplit:
    """One split folder of the Market layout, junk dropped, sorted by file name."""
    exts = (exts.lower(),) if isinstance(exts, str) else tuple(e.lower() for e in exts)
    if not folder.is_dir():
        raise DatasetFileError(folder, f"folder of split {split!r} is missing")
    paths: list[Path] = []
    pids: list[int] = []
    camids: list[int] = []
    names = _image_names(folder, exts)
    for name in names:
        pid, cam = parse_name(name, folder)
        if pid == JUNK_ID:
            continue
        paths.append(folder / name)
        pids.append(pid)
        camids.append(cam)
    if not paths:
        what = "only junk images (id -1)" if names else f"no images ({', '.join(exts)})"
        raise DatasetFileError(folder, f"split {split!r} is empty: the folder holds {what}")
    return ReidSplit(
        name=split,
        paths=paths,
        pids=np.asarray(pids, dtype=np.int64),
        camids=np.asarray(camids, dtype=np.int64),
    )


def load_market_style(folder: Path, name: str, exts: Sequence[str] = (".jpg",)) -> ReidDataset:
    """A dataset stored in the Market-1501 layout under `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetFileError(folder, f"{name}: dataset folder not found")
    splits = {split: parse_split(folder / sub, split, exts) for split, sub in SPLIT_FOLDERS.items()}
    return ReidDataset(name=name, root=folder, **splits)


@register_dataset("dukemtmc-reid")
@register_dataset("market1501")
def load_jpeg_market_style(location: Path, card: ProtocolCard) -> ReidDataset:
    """Registry loader of the two JPEG datasets released in this layout."""
    return load_market_style(location, card.name, exts=(".jpg",))
