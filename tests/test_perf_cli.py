"""`python -m benchmark perf` at the small scale: the table's plumbing, not the timings."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest

import benchmark.evaluation.perf as perf
from benchmark.cli import main
from benchmark.evaluation.reference_eval import evaluate_reid_classic
from benchmark.evaluation.reid import evaluate_reid


def _in_this_process(fn, **kwargs):
    return fn(**kwargs)


def test_subsets_are_the_first_rows_of_the_full_matrix():
    scale = dataclasses.replace(perf.SCALES["small"], num_query=600)  # crosses seed blocks
    full = perf.synthetic_distmat(scale, seed=3)
    np.testing.assert_array_equal(perf.synthetic_distmat(scale, seed=3, num_rows=300), full[:300])
    assert full.dtype == np.float32 and full.shape == (600, scale.num_gallery)
    assert not np.array_equal(perf.synthetic_distmat(scale, seed=4, num_rows=300), full[:300])


def test_synthetic_distances_look_trained():
    scale = perf.SCALES["small"]
    labels = perf.synthetic_labels(scale, 0)
    result = evaluate_reid_classic(perf.synthetic_distmat(scale, 0), *labels)
    assert 0.4 < result["mAP"] < 0.9  # matches pulled near the top, far from chance
    assert (labels[1] == 0).sum() == scale.num_distractors


def test_weak_regime_ranks_like_an_untrained_network():
    """Market-sized weak distances score mAP 0.01-0.05, as an untrained network's features do."""
    scale = dataclasses.replace(perf.SCALES["market"], num_query=256)
    labels = perf.synthetic_labels(scale, 0)
    weak = evaluate_reid(perf.synthetic_distmat(scale, 0, regime="weak"), *labels)
    trained = evaluate_reid(perf.synthetic_distmat(scale, 0), *labels)
    assert 0.01 <= weak["mAP"] <= 0.05 and trained["mAP"] > 0.4
    with pytest.raises(ValueError, match="unknown regime"):
        perf.synthetic_distmat(scale, 0, regime="random")


def test_features_subset_keeps_labels_aligned():
    scale = perf.SCALES["small"]
    qf, gf, q_pids, g_pids, q_cams, g_cams = perf.synthetic_features(scale, 0, fraction=0.5)
    assert qf.shape == (50, scale.feat_dim) and gf.shape == (250, scale.feat_dim)
    np.testing.assert_allclose(np.linalg.norm(gf, axis=1), 1.0, rtol=1e-5)
    full = perf.synthetic_features(scale, 0)
    np.testing.assert_array_equal(full[1][:250], gf)
    np.testing.assert_array_equal(full[3][:250], g_pids)


def test_perf_command_small_scale(monkeypatch, capsys):
    monkeypatch.setattr(perf, "_in_fresh_process", _in_this_process)
    assert main(["perf", "--scale", "small", "--seed", "1", "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    assert report["exact"] is True and report["seed"] == 1
    assert report["machine"]["cpus"] >= 1 and len(report["machine"]["load_average_1min"]) == 2
    rows = report["rows"]
    pseudo = {f"pseudo-labels ({phase})" for phase in ("kNN", "Jaccard", "DBSCAN", "total")}
    assert {(r["task"], r["scale"]) for r in rows} == {
        (task, "small")
        for task in {"evaluation", "evaluation (weak features)", "re-ranking", *pseudo}
    }
    for r in rows:
        if r["task"].startswith("pseudo-labels"):  # per-phase rows carry times only
            assert r["ours_seconds"] > 0 and r["reference_seconds"] > 0
            continue
        assert r["ours_seconds"] > 0 and r["ours_peak_gib"] > 0 and r["ours_cpu_seconds"] > 0
        assert r["reference_seconds"] > 0 and r["reference_cpu_seconds"] > 0
        assert r["ratio"] == pytest.approx(r["ours_seconds"] / r["reference_seconds"])
    for task in ("evaluation", "evaluation (weak features)"):  # exact in both regimes
        classic = next(r for r in rows if r["task"] == task and r["reference"].startswith("classic"))
        assert classic["max_metric_diff"] <= 1e-12 and classic["reference_size"] == "100 x 500"
    rerank = next(r for r in rows if r["task"] == "re-ranking")
    assert rerank["max_distance_diff"] < 1e-4 and rerank["max_metric_diff"] < 1e-6
    table = perf.format_table([perf.Row(**r) for r in rows])  # what the command prints without --json
    assert table.splitlines()[0].split()[:3] == ["task", "scale", "reference"]
    assert "dense re-ranking" in table and "classic per-query evaluator" in table
    total = next(r for r in rows if r["task"] == "pseudo-labels (total)")
    assert total["max_metric_diff"] <= 1e-3  # 1 - ARI between ours and the direct reference
    published = next(r for r in rows if r["reference"] == "published structure, timed here")
    assert published["max_metric_diff"] <= 1e-3 and published["reference_seconds"] > 0


def test_a_job_runs_in_a_fresh_process_with_its_own_peak():
    out = perf._in_fresh_process(
        perf.job_evaluate, scale_name="small", seed=0, impl="ours", num_rows=20, repeats=1
    )
    scale = perf.SCALES["small"]
    q_pids, g_pids, q_cams, g_cams = perf.synthetic_labels(scale, 0)
    here = evaluate_reid(perf.synthetic_distmat(scale, 0, 20), q_pids[:20], g_pids, q_cams[:20], g_cams)
    assert out["metrics"]["mAP"] == here["mAP"] and out["metrics"]["cmc"] == list(here["cmc"])
    assert out["peak_gib"] >= out["base_gib"] > 0


def test_exit_code_flags_an_inexact_evaluation(monkeypatch, capsys):
    row = perf.Row("evaluation", "small", "classic", "1 x 1", "1 x 1", 1.0, 1.0, 1.0, 0.1, 0.1, 1e-3)
    monkeypatch.setattr(perf, "perf_table", lambda scales, seed: [row])
    assert perf.run_perf(argparse.Namespace(json=True, scale=["small"], seed=0)) == 1
    assert json.loads(capsys.readouterr().out)["exact"] is False


def test_gpu_rows_run_their_jobs_on_any_device(monkeypatch):
    """The GPU rows' jobs, run here on the CPU: the features path agrees with the CPU path to
    1e-6 and the pseudo labels are identical; without CUDA the table has no GPU rows."""
    from benchmark.evaluation import perf_gpu

    monkeypatch.setattr(perf_gpu, "_in_fresh_process", _in_this_process)
    monkeypatch.setattr(perf_gpu, "FEATURE_DIM", 64)
    rows = perf_gpu.gpu_rows(seed=0, device="cpu", scale_name="small")
    assert [r["task"] for r in rows] == ["evaluation from features"] * 2 + ["pseudo-labels (total)"]
    assert rows[1]["max_metric_diff"] <= 1e-6 and rows[2]["max_metric_diff"] == 0.0
    assert rows[2]["target_met"] is True and rows[0]["ours_seconds"] > 0
    # the features path gives the numbers of the distance-matrix path on the same features
    scale = perf.SCALES["small"]
    qf, gf, *labels = perf.synthetic_features(scale, 0, dim=64)
    dist = 1.0 - qf.astype(np.float64) @ gf.astype(np.float64).T
    expected = evaluate_reid_classic(dist, *labels)
    job = perf_gpu.job_features_evaluation("small", 0, "cpu", 1.0)
    assert abs(job["metrics"]["mAP"] - expected["mAP"]) < 1e-9
    if not __import__("torch").cuda.is_available():
        assert perf_gpu.gpu_rows(seed=0) == []


# -- perf --train and doctor ----------------------------------------------------------------------
def test_training_step_shapes_use_the_papers_per_gpu_batch():
    from benchmark.engine.method_registry import get_method
    from benchmark.evaluation.perf_train import PAPER_GPUS, step_shapes

    shapes = step_shapes()
    where = {m: key for key, names in shapes.items() for m in names}
    config = get_method("cluster-contrast").defaults
    assert where["cluster-contrast"] == (config["last_stride"], config["pooling"],
                                         config["batch_size"] // PAPER_GPUS) == (1, "avg", 64)
    assert "supervised" not in where and "raw-pixels" not in where  # no unsupervised step


def test_train_options_need_train(capsys):
    assert main(["perf", "--train-steps", "2"]) == 2
    assert "--train-steps goes with --train" in capsys.readouterr().err
    assert main(["perf", "--train", "--train-batch", "1"]) == 2
    assert "--train-batch must be at least 2" in capsys.readouterr().err


@pytest.mark.slow
def test_perf_train_times_fp32_against_bf16_on_cpu(monkeypatch, capsys):
    import benchmark.evaluation.perf_train as perf_train

    monkeypatch.setattr(perf_train, "_in_fresh_process", _in_this_process)
    code = main(["perf", "--train", "--methods", "cluster-contrast", "--train-batch", "2",
                 "--train-steps", "1", "--device", "cpu", "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)["train_rows"]
    assert len(rows) == 1 and "cluster-contrast" in rows[0]["methods"]
    row = rows[0]
    assert row["batch"] == 2 and row["device"] == "cpu"
    assert row["fp32_images_per_s"] > 0 and row["bf16_images_per_s"] > 0
    assert row["speedup"] == pytest.approx(row["bf16_images_per_s"] / row["fp32_images_per_s"])
    assert row["target_met"] is None  # the speed-up target is a GPU's: open on CPU


@pytest.mark.slow
def test_doctor_runs_the_cpu_checks(capsys, monkeypatch, synthetic_reid_generated):
    import torch

    import benchmark.evaluation.perf_train as perf_train

    if torch.cuda.is_available():
        pytest.skip("CUDA here: doctor would run the GPU-sized checks")
    # the step's timing is test_perf_train_times_fp32_against_bf16_on_cpu's; here, its plumbing
    timed = []

    def fake_step(*, precision, batch, **kwargs):
        timed.append((precision, batch))
        return (4.0 if precision == "bf16" else 2.0), 0.5

    monkeypatch.setattr(perf_train, "_in_fresh_process", lambda fn, **kw: fake_step(**kw))
    assert main(["doctor", "--gpu"]) == 2  # asked for a GPU that is not there
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    checks = report["checks"]
    assert [c["ok"] for c in checks] == [True] * 4, checks
    assert all(c["device"] == "cpu" and c["target_met"] in (None, True) for c in checks)
    assert "launcher torchrun" in checks[3]["result"]
    assert timed == [("fp32", 2), ("bf16", 2)] and "(2.00x)" in checks[1]["result"]
    assert checks[2]["result"].startswith("ci profile, fp32, 5 iterations")
