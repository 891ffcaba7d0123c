"""Metric names live in one place (`benchmark/metrics.py`): a list of them written anywhere else in
the harness fails here, and the lists derived from it keep the orders the outputs depend on."""

from __future__ import annotations

import ast
from pathlib import Path

from benchmark import metrics
from benchmark.paths import REPO_ROOT

HOME = REPO_ROOT / "benchmark" / "metrics.py"


def _literal_lists(path: Path) -> list[tuple[int, list[str]]]:
    """Tuples, lists and sets of two or more metric-name strings, and dicts whose keys are two or
    more metric names and whose values are all constants (a table of rules)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = node.elts
            values_constant = True
        elif isinstance(node, ast.Dict):
            items = [k for k in node.keys if k is not None]
            values_constant = all(isinstance(v, (ast.Constant, ast.Tuple)) for v in node.values)
        else:
            continue
        names = [i.value for i in items if isinstance(i, ast.Constant) and i.value in metrics.ALL]
        if len(names) >= 2 and values_constant:
            found.append((node.lineno, names))
    return found


def test_no_module_but_metrics_py_lists_metric_names():
    offenders = []
    for path in sorted((REPO_ROOT / "benchmark").rglob("*.py")):
        if path == HOME:
            continue
        offenders += [f"{path.relative_to(REPO_ROOT)}:{line}: {names}"
                      for line, names in _literal_lists(path)]
    assert not offenders, "metric names listed outside benchmark/metrics.py:\n" + "\n".join(offenders)


def test_the_guard_sees_a_list_written_elsewhere(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('SHOWN = ("mAP", "R1")\nRULES = {"ACC": 1.5, "NMI": 1.0}\n'
                       'RESULT = {"mAP": compute(), "mINP": other()}\n')
    assert [line for line, _ in _literal_lists(planted)] == [1, 2]  # a computed result dict is fine


def test_every_metric_has_one_task_and_the_orders_cover_the_same_names():
    assert set(metrics.ALL) == set(metrics.RULE) and len(metrics.ALL) == len(metrics.RULES)
    for task in metrics.TASKS:
        names = set(metrics.BY_TASK[task])
        assert set(metrics.TABLE_ORDER[task]) == names
        assert set(metrics.RUN_SUMMARY[task]) <= names
        assert set(metrics.LEADERBOARD_SUMMARY[task]) <= names
        assert metrics.OBJECTIVE[task] in names
    assert metrics.BY_TASK["reid"] + metrics.BY_TASK["clustering"] == metrics.ALL
    assert metrics.table_order(None) == metrics.ALL
    assert all(metrics.RULE[name].task == "reid" for name in metrics.CMC_RANKS)
    assert metrics.CMC_RANKS == {name: int(name[1:]) for name in metrics.CMC_RANKS}
    assert metrics.percent(0.6043) == "60.4"
