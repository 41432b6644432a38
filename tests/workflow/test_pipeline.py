"""The pipeline's settings: one typed definition, named studies as package data, clear errors."""
from __future__ import annotations

import dataclasses

import pytest

from transfer_core.config import ConfigError
from transfer_core.workflow import PipelineSettings, study_names
from transfer_core.workflow.pipeline import STEPS


def test_settings_are_validated_with_clear_errors():
    assert PipelineSettings().profile == "quick" and PipelineSettings().plan().ks == (0, 25)
    for bad, message in [(dict(n_models=1), "n_models must be at least 2"),
                         (dict(tune_trials=-1), "tune_trials must be at least 0"),
                         (dict(workers=0), "workers must be at least 1"),
                         (dict(ks="0,ten"), "ks must be a comma-separated list of ints"),
                         (dict(orders="best"), "unknown removal order"),
                         (dict(seeds=2), "seeds must be at least 3"),
                         (dict(output="loss"), "unknown output 'loss'"),
                         (dict(profile="nope"), "unknown profile 'nope'"),
                         (dict(overrides="pretrain.nope=1"), "unknown config field")]:
        with pytest.raises(ConfigError, match=message):
            PipelineSettings(**bad)


def test_the_study_is_a_named_settings_file_shipped_with_the_package(tmp_path):
    assert "cifar100_to_cifar10" in study_names()
    study = PipelineSettings.load("cifar100_to_cifar10")
    assert study.experiment == "cifar100_to_cifar10" and study.publish == "docs/results"
    assert PipelineSettings.load("cifar100_to_cifar10", n_models=16).n_models == 16  # options override the file
    fields = {f.name for f in dataclasses.fields(PipelineSettings)}
    assert all(f.metadata.get("help") for f in dataclasses.fields(PipelineSettings))  # the CLI's help text
    assert {"tune_trials", "n_models", "ks", "seeds", "publish"} <= fields and STEPS[0] == "tune"
    (tmp_path / "bad.toml").write_text('n_models = 10\nmodels = 3\n')
    with pytest.raises(ConfigError, match=r"bad.toml has unknown field\(s\) models"):
        PipelineSettings.load(str(tmp_path / "bad.toml"))
    with pytest.raises(ConfigError, match="unknown settings 'nope'; choose one of cifar100_to_cifar10"):
        PipelineSettings.load("nope")
