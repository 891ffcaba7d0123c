"""Re-ID parsers against miniature copies written in each dataset's real on-disk format.

Expected identities, cameras and counts come from the builders' own plans (tests/miniature_reid.py),
never from the parsers; bad copies must fail with an error that names the file or split at fault.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hypothesis import given
from hypothesis import strategies as st
from miniature_reid import (
    Built,
    write_cuhk03_mat,
    write_cuhk03_np,
    write_dukemtmc_reid,
    write_market1501,
    write_msmt17,
)
from PIL import Image

from benchmark.data import cuhk03
from benchmark.data.errors import (
    DatasetCountError,
    DatasetFileError,
    DatasetNotFoundError,
)
from benchmark.data.market1501 import load_market_style, parse_name
from benchmark.data.msmt17 import load_msmt17_folder
from benchmark.data.registry import is_present, load_dataset, locate_dataset
from benchmark.data.types import ReidDataset, ReidSplit

REID = ("market1501", "dukemtmc-reid", "cuhk03-np-labeled", "cuhk03-np-detected", "msmt17")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCHMARK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BENCHMARK_DATA_ROOT", raising=False)


def pairs(split: ReidSplit) -> list[tuple[int, int]]:
    return sorted(zip(split.pids.tolist(), split.camids.tolist(), strict=True))


def assert_matches_plan(dataset: ReidDataset, built: Built) -> None:
    for name, split in dataset.splits().items():
        assert split.name == name
        assert pairs(split) == built.labels[name], name
        assert split.pids.dtype == np.int64 and split.camids.dtype == np.int64
        for path, pid, cam in zip(split.paths, split.pids, split.camids, strict=True):
            assert path.is_file(), path
            if built.by_name:
                assert built.by_name[path.name] == (pid, cam), path


# --- each format loads as built ---------------------------------------------------------------


def test_market1501_loads_as_built(tmp_path: Path) -> None:
    built = write_market1501(tmp_path)
    ds = load_dataset("market1501", tmp_path, card=built.card("market1501"))  # strict counts
    assert_matches_plan(ds, built)
    all_pids = np.concatenate([s.pids for s in ds.splits().values()])
    assert -1 not in all_pids  # junk dropped ...
    test_folder = built.location / "bounding_box_test"
    junk_files = [n for n in os.listdir(test_folder) if n.startswith("-1_")]
    assert len(junk_files) == built.junk > 0  # ... though it was there
    assert 0 in ds.gallery.pids.tolist()  # distractors kept
    for split in ds.splits().values():
        names = [p.name for p in split.paths]
        assert names == sorted(names)
        # Thumbs.db and .DS_Store are no images
        assert all(n.endswith(".jpg") and not n.startswith(".") for n in names)
        assert all(p.parent.name != "gt_bbox" for p in split.paths)
    assert ds.train.camids.min() == 0 and ds.train.camids.max() == 5  # c1..c6 -> 0..5


def test_dukemtmc_reid_loads_as_built(tmp_path: Path) -> None:
    built = write_dukemtmc_reid(tmp_path)
    ds = load_dataset("dukemtmc-reid", tmp_path, card=built.card("dukemtmc-reid"))
    assert_matches_plan(ds, built)
    # gallery-only distractor identities carry ordinary ids and count as identities
    assert ds.gallery.num_identities == len(set(ds.query.pids.tolist())) + 1
    assert ds.train.num_cameras == 8 and ds.train.camids.max() == 7


@pytest.mark.parametrize("variant", ["labeled", "detected"])
def test_cuhk03_np_market_style_loads_as_built(tmp_path: Path, variant: str) -> None:
    built = write_cuhk03_np(tmp_path, variant)
    name = f"cuhk03-np-{variant}"
    assert locate_dataset(name, tmp_path) == tmp_path / "cuhk03-np" / variant
    ds = load_dataset(name, tmp_path, card=built.card(name))
    assert_matches_plan(ds, built)
    assert set(ds.query.camids.tolist()) == {0, 1}


def test_cuhk03_variants_differ_as_built(tmp_path: Path) -> None:
    labeled = write_cuhk03_np(tmp_path, "labeled")
    detected = write_cuhk03_np(tmp_path, "detected")
    assert labeled.counts() != detected.counts()  # the builders' detected copy misses one box
    ds_l = load_dataset("cuhk03-np-labeled", tmp_path, card=labeled.card("cuhk03-np-labeled"))
    ds_d = load_dataset("cuhk03-np-detected", tmp_path, card=detected.card("cuhk03-np-detected"))
    assert ds_l.gallery.num_images == ds_d.gallery.num_images + 1


def test_cuhk03_mat_form_extracts_images_once(tmp_path: Path, monkeypatch) -> None:
    built = write_cuhk03_mat(tmp_path / "data")["labeled"]
    ds = load_dataset("cuhk03-np-labeled", tmp_path / "data", card=built.card("cuhk03-np-labeled"))
    assert_matches_plan(ds, built)
    extracted = tmp_path / "cache" / "cuhk03" / "labeled"
    for split in ds.splits().values():
        for path in split.paths:
            assert path.parent == extracted
            with Image.open(path) as img:
                assert img.format == "PNG"
                np.testing.assert_array_equal(np.asarray(img), built.pixels[path.name])
    # everything the .mat holds was extracted (empty cells skipped), nothing else left behind
    assert {p.name for p in extracted.glob("*.png")} == set(built.pixels)
    assert sorted(p.name for p in extracted.parent.iterdir()) == ["labeled"]

    def no_second_extraction(*args, **kwargs):
        raise AssertionError("images extracted again although the cache is current")

    monkeypatch.setattr(cuhk03, "extract_images", no_second_extraction)
    card = built.card("cuhk03-np-labeled")
    again = load_dataset("cuhk03-np-labeled", tmp_path / "data", card=card)
    assert [p.name for p in again.train.paths] == [p.name for p in ds.train.paths]


def test_cuhk03_cache_is_rebuilt_when_images_are_missing(tmp_path: Path) -> None:
    built = write_cuhk03_mat(tmp_path / "data")["detected"]
    card = built.card("cuhk03-np-detected")
    first = load_dataset("cuhk03-np-detected", tmp_path / "data", card=card)
    first.query.paths[0].unlink()
    second = load_dataset("cuhk03-np-detected", tmp_path / "data", card=card)
    assert second.query.paths[0].is_file()


@pytest.mark.parametrize("variant", ["labeled", "detected"])
def test_both_cuhk03_forms_give_the_same_splits(tmp_path: Path, variant: str) -> None:
    name = f"cuhk03-np-{variant}"
    market_built = write_cuhk03_np(tmp_path / "a", variant)
    mat_built = write_cuhk03_mat(tmp_path / "b")[variant]
    market = load_dataset(name, tmp_path / "a", card=market_built.card(name))
    mat = load_dataset(name, tmp_path / "b", card=mat_built.card(name))
    for split in ("train", "query", "gallery"):
        assert pairs(market.splits()[split]) == pairs(mat.splits()[split]), split

    # and the same pixels behind each (identity, camera): the forms hold the same images
    def images(ds: ReidDataset) -> list[tuple[int, int, bytes]]:
        out = []
        for s in ds.splits().values():
            for p, pid, cam in zip(s.paths, s.pids, s.camids, strict=True):
                with Image.open(p) as img:
                    out.append((int(pid), int(cam), np.asarray(img).tobytes()))
        return sorted(out)

    assert images(market) == images(mat)


def test_cuhk03_configs_inside_the_release_folder(tmp_path: Path) -> None:
    built = write_cuhk03_mat(tmp_path, configs_in_release=True)["labeled"]
    ds = load_dataset("cuhk03-np-labeled", tmp_path, card=built.card("cuhk03-np-labeled"))
    assert_matches_plan(ds, built)


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17_loads_as_built(tmp_path: Path, version: str) -> None:
    built = write_msmt17(tmp_path, version)
    assert locate_dataset("msmt17", tmp_path) == tmp_path / f"MSMT17_{version}"
    ds = load_dataset("msmt17", tmp_path, card=built.card("msmt17"))
    assert_matches_plan(ds, built)
    lines = {
        f: (built.location / f).read_text().split("\n")[:-1]
        for f in ("list_train.txt", "list_val.txt")
    }
    assert ds.train.num_images == len(lines["list_train.txt"]) + len(lines["list_val.txt"])
    assert ds.train.camids.max() == 14  # c15 -> 14


def test_images_are_not_decoded_at_load(tmp_path: Path) -> None:
    built = write_market1501(tmp_path)
    (built.location / "query" / "0001_c1s1_000001_01.jpg").write_bytes(b"not a jpeg")
    ds = load_market_style(built.location, "market1501")
    assert "0001_c1s1_000001_01.jpg" in [p.name for p in ds.query.paths]


@given(
    pid=st.integers(min_value=-1, max_value=9999),
    cam=st.integers(min_value=1, max_value=9),
    style=st.sampled_from(["market", "duke", "cuhk"]),
)
def test_parse_name_reads_identity_and_camera(pid: int, cam: int, style: str) -> None:
    stem = f"{pid:04d}" if pid >= 0 else "-1"
    tail = {"market": "s3_001234_02.jpg", "duke": "_f0046182.jpg", "cuhk": "_7.png"}[style]
    assert parse_name(f"{stem}_c{cam}{tail}", Path("split")) == (pid, cam - 1)


# --- bad copies name the file or split at fault ----------------------------------------------


@pytest.mark.parametrize("folder", ["bounding_box_train", "query", "bounding_box_test"])
def test_missing_split_folder_is_named(tmp_path: Path, folder: str) -> None:
    built = write_market1501(tmp_path)
    shutil.rmtree(built.location / folder)
    with pytest.raises(DatasetFileError) as err:
        load_market_style(built.location, "market1501")
    assert err.value.path == built.location / folder
    assert folder in str(err.value)


def test_unparseable_image_name_is_named(tmp_path: Path) -> None:
    built = write_market1501(tmp_path)
    bad = built.location / "bounding_box_train" / "IMG_0001.jpg"
    bad.write_bytes(b"")
    with pytest.raises(DatasetFileError) as err:
        load_market_style(built.location, "market1501")
    assert err.value.path == bad and "IMG_0001.jpg" in str(err.value)


def test_camera_zero_is_rejected(tmp_path: Path) -> None:
    built = write_market1501(tmp_path)
    bad = built.location / "query" / "0001_c0s1_000001_01.jpg"
    bad.write_bytes(b"")
    with pytest.raises(DatasetFileError) as err:
        load_market_style(built.location, "market1501")
    assert err.value.path == bad


@pytest.mark.parametrize("junk_only", [False, True])
def test_empty_split_is_named(tmp_path: Path, junk_only: bool) -> None:
    built = write_market1501(tmp_path)
    query = built.location / "query"
    shutil.rmtree(query)
    query.mkdir()
    (query / "Thumbs.db").write_bytes(b"")
    if junk_only:
        (query / "-1_c1s1_000001_00.jpg").write_bytes(b"")
    with pytest.raises(DatasetFileError) as err:
        load_market_style(built.location, "market1501")
    assert err.value.path == query and "'query'" in str(err.value)


@pytest.mark.parametrize("split", ["train", "query", "gallery"])
def test_wrong_count_names_the_split(tmp_path: Path, split: str) -> None:
    built = write_market1501(tmp_path)
    card = built.card("market1501")
    more = dataclasses.replace(card.splits[split], images=card.splits[split].images + 1)
    bad = dataclasses.replace(card, splits={**card.splits, split: more})
    with pytest.raises(DatasetCountError) as err:
        load_dataset("market1501", tmp_path, card=bad)
    assert [(p.split, p.field) for p in err.value.problems] == [(split, "images")]
    assert f"split {split!r}" in str(err.value)


def test_canonical_counts_reject_a_miniature(tmp_path: Path) -> None:
    write_market1501(tmp_path)
    with pytest.raises(DatasetCountError) as err:
        load_dataset("market1501", tmp_path)  # the real card: 12,936 train images, ...
    assert {p.split for p in err.value.problems} == {"train", "query", "gallery"}
    assert load_dataset("market1501", tmp_path, strict=False).train.num_images > 0


def test_msmt17_missing_image_names_list_line_and_image(tmp_path: Path) -> None:
    built = write_msmt17(tmp_path, "V1")
    listing = built.location / "list_gallery.txt"
    rel = listing.read_text().splitlines()[2].split()[0]
    (built.location / "test" / rel).unlink()
    with pytest.raises(DatasetFileError) as err:
        load_msmt17_folder(built.location)
    assert err.value.path == listing
    assert "line 3" in str(err.value) and rel in str(err.value)


@pytest.mark.parametrize(
    "line",
    [
        "0000/0000_000_01_0303morning_0015_0.jpg",  # no label
        "0000/0000_000_01_0303morning_0015_0.jpg zero",  # label not a number
        "0000/0000_000_xx_0303morning_0015_0.jpg 0",  # camera not a number
        "0000/0000_000_00_0303morning_0015_0.jpg 0",  # camera 0
        "0000/0000.jpg 0",  # no camera field
        "0000/0000_000_01_0303morning_0015_0.jpg 0 extra",
    ],
)
def test_msmt17_malformed_line_names_list_and_line(tmp_path: Path, line: str) -> None:
    built = write_msmt17(tmp_path, "V2")
    listing = built.location / "list_val.txt"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    with pytest.raises(DatasetFileError) as err:
        load_msmt17_folder(built.location)
    assert err.value.path == listing and "line 2" in str(err.value)


def test_msmt17_missing_list_or_image_folder_is_named(tmp_path: Path) -> None:
    built = write_msmt17(tmp_path, "V1")
    (built.location / "list_query.txt").unlink()
    with pytest.raises(DatasetFileError) as err:
        load_msmt17_folder(built.location)
    assert err.value.path == built.location / "list_query.txt"
    shutil.rmtree(built.location / "test")
    with pytest.raises(DatasetFileError) as err:
        load_msmt17_folder(built.location)
    assert err.value.path == built.location and "test/" in str(err.value)


def test_cuhk03_missing_config_is_named(tmp_path: Path) -> None:
    write_cuhk03_mat(tmp_path)
    config = tmp_path / "cuhk03" / "cuhk03_new_protocol_config_detected.mat"
    config.unlink()
    assert is_present("cuhk03-np-detected", tmp_path)  # located, so the error can say what lacks
    with pytest.raises(DatasetFileError) as err:
        load_dataset("cuhk03-np-detected", tmp_path, strict=False)
    assert err.value.path == config


def test_cuhk03_config_index_out_of_range_is_named(tmp_path: Path) -> None:
    write_cuhk03_mat(tmp_path)
    config = tmp_path / "cuhk03" / "cuhk03_new_protocol_config_labeled.mat"
    raw = scipy.io.loadmat(config)
    raw = {k: v for k, v in raw.items() if not k.startswith("__")}
    raw["query_idx"] = raw["query_idx"].copy()
    raw["query_idx"][0, 0] = raw["filelist"].size + 1
    scipy.io.savemat(config, raw)
    with pytest.raises(DatasetFileError) as err:
        load_dataset("cuhk03-np-labeled", tmp_path, strict=False)
    assert err.value.path == config and "query_idx" in str(err.value)


def test_cuhk03_config_naming_an_image_the_mat_lacks_is_named(tmp_path: Path) -> None:
    write_cuhk03_mat(tmp_path)
    config = tmp_path / "cuhk03" / "cuhk03_new_protocol_config_labeled.mat"
    raw = {k: v for k, v in scipy.io.loadmat(config).items() if not k.startswith("__")}
    first = str(raw["filelist"][0, 0][0])
    raw["filelist"][0, 0] = np.array(["5_099" + first[5:]])  # same view, no such person
    scipy.io.savemat(config, raw)
    with pytest.raises(DatasetFileError) as err:
        load_dataset("cuhk03-np-labeled", tmp_path, strict=False)
    assert err.value.path == config and "5_099" in str(err.value)


def test_cuhk03_camid_disagreeing_with_the_file_name_is_named(tmp_path: Path) -> None:
    write_cuhk03_mat(tmp_path)
    config = tmp_path / "cuhk03" / "cuhk03_new_protocol_config_labeled.mat"
    raw = {k: v for k, v in scipy.io.loadmat(config).items() if not k.startswith("__")}
    raw["camId"] = 3 - raw["camId"]  # views swapped
    scipy.io.savemat(config, raw)
    with pytest.raises(DatasetFileError) as err:
        load_dataset("cuhk03-np-labeled", tmp_path, strict=False)
    assert err.value.path == config and "camId" in str(err.value)


def test_cuhk03_unreadable_mat_is_named(tmp_path: Path) -> None:
    write_cuhk03_mat(tmp_path)
    mat = tmp_path / "cuhk03" / "cuhk03_release" / "cuhk-03.mat"
    mat.write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
    with pytest.raises(DatasetFileError) as err:
        load_dataset("cuhk03-np-labeled", tmp_path, strict=False)
    assert err.value.path == mat
    assert list((tmp_path / "cache" / "cuhk03").iterdir()) == []  # no half-made cache left


def test_cuhk03_config_of_another_protocol_is_named(tmp_path: Path) -> None:
    write_cuhk03_mat(tmp_path)
    config = tmp_path / "cuhk03" / "cuhk03_new_protocol_config_labeled.mat"
    scipy.io.savemat(config, {"testsets": np.zeros((20, 1))})
    with pytest.raises(DatasetFileError) as err:
        load_dataset("cuhk03-np-labeled", tmp_path, strict=False)
    assert err.value.path == config and "train_idx" in str(err.value)


# --- discovery under the data root ------------------------------------------------------------


@pytest.mark.parametrize(
    "folder", ["Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15", "market1501"]
)
def test_market1501_is_found_under_the_card_folders(tmp_path: Path, folder: str) -> None:
    write_market1501(tmp_path, folder=folder)
    assert locate_dataset("market1501", tmp_path) == tmp_path / folder
    assert is_present("market1501", tmp_path)
    assert [n for n in REID if is_present(n, tmp_path)] == ["market1501"]


def test_data_root_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dukemtmc_reid(tmp_path, folder="dukemtmc-reid/DukeMTMC-reID")
    monkeypatch.setenv("BENCHMARK_DATA_ROOT", str(tmp_path))
    assert locate_dataset("dukemtmc-reid") == tmp_path / "dukemtmc-reid" / "DukeMTMC-reID"


def test_nothing_found_in_an_empty_root(tmp_path: Path) -> None:
    for name in REID:
        assert not is_present(name, tmp_path)
    with pytest.raises(DatasetNotFoundError) as err:
        locate_dataset("market1501", tmp_path)
    assert "Market-1501-v15.09.15" in str(err.value) and "bounding_box_train" in str(err.value)


def test_a_folder_without_the_split_folders_is_not_a_copy(tmp_path: Path) -> None:
    (tmp_path / "Market-1501-v15.09.15" / "query").mkdir(parents=True)
    assert not is_present("market1501", tmp_path)


@pytest.mark.parametrize("folder", ["cuhk03", "CUHK03", "."])
def test_cuhk03_mat_form_is_found(tmp_path: Path, folder: str) -> None:
    write_cuhk03_mat(tmp_path, folder=folder)
    for variant in ("labeled", "detected"):
        assert locate_dataset(f"cuhk03-np-{variant}", tmp_path) == tmp_path / folder


def test_cuhk03_market_style_is_preferred_over_the_mat(tmp_path: Path) -> None:
    write_cuhk03_mat(tmp_path)
    built = write_cuhk03_np(tmp_path, "labeled", folder="CUHK03-NP")
    assert locate_dataset("cuhk03-np-labeled", tmp_path) == tmp_path / "CUHK03-NP" / "labeled"
    ds = load_dataset("cuhk03-np-labeled", tmp_path, card=built.card("cuhk03-np-labeled"))
    assert ds.train.paths[0].suffix == ".png" and ds.train.paths[0].parent.parent == built.location
    assert not (tmp_path / "cache").exists()  # nothing extracted


@pytest.mark.parametrize("folder", ["msmt17/MSMT17_V2", "MSMT17"])
def test_msmt17_is_found_under_the_card_folders(tmp_path: Path, folder: str) -> None:
    write_msmt17(tmp_path, "V2", folder=folder)
    assert locate_dataset("msmt17", tmp_path) == tmp_path / folder
