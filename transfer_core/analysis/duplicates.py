"""Near-duplicate search between image sets: exact copies by hash, near copies by cosine.

Exact copies are found by hashing every image's bytes (``(N, 3, R, R)`` uint8), so they are
always reported, whatever the threshold. Near copies are nearest neighbours by cosine
similarity of small mean-centred thumbnails (``THUMB`` pixels a side), computed as float32
matrix products in chunks with torch, so 10,000 x 50,000 images take seconds on a CPU.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

THUMB = 8  # thumbnail side for the cosine search: 3 * 8 * 8 = 192 numbers per image
CHUNK = 512  # query images per matrix product: the block is CHUNK x n_reference floats


def image_hashes(images: torch.Tensor) -> list[bytes]:
    """A 16-byte digest of every image ``(N, ...)`` uint8 (equal digests = identical pixels)."""
    flat = images.reshape(len(images), -1).contiguous().numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def exact_matches(queries: torch.Tensor, reference: torch.Tensor) -> list[tuple[int, int]]:
    """Every pair ``(query index, reference index)`` of pixel-identical images, sorted."""
    if queries.shape[1:] != reference.shape[1:]:
        raise ValueError(f"image shapes differ: {tuple(queries.shape[1:])} vs {tuple(reference.shape[1:])}")
    index: dict[bytes, list[int]] = {}
    for j, digest in enumerate(image_hashes(reference)):
        index.setdefault(digest, []).append(j)
    pairs = [(i, j) for i, digest in enumerate(image_hashes(queries)) for j in index.get(digest, ())]
    return sorted(pairs)


def thumbnails(images: torch.Tensor, side: int = THUMB) -> torch.Tensor:
    """Unit-norm, mean-centred float thumbnails ``(N, 3 * side * side)`` for cosine similarity.

    Flat images (no contrast) become zero vectors: they match nothing but exact copies.
    """
    out = []
    for chunk in images.split(4096):
        x = F.adaptive_avg_pool2d(chunk.float(), side).reshape(len(chunk), -1)
        x = x - x.mean(1, keepdim=True)
        out.append(x / x.norm(dim=1, keepdim=True).clamp_min(1e-3 * x.shape[1] ** 0.5))
    return torch.cat(out) if out else torch.zeros(0, 3 * side * side)


def nearest(queries: torch.Tensor, reference: torch.Tensor, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """For unit vectors ``queries (Q, D)`` and ``reference (R, D)``: the index ``(Q,)`` and cosine
    similarity ``(Q,)`` of each query's nearest reference vector."""
    index = np.zeros(len(queries), np.int64)
    similarity = np.full(len(queries), -np.inf, np.float32)
    if len(reference) == 0:
        return index, similarity
    ref_t = reference.float().T.contiguous()
    for lo in range(0, len(queries), chunk):
        best = (queries[lo:lo + chunk].float() @ ref_t).max(dim=1)
        index[lo:lo + chunk] = best.indices.numpy()
        similarity[lo:lo + chunk] = best.values.numpy()
    return index, similarity


@dataclass
class DuplicateSearch:
    """Nearest source image of every query: ``index``, cosine ``similarity`` and ``exact`` ``(Q,)``,
    plus every exact pair (a query can have several exact copies)."""

    index: np.ndarray
    similarity: np.ndarray
    exact: np.ndarray
    exact_pairs: list[tuple[int, int]]


def search(queries: torch.Tensor, reference: torch.Tensor) -> DuplicateSearch:
    """Exact copies of every query in ``reference`` and its nearest neighbour by thumbnail cosine."""
    pairs = exact_matches(queries, reference)
    index, similarity = nearest(thumbnails(queries), thumbnails(reference))
    exact = np.zeros(len(queries), bool)
    for i, j in pairs:
        if not exact[i]:
            index[i], similarity[i], exact[i] = j, 1.0, True
    return DuplicateSearch(index, similarity, exact, pairs)
