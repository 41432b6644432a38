"""How a tuning study searches: every option of ``transfer-core tune``, in one place.

The config being tuned is a separate :class:`~transfer_core.config.RunConfig`; the search
space is written as on the command line (``lr=0.001:1:log;epochs=2:30``, see
:mod:`~transfer_core.tune.space`) and parsed against that config by :meth:`TuneSettings.search_space`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from transfer_core.config import ConfigError, RunConfig
from transfer_core.settings import Settings, setting
from transfer_core.tune.space import SearchSpace

_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")


@dataclass(frozen=True)
class TuneSettings(Settings):
    """How to search the transfer recipe; validated at construction."""

    n_trials: int = setting(20, "Trials this call adds to the study (the study's first trial is the config's own "
                                "recipe).", min=1)
    total_trials: int | None = setting(None, "Instead of --n-trials: add only the trials the study lacks to hold this "
                                             "many finished ones, so a rerun after an interruption completes the study "
                                             "and then adds none (the best params, and the sweep they feed, stay the "
                                             "same). In the pipeline (transfer-core main), 0 skips tuning.", min=0)
    study_name: str | None = setting(None, "Optuna study to create or extend. Unset: <profile>-<mode>-<config "
                                           "hash>, so rerunning the same command adds trials to the same study.")
    storage: str | None = setting(None, "Where the study lives: unset = journal file optuna/<study>.journal beside the "
                                        "MLflow sqlite store (resumable, safe for several processes on one machine); a "
                                        "*.journal path; or an RDB URL such as postgresql://user:pw@host/db shared by "
                                        "several machines.")
    space: str = setting("", "Search space, e.g. 'lr=0.001:1:log;epochs=2:30;batch_size=64,128' (LOW:HIGH[:log] is a "
                             "range, a comma list a choice; names: lr, weight_decay, epochs, label_smoothing, "
                             "batch_size). Empty: lr, weight_decay, epochs, label_smoothing (+ batch_size in full "
                             "mode).")
    backbone_index: int | None = setting(None, "Pretrain the shared backbone on the classes of sweep mask INDEX (the "
                                               "kind of backbone a sweep trains). Unset: every source class.", min=0)
    timeout: float | None = setting(None, "Stop starting new trials after this many seconds.", above=0)
    sampler_seed: int | None = setting(None, "Seed of the TPE sampler, for a reproducible search. Unset: fresh (best "
                                             "when several processes share a study).", min=0)
    pruner_startup_trials: int = setting(4, "Complete trials before the median pruner may stop any.", min=0)
    pruner_warmup_epochs: int = setting(1, "Epochs every trial runs before it may be pruned.", min=0)

    def check(self) -> None:
        if self.study_name is not None and not _STUDY_NAME.match(self.study_name):
            raise ConfigError(f"study name {self.study_name!r} must be 1-121 letters, digits, '.', '_' or '-' "
                              "and start with a letter or digit")
        if self.space.strip():
            SearchSpace.parse(self.space)  # names and syntax now; bounds against the config in search_space

    def search_space(self, config: RunConfig) -> SearchSpace:
        """The space to search, validated against ``config`` (every bound must give a valid config)."""
        space = SearchSpace.parse(self.space) if self.space.strip() else SearchSpace.default(config.transfer.mode)
        return space.validate(config)
