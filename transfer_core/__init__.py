"""transfer_core: which source classes help or hurt transfer to a target task.

The package's stages, in the order data flows through them::

    config         RunConfig: typed, validated at construction; profiles in presets/profiles; dataset specs
    settings       how each stage's settings dataclass declares its fields (default, help, checks) once
    data           datasets as uint8 tensors, the target's splits, class masks
    train          networks and the tensor training loop; one subset run as pure computation
    track          the MLflow store, run lookups and lifecycle, what a run logs, claims
    execute        SubsetRunner (one model = one MLflow run); one executor for every retraining
    sweep          many subset runs of one config; collecting them back as arrays
    tune           Optuna search of the transfer recipe on the validation split
    analysis       influences, uncertainty, findings, report
    counterfactual retraining without the classes a ranking names
    registry       the champion model in the MLflow Model Registry
    workflow       the `main` chain of MLproject entry points; publishing results
    cli            the `transfer-core` command line

A small surface, in the spirit of airbench and TRAK::

    from transfer_core import build_config, Context, SubsetRunner
    ctx = Context.open(data_root="../shared/data")    # the store (mlruns/mlflow.db), the data, the cache
    runner = SubsetRunner(build_config("quick"), "demo", ctx)
    run_id, result = runner.run(index=0)

Sign convention everywhere: positive influence = including the source class helps.
"""
import importlib

from transfer_core.config import ConfigError, RunConfig, build_config, load_profile

__all__ = ["ConfigError", "RunConfig", "build_config", "load_profile", "class_mask", "SubsetRunner", "Context"]


def lazy_exports(package: str, exports: dict[str, str]):
    """``__getattr__`` and ``__dir__`` for a package whose public names load their module on first use.

    ``exports`` maps each name to its module. A command then imports only what it runs: the
    command line's option defaults read light settings modules without loading MLflow's
    tracking, Optuna, SciPy or matplotlib through a stage's ``__init__``.
    """
    def __getattr__(name):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, lambda: sorted(exports)


# torch loads with the first of these, not with the package: MLflow's UI server imports transfer_core.track.ui
__getattr__, __dir__ = lazy_exports(__name__, {"class_mask": "transfer_core.data",
                                               "SubsetRunner": "transfer_core.execute",
                                               "Context": "transfer_core.execute"})
