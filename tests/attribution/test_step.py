"""The attribute step end to end on the synthetic profile: the `transfer-core attribute` command, its run,
artifacts in the analysis's formats, reuse on a rerun, and a counterfactual that takes its ranking."""
from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from transfer_core.cli import main
from transfer_core.config import build_config
from transfer_core.sweep import SweepSettings, run_sweep
from transfer_core.track import artifact_path

EXPERIMENT = "attributed"
TINY = {"pretrain.epochs": "1", "transfer.epochs": "2"}  # a member trains in about a second
RANKING_COLUMNS = ["class_index", "class_name", "influence", "std_error", "ci_low", "ci_high", "split"]
ATTRIBUTE = ["attribute", "--experiment", EXPERIMENT, "--ensemble-models", "2", "--proj-dim", "32",
             "--top-examples", "4", "--top-sources", "3", "--no-progress"]


@pytest.fixture(scope="module")
def attributed(tmp_path_factory, _empty_store, make_ctx):
    """A 2-model sweep of the tiny synthetic profile, then `transfer-core attribute` with 2 members."""
    root = tmp_path_factory.mktemp("attributed")
    shutil.copy(_empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        mlflow.set_tracking_uri(uri)
        ctx = make_ctx(uri)
        sweep_id = run_sweep(build_config("synthetic", TINY), SweepSettings(n_models=2), experiment=EXPERIMENT,
                             ctx=ctx)
        result = CliRunner().invoke(main, ATTRIBUTE, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        client = MlflowClient()
        experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
        (run,) = client.search_runs([experiment_id], "tags.`transfer_core.kind` = 'attribution'")
        yield {"sweep_id": sweep_id, "run": run, "output": result.output, "client": client, "ctx": ctx,
               "artifacts": Path(artifact_path(run, "report.html", client)).parent}
        mlflow.set_tracking_uri(None)


def test_the_run_records_its_models_cost_and_stability(attributed):
    run = attributed["run"]
    assert run.info.status == "FINISHED" and run.data.tags["sweep_id"] == attributed["sweep_id"]
    assert {"validation_digest", "ranking_half_digest", "selection_half_digest"} <= set(run.data.tags)
    metrics = run.data.metrics
    assert metrics["n_models"] == 2 and metrics["train_cpu_s"] > 0 and metrics["featurize_cpu_s"] > 0
    assert -1 <= metrics["selection_split_half_spearman"] <= 1  # the name the analysis logs it under
    assert run.data.params["attribution.ensemble"] == "full" and run.data.params["pretrain.epochs"] == "1"
    assert f"attribution run {run.info.run_id} FINISHED" in attributed["output"]


def test_its_rankings_have_the_analysis_format_and_top_images_name_their_files(attributed):
    from transfer_core.analysis import findings
    from transfer_core.analysis.writers import RANKING_ARTIFACT, SELECTION_ARTIFACT

    root = attributed["artifacts"]
    # the analysis writes findings.class_influence's columns plus split, under these two names
    assert RANKING_COLUMNS[:-1] == list(findings.class_influence(pd.DataFrame(
        columns=["scope", "output", *RANKING_COLUMNS[:-1]]), "margin").columns)
    for name, split in [(SELECTION_ARTIFACT, "validation-ranking-half"), (RANKING_ARTIFACT, "test")]:
        table = pd.read_csv(root / name)
        assert list(table.columns) == RANKING_COLUMNS and set(table["split"]) == {split}
        assert sorted(table["class_index"]) == list(range(len(table))) and table["influence"].is_monotonic_decreasing
        assert np.isfinite(table["influence"]).all() and (table["ci_low"] <= table["ci_high"]).all()
    top = pd.read_csv(root / "top_images.csv")
    assert list(top.columns) == ["target_index", "target_file", "rank", "source_index", "source_file",
                                 "source_class", "score"]
    assert len(top) == 4 * 3 and top.groupby("target_index")["score"].apply(
        lambda s: s.is_monotonic_decreasing).all()
    assert top["source_file"].str.len().gt(0).all() and top["target_file"].str.len().gt(0).all()
    assert (root / "ranking.png").is_file() and "top_images.csv" in (root / "report.html").read_text()


def test_a_rerun_reuses_the_run(attributed):
    again = CliRunner().invoke(main, ATTRIBUTE, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert f"reusing attribution run {attributed['run'].info.run_id}" in again.output


def test_the_counterfactual_takes_the_attribution_ranking_when_asked(attributed):
    run_id = attributed["run"].info.run_id
    refused = CliRunner().invoke(main, ["counterfactual", "--experiment", EXPERIMENT, "--analysis", run_id])
    assert refused.exit_code != 0 and "--ranking attribution" in refused.output
    result = CliRunner().invoke(main, ["counterfactual", "--experiment", EXPERIMENT, "--ranking", "attribution",
                                       "--orders", "bottom", "--ks", "1", "--seeds", "3", "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"of attribution {run_id}" in result.output
    client = attributed["client"]
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (parent,) = client.search_runs([experiment_id], "tags.`transfer_core.kind` = 'counterfactual'")
    assert parent.data.tags["ranking_source"] == "attribution" and parent.data.tags["analysis_run_id"] == run_id
    bottom = pd.read_csv(attributed["artifacts"] / "class_influence_validation.csv")["class_name"].iloc[-1]
    children = client.search_runs([experiment_id], "tags.`transfer_core.kind` = 'counterfactual_run' and "
                                                   "params.order = 'bottom'")
    assert [c.data.tags["removed"] for c in children] == [f'[{_index(attributed, bottom)}]'] * 3


def test_the_pipeline_runs_attribute_and_hands_its_ranking_to_the_counterfactual(attributed):
    """The pipeline's own steps, from the sweep on (the earlier test trained the same plan: all reused)."""
    from transfer_core.workflow.pipeline import STEPS, PipelineState
    from transfer_core.workflow.settings import PipelineSettings

    settings = PipelineSettings.load(profile="synthetic", experiment=EXPERIMENT, ranking="attribution",
                                     ensemble_models=2, proj_dim=32, top_examples=4, top_sources=3, orders="bottom",
                                     ks="1", seeds=3, overrides=",".join(f"{k}={v}" for k, v in TINY.items()))
    client = attributed["client"]
    lines = []
    state = PipelineState(settings, attributed["ctx"], client.get_experiment_by_name(EXPERIMENT).experiment_id,
                          lines.append)
    state.sweep = type("Sweep", (), {"sweep_id": attributed["sweep_id"]})()
    STEPS["attribute"](state)
    STEPS["counterfactual"](state)
    run_id = attributed["run"].info.run_id
    assert state.steps["attribute"] == run_id and f"[attribute] reusing FINISHED run {run_id}" in lines[1]
    assert state.counterfactual.analysis_run_id == run_id and state.counterfactual.runs.n_trained == 0
    retraining = PipelineState(settings.replace(counterfactual=settings.counterfactual.replace(ranking="retraining")),
                               attributed["ctx"], state.experiment_id, lines.append)
    STEPS["attribute"](retraining)  # the default ranking: the step does nothing
    assert retraining.attribution is None and "attribute" not in retraining.steps


def test_publish_writes_the_attribution_ranked_counterfactual_without_an_analysis(attributed, tmp_path):
    """No analysis in this experiment: publish takes the counterfactual, given or the latest, or by its ranker."""
    from transfer_core.workflow.publish import ATTRIBUTION_COPIES, COUNTERFACTUAL_COPIES

    counterfactual = ["counterfactual", "--experiment", EXPERIMENT, "--ranking", "attribution", "--orders", "bottom",
                      "--ks", "1", "--seeds", "3", "--no-progress"]  # the plan an earlier test ran: reused
    assert CliRunner().invoke(main, counterfactual, catch_exceptions=False).exit_code == 0
    client, run_id = attributed["client"], attributed["run"].info.run_id
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (cf,) = client.search_runs([experiment_id], "tags.`transfer_core.kind` = 'counterfactual'")
    texts = {}
    named = [("given", ["--counterfactual", cf.info.run_id]), ("latest", []), ("ranker", ["--analysis", run_id])]
    for name, ids in named:
        out = tmp_path / name
        result = CliRunner().invoke(main, ["publish", "--experiment", EXPERIMENT, "--out", str(out), "--top-k", "3",
                                           *ids], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        texts[name] = (out / "RESULTS.md").read_text()
        for copy in [*ATTRIBUTION_COPIES, *COUNTERFACTUAL_COPIES]:
            assert (out / copy).is_file(), copy
    assert texts["given"] == texts["latest"] == texts["ranker"]
    text = texts["given"]
    assert f"| attribution | `{run_id}` (2 models, " in text and f"| counterfactual | `{cf.info.run_id}`" in text
    assert "## Accuracy" in text and "## Counterfactual curves" in text and "## Verdicts" in text
    assert "## Attribution ranking" in text and "![ranking](ranking.png)" in text and "(top_images.csv)" in text
    assert "gradient-attribution screen" in text and "docs/attribution.md" in text and "analysis run `" not in text
    ranking = pd.read_csv(attributed["artifacts"] / "class_influence_validation.csv")
    assert f"| 1 | {ranking.class_name.iloc[0]}" in text and ranking.class_name.iloc[-1] in text
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "given" / "class_influence_validation.csv"), ranking)
    refused = CliRunner().invoke(main, ["publish", "--experiment", EXPERIMENT, "--out", str(tmp_path / "no"),
                                        "--analysis", cf.info.run_id])
    assert refused.exit_code != 0 and "analysis" in refused.output


def _index(attributed, class_name: str) -> int:
    table = pd.read_csv(attributed["artifacts"] / "class_influence_validation.csv")
    return int(table.loc[table["class_name"] == class_name, "class_index"].iloc[0])
