"""The target gradient when the linear probe re-fits: what a change of the backbone does once the head follows it.

TRAK through the transfer differentiates the transferred model's output with its head held fixed. But the
retraining it stands for fits a new head on every backbone (fixed-feature transfer: a linear probe on frozen
features), so a backbone change also moves the head. With the head ``u = (W, b)`` at the minimum of its
training objective ``L(u, theta)``, the implicit function theorem gives the total derivative of a target
output ``J(u, theta)``:

    dJ/dtheta = dJ/dtheta|_u  -  d/dtheta [ v^T grad_u L(u, theta) ]|_v fixed,   v = H^-1 grad_u J,   H = grad_u^2 L

``L`` is the probe's objective as :func:`~transfer_core.train.train_linear_head` trains it: the mean
cross-entropy (with label smoothing) on the target train split's standardised features ``z = (f - mu) / sigma``
plus ``weight_decay / 2 * |u_z|^2`` on the standardised head (``mu``, ``sigma`` are held fixed). ``v`` is
solved by conjugate gradients with exact Hessian-vector products on the cached features ``(N, D)``; the
second term is one backward pass over the train split. The probe is trained by a few epochs of SGD, not to
its minimum: this is the first-order picture, measured against retraining in BENCHMARKS.md.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

CG_ITERATIONS = 200
CG_TOLERANCE = 1e-10  # relative residual


@dataclass
class LinearProbe:
    """What the transferred model's head was fitted on: normalised target train images ``(N, 3, R, R)``
    (a function of row indices, so that they are made a chunk at a time), their labels ``(N,)``, and the
    head's recipe (``weight_decay``, ``label_smoothing``)."""

    inputs: Callable[[torch.Tensor], torch.Tensor]
    labels: torch.Tensor
    weight_decay: float
    label_smoothing: float = 0.0


@contextlib.contextmanager
def requiring_grad(network: nn.Module, names: list[str]):
    """Make the parameters ``names`` require gradients for the block (a frozen backbone's do not); restore after."""
    params = dict(network.named_parameters())
    before = {n: params[n].requires_grad for n in names}
    try:
        for n in names:
            params[n].requires_grad_(True)
        yield [params[n] for n in names]
    finally:
        for n, flag in before.items():
            params[n].requires_grad_(flag)


def _features(network, x):
    return network.features(x)


def refit_gradients(network: nn.Module, names: list[str], probe: LinearProbe, groups: list[Callable[[], Iterable]],
                    output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], chunk: int = 1024) -> torch.Tensor:
    """``(G, n_params)``: per group, the gradient of ``sum_t output(head(features(x_t)), y_t)`` over its examples
    with the head re-fitted (module docstring). ``groups[g]()`` yields the group's examples as chunks ``(x, y)``.

    ``network`` has ``features(x) -> (B, D)`` and a linear ``head``, in eval mode. One pass over the probe's
    train split for the features, one more (a forward and G backwards per chunk) for the second term.
    """
    head = network.head
    dtype = head.weight.dtype
    rows = torch.arange(len(probe.labels))
    with torch.no_grad():
        feats = torch.cat([_features(network, probe.inputs(r)) for r in rows.split(chunk)]).to(dtype)
    mu, sigma = feats.mean(0), feats.std(0).clamp_min(1e-6)
    z = (feats - mu) / sigma
    w_z = (head.weight * sigma).detach()  # W f + b = W_z z + b_z
    b_z = (head.bias + head.weight @ mu).detach()
    n_classes = w_z.shape[0]
    labels = probe.labels.to(z.device)
    smooth = torch.full((len(labels), n_classes), probe.label_smoothing / n_classes, dtype=dtype, device=z.device)
    smooth[torch.arange(len(labels)), labels] += 1 - probe.label_smoothing
    with torch.no_grad():
        p = torch.softmax(z @ w_z.T + b_z, 1)

    def hvp(u: torch.Tensor) -> torch.Tensor:  # u: (C, D + 1) -> H u, exactly (softmax cross-entropy + L2)
        s = z @ u[:, :-1].T + u[:, -1]  # (N, C): the logit change
        a = p * s - p * (p * s).sum(1, keepdim=True)  # (diag p - p p^T) s, per example
        return torch.cat([a.T @ z, a.sum(0)[:, None]], 1) / len(z) + probe.weight_decay * u

    solved = []  # v_g = H^-1 grad_u J_g, the features held fixed
    w, b = w_z.clone().requires_grad_(), b_z.clone().requires_grad_()
    for chunks in groups:
        grad_u = torch.zeros(n_classes, z.shape[1] + 1, dtype=dtype, device=z.device)
        for x, y in chunks():
            with torch.no_grad():
                zt = (_features(network, x).to(dtype) - mu) / sigma
            gw, gb = torch.autograd.grad(output(zt @ w.T + b, y).sum(), [w, b])
            grad_u += torch.cat([gw, gb[:, None]], 1)
        solved.append(conjugate_gradients(hvp, grad_u))

    with requiring_grad(network, names) as params:
        total = [[torch.zeros_like(q) for q in params] for _ in groups]
        for g, chunks in enumerate(groups):  # the direct term, the head held fixed
            for x, y in chunks():
                for t, d in zip(total[g], torch.autograd.grad(output(network(x), y).sum(), params)):
                    t += d
        for r in rows.split(chunk):  # minus d/dtheta [v_g . grad_u L(u, theta)]: one forward, G backwards
            zj = (_features(network, probe.inputs(r)).to(dtype) - mu) / sigma
            residual = torch.softmax(zj @ w_z.T + b_z, 1) - smooth[r]  # per example: dL/dlogits times N
            for g, v in enumerate(solved):
                inner = (residual * (zj @ v[:, :-1].T + v[:, -1])).sum() / len(z)
                grads = torch.autograd.grad(inner, params, retain_graph=g < len(solved) - 1, allow_unused=True)
                for t, d in zip(total[g], grads):
                    if d is not None:
                        t -= d
    return torch.stack([torch.cat([t.reshape(-1) for t in per_group]) for per_group in total])


def conjugate_gradients(apply: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``apply(x) = rhs`` for a symmetric positive definite operator, in float64."""
    rhs64 = rhs.double()
    x = torch.zeros_like(rhs64)
    r = rhs64.clone()
    d = r.clone()
    rr = (r * r).sum()
    stop = CG_TOLERANCE ** 2 * rr
    for _ in range(CG_ITERATIONS):
        if rr <= stop:
            break
        ad = apply(d.to(rhs.dtype)).double()
        alpha = rr / (d * ad).sum()
        x += alpha * d
        r -= alpha * ad
        rr_new = (r * r).sum()
        d = r + (rr_new / rr) * d
        rr = rr_new
    return x.to(rhs.dtype)
