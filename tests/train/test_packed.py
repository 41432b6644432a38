"""Packed training against the same models trained alone: layers, a few steps, whole runs, a diverging member.

Tolerances. Packing changes only the order of floating-point operations, and SGD amplifies
such differences: perturbing a model's starting weights by 1 part in 10^7 moves its weights
after one synthetic epoch by up to 1e-3 relative (measured while writing these tests), and
after a whole run its test margins by up to 0.3. So a few steps are compared tightly
(weights rtol 1e-3 / atol 1e-4, logits atol 1e-3), and whole runs by what they are used
for: the same accuracy within one test image in a hundred, the same per-example margins up
to a correlation of 0.99.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transfer_core.config import ConfigError, build_config
from transfer_core.data import class_mask, class_rows, load_split, load_transfer_data
from transfer_core.train import normalize, run_subset
from transfer_core.train.loop import CROP_PADDING, Recipe, infer, train
from transfer_core.train.memory import PackBudget, pack_budget, step_bytes
from transfer_core.train.models import ResNet18, SmallResNet, SmallResNetGrid, build_model
from transfer_core.train.packed_training import Member, packed_infer, run_pack, train_packed
from transfer_core.train.packed_layers import PackedNetwork

CONFIG = build_config("synthetic", {"pretrain.epochs": "1", "transfer.epochs": "2"})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: several times faster than two on the shared 2-core test machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return load_transfer_data(CONFIG.data)


def _nets(cls, n, *args):
    """``n`` networks of one architecture with different weights (one is built; building ResNet-18 is slow)."""
    torch.manual_seed(0)
    first, nets = cls(*args), []
    with torch.no_grad():
        for _ in range(n):
            net = copy.deepcopy(first)
            for param in net.parameters():
                param.add_(0.5 * param.std().nan_to_num() * torch.randn_like(param))
            for module in net.modules():  # non-trivial BatchNorm statistics, so eval mode is checked too
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
            nets.append(net)
    return nets


@pytest.mark.parametrize("cls, args, n, size", [(SmallResNet, (5, 4), 3, 12), (SmallResNetGrid, (5, 4), 3, 12),
                                                 (ResNet18, (3, 64), 2, 32)])
def test_a_packed_network_computes_what_each_network_computes_alone(cls, args, n, size):
    nets = _nets(cls, n, *args)
    packed = PackedNetwork(nets)
    for j, net in enumerate(nets):  # members come back out exactly
        member = packed.member(j).state_dict()
        assert member.keys() == net.state_dict().keys()
        for key, value in net.state_dict().items():
            torch.testing.assert_close(member[key], value, rtol=0, atol=0)
    xs = [torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(j)) for j in range(n)]
    for mode in (True, False):  # batch statistics, then running statistics
        packed.train(mode)
        logits = packed(torch.cat(xs, 1)).view(8, n, -1)
        features = packed.features(torch.cat(xs, 1)).view(8, n, -1)
        for j, (net, x) in enumerate(zip(nets, xs)):
            net.train(mode)  # (BatchNorm over 8 values at ResNet-18's 1x1 last stage amplifies rounding: atol 1e-4)
            torch.testing.assert_close(logits[:, j], net(x), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(features[:, j], net.features(x), rtol=1e-4, atol=1e-4)


def _source_members(data, n, recipe_seed=200):
    """n sweep-like models of the synthetic source: masks, rows, initial weights and generators."""
    x = normalize(data.source.images, *data.source_norm, "cpu")
    padded = F.pad(x, (CROP_PADDING,) * 4, mode="reflect")
    nets, members, alone = [], [], []
    for j in range(n):
        rows, labels, kept = class_rows(data.source.labels, class_mask(0, j, data.source.n_classes))
        torch.manual_seed(100 + j)
        net = build_model("resnet_small", len(kept), 8).to(memory_format=torch.channels_last)
        nets.append(net)
        members.append(Member(padded, rows, labels, torch.Generator().manual_seed(recipe_seed + j)))
        alone.append((copy.deepcopy(net), x[rows], labels, torch.Generator().manual_seed(recipe_seed + j)))
    return nets, members, alone


def _assert_trained_alike(member, net, start, x, y, recipe, seed, target=None, packed_logits=None):
    """``member`` (a packed model's state) equals ``net`` (the same model trained alone from ``start``),
    up to floating-point reordering: within the tight tolerances, or else within what nudging the
    starting weights by 1 part in 10^7 changes in the model trained alone (a few such nudges).

    The second clause is needed because SGD can jump at a ReLU's kink: a nudge that small moves
    some models' weights after one synthetic epoch by a fixed 1e-3 one way or the other (seen:
    7.5e-4 for the second mask of recipe seed 200, in about half of the nudges, under the
    block-augmentation recipe; 8.8e-4 for recipe seed 300 under the per-batch one), and packing
    lands on either side as a nudge does. A real packing error (other batches, crops, learning
    rates or weights) moves every tensor by much more: one epoch changes them by about 0.1.
    """
    logits = None if target is None else infer(net, target)

    def tight():
        for key, value in net.state_dict().items():
            torch.testing.assert_close(member[key], value, rtol=1e-3, atol=1e-4, msg=key)
        if logits is not None:
            torch.testing.assert_close(packed_logits, logits, rtol=1e-3, atol=1e-3)

    try:
        tight()
        return
    except AssertionError:
        pass
    state, spread, logit_spread = net.state_dict(), {}, 0.0
    for trial in range(3):
        nudged = copy.deepcopy(start)
        torch.manual_seed(trial)
        with torch.no_grad():
            for param in nudged.parameters():
                param.mul_(1 + 1e-7 * torch.randn_like(param))
        train(nudged, x, y, recipe, torch.Generator().manual_seed(seed))
        nudged.eval()
        for key, value in nudged.state_dict().items():
            if value.is_floating_point():
                spread[key] = max(spread.get(key, 0.0), (value - state[key]).abs().max().item())
        if logits is not None:
            logit_spread = max(logit_spread, (infer(nudged, target) - logits).abs().max().item())
    assert max(spread.values()) > 1e-5, "not a jump at a kink: nudges change nothing, yet packing does"
    for key, value in state.items():
        if value.is_floating_point():
            assert (member[key] - value).abs().max().item() <= 2 * spread[key] + 1e-4, key
    if logits is not None:
        assert (packed_logits - logits).abs().max().item() <= 2 * logit_spread + 1e-3


def test_a_few_packed_steps_equal_the_same_models_trained_alone(data):
    """One epoch (5 steps of 128 images, with crops and flips): weights and per-example logits."""
    recipe = Recipe.from_section(CONFIG.pretrain)
    nets, members, alone = _source_members(data, 3)
    packed = PackedNetwork(nets).to(memory_format=torch.channels_last)
    assert train_packed(packed, members, recipe) == [None, None, None]
    packed.eval()
    target = normalize(data.target_test.images, *data.source_norm, "cpu")
    logits = packed_infer(packed, 3, target, 128)  # (3, n_test, k)
    for j, (net, x, y, generator) in enumerate(alone):
        start = copy.deepcopy(net)
        train(net, x, y, recipe, generator)  # the single-model loop every unpacked run uses
        net.eval()
        _assert_trained_alike(packed.member(j).state_dict(), net, start, x, y, recipe, generator.initial_seed(),
                              target, logits[j])
        assert generator.initial_seed() == members[j].generator.initial_seed()
        assert torch.equal(torch.randint(0, 2 ** 30, (4,), generator=generator),  # the same draws were consumed
                           torch.randint(0, 2 ** 30, (4,), generator=members[j].generator))


def test_a_diverging_model_fails_alone_and_the_others_train_as_if_it_were_not_there(data):
    recipe = Recipe.from_section(CONFIG.pretrain)
    nets, members, alone = _source_members(data, 2)
    poisoned = members[1].source.clone()
    poisoned[members[1].rows[:10]] = float("inf")  # model 1's loss becomes NaN in its first epoch
    members[1] = Member(poisoned, members[1].rows, members[1].labels, members[1].generator)
    packed = PackedNetwork(nets).to(memory_format=torch.channels_last)
    failures = train_packed(packed, members, recipe)
    assert failures[0] is None and "loss became nan in epoch 1; lower the learning rate" in failures[1]
    assert all(torch.isfinite(t).all() for t in packed.state_dict().values())
    assert all((t == 0).all() for t in packed.member(1).state_dict().values() if t.is_floating_point())
    net, x, y, generator = alone[0]
    start = copy.deepcopy(net)
    train(net, x, y, recipe, generator)
    _assert_trained_alike(packed.member(0).state_dict(), net, start, x, y, recipe, generator.initial_seed())


@pytest.mark.parametrize("mode", ["fixed", "full"])
def test_whole_packed_runs_match_run_subset(data, mode):
    """Pretraining, transfer and scoring, as run_subset does it; masks of two sizes train as two packs."""
    config = build_config("synthetic", {"pretrain.epochs": "1", "transfer.epochs": "2", "transfer.mode": mode})
    source_test = load_split("synthetic-source", "test", 16)
    masks = [class_mask(0, j, 10) for j in range(2)]
    if mode == "fixed":  # and a counterfactual-like mask: 9 kept classes, a pack of its own
        masks.append(np.arange(10) != 3)
    seeds = [11, 12, 13][:len(masks)]
    packed = run_pack(config, data, masks, seeds, source_test, "cpu")
    for mask, seed, result in zip(masks, seeds, packed):
        alone = run_subset(config, data, mask, seed, source_test, "cpu")
        np.testing.assert_array_equal(result.class_mask, alone.class_mask)
        assert result.metrics.keys() == alone.metrics.keys() and result.timings.keys() == alone.timings.keys()
        assert result.model.state_dict().keys() == alone.model.state_dict().keys()
        assert result.metrics["source_acc"] == pytest.approx(alone.metrics["source_acc"], abs=0.01)
        for split in ("target_outputs", "val_outputs"):
            a, b = getattr(result, split), getattr(alone, split)
            assert a.keys() == b.keys() and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
            assert abs(a["correct"].mean() - b["correct"].mean()) <= 0.02, (mode, split)  # seen: at most 0.0125
            assert np.corrcoef(a["margin"], b["margin"])[0, 1] > 0.995, (mode, split)  # seen: at least 0.9999
        model = result.model.eval()  # the logged model reproduces the logged outputs
        with torch.no_grad():
            logits = model(data.target_test.images)
        assert (logits.argmax(1).numpy() == result.target_outputs["pred"]).mean() > 0.99


def test_step_bytes_counts_what_a_real_forward_saves():
    params, saved, dim = step_bytes("resnet_small", 8, 5, 16, 12)
    naive = {}  # the same count on a real CPU forward pass: the meta device stands in faithfully

    def keep(t):
        naive[id(t)] = (t, t.nbytes)
        return t

    net = SmallResNet(5, 8)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        net.train()(torch.randn(16, 3, 12, 12).contiguous(memory_format=torch.channels_last))
    assert saved == sum(size for _, size in naive.values())
    assert params == sum(p.nbytes for p in net.parameters()) and dim == 32
    more, most = step_bytes("resnet_small", 8, 5, 32, 12)[1], step_bytes("resnet_small", 8, 5, 48, 12)[1]
    assert most - more == more - saved > 0  # activations grow with the batch, the saved weights do not


def test_a_pack_that_does_not_fit_is_refused_naming_the_largest_that_does():
    budget = PackBudget("cuda:0", per_model=2 * 2 ** 30, shared=3 * 2 ** 30, available=80 * 2 ** 30)
    assert budget.largest() == 32  # (0.85 * 80 - 3) // 2
    budget.check(32)
    with pytest.raises(ConfigError, match=r"a pack of 33 models needs about 81\.2 GiB of cuda:0 memory "
                                          r"\(2048 MiB per model plus 3\.00 GiB of data\) but 80\.0 GiB is free; "
                                          r"use --pack 32 or less, or --pack auto"):
        budget.check(33)
    assert PackBudget("cpu", 2 ** 30, 0, 2 ** 30).largest() == 0
    with pytest.raises(ConfigError, match="lower pretrain.batch_size"):
        PackBudget("cpu", 2 ** 30, 0, 2 ** 30).check(1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_packed_runs_match_unpacked_ones_and_stay_within_their_memory_estimate(data):
    """bf16 autocast reorders more than the CPU's float32: accuracies within 3 points."""
    masks, seeds = [class_mask(0, j, 10) for j in range(4)], [21, 22, 23, 24]
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    packed = run_pack(CONFIG, data, masks, seeds, None, "cuda")
    peak = torch.cuda.max_memory_allocated() - baseline
    budget = pack_budget(CONFIG, data, "cuda")
    assert peak <= budget.shared + len(masks) * budget.per_model, (peak, budget)
    for mask, seed, result in zip(masks, seeds, packed):
        alone = run_subset(CONFIG, data, mask, seed, None, "cuda")
        assert abs(result.metrics["target_test_acc"] - alone.metrics["target_test_acc"]) <= 0.03
