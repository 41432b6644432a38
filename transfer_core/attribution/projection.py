"""Random projections of gradients: ``(B, n_params) -> (B, k)``, seeded, generated a block of rows at a time.

The projection matrix ``P (n_params, k)`` is cut into row blocks of :data:`BLOCK_ROWS` rows; block ``b``
is drawn on the CPU from its own generator, seeded from ``(*seed, b)``, so that

- any row of ``P`` is reproducible without drawing the rows before it, and a chunk of gradient columns
  (one layer's block from :mod:`~transfer_core.attribution.gradients`) meets exactly its rows;
- the numbers do not depend on the device (CUDA draws other streams than the CPU) nor on how the
  gradient columns were chunked.

Blocks are kept on the device while they fit in ``cache_bytes`` (a ``quick`` backbone at k = 1024: 284 MiB in
float32), else drawn again for every chunk of examples (about 0.4 s per million-row-by-1024 draw on one
CPU core: then use larger chunks). Entries are scaled by ``1 / sqrt(k)`` so that inner products are
preserved in expectation; TRAK's scores do not depend on the scale anyway.

Registry :data:`PROJECTORS`: ``gaussian``, ``rademacher`` (dense), ``identity`` (no projection: k = n_params,
for exact tests on tiny networks).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

BLOCK_ROWS = 8192  # rows of P drawn at once: 32 MiB of float32 at k = 1024
DEFAULT_CACHE_BYTES = 512 * 2**20


class Projector:
    """Identity: ``k = n_params``; the sketch is the gradient itself."""

    kind = "identity"

    def __init__(self, n_params: int, proj_dim: int | None = None, seed: tuple[int, ...] = (0,), device="cpu",
                 dtype: torch.dtype = torch.float32, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.n_params, self.device, self.dtype = n_params, torch.device(device), dtype
        self.proj_dim = n_params if proj_dim is None else proj_dim
        self.seed = tuple(int(s) for s in seed)
        self.cache_bytes = cache_bytes

    def project(self, blocks: Iterable[tuple[int, torch.Tensor]], batch: int) -> torch.Tensor:
        """Sketch ``(batch, k)`` of the gradients given as column blocks ``(offset, grads (batch, width))``."""
        out = None
        for offset, grads in blocks:
            if out is None:
                out = torch.zeros(batch, self.proj_dim, dtype=_accumulator(grads.dtype), device=grads.device)
            self._add(out, offset, grads)
        if out is None:
            raise ValueError("no gradient blocks to project")
        return out

    def _add(self, out: torch.Tensor, offset: int, grads: torch.Tensor) -> None:
        out[:, offset:offset + grads.shape[1]] += grads.to(out.dtype)

    def matrix(self) -> torch.Tensor:
        """The whole matrix ``(n_params, k)`` as float64 on the CPU (tests and tiny networks only)."""
        return torch.eye(self.n_params, dtype=torch.float64)


class DenseProjector(Projector):
    """A dense random matrix; subclasses say how its entries are drawn (:meth:`draw`)."""

    def __init__(self, n_params, proj_dim, seed=(0,), device="cpu", dtype=torch.float32,
                 cache_bytes=DEFAULT_CACHE_BYTES):
        if proj_dim is None or proj_dim < 1:
            raise ValueError(f"a random projection needs proj_dim >= 1, got {proj_dim}")
        super().__init__(n_params, proj_dim, seed, device, dtype, cache_bytes)
        self.n_blocks = math.ceil(n_params / BLOCK_ROWS)
        itemsize = torch.empty((), dtype=dtype).element_size()
        self._cache: dict[int, torch.Tensor] | None = {} if n_params * proj_dim * itemsize <= cache_bytes else None

    def draw(self, rows: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def block(self, b: int) -> torch.Tensor:
        """Rows ``b * BLOCK_ROWS ...`` of ``P``, ``(rows, k)``, scaled by ``1/sqrt(k)``, on the device in ``dtype``."""
        if self._cache is not None and b in self._cache:
            return self._cache[b]
        state = np.random.SeedSequence([*self.seed, b]).generate_state(2, np.uint64)
        generator = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
        rows = min(BLOCK_ROWS, self.n_params - b * BLOCK_ROWS)
        exact = torch.float64 if self.dtype == torch.float64 else torch.float32
        values = (self.draw(rows, generator).to(exact) / math.sqrt(self.proj_dim)).to(self.device, self.dtype)
        if self._cache is not None:
            self._cache[b] = values
        return values

    def _add(self, out, offset, grads):
        start, end = offset, offset + grads.shape[1]
        for b in range(start // BLOCK_ROWS, (end - 1) // BLOCK_ROWS + 1):
            lo, hi = max(start, b * BLOCK_ROWS), min(end, (b + 1) * BLOCK_ROWS)
            rows = self.block(b)[lo - b * BLOCK_ROWS:hi - b * BLOCK_ROWS]
            out += (grads[:, lo - start:hi - start].to(self.dtype) @ rows).to(out.dtype)

    def matrix(self):
        return torch.cat([self.block(b).cpu().double() for b in range(self.n_blocks)])


class GaussianProjector(DenseProjector):
    kind = "gaussian"

    def draw(self, rows, generator):
        return torch.randn(rows, self.proj_dim, generator=generator)


class RademacherProjector(DenseProjector):
    kind = "rademacher"

    def draw(self, rows, generator):
        return torch.randint(0, 2, (rows, self.proj_dim), generator=generator, dtype=torch.int8).float() * 2 - 1


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


PROJECTORS: dict[str, type[Projector]] = {"gaussian": GaussianProjector, "rademacher": RademacherProjector,
                                          "identity": Projector}
