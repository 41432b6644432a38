"""transfer_core: which source classes help or hurt transfer to a target task.

A small surface, in the spirit of airbench and TRAK::

    from transfer_core import build_config, SubsetRunner
    runner = SubsetRunner(build_config("quick"), experiment="demo")
    run_id, result = runner.run(index=0)

Sign convention everywhere: positive influence = including the source class helps.
"""
from .config import ConfigError, RunConfig, build_config, load_profile
from .subsets import class_mask

__all__ = ["ConfigError", "RunConfig", "build_config", "load_profile", "class_mask", "SubsetRunner"]


def __getattr__(name):  # keep `import transfer_core` light: MLflow loads only when used
    if name == "SubsetRunner":
        from .runner import SubsetRunner
        return SubsetRunner
    raise AttributeError(name)
