"""The CIFAR-100 -> CIFAR-10 study behind the README's results, CI-sized: the same settings file
(`transfer-core main --settings cifar100_to_cifar10`, the same pipeline as `make run`) on the real
data with tiny models, then checks that RESULTS.md is complete and its numbers are those of the
logged MLflow runs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

TINY = ("data.source_images_per_class=10,data.target_train_images=1000,pretrain.epochs=2,pretrain.peak_epoch=0.5,"
        "pretrain.width=8,transfer.epochs=3")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, data_root):
    """The study's settings at a tiny size, twice: tune (2 trials), 16 models, analyze, counterfactual,
    register, publish; then the same command again, which must train nothing."""
    work = tmp_path_factory.mktemp("experiment")
    env = {**os.environ, "TRANSFER_CORE_DATA": str(data_root), "OMP_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlruns/mlflow.db"}
    command = [sys.executable, "-m", "transfer_core.cli", "main", "--settings", "cifar100_to_cifar10",
               "--experiment", "ci_cifar", "--n-models", "16", "--workers", "1", "--total-trials", "2", "--ks", "3",
               "--seeds", "3", "--bootstrap", "20", "--min-runs", "2", "--publish", str(work / "results"),
               "--set", TINY, "--no-progress"]
    first = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    again = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]  # for the MlflowClient below
    yield work, first.stdout + first.stderr, again.stdout + again.stderr
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def results(work: Path) -> str:
    return (work / "results" / "RESULTS.md").read_text()


def run_id(text: str, step: str) -> str:
    return re.search(rf"\| {step}[^|]* \| `([0-9a-f]{{32}})`", text).group(1)


def test_every_step_ran_and_a_rerun_trains_nothing(experiment):
    work, first, again = experiment
    for step in ("[tune]", "[sweep]", "[analyze]", "[counterfactual]", "[register]", "[publish]"):
        assert step in first
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name("ci_cifar").experiment_id
    subset = client.search_runs([experiment_id], "tags.`transfer_core.kind` = 'subset_run'", max_results=100)
    assert len(subset) == 16 and {r.info.status for r in subset} == {"FINISHED"}  # rerun: no new sweep
    analyses = client.search_runs([experiment_id], "tags.`transfer_core.kind` = 'analysis'")
    assert len(analyses) == 1 and f"[analyze] reusing FINISHED run {analyses[0].info.run_id}" in again
    for step in ("tune", "sweep", "counterfactual", "register"):
        assert f"[{step}] reusing FINISHED run" in again, again
    points = client.search_runs([experiment_id], "tags.`transfer_core.kind` = 'counterfactual_run'")
    assert len(points) == 3 + 3 * 3  # the full source and 3 orders x k = 3, 3 seeds each: trained once


def test_results_name_the_runs_and_show_every_figure(experiment):
    work = experiment[0]
    text = results(work)
    for heading in ("## Accuracy", "## Counterfactual curves", "## Top classes", "### Per target class",
                    "## Stability", "## Leakage", "## Sub-populations"):
        assert heading in text
    for target in ("airplane", "automobile", "truck"):
        assert f"#### {target}" in text
    pictures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert {"counterfactual_accuracy.png", "heatmap.png", "rank_stability.png", "near_duplicates.png",
            "subpopulation_example.png"} <= set(pictures)
    for picture in pictures:
        assert (work / "results" / picture).stat().st_size > 1000
    assert (work / "results" / "grid_automobile.png").is_file()
    ranking = pd.read_csv(work / "results" / "class_influence_validation.csv")  # what chose the removals
    assert set(ranking.split) == {"validation-ranking-half"} and len(ranking) == 100
    client = MlflowClient()
    assert client.get_run(run_id(text, "analysis")).data.tags["transfer_core.kind"] == "analysis"
    assert client.get_run(run_id(text, "counterfactual")).data.tags["transfer_core.kind"] == "counterfactual"
    assert client.get_run(run_id(text, "tune")).data.tags["transfer_core.kind"] == "tune"


def test_accuracy_is_the_mean_of_the_logged_full_source_runs(experiment):
    """The full-source row of RESULTS.md, recomputed from the child runs' metrics in MLflow."""
    text = results(experiment[0])
    client = MlflowClient()
    parent = client.get_run(run_id(text, "counterfactual"))
    children = client.search_runs([parent.info.experiment_id], "tags.`transfer_core.kind` = 'counterfactual_run' and "
                                  f"tags.grid_id = '{parent.data.tags['grid_id']}'")
    full = [r.data.metrics["target_test_acc"] for r in children if r.data.tags["order"] == "full"]
    assert len(full) == 3
    row = re.search(r"\| full source \(k = 0\) \| 3 \| [^|]+ \| ([0-9.]+) \[", text).group(1)
    assert float(row) == pytest.approx(100 * np.mean(full), abs=0.005)
    for order in ("bottom", "top", "random"):
        assert re.search(rf"\| {order} \| 3 \| 3 \| [0-9.]+ \[[0-9.]+, [0-9.]+\] \|", text)


def test_top_classes_are_the_analysis_run_influences(experiment):
    text = results(experiment[0])
    client = MlflowClient()
    analysis = client.get_run(run_id(text, "analysis"))
    path = Path(analysis.info.artifact_uri.removeprefix("file://")) / "class_aggregates.csv"
    table = pd.read_csv(path)
    whole = table[(table.scope == "(all)") & (table.output == "correct")].sort_values("influence")
    best, worst = whole.iloc[-1], whole.iloc[0]
    first_row = re.search(r"\| 1 \| (\w+)\*? \| ([+-][0-9.]+) \[[^|]+\| (\w+)\*? \| ([+-][0-9.]+) ", text)
    assert first_row.group(1) == best.class_name and first_row.group(3) == worst.class_name
    assert float(first_row.group(2)) == pytest.approx(100 * best.influence, abs=0.005)
    assert float(first_row.group(4)) == pytest.approx(100 * worst.influence, abs=0.005)


def test_the_known_cifar_duplicate_is_published_with_its_file_names(experiment):
    """CIFAR-10 test image truck/pickup_truck_s_000169 is a pixel copy of a CIFAR-100 train image."""
    text = results(experiment[0])
    assert re.search(r"\| truck/pickup_truck_s_000169\S* \| 9609 \| pickup_truck/pickup_truck_s_000169\S* \| "
                     r"1\.0 \(exact\) \|", text)


def test_verdicts_are_paired_tests_and_the_champion_row_is_the_registered_model(experiment):
    """Each claim names its paired test, interval level and correction; the registered version is shown
    as itself (one seed), with the accuracies of that one run; the known copy names the method that found it."""
    text = results(experiment[0])
    verdicts = text[text.index("## Verdicts"):text.index("## Top classes")]
    for claim in ("costs more than removing random ones", "helps more than removing random ones",
                  "separates helpful from detrimental", "improves transfer", "less helpful than the average class"):
        assert claim in verdicts
    assert verdicts.count("two-sided 99.17% intervals, Bonferroni over all 6 paired tests of the grid") >= 4
    assert "paired top - random in test points over 3 seeds" in verdicts
    assert "truck/pickup_truck_s_000169` by " in verdicts
    client = MlflowClient()
    parent = client.get_run(run_id(text, "counterfactual"))
    version = client.get_model_version_by_alias("ci_cifar-target", "champion")
    model_run = client.get_run(version.tags["source_run_id"])
    line = re.search(r"The registered champion itself is one model.*version (\d+) \((.*), seed (\d+), run `(\w+)`\): "
                     r"validation selection half ([0-9.]+)%, test ([0-9.]+)%", text)
    assert line.group(1) == str(version.version) and line.group(4) == model_run.info.run_id
    assert line.group(3) == model_run.data.tags["seed"]
    assert float(line.group(6)) == pytest.approx(100 * model_run.data.metrics["target_test_acc"], abs=0.005)
    assert version.tags["counterfactual_run_id"] == parent.info.run_id
