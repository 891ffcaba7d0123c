"""Dataset registry: one decorator per loader, one factory (`load_dataset`), in the style of timm.

A loader module registers `load(location, card) -> Dataset`; where the dataset sits under the data
root comes from its card (`folders`, `markers`) unless the loader registers its own `locate`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmark.data.cards import ProtocolCard, all_cards, get_card
from benchmark.data.errors import DatasetCountError, DatasetError, DatasetNotFoundError
from benchmark.data.types import Dataset
from benchmark.data.verify import count_problems
from benchmark.paths import data_root

Loader = Callable[[Path, ProtocolCard], Dataset]
Locator = Callable[[Path, ProtocolCard], "Path | None"]

# Modules that register loaders; imported on first use so `import benchmark` stays cheap.
LOADER_MODULES = (
    "benchmark.data.market1501",
    "benchmark.data.cuhk03",
    "benchmark.data.msmt17",
    "benchmark.data.mnist",
    "benchmark.data.cifar",
    "benchmark.data.stl10",
    "benchmark.data.digits",
    "benchmark.data.synthetic_reid",
)


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    load: Loader
    locate: Locator


_REGISTRY: dict[str, DatasetEntry] = {}
_loaded = False


def default_locate(root: Path, card: ProtocolCard) -> Path | None:
    """First `root/folder` (card order) that holds every marker path of the card."""
    for folder in card.folders:
        candidate = root / folder
        if candidate.is_dir() and all((candidate / m).exists() for m in card.markers):
            return candidate
    return None


def register_dataset(name: str, *, locate: Locator | None = None) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} registered twice")
        _REGISTRY[name] = DatasetEntry(name, fn, locate or default_locate)
        return fn

    return wrap


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        for module in LOADER_MODULES:
            importlib.import_module(module)
        _loaded = True


def entry(name: str) -> DatasetEntry:
    _ensure_loaded()
    get_card(name)  # unknown names fail with the list of known ones
    if name not in _REGISTRY:
        raise DatasetError(f"dataset {name!r} has a card but no registered loader")
    return _REGISTRY[name]


def dataset_names() -> list[str]:
    return sorted(all_cards())


def locate_dataset(name: str, root: str | Path | None = None) -> Path:
    card = get_card(name)
    base = data_root(root)
    found = entry(name).locate(base, card)
    if found is None:
        tried = ", ".join(str(base / f) for f in card.folders) or str(base)
        raise DatasetNotFoundError(
            f"{name}: no copy found under {base} (looked for {tried}"
            + (f" holding {', '.join(card.markers)}" if card.markers else "")
            + "); set --root or BENCHMARK_DATA_ROOT"
        )
    return found


def is_present(name: str, root: str | Path | None = None) -> bool:
    card = get_card(name)
    if card.embedded:
        return True
    return entry(name).locate(data_root(root), card) is not None


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    strict: bool = True,
    card: ProtocolCard | None = None,
) -> Dataset:
    """Load a dataset from the data root; with `strict`, its counts must match the card."""
    card = card or get_card(name)
    location = locate_dataset(name, root)
    dataset = entry(name).load(location, card)
    if strict:
        problems = count_problems(dataset, card)
        if problems:
            raise DatasetCountError(name, problems)
    return dataset
