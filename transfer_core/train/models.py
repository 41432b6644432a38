"""Networks: a small ResNet for small images, and torchvision's ResNet-18."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem + residual stages (width, 2*width, 4*width) + average pooling to a ``grid x grid`` map.

    ``features(x)`` gives ``(N, 4*width*grid*grid)``: the last stage pooled over ``grid x grid``
    cells and flattened channel by channel (``grid=1``: global average pooling); ``forward``
    applies the linear ``head`` to them. Without ``full_resolution_block`` the first stage is
    left out: the stem's output goes straight to the strided stages.
    """

    def __init__(self, n_classes: int, width: int = 16, grid: int = 1, full_resolution_block: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        first = [ResidualBlock(width, width, 1)] if full_resolution_block else []
        self.stages = nn.Sequential(*first, ResidualBlock(width, 2 * width, 2),
                                    ResidualBlock(2 * width, 4 * width, 2))
        self.grid = grid
        self.feature_dim = 4 * width * grid * grid
        self.head = nn.Linear(self.feature_dim, n_classes)

    def features(self, x):
        out = self.stages(self.stem(x))
        if self.grid == 1:
            return out.mean(dim=(2, 3))
        return F.adaptive_avg_pool2d(out, self.grid).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


class SmallResNetGrid(SmallResNet):
    """The ``quick`` profile's network: :class:`SmallResNet` without the full-resolution block,
    its features the last stage pooled on a 2x2 grid, ``(N, 16*width)``.

    At 16 px this costs about 0.6x the FLOPs of ``resnet_small`` per image, and a linear probe
    on its features transfers better after 3 pretraining epochs than ``resnet_small``'s after
    8 (measured by benchmarks/bench_recipe.py, on validation: BENCHMARKS.md, "Recipe").
    """

    def __init__(self, n_classes: int, width: int = 16):
        super().__init__(n_classes, width, grid=2, full_resolution_block=False)


class ResNet18(nn.Module):
    """torchvision ResNet-18 with the same ``features`` / ``head`` split."""

    def __init__(self, n_classes: int, width: int = 64):
        super().__init__()
        import torchvision
        net = torchvision.models.resnet18(num_classes=n_classes)
        self.feature_dim = net.fc.in_features
        self.head = net.fc
        net.fc = nn.Identity()
        self.body = net

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


ARCHITECTURES = {"resnet_small": SmallResNet, "resnet_small_grid": SmallResNetGrid, "resnet18": ResNet18}


def build_model(arch: str, n_classes: int, width: int) -> nn.Module:
    return ARCHITECTURES[arch](n_classes, width)


def training_memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last (faster convolutions on CPU), unless a strided convolution has fewer than 16
    input channels: torch 2.14's CPU weight gradient of such a convolution in channels_last
    corrupts the heap (seen: ``resnet_small`` of width 4 at 16 px, and of width 8 at 64 px, alone
    and packed; width 16 trains). Channels are counted per group, so a packed network
    (:mod:`~transfer_core.train.packed_layers`, grouped convolutions) trains in the format its members
    train in alone."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and max(module.stride) > 1 and module.in_channels // module.groups < 16:
            return torch.contiguous_format
    return torch.channels_last


class Normalized(nn.Module):
    """Wraps a network so it takes uint8 or [0, 255] float images ``(N, 3, R, R)`` directly.

    This is the module that gets registered: callers need no preprocessing code. It computes in
    the dtype of its ``mean`` buffer: torch's default dtype when it was made (float32, unless a
    test sets float64).
    """

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.reshape(1, 3, 1, 1).to(torch.get_default_dtype()))
        self.register_buffer("std", std.reshape(1, 3, 1, 1).to(torch.get_default_dtype()))

    def forward(self, images):
        return self.net((images.to(self.mean.dtype) - self.mean) / self.std)


class _Method(nn.Module):
    """``module.<method>`` as a module's ``forward``, so that torch.fx can trace it."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, x):
        return getattr(self.module, self.method)(x)


def fused_for_inference(module: nn.Module, method: str = "forward") -> nn.Module:
    """An eval-mode copy of ``module.<method>`` with each BatchNorm folded into the convolution before it.

    The copy computes what ``module.eval().<method>`` computes, up to float rounding (about
    1e-6), with one pass over memory fewer per layer: 5-8% less time for the frozen
    backbone's passes over the target images of a ``quick`` run on one CPU thread.
    ``module`` itself is left as it is. A network that torch.fx cannot trace is used unfused.
    """
    from torch.fx.experimental.optimization import fuse
    module.eval()
    try:
        return fuse(_Method(module, method))
    except Exception as exc:  # noqa: BLE001 (an optimisation only: any tracing failure falls back)
        log.debug("not fusing %s for inference (%s)", type(module).__name__, exc)
        return _Method(module, method)
