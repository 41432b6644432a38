"""Shared pieces of the command line: parameter types, option groups, and one-sentence errors.

MLproject passes every parameter as a string, and an empty string means "not given". The
parameter types here map ``""`` to None (unset, so the library's typed default applies)
and convert everything else to the real type, so ``--help`` shows choices and ranges and a
bad value gets click's one-line error. Defaults shown in ``--help`` are read from the
library's dataclasses, the one place they live.
"""
from __future__ import annotations

import dataclasses
import functools
import sys

import click
from mlflow.exceptions import MlflowException

from transfer_core.config import DEFAULT_PROFILE, ConfigError, parse_overrides, profile_names
from transfer_core.execute import AUTO, EXECUTORS, ExecutorSettings
from transfer_core.track import DEFAULT_EXPERIMENT


class _EmptyIsUnset:
    """Mixin: ``""`` (MLproject's "not given") converts to None; anything else as the base type does."""

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            if not value.strip():
                return None
            value = value.strip()
        return super().convert(value, param, ctx)


class Text(_EmptyIsUnset, click.types.StringParamType):
    name = "text"


class IntRange(_EmptyIsUnset, click.IntRange):
    pass


class FloatRange(_EmptyIsUnset, click.FloatRange):
    pass


class Choice(_EmptyIsUnset, click.Choice):
    pass


class _PackCount(click.ParamType):
    name = "N|auto"

    def convert(self, value, param, ctx):
        if value == AUTO or isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        text = str(value).strip().lower()
        if text == AUTO:
            return AUTO
        try:
            number = int(text)
        except ValueError:
            self.fail(f"{value!r} is neither a number of models nor auto; give e.g. --pack 8, or --pack auto",
                      param, ctx)
        if number < 1:
            self.fail(f"{number} is not a positive number of models; give --pack 1 or more, or --pack auto", param, ctx)
        return number


class PackCount(_EmptyIsUnset, _PackCount):
    """A positive number of models per pack, or ``auto``."""


TEXT = Text()


def default(cls, name: str) -> str:
    """The default of field ``name`` of dataclass ``cls``, as ``--help`` shows it (lists comma-separated)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return "unset" if value is None or value == "" else str(value)


def settings_options(cls, skip: tuple[str, ...] = ()):
    """Options for every field of dataclass ``cls`` (``--n-models`` for ``n_models``): the type, range or
    choices, help and default all come from the field (its metadata ``help``, ``min``, ``choices``)."""
    def decorate(fn):
        options = []
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            kind = TEXT
            if "choices" in f.metadata:
                kind = Choice(list(f.metadata["choices"]))
            elif f.type in (int, "int"):
                kind = IntRange(min=f.metadata.get("min"))
            options.append(click.option(f"--{f.name.replace('_', '-')}", f.name, type=kind, default=None,
                                        show_default=default(cls, f.name), help=f.metadata.get("help", "")))
        return _stack(fn, options)
    return decorate


def given(**values) -> dict:
    """The keyword arguments that were given (not None), for a dataclass whose defaults fill the rest."""
    return {k: v for k, v in values.items() if v is not None}


def merge_overrides(items) -> dict[str, str]:
    """``--set`` values (repeatable, each possibly a comma-separated list) as one dict."""
    merged: dict[str, str] = {}
    for item in items or ():
        merged.update(parse_overrides(item))
    return merged


def _stack(fn, options):
    for option in reversed(options):
        fn = option(fn)
    return fn


def profile_option(fn):
    return click.option("--profile", type=TEXT, default=None, show_default=DEFAULT_PROFILE,
                        help=f"A profile shipped with the package in transfer_core/presets/profiles "
                             f"({', '.join(profile_names())}) or a path to a .toml file.")(fn)


def set_option(fn):
    return click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
                        help="Override any config field, e.g. --set pretrain.epochs=4 --set data.resolution=32. "
                             "Repeatable; a comma-separated list also works.")(fn)


def experiment_option(fn):
    return click.option("--experiment", type=TEXT, default=None, show_default=DEFAULT_EXPERIMENT,
                        help="MLflow experiment name.")(fn)


def open_context(tracking_uri=None, data_root=None, execution: ExecutorSettings | None = None, progress: bool = True):
    """The command's one :class:`~transfer_core.execute.Context`: the store, the data, the executor."""
    from transfer_core.execute import Context
    return Context.open(tracking_uri, data_root, execution, progress)


def store_options(fn):
    """``--data-root`` and ``--tracking-uri``: where the data and the MLflow store are."""
    return _stack(fn, [
        click.option("--data-root", type=TEXT, default=None, envvar="TRANSFER_CORE_DATA",
                     help="Folder with cifar10.tar.gz / cifar100.tar.gz or their extracted trees "
                          "[env: TRANSFER_CORE_DATA]. Unset: torchvision downloads CIFAR."),
        click.option("--tracking-uri", type=TEXT, default=None, envvar="MLFLOW_TRACKING_URI",
                     help="MLflow tracking URI [env: MLFLOW_TRACKING_URI]. Default: sqlite store "
                          "mlruns/mlflow.db with artifacts under mlruns/."),
    ])


def config_options(fn):
    """Options of every command that builds a RunConfig."""
    return _stack(fn, [
        profile_option, set_option,
        click.option("--transfer-mode", type=Choice(["fixed", "full"]), default=None,
                     help="fixed (frozen backbone in eval mode + linear head) or full (all weights train). "
                          "Default: the profile's."),
        click.option("--alpha", type=FloatRange(0, 1, min_open=True), default=None,
                     help="Share of source classes each model keeps. Default: the profile's."),
        click.option("--sweep-seed", type=IntRange(min=0), default=None,
                     help="Seed of the class masks: mask i is a pure function of (sweep seed, i). "
                          "Default: the profile's."),
        experiment_option, store_options,
    ])


def executor_options(fn=None, *, workers: bool = True):
    """Where models train: local worker processes or a Ray cluster (see ExecutorSettings).

    ``workers=False`` leaves ``--workers`` to the command (the pipeline's settings own it)."""
    if fn is None:
        return functools.partial(executor_options, workers=workers)
    d = functools.partial(default, ExecutorSettings)
    options = [
        click.option("--executor", type=Choice(list(EXECUTORS)), default=None, show_default=d("executor"),
                     help="local (worker processes on this machine) or ray (one Ray task per model; needs "
                          "pip install 'transfer-core[ray]')."),
        workers and click.option("--workers", type=IntRange(min=1), default=None, show_default=d("workers"),
                                 help="Local worker processes; each loads the data once and gets cores/workers "
                                      "torch threads (1 trains in this process)."),
        click.option("--ray-address", type=TEXT, default=None,
                     help="Ray cluster to use, e.g. 10.0.0.5:6379 or auto. Unset: $RAY_ADDRESS if set, else a new "
                          "local Ray instance."),
        click.option("--ray-cpus-per-run", type=FloatRange(0, min_open=True), default=None,
                     show_default=d("ray_cpus_per_run"), help="CPUs each Ray task reserves."),
        click.option("--ray-gpus-per-run", type=FloatRange(0), default=None, show_default=d("ray_gpus_per_run"),
                     help="GPUs each Ray task (one pack) reserves; a fraction (0.25) lets several small packs share "
                          "one card, 1 with --pack N trains N models on each GPU."),
        click.option("--pack", type=PackCount(), default=None, show_default=d("pack"),
                     help="Models trained at once as one network on one device (grouped convolutions; each model "
                          "keeps its own weights, batches and seed, and is its own run). auto: as many as fit in the "
                          "GPU's free memory, and 1 on a CPU, where packing does not pay. A pack that cannot fit is "
                          "refused with the largest that can."),
        click.option("--compile/--no-compile", "compile_", default=None,
                     show_default="compile" if ExecutorSettings().compile else "no-compile",
                     help="torch.compile packed training (once per process; for GPUs)."),
    ]
    return _stack(fn, [option for option in options if option])


def execution_settings(executor, workers, ray_address, ray_cpus_per_run, ray_gpus_per_run, pack=None,
                       compile_=None) -> ExecutorSettings:
    return ExecutorSettings(**given(executor=executor, workers=workers, ray_address=ray_address,
                                    ray_cpus_per_run=ray_cpus_per_run, ray_gpus_per_run=ray_gpus_per_run, pack=pack,
                                    compile=compile_))


def transfer_params_option(fn):
    """``--transfer-params-from RUN_ID|latest``: train with the recipe a ``tune`` run found."""
    return click.option(
        "--transfer-params-from", "transfer_params_from", type=TEXT, default=None, metavar="RUN_ID|latest",
        help="Use the best transfer hyperparameters of a `transfer-core tune` run: its MLflow run id, or "
             "'latest' for the experiment's latest FINISHED tune run. They override the profile's and "
             "--set's transfer values, are logged as params on every run, and the tune run's id is "
             "recorded on the sweep (tag tune_run_id).")(fn)


def evidence_options(fn):
    """When a pruned source may become champion, and when a ranking counts as unstable."""
    from transfer_core.counterfactual.summary import STABILITY_THRESHOLD, EvidenceRule
    return _stack(fn, [
        click.option("--min-seeds", type=IntRange(min=3), default=None, show_default=default(EvidenceRule, "min_seeds"),
                     help="Seeds per grid point a champion needs: a pruned source becomes champion only when its "
                          "paired gain on the held-out validation half has a confidence interval above zero over at "
                          "least this many seeds."),
        click.option("--stability-threshold", type=FloatRange(0, 1), default=None,
                     show_default=str(STABILITY_THRESHOLD),
                     help="Warn when the class ranking's split-half Spearman (two disjoint halves of the runs) is "
                          "below this: the removed classes are then largely noise."),
    ])


def progress_option(fn):
    return click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")(fn)


def friendly_errors(fn):
    """Library errors become one clear sentence and exit status 1, with no traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        except MlflowException as exc:  # the store refused or failed a request
            message = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
            raise click.ClickException(f"the MLflow tracking store failed a request ({message}); check "
                                       "--tracking-uri and the server's log, then run the command again") from None
        except KeyboardInterrupt:
            click.echo("interrupted; run the same command again to finish what is missing", err=True)
            sys.exit(130)
    return wrapper
