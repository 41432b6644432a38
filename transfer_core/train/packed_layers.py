"""N networks of one architecture as one network: the grouped-convolution trick (HFTA, MLSys'21).

Every activation of a packed network is ``(B, N*C, ...)``, model-major: channels
``j*C:(j+1)*C`` belong to model ``j``, which sees its own images in its own channel slice.
Each layer is packed where it stands:

- a convolution becomes one grouped convolution (``groups = N * groups``);
- BatchNorm is per channel, so a BatchNorm over ``N*C`` channels is per model;
- a linear layer becomes :class:`PackedLinear`, N independent layers as one batched matmul.

Elementwise ops, pooling and residual sums need no change, so the architecture's own
``forward`` and ``features`` (:mod:`transfer_core.train.models`) run unchanged on the packed
layers. No parameter is shared, so the gradient of model ``j``'s loss reaches only its own
slice: training the pack trains every model as it would train alone, up to floating-point
reordering. :meth:`PackedNetwork.member` takes model ``j`` back out as an ordinary network.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from transfer_core.config import ConfigError


class PackedLinear(nn.Module):
    """N linear layers ``D -> C``: input ``(B, N*D)``, output ``(B, N*C)``; weight ``(N, C, D)``, bias ``(N, C)``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    @classmethod
    def pack(cls, layers: list[nn.Linear]) -> "PackedLinear":
        weight = torch.stack([layer.weight.detach() for layer in layers])
        bias = None if layers[0].bias is None else torch.stack([layer.bias.detach() for layer in layers])
        return cls(weight.clone(), None if bias is None else bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, d = self.weight.shape
        x = x.reshape(-1, n, d).transpose(0, 1)  # (N, B, D)
        w = self.weight.transpose(1, 2)  # (N, D, C)
        out = torch.bmm(x, w) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), x, w)
        return out.transpose(0, 1).reshape(-1, n * c)

    def member(self, j: int) -> nn.Linear:
        n, c, d = self.weight.shape
        layer = nn.Linear(d, c, bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.weight[j])
            if self.bias is not None:
                layer.bias.copy_(self.bias[j])
        return layer


def _pack_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    c, n = convs[0], len(convs)
    packed = nn.Conv2d(n * c.in_channels, n * c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                       n * c.groups, c.bias is not None, c.padding_mode, device=c.weight.device,
                       dtype=c.weight.dtype)
    with torch.no_grad():
        packed.weight.copy_(torch.cat([m.weight for m in convs]))
        if c.bias is not None:
            packed.bias.copy_(torch.cat([m.bias for m in convs]))
    return packed


def _conv_member(packed: nn.Conv2d, j: int, n: int) -> nn.Conv2d:
    c_in, c_out = packed.in_channels // n, packed.out_channels // n
    conv = nn.Conv2d(c_in, c_out, packed.kernel_size, packed.stride, packed.padding, packed.dilation,
                     packed.groups // n, packed.bias is not None, packed.padding_mode, device=packed.weight.device,
                     dtype=packed.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(packed.weight[j * c_out:(j + 1) * c_out])
        if packed.bias is not None:
            conv.bias.copy_(packed.bias[j * c_out:(j + 1) * c_out])
    return conv


_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def _pack_bn(bns: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    b, n = bns[0], len(bns)
    first = next(iter(b.state_dict().values()))  # weight or running_mean: the layer's device and dtype
    packed = nn.BatchNorm2d(n * b.num_features, b.eps, b.momentum, b.affine, b.track_running_stats,
                            device=first.device, dtype=first.dtype)
    with torch.no_grad():
        for name in _BN_TENSORS:
            if getattr(b, name) is not None:
                getattr(packed, name).copy_(torch.cat([getattr(m, name) for m in bns]))
        if b.num_batches_tracked is not None:
            packed.num_batches_tracked.copy_(b.num_batches_tracked)
    return packed


def _bn_member(packed: nn.BatchNorm2d, j: int, n: int) -> nn.BatchNorm2d:
    c = packed.num_features // n
    first = next(iter(packed.state_dict().values()))
    bn = nn.BatchNorm2d(c, packed.eps, packed.momentum, packed.affine, packed.track_running_stats,
                        device=first.device, dtype=first.dtype)
    with torch.no_grad():
        for name in _BN_TENSORS:
            if getattr(packed, name) is not None:
                getattr(bn, name).copy_(getattr(packed, name)[j * c:(j + 1) * c])
        if packed.num_batches_tracked is not None:
            bn.num_batches_tracked.copy_(packed.num_batches_tracked)
    return bn


PACKERS = {nn.Conv2d: _pack_conv, nn.BatchNorm2d: _pack_bn, nn.Linear: PackedLinear.pack}


def _leaf_names(net: nn.Module) -> list[str]:
    """Names of the layers to pack; refuses any other layer that holds parameters or buffers."""
    names = []
    for name, module in net.named_modules():
        if type(module) in PACKERS:
            names.append(name)
        elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            raise ConfigError(f"cannot pack layer {name} ({type(module).__name__}): packed training knows "
                              "Conv2d, BatchNorm2d and Linear layers; train this architecture with --pack 1")
    return names


class PackedNetwork(nn.Module):
    """N networks of one architecture (and equal shapes) trained as one; see the module docstring.

    ``net`` is the packed network, whose ``forward`` maps ``(B, N*3, R, R)`` to logits
    ``(B, N*K)`` and ``features`` to ``(B, N*D)``; :meth:`member` returns network ``j`` alone.
    """

    def __init__(self, nets: list[nn.Module]):
        super().__init__()
        self.n_models = len(nets)
        self._skeleton = [copy.deepcopy(nets[0])]  # a plain list: not a submodule, never moved or trained
        self.net = copy.deepcopy(nets[0])
        for name in _leaf_names(nets[0]):
            self.net.set_submodule(name, PACKERS[type(nets[0].get_submodule(name))](
                [net.get_submodule(name) for net in nets]))

    @property
    def feature_dim(self) -> int:
        return self.net.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    def set_head(self, head: PackedLinear) -> None:
        self.net.head = head

    def member(self, j: int) -> nn.Module:
        """Network ``j`` as an ordinary module of its architecture (a copy, on the pack's device)."""
        net = copy.deepcopy(self._skeleton[0])
        for name, module in self.net.named_modules():
            if isinstance(module, PackedLinear):
                net.set_submodule(name, module.member(j))
            elif isinstance(module, nn.Conv2d):
                net.set_submodule(name, _conv_member(module, j, self.n_models))
            elif isinstance(module, nn.BatchNorm2d):
                net.set_submodule(name, _bn_member(module, j, self.n_models))
        return net.train(self.training)

    def member_tensors(self, j: int) -> list[tuple[torch.Tensor, slice | int]]:
        """Every parameter and buffer of the pack, with the index of model ``j``'s part of it."""
        out = []
        for module in self.net.modules():
            if isinstance(module, PackedLinear):
                out += [(t, j) for t in (module.weight, module.bias) if t is not None]
            elif isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
                size = (module.out_channels if isinstance(module, nn.Conv2d) else module.num_features) // self.n_models
                part = slice(j * size, (j + 1) * size)
                out += [(t, part) for name, t in module.named_parameters(recurse=False)]
                out += [(t, part) for name, t in module.named_buffers(recurse=False) if t.dim() > 0]
        return out
