"""What a counterfactual retrains and when its result may become champion: the stage's settings.

:class:`CounterfactualPlan` is what one ``transfer-core counterfactual`` command asks for (orders,
ks, seeds), fixed before anything trains; :class:`EvidenceRule` is when a pruned source may
become the champion (used by the counterfactual's report and by ``register``), and when a class
ranking counts as unstable.
"""
from __future__ import annotations

from dataclasses import dataclass

from transfer_core.config import ConfigError
from transfer_core.settings import Settings, setting

ORDERS = ("bottom", "top", "random")
FULL = "full"  # order tag of the k = 0 runs


@dataclass(frozen=True)
class CounterfactualPlan(Settings):
    """The grid: removal orders, numbers of removed classes (0, the full source, always added) and seeds
    ``0 .. seeds-1``. Validated and normalised at construction (orders deduplicated, ks sorted with 0)."""

    orders: tuple[str, ...] = setting(ORDERS, "Removal orders, comma-separated: bottom (the k most detrimental "
                                              "classes), top (the k most helpful), random (k random classes, a "
                                              "baseline).", choices=ORDERS)
    ks: tuple[int, ...] = setting((25,), "Numbers of removed classes, comma-separated, fixed before anything trains; "
                                         "0 (the full source) is always added.", min=0)
    seeds: int = setting(3, "Training seeds per grid point, fixed in the plan; intervals and the champion's gate are "
                            "over seeds (a champion needs at least --min-seeds).", min=1)

    def check(self) -> None:
        if not self.orders:
            raise ConfigError(f"give at least one removal order; choose from {', '.join(ORDERS)}, e.g. "
                              "--orders bottom,top,random")
        object.__setattr__(self, "orders", tuple(dict.fromkeys(self.orders)))
        object.__setattr__(self, "ks", tuple(sorted({0, *self.ks})))

    def validate(self, n_classes: int) -> "CounterfactualPlan":
        """Refuse ks that would remove every one of the source's ``n_classes`` classes."""
        if max(self.ks) >= n_classes:
            raise ConfigError(f"k={max(self.ks)} would remove every one of the {n_classes} source "
                              f"classes; choose ks below {n_classes}")
        return self

    def points(self) -> list[tuple[str, int, int]]:
        """``(order, k, seed)`` for every run: the full source first, then k ascending."""
        pts = [(FULL, 0, s) for s in range(self.seeds)]
        for k in self.ks:
            if k > 0:
                pts += [(o, k, s) for o in self.orders for s in range(self.seeds)]
        return pts


@dataclass(frozen=True)
class EvidenceRule(Settings):
    """When a pruned source may become the champion, and when a ranking counts as unstable."""

    min_seeds: int = setting(3, "Seeds per grid point a champion needs: a pruned source becomes champion only when "
                                "its paired gain on the held-out selection half of the validation split has a "
                                "confidence interval above zero over at least this many seeds.", min=3)
    confidence: float = setting(0.95, "Family-wise confidence of the champion's gate, over the pruned candidates "
                                      "(Bonferroni) and the looks at one selection half.", above=0.5, max=0.999)
    stability_threshold: float = setting(0.5, "A class ranking whose split-half Spearman (two disjoint halves of the "
                                              "runs) is below this is called unstable: its removed classes are "
                                              "largely noise, and every step says so.", min=0, max=1)

    def look_alpha(self, look: int) -> float:
        """The family-wise error look ``look`` (1, 2, ...) on one selection half may spend: ``alpha / 2**look``."""
        if look < 1:
            raise ValueError(f"looks are numbered from 1, got {look}")
        return (1 - self.confidence) / 2 ** look
