"""One subset run end to end through the CLI, checked against an independent recomputation."""
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
import torch

from transfer_core.data import load_split
from transfer_core.train import load_outputs, per_example_outputs
from transfer_core.data import class_mask
from transfer_core.track import CHECKPOINT_ARTIFACT, MASK_ARTIFACT, OUTPUTS_ARTIFACT, artifact_path, \
    load_checkpoint, run_config

REPO = Path(__file__).resolve().parents[2]
TINY = ["--profile", "synthetic", "--set", "pretrain.epochs=2,transfer.epochs=3"]


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "transfer_core.cli", *args], capture_output=True, text=True,
                          env=os.environ.copy())
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def only_run(experiment="transfer_core"):
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert len(runs) == 1
    return runs[0]


def test_subset_run_logs_everything_and_reloads(tracking):
    out = cli("subset-run", *TINY, "--index", "4", "--sweep-seed", "2")
    run = only_run()
    assert run.info.status == "FINISHED" and run.info.run_id in out.stdout
    assert run.data.tags["index"] == "4" and run.data.params["pretrain.epochs"] == "2"
    assert run_config(run).sweep_seed == 2
    assert {"source_acc", "target_val_acc", "target_test_acc", "pretrain_s", "transfer_s",
            "evaluate_s"} <= set(run.data.metrics)

    mask = np.load(artifact_path(run, MASK_ARTIFACT, MlflowClient()))
    assert mask.shape == (10,) and mask.sum() == 5
    assert np.array_equal(mask, class_mask(2, 4, 10, 0.5))
    outputs = load_outputs(artifact_path(run, OUTPUTS_ARTIFACT, MlflowClient()))
    test = load_split("synthetic-target", "test", 16)
    assert outputs["margin"].shape == (len(test),)
    np.testing.assert_array_equal(outputs["labels"], test.labels.numpy())

    # independent recomputation: reload the checkpoint, rescore the test set
    model = load_checkpoint(artifact_path(run, CHECKPOINT_ARTIFACT, MlflowClient()))
    with torch.no_grad():
        recomputed = per_example_outputs(model(test.images), test.labels)
    np.testing.assert_allclose(outputs["margin"].astype(np.float32), recomputed["margin"], atol=2e-2, rtol=1e-2)
    np.testing.assert_array_equal(outputs["pred"], recomputed["pred"])
    assert run.data.metrics["target_test_acc"] == pytest.approx(recomputed["correct"].mean())


def test_bad_input_fails_cleanly_and_records_nothing(tracking, tmp_path):
    bad = cli("subset-run", *TINY, "--transfer-mode", "partial", check=False)
    assert bad.returncode != 0 and "'partial' is not one of 'fixed', 'full'" in bad.stderr
    assert "Traceback" not in bad.stderr
    np.save(tmp_path / "mask.npy", np.ones(7, bool))
    bad = cli("subset-run", *TINY, "--mask", str(tmp_path / "mask.npy"), check=False)
    assert bad.returncode != 0 and "class mask has length 7 but the source has 10 classes" in bad.stderr
    bad = cli("subset-run", *TINY, "--data-root", str(tmp_path / "nowhere"), "--profile", "quick", check=False)
    assert bad.returncode != 0 and "does not exist" in bad.stderr
    bad = cli("subset-run", *TINY, "--set", "pretrain.epochs=1.5", check=False)
    assert bad.returncode != 0 and "pretrain.epochs must be an integer" in bad.stderr
    finished = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
                if r.info.status == "FINISHED"]
    assert finished == []


def test_help_explains_every_option():
    text = cli("subset-run", "--help").stdout
    for option in ("--profile", "--set", "--transfer-mode", "--alpha", "--sweep-seed", "--data-root",
                   "--experiment", "--tracking-uri", "--index", "--mask", "--log-checkpoint"):
        assert option in text


@pytest.mark.slow
def test_mlflow_run_entry_point_on_real_data(tracking, data_root, tmp_path):
    """The issue's check: `mlflow run . -e subset_run` with the quick profile on real CIFAR."""
    env = {**os.environ, "TRANSFER_CORE_DATA": str(data_root),  # MLproject commands call `python`
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "subset_run",
                           "--env-manager", "local", "-P", "index=1", "--experiment-name", "real"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run("real")
    assert run.info.status == "FINISHED"
    mask = np.load(artifact_path(run, MASK_ARTIFACT, MlflowClient()))
    assert mask.shape == (100,) and mask.sum() == 50
    classes = json.loads(artifact_path(run, "source_classes.json", MlflowClient()).read_text())
    assert classes[:2] == ["apple", "aquarium_fish"]
    outputs = load_outputs(artifact_path(run, OUTPUTS_ARTIFACT, MlflowClient()))
    assert outputs["margin"].shape == (10_000,) and outputs["correct"].shape == (10_000,)
    assert run.data.metrics["target_test_acc"] > 0.25  # CIFAR-10 chance is 0.10
