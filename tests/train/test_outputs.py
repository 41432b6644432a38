import math

import numpy as np
import torch

from transfer_core.train import load_outputs, per_example_outputs, save_outputs


def naive_outputs(logits, labels):
    rows = []
    for z, y in zip(logits.tolist(), labels.tolist()):
        other = max(v for j, v in enumerate(z) if j != y)
        denom = sum(math.exp(v) for v in z)
        pred = max(range(len(z)), key=lambda j: z[j])
        rows.append((z[y] - other, math.exp(z[y]) / denom, pred == y, pred))
    return [np.array(col) for col in zip(*rows)]


def test_outputs_match_naive_loop(tmp_path):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 7, generator=gen) * 3
    labels = torch.randint(0, 7, (200,), generator=gen)
    out = per_example_outputs(logits, labels)
    margin, prob, correct, pred = naive_outputs(logits, labels)
    np.testing.assert_allclose(out["margin"], margin, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["prob"], prob, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["correct"], correct)
    np.testing.assert_array_equal(out["pred"], pred)
    assert ((out["margin"] > 0) == out["correct"]).all()  # no ties with random floats

    save_outputs(tmp_path / "o.npz", out, labels)
    back = load_outputs(tmp_path / "o.npz")
    assert back["margin"].dtype == np.float16 and back["correct"].dtype == bool
    np.testing.assert_allclose(back["margin"], out["margin"], rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(back["labels"], labels.numpy())
