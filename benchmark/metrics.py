"""The metrics a result carries, per task: their names, the orders tables print them in, and the rules
that `check` and the claims reference apply to each. Every list of metric names in the harness
comes from here, so adding or renaming a metric is one edit (a test fails on a list written
elsewhere). Torch-free: the reporting side imports it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricRule:
    name: str
    task: str  # "reid" or "clustering"
    meaning: str
    # `check --write-reference`: the cell's tolerance is --tolerance-default times this. Rank and
    # per-sample metrics move more from seed to seed than mAP and NMI, which average over
    # everything.
    tolerance_factor: float
    # The claims reference (leaderboards/reference/paper.toml): the default tolerance in points
    # around a paper's claim, where the claims file gives none.
    claim_tolerance_pct: float


RULES: tuple[MetricRule, ...] = (
    MetricRule("mAP", "reid", "mean average precision over the queries", 1.0, 2.0),
    MetricRule("mINP", "reid", "mean inverse negative penalty (the hardest match's rank)", 1.5, 2.0),
    MetricRule("R1", "reid", "CMC at rank 1", 1.5, 2.0),
    MetricRule("R5", "reid", "CMC at rank 5", 1.5, 1.5),
    MetricRule("R10", "reid", "CMC at rank 10", 1.5, 1.5),
    MetricRule("ACC", "clustering", "accuracy under the best one-to-one cluster matching", 1.5, 3.0),
    MetricRule("NMI", "clustering", "normalised mutual information", 1.0, 2.0),
    MetricRule("ARI", "clustering", "adjusted Rand index", 1.5, 3.0),
)
TASKS = ("reid", "clustering")

# The scalar metrics of each task, in the order records and claims list them.
BY_TASK: dict[str, tuple[str, ...]] = {
    task: tuple(rule.name for rule in RULES if rule.task == task) for task in TASKS
}
ALL: tuple[str, ...] = tuple(rule.name for rule in RULES)
RULE = {rule.name: rule for rule in RULES}

# The order papers print them in: the columns of a dataset's leaderboard table.
TABLE_ORDER: dict[str, tuple[str, ...]] = {
    "reid": ("mAP", "R1", "R5", "R10", "mINP"),
    "clustering": ("ACC", "NMI", "ARI"),
}
# The columns of `run`'s summary table (a terminal's width).
RUN_SUMMARY: dict[str, tuple[str, ...]] = {
    "reid": ("mAP", "R1", "R5", "mINP"),
    "clustering": ("ACC", "NMI", "ARI"),
}
# The columns of the leaderboard's one-page summary (methods x datasets): each task's headline two.
LEADERBOARD_SUMMARY: dict[str, tuple[str, ...]] = {
    "reid": ("mAP", "R1"),
    "clustering": ("ACC", "NMI"),
}
# The points of the CMC curve that are reported, by the rank each one reads.
CMC_RANKS: dict[str, int] = {"R1": 1, "R5": 5, "R10": 10}
# What sweeps and validation model selection maximise (on the carved validation split).
OBJECTIVE: dict[str, str] = {"reid": "mAP", "clustering": "ACC"}


def table_order(task: str | None) -> tuple[str, ...]:
    """A task's table columns; every metric (re-ID first) when the task is not known."""
    if task in TABLE_ORDER:
        return TABLE_ORDER[task]
    return ALL


def percent(value: float) -> str:
    """How a metric is shown: in percent, one decimal (as the papers print them)."""
    return f"{100 * float(value):.1f}"
