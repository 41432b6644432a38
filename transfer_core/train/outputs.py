"""Per-example outputs on the target test set, the quantities influences are fitted to."""
from __future__ import annotations

import numpy as np
import torch

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
    logits = logits.float().cpu()
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
