"""Gradient attribution against an independent naive implementation, on tiny networks in float64.

The naive side is written here from the definitions, sharing no code with the library: one
``torch.autograd.grad`` per example, the projection matrix as one explicit tensor, the kernel solved with
``np.linalg.solve``, TRAK's ensemble average written as loops. Tolerances: float64 throughout, so the
fast paths must agree to 1e-9 relative (observed: about 1e-15).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from transfer_core.attribution import (GRADIENTS, PROJECTORS, AttributionSettings, Attributor, Member,
                                       attributed_parameters)
from transfer_core.attribution import projection as projection_module
from transfer_core.config import ConfigError
from transfer_core.data import ImageSet
from transfer_core.train.models import build_model

RTOL = 1e-9


class TinyNet(nn.Module):
    """Every layer type the layerwise path handles: biased and unbiased, strided and padded convolutions,
    BatchNorm, a Linear inside the backbone, and a ``head``; an in-place ReLU right after a BatchNorm (as in
    torchvision's ResNet-18), which must not overwrite what the layerwise path reads, and a max pool."""

    def __init__(self, n_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5 * 4, 6)
        self.head = nn.Linear(6, n_out)

    def features(self, x):
        out = nn.functional.max_pool2d(self.relu(self.bn1(self.conv1(x))), 2)  # 8 px -> 4 px
        out = torch.relu(self.bn2(self.conv2(out)))  # -> 2 px
        return torch.relu(self.fc(out.flatten(1)))

    def forward(self, x):
        return self.head(self.features(x))


def tiny(n_out: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = TinyNet(n_out).double()
    net.train()
    with torch.no_grad():  # BatchNorm running statistics away from (0, 1)
        for _ in range(3):
            net(torch.randn(32, 3, 8, 8, dtype=torch.float64) * 2 + 0.5)
    return net.eval()


def naive_gradients(net: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``(N, n_params)``: per example, ``autograd.grad`` of ``z_y - logsumexp_{j != y} z_j``."""
    params = dict(net.named_parameters())
    rows = []
    for i in range(len(x)):
        for p in net.parameters():
            p.requires_grad_(True)
        logits = net(x[i:i + 1])[0]
        others = torch.cat([logits[:y[i]], logits[y[i] + 1:]])
        value = logits[y[i]] - torch.logsumexp(others, 0)
        grads = torch.autograd.grad(value, [params[n] for n in names])
        rows.append(torch.cat([g.reshape(-1) for g in grads]).detach().numpy())
    return np.stack(rows)


@pytest.mark.parametrize("name", ["layerwise", "functional"])
@pytest.mark.parametrize("arch", ["tiny", "resnet_small_grid"])
def test_fast_gradients_match_a_loop_of_autograd(name, arch):
    if arch == "tiny":
        net = tiny(3)
    else:
        torch.manual_seed(1)
        net = build_model(arch, 3, 4).double().train()
        with torch.no_grad():
            net(torch.randn(16, 3, 16, 16, dtype=torch.float64))
        net.eval()
    side = 8 if arch == "tiny" else 16
    x = torch.randn(5, 3, side, side, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2, 0])
    names = attributed_parameters(net)
    expected = naive_gradients(net, names, x, y)
    got = GRADIENTS[name](net, names).dense(x, y).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=RTOL * np.abs(expected).max())
    summed = GRADIENTS[name](net, names).summed(x, y).numpy()
    np.testing.assert_allclose(summed, expected.sum(0), rtol=0, atol=RTOL * np.abs(expected).max() * len(x))


def test_a_parameter_subset_takes_only_those_columns():
    net = tiny(3)
    every = attributed_parameters(net)
    last = attributed_parameters(net, ("conv2", "fc"))
    assert last == ["conv2.weight", "fc.weight", "fc.bias"]
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    full = GRADIENTS["layerwise"](net, every)
    part = GRADIENTS["layerwise"](net, last).dense(x, y)
    columns = np.concatenate([np.arange(full.offsets[n], full.offsets[n] + p.numel())
                              for n, p in net.named_parameters() if n in last])
    np.testing.assert_allclose(part.numpy(), full.dense(x, y).numpy()[:, columns], rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="no backbone parameter"):
        attributed_parameters(net, ("stages.9",))


def test_layerwise_refuses_what_it_cannot_do():
    net = tiny(3)
    net.train()
    with pytest.raises(ValueError, match="eval mode"):
        GRADIENTS["layerwise"](net, attributed_parameters(net))
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2)).eval()
    with pytest.raises(ValueError, match="functional"):
        GRADIENTS["layerwise"](grouped, ["0.weight"])


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_projection_is_seeded_and_independent_of_column_chunks(kind, monkeypatch):
    monkeypatch.setattr(projection_module, "BLOCK_ROWS", 7)  # many row blocks, crossed by the column chunks
    n, k = 40, 6
    grads = torch.randn(3, n, dtype=torch.float64)
    projector = PROJECTORS[kind](n, k, seed=(5, 2), dtype=torch.float64)
    matrix = projector.matrix()
    assert matrix.shape == (n, k)
    whole = projector.project([(0, grads)], 3)
    pieces = projector.project([(0, grads[:, :11]), (11, grads[:, 11:12]), (12, grads[:, 12:])], 3)
    np.testing.assert_allclose(whole.numpy(), (grads @ matrix).numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(pieces.numpy(), whole.numpy(), rtol=0, atol=1e-12)
    again = PROJECTORS[kind](n, k, seed=(5, 2), dtype=torch.float64, cache_bytes=0)  # drawn again, not cached
    assert torch.equal(again.matrix(), matrix)
    assert not torch.equal(PROJECTORS[kind](n, k, seed=(5, 3), dtype=torch.float64).matrix(), matrix)
    if kind == "rademacher":
        assert set(np.unique(np.abs(matrix.numpy() * np.sqrt(k))).round(12)) == {1.0}


# -- the whole attribution against a naive one ------------------------------------------------------------------

N_SOURCE_CLASSES = 3


def source_set() -> ImageSet:
    gen = torch.Generator().manual_seed(3)
    labels = torch.arange(N_SOURCE_CLASSES).repeat_interleave(10)
    images = torch.randint(0, 256, (len(labels), 3, 8, 8), generator=gen, dtype=torch.uint8)
    return ImageSet(images, labels, [f"c{i}" for i in range(N_SOURCE_CLASSES)],
                    [f"c{y}/img{i}" for i, y in enumerate(labels.tolist())])


def target_set() -> ImageSet:
    gen = torch.Generator().manual_seed(4)
    labels = torch.tensor([0, 1] * 6)
    images = torch.randint(0, 256, (len(labels), 3, 8, 8), generator=gen, dtype=torch.uint8)
    return ImageSet(images, labels, ["t0", "t1"], [f"t{y}/img{i}" for i, y in enumerate(labels.tolist())])


NORM = (torch.tensor([120.0, 110.0, 100.0]), torch.tensor([60.0, 65.0, 70.0]))


def members(source: ImageSet) -> list[Member]:
    """Two models: one attributed over every source image, one over classes 0 and 2 only (a subset member)."""
    out = []
    for seed, kept in ((0, [0, 1, 2]), (1, [0, 2])):
        source_net = tiny(len(kept), seed)
        target_net = copy.deepcopy(source_net)
        target_net.head = nn.Linear(6, 2).double()
        rows = torch.from_numpy(np.flatnonzero(np.isin(source.labels.numpy(), kept)))
        labels = torch.tensor([kept.index(c) for c in source.labels[rows].tolist()])
        out.append(Member(source_net, target_net.eval(), rows, labels, NORM, {"train_cpu_s": 1.5}))
    return out


def normalised(images: torch.Tensor) -> torch.Tensor:
    return (images.double() - NORM[0].double().view(1, 3, 1, 1)) / NORM[1].double().view(1, 3, 1, 1)


def naive_scores(members_: list[Member], source: ImageSet, target: ImageSet, settings: AttributionSettings,
                 groups: np.ndarray, per_example: np.ndarray):
    """Per-example scores ``(n_source, T)`` and whole-target class influences, from the definitions."""
    n = len(source)
    total_pe, total_q = np.zeros((n, len(per_example))), np.zeros(n)
    total_mean, count = np.zeros(n), np.zeros(n)
    for model_id, m in enumerate(members_):
        names = attributed_parameters(m.source_network)
        rows = m.rows.numpy()
        g_source = naive_gradients(m.source_network, names, normalised(source.images[m.rows]), m.labels)
        g_target = naive_gradients(m.target_network, names, normalised(target.images), target.labels)
        projector = PROJECTORS[settings.projection](g_source.shape[1], settings.proj_dim, (settings.seed, model_id),
                                                    dtype=torch.float64)
        p = projector.matrix().numpy()
        phi, phi_t = g_source @ p, g_target @ p
        kernel = phi.T @ phi
        with torch.no_grad():
            probs = torch.softmax(m.source_network(normalised(source.images[m.rows])), 1).numpy()
        q = 1 - probs[np.arange(len(rows)), m.labels.numpy()]
        mean_target = phi_t[groups >= 0].mean(0)
        total_mean[rows] += phi @ np.linalg.solve(kernel, mean_target)
        total_pe[rows] += phi @ np.linalg.solve(kernel, phi_t[per_example].T)
        total_q[rows] += q
        count[rows] += 1
    with np.errstate(invalid="ignore"):
        weight = total_q / count
        per_example_scores = total_pe / count[:, None] * weight[:, None]
        image_scores = total_mean / count * weight
    classes = np.array([image_scores[source.labels.numpy() == c].sum() for c in range(N_SOURCE_CLASSES)])
    return per_example_scores, classes


@pytest.fixture(scope="module")
def scenario():
    source, target = source_set(), target_set()
    return source, target, members(source)


def attribute(scenario, settings: AttributionSettings, save_dir=None) -> Attributor:
    source, target, members_ = scenario
    att = Attributor(source, settings, save_dir=save_dir, device="cpu")
    att.add_targets("test", target, groups=target.labels.numpy(), group_names=["t0", "t1"], per_example=[1, 4, 7])
    for i, m in enumerate(members_):
        if not att.done(i):
            att.featurize(i, m)
    return att


SETTINGS = AttributionSettings(proj_dim=8, dtype="float64", projection_dtype="float64", chunk_size=4)


def test_scores_match_the_naive_implementation(scenario):
    source, target, members_ = scenario
    result = attribute(scenario, SETTINGS).finalize()
    expected_pe, expected_classes = naive_scores(members_, source, target, SETTINGS,
                                                 target.labels.numpy(), np.array([1, 4, 7]))
    got_pe = result.example_scores("test")
    np.testing.assert_allclose(got_pe, expected_pe, rtol=RTOL, atol=RTOL * np.abs(expected_pe).max())
    got_classes = result.class_influence("test")
    np.testing.assert_allclose(got_classes, expected_classes, rtol=RTOL, atol=RTOL * np.abs(expected_classes).max())
    # class 1 is attributed by one model only, classes 0 and 2 by both: still every class is scored
    assert np.isfinite(got_classes).all()
    top = result.top_sources("test", k=3)
    assert list(top.columns) == ["target_index", "target_file", "rank", "source_index", "source_file",
                                 "source_class", "score"]
    for j, index in enumerate([1, 4, 7]):
        rows = top[top["target_index"] == index]
        assert rows["source_index"].tolist() == list(np.argsort(-expected_pe[:, j], kind="stable")[:3])
        assert rows["target_file"].iloc[0] == target.file_names[index]
        best = int(rows["source_index"].iloc[0])
        assert result.source_rank("test", index, best) == 1


def test_identity_projection_is_the_exact_kernel(scenario):
    """Without projection (k = n_params > n), Phi^T Phi is singular: the error names the fix; a ridge solves it."""
    with pytest.raises(ValueError, match="singular"):
        attribute(scenario, AttributionSettings(projection="identity", dtype="float64", projection_dtype="float64"))
    result = attribute(scenario, AttributionSettings(projection="identity", dtype="float64",
                                                     projection_dtype="float64", ridge=1e-3)).finalize()
    assert np.isfinite(result.class_influence("test")).all()


def test_chunk_size_and_reruns_do_not_change_scores(scenario):
    a = attribute(scenario, SETTINGS).finalize()
    b = attribute(scenario, AttributionSettings(proj_dim=8, dtype="float64", projection_dtype="float64",
                                                chunk_size=64)).finalize()
    np.testing.assert_allclose(b.example_scores("test"), a.example_scores("test"), rtol=1e-12, atol=1e-14)
    again = attribute(scenario, SETTINGS).finalize()
    np.testing.assert_array_equal(again.example_scores("test"), a.example_scores("test"))  # same seed: same numbers
    other = attribute(scenario, AttributionSettings(proj_dim=8, dtype="float64", projection_dtype="float64",
                                                    seed=1)).finalize()
    assert not np.allclose(other.example_scores("test"), a.example_scores("test"))


def test_class_ranking_has_the_analysis_format(scenario):
    result = attribute(scenario, SETTINGS).finalize()
    table = result.class_ranking("test", split="test", bootstrap=50)
    assert list(table.columns) == ["class_index", "class_name", "influence", "std_error", "ci_low", "ci_high",
                                   "split"]
    assert table["influence"].is_monotonic_decreasing and set(table["split"]) == {"test"}
    assert (table["std_error"] >= 0).all() and (table["ci_low"] <= table["ci_high"]).all()
    one = attribute(scenario, SETTINGS).finalize([0]).class_ranking("test")
    assert one["std_error"].isna().all()  # one model: no spread to estimate an error from
    by_group = result.class_influence("test", ["t0"]) * 6 + result.class_influence("test", ["t1"]) * 6
    np.testing.assert_allclose(by_group / 12, result.class_influence("test"), rtol=1e-10)


def test_resume_reuses_models_and_refuses_other_settings(scenario, tmp_path):
    first = attribute(scenario, SETTINGS, tmp_path / "attr")
    assert first.model_ids() == [0, 1]
    source, target, _ = scenario
    resumed = Attributor(source, SETTINGS, save_dir=tmp_path / "attr", device="cpu")
    resumed.add_targets("test", target, groups=target.labels.numpy(), group_names=["t0", "t1"], per_example=[1, 4, 7])
    assert resumed.done(0) and resumed.done(1)
    np.testing.assert_array_equal(resumed.finalize().example_scores("test"), first.finalize().example_scores("test"))
    assert resumed.finalize().cpu_seconds()["train"] == pytest.approx(3.0)
    other = Attributor(source, AttributionSettings(proj_dim=4, dtype="float64"), save_dir=tmp_path / "attr")
    other.add_targets("test", target, groups=target.labels.numpy(), group_names=["t0", "t1"], per_example=[1, 4, 7])
    with pytest.raises(ConfigError, match="settings.proj_dim"):
        other.done(0)


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="projection"):
        AttributionSettings(projection="sparse")
    with pytest.raises(ConfigError, match="proj_dim"):
        AttributionSettings(proj_dim=0)


# -- the re-fitted probe against finite differences of an exactly re-fitted head --------------------------------

def fit_head(z: torch.Tensor, labels: torch.Tensor, n_classes: int, weight_decay: float, smoothing: float):
    """The head minimising mean cross-entropy + weight_decay/2 |u|^2 on standardised features ``z``: Newton's
    method with autograd's Hessian, to machine precision (the finite differences divide its error by 2 eps)."""

    def objective(u):
        return nn.functional.cross_entropy(z @ u[:, :-1].T + u[:, -1], labels, label_smoothing=smoothing) \
            + weight_decay / 2 * u.square().sum()
    u = torch.zeros(n_classes, z.shape[1] + 1, dtype=torch.float64)
    for _ in range(30):
        grad = torch.autograd.functional.jacobian(objective, u).reshape(-1)
        hessian = torch.autograd.functional.hessian(objective, u).reshape(grad.numel(), grad.numel())
        u = u - torch.linalg.solve(hessian, grad).view_as(u)
        if grad.norm() < 1e-15:
            break
    return u[:, :-1], u[:, -1]


def test_refit_gradient_matches_finite_differences_of_a_refitted_head():
    from transfer_core.attribution.gradients import margin
    from transfer_core.attribution.probe import LinearProbe, refit_gradients
    torch.manual_seed(0)
    net = tiny(3)
    gen = torch.Generator().manual_seed(7)
    train_x = torch.randn(40, 3, 8, 8, dtype=torch.float64, generator=gen)
    train_y = torch.arange(3).repeat(14)[:40]
    target_x = torch.randn(6, 3, 8, 8, dtype=torch.float64, generator=gen)
    target_y = torch.tensor([0, 1, 2, 2, 1, 0])
    weight_decay, smoothing = 0.05, 0.1
    with torch.no_grad():
        feats = net.features(train_x)
    mu, sigma = feats.mean(0), feats.std(0)

    def head_at(params: dict) -> torch.Tensor:
        """J(theta): the summed target margin with the head exactly re-fitted (mu, sigma held fixed)."""
        with torch.no_grad():
            f_train = torch.func.functional_call(_Features(net), {f"net.{k}": v for k, v in params.items()},
                                                 (train_x,), strict=False)
            w, b = fit_head((f_train - mu) / sigma, train_y, 3, weight_decay, smoothing)
            f_target = torch.func.functional_call(_Features(net), {f"net.{k}": v for k, v in params.items()},
                                                  (target_x,), strict=False)
            return margin((f_target - mu) / sigma @ w.T + b, target_y).sum()

    names = attributed_parameters(net)
    base = {n: p.detach().clone() for n, p in net.named_parameters()}
    w, b = fit_head((feats - mu) / sigma, train_y, 3, weight_decay, smoothing)
    with torch.no_grad():  # the network's head at the exact optimum, in raw-feature units
        net.head.weight.copy_(w / sigma)
        net.head.bias.copy_(b - (w / sigma) @ mu)
    probe = LinearProbe(lambda r: train_x[r], train_y, weight_decay, smoothing)
    (gradient,) = refit_gradients(net, names, probe, [lambda: [(target_x, target_y)]], margin)
    fixed = GRADIENTS["naive"](net, names).dense(target_x, target_y).sum(0)
    direction = torch.randn(len(gradient), dtype=torch.float64, generator=gen)
    eps = 1e-6  # at 1e-5 the network's curvature (ReLU and max-pool kinks) moves the difference by 5e-4
    shifted = []
    for sign in (1, -1):
        params, offset = dict(base), 0
        for n in names:
            size = base[n].numel()
            params[n] = base[n] + sign * eps * direction[offset:offset + size].view_as(base[n])
            offset += size
        shifted.append(head_at(params))
    finite = float((shifted[0] - shifted[1]) / (2 * eps))
    assert float(gradient @ direction) == pytest.approx(finite, rel=1e-7)  # observed 3e-9
    # and re-fitting matters here: the fixed-head derivative is another number
    assert abs(float(fixed @ direction) - finite) > 100 * abs(float(gradient @ direction) - finite)


class _Features(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.features(x)
