"""Attribution: class influences from a handful of models, by TRAK-style gradient attribution through the transfer.

Instead of retraining thousands of models on random halves of the source, differentiate a few
(TRAK, arXiv 2303.14186, applied through the transfer as in MadryLab/trak_transfer):

    from transfer_core.attribution import Attributor, AttributionSettings, train_member
    att = Attributor(data.source, AttributionSettings(proj_dim=1024), save_dir="outputs/attr")
    ranking = validation_halves(data.target_val.labels.numpy(), config.data.split_seed)   # (n_val,) bool
    att.add_targets("validation", data.target_val, groups=np.where(ranking, 0, -1), group_names=["ranking"])
    att.add_targets("test", data.target_test, per_example=[9609])
    for m in range(M):
        if not att.done(m):                                   # resumable: one file per model
            att.featurize(m, train_member(config, data, "full", m))
    result = att.finalize()
    result.class_ranking("validation", split="validation-ranking-half")  # class_influence.csv format
    result.top_sources("test", k=10)       # per per-example target: its top source images (index, file, score)
    result.cpu_seconds()                   # {"train", "featurize", "total"}: process CPU seconds

- source side: per-example gradients of the *pretraining* output (TRAK's margin under the source head) with
  respect to the backbone, for every attributed source image, randomly projected to k dimensions (``Phi``);
- target side: the gradient of the *transferred* model's target margin with respect to the same backbone;
- ``score(t, i) = phi_t^T (Phi^T Phi)^-1 phi_i``, weighted by TRAK's ``1 - p_i`` and averaged over the models.

**Positive = including the source image (class) helps the target.** Pure computation: no MLflow, no CLI.
Modules: ``gradients`` (per-example gradients: layerwise, functional, naive), ``projection`` (seeded
projections), ``kernel`` (the solve), ``ensemble`` (which models, training them), ``front`` (the resumable
:class:`Attributor`), ``scores`` (the :class:`Attribution`: rankings, bootstrap, split-half, top images).
"""
from transfer_core.attribution.ensemble import KINDS, Member, member_from_result, member_sources, train_member
from transfer_core.attribution.front import AttributionSettings, Attributor, TargetSet
from transfer_core.attribution.gradients import GRADIENTS, OUTPUTS, attributed_parameters, margin, out_to_loss
from transfer_core.attribution.kernel import Kernel
from transfer_core.attribution.projection import PROJECTORS
from transfer_core.attribution.scores import Attribution, TargetScores, spearman

__all__ = ["Attributor", "AttributionSettings", "TargetSet", "Attribution", "TargetScores", "Member", "KINDS",
           "train_member", "member_from_result", "member_sources", "GRADIENTS", "OUTPUTS", "PROJECTORS", "Kernel",
           "attributed_parameters", "margin", "out_to_loss", "spearman"]
