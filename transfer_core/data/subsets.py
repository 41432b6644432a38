"""Random class subsets: the mask of source classes one model is pretrained on."""
from __future__ import annotations

import numpy as np
import torch

from transfer_core.config import ConfigError


def n_kept(n_classes: int, alpha: float) -> int:
    """``round(alpha * n_classes)``, the number of classes every mask keeps."""
    return int(round(alpha * n_classes))


def class_mask(sweep_seed: int, index: int, n_classes: int, alpha: float = 0.5) -> np.ndarray:
    """Boolean mask ``(n_classes,)`` with exactly ``round(alpha * n_classes)`` True entries.

    A pure function of its arguments, so a sweep can be reproduced and resumed: model
    ``index`` of sweep ``sweep_seed`` always gets the same classes.
    """
    if not 0 < alpha <= 1:
        raise ConfigError(f"alpha must be in (0, 1], got {alpha}")
    if n_classes < 1:
        raise ConfigError(f"need at least one source class, got {n_classes}")
    if index < 0:
        raise ConfigError(f"model index must be >= 0, got {index}")
    k = n_kept(n_classes, alpha)
    if k < 1:
        raise ConfigError(f"alpha={alpha} keeps no class of {n_classes}; raise alpha")
    rng = np.random.default_rng([int(sweep_seed), int(index), int(n_classes)])
    mask = np.zeros(n_classes, dtype=bool)
    mask[rng.choice(n_classes, size=k, replace=False)] = True
    return mask


def check_mask(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """Validate a user-given mask against the number of source classes."""
    mask = np.asarray(mask)
    if mask.ndim != 1 or len(mask) != n_classes:
        raise ConfigError(f"class mask has length {mask.size} but the source has {n_classes} "
                          "classes; give one entry per source class")
    if not mask.any():
        raise ConfigError("class mask keeps no class; keep at least one source class")
    return mask.astype(bool)


def run_seed(sweep_seed: int, index: int) -> int:
    """Training seed of model ``index``: distinct per model, reproducible per sweep."""
    return int(np.random.default_rng([int(sweep_seed), int(index), 7]).integers(2**31 - 1))


def class_rows(labels: torch.Tensor, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The examples of the kept classes of ``mask``, in their original order.

    Args:
        labels: ``(N,)`` int64 class ids; mask: ``(n_classes,)`` bool.
    Returns:
        ``rows (n,)`` indices into ``labels``, ascending; ``relabelled (n,)`` their labels as
        0..k-1 in the order of the kept class ids; ``kept (k,)`` the kept class ids.
    """
    kept = torch.from_numpy(np.flatnonzero(mask))
    rows = torch.isin(labels, kept).nonzero().squeeze(1)
    relabel = torch.full((len(mask),), -1, dtype=torch.long)
    relabel[kept] = torch.arange(len(kept))
    return rows, relabel[labels[rows]], kept
