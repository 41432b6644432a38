import pytest

from transfer_core.config import ConfigError, RunConfig, build_config, from_params, load_profile, \
    parse_overrides, profile_names


def test_profiles_load_and_validate():
    assert {"quick", "cifar", "imagenet", "synthetic"} <= set(profile_names())
    for name in profile_names():
        assert isinstance(load_profile(name), RunConfig)  # constructing one validates it
    quick = build_config("quick")
    assert quick.data.source == "cifar100" and quick.data.target == "cifar10"
    assert quick.alpha == 0.5 and quick.transfer.mode == "fixed"
    imagenet = load_profile("imagenet")
    assert (imagenet.pretrain.arch, imagenet.pretrain.epochs, imagenet.pretrain.lr,
            imagenet.pretrain.weight_decay, imagenet.pretrain.batch_size) == ("resnet18", 16, 0.5, 5e-5, 1024)


def test_overrides_are_typed():
    config = build_config("quick", parse_overrides("pretrain.epochs=3, transfer.lr=0.05,alpha=0.25"))
    assert config.pretrain.epochs == 3 and isinstance(config.pretrain.epochs, int)
    assert config.transfer.lr == 0.05 and config.alpha == 0.25


def test_params_round_trip_and_hash():
    config = build_config("quick", {"transfer.mode": "full", "pretrain.width": "8"})
    params = config.to_params()
    assert params["transfer.mode"] == "full" and params["pretrain.width"] == "8"
    assert params["subset.alpha"] == "0.5" and "alpha" not in params  # `mlflow run -P alpha` owns "alpha"
    assert from_params({**params, "subset.index": "3"}) == config
    assert config.config_hash() != build_config("quick").config_hash()
    assert config.config_hash("transfer.mode", "pretrain.width") == build_config("quick").config_hash(
        "transfer.mode", "pretrain.width")


@pytest.mark.parametrize("overrides, message", [
    ({"alpha": "0"}, "alpha must be in (0, 1]"),
    ({"alpha": "1.5"}, "alpha must be in (0, 1]"),
    ({"pretrain.epochs": "2.5"}, "pretrain.epochs must be an integer"),
    ({"pretrain.epochs": "many"}, "pretrain.epochs must be an integer"),
    ({"transfer.mode": "partial"}, "unknown transfer mode 'partial'"),
    ({"pretrain.depth": "3"}, "unknown config field 'pretrain.depth'"),
    ({"transfer.lr": "-1"}, "transfer.lr must be positive"),
])
def test_bad_values_get_one_clear_sentence(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        build_config("quick", overrides)


def test_unknown_profile_and_bad_override_syntax():
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        load_profile("nope")
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_overrides(["pretrain.epochs"])


def test_defaults_are_valid_and_invalid_configs_cannot_exist():
    RunConfig()
    with pytest.raises(ConfigError, match="alpha must be in"):
        RunConfig(alpha=2.0)
