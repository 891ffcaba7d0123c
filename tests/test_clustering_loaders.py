"""Clustering loaders read the official formats exactly, and bad copies fail naming the file.

Miniatures (tests/miniature_clustering.py) are written from the format definitions; the loaders
must give back the very pixels and labels that were written, the right way up.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from miniature_clustering import (
    MARK,
    MARK_VALUE,
    Miniature,
    build_cifar10,
    build_cifar100,
    build_mnist,
    build_stl10,
    idx_bytes,
)
from sklearn.datasets import load_digits

from benchmark.data.cards import SplitCounts, get_card
from benchmark.data.errors import DatasetCountError, DatasetFileError, DatasetNotFoundError
from benchmark.data.registry import entry, is_present, load_dataset
from benchmark.data.verify import checksum_problems

BUILDERS: dict[str, Callable[[Path], Miniature]] = {
    "mnist": lambda root: build_mnist(root, gz=True),
    "mnist-plain": lambda root: build_mnist(root, gz=False),
    "cifar10": build_cifar10,
    "cifar100": build_cifar100,
    "cifar100-coarse": lambda root: build_cifar100(root, coarse=True),
    "stl10": build_stl10,
}
SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3),
          "cifar100-coarse": (32, 32, 3), "stl10": (96, 96, 3)}


def dataset_name(case: str) -> str:
    return case.removesuffix("-plain")


def load_direct(name: str, location: Path):
    """The registered loader itself, bypassing locate (to see its own file errors)."""
    return entry(name).load(location, get_card(name))


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", sorted(BUILDERS))
def test_loader_returns_exactly_what_was_written(tmp_path, case):
    name = dataset_name(case)
    mini = BUILDERS[case](tmp_path)
    ds = load_dataset(name, tmp_path, strict=False)
    card = get_card(name)

    assert ds.root == mini.location
    assert ds.images.dtype == np.uint8 and ds.images.shape == (len(mini.images), *SHAPES[name])
    assert ds.labels.dtype == np.int64
    assert ds.num_classes == card.num_classes
    np.testing.assert_array_equal(ds.images, mini.images)
    np.testing.assert_array_equal(ds.labels, mini.labels)
    assert list(ds.parts) == ["train", "test"]
    for part in ("train", "test"):
        got_x, got_y = ds.part(part)
        want_x, want_y = mini.part(part)
        np.testing.assert_array_equal(got_x, want_x)
        np.testing.assert_array_equal(got_y, want_y)
    # upright: the one bright pixel of image 0 is at (row, column) = MARK, in the first channel
    assert ds.images[0, MARK[0], MARK[1], 0] == MARK_VALUE
    assert np.count_nonzero(ds.images[0]) == 1


def test_cifar100_fine_and_coarse_read_different_label_sets(tmp_path):
    fine_mini = build_cifar100(tmp_path)
    coarse_mini = build_cifar100(tmp_path, coarse=True)  # same files, same seed
    fine = load_dataset("cifar100", tmp_path, strict=False)
    coarse = load_dataset("cifar100-coarse", tmp_path, strict=False)
    np.testing.assert_array_equal(fine.images, coarse.images)
    np.testing.assert_array_equal(fine.labels, fine_mini.labels)
    np.testing.assert_array_equal(coarse.labels, coarse_mini.labels)
    assert not np.array_equal(fine.labels, coarse.labels)
    assert (fine.num_classes, coarse.num_classes) == (100, 20)


def test_stl10_orientation_matches_torchvision(tmp_path):
    """torchvision reshapes to (N, 3, 96, 96) and swaps the last two axes to get (C, H, W)."""
    build_stl10(tmp_path)
    ds = load_dataset("stl10", tmp_path, strict=False)
    raw = np.fromfile(tmp_path / "stl10_binary" / "train_X.bin", dtype=np.uint8)
    chw = np.transpose(np.reshape(raw, (-1, 3, 96, 96)), (0, 1, 3, 2))
    np.testing.assert_array_equal(ds.part("train")[0], np.transpose(chw, (0, 2, 3, 1)))


@pytest.mark.parametrize("folder", ["mnist/MNIST/raw", "mnist"])
def test_mnist_found_in_the_usual_folders(tmp_path, folder):
    mini = build_mnist(tmp_path, folder=folder)
    assert load_dataset("mnist", tmp_path, strict=False).root == mini.location


def test_mnist_prefers_unpacked_files_when_both_forms_exist(tmp_path):
    build_mnist(tmp_path, gz=True, seed=1)
    plain = build_mnist(tmp_path, gz=False, seed=2)
    ds = load_dataset("mnist", tmp_path, strict=False)
    np.testing.assert_array_equal(ds.images, plain.images)


def test_strict_load_passes_when_the_card_matches(tmp_path):
    mini = build_cifar10(tmp_path)
    splits = {
        part: SplitCounts(images=n, classes=int(np.unique(mini.part(part)[1]).size))
        for part, n in mini.counts.items()
    }
    card = dataclasses.replace(get_card("cifar10"), splits=splits)
    ds = load_dataset("cifar10", tmp_path, card=card)
    assert len(ds.images) == sum(mini.counts.values())


@pytest.mark.parametrize("case", ["mnist", "cifar10", "cifar100-coarse", "stl10"])
def test_card_with_other_counts_names_the_split(tmp_path, case):
    name = dataset_name(case)
    mini = BUILDERS[case](tmp_path)
    n_train, n_test = mini.counts["train"], mini.counts["test"]
    classes = int(np.unique(mini.part("train")[1]).size)
    card = dataclasses.replace(
        get_card(name),
        splits={
            "train": SplitCounts(images=n_train, classes=classes),
            "test": SplitCounts(images=n_test + 1),
        },
    )
    with pytest.raises(DatasetCountError) as err:
        load_dataset(name, tmp_path, card=card)
    assert [(p.split, p.field, p.expected, p.found) for p in err.value.problems] == [
        ("test", "images", n_test + 1, n_test)
    ]
    assert "'test'" in str(err.value)


def test_the_real_card_rejects_a_miniature(tmp_path):
    build_stl10(tmp_path)
    with pytest.raises(DatasetCountError) as err:
        load_dataset("stl10", tmp_path)
    assert {p.split for p in err.value.problems} == {"train", "test"}
    assert "expected 5000" in str(err.value) and "expected 8000" in str(err.value)


# --- files that are missing, truncated or not what they claim -------------------------------------

MISSING = [
    ("mnist", "t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte"),
    ("cifar10", "data_batch_3", "data_batch_3"),
    ("cifar100", "test", "test"),
    ("stl10", "test_y.bin", "test_y.bin"),
]


@pytest.mark.parametrize("case, filename, named", MISSING)
def test_missing_file(tmp_path, case, filename, named):
    mini = BUILDERS[case](tmp_path)
    (mini.location / filename).unlink()
    with pytest.raises(DatasetFileError) as err:
        load_direct(case, mini.location)
    assert err.value.path == mini.location / named
    assert "not found" in str(err.value)
    # through the registry the copy is simply not found, and the message says what was looked for
    with pytest.raises(DatasetNotFoundError, match=re.escape(named)):
        load_dataset(case, tmp_path, strict=False)


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


TRUNCATED = [
    ("mnist", "train-images-idx3-ubyte.gz", lambda n: n // 2),  # gzip stream cut short
    ("mnist-plain", "train-images-idx3-ubyte", lambda n: n - 1),  # one pixel missing
    ("mnist-plain", "t10k-labels-idx1-ubyte", lambda n: 6),  # inside the header
    ("cifar10", "test_batch", lambda n: n - 10),
    ("cifar100", "train", lambda n: n // 3),
    ("stl10", "test_X.bin", lambda n: n - 96),
    ("stl10", "train_X.bin", lambda n: 0),
]


@pytest.mark.parametrize("case, filename, keep", TRUNCATED)
def test_truncated_file_is_named(tmp_path, case, filename, keep):
    mini = BUILDERS[case](tmp_path)
    path = mini.location / filename
    _truncate(path, keep(path.stat().st_size))
    with pytest.raises(DatasetFileError) as err:
        load_dataset(dataset_name(case), tmp_path, strict=False)
    assert err.value.path == path
    assert str(path) in str(err.value)


@pytest.mark.parametrize("gz", [False, True])
def test_wrong_idx_magic_is_named(tmp_path, gz):
    mini = build_mnist(tmp_path, gz=gz)
    # a labels file (magic 0x00000801) where the test images belong
    suffix = ".gz" if gz else ""
    path = mini.location / f"t10k-images-idx3-ubyte{suffix}"
    data = idx_bytes(np.zeros(5, dtype=np.uint8))
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DatasetFileError, match="magic number is 0x00000801") as err:
        load_dataset("mnist", tmp_path, strict=False)
    assert err.value.path == path


def test_idx_element_type_other_than_unsigned_byte(tmp_path):
    mini = build_mnist(tmp_path, gz=False)
    path = mini.location / "train-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[2] = 0x0D  # float32
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetFileError, match="0x00000d01") as err:
        load_dataset("mnist", tmp_path, strict=False)
    assert err.value.path == path


def test_mnist_label_count_must_match_images(tmp_path):
    mini = build_mnist(tmp_path, gz=False)
    path = mini.location / "train-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.zeros(mini.counts["train"] + 1, dtype=np.uint8)))
    with pytest.raises(DatasetFileError, match="13 labels, but train-images") as err:
        load_dataset("mnist", tmp_path, strict=False)
    assert err.value.path == path


def test_stl10_label_problems_name_the_labels_file(tmp_path):
    mini = build_stl10(tmp_path)
    path = mini.location / "train_y.bin"
    path.write_bytes(bytes([1, 2, 3, 4, 5]))  # 4 images
    with pytest.raises(DatasetFileError, match="5 labels, but train_X.bin holds 4") as err:
        load_dataset("stl10", tmp_path, strict=False)
    assert err.value.path == path
    path.write_bytes(bytes([1, 0, 3, 4]))  # 0 is not a label of the 1-based file
    with pytest.raises(DatasetFileError, match="expected 1..10") as err:
        load_dataset("stl10", tmp_path, strict=False)
    assert err.value.path == path


def _rewrite_batch(path: Path, **changes: object) -> None:
    with open(path, "rb") as fh:
        batch = pickle.load(fh, encoding="latin1")
    batch.update(changes)
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=2)


def test_cifar_label_and_row_problems_name_the_batch(tmp_path):
    mini = build_cifar10(tmp_path)
    path = mini.location / "data_batch_2"
    _rewrite_batch(path, labels=[3, 10])
    with pytest.raises(DatasetFileError, match="outside 0..9") as err:
        load_dataset("cifar10", tmp_path, strict=False)
    assert err.value.path == path
    _rewrite_batch(path, labels=[3], data=np.zeros((2, 3072), np.uint8))
    with pytest.raises(DatasetFileError, match="one label per image") as err:
        load_dataset("cifar10", tmp_path, strict=False)
    assert err.value.path == path
    _rewrite_batch(path, labels=[3, 4], data=np.zeros((2, 1024), np.uint8))
    with pytest.raises(DatasetFileError, match="rows of 3072 bytes") as err:
        load_dataset("cifar10", tmp_path, strict=False)
    assert err.value.path == path


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless stand-in for any callable a hostile pickle could name


def test_cifar_pickle_may_not_name_arbitrary_globals(tmp_path):
    mini = build_cifar10(tmp_path)
    path = mini.location / "test_batch"
    _rewrite_batch(path, filenames=_RunsCode())
    with pytest.raises(DatasetFileError, match=r"refusing to load global posix\.getcwd|os\.getcwd"):
        load_dataset("cifar10", tmp_path, strict=False)


# --- checksums ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["mnist", "cifar10", "stl10"])
def test_checksums_flag_a_changed_byte(tmp_path, case):
    name = dataset_name(case)
    mini = BUILDERS[case](tmp_path)
    sums = {p.relative_to(mini.location).as_posix(): md5_of(p) for p in mini.files}
    card = dataclasses.replace(get_card(name), checksums=sums)
    assert checksum_problems(mini.location, card) == ([], [])

    victim = mini.files[-1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    problems, _ = checksum_problems(mini.location, card)
    assert [(p.split, p.field, p.expected, p.found) for p in problems] == [
        (str(victim), "md5", sums[victim.name], md5_of(victim))
    ]


def test_official_checksums_reject_a_miniature(tmp_path):
    mini = build_stl10(tmp_path)
    problems, _ = checksum_problems(mini.location, get_card("stl10"))
    assert {Path(p.split).name for p in problems} == {p.name for p in mini.files}


def test_mnist_unpacked_only_gets_notes_not_problems(tmp_path):
    mini = build_mnist(tmp_path, gz=False)
    problems, notes = checksum_problems(mini.location, get_card("mnist"))
    assert len(notes) == 4 and all("not checked" in n for n in notes)
    assert problems == []


def test_official_checksums_are_md5_hex():
    for name in ("mnist", "cifar10", "cifar100", "cifar100-coarse", "stl10"):
        sums = get_card(name).checksums
        assert sums and all(re.fullmatch(r"[0-9a-f]{32}", v) for v in sums.values()), name


# --- digits (embedded) ----------------------------------------------------------------------------


def test_digits_is_embedded_and_matches_its_card(tmp_path):
    assert is_present("digits", tmp_path / "nothing-here")
    ds = load_dataset("digits", tmp_path / "nothing-here")  # strict: counts match the card
    bunch = load_digits()
    assert ds.images.shape == (1797, 8, 8, 1) and ds.images.dtype == np.uint8
    assert ds.num_classes == 10 and np.unique(ds.labels).size == 10
    assert list(ds.parts) == ["all"] and ds.part("all")[0].shape[0] == 1797
    np.testing.assert_array_equal(ds.labels, bunch.target)
    # v in 0..16 -> round(v * 255 / 16); no value of v lands on a tie other than 8 -> 127.5
    expected = np.floor(bunch.images * 255 / 16 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(ds.images[..., 0], expected)
    assert ds.images.min() == 0 and ds.images.max() == 255
