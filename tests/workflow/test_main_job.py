"""The main job end to end through `mlflow run` (synthetic profile), and the README's snippets run as written."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
STEPS = ("tune", "sweep", "analyze", "counterfactual", "register")


def readme_block(heading: str, language: str) -> str:
    """The first ```language block under the README section ``heading``."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """`mlflow run . --env-manager local` with the README's synthetic parameters, in a fresh folder."""
    work = tmp_path_factory.mktemp("main")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlruns' / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # MLproject calls `python`
    env.pop("MLFLOW_RUN_ID", None)
    (work / "mlruns").mkdir()
    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-P", "profile=synthetic",
               "-P", "n_models=16", "-P", "ks=0,1", "-P", "orders=bottom", "-P", "tune_trials=2", "-P", "seeds=3",
               "-P", "overrides=pretrain.epochs=2,transfer.epochs=4"]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    return work, env, done.stdout + done.stderr


def test_every_step_ran_once_under_one_main_run(main_job):
    work, env, output = main_job
    assert "main finished. Where to look:" in output
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("transfer_core")
    mains = client.search_runs([experiment.experiment_id], "tags.`transfer_core.kind` = 'main'")
    assert len(mains) == 1 and mains[0].info.status == "FINISHED"
    for step in STEPS:
        run = client.get_run(mains[0].data.tags[f"step.{step}"])
        assert run.info.status == "FINISHED", step
        assert run.data.tags["mlflow.project.entryPoint"] == step
    version = client.get_model_version_by_alias("transfer_core-target", "champion")
    assert version.tags["counterfactual_run_id"] == mains[0].data.tags["step.counterfactual"]
    sweep = client.get_run(mains[0].data.tags["step.sweep"])
    assert sweep.data.tags["tune_run_id"] == mains[0].data.tags["step.tune"]  # provenance, not a guess


def test_the_readme_model_loading_snippet_runs_as_written(main_job, data_root):
    """README "Using the registered model", verbatim, in a fresh process in the folder `make run` used."""
    work, env, _ = main_job
    snippet = readme_block("Using the registered model", "python")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(work / "cat.png")
    env = {**env, "TRANSFER_CORE_DATA": str(data_root)}
    env.pop("MLFLOW_TRACKING_URI")  # the snippet sets it itself
    done = subprocess.run([sys.executable, "-c", snippet + "\nprint('accuracy', float(accuracy))"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first, last = done.stdout.strip().splitlines()[0], done.stdout.strip().splitlines()[-1]
    label, prob = first.rsplit(" ", 1)
    assert label in ("vertical", "diagonal", "rings", "horizontal") and 0 < float(prob) <= 1
    assert last.startswith("accuracy ")


def test_rerunning_main_reuses_every_step(main_job):
    work, env, _ = main_job
    command = [sys.executable, "-m", "transfer_core.cli", "main", "--profile", "synthetic", "--n-models", "16",
               "--ks", "0,1", "--orders", "bottom", "--tune-trials", "2", "--seeds", "3",
               "--set", "pretrain.epochs=2,transfer.epochs=4"]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for step in STEPS:
        assert f"[{step}] reusing FINISHED run" in done.stdout, done.stdout
