"""Per-example gradients of a network's output with respect to some of its parameters, a chunk at a time.

Three computers, one contract (:class:`GradientComputer`), registered by name in :data:`GRADIENTS`:

``layerwise``   the fast one. One batched forward and backward per chunk; each layer's input is kept by a
                forward hook and the gradient at its output read through a zero *probe* added to it, so that
                every example's gradient of a layer is built from its own input and output gradient
                (``unfold`` + ``bmm`` for a convolution). Handles :class:`~torch.nn.Conv2d` (one group),
                :class:`~torch.nn.Linear` and :class:`~torch.nn.BatchNorm2d` in eval mode; a chunk's
                examples never interact, so their gradients are exactly per example.
``functional``  ``torch.func``: ``vmap(grad(functional_call))``, any layer type, more memory and time.
``naive``       a Python loop of :func:`torch.autograd.grad`, one example at a time: the reference the
                others are tested against.

Gradients come out in *blocks* ``(offset, grads (B, width))``: columns ``offset .. offset+width`` of the
flattened parameter vector (parameters in ``named_parameters`` order, each flattened in its own
layout). A projector consumes them block by block (:mod:`~transfer_core.attribution.projection`), so a
``(B, n_params)`` matrix never has to exist at once.

Output functions (:data:`OUTPUTS`) map logits ``(B, C)`` and labels ``(B,)`` to one number per example:
``margin`` is TRAK's multiclass margin ``log p_y / (1 - p_y) = z_y - logsumexp_{j != y} z_j``; ``prob`` is
``p_y``, for the target side only (TRAK's kernel and ``1 - p`` weighting are derived for the margin).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Block = tuple[int, torch.Tensor]  # (column offset in the flattened parameter vector, grads (B, width))


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """TRAK's output function ``z_y - logsumexp_{j != y} z_j`` ``(...)`` of logits ``(..., C)``, labels ``(...)``.

    Written without indexing by the label, so that it also runs under ``vmap`` (one example at a time).
    """
    if logits.shape[-1] < 2:
        raise ValueError(f"a margin needs at least 2 classes, the network has {logits.shape[-1]} output")
    hit = torch.arange(logits.shape[-1], device=logits.device) == labels.unsqueeze(-1)
    return (logits * hit).sum(-1) - logits.masked_fill(hit, float("-inf")).logsumexp(-1)


def out_to_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """TRAK's reweighting term ``Q = 1 - p_y`` ``(B,)``: the derivative of the loss with respect to the margin."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return 1 - torch.softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The softmax probability of the true class ``(...)``: bounded, so that no confident example dominates a
    group's summed gradient; its gradient is largest near the decision boundary, where correctness changes."""
    hit = torch.arange(logits.shape[-1], device=logits.device) == labels.unsqueeze(-1)
    return (torch.softmax(logits, -1) * hit).sum(-1)


OUTPUTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"margin": margin, "prob": probability}


def attributed_parameters(network: nn.Module, prefixes: Sequence[str] = ()) -> list[str]:
    """Names of the parameters gradients are taken with respect to: every parameter outside ``head``
    (the backbone), or only those starting with one of ``prefixes`` (e.g. ``("stages.1",)``)."""
    names = [n for n, _ in network.named_parameters() if not n.startswith("head.")]
    if prefixes:
        names = [n for n in names if any(n == p or n.startswith(p.rstrip(".") + ".") for p in prefixes)]
    if not names:
        raise ValueError(f"no backbone parameter matches {list(prefixes)}; names look like "
                         f"{[n for n, _ in network.named_parameters()][:4]}")
    return names


class GradientComputer(ABC):
    """Per-example gradients of ``output(network(x), y)`` with respect to the parameters ``names``.

    ``network`` maps normalised images ``(B, 3, R, R)`` to logits ``(B, C)``; it must be in eval mode
    (BatchNorm with running statistics), so that examples do not interact. Its parameters are not
    changed, and need not require gradients.
    """

    def __init__(self, network: nn.Module, names: Sequence[str], output: str = "margin"):
        if any(module.training for module in network.modules()):
            raise ValueError("per-example gradients need the network in eval mode (BatchNorm running statistics)")
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; choose one of {', '.join(OUTPUTS)}")
        params = dict(network.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"the network has no parameters {missing}")
        self.network, self.output = network, OUTPUTS[output]
        self.names = [n for n in params if n in set(names)]  # named_parameters order
        self.sizes = [params[n].numel() for n in self.names]
        self.offsets = dict(zip(self.names, [sum(self.sizes[:i]) for i in range(len(self.sizes))]))

    @property
    def n_params(self) -> int:
        return sum(self.sizes)

    @property
    def layout(self) -> list[tuple[str, int]]:
        """``(name, numel)`` of each attributed parameter, in the order of the flattened vector."""
        return list(zip(self.names, self.sizes))

    @abstractmethod
    def blocks(self, x: torch.Tensor, y: torch.Tensor) -> Iterator[Block]:
        """Per-example gradients of the chunk ``x (B, 3, R, R)``, ``y (B,)``, as blocks covering every column once."""

    def dense(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The chunk's gradients as one matrix ``(B, n_params)`` (tests; small networks)."""
        out = torch.zeros(len(x), self.n_params, dtype=x.dtype, device=x.device)
        for offset, grads in self.blocks(x, y):
            out[:, offset:offset + grads.shape[1]] = grads
        return out

    def summed(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gradient ``(n_params,)`` of the chunk's summed output: one ordinary backward pass, no per-example work."""
        params = dict(self.network.named_parameters())
        leaves = {n: params[n].detach().requires_grad_() for n in self.names}
        values = torch.func.functional_call(self.network, leaves, (x,), strict=False)
        grads = torch.autograd.grad(self.output(values, y).sum(), list(leaves.values()))
        return torch.cat([g.reshape(-1) for g in grads])

    @torch.no_grad()
    def out_to_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``1 - p_y`` ``(B,)`` of the chunk."""
        return out_to_loss(self.network(x), y)


class NaiveGradients(GradientComputer):
    """One :func:`torch.autograd.grad` per example: slow and obviously right; the reference."""

    def blocks(self, x, y):
        params = dict(self.network.named_parameters())
        rows = []
        for i in range(len(x)):
            leaves = {n: params[n].detach().requires_grad_() for n in self.names}
            value = self.output(torch.func.functional_call(self.network, leaves, (x[i:i + 1],), strict=False),
                                y[i:i + 1]).sum()
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, list(leaves.values()))]))
        yield 0, torch.stack(rows)


class FunctionalGradients(GradientComputer):
    """``torch.func.vmap`` of ``torch.func.grad``: any layer type; one ``(B, numel)`` block per parameter."""

    def blocks(self, x, y):
        params = dict(self.network.named_parameters())
        fixed = {n: p.detach() for n, p in params.items() if n not in self.offsets}
        buffers = dict(self.network.named_buffers())

        def one(attributed, xi, yi):
            values = torch.func.functional_call(self.network, ({**attributed, **fixed}, buffers), (xi[None],))
            return self.output(values, yi[None]).sum()

        grads = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(
            {n: params[n].detach() for n in self.names}, x, y)
        for name in self.names:
            yield self.offsets[name], grads[name].reshape(len(x), -1)


class LayerwiseGradients(GradientComputer):
    """Per-example gradients from one batched backward (see the module docstring); blocks per parameter."""

    def __init__(self, network, names, output="margin"):
        super().__init__(network, names, output)
        modules = dict(network.named_modules())
        self.layers: list[tuple[nn.Module, dict[str, str]]] = []  # module, {"weight": name, "bias": name}
        owned = set()
        for module_name, module in modules.items():
            own = {local: f"{module_name}.{local}" if module_name else local
                   for local, _ in module.named_parameters(recurse=False)}
            chosen = {local: full for local, full in own.items() if full in self.offsets}
            if not chosen:
                continue
            supported = (isinstance(module, nn.Linear) or isinstance(module, nn.BatchNorm2d)
                         or (isinstance(module, nn.Conv2d) and module.groups == 1))
            if not supported:
                raise ValueError(f"layerwise gradients handle Conv2d (groups=1), Linear and BatchNorm2d; "
                                 f"{module_name!r} is a {type(module).__name__}: use gradients='functional'")
            self.layers.append((module, chosen))
            owned |= set(chosen.values())
        if owned != set(self.names):
            raise ValueError(f"parameters {sorted(set(self.names) - owned)} belong to no supported layer; "
                             "use gradients='functional'")

    def blocks(self, x, y):
        inputs: dict[nn.Module, torch.Tensor] = {}
        probes: dict[nn.Module, torch.Tensor] = {}

        def keep(module, args, out):
            if module in probes:
                raise ValueError(f"layerwise gradients need each layer called once per forward; "
                                 f"{type(module).__name__} was called twice: use gradients='functional'")
            inputs[module] = args[0]
            probes[module] = torch.zeros_like(out, requires_grad=True)
            return out + probes[module]  # d(output)/d(probe) is the gradient at this layer's output

        hooks = [module.register_forward_hook(keep) for module, _ in self.layers]
        try:
            with torch.enable_grad():
                value = self.output(self.network(x), y).sum()
                deltas = torch.autograd.grad(value, [probes[m] for m, _ in self.layers])
        finally:
            for hook in hooks:
                hook.remove()
        for (module, chosen), delta in zip(self.layers, deltas):
            for local, grads in _layer_grads(module, inputs[module].detach(), delta, set(chosen)):
                yield self.offsets[chosen[local]], grads


def _layer_grads(module: nn.Module, a: torch.Tensor, delta: torch.Tensor, wanted: set[str]):
    """Per-example ``(local name, grads (B, numel))`` of one layer from its input ``a`` and output gradient ``delta``."""
    n = len(a)
    if isinstance(module, nn.Conv2d):
        if "weight" in wanted:
            cols = F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)  # (B, in*kh*kw, L)
            yield "weight", torch.bmm(delta.reshape(n, delta.shape[1], -1), cols.transpose(1, 2)).reshape(n, -1)
        if "bias" in wanted:
            yield "bias", delta.sum((2, 3))
    elif isinstance(module, nn.Linear):
        a2, d2 = a.reshape(n, -1, a.shape[-1]), delta.reshape(n, -1, delta.shape[-1])  # extra dims are summed
        if "weight" in wanted:
            yield "weight", torch.bmm(d2.transpose(1, 2), a2).reshape(n, -1)
        if "bias" in wanted:
            yield "bias", d2.sum(1)
    else:  # BatchNorm2d in eval mode: y = gamma * (a - mean) / sqrt(var + eps) + beta
        if "weight" in wanted:
            shape = (1, -1, 1, 1)
            normalised = (a - module.running_mean.view(shape)) * torch.rsqrt(module.running_var.view(shape) + module.eps)
            yield "weight", (delta * normalised).sum((2, 3))
        if "bias" in wanted:
            yield "bias", delta.sum((2, 3))


GRADIENTS: dict[str, type[GradientComputer]] = {"layerwise": LayerwiseGradients, "functional": FunctionalGradients,
                                                "naive": NaiveGradients}
