"""MSMT17 (V1 or V2) from its list files, the only place its splits are defined.

Unlike the Market layout, MSMT17's splits are not its folders: `list_train.txt`, `list_val.txt`,
`list_query.txt` and `list_gallery.txt` name the images (relative to the train or test folder) with
their identity. The two releases differ only in folder names (V1 `train/`, `test/`; V2, with
blurred faces, `mask_train_v2/`, `mask_test_v2/`). The unsupervised papers train on list_train +
list_val, so that is the train split here (the card's 32,621 images).

Every listed image must exist: a missing one is reported with its list file and line, since it
would otherwise surface only as a read error deep inside training.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from benchmark.data.cards import ProtocolCard
from benchmark.data.errors import DatasetFileError
from benchmark.data.registry import register_dataset
from benchmark.data.types import ReidDataset, ReidSplit

# Release -> (folder of train/val images, folder of query/gallery images).
VERSION_FOLDERS: dict[str, tuple[str, str]] = {
    "MSMT17_V1": ("train", "test"),
    "MSMT17_V2": ("mask_train_v2", "mask_test_v2"),
}

# Split -> (list files in order, which image folder they are relative to: 0 train, 1 test).
SPLIT_LISTS: dict[str, tuple[tuple[str, ...], int]] = {
    "train": (("list_train.txt", "list_val.txt"), 0),
    "query": (("list_query.txt",), 1),
    "gallery": (("list_gallery.txt",), 1),
}


def image_folders(location: Path) -> tuple[Path, Path]:
    """(train folder, test folder) of whichever release `location` holds."""
    for train, test in VERSION_FOLDERS.values():
        if (location / train).is_dir() and (location / test).is_dir():
            return location / train, location / test
    expected = " or ".join(f"{a}/ + {b}/" for a, b in VERSION_FOLDERS.values())
    raise DatasetFileError(location, f"MSMT17 image folders not found: expected {expected}")


def camera_of(name: str) -> int:
    """1-based camera: the third underscore field of `0000_000_01_0303morning_0015_0.jpg`."""
    return int(os.path.basename(name).split("_")[2])


class _FolderIndex:
    """Directory listings read once per folder, so checking 126k images stays fast."""

    def __init__(self) -> None:
        self._seen: dict[str, frozenset[str]] = {}

    def exists(self, path: str) -> bool:
        folder, name = os.path.split(path)
        if folder not in self._seen:
            try:
                with os.scandir(folder) as entries:
                    self._seen[folder] = frozenset(e.name for e in entries if e.is_file())
            except (FileNotFoundError, NotADirectoryError):
                self._seen[folder] = frozenset()
        return name in self._seen[folder]


def read_list(
    list_path: Path, image_folder: Path, index: _FolderIndex | None = None
) -> tuple[list[Path], list[int], list[int]]:
    """(paths, identities, 0-based cameras) of one list file; errors name the file and line."""
    index = index or _FolderIndex()
    try:
        text = list_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetFileError(list_path, "list file is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetFileError(list_path, f"cannot be read: {exc}") from None
    paths: list[Path] = []
    pids: list[int] = []
    camids: list[int] = []
    base = str(image_folder)
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            rel, pid, cam = fields[0], int(fields[1]), camera_of(fields[0])
            if pid < 0 or cam < 1:
                raise ValueError
        except (ValueError, IndexError):
            raise DatasetFileError(
                list_path,
                f"line {lineno} is malformed: {line.strip()!r} (expected "
                "'<id>/<id>_<n>_<camera>_<date>_<n>_<n>.jpg <id>', camera from 1)",
            ) from None
        full = os.path.join(base, rel)
        if not index.exists(full):
            raise DatasetFileError(list_path, f"line {lineno}: listed image {full} does not exist")
        paths.append(Path(full))
        pids.append(pid)
        camids.append(cam - 1)
    if not paths:
        raise DatasetFileError(list_path, "list file names no images")
    return paths, pids, camids


def load_msmt17_folder(location: Path, name: str = "msmt17") -> ReidDataset:
    """MSMT17 from a release folder holding the four list files and its two image folders."""
    folders = image_folders(location)
    index = _FolderIndex()
    splits = {}
    for split, (lists, which) in SPLIT_LISTS.items():
        paths: list[Path] = []
        pids: list[int] = []
        camids: list[int] = []
        for list_name in lists:
            p, i, c = read_list(location / list_name, folders[which], index)
            paths += p
            pids += i
            camids += c
        splits[split] = ReidSplit(
            name=split,
            paths=paths,
            pids=np.asarray(pids, dtype=np.int64),
            camids=np.asarray(camids, dtype=np.int64),
        )
    return ReidDataset(name=name, root=location, **splits)


@register_dataset("msmt17")
def load_msmt17(location: Path, card: ProtocolCard) -> ReidDataset:
    """Registry loader; the card's folders/markers (the list files) locate the release."""
    return load_msmt17_folder(location, card.name)
