"""A median pruner that compares trials at the same point of their learning-rate schedule.

Trials report validation accuracy after every epoch (Optuna step = epoch index). When the
number of epochs is itself tuned, epoch 5 of a 10-epoch trial has finished its schedule's
peak and is converging, while epoch 5 of a 40-epoch trial is still at the peak learning
rate; Optuna's ``MedianPruner`` compares them anyway, and so prunes long schedules for
being early. This pruner compares a trial at progress ``p = (step + 1) / epochs`` with
each finished trial's value at the epoch where *that* trial had reached ``p``.
"""
from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState


class ScheduleMedianPruner(optuna.pruners.BasePruner):
    """Prune a trial whose best value so far is below the median of finished trials at the
    same schedule progress (direction: maximize or minimize, as the study says).

    ``default_epochs`` is used for trials that do not tune ``epochs_param``. With equal epochs
    everywhere it decides exactly as ``MedianPruner(n_startup_trials, n_warmup_steps)``,
    except that it never prunes at the final epoch (the trial has finished by then).
    """

    def __init__(self, default_epochs: int, epochs_param: str = "transfer.epochs",
                 n_startup_trials: int = 4, n_warmup_steps: int = 1):
        self.default_epochs, self.epochs_param = default_epochs, epochs_param
        self.n_startup_trials, self.n_warmup_steps = n_startup_trials, n_warmup_steps

    def _epochs(self, trial: FrozenTrial) -> int:
        return int(trial.params.get(self.epochs_param, self.default_epochs))

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps or step + 1 >= self._epochs(trial):
            return False
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not finished or len(finished) < self.n_startup_trials:
            return False
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        own = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
        if not own:
            return True  # nothing but NaN so far
        best = max(own) if maximize else min(own)
        progress = (step + 1) / self._epochs(trial)
        others = []
        for other in finished:
            aligned = math.ceil(progress * self._epochs(other) - 1e-9) - 1  # its epoch at the same progress
            if aligned in other.intermediate_values:
                others.append(other.intermediate_values[aligned])
        if not others:
            return False
        median = float(np.nanpercentile(np.array(others, dtype=float), 50))
        return best < median if maximize else best > median
