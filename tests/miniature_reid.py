"""Miniature re-ID datasets written in the real on-disk formats, for tests.

Each builder plans a handful of identities, writes them the way the real release stores them
(Market/Duke/CUHK03-NP folders and names, CUHK03's MATLAB v7.3 file of HDF5 object references with
its MATLAB v5 protocol config, MSMT17's list files), and returns its own account of what it wrote:
the (identity, 0-based camera) of every image a parser should keep, per split. That account comes
from the plan, not from any parser, so tests can hold the parsers against it.

Import from a test module as `from miniature_reid import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image

from benchmark.data.cards import ProtocolCard, SplitCounts, get_card

MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
IMAGE_HEIGHT, IMAGE_WIDTH = 8, 4  # not square, so a transposed image would show


def tiny_image_bytes(fmt: str = "JPEG", value: int = 128) -> bytes:
    """An 8x4 RGB image encoded as `fmt`."""
    buf = io.BytesIO()
    Image.new("RGB", (IMAGE_WIDTH, IMAGE_HEIGHT), (value, 255 - value, 60)).save(buf, format=fmt)
    return buf.getvalue()


@dataclass(frozen=True)
class Built:
    """What a builder wrote: `location` is the folder a loader receives for it."""

    location: Path
    labels: dict[str, list[tuple[int, int]]]  # split -> (identity, 0-based camera), sorted
    by_name: dict[str, tuple[int, int]] = field(default_factory=dict)  # kept file name -> same
    junk: int = 0  # junk files written (id -1), which the parser must drop
    pixels: dict[str, np.ndarray] = field(default_factory=dict)  # CUHK03 .mat: name -> HxWx3

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for split, pairs in self.labels.items():
            out[split] = {
                "images": len(pairs),
                "identities": len({p for p, _ in pairs}),
                "cameras": len({c for _, c in pairs}),
            }
        return out

    def card(self, name: str) -> ProtocolCard:
        """The dataset's real card with its counts replaced by the miniature's."""
        splits = {s: SplitCounts(**c) for s, c in self.counts().items()}
        return dataclasses.replace(get_card(name), splits=splits)


def _from_plan(location: Path, plan: dict[str, list[tuple[str, int, int]]], junk: int = 0) -> Built:
    """Built from a plan of (file name, identity, 0-based camera) per split; junk (-1) left out."""
    kept = {s: [row for row in rows if row[1] != -1] for s, rows in plan.items()}
    return Built(
        location,
        labels={s: sorted((pid, cam) for _, pid, cam in rows) for s, rows in kept.items()},
        by_name={name: (pid, cam) for rows in kept.values() for name, pid, cam in rows},
        junk=junk,
    )


def _write_files(folder: Path, names: Iterable[str], data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(data)


# --- Market-1501 and DukeMTMC-reID -------------------------------------------------------------


def _market_name(pid: int, cam: int, frame: int) -> str:
    return f"{pid:04d}_c{cam}s{1 + frame % 5}_{frame:06d}_{1 + frame % 3:02d}.jpg"


def write_market1501(root: Path, folder: str = "Market-1501-v15.09.15") -> Built:
    """Market-1501 in miniature: 4 train identities, 3 test identities, distractors and junk.

    Also writes what real copies carry besides the images: Thumbs.db, a .DS_Store, gt_bbox/.
    """
    rng = np.random.default_rng(1501)
    location = root / folder
    plan: dict[str, list[tuple[str, int, int]]] = {s: [] for s in MARKET_FOLDERS}
    frame = 0

    def add(split: str, pid: int, cams: Iterable[int]) -> None:
        nonlocal frame
        for cam in cams:
            frame += int(rng.integers(1, 50))
            name = _market_name(pid, cam, frame) if pid != -1 else f"-1_c{cam}s1_{frame:06d}_00.jpg"
            plan[split].append((name, pid, cam - 1))

    for pid, cams in ((2, (1, 2, 3)), (7, (4, 5, 6, 1)), (11, (2, 2, 6)), (23, (3, 5))):
        add("train", pid, cams)
    for pid in (1, 3, 5):
        add("query", pid, (1, 4))
        add("gallery", pid, (2, 3, 5, 6, 1))
    add("gallery", 0, (1, 2, 6))  # distractors
    add("gallery", -1, (3, 4))  # junk
    jpeg = tiny_image_bytes()
    for split, sub in MARKET_FOLDERS.items():
        _write_files(location / sub, (n for n, _, _ in plan[split]), jpeg)
    (location / "bounding_box_test" / "Thumbs.db").write_bytes(b"\0" * 16)
    (location / "bounding_box_train" / ".DS_Store").write_bytes(b"\0" * 16)
    (location / "gt_bbox").mkdir()
    (location / "gt_bbox" / "0001_c1s1_001051_00.jpg").write_bytes(jpeg)
    return _from_plan(location, plan, junk=sum(p == -1 for _, p, _ in plan["gallery"]))


def write_dukemtmc_reid(root: Path, folder: str = "DukeMTMC-reID") -> Built:
    """DukeMTMC-reID in miniature: names `0001_c2_f0046182.jpg`, 8 cameras, and gallery-only
    distractor identities that carry ordinary ids."""
    plan: dict[str, list[tuple[str, int, int]]] = {s: [] for s in MARKET_FOLDERS}
    frame = 46000

    def add(split: str, pid: int, cams: Iterable[int]) -> None:
        nonlocal frame
        for cam in cams:
            frame += 137
            plan[split].append((f"{pid:04d}_c{cam}_f{frame:07d}.jpg", pid, cam - 1))

    add("train", 1, (1, 2, 3))
    add("train", 8, (4, 5, 6, 7, 8))
    for pid in (5, 12):
        add("query", pid, (1, 5))
        add("gallery", pid, (2, 3, 4, 6, 7, 8))
    add("gallery", 4001, (1, 8))  # distractor identity
    jpeg = tiny_image_bytes()
    for split, sub in MARKET_FOLDERS.items():
        _write_files(root / folder / sub, (n for n, _, _ in plan[split]), jpeg)
    return _from_plan(root / folder, plan)


def write_market1501_full_size(root: Path, folder: str = "Market-1501-v15.09.15") -> Built:
    """A copy with Market-1501's exact file counts (36,036 files), every file one tiny JPEG.

    12,936 train images of 751 identities; 3,368 query images of 750 identities; 19,732 files in
    bounding_box_test: 3,819 junk (-1), 15,913 gallery images of the 750 test identities and id 0.
    Files are hard links of one image where the filesystem allows, so this takes about a second.
    """
    location = root / folder
    train_ids = np.arange(1, 752) * 2  # 751 even ids
    test_ids = np.arange(1, 751) * 2 + 1  # 750 odd ids
    plan: dict[str, list[tuple[str, int, int]]] = {s: [] for s in MARKET_FOLDERS}

    def spread(split: str, ids: np.ndarray, n: int, start: int) -> None:
        for i in range(n):
            pid = int(ids[i % len(ids)])
            cam = 1 + (i // len(ids) + i) % 6
            plan[split].append((_market_name(pid, cam, start + i), pid, cam - 1))

    spread("train", train_ids, 12936, 0)
    spread("query", test_ids, 3368, 100000)
    spread("gallery", np.concatenate([test_ids, [0]]), 15913, 200000)
    spread("gallery", np.array([-1]), 3819, 300000)
    for i, (_, pid, cam) in enumerate(plan["gallery"]):
        if pid == -1:
            plan["gallery"][i] = (f"-1_c{cam + 1}s1_{300000 + i:06d}_00.jpg", -1, cam)
    source = root / ".market-image.jpg"
    source.write_bytes(tiny_image_bytes())
    for split, sub in MARKET_FOLDERS.items():
        (location / sub).mkdir(parents=True)
        for name, _, _ in plan[split]:
            try:
                os.link(source, location / sub / name)
            except OSError:
                (location / sub / name).write_bytes(source.read_bytes())
    return _from_plan(location, plan, junk=3819)


# --- CUHK03: the Market-style CUHK03-NP release and the raw .mat release ----------------------


@dataclass(frozen=True)
class _CuhkImage:
    pair: int  # 0-based camera pair
    person: int  # 0-based index within the pair
    row: int  # 0-9: rows 0-4 first camera, 5-9 second
    label: int  # identity number of the new protocol (1-based)

    @property
    def view(self) -> int:
        return 1 if self.row < 5 else 2

    @property
    def mat_name(self) -> str:
        return f"{self.pair + 1}_{self.person + 1:03d}_{self.view}_{self.row + 1:02d}.png"


# 5 camera pairs x 2-3 people; per person the rows holding an image (others are empty cells).
_CUHK_ROWS = [
    [(0, 1, 2, 5, 6), (0, 1, 5, 6, 7, 8), (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)],
    [(0, 2, 5, 7), (1, 2, 6, 9)],
    [(0, 1, 5, 6), (0, 1, 2, 5, 6, 7), (3, 4, 8, 9)],
    [(0, 1, 5, 6), (0, 2, 4, 5, 9)],
    [(0, 1, 2, 6, 7), (0, 1, 5, 6)],
]
_CUHK_TRAIN_LABELS = {1, 3, 5, 8, 10, 12}


def _cuhk_population(variant: str) -> list[_CuhkImage]:
    images = []
    label = 0
    for pair, people in enumerate(_CUHK_ROWS):
        for person, rows in enumerate(people):
            label += 1
            for row in rows:
                # the detector missed one box of person 2 in pair 1, as it does in the real data
                if variant == "detected" and (pair, person, row) == (0, 1, 7):
                    continue
                images.append(_CuhkImage(pair, person, row, label))
    return images


def _cuhk_splits(images: list[_CuhkImage]) -> dict[str, list[int]]:
    """Indices into `images`: training identities whole; per test identity and camera, the
    first image is the query and the others are gallery (Zhong et al.'s protocol)."""
    splits: dict[str, list[int]] = {"train": [], "query": [], "gallery": []}
    seen: set[tuple[int, int]] = set()
    for i, img in enumerate(images):
        if img.label in _CUHK_TRAIN_LABELS:
            splits["train"].append(i)
        elif (img.label, img.view) not in seen:
            seen.add((img.label, img.view))
            splits["query"].append(i)
        else:
            splits["gallery"].append(i)
    return splits


def _cuhk_pixels(img: _CuhkImage) -> np.ndarray:
    rng = np.random.default_rng([img.pair, img.person, img.row])
    return rng.integers(0, 256, size=(IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)


def write_cuhk03_np(root: Path, variant: str, folder: str = "cuhk03-np") -> Built:
    """The Market-style CUHK03-NP release of `variant` ('labeled' or 'detected'): PNG files named
    `<label>_c<view>_<n>.png`."""
    images = _cuhk_population(variant)
    location = root / folder / variant
    plan: dict[str, list[tuple[str, int, int]]] = {}
    for split, idx in _cuhk_splits(images).items():
        out = location / MARKET_FOLDERS[split]
        out.mkdir(parents=True)
        plan[split] = []
        for n, i in enumerate(idx, 1):
            img = images[i]
            name = f"{img.label:04d}_c{img.view}_{n}.png"
            Image.fromarray(_cuhk_pixels(img)).save(out / name)
            plan[split].append((name, img.label, img.view - 1))
    return _from_plan(location, plan)


_MATLAB_HEADER = (
    b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 "
    b"HDF5 schema 1.00 ."
)


def _write_cuhk03_hdf5(path: Path) -> None:
    """cuhk-03.mat as MATLAB v7.3 writes it: a 512-byte header block, cell arrays as datasets of
    object references into '#refs#', arrays stored transposed, empty cells as MATLAB empties."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        counter = 0

        def new(data: np.ndarray, matlab_class: str, empty: bool = False) -> h5py.Reference:
            nonlocal counter
            counter += 1
            ds = refs.create_dataset(f"r{counter}", data=data)
            ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)
            if empty:
                ds.attrs["MATLAB_empty"] = np.uint8(1)
            return ds.ref

        for variant in ("labeled", "detected"):
            present = {(im.pair, im.person, im.row): im for im in _cuhk_population(variant)}
            pair_refs = []
            for pair, people in enumerate(_CUHK_ROWS):
                cells = np.empty((10, len(people)), dtype=h5py.ref_dtype)
                for person in range(len(people)):
                    for row in range(10):
                        img = present.get((pair, person, row))
                        if img is not None:  # stored as (3, width, height)
                            cells[row, person] = new(_cuhk_pixels(img).T, "uint8")
                        elif (person + row) % 2:  # MATLAB's empty array: [0, 0] uint64
                            cells[row, person] = new(np.zeros(2, np.uint64), "double", True)
                        else:  # a zero-sized array, as some writers leave it
                            cells[row, person] = new(np.zeros((0,), np.uint8), "uint8", True)
                ds = refs.create_dataset(f"pair_{variant}_{pair}", data=cells)
                ds.attrs["MATLAB_class"] = np.bytes_("cell")
                pair_refs.append(ds.ref)
            top = f.create_dataset(variant, data=np.array([pair_refs], dtype=h5py.ref_dtype))
            top.attrs["MATLAB_class"] = np.bytes_("cell")
    with open(path, "r+b") as fh:
        fh.write(_MATLAB_HEADER.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")


def write_cuhk03_config(path: Path, variant: str) -> None:
    """cuhk03_new_protocol_config_<variant>.mat (MATLAB v5) as scipy.io.savemat writes it:
    column vectors of doubles with 1-based indices, filelist a cell column of names."""
    images = _cuhk_population(variant)
    splits = _cuhk_splits(images)
    filelist = np.empty((len(images), 1), dtype=object)
    for i, img in enumerate(images):
        filelist[i, 0] = img.mat_name

    def column(values: Iterable[int]) -> np.ndarray:
        return np.asarray(list(values), dtype=np.float64).reshape(-1, 1)

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        path,
        {
            "filelist": filelist,
            "labels": column(img.label for img in images),
            "camId": column(img.view for img in images),
            "train_idx": column(i + 1 for i in splits["train"]),
            "query_idx": column(i + 1 for i in splits["query"]),
            "gallery_idx": column(i + 1 for i in splits["gallery"]),
        },
    )


def write_cuhk03_mat(
    root: Path, folder: str = "cuhk03", configs_in_release: bool = False
) -> dict[str, Built]:
    """The raw release in torchreid's layout: <folder>/cuhk03_release/cuhk-03.mat and the two
    new-protocol configs beside cuhk03_release/ (or inside it). Returns one Built per variant,
    with the pixels of every image by its filelist name."""
    location = root / folder
    _write_cuhk03_hdf5(location / "cuhk03_release" / "cuhk-03.mat")
    config_dir = location / "cuhk03_release" if configs_in_release else location
    for variant in ("labeled", "detected"):
        write_cuhk03_config(config_dir / f"cuhk03_new_protocol_config_{variant}.mat", variant)
    built = {}
    for variant in ("labeled", "detected"):
        images = _cuhk_population(variant)
        plan = {
            split: [(images[i].mat_name, images[i].label, images[i].view - 1) for i in idx]
            for split, idx in _cuhk_splits(images).items()
        }
        pixels = {img.mat_name: _cuhk_pixels(img) for img in images}
        built[variant] = dataclasses.replace(_from_plan(location, plan), pixels=pixels)
    return built


# --- MSMT17 ------------------------------------------------------------------------------------

MSMT_VERSIONS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}


def write_msmt17(root: Path, version: str = "V1", folder: str | None = None) -> Built:
    """MSMT17_V1 or _V2 in miniature with its four list files; train = list_train + list_val."""
    train_dir, test_dir = MSMT_VERSIONS[version]
    location = root / (folder or f"MSMT17_{version}")
    jpeg = tiny_image_bytes()
    lists: dict[str, list[str]] = {}
    plan: dict[str, list[tuple[str, int, int]]] = {"train": [], "query": [], "gallery": []}
    counter = 0

    def add(list_name: str, split: str, image_dir: str, pid: int, cams: Iterable[int]) -> None:
        nonlocal counter
        for cam in cams:
            counter += 1
            rel = f"{pid:04d}/{pid:04d}_{counter:03d}_{cam:02d}_0303morning_{counter * 7:04d}_0.jpg"
            _write_files((location / image_dir / rel).parent, [Path(rel).name], jpeg)
            lists.setdefault(list_name, []).append(f"{rel} {pid}")
            plan[split].append((Path(rel).name, pid, cam - 1))

    add("list_train.txt", "train", train_dir, 0, (1, 2, 15))
    add("list_train.txt", "train", train_dir, 1, (3, 4))
    add("list_train.txt", "train", train_dir, 2, (5, 9, 12))
    add("list_val.txt", "train", train_dir, 3, (6, 7))
    add("list_val.txt", "train", train_dir, 0, (8,))
    for pid in (0, 1, 2):  # the test folder numbers its own identities from 0
        add("list_query.txt", "query", test_dir, pid, (1 + pid, 10))
        add("list_gallery.txt", "gallery", test_dir, pid, (2 + pid, 11, 14))
    add("list_gallery.txt", "gallery", test_dir, 3, (13,))
    for name, lines in lists.items():
        (location / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return _from_plan(location, plan)
