"""The pipeline's settings: the stages' settings composed, named studies as package data, clear errors."""
from __future__ import annotations

import pytest

from transfer_core.analysis.settings import AnalysisSettings
from transfer_core.config import ConfigError
from transfer_core.execute.settings import ExecutorSettings
from transfer_core.settings import flat_specs
from transfer_core.sweep.settings import SweepSettings
from transfer_core.workflow import PipelineSettings, study_names
from transfer_core.workflow.pipeline import STEPS


def test_settings_are_the_stages_own_composed_and_validated_with_clear_errors():
    settings = PipelineSettings()
    assert settings.profile == "quick" and settings.counterfactual.ks == (0, 25)  # k = 0 added once, here
    assert isinstance(settings.sweep, SweepSettings) and settings.sweep == SweepSettings()  # not a copy of defaults
    assert settings.analysis == AnalysisSettings() and settings.executor == ExecutorSettings(workers=2)
    assert settings.tune.total_trials == 8  # resumable tuning in the pipeline
    for bad, message in [(dict(n_models=0), "n_models must be at least 1"),
                         (dict(total_trials=-1), "total_trials must be at least 0"),
                         (dict(workers=0), "workers must be at least 1"),
                         (dict(ks="0,ten"), "ks must be a comma-separated list of integers"),
                         (dict(orders="best"), "orders has an unknown value 'best'"),
                         (dict(seeds=2), "a champion needs at least min_seeds=3"),
                         (dict(output="loss"), "unknown output 'loss'"),
                         (dict(estimator="magic"), "unknown estimator 'magic'; choose one of dom, ridge"),
                         (dict(profile="nope"), "unknown profile 'nope'"),
                         (dict(overrides="pretrain.nope=1"), "unknown config field"),
                         (dict(n_trials=5), r"unknown setting\(s\) n_trials")]:  # not a pipeline option
        with pytest.raises(ConfigError, match=message):
            PipelineSettings.load(**bad)


def test_every_setting_has_one_name_and_a_help_text():
    specs = flat_specs(PipelineSettings())
    names = [spec.name for _, spec, _ in specs]
    assert len(names) == len(set(names))  # the command line is flat: one name per setting
    assert all(len(spec.help) > 15 for _, spec, _ in specs)
    assert {"total_trials", "n_models", "estimator", "ks", "seeds", "workers", "publish"} <= set(names)


def test_the_study_is_a_named_settings_file_of_nested_tables(tmp_path):
    assert "cifar100_to_cifar10" in study_names()
    study = PipelineSettings.load("cifar100_to_cifar10")
    assert study.experiment == "cifar100_to_cifar10" and study.publish == "docs/results"
    assert study.sweep.n_models == 2200 and study.tune.total_trials == 16 and study.analysis.bootstrap == 200
    assert study.counterfactual.ks == (0, 20) and study.counterfactual.seeds == 12
    assert study.executor.workers == 2  # a table the file leaves out keeps the pipeline's default
    assert PipelineSettings.load("cifar100_to_cifar10", n_models=16).sweep.n_models == 16  # options override
    assert list(STEPS) == ["tune", "sweep", "analyze", "counterfactual", "register", "publish"]
    for text, message in [('models = 3\n', r"bad.toml has unknown field\(s\) models"),
                          ('[sweep]\nn_model = 3\n', r"sweep has unknown field\(s\) n_model; valid fields are"),
                          ('[sweep]\nn_models = "many"\n', "n_models must be an integer, got 'many'")]:
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(ConfigError, match=message):
            PipelineSettings.load(str(tmp_path / "bad.toml"))
    with pytest.raises(ConfigError, match="unknown settings 'nope'; choose one of cifar100_to_cifar10"):
        PipelineSettings.load("nope")
