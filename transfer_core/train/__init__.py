"""Training: networks, the tensor training loop, and one subset run as pure computation.

    from transfer_core.train import run_subset, run_pack
    result = run_subset(config, data, class_mask, seed)   # pretrain on kept classes, transfer, score
    results = run_pack(config, data, masks, seeds)         # N such runs at once, as one packed network (GPUs)

No tracking here: :mod:`transfer_core.execute` wraps :func:`run_subset` in an MLflow run.
"""
from transfer_core.train.loop import (DivergenceError, NesterovSGD, Recipe, infer, normalize, pick_device,
                                      seed_everything, train, train_linear_head)
from transfer_core.train.memory import PackBudget, pack_budget
from transfer_core.train.models import Normalized, build_model, fused_for_inference
from transfer_core.train.outputs import OUTPUT_NAMES, accuracy, load_outputs, per_example_outputs, save_outputs
from transfer_core.train.packed_training import DeviceData, run_pack, train_packed
from transfer_core.train.packed_layers import PackedLinear, PackedNetwork
from transfer_core.train.subset import (SubsetRunResult, evaluate_split, frozen_features, pretrain, run_subset,
                                        source_subset, transfer, transfer_and_score)

__all__ = ["DivergenceError", "NesterovSGD", "Recipe", "infer", "normalize", "pick_device", "seed_everything", "train",
           "train_linear_head", "Normalized", "build_model", "fused_for_inference", "OUTPUT_NAMES", "accuracy",
           "load_outputs",
           "per_example_outputs", "save_outputs", "SubsetRunResult", "evaluate_split", "frozen_features",
           "pretrain", "run_subset", "source_subset", "transfer", "transfer_and_score", "PackBudget", "pack_budget",
           "DeviceData", "run_pack", "train_packed", "PackedLinear", "PackedNetwork"]
