"""The tuning search space: parsing, validation with clear errors, and what Optuna draws."""
import optuna
import pytest

from transfer_core.config import ConfigError
from transfer_core.tune.space import TUNABLE, Choices, Range, SearchSpace, full_name


def test_parse_ranges_log_ranges_and_choices():
    space = SearchSpace.parse("lr=0.001:1:log; epochs=2:30").validate()
    space2 = SearchSpace.parse(["batch_size=64,128", "transfer.label_smoothing=0:0.2"]).validate()
    assert space.params == {"transfer.lr": Range(0.001, 1.0, True), "transfer.epochs": Range(2, 30, False)}
    assert space2.params == {"transfer.batch_size": Choices((64, 128)), "transfer.label_smoothing": Range(0.0, 0.2)}
    assert space.describe() == {"space.transfer.lr": "logrange(0.001, 1.0)", "space.transfer.epochs": "range(2, 30)"}


def test_of_accepts_tuples_lists_and_short_names():
    space = SearchSpace.of({"lr": (0.01, 1.0, True), "weight_decay": (0.0, 1e-3), "batch_size": [32, 64]}).validate()
    assert space.params == {"transfer.lr": Range(0.01, 1.0, True), "transfer.weight_decay": Range(0.0, 1e-3),
                            "transfer.batch_size": Choices((32, 64))}


def test_default_spaces_by_mode():
    fixed, full = SearchSpace.default("fixed").validate(), SearchSpace.default("full").validate()
    assert set(fixed.params) == {"transfer.lr", "transfer.weight_decay", "transfer.epochs", "transfer.label_smoothing"}
    assert set(full.params) == set(fixed.params) | {"transfer.batch_size"}


@pytest.mark.parametrize("space, message", [
    (SearchSpace({}), "the search space is empty"),
    (SearchSpace.parse(""), "the search space is empty"),
    (SearchSpace.of({"lr": (1.0, 0.001, True)}), "lower bound 1.0 above its upper bound 0.001"),
    (SearchSpace.of({"weight_decay": (0.0, 1e-2, True)}), "a log range needs a positive lower bound"),
    (SearchSpace.of({"epochs": (1.5, 4)}), "give integer bounds"),
    (SearchSpace.of({"label_smoothing": (0.0, 1.0)}), "transfer.label_smoothing must be in [0, 1)"),
    (SearchSpace.of({"epochs": (0, 4)}), "transfer.epochs must be a positive integer"),
    (SearchSpace.of({"batch_size": []}), "the choices of transfer.batch_size are empty"),
])
def test_bad_spaces_give_one_clear_error(space, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        space.validate()


@pytest.mark.parametrize("build", [
    lambda: SearchSpace.parse("momentum=0.5:0.99"),
    lambda: SearchSpace.of({"pretrain.lr": (0.1, 1.0)}),
    lambda: SearchSpace({"dropout": Range(0, 1)}).validate(),
])
def test_unknown_hyperparameter_names_the_tunable_ones(build):
    with pytest.raises(ConfigError, match=r"unknown hyperparameter .*; tunable are: lr, weight_decay, epochs"):
        build()


def test_malformed_specs_are_explained():
    with pytest.raises(ConfigError, match="not NAME=LOW:HIGH"):
        SearchSpace.parse("lr")
    with pytest.raises(ConfigError, match="not LOW:HIGH or LOW:HIGH:log"):
        SearchSpace.parse("lr=0.1:1:ln")
    with pytest.raises(ConfigError, match="transfer.epochs must be an integer"):
        SearchSpace.parse("epochs=2.5:4")
    assert full_name("lr") == full_name("transfer.lr") == "transfer.lr"


def test_suggest_draws_typed_values_inside_the_space():
    space = SearchSpace.of({"lr": (1e-3, 1.0, True), "epochs": (2, 9), "batch_size": [64, 256],
                            "label_smoothing": (0.0, 0.2)}).validate()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        chosen = space.suggest(trial)
        assert set(chosen) == set(space.params) and set(chosen) <= set(TUNABLE)
        assert 1e-3 <= chosen["transfer.lr"] <= 1.0 and 2 <= chosen["transfer.epochs"] <= 9
        assert type(chosen["transfer.epochs"]) is int and chosen["transfer.batch_size"] in (64, 256)
        assert chosen == trial.params  # Optuna records exactly what the config receives
        study.tell(trial, 0.0)
