"""A prepared copy of an image-folder split on disk: one file of images, index arrays, a manifest.

ImageNet-scale sources do not fit in memory decoded (about 16 GB at 64 px, 98 GB at 160 px).
:func:`prepare` turns ``<split>/<class>/<image>`` into a folder under the cache,
``<cache>/prepared/<name>-<key>/``:

``images.bin``
    every image in (class, file name) order: JPEG bytes with the longest side capped at
    ``max_side`` (format ``jpeg``), or uint8 pixels ``(3, R, R)``, centre square cropped and
    resized (format ``raw``: for ``R <= 64``, where decoding would cost more than it saves).
``index.npz``
    ``offsets (N+1,)`` into ``images.bin``, ``labels (N,)``, ``sizes (N, 2)`` the stored height and
    width, ``file_sha (N, 32)`` the sha256 of each source file.
``manifest.json``
    class names, file names, per-class digests, the format, and the tree's stat manifest.

Preparation runs in parallel (threads: the decoders release the GIL), shows a progress bar and
resumes: files are prepared in chunks written atomically (``chunks/NNNNN.*``) and skipped when
present; ``images.bin`` and ``index.npz`` are assembled at the end and ``manifest.json`` is
written last, so a folder without it is unfinished. Concurrent preparations of one key wait on
a lock file and then use the result: a worker never re-prepares what another has prepared.

**Keyed on the tree's content.** The key hashes each file's relative path, size and modification
time (one ``stat`` per file, no reading), with the format: a changed, added or removed file makes
another key, so a changed file is never served stale. A file rewritten with the same size and
modification time would not be noticed; :meth:`PreparedSplit.verify` re-hashes every file
against ``file_sha``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from transfer_core.config import ConfigError
from transfer_core.data.images import IMAGE_SUFFIXES, DataError, center_square, decode_image, resize

log = logging.getLogger(__name__)
PREPARED_VERSION = 1
FORMATS = ("jpeg", "raw")
RAW_MAX_RESOLUTION = 64  # above this a raw copy costs more disk than decoding saves
CHUNK_FILES = 256  # files per resumable chunk


@dataclass(frozen=True)
class PrepareSpec:
    """How a split is stored: ``jpeg`` (longest side at most ``max_side``) or ``raw`` pixels at ``resolution``."""

    format: str = "jpeg"
    max_side: int = 256
    quality: int = 90
    resolution: int | None = None  # raw only: the stored side

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ConfigError(f"unknown prepared format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.format == "raw" and not (self.resolution and 8 <= self.resolution <= RAW_MAX_RESOLUTION):
            raise ConfigError(f"a raw prepared copy stores pixels at 8 to {RAW_MAX_RESOLUTION} px, got resolution "
                              f"{self.resolution}; use the jpeg format above {RAW_MAX_RESOLUTION} px")
        if self.format == "jpeg" and not 32 <= self.max_side <= 4096:
            raise ConfigError(f"max_side must be between 32 and 4096 pixels, got {self.max_side}")
        if not 50 <= self.quality <= 100:
            raise ConfigError(f"JPEG quality must be between 50 and 100, got {self.quality}")


def scan_tree(split_dir: Path) -> tuple[list[str], list[tuple[str, int, int, int]]]:
    """Class names and ``(relative path, label, size, mtime_ns)`` of every image of a split, in storage order."""
    if not split_dir.is_dir():
        raise DataError(f"image folder {split_dir} does not exist; expected <tree>/<split>/<class>/<image>")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"no class folders under {split_dir}; expected {split_dir}/<class>/<image>")
    files = []
    for label, name in enumerate(classes):
        members = sorted(p for p in (split_dir / name).iterdir() if p.is_file() and p.suffix in IMAGE_SUFFIXES)
        if not members:
            raise DataError(f"class folder {split_dir / name} holds no image; remove the folder or add its images")
        for path in members:
            stat = path.stat()
            files.append((f"{name}/{path.name}", label, stat.st_size, stat.st_mtime_ns))
    return classes, files


def tree_key(files: list[tuple[str, int, int, int]], spec: PrepareSpec) -> str:
    """The key of a prepared copy: every file's path, size and modification time, and the format."""
    h = hashlib.sha256(json.dumps([PREPARED_VERSION, spec.format, spec.max_side, spec.quality, spec.resolution])
                       .encode())
    for rel, label, size, mtime in files:
        h.update(f"{rel}\0{label}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:16]


def prepared_folder(split_dir: Path, key: str, root: Path) -> Path:
    """Where the copy of ``split_dir`` with ``key`` lives under ``root`` (``<cache>/prepared`` of the entry point)."""
    label = "-".join(split_dir.resolve().parts[-2:]).replace(" ", "_")[-48:]
    return Path(root) / f"{label}-{key}"


def _encode(path: Path, spec: PrepareSpec) -> tuple[bytes, tuple[int, int], bytes]:
    """One file as stored: ``(bytes, (height, width), sha256 of the file)``; DataError names a broken file."""
    data = path.read_bytes()
    sha = hashlib.sha256(data).digest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            image = decode_image(data)  # (3, H, W) uint8
    except (OSError, RuntimeError) as exc:
        raise DataError(f"could not decode image {path} ({str(exc).splitlines()[0][:200]}); remove or replace "
                        "the broken file, then prepare again") from None
    if spec.format == "raw":
        pixels = resize(center_square(image)[None], spec.resolution)[0]
        return pixels.numpy().tobytes(), (spec.resolution, spec.resolution), sha
    h, w = image.shape[-2:]
    scale = min(1.0, spec.max_side / max(h, w))
    if scale < 1 or path.suffix.lower() not in (".jpg", ".jpeg"):
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if size != (h, w):
            image = torch.nn.functional.interpolate(image[None].float(), size=size, mode="bilinear",
                                                    antialias=True).round().clamp(0, 255).to(torch.uint8)[0]
        from torchvision.io import encode_jpeg
        data = encode_jpeg(image, quality=spec.quality).numpy().tobytes()
    return data, tuple(image.shape[-2:]), sha


def _write_chunk(folder: Path, number: int, split_dir: Path, files, spec: PrepareSpec, pool) -> None:
    encoded = list(pool.map(lambda f: _encode(split_dir / f[0], spec), files))
    blobs = [e[0] for e in encoded]
    tmp = folder / f"{number:05d}.tmp"
    with open(tmp.with_suffix(".bin.tmp"), "wb") as fh:
        for blob in blobs:
            fh.write(blob)
    np.savez(tmp.with_suffix(".npz.tmp.npz"), lengths=np.array([len(b) for b in blobs], np.int64),
             sizes=np.array([e[1] for e in encoded], np.int32).reshape(-1, 2),
             file_sha=np.frombuffer(b"".join(e[2] for e in encoded), np.uint8).reshape(-1, 32))
    os.replace(tmp.with_suffix(".bin.tmp"), folder / f"{number:05d}.bin")
    os.replace(tmp.with_suffix(".npz.tmp.npz"), folder / f"{number:05d}.npz")  # the chunk counts once this exists


def class_digests(classes: list[str], labels: np.ndarray, file_sha: np.ndarray) -> list[str]:
    """Per class: sha256 of its name and its files' contents, in storage order (full hex)."""
    out = []
    for c, name in enumerate(classes):
        h = hashlib.sha256(name.encode() + b"\0")
        h.update(file_sha[labels == c].tobytes())
        out.append(h.hexdigest())
    return out


def prepare(split_dir, spec: PrepareSpec = PrepareSpec(), *, root: Path, workers: int | None = None,
            progress: bool = True, after_chunk=None) -> Path:
    """Prepare ``split_dir`` (``<class>/<image>`` folders) once under ``root``; returns the prepared folder.

    Resumes an interrupted preparation; waits for another process preparing the same key.
    ``after_chunk(number)`` runs after each chunk is written (tests interrupt there).
    """
    split_dir = Path(split_dir)
    classes, files = scan_tree(split_dir)
    key = tree_key(files, spec)
    folder = prepared_folder(split_dir, key, root)
    if (folder / "manifest.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.with_name(folder.name + ".lock")):  # one preparer of a key at a time
        if (folder / "manifest.json").is_file():  # another process finished it while we waited
            return folder
        chunks = folder / "chunks"
        chunks.mkdir(parents=True, exist_ok=True)
        starts = range(0, len(files), CHUNK_FILES)
        todo = [n for n, _ in enumerate(starts) if not (chunks / f"{n:05d}.npz").is_file()]
        log.info("preparing %d images of %s into %s (%d of %d chunks left)", len(files), split_dir, folder,
                 len(todo), len(starts))
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool, \
                tqdm(total=len(files), initial=(len(starts) - len(todo)) * CHUNK_FILES if todo else len(files),
                     disable=not progress, desc=f"prepare {split_dir.name}", unit="img") as bar:
            for number in todo:
                part = files[number * CHUNK_FILES:(number + 1) * CHUNK_FILES]
                _write_chunk(chunks, number, split_dir, part, spec, pool)
                bar.update(len(part))
                if after_chunk is not None:
                    after_chunk(number)
        _assemble(folder, chunks, len(starts), classes, files, spec, key, split_dir)
        shutil.rmtree(chunks)
    return folder


def _assemble(folder: Path, chunks: Path, n_chunks: int, classes, files, spec: PrepareSpec, key: str,
              split_dir: Path) -> None:
    """Concatenate the chunks into ``images.bin`` and ``index.npz``, then write ``manifest.json`` (last)."""
    lengths, sizes, shas = [], [], []
    with open(folder / "images.bin.tmp", "wb") as out:
        for n in range(n_chunks):
            with np.load(chunks / f"{n:05d}.npz") as npz:
                lengths.append(npz["lengths"])
                sizes.append(npz["sizes"])
                shas.append(npz["file_sha"])
            with open(chunks / f"{n:05d}.bin", "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 24)
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
    labels = np.array([f[1] for f in files], np.int32)
    file_sha = np.concatenate(shas)
    np.savez(folder / "index.tmp.npz", offsets=offsets, labels=labels, sizes=np.concatenate(sizes), file_sha=file_sha)
    os.replace(folder / "images.bin.tmp", folder / "images.bin")
    os.replace(folder / "index.tmp.npz", folder / "index.npz")
    manifest = {"version": PREPARED_VERSION, "key": key, "tree": str(split_dir.resolve()),
                "format": spec.format, "max_side": spec.max_side, "quality": spec.quality,
                "resolution": spec.resolution, "classes": classes, "files": [f[0] for f in files],
                "stat": [[f[2], f[3]] for f in files], "class_digests": class_digests(classes, labels, file_sha)}
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, folder / "manifest.json")


class PreparedSplit:
    """A prepared folder, opened: index arrays in memory, images memory-mapped (nothing decoded up front).

    ``labels (N,)`` int64, ``class_names``, ``file_names``; :meth:`decode` gives uint8 images
    ``(n, 3, R, R)`` for any rows, centre square cropped and resized to ``R``.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        manifest_path = self.folder / "manifest.json"
        if not manifest_path.is_file():
            raise DataError(f"{self.folder} is not a finished prepared copy; run `transfer-core prepare` again")
        self.manifest = json.loads(manifest_path.read_text())
        self.manifest.pop("stat", None)  # the key's file stats: 150 B of Python objects an image, never read here
        with np.load(self.folder / "index.npz") as npz:
            self.offsets, self.sizes, self.file_sha = npz["offsets"], npz["sizes"], npz["file_sha"]
            self.labels = torch.from_numpy(npz["labels"].astype(np.int64))
        self.blob = np.memmap(self.folder / "images.bin", dtype=np.uint8, mode="r")
        self.class_names: list[str] = self.manifest["classes"]
        self.file_names = [f"{Path(f).parent.name}/{Path(f).stem}" for f in self.manifest["files"]]
        self.format = self.manifest["format"]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_digests(self) -> list[str]:
        return self.manifest["class_digests"]

    def _one(self, row: int, resolution: int) -> torch.Tensor:
        data = self.blob[self.offsets[row]:self.offsets[row + 1]]
        if self.format == "raw":
            side = int(self.sizes[row][0])
            image = torch.from_numpy(np.array(data).reshape(3, side, side))
            return image if side == resolution else resize(image[None], resolution)[0]
        from torchvision.io import decode_jpeg
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            image = decode_jpeg(torch.from_numpy(np.array(data)))
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        return resize(center_square(image)[None], resolution)[0]

    def decode(self, rows, resolution: int, pool: ThreadPoolExecutor | None = None) -> torch.Tensor:
        """uint8 images ``(len(rows), 3, resolution, resolution)`` of the given rows, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if pool is None:
            images = [self._one(int(r), resolution) for r in rows]
        else:
            images = list(pool.map(lambda r: self._one(int(r), resolution), rows))
        if not images:
            return torch.empty((0, 3, resolution, resolution), dtype=torch.uint8)
        return torch.stack(images)

    def verify(self) -> list[str]:
        """Files of the tree whose contents no longer match the prepared copy (re-hashes every file)."""
        tree = Path(self.manifest["tree"])
        return [rel for rel, sha in zip(self.manifest["files"], self.file_sha)
                if not (tree / rel).is_file() or hashlib.sha256((tree / rel).read_bytes()).digest() != sha.tobytes()]
