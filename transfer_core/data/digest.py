"""Content digests of image sets: what a run trained on, as a short hash of pixels and labels.

A class subset's digest is built from one digest per source class, computed once per loaded
source (one pass over the images), so the digest of any mask costs microseconds:

    digests = class_digests(source)                 # (n_classes,) hex strings
    subset_digest(digests, mask)                    # same kept classes and images -> same digest

The validation split and its two halves (:func:`~transfer_core.data.loading.validation_halves`)
have digests too (:func:`validation_digests`): a step that chooses on one half checks that its
half is the one another step recorded, instead of recomputing it silently. Those digests are of the
pixels at the run's resolution; what was *looked at* is named by :func:`selection_half_key`, the
identity of the selection half's images whatever the resolution or the tracking store (the key of
the look ledger, :mod:`transfer_core.counterfactual.looks`).
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import torch

from transfer_core.config import DataConfig
from transfer_core.data.images import DataDirs, ImageSet
from transfer_core.data.loading import TransferData, load_transfer_data, validation_halves, validation_images

DIGEST_CHARS = 12  # hex characters kept: 48 bits, like the tool's other ids (MLflow allows up to 36)
KEY_RESOLUTION = 32  # px: the selection half's images are named by their pixels at this size, whatever a run reads
KEY_VERSION = "selection-half-v1"


def _update(h, images: torch.Tensor, labels: torch.Tensor) -> None:
    h.update(np.ascontiguousarray(images.numpy()).tobytes())
    h.update(labels.numpy().astype("<i8").tobytes())


def class_digests(images: ImageSet) -> list[str]:
    """Per class ``c``: sha256 of its name and its images ``(n_c, 3, R, R)`` in set order (full hex).

    A streamed source (:class:`~transfer_core.data.stream.StreamedSource`) gives its own, from the
    prepared index's file hashes: O(number of images), no pixel is decoded.
    """
    if not isinstance(images, ImageSet):
        return images.class_digests()
    out = []
    for c, name in enumerate(images.class_names):
        h = hashlib.sha256(name.encode() + b"\0")
        index = (images.labels == c).nonzero().squeeze(1)
        _update(h, images.images[index], images.labels[index])
        out.append(h.hexdigest())
    return out


def subset_digest(digests: list[str], mask: np.ndarray) -> str:
    """Digest of the kept classes ``mask (n_classes,)`` bool: changes with any kept class or image."""
    kept = np.flatnonzero(np.asarray(mask, dtype=bool))
    return hashlib.sha256(",".join(digests[c] for c in kept).encode()).hexdigest()[:DIGEST_CHARS]


def set_digest(images: ImageSet) -> str:
    """Digest of a whole image set: its class names, images and labels in order."""
    h = hashlib.sha256("\0".join(images.class_names).encode() + b"\0")
    _update(h, images.images, images.labels)
    return h.hexdigest()[:DIGEST_CHARS]


def half_digest(validation_digest: str, half: str, members: np.ndarray) -> str:
    """Digest of one half (``"ranking"`` or ``"selection"``) of a validation split, from the split's digest
    and the half's members ``(n_val,)`` bool."""
    h = hashlib.sha256(f"{validation_digest}|{half}|".encode())
    h.update(np.packbits(np.asarray(members, dtype=bool)).tobytes())
    return h.hexdigest()[:DIGEST_CHARS]


def validation_digests(val: ImageSet, split_seed: int) -> dict[str, str]:
    """Digests of the validation split and of its ranking and selection halves.

    ``{"validation_digest", "ranking_half_digest", "selection_half_digest"}``: a half's digest
    changes with any image or label of the split, and with which examples fall in that half.
    """
    whole = set_digest(val)
    ranking = validation_halves(val.labels.numpy(), split_seed)
    return {"validation_digest": whole, "ranking_half_digest": half_digest(whole, "ranking", ranking),
            "selection_half_digest": half_digest(whole, "selection", ~ranking)}


def selection_half_key(config: DataConfig, dirs: DataDirs) -> str:
    """``half-<16 hex>``: which images the selection half of ``config``'s validation split holds.

    A sha256 of the target's class names and, for every selection-half example in order, its row in
    the split it comes from (the index), its label and its pixels at :data:`KEY_RESOLUTION` px (the
    content). The resolution a run reads (``data.resolution``) and the tracking store do not enter it,
    so a sweep at another resolution, or the same job in a new store, has the same key; another
    ``data.split_seed``, ``val_fraction``, ``target_train_images`` or other images give another.
    """
    images, rows = validation_images(config, KEY_RESOLUTION, dirs)
    members = ~validation_halves(images.labels.numpy(), config.split_seed)
    h = hashlib.sha256(f"{KEY_VERSION}|".encode() + "\0".join(images.class_names).encode() + b"\0")
    h.update(rows[members].astype("<i8").tobytes())
    index = torch.from_numpy(np.flatnonzero(members))
    _update(h, images.images[index], images.labels[index])
    return "half-" + h.hexdigest()[:16]


def file_digest(path) -> str:
    """sha256 of a file's bytes (16 hex): logged beside an artifact, so a file replaced later is noticed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def transfer_digest(data: TransferData) -> str:
    """Digest of everything a run reads: the sampled source and the target's train, validation and test splits."""
    source = set_digest(data.source) if isinstance(data.source, ImageSet) else hashlib.sha256(
        ",".join(class_digests(data.source)).encode()).hexdigest()[:DIGEST_CHARS]
    parts = [source, *(set_digest(part) for part in (data.target_train, data.target_val, data.target_test))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@lru_cache(maxsize=8)
def data_digest(config: DataConfig, dirs: DataDirs = DataDirs()) -> str:
    """The content digest of the data ``config`` gives (pixels and labels, never file sizes or times):
    what the key of a step that trains on it holds. Loads the data once per process and config."""
    return transfer_digest(load_transfer_data(config, dirs))
