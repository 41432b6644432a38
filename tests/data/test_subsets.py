import numpy as np
import pytest

from transfer_core.config import ConfigError
from transfer_core.data import check_mask, class_mask, n_kept, run_seed


@pytest.mark.parametrize("n_classes, alpha", [(100, 0.5), (1000, 0.5), (10, 0.3), (7, 1.0), (3, 0.2)])
def test_mask_keeps_exactly_round_alpha_k(n_classes, alpha):
    for index in range(20):
        mask = class_mask(0, index, n_classes, alpha)
        assert mask.dtype == bool and mask.shape == (n_classes,)
        assert mask.sum() == round(alpha * n_classes) == n_kept(n_classes, alpha)


def test_mask_is_a_pure_function_of_seed_and_index():
    a = [class_mask(5, i, 100) for i in range(50)]
    b = [class_mask(5, i, 100) for i in range(50)]
    assert all((x == y).all() for x, y in zip(a, b))
    assert len({m.tobytes() for m in a}) == 50  # distinct per index
    assert not (class_mask(6, 0, 100) == class_mask(5, 0, 100)).all()
    # every class is in about half of the masks: a fair design for difference-of-means
    inclusion = np.mean([class_mask(1, i, 100) for i in range(2000)], axis=0)
    assert np.all(np.abs(inclusion - 0.5) < 0.06)


def test_bad_masks_and_alphas():
    with pytest.raises(ConfigError, match="alpha must be in"):
        class_mask(0, 0, 10, 1.5)
    with pytest.raises(ConfigError, match="keeps no class"):
        class_mask(0, 0, 3, 0.1)
    with pytest.raises(ConfigError, match="class mask has length 5 but the source has 10 classes"):
        check_mask(np.ones(5, bool), 10)
    with pytest.raises(ConfigError, match="keeps no class"):
        check_mask(np.zeros(10, bool), 10)


def test_run_seeds_differ_per_model():
    assert len({run_seed(0, i) for i in range(1000)}) == 1000
    assert run_seed(0, 3) == run_seed(0, 3)
