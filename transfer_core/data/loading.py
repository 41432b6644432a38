"""Datasets as uint8 tensors, decoded once and cached.

Following airbench, a dataset is one ``uint8`` image tensor ``(N, 3, R, R)`` plus an
``int64`` label tensor ``(N,)``; a class subset is an index into those tensors. Each
(dataset, split, resolution) is decoded once into ``<cache>/tensors/*.pt`` and loaded from
there afterwards; CIFAR splits are also cached at their own 32 px, so that another
resolution (the analysis's duplicate search reads 32 px) costs a resize, not a decode.

Dataset specs:
  ``cifar10`` / ``cifar100``     an ImageFolder tree ``<root>/<name>/{train,test}/<class>/``
                                 or an archive ``<root>/<name>.tar.gz`` under the data root
                                 (:attr:`DataDirs.root`: ``--data-root`` or ``$TRANSFER_CORE_DATA``
                                 on the command line); with no data root, torchvision's downloader.
  ``imagefolder:<path>``         ``<path>/{train,test}`` (``val`` stands in for ``test``).
  ``synthetic-source`` / ``synthetic-target``  generated data with planted structure, see
                                 :mod:`transfer_core.data.synthetic`.
A spec is parsed once, by :class:`transfer_core.config.DataSpec`. Where data is read from and
cached is a :class:`~transfer_core.data.images.DataDirs` the entry point resolves; nothing here
reads the environment.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transfer_core.config import IMAGEFOLDER, DataConfig, DataSpec
from transfer_core.data.images import (IMAGE_SUFFIXES, DataDirs, DataError, ImageSet, center_square, channel_stats,
                                       decode_image, resize)
from transfer_core.data.synthetic import make_synthetic

log = logging.getLogger(__name__)
CACHE_VERSION = "v1"


@dataclass
class TransferData:
    """Everything one run reads: the source and the target's train/val/test splits."""

    source: ImageSet  # sampled to data.source_images_per_class; a StreamedSource when data.source_store streams
    target_train: ImageSet
    target_val: ImageSet
    target_test: ImageSet  # the full test split, in its original order
    # (mean, std), each (3,), of every sampled source image: one input normalisation for every
    # class mask, so that it is not a mask-dependent effect mixed into the influences
    source_norm: tuple[torch.Tensor, torch.Tensor] | None = None

    def __post_init__(self):
        if self.source_norm is None:
            self.source_norm = self.source.norm() if hasattr(self.source, "norm") else channel_stats(self.source.images)


def check_data_root(data_root: str | os.PathLike | None) -> Path | None:
    """The data root as a path, checked: one sentence when it is missing or empty; None stays None (download)."""
    if not data_root:
        return None
    path = Path(data_root).expanduser()
    if not path.is_dir():
        raise DataError(f"data root {str(path)!r} does not exist; pass --data-root (or set "
                        "TRANSFER_CORE_DATA) to a folder holding cifar10.tar.gz / cifar100.tar.gz "
                        "or their extracted trees")
    if not any(path.iterdir()):
        raise DataError(f"data root {str(path)!r} is empty; put cifar10.tar.gz / cifar100.tar.gz "
                        "or their extracted trees there")
    return path


def load_split(spec: str, split: str, resolution: int, dirs: DataDirs = DataDirs()) -> ImageSet:
    """Load one split (train, test; val where the dataset has one) at ``resolution`` pixels, decoding it once
    (into ``dirs.cache``)."""
    parsed = DataSpec.parse(spec)
    if split not in ("train", "test") and not (split == "val" and parsed.has_own_validation):
        raise ValueError(f"split must be 'train' or 'test' (or 'val' for a dataset with its own), got {split!r}")
    if parsed.kind == "synthetic":
        return make_synthetic(spec, split, resolution)
    root = check_data_root(dirs.root) if parsed.kind == "cifar" else None
    cached = _cache_file(dirs, spec, root, split, resolution)
    if cached.is_file():
        return ImageSet(**torch.load(cached, weights_only=False))
    native = _cache_file(dirs, spec, root, split, "native")
    if native.is_file():  # decoded before at another resolution: resizing is all that is left
        splits = {split: ImageSet(**torch.load(native, weights_only=False))}
    elif parsed.kind == "cifar":  # small images: their decoded pixels are cached too (30 MB for 10,000)
        splits = _decode_cifar(spec, split, root, dirs)
        for name, images in splits.items():
            _save(images, _cache_file(dirs, spec, root, name, "native"))
    else:
        splits = {split: _decode_folder(_imagefolder_split(Path(parsed.path), split))}
    for name, images in splits.items():  # an archive is read once for all of its splits
        images.images = resize(images.images, resolution)
        _save(images, _cache_file(dirs, spec, root, name, resolution))
    return splits[split]


def _cache_file(dirs: DataDirs, spec: str, root: Path | None, split: str, resolution: int | str) -> Path:
    key = hashlib.sha256(f"{CACHE_VERSION}|{spec}|{root}|{split}|{resolution}".encode()).hexdigest()[:16]
    label = spec.replace(":", "_").replace("/", "_")[-40:]
    return dirs.cache_path("tensors") / f"{label}-{split}-{resolution}px-{key}.pt"


def _save(images: ImageSet, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(vars(images), tmp)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees a half-written file


def _decode_cifar(name: str, split: str, root: Path | None, dirs: DataDirs) -> dict[str, ImageSet]:
    """``{split: images}``: the split asked for; from an archive, every split in it (one pass over the file)."""
    if root is None:
        return {split: _download_cifar(name, split, dirs)}
    tree = root / name / split
    if tree.is_dir():
        return {split: _decode_folder(tree)}
    archive = root / f"{name}.tar.gz"
    if not archive.is_file():
        raise DataError(f"neither {tree} nor {archive} exists; point --data-root at the folder "
                        f"holding {name}.tar.gz")
    splits = _read_archive(archive, name)
    if split not in splits:
        raise DataError(f"archive {archive} has no {name}/{split}/ folder; "
                        "it should hold <name>/{{train,test}}/<class>/<image>")
    return {s: _decode_items(items, f"{archive}:{name}/{s}") for s, items in splits.items()}


def _read_archive(archive: Path, name: str) -> dict[str, dict[str, list[tuple[str, bytes]]]]:
    """The encoded images under ``<name>/<split>/<class>/`` of a .tar.gz, read in one pass without extracting.

    Returns ``{split: {class: [(file name, bytes), ...]}}`` for the splits ``train`` and
    ``test``. Reading in memory spares writing and re-reading 60,000 small files (about 20 s of
    the first use of a CIFAR archive).
    """
    splits: dict[str, dict[str, list[tuple[str, bytes]]]] = {}
    log.info("reading %s (once; its splits are cached afterwards)", archive)
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                parts = member.name.split("/")
                if (member.isfile() and len(parts) == 4 and parts[0] == name and parts[1] in ("train", "test")
                        and Path(parts[3]).suffix in IMAGE_SUFFIXES):
                    splits.setdefault(parts[1], {}).setdefault(parts[2], []).append(
                        (parts[3], tar.extractfile(member).read()))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"archive {archive} is corrupt or unreadable ({exc}); "
                        "replace it with a good copy") from None
    return splits


def _imagefolder_split(path: Path, split: str) -> Path:
    candidates = [path / split] + ([path / "val"] if split == "test" else [])
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DataError(f"image folder {path} has no {split}/ subfolder; expected "
                    f"{path}/train/<class>/<image> and {path}/test/<class>/<image> (or val/)")


def _decode_folder(tree: Path) -> ImageSet:
    class_names = sorted(p.name for p in tree.iterdir() if p.is_dir())
    items = {name: [(p.name, p) for p in sorted((tree / name).iterdir()) if p.suffix in IMAGE_SUFFIXES]
             for name in class_names}
    return _decode_items(items, str(tree))


def _decode_items(items: dict[str, list[tuple[str, bytes | Path]]], where: str) -> ImageSet:
    """Decode ``{class: [(file name, bytes or path), ...]}`` into an ImageSet: classes and files in name order."""
    class_names = sorted(items)
    files, labels, encoded = [], [], []
    for label, name in enumerate(class_names):
        for file_name, data in sorted(items[name], key=lambda item: item[0]):
            files.append(file_name)
            labels.append(label)
            encoded.append(data)
    if not files:
        raise DataError(f"no images found under {where}; expected <class>/<image> subfolders")
    log.info("decoding %d images from %s (once; cached afterwards)", len(files), where)
    images = []
    with warnings.catch_warnings():  # torchvision 0.29 warns at every call that its decoders are deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        for file_name, data in zip(files, encoded):
            try:
                images.append(decode_image(data.read_bytes() if isinstance(data, Path) else data))
            except (OSError, RuntimeError) as exc:
                raise DataError(f"could not decode image {file_name!r} under {where} ({exc}); "
                                "remove or replace the broken file") from None
    if len({tuple(x.shape) for x in images}) > 1:  # ImageNet-style trees: square-crop to the smallest side first
        images = [center_square(x) for x in images]
        side = min(x.shape[-1] for x in images)
        images = [resize(x[None], side)[0] for x in images]
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.long), class_names,
                    [f"{class_names[y]}/{Path(f).stem}" for f, y in zip(files, labels)])


def _download_cifar(name: str, split: str, dirs: DataDirs) -> ImageSet:
    import torchvision
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        ds = cls(root=str(dirs.cache_path("torchvision")), train=(split == "train"), download=True)
    except Exception as exc:  # no network: say how to use local data instead
        raise DataError(f"could not download {name} ({exc}); pass --data-root (or set "
                        f"TRANSFER_CORE_DATA) to a folder holding {name}.tar.gz") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(ds.targets, dtype=torch.long)
    return ImageSet(images, labels, list(ds.classes),
                    [f"{ds.classes[y]}/{split}_{i:05d}" for i, y in enumerate(ds.targets)])


def sample_per_class(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of at most ``per_class`` examples of every class, chosen by ``seed``, sorted."""
    if per_class <= 0:
        return torch.arange(len(labels))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    shuffled = labels[order]
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        keep[order[shuffled == c][:per_class]] = True
    return keep.nonzero().squeeze(1)


def validation_halves(labels, seed: int) -> np.ndarray:
    """Split the validation examples into two halves, class by class: ``(n_val,)`` bool, True = ranking half.

    Choices that read validation data use disjoint halves: the class ranking is fitted on the
    *ranking* half (True), and the pruned source is chosen and gated on the *selection* half
    (False), so nothing is scored on the examples it was chosen on. A pure function of the
    labels and ``seed``.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 17])
    ranking = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        ranking[members[: (len(members) + 1) // 2]] = True
    return ranking


def load_source(config: DataConfig, split: str = "train", dirs: DataDirs = DataDirs()):
    """The source's ``split`` as the runs read it: an :class:`ImageSet` decoded in memory, or, when
    ``source_store`` streams, a :class:`~transfer_core.data.stream.StreamedSource` (nothing decoded).
    The train split is not sampled here (:func:`load_transfer_data` samples it)."""
    if config.source_store == "memory":
        return load_split(config.source, split, config.resolution, dirs)
    return streamed_source(config, split, dirs)


def load_transfer_data(config: DataConfig, dirs: DataDirs = DataDirs()) -> TransferData:
    """Source (sampled per class), and the target's train / val / test splits.

    The validation split is the target's own when it ships one (:attr:`DataSpec.has_own_validation`), else
    ``val_fraction`` of the (first ``target_train_images``, shuffled) train images. With
    ``source_store`` jpeg or raw the source is a :class:`~transfer_core.data.stream.StreamedSource`
    read from a prepared copy (made on first use), never decoded whole; the target is read at
    ``target_resolution`` (default: ``resolution``).
    """
    if config.source_store == "memory":
        source = load_split(config.source, "train", config.resolution, dirs)
        source = source.select(sample_per_class(source.labels, config.source_images_per_class,
                                                config.split_seed))
    else:
        source = streamed_source(config, "train", dirs)
    side = config.target_resolution or config.resolution
    train = load_split(config.target, "train", side, dirs)
    test = load_split(config.target, "test", side, dirs)
    if DataSpec.parse(config.target, "data.target").has_own_validation:
        return TransferData(source, train, load_split(config.target, "val", side, dirs), test)
    train_rows, val_rows = carve_validation(config, len(train))
    return TransferData(source, train.select(train_rows), train.select(val_rows), test)


def carve_validation(config: DataConfig, n_train: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_rows, val_rows)``: which of the target's ``n_train`` train images train the probe and which
    validate, each sorted. A pure function of ``data.split_seed``, ``target_train_images`` and
    ``val_fraction`` (never of the resolution), for targets that ship no validation split."""
    gen = torch.Generator().manual_seed(config.split_seed + 1)
    order = torch.randperm(n_train, generator=gen)
    if config.target_train_images:
        order = order[:config.target_train_images]
    n_val = max(1, int(round(config.val_fraction * len(order))))
    if len(order) - n_val < 1:
        raise DataError(f"target {config.target} has too few train images ({len(order)}) "
                        "for a train/validation split; lower data.val_fraction")
    return order[n_val:].sort().values, order[:n_val].sort().values


def validation_images(config: DataConfig, resolution: int, dirs: DataDirs) -> tuple[ImageSet, np.ndarray]:
    """The target's validation split at ``resolution`` px and its rows ``(n_val,)`` int64 in the split it comes
    from (the target's own validation split, or its train split when carved from it)."""
    if DataSpec.parse(config.target, "data.target").has_own_validation:
        val = load_split(config.target, "val", resolution, dirs)
        return val, np.arange(len(val), dtype=np.int64)
    train = load_split(config.target, "train", resolution, dirs)
    _, rows = carve_validation(config, len(train))
    return train.select(rows), rows.numpy().astype(np.int64)


def prepare_source(config: DataConfig, dirs: DataDirs, workers: int | None = None, progress: bool = True) -> list:
    """Prepare the image-folder source of ``config`` for streaming, ahead of the runs: its train split
    and its test (or val) split when it has one, in ``config.source_store``'s format. Returns the
    prepared folders; each is made once (later calls, and other processes, find it)."""
    from transfer_core.data.prepared import PrepareSpec, prepare

    if DataSpec.parse(config.source).kind != IMAGEFOLDER or config.source_store == "memory":
        raise DataError(f"only an image-folder source streamed from disk is prepared (data.source="
                        f"{config.source}, data.source_store={config.source_store}); set "
                        "data.source=imagefolder:/path and data.source_store=jpeg or raw")
    root = Path(DataSpec.parse(config.source).path)
    spec = PrepareSpec(config.source_store, resolution=config.resolution if config.source_store == "raw" else None)
    splits = ["train"] + [s for s in ("test", "val") if (root / s).is_dir()][:1]
    return [prepare(_imagefolder_split(root, s), spec, root=dirs.cache_path("prepared"), workers=workers,
                    progress=progress) for s in splits]


def streamed_source(config: DataConfig, split: str = "train", dirs: DataDirs = DataDirs()):
    """The ``split`` of an image-folder source as a :class:`~transfer_core.data.stream.StreamedSource`:
    prepared on first use (``transfer-core prepare`` does it ahead), the train split sampled per class."""
    from transfer_core.data.prepared import PrepareSpec, prepare
    from transfer_core.data.stream import StreamedSource

    tree = _imagefolder_split(Path(DataSpec.parse(config.source).path), split)
    spec = PrepareSpec(config.source_store, resolution=config.resolution if config.source_store == "raw" else None)
    source = StreamedSource.open(prepare(tree, spec, root=dirs.cache_path("prepared")), resolution=config.resolution,
                                 order_seed=config.split_seed)
    if split == "train" and config.source_images_per_class:
        rows = sample_per_class(source.labels, config.source_images_per_class, config.split_seed).numpy()
        source = StreamedSource(source.prepared, rows, config.resolution, config.split_seed)
    return source
