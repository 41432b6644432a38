"""What a subset run produces: per-example outputs on the target splits (what influences are fitted to),
metrics and the transferred model."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

OUTPUT_NAMES = ("margin", "prob", "correct")  # what an influence can be fitted to


def per_example_outputs(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """Outputs for each of the N examples, in input order.

    Args:
        logits: ``(N, C)`` float; labels: ``(N,)`` int.
    Returns:
        ``margin``  ``(N,)`` float32: true-class logit minus the largest other logit
                    (positive iff correct, up to ties);
        ``prob``    ``(N,)`` float32: softmax probability of the true class;
        ``correct`` ``(N,)`` bool; ``pred`` ``(N,)`` int16: the argmax class.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)).cpu()  # float64 stays float64
    labels = labels.cpu()
    rows = torch.arange(len(labels))
    true = logits[rows, labels]
    others = logits.clone()
    others[rows, labels] = -torch.inf
    pred = logits.argmax(1)
    return {
        "margin": (true - others.max(1).values).numpy().astype(np.float32),
        "prob": torch.softmax(logits, 1)[rows, labels].numpy().astype(np.float32),
        "correct": (pred == labels).numpy(),
        "pred": pred.numpy().astype(np.int16),
    }


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1).cpu() == labels.cpu()).float().mean())


def save_outputs(path, outputs: dict[str, np.ndarray], labels: torch.Tensor) -> None:
    """One compact ``.npz``: margin/prob as float16, correct as bool, pred and labels as int16."""
    np.savez(path, margin=outputs["margin"].astype(np.float16), prob=outputs["prob"].astype(np.float16),
             correct=outputs["correct"].astype(bool), pred=outputs["pred"].astype(np.int16),
             labels=labels.cpu().numpy().astype(np.int16))


def load_outputs(path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


@dataclass
class SubsetRunResult:
    """What one run produces. Outputs are per example, in the split's order."""

    class_mask: np.ndarray  # (n_source_classes,) bool
    model: nn.Module  # a Normalized network: the transferred target model; takes uint8 images (N, 3, R, R)
    target_outputs: dict[str, np.ndarray]  # test split: margin, prob, correct, pred, each (n_test,)
    val_outputs: dict[str, np.ndarray]  # validation split: the same, each (n_val,)
    metrics: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    # with run_subset(keep_source_model=True): the pretrained network with its source head (logits over the
    # kept classes, in class order), before the transfer; a Normalized network on the CPU
    source_model: nn.Module | None = None
