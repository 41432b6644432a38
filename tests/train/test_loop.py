import copy

import pytest
import torch
import torch.nn.functional as F

from transfer_core.train.models import SmallResNet, training_memory_format
from transfer_core.train.loop import DivergenceError, NesterovSGD, Recipe, batch_crop, batch_flip_lr, train, \
    train_linear_head, triangular_lr


def test_batch_crop_matches_naive_slicing():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    padded = F.pad(x, (2,) * 4, mode="reflect")
    gen = torch.Generator().manual_seed(0)
    crops = batch_crop(padded, 6, gen)
    gen = torch.Generator().manual_seed(0)
    dy = torch.randint(0, 5, (2,), generator=gen)
    dx = torch.randint(0, 5, (2,), generator=gen)
    for i in range(2):
        expected = padded[i, :, dy[i]:dy[i] + 6, dx[i]:dx[i] + 6]
        assert torch.equal(crops[i], expected)


def test_flip_flips_about_half():
    x = torch.randn(1000, 3, 4, 4)
    out = batch_flip_lr(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert (flipped | same).all() and 400 < flipped.sum() < 600


def test_triangular_schedule_shape():
    values = [triangular_lr(s, 100, 20) for s in range(100)]
    assert max(values) == pytest.approx(1.0) and values.index(max(values)) == 20
    assert values[0] < 0.1 and values[-1] <= 0.02
    assert all(b >= a for a, b in zip(values[:20], values[1:21]))
    assert all(b <= a for a, b in zip(values[20:], values[21:]))


def test_nesterov_sgd_matches_torch_optim_sgd():
    torch.manual_seed(0)
    ours = SmallResNet(3, width=4)
    ours.head.bias.requires_grad_(False)  # a frozen parameter stays out of both optimisers
    theirs, initial = copy.deepcopy(ours), copy.deepcopy(ours.state_dict())
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
    mine = NesterovSGD(ours.parameters(), momentum=0.9, weight_decay=5e-4)
    reference = torch.optim.SGD([p for p in theirs.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                                nesterov=True, weight_decay=5e-4)
    for lr in (0.1, 0.3, 0.05, 0.0, 0.2):
        for model, opt in ((ours, mine), (theirs, reference)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
        for group in reference.param_groups:
            group["lr"] = lr
        mine.step(lr)
        reference.step()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(ours.head.weight, initial["head.weight"])  # it trained
    assert torch.equal(ours.head.bias, initial["head.bias"])  # the frozen one did not


def _toy(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 3, 8, 8, generator=gen)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    return x, y


def test_training_is_deterministic_on_cpu_and_learns():
    x, y = _toy()
    recipe = Recipe(epochs=3, batch_size=32, lr=0.1, weight_decay=5e-4, label_smoothing=0.0)
    weights = []
    for _ in range(2):
        torch.manual_seed(1)
        model = SmallResNet(2, width=4)
        losses = train(model, x, y, recipe, torch.Generator().manual_seed(2))
        weights.append(copy.deepcopy(model.state_dict()))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert losses[-1] < losses[0]


def test_narrow_networks_train_in_the_contiguous_format():
    # torch 2.14's CPU weight gradient of a strided convolution with few input channels in
    # channels_last corrupts the heap (width 4 at 16 px; width 8 at 64 px): a narrow network given
    # channels_last images (as `normalize` makes them) must still train, in the contiguous format
    assert training_memory_format(SmallResNet(2, width=16)) == torch.channels_last
    assert training_memory_format(SmallResNet(2, width=8)) == torch.contiguous_format
    assert training_memory_format(SmallResNet(2, width=4)) == torch.contiguous_format
    x, y = _toy()
    model = SmallResNet(2, width=4)
    train(model, x.contiguous(memory_format=torch.channels_last), y, Recipe(2, 32, 0.1, 5e-4, 0.0),
          torch.Generator().manual_seed(0))
    assert model.stem[0].weight.is_contiguous()


def test_divergence_is_reported():
    x, y = _toy()
    model = SmallResNet(2, width=4)
    with pytest.raises(DivergenceError, match="lower the learning rate"):
        train(model, x, y, Recipe(epochs=3, batch_size=32, lr=1e8, weight_decay=0, label_smoothing=0),
              torch.Generator().manual_seed(0))


def test_linear_head_folds_standardisation():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(300, 5, generator=gen) * torch.tensor([1, 10, 100, 0.1, 3.0]) + 7
    y = (features[:, 1] / 10 + features[:, 3] / 0.1 > 0.0).long()
    head = train_linear_head(features, y, 2, Recipe(20, 64, 0.5, 0.0, 0.0), torch.Generator().manual_seed(0))
    accuracy = (head(features).argmax(1) == y).float().mean()
    assert accuracy > 0.95  # learnable only if badly scaled features are standardised
