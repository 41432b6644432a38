"""Which models an attribution ensembles, and the source model a subset run keeps for it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from transfer_core.attribution import member_sources, train_member
from transfer_core.config import ConfigError, build_config
from transfer_core.data import class_mask, load_transfer_data
from transfer_core.train import run_subset


@pytest.fixture(scope="module")
def synthetic():
    config = build_config("synthetic")
    return config, load_transfer_data(config.data)


def test_member_sources_are_pure_and_what_each_kind_says():
    labels = torch.arange(6).repeat_interleave(5)  # 6 classes of 5 images
    mask, trained, attributed = member_sources("subset", 3, labels, 6, sweep_seed=1)
    assert np.array_equal(mask, class_mask(1, 3, 6, 0.5))  # the sweep's model 3
    assert torch.equal(trained, attributed) and set(labels[trained].tolist()) == set(np.flatnonzero(mask))
    mask, trained, attributed = member_sources("full", 3, labels, 6)
    assert mask.all() and torch.equal(trained, torch.arange(30)) and torch.equal(attributed, torch.arange(30))
    mask, trained, attributed = member_sources("half_examples", 3, labels, 6, sweep_seed=1)
    assert mask.all() and torch.equal(attributed, torch.arange(30))
    assert np.bincount(labels[trained].numpy()).tolist() == [3] * 6  # half (rounded up) of each class
    again = member_sources("half_examples", 3, labels, 6, sweep_seed=1)[1]
    assert torch.equal(trained, again) and not torch.equal(trained, member_sources("half_examples", 4, labels, 6,
                                                                                   sweep_seed=1)[1])
    with pytest.raises(ConfigError, match="ensemble kind"):
        member_sources("quarter", 0, labels, 6)


def test_a_subset_run_keeps_its_source_model_only_when_asked(synthetic):
    config, data = synthetic
    mask = class_mask(0, 0, data.source.n_classes, config.alpha)
    plain = run_subset(config, data, mask, seed=3, device="cpu")
    assert plain.source_model is None
    kept = run_subset(config, data, mask, seed=3, device="cpu", keep_source_model=True)
    assert kept.target_outputs["margin"].tolist() == plain.target_outputs["margin"].tolist()  # nothing else moves
    source, target = kept.source_model.net, kept.model.net
    assert source.head.out_features == int(mask.sum()) and target.head.out_features == 4
    backbone = {n: p for n, p in source.state_dict().items() if not n.startswith("head.")}
    # fixed-feature transfer: the transferred backbone is the pretrained one (BatchNorm statistics included)
    for name, value in target.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(value, backbone[name]), name


def test_train_member_records_its_cost_and_labels_in_its_head(synthetic):
    config, data = synthetic
    member = train_member(config, data, "subset", 2, device="cpu")
    assert member.info["kind"] == "subset" and member.info["train_cpu_s"] > 0
    n_kept = member.source_network.head.out_features
    assert member.labels.min() >= 0 and member.labels.max() == n_kept - 1
    assert len(member.rows) == n_kept * 120  # 120 images per synthetic source class
