"""How an attribution is computed: every option of ``transfer-core attribute``, in one place.

Light on purpose (no torch): the command line reads these fields when it starts. The names of the
library's registries are listed here and checked against them by ``tests/attribution``.

The defaults are the best configuration measured on CIFAR-100 -> CIFAR-10 (``outputs/attribution/
report_small.csv`` and ``report_ablations.csv``, made by ``benchmarks/bench_attribution.py``; BENCHMARKS.md
"Attribution"): ``full`` members (pretrained on the whole source), ``proj_dim`` 1024, ``ridge`` 100 and the
``trak`` kernel. At M = 3-6 models it had the highest Spearman against the 2,200-model retraining rankings of
every kind and kernel tried (validation ranking half 0.15-0.17, test 0.19-0.20, where ``ridge`` 0 gave
0.02-0.09 and 0.10-0.12), a split-half of 0.65-0.69 at 3 models per half (ridge 0: 0.15-0.26), and it put the
one exact CIFAR-10-test / CIFAR-100-train copy first among that test image's 50,000 source images from 3
models. The plain gradient inner product (``kernel=dot``) was as stable (split-half 0.72) but agreed less with
retraining (0.11-0.15) and ranked the copy 3rd-4th; ``subset`` members (the sweep's random halves of the
classes) and ``half_examples`` members agreed less at every M. Five models is the default: 179 CPU-seconds
there, with no gain measured from more. None reaches the issue's goal (Spearman 0.58 against retraining):
the attribution's ranking is a screen, not a substitute for retraining (docs/attribution.md).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from transfer_core.settings import Settings, setting

KINDS = ("subset", "full", "half_examples")  # ensemble.KINDS
PROJECTIONS = ("gaussian", "rademacher", "identity")  # projection.PROJECTORS
GRADIENT_KINDS = ("layerwise", "functional", "naive")  # gradients.GRADIENTS
TARGET_OUTPUTS = ("margin", "prob")  # gradients.OUTPUTS
KERNELS = ("trak", "dot")
PROBES = ("fixed", "refit")
DTYPES = ("float32", "float64")
PROJECTION_DTYPES = ("float32", "float64", "bfloat16")
# What only the step reads (which models, how much it lists): a featurized model's scores do not depend on them,
# so a cached featurization is reused when they change (Attributor metadata leaves them out).
STEP_ONLY = ("ensemble_models", "top_sources", "top_examples")


@dataclass(frozen=True)
class AttributionSettings(Settings):
    """How an ensemble's models are trained and featurized; validated at construction.

    Sign convention: positive = including the source image (class) helps the target (raises its margin).
    """

    ensemble: str = setting("full", "Which models are attributed: full (pretrained on every source image; the best "
                                    "measured), half_examples (on a random half of each class's images, TRAK's "
                                    "ensembles) or subset (the sweep's own random halves of the classes, retrained "
                                    "with their seeds).", choices=KINDS)
    ensemble_models: int = setting(5, "M, the models trained and featurized (each about 35 CPU-seconds on CIFAR-100 "
                                      "at 32 px; featurized models are cached and reused when M grows).", min=1)
    proj_dim: int = setting(1024, "k, the dimension the per-example gradients are randomly projected to (TRAK: "
                                  "2048-20480 on ImageNet).", min=1)
    projection_seed: int = setting(0, "Seed of the random projections (model m's is seeded by (seed, m)) and of the "
                                      "sample of target examples listed in top_images.csv.", min=0)
    ridge: float = setting(100.0, "Ridge added to the kernel Phi^T Phi, in units of its mean diagonal (TRAK: 0; "
                                  "100 agreed best with retraining).", min=0)
    kernel: str = setting("trak", "trak: phi_t^T (Phi^T Phi + ridge)^-1 phi_i on projected gradients; dot: the exact "
                                  "gradient inner product g_t . g_i (no projection, one forward-mode pass over the "
                                  "source per target vector).", choices=KERNELS)
    target_output: str = setting("margin", "The transferred model's output that is attributed: margin (TRAK's; "
                                           "true-class logit minus the largest other) or prob (true-class "
                                           "probability).", choices=TARGET_OUTPUTS)
    params: tuple[str, ...] = setting((), "Prefixes of the backbone parameters to attribute through, comma-separated "
                                          "(e.g. stages.1); empty: the whole backbone.", metavar="PREFIXES")
    top_sources: int = setting(10, "Source images listed per target example in top_images.csv.", min=1)
    top_examples: int = setting(100, "Target test examples scored one by one for top_images.csv (a seeded sample; "
                                     "each costs one per-example gradient per model, and with kernel=dot a pass "
                                     "over the source; 0: none).", min=0)
    chunk_size: int = setting(256, "Images per chunk of per-example gradients: memory is about chunk_size x (largest "
                                   "layer's parameters + its unfolded input) floats.", min=1)
    projection: str = setting("gaussian", "Random projection: gaussian, rademacher or identity (proj_dim must then "
                                          "equal the number of parameters).", choices=PROJECTIONS)
    projection_dtype: str = setting("float32", "Dtype of the projection's matrix product (bfloat16 is 5x faster on "
                                               "CPUs with AMX, 0.3% relative error).", choices=PROJECTION_DTYPES)
    dtype: str = setting("float32", "Dtype of the networks, gradients and features (float64 for exact checks).",
                         choices=DTYPES)
    gradients: str = setting("layerwise", "Per-example gradient engine: layerwise (fast, conv/linear/BatchNorm "
                                          "layers), functional (torch.func vmap of grad, any layer) or naive (a loop; "
                                          "for tests).", choices=GRADIENT_KINDS)
    cache_mib: int = setting(512, "MiB of projection rows kept on the device (else drawn again per chunk).", min=0)
    probe: str = setting("fixed", "fixed: the target gradient holds the transferred head fixed (TRAK through the "
                                  "transfer); refit: the linear head re-fits to the changed backbone (fixed-feature "
                                  "transfer only; agreed less with retraining).", choices=PROBES)

    def featurization(self) -> dict:
        """The fields a featurized model's scores depend on (what a resumed :class:`Attributor` must match)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in STEP_ONLY}

