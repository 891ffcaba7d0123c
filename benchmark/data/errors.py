"""Dataset errors that always name the file or split at fault, so a user can fix their copy."""

from __future__ import annotations

from pathlib import Path


class DatasetError(Exception):
    """A dataset on disk is missing, malformed or does not match its protocol card."""


class DatasetFileError(DatasetError):
    """A specific file (or folder) is missing or malformed."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DatasetCountError(DatasetError):
    """Loaded split sizes differ from the canonical counts on the card."""

    def __init__(self, dataset: str, problems: list["CountProblem"]) -> None:  # noqa: F821
        self.dataset = dataset
        self.problems = problems
        lines = "; ".join(p.message() for p in problems)
        super().__init__(f"{dataset}: counts differ from the protocol card: {lines}")


class DatasetNotFoundError(DatasetError):
    """No copy of the dataset under the data root."""
