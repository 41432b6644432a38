"""collect_sweep against a naive per-run read, on runs logged directly (no training)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from transfer_core.data import DataDirs
from transfer_core.execute import Context
from transfer_core.sweep import collect_sweep, finished_runs
from transfer_core.config import ConfigError
from transfer_core.train import save_outputs
from transfer_core.track import CLASSES_ARTIFACT, MASK_ARTIFACT, OUTPUTS_ARTIFACT

N_CLASSES, N_TEST = 6, 40
CLASSES = [f"class{c}" for c in range(N_CLASSES)]
LABELS = np.arange(N_TEST) % 4


def log_fake_run(client, experiment_id, sweep_id, index, rng, status="FINISHED", n_test=N_TEST, tags=None):
    """A subset run as the runner logs it (tags, params, artifacts), with random outputs."""
    tags = {"transfer_core.kind": "subset_run", "sweep_id": sweep_id, "index": str(index), **(tags or {})}
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    client.log_batch(run_id, params=[Param("index", str(index)), Param("seed", str(rng.integers(1000)))])
    outputs = {"margin": rng.normal(size=n_test).astype(np.float32), "prob": rng.random(n_test).astype(np.float32),
               "correct": rng.random(n_test) < 0.5, "pred": rng.integers(0, 4, n_test).astype(np.int16)}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / MASK_ARTIFACT, rng.random(N_CLASSES) < 0.5)
        (Path(tmp) / CLASSES_ARTIFACT).write_text(json.dumps(CLASSES))
        import torch
        save_outputs(Path(tmp) / OUTPUTS_ARTIFACT, outputs, torch.as_tensor(np.arange(n_test) % 4))
        client.log_artifacts(run_id, tmp)
    client.set_terminated(run_id, status=status)
    return run_id


def naive_collect(run_ids):
    """Read each run on its own through MLflow's download API: the reference for collect_sweep."""
    masks, rows = [], {"margin": [], "prob": [], "correct": []}
    for run_id in run_ids:
        masks.append(np.load(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MASK_ARTIFACT)))
        with np.load(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=OUTPUTS_ARTIFACT)) as npz:
            for key in rows:
                rows[key].append(npz[key])
    return np.array(masks), {k: np.array(v) for k, v in rows.items()}


def assert_matches_naive(collected, expected_ids):
    assert collected.run_ids == expected_ids
    masks, outputs = naive_collect(expected_ids)
    np.testing.assert_array_equal(collected.masks, masks)
    for key in outputs:
        assert collected.outputs[key].dtype == outputs[key].dtype
        np.testing.assert_array_equal(collected.outputs[key], outputs[key])


def test_collect_equals_a_naive_read_and_reads_only_new_runs(tracking, tmp_path):
    ctx = Context(tracking, DataDirs(cache=str(tmp_path / "cache")), progress=False)
    client, rng = MlflowClient(), np.random.default_rng(0)
    exp = client.create_experiment("collect")
    ids = {i: log_fake_run(client, exp, "sw", i, rng) for i in (3, 0, 2, 1)}
    log_fake_run(client, exp, "sw", 1, rng)  # a second FINISHED run of index 1: later, not counted
    log_fake_run(client, exp, "sw", 4, rng, status="FAILED")  # not counted
    log_fake_run(client, exp, "other", 5, rng)  # another sweep

    first = collect_sweep("sw", exp, ctx=ctx)
    assert first.indices.tolist() == [0, 1, 2, 3]
    assert_matches_naive(first, [ids[i] for i in range(4)])
    np.testing.assert_array_equal(first.target_labels, LABELS)
    assert first.source_classes == CLASSES and len(first.run_params) == 4
    assert first.params == client.get_run(ids[0]).data.params

    ids[5] = log_fake_run(client, exp, "sw", 5, rng)
    # Rewrite run 0's outputs on disk: a cached collect must not read it again.
    outputs_file = Path(client.get_run(ids[0]).info.artifact_uri) / OUTPUTS_ARTIFACT
    original = first.outputs["margin"][0].copy()
    with np.load(outputs_file) as npz:
        tampered = {k: npz[k] for k in npz.files}
    tampered["margin"] = np.zeros_like(tampered["margin"])
    np.savez(outputs_file, **tampered)

    second = collect_sweep("sw", exp, ctx=ctx)
    assert second.indices.tolist() == [0, 1, 2, 3, 5]
    np.testing.assert_array_equal(second.outputs["margin"][0], original)
    masks, outputs = naive_collect([ids[5]])
    np.testing.assert_array_equal(second.masks[-1], masks[0])
    np.testing.assert_array_equal(second.outputs["prob"][-1], outputs["prob"][0])
    again = collect_sweep("sw", exp, ctx=ctx)  # nothing new: served from the cache alone
    assert again.run_ids == second.run_ids
    for key in second.outputs:
        np.testing.assert_array_equal(again.outputs[key], second.outputs[key])

    ids[4] = log_fake_run(client, exp, "sw", 4, rng)  # index 4 retried: lands between cached rows
    third = collect_sweep("sw", exp, ctx=ctx)
    assert third.indices.tolist() == [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(third.outputs["margin"][0], original)
    third.outputs["margin"][0] = 0  # what the files hold now
    assert_matches_naive(third, [ids[i] for i in range(6)])
    uncached = collect_sweep("sw", exp, use_cache=False, ctx=ctx)
    assert_matches_naive(uncached, [ids[i] for i in range(6)])
    assert not uncached.outputs["margin"][0].any()


def test_finished_runs_prefers_a_run_not_superseded(tracking):
    client, rng = MlflowClient(), np.random.default_rng(1)
    exp = client.create_experiment("dedupe")
    log_fake_run(client, exp, "sw", 0, rng, tags={"superseded": "true"})
    kept = log_fake_run(client, exp, "sw", 0, rng)
    assert [r.info.run_id for r in finished_runs("sw", exp, MlflowClient())] == [kept]


def test_collect_refuses_unknown_ambiguous_and_inconsistent_sweeps(tracking, tmp_path):
    ctx = Context(tracking, DataDirs(cache=str(tmp_path / "cache")), progress=False)
    client, rng = MlflowClient(), np.random.default_rng(2)
    exp_a, exp_b = client.create_experiment("a"), client.create_experiment("b")
    with pytest.raises(ConfigError, match="no FINISHED subset run"):
        collect_sweep("missing", exp_a, ctx=ctx)
    with pytest.raises(ConfigError, match="invalid sweep id"):
        collect_sweep("x' or '1'='1", exp_a, ctx=ctx)
    log_fake_run(client, exp_a, "both", 0, rng)
    log_fake_run(client, exp_b, "both", 0, rng)
    with pytest.raises(ConfigError, match="experiments"):
        collect_sweep("both", ctx=ctx)
    assert len(collect_sweep("both", exp_b, ctx=ctx)) == 1
    log_fake_run(client, exp_a, "ragged", 0, rng)
    log_fake_run(client, exp_a, "ragged", 1, rng, n_test=N_TEST + 1)
    with pytest.raises(ConfigError, match="unlike the sweep's other runs"):
        collect_sweep("ragged", exp_a, ctx=ctx)
