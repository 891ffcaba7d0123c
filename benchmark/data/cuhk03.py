"""CUHK03-NP (Zhong et al.'s new 767/700 protocol) from either of the two forms people hold.

- The Market-style release of CUHK03-NP (`cuhk03-np/{labeled,detected}/bounding_box_train/...`,
  PNG): read by the Market parser.
- The original release, `cuhk03_release/cuhk-03.mat` (MATLAB v7.3, i.e. HDF5), with the protocol
  files `cuhk03_new_protocol_config_{labeled,detected}.mat` (MATLAB v5). Its images exist only
  inside the .mat, so they are extracted once into the cache folder as PNG; the splits then come
  from the config's 1-based indices, with `labels` as identity and `camId` (the view, 1 or 2) as
  camera. These are the numbers the Market-style release writes into its file names, so both forms
  give the same identities and cameras in every split.

How cuhk-03.mat looks through h5py (MATLAB stores column-major, so each shape is the transpose of
the one MATLAB shows):
- `f[variant]` holds 5 object references (a 1x5 array), one per camera pair;
- each points to a (10, n_identities) array of references: rows 0-4 are the images of the pair's
  first camera, rows 5-9 those of its second; a missing image is an empty MATLAB array, which h5py
  shows as a zero-sized or a 2-element array;
- an image is (3, width, height) uint8, so its transpose is (height, width, 3).
The config's `filelist` names each image `<pair>_<person>_<view>_<image>.png` (1-based; person
padded to 3 digits, image to 2): the names given to the extracted files.

h5py and scipy.io are imported where the raw form is read: every command that consults the
registry imports this module, and most never touch a .mat file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from benchmark.data.cards import ProtocolCard
from benchmark.data.errors import DatasetError, DatasetFileError
from benchmark.data.market1501 import load_market_style
from benchmark.data.registry import default_locate, register_dataset
from benchmark.data.types import ReidDataset, ReidSplit
from benchmark.paths import cache_dir

if TYPE_CHECKING:
    import h5py

IMAGES_PER_PERSON = 10  # per camera pair: 5 from each of its two cameras
CONFIG_SPLIT_KEYS = {"train": "train_idx", "query": "query_idx", "gallery": "gallery_idx"}
CONFIG_KEYS = (*CONFIG_SPLIT_KEYS.values(), "labels", "filelist", "camId")
MANIFEST = ".extracted-from.json"
_CACHE_FORMAT = 1


def _card_value(card: ProtocolCard, key: str) -> str:
    value = card.extra.get(key)
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{card.source or card.name}: protocol card lacks the key {key!r}")
    return value


def locate_cuhk03(root: Path, card: ProtocolCard) -> Path | None:
    """The Market-style folder if there is one, else the folder holding cuhk03_release/cuhk-03.mat.

    A raw copy whose protocol config is missing is still located, so that loading it reports
    exactly which config file to add.
    """
    found = default_locate(root, card)
    if found is not None:
        return found
    mat_file = _card_value(card, "mat_file")
    for folder in card.extra.get("mat_folders", ()):
        candidate = root / folder
        if (candidate / mat_file).is_file():
            return candidate
    return None


@dataclass(frozen=True)
class NewProtocol:
    """The content of one cuhk03_new_protocol_config_*.mat, converted to 0-based numbering."""

    path: Path
    filelist: list[str]
    labels: np.ndarray
    camids: np.ndarray
    indices: dict[str, np.ndarray]


def _integers(raw: dict, key: str, path: Path) -> np.ndarray:
    values = np.asarray(raw[key]).ravel()
    if values.dtype.kind not in "iuf" or not np.all(np.isfinite(values)):
        raise DatasetFileError(path, f"{key!r} must hold numbers, found dtype {values.dtype}")
    ints = values.astype(np.int64)
    if not np.array_equal(ints, values):
        raise DatasetFileError(path, f"{key!r} holds non-integer values")
    return ints


def _cell_string(cell: object, index: int, path: Path) -> str:
    value = np.asarray(cell).ravel()
    if value.size != 1 or value.dtype.kind not in "US":
        raise DatasetFileError(path, f"filelist entry {index + 1} is not a single file name")
    item = value[0]
    return item.decode() if isinstance(item, bytes) else str(item)


def _check_views(path: Path, filelist: list[str], cams: np.ndarray) -> None:
    """camId must be the view written in each name (`<pair>_<person>_<view>_<image>.png`)."""
    for i, (name, cam) in enumerate(zip(filelist, cams, strict=True)):
        fields = name.split("_")
        if len(fields) != 4:
            raise DatasetFileError(
                path, f"filelist entry {i + 1} ({name}) is not <pair>_<person>_<view>_<image>.png"
            )
        if fields[2] != str(cam):
            raise DatasetFileError(
                path, f"filelist entry {i + 1} ({name}) is view {fields[2]} but its camId is {cam}"
            )


def read_protocol_config(path: Path) -> NewProtocol:
    """Read and check a new-protocol config (MATLAB v5): indices in range, one label per file."""
    import scipy.io

    try:
        raw = scipy.io.loadmat(path)
    except NotImplementedError:
        raise DatasetFileError(path, "is MATLAB v7.3; protocol configs are MATLAB v5") from None
    except (ValueError, TypeError, OSError) as exc:
        raise DatasetFileError(path, f"not a readable MATLAB v5 file: {exc}") from None
    missing = [k for k in CONFIG_KEYS if k not in raw]
    if missing:
        raise DatasetFileError(
            path,
            f"lacks {', '.join(missing)} (a new-protocol config holds {', '.join(CONFIG_KEYS)})",
        )
    filelist = [_cell_string(c, i, path) for i, c in enumerate(np.asarray(raw["filelist"]).ravel())]
    n = len(filelist)
    labels = _integers(raw, "labels", path)
    cams = _integers(raw, "camId", path)
    for key, arr in (("labels", labels), ("camId", cams)):
        if arr.size != n:
            raise DatasetFileError(path, f"{key!r} has {arr.size} entries but filelist has {n}")
    if n and cams.min() < 1:
        raise DatasetFileError(path, f"camId must be 1-based (MATLAB), found {cams.min()}")
    indices = {}
    for split, key in CONFIG_SPLIT_KEYS.items():
        idx = _integers(raw, key, path)
        if idx.size == 0:
            raise DatasetFileError(path, f"{key!r} (split {split!r}) is empty")
        bad = idx[(idx < 1) | (idx > n)]
        if bad.size:
            raise DatasetFileError(
                path, f"{key!r} (split {split!r}) holds {bad[0]}, outside the 1-based range 1..{n}"
            )
        indices[split] = idx - 1
    _check_views(path, filelist, cams)
    return NewProtocol(path, filelist, labels=labels, camids=cams - 1, indices=indices)


def _find_config(location: Path, card: ProtocolCard) -> Path:
    name = _card_value(card, "mat_config")
    mat_dir = (location / _card_value(card, "mat_file")).parent
    candidates = [location / name, mat_dir / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetFileError(
        candidates[0],
        f"protocol config of {card.name} is missing (looked here and in {mat_dir}); it comes with "
        "the CUHK03-NP new protocol (Zhong et al., CVPR 2017)",
    )


def image_name(pair: int, person: int, row: int) -> str:
    """File name of the image in cell (row, person) of camera pair `pair` (all 0-based)."""
    view = 1 if row < IMAGES_PER_PERSON // 2 else 2
    return f"{pair + 1}_{person + 1:03d}_{view}_{row + 1:02d}.png"


def extract_images(mat_path: Path, variant: str, out: Path) -> int:
    """Write every image of `variant` in cuhk-03.mat to `out` as PNG; returns how many."""
    import h5py

    try:
        mat = h5py.File(mat_path, "r")
    except OSError as exc:
        raise DatasetFileError(mat_path, f"cannot be read as MATLAB v7.3 (HDF5): {exc}") from None
    try:
        with mat:
            return _write_images(mat, mat_path, variant, out)
    except (KeyError, ValueError, TypeError) as exc:  # dangling or mistyped references
        raise DatasetFileError(mat_path, f"malformed {variant!r} cell arrays: {exc}") from None


def _write_images(mat: h5py.File, mat_path: Path, variant: str, out: Path) -> int:
    import h5py

    written = 0
    if variant not in mat or not isinstance(mat[variant], h5py.Dataset):
        raise DatasetFileError(
            mat_path, f"has no {variant!r} cell array (top-level entries: {sorted(mat.keys())})"
        )
    for pair, pair_ref in enumerate(np.asarray(mat[variant][()]).ravel()):
        where = f"{variant} camera pair {pair + 1}"
        if not isinstance(pair_ref, h5py.Reference) or not pair_ref:
            raise DatasetFileError(mat_path, f"{where}: not an object reference")
        cells = np.asarray(mat[pair_ref][()])
        if cells.ndim != 2 or cells.shape[0] != IMAGES_PER_PERSON or cells.dtype != object:
            raise DatasetFileError(
                mat_path,
                f"{where}: expected a ({IMAGES_PER_PERSON}, identities) array of image "
                f"references, found {cells.dtype} {cells.shape}",
            )
        for person in range(cells.shape[1]):
            for row in range(IMAGES_PER_PERSON):
                ref = cells[row, person]
                if not ref:
                    continue
                img = np.asarray(mat[ref][()])
                if img.size == 0 or img.ndim < 3:
                    continue  # an empty cell: this person has fewer images in this view
                pixels = np.ascontiguousarray(img.T)
                if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
                    raise DatasetFileError(
                        mat_path,
                        f"{where}, identity {person + 1}, image {row + 1}: expected uint8 "
                        f"RGB, found {pixels.dtype} of shape {img.shape}",
                    )
                Image.fromarray(pixels).save(out / image_name(pair, person, row))
                written += 1
    if written == 0:
        raise DatasetFileError(mat_path, f"the {variant!r} cell arrays hold no images")
    return written


def _source_stamp(mat_path: Path, variant: str) -> dict[str, object]:
    st = mat_path.stat()
    return {
        "format": _CACHE_FORMAT,
        "source": str(mat_path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "variant": variant,
    }


def _read_stamp(folder: Path) -> dict[str, object] | None:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cached_images(mat_path: Path, variant: str, *, refresh: bool = False) -> Path:
    """Folder of the extracted images of `variant`; extracts them first if the cache is stale.

    The cache records which .mat (path, size, mtime) it came from. Extraction goes to a temporary
    folder beside the target, which then replaces it in one rename, so an interrupted run never
    leaves a half-filled cache that looks complete.
    """
    target = cache_dir() / "cuhk03" / variant
    stamp = _source_stamp(mat_path, variant)
    if not refresh and _read_stamp(target) == stamp:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{variant}-", dir=target.parent))
    try:
        extract_images(mat_path, variant, tmp)
        (tmp / MANIFEST).write_text(json.dumps(stamp), encoding="utf-8")
        stale = None
        if target.exists():
            stale = target.with_name(f".{variant}-stale-{uuid.uuid4().hex}")
            os.replace(target, stale)
        try:
            os.replace(tmp, target)
        except OSError:
            if _read_stamp(target) != stamp:  # not a concurrent extraction of the same file
                raise
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _missing_images(protocol: NewProtocol, image_dir: Path) -> list[str]:
    present = set(os.listdir(image_dir))
    used = np.unique(np.concatenate(list(protocol.indices.values())))
    return [protocol.filelist[i] for i in used if protocol.filelist[i] not in present]


def load_cuhk03_mat(location: Path, card: ProtocolCard) -> ReidDataset:
    """The raw form: images from cuhk-03.mat (cached as PNG), splits from the protocol config."""
    variant = _card_value(card, "variant")
    mat_path = location / _card_value(card, "mat_file")
    if not mat_path.is_file():
        raise DatasetFileError(mat_path, f"{card.name}: cuhk-03.mat not found")
    protocol = read_protocol_config(_find_config(location, card))
    image_dir = cached_images(mat_path, variant)
    if _missing_images(protocol, image_dir):  # files deleted from the cache: extract again
        image_dir = cached_images(mat_path, variant, refresh=True)
        missing = _missing_images(protocol, image_dir)
        if missing:
            raise DatasetFileError(
                protocol.path,
                f"{len(missing)} filelist entries name no {variant} image of {mat_path} "
                f"(first: {', '.join(missing[:3])})",
            )
    splits = {
        split: ReidSplit(
            name=split,
            paths=[image_dir / protocol.filelist[i] for i in idx],
            pids=protocol.labels[idx].copy(),
            camids=protocol.camids[idx].copy(),
        )
        for split, idx in protocol.indices.items()
    }
    return ReidDataset(name=card.name, root=location, **splits)


@register_dataset("cuhk03-np-detected", locate=locate_cuhk03)
@register_dataset("cuhk03-np-labeled", locate=locate_cuhk03)
def load_cuhk03(location: Path, card: ProtocolCard) -> ReidDataset:
    """Registry loader: whichever form `locate_cuhk03` found."""
    if card.markers and all((location / m).is_dir() for m in card.markers):
        return load_market_style(location, card.name, exts=(".png",))
    return load_cuhk03_mat(location, card)
