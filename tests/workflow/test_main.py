"""The main workflow driver: settings, step keys, and reuse of FINISHED step runs through a real
`mlflow.run` of the cheapest entry point (register)."""
from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from transfer_core.config import ConfigError, build_config
from transfer_core.counterfactual import CounterfactualPlan, run_counterfactual
from transfer_core.counterfactual import log_report
from transfer_core.data.synthetic import SOURCE_CLASSES
from transfer_core.workflow.main import STEP_KEY_TAG, MainSettings, Workflow, data_fingerprint, step_key


def test_settings_are_validated_with_clear_errors():
    assert MainSettings().profile == "quick"
    for bad, message in [(dict(n_models=1), "n_models must be at least 2"),
                         (dict(tune_trials=-1), "tune_trials must be >= 0"),
                         (dict(workers=0), "workers must be a positive integer"),
                         (dict(ks="0,ten"), "ks must be a comma-separated list of ints"),
                         (dict(orders="best"), "unknown removal order"),
                         (dict(seeds=2), "needs at least 3 counterfactual seeds"),
                         (dict(profile="nope"), "unknown profile"),
                         (dict(overrides="pretrain.nope=1"), "unknown config field")]:
        with pytest.raises(ConfigError, match=message):
            MainSettings(**bad)


def test_data_fingerprint_follows_the_files(tmp_path):
    config = build_config("quick")
    (tmp_path / "cifar100.tar.gz").write_bytes(b"x" * 10)
    (tmp_path / "cifar10.tar.gz").write_bytes(b"y" * 10)
    first = data_fingerprint(config, tmp_path)
    assert data_fingerprint(config, tmp_path) == first
    (tmp_path / "cifar10.tar.gz").write_bytes(b"y" * 11)
    assert data_fingerprint(config, tmp_path) != first
    synthetic = build_config("synthetic")
    assert data_fingerprint(synthetic) == data_fingerprint(synthetic, tmp_path)  # generated, not read
    assert step_key("sweep", {"a": "1"}, "k") != step_key("sweep", {"a": "2"}, "k")
    assert step_key("sweep", {"a": "2"}, "k") != step_key("sweep", {"a": "2"}, "j")


def test_a_finished_step_is_reused_and_other_candidates_are_explained(tracking):
    from transfer_core.execute import SubsetRunner
    runner = SubsetRunner(build_config("synthetic"), experiment="flow")
    ranking = pd.DataFrame({"class_index": range(len(SOURCE_CLASSES)), "class_name": SOURCE_CLASSES,
                            "influence": range(len(SOURCE_CLASSES))})
    runs = run_counterfactual(runner.config, ranking, CounterfactualPlan(("bottom",), (0,), 3), experiment="flow",
                              progress=False)
    selection = log_report(runner.client, runs.parent_run_id, runs.table)
    assert selection.k == 0 and not selection.is_champion

    lines: list[str] = []
    flow = Workflow(MainSettings(profile="synthetic", experiment="flow"), echo=lines.append)
    params = {"experiment": "flow", "counterfactual": runs.parent_run_id}
    first = flow.step("register", params)
    assert first.info.status == "FINISHED" and first.data.tags[STEP_KEY_TAG]
    assert first.data.tags["registered_model"] == "flow-target"

    lines.clear()
    again = flow.step("register", params)
    assert again.info.run_id == first.info.run_id  # reused, not recomputed
    assert lines == [f"[register] reusing FINISHED run {first.info.run_id} (same parameters, config, data)"]

    lines.clear()
    other = flow.step("register", {**params, "name": "flow-other"})
    assert other.info.run_id != first.info.run_id
    assert any(f"not reusing run {first.info.run_id}: different parameters: name=" in line
               and "(want flow-other)" in line for line in lines), lines
    client = MlflowClient()
    assert client.get_model_version_by_alias("flow-other", "champion").tags["pruned"] == "false"
