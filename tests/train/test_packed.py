"""Packed training against the same models trained alone: layers, a few steps, whole runs, a diverging member.

Why float64. Packing changes only the order of floating-point operations, but in float32 that
does not stay small through training: SGD through ReLUs is discontinuous in the weights (a
pre-activation that rounding moves across zero switches that unit's gradient on or off), so now
and then a rounding-level difference jumps at one step and then cascades through the next ones.
Measured after one synthetic epoch (5 steps), packed vs alone, largest weight difference per
model: from 1e-7 (no jump) to 1.6e-3, and which models jump depends on torch's kernel path and
thread count (default, avx2, avx512; 1 or 2 threads), while nudging the starting weights by 1 part
in 10^7 moved them by only 4e-7 on avx512. No float32 tolerance fitted on one CPU holds on another,
and a bound taken from a few random nudges samples the jumps too thinly. In float64 rounding is
10^9 times finer, and packed and alone training agree to rounding: at most 2.2e-16 absolute on
every weight and statistic (weights of order 0.1 to 1; all three kernel paths, 1 and 2 threads).
So the training tests run in float64 (:func:`float64`: the training code computes in torch's
default dtype) and compare at rtol 1e-9 (atol 1e-12): about six orders of magnitude above what
was seen, and eight below what a packing error (another batch, crop, flip, learning rate or
weight) does to a weight in one epoch (one epoch moves the weights by about 0.4). Only the
forward pass of packed layers is also checked in float32, where nothing amplifies rounding, with
a bound taken from the network's own float32 error.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

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


RTOL, ATOL = 1e-9, 1e-12  # float64: packed and alone agree to 2.2e-16 (see the module docstring)


@contextlib.contextmanager
def float64():
    """Train and infer in float64 inside the block (torch's default dtype, which the training code follows).
    Load data before: the synthetic generator draws in the default dtype too."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)


def assert_same_state(member: dict, alone: dict, what: str = "") -> None:
    """Every tensor of two state dicts equal to rounding (RTOL, ATOL); integer buffers exactly."""
    assert member.keys() == alone.keys()
    for key, value in alone.items():
        assert member[key].dtype == value.dtype, key
        torch.testing.assert_close(member[key], value, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what} {key}: {m}")


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
    """Members come back out exactly; the packed forward pass equals each network's to rounding in float64,
    and in float32 is as accurate as the network's own (both measured against the float64 network).

    The float32 bound is the network's own sensitivity: packed, the error against float64 is at most 10x
    the network's float32 error alone, plus 1e-6 of the outputs' scale. Seen: 0.6x to 1.9x (default,
    avx2, avx512; 1 and 2 threads), the largest errors 1.1e-5 at ResNet-18, whose BatchNorm over 8
    values at its 1x1 last stage amplifies rounding. A packing error changes outputs by about 1.
    """
    nets = _nets(cls, n, *args)
    packed = PackedNetwork(nets)
    for j, net in enumerate(nets):  # members come back out exactly
        member = packed.member(j).state_dict()
        assert member.keys() == net.state_dict().keys()
        for key, value in net.state_dict().items():
            torch.testing.assert_close(member[key], value, rtol=0, atol=0)
    exact = [copy.deepcopy(net).double() for net in nets]
    packed64 = PackedNetwork(exact)
    xs = [torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(j)) for j in range(n)]
    x, x64 = torch.cat(xs, 1), torch.cat(xs, 1).double()
    for mode in (True, False):  # batch statistics, then running statistics
        for net in (packed, packed64, *nets, *exact):
            net.train(mode)
        outputs = {"logits": (packed(x), packed64(x64), lambda net, x: net(x)),
                   "features": (packed.features(x), packed64.features(x64), lambda net, x: net.features(x))}
        for name, (out, out64, apply) in outputs.items():
            out, out64 = out.view(8, n, -1), out64.view(8, n, -1)
            for j, (net, net64, x_j) in enumerate(zip(nets, exact, xs)):
                ref = apply(net64, x_j.double())
                torch.testing.assert_close(out64[:, j], ref, rtol=RTOL, atol=ATOL)
                own = (apply(net, x_j).double() - ref).abs().max().item()
                err = (out[:, j].double() - ref).abs().max().item()
                bound = 10 * own + 1e-6 * ref.abs().max().item()
                assert err <= bound, f"{name}, model {j}, train={mode}: float32 error {err:.1e} packed, {own:.1e} alone"


def _source_members(data, n, recipe_seed=200):
    """n sweep-like models of the synthetic source: masks, rows, initial weights and generators (in torch's
    default dtype: float64 inside :func:`float64`)."""
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


def _moved(net: nn.Module, start: dict) -> float:
    """The largest change of any weight of ``net`` from the state ``start``."""
    return max((value - start[key]).abs().max().item() for key, value in net.state_dict().items()
               if value.is_floating_point())


def test_a_few_packed_steps_equal_the_same_models_trained_alone(data):
    """One epoch (5 steps of 128 images, with crops and flips), in float64: weights and per-example logits
    equal to rounding (RTOL), and each model consumed the same random draws."""
    recipe = Recipe.from_section(CONFIG.pretrain)
    with float64():
        nets, members, alone = _source_members(data, 3)
        start = [copy.deepcopy(net.state_dict()) for net in nets]
        packed = PackedNetwork(nets).to(memory_format=torch.channels_last)
        assert train_packed(packed, members, recipe) == [None, None, None]
        packed.eval()
        target = normalize(data.target_test.images, *data.source_norm, "cpu")
        logits = packed_infer(packed, 3, target, 128)  # (3, n_test, k)
        assert logits.dtype == torch.float64
        for j, (net, x, y, generator) in enumerate(alone):
            train(net, x, y, recipe, generator)  # the single-model loop every unpacked run uses
            net.eval()
            assert _moved(net, start[j]) > 0.05  # (seen: 0.38) training moved it: the comparison means something
            assert_same_state(packed.member(j).state_dict(), net.state_dict(), f"model {j}")
            torch.testing.assert_close(logits[j], infer(net, target), rtol=RTOL, atol=ATOL)
            assert generator.initial_seed() == members[j].generator.initial_seed()
            assert torch.equal(torch.randint(0, 2 ** 30, (4,), generator=generator),  # the same draws were consumed
                               torch.randint(0, 2 ** 30, (4,), generator=members[j].generator))


def test_a_diverging_model_fails_alone_and_the_others_train_as_if_it_were_not_there(data):
    recipe = Recipe.from_section(CONFIG.pretrain)
    with float64():
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
        train(net, x, y, recipe, generator)
        assert_same_state(packed.member(0).state_dict(), net.state_dict(), "model 0")


@pytest.mark.parametrize("mode", ["fixed", "full"])
def test_whole_packed_runs_match_run_subset(data, mode):
    """Pretraining, transfer and scoring, as run_subset does it, in float64; masks of two sizes train as two
    packs. Weights, metrics and predictions equal to rounding; the logged per-example margins and
    probabilities are float32 roundings of float64 values that agree to RTOL, so at most two float32
    steps (2**-22 relative) apart."""
    config = build_config("synthetic", {"pretrain.epochs": "1", "transfer.epochs": "2", "transfer.mode": mode})
    source_test = load_split("synthetic-source", "test", 16)  # before float64: the generator draws in it
    masks = [class_mask(0, j, 10) for j in range(2)]
    if mode == "fixed":  # and a counterfactual-like mask: 9 kept classes, a pack of its own
        masks.append(np.arange(10) != 3)
    seeds = [11, 12, 13][:len(masks)]
    with float64():
        packed = run_pack(config, data, masks, seeds, source_test, "cpu")
        for mask, seed, result in zip(masks, seeds, packed):
            alone = run_subset(config, data, mask, seed, source_test, "cpu")
            np.testing.assert_array_equal(result.class_mask, alone.class_mask)
            assert result.metrics == alone.metrics  # accuracies: the same predictions
            assert result.timings.keys() == alone.timings.keys()
            assert_same_state(result.model.state_dict(), alone.model.state_dict(), f"{mode}, seed {seed}")
            for split in ("target_outputs", "val_outputs"):
                a, b = getattr(result, split), getattr(alone, split)
                assert a.keys() == b.keys() and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
                np.testing.assert_array_equal(a["pred"], b["pred"])
                np.testing.assert_array_equal(a["correct"], b["correct"])
                for name in ("margin", "prob"):
                    np.testing.assert_allclose(a[name], b[name], rtol=2 ** -22, atol=ATOL, err_msg=f"{mode} {split}")
            model = result.model.eval()  # the logged model reproduces the logged outputs
            with torch.no_grad():
                logits = model(data.target_test.images)
            np.testing.assert_array_equal(logits.argmax(1).numpy(), result.target_outputs["pred"])


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
