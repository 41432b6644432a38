"""Does the tuned transfer recipe beat the profile's default? (Optuna study on the `quick` profile.)

    python benchmarks/bench_tuning.py [--profile quick] [--mode fixed] [--n-trials 30]
                                      [--backbone-index 0] [--held-out 3]

1. Runs ``tune`` (real study, journal storage, MLflow store in a temporary folder) on the
   backbone of sweep model ``--backbone-index`` (alpha = 0.5, like the models a sweep
   trains; -1 = every source class); trial 0 is the default recipe.
2. Checks the winner where it was not selected: on ``--held-out`` other sweep backbones
   (the next indices), it transfers with the default and with the tuned recipe and reports
   target validation accuracy (mean ± std over backbones, and the paired gain per backbone)
   and, for information only, test accuracy. Nothing here is chosen on test.

Needs the CIFAR archives ($TRANSFER_CORE_DATA, default ../shared/data).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import mlflow

from common import environment_context
from transfer_core.config import build_config, with_overrides
from transfer_core.train import accuracy
from transfer_core.train.models import Normalized
from transfer_core.execute import SubsetRunner
from transfer_core.train.loop import seed_everything
from transfer_core.train import evaluate_split, transfer
from transfer_core.tune.backbone import TrialFitter, pretrain_backbone
from transfer_core.tune import TuneSettings, tune


def held_out_scores(runner: SubsetRunner, recipes: dict, indices: range) -> dict[str, dict[str, list[float]]]:
    """Validation and test accuracy of each recipe on backbones pretrained on sweep subsets."""
    scores = {name: {"val": [], "test": []} for name in recipes}
    for index in indices:
        backbone = pretrain_backbone(runner, index)
        fitter = TrialFitter(backbone, runner)
        for name, config in recipes.items():
            scores[name]["val"].append(fitter.fit(config))
            net = transfer(config, copy.deepcopy(backbone.net), backbone.norm, runner.data,
                           seed_everything(backbone.seed), runner.device)
            logits = evaluate_split(Normalized(net, *backbone.norm), runner.data.target_test, runner.device)
            scores[name]["test"].append(accuracy(logits, runner.data.target_test.labels))
    return scores


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--mode", default="fixed", choices=("fixed", "full"))
    parser.add_argument("--n-trials", type=int, default=30)
    parser.add_argument("--backbone-index", type=int, default=0)
    parser.add_argument("--held-out", type=int, default=3)
    parser.add_argument("--sampler-seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("TRANSFER_CORE_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

    config = build_config(args.profile, {"transfer.mode": args.mode})
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        start = time.perf_counter()
        index = None if args.backbone_index < 0 else args.backbone_index
        settings = TuneSettings(n_trials=args.n_trials, study_name="bench", sampler_seed=args.sampler_seed,
                                backbone_index=index)
        ctx = environment_context(f"sqlite:///{tmp}/mlflow.db")
        result = tune(config, settings, experiment="bench-tuning", ctx=ctx, profile=args.profile)
        study_s = time.perf_counter() - start
        runner = SubsetRunner(config, "bench-tuning", ctx)
        tuned = with_overrides(config, result.best_params)
        start = time.perf_counter()
        first = 0 if index is None else index + 1
        scores = held_out_scores(runner, {"default": config, "tuned": tuned}, range(first, first + args.held_out))
        held_s = time.perf_counter() - start
        mlflow.set_tracking_uri(None)
        os.chdir(Path(__file__).resolve().parent)

    counts = ", ".join(f"{n} {s.lower()}" for s, n in result.counts.items())
    where = "every source class" if index is None else f"the classes of sweep model {index}"
    print(f"profile {args.profile}, {args.mode} mode, tuning backbone pretrained on {where}")
    print(f"{args.n_trials} trials ({counts}) in {study_s:.0f} s "
          "(backbone pretraining, feature caching and MLflow logging included)")
    print(f"tuned recipe: {', '.join(f'{k}={v}' for k, v in result.best_params.items())}")
    print(f"default recipe: transfer.lr={config.transfer.lr}, transfer.weight_decay={config.transfer.weight_decay}, "
          f"transfer.epochs={config.transfer.epochs}, transfer.label_smoothing={config.transfer.label_smoothing}"
          + (f", transfer.batch_size={config.transfer.batch_size}" if args.mode == "full" else ""))
    print(f"\n{'recipe':8} | {'val acc, tuning backbone':>24} | {'val acc, held-out backbones':>27} | "
          f"{'test acc, held-out (info)':>25}")
    for name, tuning_val in (("default", result.default_value), ("tuned", result.best_value)):
        print(f"{name:8} | {100 * tuning_val:24.2f} | {mean_std(scores[name]['val']):>27} | "
              f"{mean_std(scores[name]['test']):>25}")
    gains = [t - d for t, d in zip(scores["tuned"]["val"], scores["default"]["val"])]
    print(f"\nheld-out val gain per backbone (points): {', '.join(f'{100 * g:+.2f}' for g in gains)}; "
          f"{args.held_out} backbones in {held_s:.0f} s")


if __name__ == "__main__":
    main()
