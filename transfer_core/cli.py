"""The ``transfer-core`` command line. Each command parses, validates, and calls the library.

The MLproject entry points call these same commands, so ``mlflow run . -e NAME`` and
``transfer-core NAME`` behave identically.
"""
from __future__ import annotations

import functools
import logging
import os
import sys

import click

from .config import ConfigError, build_config, parse_overrides, profile_names


def config_options(fn):
    """Options every command that builds a RunConfig shares."""
    options = [
        click.option("--profile", default="quick", show_default=True,
                     help=f"Named experiment config from experiments/profiles ({', '.join(profile_names())}) "
                          "or a path to a .toml file."),
        click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
                     help="Override any config field, e.g. --set pretrain.epochs=4 --set data.resolution=32. "
                          "Repeatable; a comma-separated list also works."),
        click.option("--transfer-mode", type=str, default=None,
                     help="fixed (frozen backbone in eval mode + linear head) or full (all weights "
                          "train). Default: the profile's."),
        click.option("--alpha", type=str, default=None,
                     help="Share of source classes each model keeps, in (0, 1]. Default: the profile's (0.5)."),
        click.option("--sweep-seed", type=str, default=None,
                     help="Seed of the class masks: mask i is a pure function of (sweep seed, i). Default 0."),
        click.option("--data-root", type=click.Path(), default=None, envvar="TRANSFER_CORE_DATA",
                     help="Folder with cifar10.tar.gz / cifar100.tar.gz or their extracted trees "
                          "[env: TRANSFER_CORE_DATA]. Unset: torchvision downloads CIFAR."),
        click.option("--experiment", default="transfer_core", show_default=True, help="MLflow experiment name."),
        click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
                     help="MLflow tracking URI [env: MLFLOW_TRACKING_URI]. Default: sqlite store "
                          "mlruns/mlflow.db with artifacts under mlruns/."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def resolve_config(profile, overrides, transfer_mode=None, alpha=None, sweep_seed=None, extra=None):
    """Profile + ``--set`` overrides + the dedicated options, validated once."""
    merged = {}
    for item in overrides:
        merged.update(parse_overrides(item))
    for key, value in (("transfer.mode", transfer_mode), ("alpha", alpha), ("sweep_seed", sweep_seed)):
        if value not in (None, ""):
            merged[key] = value
    merged.update(extra or {})
    return build_config(profile, merged)


def friendly_errors(fn):
    """Turn library errors into one clear sentence and exit status 2, with no traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose):
    """transfer_core: which source classes help or hurt transfer to a target task.

    Every model is pretrained on a random half of the source classes and transferred to the
    target; each is one MLflow run. Influences of each source class on each target example
    are fitted from many such runs (positive influence = including the class helps).
    """
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(asctime)s %(name)s: %(message)s")


@main.command("subset-run")
@config_options
@click.option("--index", type=str, default="0", show_default=True,
              help="Model index: with the sweep seed it fixes the class mask and the training seed.")
@click.option("--mask", "mask_file", type=click.Path(), default=None,
              help="A .npy boolean mask (one entry per source class) to use instead of the random one.")
@click.option("--log-checkpoint/--no-log-checkpoint", default=True, show_default=True,
              help="Log the transferred model as model.pt (about 0.3 MB for the quick profile).")
@friendly_errors
def subset_run(profile, overrides, transfer_mode, alpha, sweep_seed, data_root, experiment, tracking_uri,
               index, mask_file, log_checkpoint):
    """Pretrain on one class subset, transfer to the target, log it all as one MLflow run."""
    import numpy as np

    from .config import parse_value
    from .runner import SubsetRunner
    from .tracking import setup_tracking

    config = resolve_config(profile, overrides, transfer_mode, alpha, sweep_seed)
    index = parse_value("--index", index, int)
    if index < 0:
        raise ConfigError(f"--index must be >= 0, got {index}")
    mask = None
    if mask_file:
        try:
            mask = np.load(mask_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read mask file {mask_file} ({exc}); give a .npy boolean array") from None
    setup_tracking(tracking_uri)
    runner = SubsetRunner(config, experiment, data_root)
    run_id, result = runner.run(index, mask=mask, run_id=os.environ.get("MLFLOW_RUN_ID"),
                                log_checkpoint=log_checkpoint)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in {**result.metrics, **result.timings}.items())
    click.echo(f"run {run_id} FINISHED: {metrics}")


if __name__ == "__main__":
    sys.exit(main())
