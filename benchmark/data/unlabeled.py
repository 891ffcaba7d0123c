"""The only form in which training data reaches a method: images (and camera ids, if declared).

Why it looks like this:
- Identity / class labels are not stored anywhere in the view, not even indirectly: re-ID file names
  encode the identity (`0002_c1s1_...jpg`), so the view keeps the encoded image bytes, never paths.
- Parsers return images sorted by file name, which groups identities together; the view presents
  them in a seeded random order so that position leaks nothing either. The harness keeps the
  matching labels (`HiddenLabels`) for its own diagnostics and evaluation.
- Camera ids are handed only to methods that declare they use them; asking otherwise raises.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset as TorchDataset

from benchmark.data.errors import DatasetFileError
from benchmark.data.types import ClusteringDataset, ReidSplit


class CameraIdsWithheld(PermissionError):
    """A method that did not declare camera-id use asked for camera ids."""


class UnlabeledView(TorchDataset):
    """Training images in a fixed shuffled order; `view[i]` is an RGB PIL image.

    Holds either encoded image bytes (re-ID) or a uint8 array (clustering sets), plus camera ids
    when granted. Nothing else.
    """

    __slots__ = ("_encoded", "_pixels", "_camids", "_num_cameras", "kind")

    def __init__(
        self,
        *,
        encoded: Sequence[bytes] | None = None,
        pixels: np.ndarray | None = None,
        camids: np.ndarray | None = None,
        num_cameras: int = 0,
        kind: str = "reid",
    ) -> None:
        if (encoded is None) == (pixels is None):
            raise ValueError("give exactly one of encoded image bytes or a pixel array")
        self._encoded = list(encoded) if encoded is not None else None
        self._pixels = pixels
        if camids is not None:
            camids = np.array(camids, dtype=np.int64, copy=True)
            camids.setflags(write=False)
        self._camids = camids
        self._num_cameras = num_cameras
        self.kind = kind

    def __len__(self) -> int:
        return len(self._encoded) if self._encoded is not None else len(self._pixels)

    def __getitem__(self, index: int) -> Image.Image:
        if self._encoded is not None:
            with Image.open(io.BytesIO(self._encoded[index])) as img:
                return img.convert("RGB")
        arr = self._pixels[index]
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        return Image.fromarray(arr, mode="RGB")

    @property
    def has_camids(self) -> bool:
        return self._camids is not None

    @property
    def camids(self) -> np.ndarray:
        """0-based camera id of each image (read-only); only for methods that declared camera use."""
        if self._camids is None:
            raise CameraIdsWithheld(
                "camera ids are withheld: the method does not declare uses_camera_ids"
            )
        return self._camids

    @property
    def num_cameras(self) -> int:
        if self._camids is None:
            raise CameraIdsWithheld("camera ids are withheld")
        return self._num_cameras

    def __reduce__(self):  # picklable for DataLoader workers, still without labels
        state = dict(
            encoded=self._encoded, pixels=self._pixels, camids=self._camids,
            num_cameras=self._num_cameras, kind=self.kind,
        )
        return (_rebuild_view, (state,))

    def __repr__(self) -> str:
        cams = f", {self._num_cameras} cameras" if self._camids is not None else ""
        return f"UnlabeledView({len(self)} {self.kind} images{cams})"


def _rebuild_view(state: dict) -> UnlabeledView:
    return UnlabeledView(**state)


class LabeledView(UnlabeledView):
    """An `UnlabeledView` plus the labels in view order, `view.labels`.

    Only for an adapter that declares `uses_labels` (the `supervised` ceiling that papers print): the
    runner builds one for no other (`benchmark.engine.runner.build_view`), and records, tables and
    plots mark such a run as using labels.
    """

    __slots__ = ("_labels",)

    def __init__(self, *, labels: np.ndarray, **view: object) -> None:
        super().__init__(**view)  # type: ignore[arg-type]
        labels = np.array(labels, dtype=np.int64, copy=True)
        if labels.shape != (len(self),):
            raise ValueError(f"{labels.shape[0]} labels for {len(self)} images")
        labels.setflags(write=False)
        self._labels = labels

    @property
    def labels(self) -> np.ndarray:
        """Identity / class label of each image, in view order (read-only)."""
        return self._labels

    def __reduce__(self):
        _, (state,) = super().__reduce__()
        return (_rebuild_labeled_view, (state, self._labels))

    def __repr__(self) -> str:
        return super().__repr__().replace("UnlabeledView(", "LabeledView(", 1)


def _rebuild_labeled_view(state: dict, labels: np.ndarray) -> LabeledView:
    return LabeledView(labels=labels, **state)


def with_labels(view: UnlabeledView, labels: np.ndarray) -> LabeledView:
    """The same images (and camera ids, if granted) with their labels attached."""
    return LabeledView(labels=labels, encoded=view._encoded, pixels=view._pixels,
                       camids=view._camids, num_cameras=view._num_cameras, kind=view.kind)


@dataclass(frozen=True)
class HiddenLabels:
    """What the harness keeps back: labels and camera ids in view order, and the permutation.

    `order[i]` is the index in the loaded split of the view's i-th image.
    """

    labels: np.ndarray
    camids: np.ndarray | None
    order: np.ndarray


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DatasetFileError(path, f"cannot read image: {exc.strerror or exc}") from None


def reid_view(
    split: ReidSplit, *, uses_camera_ids: bool, seed: int
) -> tuple[UnlabeledView, HiddenLabels]:
    order = np.random.default_rng(seed).permutation(split.num_images)
    encoded = [_read_bytes(split.paths[i]) for i in order]
    camids = split.camids[order]
    view = UnlabeledView(
        encoded=encoded,
        camids=camids if uses_camera_ids else None,
        num_cameras=split.num_cameras,
        kind="reid",
    )
    return view, HiddenLabels(labels=split.pids[order].copy(), camids=camids.copy(), order=order)


def clustering_view(
    dataset: ClusteringDataset, *, seed: int, part: str | None = None
) -> tuple[UnlabeledView, HiddenLabels]:
    """Whole dataset (train+test, the deep-clustering protocol) unless a `part` is named."""
    images, labels = dataset.part(part) if part else (dataset.images, dataset.labels)
    order = np.random.default_rng(seed).permutation(len(images))
    view = UnlabeledView(pixels=np.ascontiguousarray(images[order]), kind="clustering")
    return view, HiddenLabels(labels=labels[order].copy(), camids=None, order=order)
