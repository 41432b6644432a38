import copy

import numpy as np
import torch

from transfer_core.config import build_config
from transfer_core.data import load_split, load_transfer_data
from transfer_core.data import class_mask
from transfer_core.train import pretrain, run_subset, source_subset, transfer


def _setup(mode="fixed"):
    config = build_config("synthetic", {"transfer.mode": mode, "pretrain.epochs": "2", "transfer.epochs": "3"})
    return config, load_transfer_data(config.data)


def test_source_subset_keeps_only_masked_classes_relabelled():
    config, data = _setup()
    mask = class_mask(0, 0, data.source.n_classes)
    subset, kept = source_subset(data.source, mask)
    assert kept.tolist() == np.flatnonzero(mask).tolist()
    original = torch.tensor([data.source.class_names.index(n.split("/")[0]) for n in subset.file_names])
    assert torch.equal(kept[subset.labels], original)


def test_fixed_feature_transfer_freezes_backbone_and_batchnorm():
    config, data = _setup("fixed")
    gen = torch.Generator().manual_seed(0)
    source, kept = source_subset(data.source, class_mask(0, 0, data.source.n_classes))
    norm = data.source_norm
    net = pretrain(config, source, len(kept), gen, torch.device("cpu"), norm)
    before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("head")}
    net = transfer(config, net, norm, data, gen, torch.device("cpu"))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "backbone or BatchNorm stats moved"
    assert net.head.out_features == data.target_train.n_classes


def test_full_fine_tuning_moves_backbone():
    config, data = _setup("full")
    gen = torch.Generator().manual_seed(0)
    source, kept = source_subset(data.source, class_mask(0, 0, data.source.n_classes))
    norm = data.source_norm
    net = pretrain(config, source, len(kept), gen, torch.device("cpu"), norm)
    before = copy.deepcopy(net.state_dict())
    net = transfer(config, net, norm, data, gen, torch.device("cpu"))
    moved = [k for k in before if not k.startswith("head") and not torch.equal(before[k], net.state_dict()[k])]
    assert any("running_mean" in k for k in moved) and any("conv" in k for k in moved)


def test_normalisation_is_the_whole_sources_whatever_the_mask():
    config = build_config("synthetic")
    data = load_transfer_data(config.data)
    mean, std = data.source_norm
    pixels = data.source.images.permute(1, 0, 2, 3).reshape(3, -1).double()  # naive: every pixel per channel
    torch.testing.assert_close(mean.double(), pixels.mean(1), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(std.double(), pixels.std(1), rtol=1e-5, atol=1e-4)
    models = [run_subset(config, data, class_mask(0, i, data.source.n_classes), seed=i).model for i in (0, 1)]
    for model in models:  # two masks, one normalisation, stored in the model
        torch.testing.assert_close(model.mean.flatten(), mean)
        torch.testing.assert_close(model.std.flatten(), std)


def test_run_subset_learns_and_scores_every_test_example():
    # 8 pretraining epochs instead of the profile's 4: at 4, this mask's held-out source accuracy ranges
    # from 0.37 to 1.0 with the training seed and the CPU's float rounding (seed 3: 0.37 on torch's
    # default kernel path, 0.52 and 0.59 on avx512 with 1 and 2 threads), too close to any threshold
    # worth the name. At 8 it ranged 0.93 to 1.0 over 10 seeds (default path), and validation and
    # test accuracy 0.46 to 0.90: the watermarked "rings" and "diagonal" images of the synthetic
    # target fool many backbones, which caps both near 0.5 (vertical and horizontal right).
    config = build_config("synthetic", {"pretrain.epochs": "8"})
    data = load_transfer_data(config.data)
    result = run_subset(config, data, class_mask(0, 2, data.source.n_classes), seed=3,
                        source_test=load_split("synthetic-source", "test", 16))
    n_test = len(data.target_test)
    assert {k: v.shape for k, v in result.target_outputs.items()} == {k: (n_test,) for k in
                                                                      ("margin", "prob", "correct", "pred")}
    # margins (seen over 10 seeds): source 0.93 or more against 0.4, target 0.46 or more against 0.35
    assert result.metrics["source_acc"] > 0.4, result.metrics  # 5 kept classes of 30 images: chance is 0.2
    assert result.metrics["target_val_acc"] > 0.35, result.metrics  # 4 classes of 100 images: chance is 0.25
    assert result.metrics["target_test_acc"] > 0.35, result.metrics
    assert set(result.timings) == {"pretrain_s", "transfer_s", "evaluate_s"}
    n_val = len(data.target_val)
    assert {k: v.shape for k, v in result.val_outputs.items()} == {k: (n_val,) for k in
                                                                   ("margin", "prob", "correct", "pred")}
    assert result.metrics["target_val_acc"] == result.val_outputs["correct"].mean()
    again = run_subset(config, data, class_mask(0, 2, data.source.n_classes), seed=3)
    np.testing.assert_array_equal(again.target_outputs["margin"], result.target_outputs["margin"])
