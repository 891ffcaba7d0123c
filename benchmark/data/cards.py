"""Protocol cards: the canonical facts of each dataset, kept as TOML data in `datasets/`.

The code verifies what it loads against these numbers instead of trusting whatever is on disk.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from benchmark.data.errors import DatasetError, DatasetFileError
from benchmark.paths import CARDS_DIR

COUNT_FIELDS = ("images", "identities", "cameras", "classes")


@dataclass(frozen=True)
class SplitCounts:
    images: int
    identities: int | None = None
    cameras: int | None = None
    classes: int | None = None

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in COUNT_FIELDS if getattr(self, k) is not None}


@dataclass(frozen=True)
class ProtocolCard:
    name: str
    title: str
    kind: str
    splits: dict[str, SplitCounts]
    embedded: bool = False
    synthetic: bool = False
    withdrawn: bool = False
    folders: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    checksums: dict[str, str] = field(default_factory=dict)
    num_classes: int | None = None
    evaluation: str = ""
    notes: str = ""
    source: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_KNOWN = {
    "name", "title", "kind", "splits", "embedded", "synthetic", "withdrawn", "folders", "markers",
    "checksums", "num_classes", "evaluation", "notes",
}


def parse_card(path: Path) -> ProtocolCard:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetFileError(path, "protocol card not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise DatasetFileError(path, f"not valid TOML: {exc}") from None
    for key in ("name", "title", "kind", "splits"):
        if key not in raw:
            raise DatasetFileError(path, f"protocol card lacks required key {key!r}")
    if raw["kind"] not in ("reid", "clustering"):
        raise DatasetFileError(path, f"kind must be 'reid' or 'clustering', not {raw['kind']!r}")
    splits: dict[str, SplitCounts] = {}
    for split, counts in raw["splits"].items():
        unknown = set(counts) - set(COUNT_FIELDS)
        if unknown or "images" not in counts:
            raise DatasetFileError(
                path, f"[splits.{split}] needs 'images' and only {COUNT_FIELDS}; got {sorted(counts)}"
            )
        splits[split] = SplitCounts(**{k: int(v) for k, v in counts.items()})
    return ProtocolCard(
        name=raw["name"],
        title=raw["title"],
        kind=raw["kind"],
        splits=splits,
        embedded=bool(raw.get("embedded", False)),
        synthetic=bool(raw.get("synthetic", False)),
        withdrawn=bool(raw.get("withdrawn", False)),
        folders=tuple(raw.get("folders", ())),
        markers=tuple(raw.get("markers", ())),
        checksums=dict(raw.get("checksums", {})),
        num_classes=raw.get("num_classes"),
        evaluation=raw.get("evaluation", ""),
        notes=raw.get("notes", ""),
        source=path,
        extra={k: v for k, v in raw.items() if k not in _KNOWN},
    )


@cache
def all_cards(cards_dir: Path = CARDS_DIR) -> dict[str, ProtocolCard]:
    cards = {}
    for path in sorted(cards_dir.glob("*.toml")):
        card = parse_card(path)
        if card.name in cards:
            raise DatasetFileError(path, f"duplicate card name {card.name!r}")
        cards[card.name] = card
    return cards


def get_card(name: str) -> ProtocolCard:
    cards = all_cards()
    if name not in cards:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(cards))}")
    return cards[name]
