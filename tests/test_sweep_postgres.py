"""Two sweep workers share one study on a real PostgreSQL server; one is killed mid-trial.

The server is started on loopback from Debian's postgresql package (`.ci/run` installs it where it
is absent). The killed worker's trial stops sending heartbeats, is failed by the surviving worker
and retried once; at the end no trial is RUNNING or WAITING, and none is lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services import postgres_url  # noqa: F401  (a fixture)

TESTS = Path(__file__).resolve().parent


def _worker(url: str, out: Path, params: Path, index: int, log: Path,
            study: str = "kill-test", trials: int = 4) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "benchmark", "sweep", "--method", "engine_probes:TunableProbe",
           "--dataset", "digits", "--profile", "ci", "--trials", str(trials), "--storage", url,
           "--study-name", study, "--params", str(params), "--heartbeat-interval", "1",
           "--grace-period", "4", "--max-retry", "1", "--worker-index", str(index),
           "--out", str(out / f"worker{index}"), "--no-tracking", "--device", "cpu", "--json"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True)  # noqa: SIM115


def test_killed_worker_trial_is_failed_and_retried_none_left_running(postgres_url, tmp_path):
    import optuna
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    params = tmp_path / "params.json"
    params.write_text(json.dumps({"epochs": 3, "sleep": 1.5, "steps": 1, "batch": 8}))
    first = _worker(postgres_url, tmp_path, params, 0, tmp_path / "w0.log")
    second = _worker(postgres_url, tmp_path, params, 1, tmp_path / "w1.log")
    storage = RDBStorage(postgres_url)
    killed_trial = None
    deadline = time.monotonic() + 300
    try:
        while killed_trial is None and time.monotonic() < deadline:  # wait for a trial of `first`
            time.sleep(0.5)
            try:
                study = optuna.load_study(study_name="kill-test", storage=storage)
            except KeyError:
                continue
            for t in study.get_trials(deepcopy=False):
                if t.state == TrialState.RUNNING and t.user_attrs.get("worker", "").endswith(
                        f":{first.pid}"):
                    killed_trial = t.number
        assert killed_trial is not None, "worker 0 never started a trial"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        out, _ = second.communicate(timeout=600)
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.kill()
    assert second.returncode == 0, (tmp_path / "w1.log").read_text()[-3000:]
    summary = json.loads(out)
    trials = optuna.load_study(study_name="kill-test", storage=storage).get_trials()
    states = {t.number: t.state for t in trials}
    assert set(states.values()) <= {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}, states
    assert states[killed_trial] == TrialState.FAIL
    from benchmark.tuning.study import RetryStale

    retries = [t for t in trials if RetryStale.retried_trial_number(t) == killed_trial]
    assert len(retries) == 1 and retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retries[0].params == trials[killed_trial].params  # the retry repeats the same point
    # the four counted trials all finished; the retried failure is the only extra one
    counted = [t for t in trials if t.number != killed_trial]
    assert len(counted) in (4, 5)  # two workers starting at the same moment may add one
    assert sum(summary["trials"].values()) == len(trials)
