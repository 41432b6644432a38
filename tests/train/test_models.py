"""Networks: the inference copy with BatchNorm folded into the convolutions, against the network itself."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from transfer_core.train import Normalized, build_model, fused_for_inference


def _with_trained_statistics(net: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm layers with non-trivial running statistics and affine parameters, as after training."""
    gen = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen))
            module.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
            module.weight.data.copy_(torch.randn(n, generator=gen))
            module.bias.data.copy_(torch.randn(n, generator=gen))
    return net


@pytest.mark.parametrize("arch, width", [("resnet_small", 8), ("resnet_small_grid", 16), ("resnet18", 64)])
def test_the_fused_copy_computes_what_the_network_computes_in_eval_mode(arch, width):
    net = _with_trained_statistics(build_model(arch, 7, width)).to(memory_format=torch.channels_last)
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    fused = fused_for_inference(net, "features")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())  # every BatchNorm was folded
    with torch.no_grad():
        expected = net.eval().features(x)  # the naive path: the network as it is
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-4)
        normalized = Normalized(net, torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.3, 0.25]))
        images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(fused_for_inference(normalized)(images), normalized.eval()(images),
                                   rtol=1e-4, atol=1e-4)
    for key, value in net.state_dict().items():  # the network itself is untouched
        assert torch.equal(value, before[key]), key


def test_the_fused_copy_does_not_follow_later_changes_and_a_network_in_train_mode_is_put_in_eval():
    net = _with_trained_statistics(build_model("resnet_small_grid", 5, 8)).train()
    fused = fused_for_inference(net, "features")
    assert not net.training  # BatchNorm statistics must not move while scoring
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        reference = fused(x)
        net.stem[0].weight.add_(1.0)
        torch.testing.assert_close(fused(x), reference)  # a copy, not a view of the weights


class _Untraceable(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        out = self.bn(self.conv(x))
        return out if out.sum() > 0 else -out


def test_a_network_torch_fx_cannot_trace_is_used_unfused():
    net = _with_trained_statistics(_Untraceable())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused_for_inference(net)(x), net.eval()(x))
