"""The planted synthetic classes from a few attributed models, with the default settings.

``data/synthetic.py`` plants three source classes: ``helpful`` (the twin of target ``vertical``), ``misleading``
(teaches a watermark detector; the probe then mislabels the watermarked ``rings`` test images) and ``leaked``
(copies of 60 ``horizontal`` test images). The retraining analysis needs 40 models to find them
(tests/analysis/test_analysis.py); here 6 models trained on the whole source are differentiated once each,
with the default :class:`AttributionSettings` (proj_dim 1024, ridge 100).

Margins, measured on sweep seeds 0-5 (six different sets of 6 models) on torch's native CPU kernel path and on
seeds 0-4 with ``ATEN_CPU_CAPABILITY=default`` (11 sets in all; another kernel path changes every trained
model as much as another seed), as the planted class's signed influence over the runner-up's:

- ``helpful`` is the most helpful class for ``vertical`` in all 11, by at least 4.3x (median 7.6x);
- ``leaked`` is the most helpful class for the copied test images in all 11, by at least 4.9x;
- ``misleading`` harms ``rings`` in all 11 but is the *most* harmful class in only 7 of them: its harm was at
  least 0.54x the most harmful other class's. So the attribution does not reliably single it out from a few
  models (the retraining analysis does, from 40): this test asserts only that it harms ``rings``, by at least
  a quarter of the runner-up's harm. Its effect runs through the linear probe re-fitting to the watermark,
  which a gradient taken with the head fixed sees only in part (``probe=refit`` did worse: helpful lost its
  place).

The test uses the profile's own sweep seed (0): helpful 6.1x / 4.3x, misleading 2.5x / 1.6x, leaked 31x / 11x
(native / default kernel path).
"""
from __future__ import annotations

import numpy as np
import pytest

from transfer_core.attribution import Attributor, AttributionSettings, train_member
from transfer_core.config import build_config
from transfer_core.data import load_transfer_data, synthetic

N_MODELS = 6
MIN_LEAD = 2.0  # helpful and leaked over the runner-up; the smallest measured was 4.3x (module docstring)
MIN_MISLEADING = 0.25  # misleading's harm to rings over the most harmful other class's; measured at least 0.54


@pytest.fixture(scope="module")
def attribution():
    config = build_config("synthetic")
    data = load_transfer_data(config.data)
    test = data.target_test
    groups = test.labels.numpy().copy()
    groups[synthetic.leaked_indices("test").numpy()] = len(test.class_names)  # the copied images: their own group
    att = Attributor(data.source, AttributionSettings(), device="cpu")
    att.add_targets("test", test, groups=groups, group_names=[*test.class_names, "copied"])
    for m in range(N_MODELS):
        att.featurize(m, train_member(config, data, "full", m, device="cpu"))
    return att.finalize()


def lead(attribution, planted: str, group: str, sign: int) -> tuple[float, float, list[str]]:
    """The planted class's signed influence on ``group``, the best other class's, and the ranking."""
    signed = sign * attribution.class_influence("test", [group])
    order = attribution.class_ranking("test", [group], bootstrap=0)["class_name"].tolist()
    return signed[synthetic.PLANTED[planted]], np.delete(signed, synthetic.PLANTED[planted]).max(), order


@pytest.mark.parametrize("planted, group", [("helpful", "vertical"), ("leaked", "copied")])
def test_helpful_and_leaked_classes_come_out_first(attribution, planted, group):
    mine, runner_up, order = lead(attribution, planted, group, 1)
    assert mine > 0 and mine >= MIN_LEAD * runner_up, (
        f"{planted} should be the most helpful class for {group} by at least {MIN_LEAD}x the runner-up (measured "
        f"at least 4.3x over 11 seeds and kernel paths); got {mine:.3g} against {runner_up:.3g}; ranking {order}")


def test_the_misleading_class_harms_the_watermarked_target_class(attribution):
    harm, runner_up, order = lead(attribution, "misleading", "rings", -1)
    assert harm > 0 and harm >= MIN_MISLEADING * runner_up, (
        f"misleading should harm rings, by at least {MIN_MISLEADING}x the most harmful other class (measured at "
        f"least 0.54x over 11 seeds and kernel paths); got {harm:.3g} against {runner_up:.3g}; ranking {order}")
