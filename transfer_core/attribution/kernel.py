"""TRAK's kernel for one model: ``score(t, i) = phi_t^T (Phi^T Phi)^-1 phi_i``.

``Phi (n, k)`` are the projected source gradients of the model's training examples (one row each),
``phi_t (k,)`` a projected target gradient. :class:`Kernel` factors ``Phi^T Phi`` once (Cholesky, in
float64) and then scores any number of targets: ``scores(g) = Phi (Phi^T Phi + ridge)^-1 g``, ``(n, T)``
for ``g (k, T)``. Because the score is linear in ``phi_t``, the score of a *sum* of target outputs (a whole
split, a class of it) is the score of the summed gradient: one backward pass, not one per example.
"""
from __future__ import annotations

import torch


class Kernel:
    """``Phi (Phi^T Phi + lambda I)^-1``, applied lazily; ``lambda = ridge * mean(diag(Phi^T Phi))``."""

    def __init__(self, phi: torch.Tensor, ridge: float = 0.0):
        n, k = phi.shape
        gram = (phi.T @ phi).double()
        if ridge:
            gram += ridge * gram.diagonal().mean() * torch.eye(k, dtype=gram.dtype, device=gram.device)
        factor, info = torch.linalg.cholesky_ex(gram)
        if int(info) != 0:
            raise ValueError(f"the kernel Phi^T Phi ({k} x {k}, from {n} source examples) is singular; lower the "
                             "projection dimension below the number of featurized source examples, or set a ridge > 0")
        self.phi, self.factor = phi, factor

    def scores(self, target: torch.Tensor) -> torch.Tensor:
        """``(n, T)`` scores of every source example for the target gradients ``target (k, T)`` (or ``(k,)`` -> ``(n,)``)."""
        solved = torch.cholesky_solve(target.reshape(len(target), -1).double(), self.factor)
        out = self.phi @ solved.to(self.phi.dtype)
        return out.reshape(out.shape[0], *target.shape[1:])
