"""What sets the champion gate's interval: a counterfactual plan's evidence, taken apart.

For the plan's candidate (its best bottom-k on the validation selection half), from the grid's
logged runs (per-example validation outputs, nothing recomputed by training):

- the paired selection-half differences (candidate - full source) per seed, and their spread;
- how much of that spread is evaluation noise: per seed, the standard error of a paired
  difference of accuracies on the same images (from the images where the two models disagree),
  the rest being model-to-model (training) noise;
- the interval's half-width under other plans, projected from those two parts: more seeds,
  fewer or more candidates, a later look, and a selection half of another size.

    python benchmarks/bench_gate.py --experiment cifar100_to_cifar10 [--counterfactual RUN_ID]
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy import stats


def main() -> None:
    from transfer_core.counterfactual import EvidenceRule, read_plan, recompute_selection
    from transfer_core.counterfactual.gate import finished_points
    from transfer_core.counterfactual.looks import LookLedger
    from transfer_core.data import validation_halves
    from common import environment_context
    from transfer_core.registry import latest_counterfactual_run
    from transfer_core.track import VAL_OUTPUTS_ARTIFACT, artifact_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="cifar100_to_cifar10")
    parser.add_argument("--counterfactual", default=None, help="counterfactual run id (default: the latest)")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()
    ctx = environment_context(args.tracking_uri)
    client = ctx.client
    run = client.get_run(args.counterfactual or latest_counterfactual_run(client, args.experiment))
    record = read_plan(run)
    selection, table = recompute_selection(client, run, ledger=LookLedger(ctx.ledger))
    done = finished_points(client, run.info.experiment_id, record["grid_id"])
    order, k = ("bottom", selection.k) if selection.k else ("bottom", max(record["ks"]))

    def outputs(point):
        with np.load(artifact_path(done[point], VAL_OUTPUTS_ARTIFACT, client)) as npz:
            return npz["correct"].astype(bool), npz["labels"]

    diffs, eval_vars, n_images = [], [], 0
    for seed in range(int(record["n_seeds"])):
        full, labels = outputs(("full", 0, seed))
        pruned, _ = outputs((order, k, seed))
        select = ~validation_halves(labels, int(done[("full", 0, seed)].data.params["data.split_seed"]))
        d = pruned[select].astype(float) - full[select].astype(float)  # per image: -1, 0 or +1
        n_images = int(select.sum())
        diffs.append(d.mean())
        eval_vars.append(d.var(ddof=1) / len(d))  # the paired difference's sampling variance on these images
    diffs = np.array(diffs)
    total = diffs.var(ddof=1)
    evaluation = float(np.mean(eval_vars))
    model = max(0.0, total - evaluation)
    n = len(diffs)
    print(f"counterfactual run {run.info.run_id}: candidate {order} k={k}, {n} seeds, selection half of "
          f"{n_images} images")
    print(f"paired selection-half difference per seed (points): {', '.join(f'{100 * x:+.2f}' for x in diffs)}")
    print(f"mean {100 * diffs.mean():+.2f}; between-seed sd {100 * np.sqrt(total):.2f} points = evaluation noise "
          f"sd {100 * np.sqrt(evaluation):.2f} (images where the two models disagree) + model noise sd "
          f"{100 * np.sqrt(model):.2f}")
    print(f"recorded gate: look {selection.look}, level {selection.level:.4f}, interval "
          f"[{100 * selection.select_diff_ci_low:+.2f}, {100 * selection.select_diff_ci_high:+.2f}] points, "
          f"half-width {100 * (selection.select_diff_ci_high - selection.select_diff_ci_low) / 2:.2f}")
    rule = EvidenceRule()
    print("\nprojected half-width (points) of the gate's interval: t quantile x sd / sqrt(seeds)")
    print("| seeds | candidates | look | selection images | level | half-width |")
    print("|---|---|---|---|---|---|")
    for seeds, candidates, look, images in [(3, 4, 1, n_images), (5, 4, 1, n_images), (5, 1, 1, n_images),
                                            (10, 1, 1, n_images), (10, 4, 1, n_images), (10, 1, 2, n_images),
                                            (10, 1, 1, n_images // 2), (20, 1, 1, n_images)]:
        sd = np.sqrt(model + evaluation * n_images / images)
        level = 1 - rule.look_alpha(look) / candidates
        half = stats.t.ppf(1 - (1 - level) / 2, seeds - 1) * sd / np.sqrt(seeds)
        print(f"| {seeds} | {candidates} | {look} | {images:,} | {level:.4f} | {100 * half:.2f} |")


if __name__ == "__main__":
    main()
