"""The front object: featurize each model of an ensemble (resumable), then combine them.

    att = Attributor(data.source, AttributionSettings(proj_dim=1024), save_dir="outputs/attr")
    att.add_targets("test", data.target_test, groups=labels, group_names=classes, per_example=[9609])
    for i in range(M):
        if not att.done(i):
            att.featurize(i, train_member(config, data, "full", i))    # source and target gradients, kernel, scores
    result = att.finalize()                                            # an Attribution: rankings, top images

Per model, :meth:`Attributor.featurize` computes the projected per-example gradients ``Phi (n_m, k)`` of the
*pretraining* output (TRAK's margin under the source head) for each attributed source image, TRAK's
``Q = 1 - p`` for each, the kernel ``(Phi^T Phi)^-1`` (:class:`~transfer_core.attribution.kernel.Kernel`),
and the projected gradient of the *transferred* model's target margin with respect to the same backbone
parameters, summed over each target group (and per example for the ``per_example`` targets); it keeps
only their scores ``(n_m, groups)`` and ``(n_m, n_per_example)``. Each model's scores are one file under
``save_dir/models/``, written atomically: a killed run loses at most the model it was featurizing.
``metadata.json`` beside them records the settings, the source and the targets; a resumed attributor
whose settings or data differ is refused, naming what differs.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from transfer_core.attribution.ensemble import Member
from transfer_core.attribution.gradients import GRADIENTS, OUTPUTS, attributed_parameters
from transfer_core.attribution.kernel import Kernel
from transfer_core.attribution.probe import LinearProbe, refit_gradients
from transfer_core.attribution.projection import PROJECTORS
from transfer_core.attribution.scores import Attribution, TargetScores
from transfer_core.config import ConfigError
from transfer_core.data import ImageSet, set_digest
from transfer_core.train import pick_device

PROBES = ("fixed", "refit")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
SUM_CHUNK = 1024  # target images per backward pass of a summed gradient (no per-example memory)


@dataclass(frozen=True)
class AttributionSettings:
    """How an ensemble's models are featurized. Plain values, so a step can log them as params.

    proj_dim:         k, the projected gradient's dimension (TRAK: 2048-20480 on ImageNet; it must stay
                      below the number of source examples a model is attributed over, or set ``ridge``).
    projection:       ``gaussian`` | ``rademacher`` | ``identity`` (:data:`~.projection.PROJECTORS`).
    seed:             the projection of model ``m`` is seeded by ``(seed, m)``.
    params:           prefixes of the backbone parameters to attribute through (``("stages.1",)``: the last
                      stage of ``resnet_small_grid``); empty: the whole backbone (every parameter but ``head``).
    gradients:        ``layerwise`` | ``functional`` | ``naive`` (:data:`~.gradients.GRADIENTS`).
    chunk_size:       source (and per-example target) images per chunk of per-example gradients: memory is
                      about chunk_size x (largest layer's parameters + its unfolded input) floats.
    ridge:            ``lambda = ridge * mean(diag(Phi^T Phi))`` added to the kernel (TRAK: 0).
    dtype:            ``float32`` | ``float64``: networks, gradients and features.
    projection_dtype: the projection's matrix product: ``float32``, ``float64`` or ``bfloat16`` (5x faster on
                      CPUs with AMX, 0.3% relative error in the projected gradients; measured in BENCHMARKS.md).
    cache_mib:        projection rows kept on the device (else drawn again per chunk).
    target_output:    the transferred model's output that is attributed: ``margin`` (TRAK's) or ``prob``
                      (the true class's probability; the source side always uses TRAK's margin).
    probe:            ``fixed``: the target gradient holds the transferred head fixed (TRAK through the transfer);
                      ``refit``: the head re-fits to the changed backbone (:mod:`~.probe`; needs
                      :meth:`Attributor.add_probe`, fixed-feature transfer). Group scores only: per-example
                      target scores always hold the head fixed.
    """

    proj_dim: int = 1024
    projection: str = "gaussian"
    seed: int = 0
    params: tuple[str, ...] = ()
    gradients: str = "layerwise"
    chunk_size: int = 256
    ridge: float = 0.0
    dtype: str = "float32"
    projection_dtype: str = "float32"
    cache_mib: int = 512
    target_output: str = "margin"
    probe: str = "fixed"

    def __post_init__(self):
        object.__setattr__(self, "params", tuple(self.params))
        checks = [(self.projection in PROJECTORS, f"projection {self.projection!r}", ", ".join(PROJECTORS)),
                  (self.gradients in GRADIENTS, f"gradients {self.gradients!r}", ", ".join(GRADIENTS)),
                  (self.dtype in ("float32", "float64"), f"dtype {self.dtype!r}", "float32, float64"),
                  (self.projection_dtype in DTYPES, f"projection_dtype {self.projection_dtype!r}", ", ".join(DTYPES)),
                  (self.target_output in OUTPUTS, f"target_output {self.target_output!r}", ", ".join(OUTPUTS)),
                  (self.probe in PROBES, f"probe {self.probe!r}", ", ".join(PROBES))]
        for ok, what, choices in checks:
            if not ok:
                raise ConfigError(f"unknown attribution {what}; choose one of {choices}")
        if self.proj_dim < 1 or self.chunk_size < 1 or self.ridge < 0 or self.cache_mib < 0:
            raise ConfigError("attribution proj_dim and chunk_size must be >= 1, ridge and cache_mib >= 0; got "
                              f"{self.proj_dim}, {self.chunk_size}, {self.ridge}, {self.cache_mib}")


@dataclass
class TargetSet:
    """Target images scored against the source: ``groups (N,)`` assigns each example to one of
    ``group_names`` (-1: not scored); ``per_example (T,)`` indexes the examples scored one by one."""

    images: torch.Tensor  # (N, 3, R, R) uint8
    labels: torch.Tensor  # (N,) int64, in the target head's order
    groups: np.ndarray
    group_names: list[str]
    per_example: np.ndarray
    file_names: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        """What a resumed attributor must find unchanged: the images and labels (their digest), the groups and
        the per-example indices (listed)."""
        images = ImageSet(self.images, self.labels, [], [])
        return {"n": len(self.labels), "digest": set_digest(images), "group_names": list(self.group_names),
                "groups": [int(g) for g in self.groups], "per_example": [int(i) for i in self.per_example]}


class Attributor:
    """Featurizes an ensemble model by model and combines it (:meth:`finalize`); see the module docstring.

    ``source``: the source set every model's rows index (``(n_source, 3, R, R)`` uint8 with labels).
    ``save_dir``: where per-model scores and the metadata live (None: in memory only).
    ``device``: default :func:`~transfer_core.train.pick_device`.
    """

    def __init__(self, source: ImageSet, settings: AttributionSettings = AttributionSettings(),
                 save_dir: str | os.PathLike | None = None, device=None):
        if not isinstance(source, ImageSet):
            raise ConfigError("attribution needs the source in memory (data.source_store=memory)")
        self.source, self.settings = source, settings
        self.device = torch.device(device) if device is not None else pick_device()
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.targets: dict[str, TargetSet] = {}
        self._memory: dict[int, dict] = {}
        self.probe_data = None
        self._checked = False

    # -- configuration -------------------------------------------------------------------------------------------
    def add_targets(self, name: str, images: ImageSet, groups=None, group_names: list[str] | None = None,
                    per_example=None) -> None:
        """Score the target split ``images`` (e.g. the test split): the summed output of each group, and each
        example of ``per_example`` alone. Default groups: every example in one group, ``"all"``."""
        if not name.isidentifier():
            raise ConfigError(f"target name {name!r} must be an identifier (it names arrays in the saved scores)")
        n = len(images)
        groups = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
        group_names = list(group_names) if group_names is not None else ["all"]
        if groups.shape != (n,) or groups.max(initial=-1) >= len(group_names) or groups.min(initial=0) < -1:
            raise ConfigError(f"groups of target {name!r} must be (N,) = ({n},) ints in -1..{len(group_names) - 1}")
        per_example = np.asarray([] if per_example is None else per_example, dtype=np.int64).reshape(-1)
        if len(per_example) and (per_example.min() < 0 or per_example.max() >= n):
            raise ConfigError(f"per_example indices of target {name!r} must lie in 0..{n - 1}")
        self.targets[name] = TargetSet(images.images, images.labels, groups, group_names, per_example,
                                       list(images.file_names))
        self._checked = False

    def add_probe(self, images: ImageSet, weight_decay: float, label_smoothing: float = 0.0) -> None:
        """The target train split the transferred head was fitted on and its recipe (``config.transfer``'s
        ``weight_decay`` and ``label_smoothing``): needed by ``probe="refit"``."""
        self.probe_data = (images.images, images.labels, float(weight_decay), float(label_smoothing))
        self._checked = False

    def metadata(self) -> dict:
        out = {"settings": asdict(self.settings), "source": {"n": len(self.source), "digest": set_digest(self.source)},
               "targets": {name: t.describe() for name, t in self.targets.items()}}
        if self.settings.probe == "refit" and self.probe_data is not None:
            images, labels, weight_decay, label_smoothing = self.probe_data
            out["probe"] = {"digest": set_digest(ImageSet(images, labels, [], [])), "weight_decay": weight_decay,
                            "label_smoothing": label_smoothing}
        return out

    def _check_metadata(self) -> None:
        if self._checked or self.save_dir is None:
            return
        path = self.save_dir / "metadata.json"
        mine = json.loads(json.dumps(self.metadata()))
        if path.is_file():
            theirs = json.loads(path.read_text())
            differ = sorted(_differences(mine, theirs))
            if differ:
                raise ConfigError(f"{self.save_dir} holds an attribution made with other settings or data "
                                  f"({', '.join(differ)}); use another save_dir or the same settings")
        else:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            _write_json(path, mine)
        self._checked = True

    # -- per model ------------------------------------------------------------------------------------------------
    def _path(self, model_id: int) -> Path:
        return self.save_dir / "models" / f"model_{int(model_id):05d}.npz"

    def done(self, model_id: int) -> bool:
        """Whether model ``model_id``'s scores exist (in ``save_dir`` with these settings, or in memory)."""
        if self.save_dir is None:
            return model_id in self._memory
        self._check_metadata()
        return self._path(model_id).is_file()

    def featurize(self, model_id: int, member: Member) -> dict:
        """Featurize one model and keep its scores (see the module docstring); returns them as arrays:
        ``rows (n_m,)``, ``q (n_m,)``, ``sum__<target> (n_m, n_groups)``, ``example__<target> (n_m, T)``,
        and ``info`` (the member's info plus ``featurize_cpu_s``, the process CPU seconds of this call)."""
        if not self.targets:
            raise ConfigError("add at least one target split (add_targets) before featurizing")
        self._check_metadata()
        start = time.process_time()
        s, device, dtype = self.settings, self.device, DTYPES[self.settings.dtype]
        source_net = member.source_network.to(device, dtype).eval()
        target_net = member.target_network.to(device, dtype).eval()
        names = attributed_parameters(source_net, s.params)
        if [(n, p.shape) for n, p in source_net.named_parameters() if n in set(names)] != \
                [(n, p.shape) for n, p in target_net.named_parameters() if n in set(names)]:
            raise ConfigError("the source and target networks must share the attributed backbone parameters")
        grads_source = GRADIENTS[s.gradients](source_net, names)
        grads_target = GRADIENTS[s.gradients](target_net, names, s.target_output)
        proj_dim = None if s.projection == "identity" else s.proj_dim
        projector = PROJECTORS[s.projection](grads_source.n_params, proj_dim, (s.seed, int(model_id)), device,
                                             DTYPES[s.projection_dtype], s.cache_mib * 2**20)
        norm = member.norm

        mean, std = (v.to(device, dtype).view(1, 3, 1, 1) for v in norm)

        def inputs(images, index):  # normalised in the features' dtype (train.normalize works in float32)
            return (images[index].to(device, dtype) - mean) / std

        rows = member.rows.cpu()
        phi = torch.empty(len(rows), projector.proj_dim, dtype=torch.float64 if dtype == torch.float64 else
                          torch.float32, device=device)
        q = torch.empty(len(rows), dtype=torch.float64, device=device)
        for chunk in torch.arange(len(rows)).split(s.chunk_size):
            x, y = inputs(self.source.images, rows[chunk]), member.labels[chunk].to(device)
            phi[chunk.to(device)] = projector.project(grads_source.blocks(x, y), len(chunk)).to(phi.dtype)
            q[chunk.to(device)] = grads_source.out_to_loss(x, y).double()
        kernel = Kernel(phi, s.ridge)
        out = {"rows": rows.numpy(), "q": q.cpu().numpy()}
        group_chunks = []  # (target name, group index, a function yielding the group's chunks (x, y))
        for name, target in self.targets.items():
            for g in range(len(target.group_names)):
                members = torch.from_numpy(np.flatnonzero(target.groups == g))

                def chunks(target=target, members=members):
                    for chunk in members.split(SUM_CHUNK):
                        yield inputs(target.images, chunk), target.labels[chunk].to(device)
                group_chunks.append((name, g, chunks))
        if s.probe == "refit":
            if self.probe_data is None:
                raise ConfigError("probe='refit' needs the target train split the head was fitted on: add_probe")
            images, labels, weight_decay, label_smoothing = self.probe_data
            probe = LinearProbe(lambda r: inputs(images, r), labels.to(device), weight_decay, label_smoothing)
            sums = refit_gradients(target_net, names, probe, [c for _, _, c in group_chunks],
                                   OUTPUTS[s.target_output], SUM_CHUNK).to(phi.dtype)
        else:
            sums = phi.new_zeros(len(group_chunks), grads_target.n_params)
            for j, (_, _, chunks) in enumerate(group_chunks):
                for x, y in chunks():
                    sums[j] += grads_target.summed(x, y).to(phi.dtype)
        group_scores = kernel.scores(projector.project([(0, sums)], len(sums)).to(phi.dtype).T)  # (n_m, all groups)
        for name, target in self.targets.items():
            columns = [j for j, (owner, _, _) in enumerate(group_chunks) if owner == name]
            out[f"sum__{name}"] = group_scores[:, columns].cpu().numpy()
            examples = []
            for chunk in torch.from_numpy(target.per_example).split(s.chunk_size) if len(target.per_example) else ():
                x, y = inputs(target.images, chunk), target.labels[chunk].to(device)
                examples.append(projector.project(grads_target.blocks(x, y), len(chunk)).to(phi.dtype))
            per_example = torch.cat(examples) if examples else phi.new_zeros(0, projector.proj_dim)
            out[f"example__{name}"] = kernel.scores(per_example.T).reshape(len(rows), -1).cpu().numpy()
        info = {**member.info, "model_id": int(model_id), "n_attributed": int(len(rows)),
                "n_params": grads_source.n_params, "featurize_cpu_s": time.process_time() - start}
        out["info"] = info
        self._store(model_id, out)
        return out

    def _store(self, model_id: int, out: dict) -> None:
        if self.save_dir is None:
            self._memory[model_id] = out
            return
        path = self._path(model_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
        arrays = {k: v for k, v in out.items() if k != "info"}
        np.savez(tmp, info=np.array(json.dumps(out["info"])), **arrays)
        os.replace(tmp, path)

    def load(self, model_id: int) -> dict:
        if self.save_dir is None:
            return self._memory[model_id]
        with np.load(self._path(model_id)) as npz:
            out = {k: npz[k] for k in npz.files if k != "info"}
            out["info"] = json.loads(str(npz["info"]))
        return out

    def model_ids(self) -> list[int]:
        """Every model whose scores exist, ascending."""
        if self.save_dir is None:
            return sorted(self._memory)
        self._check_metadata()
        return sorted(int(p.stem.split("_")[1]) for p in (self.save_dir / "models").glob("model_*.npz"))

    # -- the ensemble ---------------------------------------------------------------------------------------------
    def finalize(self, model_ids=None) -> Attribution:
        """Combine the scores of ``model_ids`` (default: every featurized model) into an :class:`Attribution`."""
        ids = self.model_ids() if model_ids is None else [int(i) for i in model_ids]
        missing = [i for i in ids if not self.done(i)]
        if missing or not ids:
            raise ConfigError(f"models {missing or ids} are not featurized yet; featurize them first")
        loaded = [self.load(i) for i in ids]
        targets = {name: TargetScores(name, t.group_names, np.bincount(t.groups[t.groups >= 0],
                                                                       minlength=len(t.group_names)),
                                      t.per_example, [loaded_i[f"sum__{name}"] for loaded_i in loaded],
                                      [loaded_i[f"example__{name}"] for loaded_i in loaded],
                                      t.file_names)
                   for name, t in self.targets.items()}
        return Attribution(self.source.labels.numpy(), list(self.source.class_names), list(self.source.file_names),
                           [x["rows"] for x in loaded], [x["q"] for x in loaded], targets,
                           [x["info"] for x in loaded])


def _differences(mine: dict, theirs: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)

