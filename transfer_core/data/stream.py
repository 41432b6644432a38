"""Class-subset streaming from a prepared copy (:mod:`~transfer_core.data.prepared`), shared by a pack.

**A model's epoch** is its kept images, each once, in a seeded uniform order: the order of an
epoch is one permutation of every image of the source, drawn from ``(sweep seed, epoch)``, and a
model reads that permutation's subsequence of its kept images (a uniform shuffle of them). The
order does not depend on the model's own seed (which draws its initial weights and its crops and
flips), so a model reads the same images in the same order whether it trains alone or in a pack:
a pack's models share their data order, as common random numbers.

**One pass for a pack.** :class:`SharedStream` walks the permutation in chunks, decodes each image
that at least one member keeps, once, in a pool of threads a bounded number of chunks ahead, and
hands it to every member that keeps its class; a member's batches are consecutive slices of its
own subsequence. Members of a pack keep as many images (so they step together); a step is
yielded when every member has its next batch. Memory holds the index arrays, a few decoded
chunks and each member's unfinished batches, whatever the size of the source.

    source = StreamedSource.open(prepared_folder, rows, resolution=64, order_seed=0)
    stream = SharedStream(source, masks, batch_size=256)
    for step in stream.epoch(0):          # one list per training step
        for images, labels in step:      # member j's batch: uint8 (B, 3, R, R), int64 (B,) relabelled 0..k-1
            ...
"""
from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from transfer_core.config import ConfigError
from transfer_core.data.images import channel_stats_of_batches
from transfer_core.data.prepared import PreparedSplit

CHUNK_IMAGES = 256  # images decoded per chunk of the shared pass
PREFETCH_CHUNKS = 2  # chunks decoded ahead of the one being routed
NORM_SAMPLE = 4096  # images the normalisation statistics are taken from
NORM_CHUNK = 64  # of which this many are decoded at a time


def epoch_permutation(n_images: int, order_seed: int, epoch: int) -> np.ndarray:
    """The order of epoch ``epoch`` over a source of ``n_images`` images ``(n_images,)``: a pure function."""
    return np.random.default_rng([int(order_seed), int(epoch), 29]).permutation(n_images)


@dataclass
class StreamedSource:
    """A source read from disk: the prepared split, the sampled rows of it, and how images are decoded.

    ``rows (n,)`` are the prepared rows this source uses (a per-class sample of them, or all),
    ``labels (n,)`` their classes. Behaves like :class:`~transfer_core.data.ImageSet` where the
    pipeline only needs labels and names; images are decoded on demand (:meth:`decode`).
    """

    prepared: PreparedSplit
    rows: np.ndarray
    resolution: int
    order_seed: int = 0
    workers: int | None = None
    labels: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.rows = np.asarray(self.rows, dtype=np.int64)
        self.labels = self.prepared.labels[torch.from_numpy(self.rows)]

    @classmethod
    def open(cls, folder, rows=None, resolution: int = 64, order_seed: int = 0, workers: int | None = None):
        prepared = PreparedSplit(folder)
        return cls(prepared, np.arange(len(prepared)) if rows is None else rows, resolution, order_seed, workers)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def class_names(self) -> list[str]:
        return self.prepared.class_names

    @property
    def n_classes(self) -> int:
        return self.prepared.n_classes

    @property
    def file_names(self) -> list[str]:
        return [self.prepared.file_names[r] for r in self.rows]

    def decode(self, positions, pool: ThreadPoolExecutor | None = None) -> torch.Tensor:
        """uint8 images ``(len(positions), 3, R, R)`` of the given positions (indices into ``rows``)."""
        return self.prepared.decode(self.rows[np.asarray(positions, dtype=np.int64)], self.resolution, pool)

    def class_digests(self) -> list[str]:
        """Per class: sha256 of its name and its sampled files' contents (from the prepared index; no pixels)."""
        shas, labels = self.prepared.file_sha[self.rows], self.labels.numpy()
        out = []
        for c, name in enumerate(self.class_names):
            h = hashlib.sha256(name.encode() + b"\0")
            h.update(shas[labels == c].tobytes())
            out.append(h.hexdigest())
        return out

    def norm(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std ``(3,)`` of a fixed sample of the source (the same for every mask),
        decoded once and kept in the prepared folder."""
        key = hashlib.sha256(self.rows.tobytes()).hexdigest()[:12]
        path = Path(self.prepared.folder) / f"norm-{self.resolution}px-{key}.npy"
        if path.is_file():
            mean, std = np.load(path)
        else:
            sample = np.sort(np.random.default_rng(0).permutation(len(self.rows))[:NORM_SAMPLE])
            with ThreadPoolExecutor(self.workers) as pool:  # a chunk at a time: memory does not grow with the sample
                chunks = (self.decode(sample[i:i + NORM_CHUNK], pool) for i in range(0, len(sample), NORM_CHUNK))
                mean, std = (t.numpy() for t in channel_stats_of_batches(chunks))
            tmp = path.with_suffix(f".{id(self)}.tmp.npy")
            np.save(tmp, np.stack([mean, std]))
            tmp.replace(path)
        return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)


class SharedStream:
    """The epochs of a pack of models on one streamed source: one decoding pass, each member its own batches.

    ``masks``: one ``(n_classes,)`` bool mask per member; every member must keep as many images.
    A member's labels are its kept classes renumbered ``0..k-1`` in class order, as
    :func:`transfer_core.data.class_rows` numbers them. ``decoded`` counts the images decoded
    so far (the work the pack shares).
    """

    def __init__(self, source: StreamedSource, masks: list[np.ndarray], batch_size: int, workers: int | None = None,
                 chunk: int = CHUNK_IMAGES, prefetch: int = PREFETCH_CHUNKS):
        self.source, self.batch_size, self.chunk, self.prefetch = source, batch_size, chunk, prefetch
        self.masks = np.stack([np.asarray(m, dtype=bool) for m in masks])  # (P, n_classes)
        labels = source.labels.numpy()
        self.keeps = self.masks[:, labels]  # (P, n): member p keeps position i
        counts = self.keeps.sum(axis=1)
        if len(set(counts.tolist())) != 1:
            raise ConfigError(f"the members of a streamed pack keep different numbers of images "
                              f"({sorted(set(counts.tolist()))}); pack models that keep as many, or train them apart")
        self.n_images = int(counts[0])
        relabel = np.cumsum(self.masks, axis=1) - 1  # (P, n_classes): class -> its index among the kept
        self.member_labels = relabel[:, labels]  # (P, n)
        self.workers = workers or source.workers
        self.decoded = 0

    def member_order(self, member: int, epoch: int) -> np.ndarray:
        """Positions member ``member`` reads in epoch ``epoch``: the epoch's permutation, its kept images only."""
        perm = epoch_permutation(len(self.source), self.source.order_seed, epoch)
        return perm[self.keeps[member, perm]]

    def epoch(self, epoch: int) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """The steps of one epoch: per step, every member's batch ``(uint8 (B, 3, R, R), int64 (B,))``."""
        perm = epoch_permutation(len(self.source), self.source.order_seed, epoch)
        perm = perm[self.keeps[:, perm].any(axis=0)]  # images no member keeps are never decoded
        n_members = len(self.masks)
        pending = [([], []) for _ in range(n_members)]  # per member: images and labels of its unfinished batch
        ready = [deque() for _ in range(n_members)]
        chunks = [perm[i:i + self.chunk] for i in range(0, len(perm), self.chunk)]
        with ThreadPoolExecutor(self.workers) as pool, ThreadPoolExecutor(1) as ahead:
            futures = deque(ahead.submit(self.source.decode, c, pool) for c in chunks[:self.prefetch])
            for i, positions in enumerate(chunks):
                images = futures.popleft().result()
                if i + self.prefetch < len(chunks):
                    futures.append(ahead.submit(self.source.decode, chunks[i + self.prefetch], pool))
                self.decoded += len(positions)
                for p in range(n_members):
                    mine = self.keeps[p, positions]
                    pending[p][0].append(images[torch.from_numpy(mine)])
                    pending[p][1].append(self.member_labels[p, positions[mine]])
                    self._cut(pending[p], ready[p], final=i == len(chunks) - 1)
                while all(ready):
                    yield [q.popleft() for q in ready]

    def _cut(self, pending, ready: deque, final: bool) -> None:
        """Move whole batches (and, at the end of the epoch, the remainder) from ``pending`` to ``ready``."""
        images, labels = torch.cat(pending[0]), np.concatenate(pending[1])
        cut = len(labels) if final else len(labels) - len(labels) % self.batch_size
        for start in range(0, cut, self.batch_size):
            ready.append((images[start:start + self.batch_size],
                          torch.from_numpy(labels[start:start + self.batch_size].astype(np.int64))))
        pending[0][:] = [images[cut:]]
        pending[1][:] = [labels[cut:]]
