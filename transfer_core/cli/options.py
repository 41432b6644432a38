"""Shared pieces of the command line: options generated from settings, parameter types, one-sentence errors.

Every stage's options are generated from its settings dataclass (:mod:`transfer_core.settings`):
:func:`settings_options` makes one click option per field (name, type, range, choices, help and
the default ``--help`` shows, all read from the field), and :func:`settings_from` builds the
settings back from what was given. MLproject passes every parameter as a string, and an empty
string means "not given": the parameter types here map ``""`` to None (unset, so the settings'
default applies) and convert everything else, so a bad value gets click's one-line error.
"""
from __future__ import annotations

import functools
import sys
from typing import Any

import click
from mlflow.exceptions import MlflowException

from transfer_core.config import DEFAULT_PROFILE, ConfigError, parse_overrides, profile_names
from transfer_core.settings import Settings, Spec, flat_specs, with_flat
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


class Bool(_EmptyIsUnset, click.types.BoolParamType):
    name = "true|false"


TEXT = Text()


def shown(value: Any) -> str:
    """A settings value as ``--help`` shows it: lists comma-separated, None as unset, booleans as true/false."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, bool):
        return str(value).lower()
    return "unset" if value is None or value == "" else str(value)


def param_type(spec: Spec) -> click.ParamType:
    """The click type of a settings field: ranges and choices checked by click, lists and custom values by the
    settings themselves (one sentence either way)."""
    if spec.is_list or spec.parse is not None:
        return TEXT
    if spec.choices is not None:
        return Choice([str(c) for c in spec.choices])
    if spec.kind is bool:
        return Bool()
    if spec.kind is int:
        return IntRange(min=spec.min, max=spec.max)
    if spec.kind is float:
        low = spec.above if spec.above is not None else spec.min
        return FloatRange(min=low, max=spec.max, min_open=spec.above is not None)
    return TEXT


def option_for(spec: Spec, current: Any) -> Any:
    """One click option for ``spec``; ``current`` is the default ``--help`` shows (the composed settings' value)."""
    help_text = spec.help
    if spec.is_list and spec.choices is not None:
        help_text += f" Choices: {', '.join(map(str, spec.choices))}."
    return click.option(spec.option, spec.name, type=param_type(spec), default=None, multiple=spec.is_list,
                        metavar=spec.metavar or ("A,B,..." if spec.is_list else None), show_default=shown(current),
                        help=help_text)


def settings_options(settings: Settings, skip: tuple[str, ...] = ()):
    """Options for every field of ``settings`` and of its components (flat: ``--n-models`` for ``n_models``),
    but for ``skip``."""
    def decorate(fn):
        options = [option_for(spec, value) for _, spec, value in flat_specs(settings) if spec.name not in skip]
        return _stack(fn, options)
    return decorate


def settings_from(settings: Settings, kwargs: dict[str, Any]) -> Any:
    """``settings`` with the options that were given (popped from ``kwargs``) on top; lists given several
    times (``--set a=1 --set b=2``) or comma-separated are joined into one list."""
    given = {}
    for _, spec, _ in flat_specs(settings):
        if spec.name not in kwargs:
            continue
        value = kwargs.pop(spec.name)
        if spec.is_list:
            value = ",".join(v for v in (value or ()) if v and v.strip()) or None
        if value is not None:
            given[spec.name] = value
    return with_flat(settings, given)


def given(**values) -> dict:
    """The keyword arguments that were given (not None)."""
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


def open_context(tracking_uri=None, data_root=None, cache_dir=None, execution=None, progress: bool = True,
                 ledger=None):
    """The command's one :class:`~transfer_core.execute.Context`: the store, the data folders, the executor,
    the look ledger."""
    from transfer_core.execute import Context
    return Context.open(tracking_uri, data_root, cache_dir, execution, progress, ledger)


def store_options(fn):
    """``--data-root``, ``--cache-dir``, ``--tracking-uri`` and ``--ledger``: where the data, its decoded copies,
    the MLflow store and the look ledger are. The only place the environment is read: these options' defaults."""
    return _stack(fn, [
        click.option("--data-root", type=TEXT, default=None, envvar="TRANSFER_CORE_DATA",
                     help="Folder with cifar10.tar.gz / cifar100.tar.gz or their extracted trees "
                          "[env: TRANSFER_CORE_DATA]. Unset: torchvision downloads CIFAR."),
        click.option("--cache-dir", type=TEXT, default=None, envvar="TRANSFER_CORE_CACHE",
                     help="Where decoded images, prepared copies and sweep caches are kept [env: "
                          "TRANSFER_CORE_CACHE]. Unset: ~/.cache/transfer_core (make uses .cache/ in the checkout)."),
        click.option("--tracking-uri", type=TEXT, default=None, envvar="MLFLOW_TRACKING_URI",
                     help="MLflow tracking URI [env: MLFLOW_TRACKING_URI]. Default: sqlite store "
                          "mlruns/mlflow.db with artifacts under mlruns/."),
        click.option("--ledger", type=TEXT, default=None, envvar="TRANSFER_CORE_LEDGER",
                     help="The look ledger: an append-only file that counts every look at a validation selection "
                          "half, whatever store or `mlflow gc` [env: TRANSFER_CORE_LEDGER]. Unset: "
                          "~/.local/state/transfer_core/looks.jsonl (docs/looks.md)."),
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


def transfer_params_option(fn):
    """``--transfer-params-from RUN_ID|latest``: train with the recipe a ``tune`` run found."""
    return click.option(
        "--transfer-params-from", "transfer_params_from", type=TEXT, default=None, metavar="RUN_ID|latest",
        help="Use the best transfer hyperparameters of a `transfer-core tune` run: its MLflow run id, or "
             "'latest' for the experiment's latest FINISHED tune run. They override the profile's and "
             "--set's transfer values, are logged as params on every run, and the tune run's id is "
             "recorded on the sweep (tag tune_run_id).")(fn)


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
