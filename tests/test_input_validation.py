"""Bad input fails before any work, names the flag or parameter and what is allowed, and exits 2
(issue: fail before work on bad input). Each case checks that nothing was written."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.engine.contract import ConfigError
from benchmark.engine.records import RecordError, read_record, write_record
from benchmark.engine.runner import run_cell

PROBE = "engine_probes:ProbeMethod"


def _records(folder: Path) -> list[Path]:
    return list(folder.rglob("record.json")) if folder.exists() else []


@pytest.mark.parametrize(("params", "named", "allowed"), [
    ({"epochs": -3}, "'epochs'", ">= 1"),
    ({"epochs": 0}, "'epochs'", ">= 1"),
    ({"epochs": "2"}, "'epochs'", "an integer"),
    ({"epochs": True}, "'epochs'", "an integer"),
    ({"lr": "abc"}, "'lr'", "a number"),
    ({"lr": 0.0}, "'lr'", "> 0"),
    ({"lr": float("nan")}, "'lr'", "> 0"),
])
def test_bad_parameters_are_refused_before_anything_is_written(tmp_path, params, named, allowed):
    with pytest.raises(ConfigError) as err:
        run_cell(PROBE, "digits", 0, "ci", tmp_path, "cpu", tracking=False, log=None,
                 params=params)
    assert named in str(err.value) and allowed in str(err.value)
    assert _records(tmp_path) == []


def test_a_registered_adapter_names_a_bad_eps(tmp_path, capsys):
    rc = main(["run", "--method", "cluster-contrast", "--dataset", "synthetic-reid", "--profile",
               "ci", "--out", str(tmp_path), "--no-tracking", "--params",
               _json(tmp_path, {"eps": "abc"})])
    err = capsys.readouterr().err
    assert rc == 2 and "'eps' must be a number" in err and "Traceback" not in err
    assert _records(tmp_path) == []


def _json(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "params.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(("seeds", "message"), [
    (",", "no seed given"),
    ("-1", "[0, 2**32)"),
    ("4294967296", "[0, 2**32)"),
    ("a,b", "comma-separated integers"),
])
def test_bad_seeds_are_refused(tmp_path, capsys, seeds, message):
    rc = main(["run", "--all", f"--seeds={seeds}", "--methods", PROBE, "--datasets", "digits",
               "--profile", "ci", "--out", str(tmp_path / "out"), "--no-tracking"])
    assert rc == 2 and message in capsys.readouterr().err
    assert _records(tmp_path) == []


def test_a_single_run_refuses_a_negative_seed(tmp_path):
    with pytest.raises(ValueError, match=r"--seed: a seed must be an integer in \[0, 2\*\*32\)"):
        run_cell(PROBE, "digits", -1, "ci", tmp_path, "cpu", tracking=False, log=None)
    assert _records(tmp_path) == []


def test_repeated_seeds_run_once(tmp_path, capsys):
    rc = main(["run", "--all", "--seeds", "0,0", "--jobs", "2", "--methods", PROBE,
               "--datasets", "digits", "--profile", "ci", "--out", str(tmp_path),
               "--no-tracking", "--json"])
    captured = capsys.readouterr()
    assert rc == 0 and "each seed runs once (0)" in captured.err
    assert len(json.loads(captured.out)["records"]) == 1 and len(_records(tmp_path)) == 1


def test_an_empty_selection_is_refused(tmp_path, capsys):
    rc = main(["run", "--all", "--methods", "raw-pixels", "--datasets", "synthetic-reid",
               "--profile", "ci", "--out", str(tmp_path), "--no-tracking"])
    assert rc == 2 and "nothing to run" in capsys.readouterr().err


@pytest.mark.parametrize(("source", "message"), [
    ("raise RuntimeError('broken at import')\n", "RuntimeError: broken at import"),
    ("def broken(:\n", "SyntaxError"),
    ("class Adapter:\n    pass\n", "not a usable adapter"),
])
def test_a_bad_method_module_is_named_with_exit_2(tmp_path, capsys, monkeypatch, source, message):
    (tmp_path / "user_adapter.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    rc = main(["run", "--method", "user_adapter:Adapter", "--dataset", "digits", "--profile",
               "ci", "--out", str(tmp_path / "out"), "--no-tracking"])
    err = capsys.readouterr().err
    assert rc == 2 and "user_adapter" in err and message in err and "Traceback" not in err


@pytest.mark.parametrize(("attribute", "message"), [
    ("profile_overrides = {'quick': {'step_sise': 3}}",
     "profile_overrides['quick'] sets step_sise, which `defaults` does not have"),
    ("profile_overrides = {'quick:digits': {'lr': 0.1, 'lrr': 0.2}}",
     "profile_overrides['quick:digits'] sets lrr"),
    ("dataset_defaults = {'market1501': {'epochs': 3, 'epoch': 4}}",
     "dataset_defaults['market1501'] sets epoch,"),
    ("profile_overrides = {'quik': {'lr': 0.1}}", "profile_overrides key 'quik' names no profile"),
    ("bounds = {'marginn': Bound(low=0)}", "bounds name marginn"),
    ("dataset_defaults = {'market-1501': {'epochs': 3}}",
     "dataset_defaults key 'market-1501' names no dataset with a protocol card"),
    ("profile_overrides = {'quick:digit': {'lr': 0.1}}",
     "profile_overrides key 'quick:digit' names no dataset with a protocol card"),
])
def test_an_override_of_a_parameter_that_does_not_exist_is_refused(tmp_path, capsys, monkeypatch,
                                                                   attribute, message):
    """A misspelt key in an override table would add a parameter nothing reads and leave the
    default in place; it is refused when the adapter is named, before any work."""
    module = f"override_typo_{abs(hash(attribute))}"
    (tmp_path / f"{module}.py").write_text(
        "from benchmark.engine.contract import Bound\n"
        "from methods.supervised import Supervised\n\n"
        f"class Adapter(Supervised):\n    {attribute}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rc = main(["run", "--method", f"{module}:Adapter", "--dataset", "synthetic-reid", "--profile",
               "ci", "--out", str(tmp_path / "out"), "--no-tracking"])
    err = capsys.readouterr().err
    assert rc == 2 and "not a usable adapter" in err and message in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("record.json"))


def test_an_out_that_is_a_file_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    rc = main(["run", "--method", PROBE, "--dataset", "digits", "--profile", "ci", "--out",
               str(blocker), "--no-tracking"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot write there" in err and str(blocker) in err
    assert blocker.read_text() == "not a folder"


def test_records_are_readable_by_the_group_and_others(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_record(tmp_path / "record.json", {"status": "finished"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_truncated_record_says_how_to_recover(tmp_path, fault_table):
    path = tmp_path / "record.json"
    path.write_text('{"status": "finis')
    with pytest.raises(RecordError, match="--force, or delete the file") as err:
        read_record(path)
    assert str(path) in str(err.value)
    fault_table.append({"fault": "corrupt file: truncated record", "trials": 1, "survived": 1,
                        "lost": 0})


def test_sweep_refuses_a_study_name_outside_out_and_a_bad_seed(tmp_path, capsys):
    base = ["sweep", "--method", "engine_probes:TunableProbe", "--dataset", "digits",
            "--profile", "ci", "--trials", "1", "--out", str(tmp_path), "--no-tracking"]
    for name in ("../../x", "/tmp/abs", ".hidden"):
        assert main([*base, "--study-name", name]) == 2
        assert "--study-name" in capsys.readouterr().err
    assert main([*base, "--seed", str(2**32)]) == 2
    assert "[0, 2**32)" in capsys.readouterr().err
    assert not (tmp_path / "sweeps" / "optuna.db").exists()


def test_an_unexpected_error_is_one_line_unless_debug(tmp_path, capsys, monkeypatch):
    import benchmark.engine.runner as runner

    def broken(*args, **kwargs):
        raise KeyError("something nobody anticipated")

    monkeypatch.setattr(runner, "run_cell", broken)
    args = ["run", "--method", PROBE, "--dataset", "digits", "--profile", "ci", "--out",
            str(tmp_path), "--no-tracking"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "KeyError" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(KeyError):
        main(["--debug", *args])


def test_an_adapter_declares_its_own_bounds_beside_its_defaults(tmp_path):
    from methods.cluster_contrast import ClusterContrast

    assert ClusterContrast.bounds["min_samples"].describe() == ">= 1"
    with pytest.raises(ConfigError, match=r"'min_samples' must be >= 1, got 0 \(given\)"):
        ClusterContrast(min_samples=0).resolve_config("market1501", "paper")
    with pytest.raises(ConfigError, match=r"'erasing' must be in \[0, 1\]"):
        ClusterContrast(erasing=1.5).resolve_config("market1501", "paper")


def test_sweep_takes_every_seed_run_takes(tmp_path, capsys):
    """The sampler's seed is derived modulo 2**32, so `sweep --seed` accepts what `run` does."""
    rc = main(["sweep", "--method", "engine_probes:TunableProbe", "--dataset", "digits",
               "--profile", "ci", "--trials", "1", "--out", str(tmp_path), "--no-tracking",
               "--seed", "4294968", "--params", _json(tmp_path, {"epochs": 1, "steps": 1,
                                                                 "batch": 8})])
    assert rc == 0, capsys.readouterr().err


def test_every_profile_option_offers_exactly_the_registered_profiles(monkeypatch):
    """The CLI's --profile choices come from PROFILES: a profile added there is offered by every
    command that takes one, and nothing else is."""
    import argparse

    import benchmark.cli as cli
    from benchmark.engine.profiles import PROFILES

    def profile_choices(parser: argparse.ArgumentParser) -> list[list[str]]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found += profile_choices(sub)
            elif "--profile" in action.option_strings:
                found.append(list(action.choices))
        return found

    choices = profile_choices(cli.build_parser())
    assert len(choices) >= 4 and all(c == list(PROFILES) for c in choices)
    monkeypatch.setattr(cli, "PROFILES", {**PROFILES, "extra": PROFILES["ci"]})
    assert all("extra" in c for c in profile_choices(cli.build_parser()))
