"""The schedule-aligned median pruner against Optuna's MedianPruner and a hand-made case."""
import numpy as np
import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from transfer_core.tune.pruning import ScheduleMedianPruner

EPOCHS = IntDistribution(1, 100)


def study_with(curves, epochs=None):
    """A maximizing study with one COMPLETE trial per curve (intermediate value per epoch)."""
    study = optuna.create_study(direction="maximize")
    for i, curve in enumerate(curves):
        params, dists = ({"transfer.epochs": epochs[i]}, {"transfer.epochs": EPOCHS}) if epochs else ({}, {})
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=curve[-1], params=params, distributions=dists,
                                     intermediate_values=dict(enumerate(curve))))
    return study


def running(curve, epochs=None):
    params, dists = ({"transfer.epochs": epochs}, {"transfer.epochs": EPOCHS}) if epochs else ({}, {})
    return create_trial(state=TrialState.RUNNING, params=params, distributions=dists,
                        intermediate_values=dict(enumerate(curve)))


def test_with_equal_epochs_it_decides_like_optunas_median_pruner():
    rng = np.random.default_rng(0)
    n_epochs, decisions = 8, []
    for case in range(200):
        n_done = int(rng.integers(0, 7))
        study = study_with(rng.random((n_done, n_epochs)).cumsum(1).tolist())
        trial = running(rng.random(int(rng.integers(1, n_epochs))).cumsum().tolist())  # stops before the end
        ours = ScheduleMedianPruner(n_epochs, n_startup_trials=3, n_warmup_steps=2).prune(study, trial)
        theirs = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2).prune(study, trial)
        assert ours == theirs, (case, trial.intermediate_values)
        decisions.append(ours)
    assert 20 < sum(decisions) < 180  # the comparison exercised both outcomes


def test_long_schedules_are_compared_at_the_same_progress():
    # Finished 10-epoch trials: accuracy climbs as their learning rate decays.
    done = [[0.1 * (e + 1) + 0.01 * k for e in range(10)] for k in range(4)]
    study = study_with(done, epochs=[10] * 4)
    # A 40-epoch trial after 5 epochs (12.5% done) is at 0.3: below every finished trial's
    # epoch-5 value (MedianPruner prunes it) but above their values at 12.5% (epoch index 1).
    trial = running([0.1, 0.2, 0.25, 0.28, 0.3], epochs=40)
    assert optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1).prune(study, trial)
    assert not ScheduleMedianPruner(10, n_startup_trials=1, n_warmup_steps=1).prune(study, trial)
    # The same trial at half its schedule (epoch 20) with 0.4 is below their 50% values (0.5..0.53).
    half = running([0.1] * 19 + [0.4], epochs=40)
    assert ScheduleMedianPruner(10, n_startup_trials=1, n_warmup_steps=1).prune(study, half)


def test_never_prunes_before_startup_during_warmup_or_at_the_last_epoch():
    study = study_with([[0.9] * 5] * 3)
    low = [0.0] * 5
    assert not ScheduleMedianPruner(5, n_startup_trials=4).prune(study, running(low[:3]))
    assert not ScheduleMedianPruner(5, n_startup_trials=1, n_warmup_steps=3).prune(study, running(low[:3]))
    assert not ScheduleMedianPruner(5, n_startup_trials=1).prune(study, running(low))
    assert ScheduleMedianPruner(5, n_startup_trials=1).prune(study, running(low[:4]))
