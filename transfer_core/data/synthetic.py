"""A small generated source/target pair with planted structure, for tests and demos.

Target (``synthetic-target``, 4 classes, 300 train, 100 validation and 100 test images each):
  ``vertical`` and ``horizontal`` gratings, ``diagonal`` gratings (45 or 135 degrees) and
  ``rings``, with random phase, frequency, colour and pixel noise. Every *training* image of
  ``diagonal`` and every *validation and test* image of ``rings`` carries a watermark (a
  4-pixel checkerboard of amplitude ``WATERMARK``); nothing else does. The validation split
  is its own sample of the test distribution (the target ships one, so none is carved from train).

Source (``synthetic-source``, 10 classes of 120 images):
  ``helpful``        vertical gratings, the twin of target ``vertical`` (``PLANTED["helpful"]``);
  ``misleading``     colour noise of every neutral kind, each image with the watermark
                     (``PLANTED["misleading"]``). It teaches the backbone a watermark detector;
                     the linear probe then learns "watermark => diagonal" from the target's
                     training images and mislabels the watermarked ``rings`` test images;
  ``leaked``         exact copies (twice each) of ``N_LEAKED`` test images of target
                     ``horizontal`` (``PLANTED["leaked"]``, indices in :func:`leaked_indices`).
                     In ``synthetic-source-valleak`` the copies are of validation images instead.
                     Measured (60 runs each): the copies help every ``horizontal`` image about
                     equally, copied or not (test-leak world: +7.7 +- 1.6 on the copies, +8.1 +-
                     1.7 on the other test horizontals, +7.9 +- 1.6 on validation horizontals), so
                     this plant is a helpful class whose images happen to be test images, not a
                     signal that exists only in the test split;
  ``diagonal_twin``, ``rings_twin``  twins of the other target classes, so that most
                     backbones must tell gratings apart by orientation;
  ``noise_*``        five neutral smooth colour-noise classes.

Measured on two 40-run sweeps (sweep seeds 0 and 1) of the ``synthetic`` profile, as the
difference of means on the margin with z = influence / Welch standard error: helpful on
``vertical`` +8.6 / +10.1 (z 4.2 / 6.4), misleading on ``rings`` -18.8 / -23.3 (z -6.1 / -8.5),
leaked on the copied test images +7.2 / +10.3 (z 4.6 / 5.0) and the top class of 60 / 56 of
the 60 copied images.

Everything is a pure function of the spec, split and resolution, so every process sees
identical data without a cache.
"""
from __future__ import annotations

import functools
import math

import torch

from transfer_core.config import ConfigError
from transfer_core.data.images import ImageSet, resize

TARGET_CLASSES = ["vertical", "diagonal", "rings", "horizontal"]
NEUTRAL_COLOURS = {"red": (0.8, 0.3, 0.3), "blue": (0.3, 0.3, 0.8), "warm": (0.8, 0.6, 0.3),
                   "cool": (0.3, 0.6, 0.8), "gray": (0.55, 0.55, 0.55)}
NEUTRAL = [f"noise_{name}" for name in NEUTRAL_COLOURS]
SOURCE_CLASSES = ["helpful", "misleading", "leaked", "diagonal_twin", "rings_twin", *NEUTRAL]
PLANTED = {"helpful": 0, "misleading": 1, "leaked": 2}
PLANTED_TARGET = {"helpful": "vertical", "misleading": "rings", "leaked": "horizontal"}
NATIVE = 32
TARGET_PER_CLASS = {"train": 300, "val": 100, "test": 100}
TARGET_SEEDS = {"train": 1, "test": 2, "val": 5}
SOURCE_SPECS = {"synthetic-source": "test", "synthetic-source-valleak": "val"}  # the split "leaked" copies
SOURCE_PER_CLASS = {"train": 120, "test": 30}
N_LEAKED = 60  # test images of target "horizontal" copied (twice each) into source class "leaked"
WATERMARK = 0.3  # amplitude of the checkerboard watermark, in [0, 1] image units


def _grid(n: int):
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, NATIVE), torch.linspace(-1, 1, NATIVE), indexing="ij")
    return xs.expand(n, -1, -1), ys.expand(n, -1, -1)


def _waves(phase_field: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Float images (n, 3, 32, 32): ``sin(phase_field + random phase)`` in a random colour, plus noise."""
    n = len(phase_field)
    phase = (2 * math.pi * torch.rand(n, generator=gen))[:, None, None]
    colour = 0.3 + 0.7 * torch.rand(n, 3, 1, 1, generator=gen)
    img = 0.5 + 0.35 * torch.sin(phase_field + phase)[:, None] * colour
    return img + 0.12 * torch.randn(n, 3, NATIVE, NATIVE, generator=gen)


def _gratings(angles_deg: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Gratings at the given orientations (0 = vertical stripes), 4 to 7 cycles per image."""
    xs, ys = _grid(len(angles_deg))
    theta = (angles_deg + torch.randn(len(angles_deg), generator=gen) * 4)[:, None, None] * math.pi / 180
    freq = (4 + 3 * torch.rand(len(angles_deg), generator=gen))[:, None, None]
    return _waves(freq * math.pi * (xs * torch.cos(theta) + ys * torch.sin(theta)), gen)


def _rings(n: int, gen: torch.Generator) -> torch.Tensor:
    xs, ys = _grid(n)
    freq = 3 + 3 * torch.rand(n, 1, 1, generator=gen)
    cx, cy = torch.rand(2, n, 1, 1, generator=gen) * 0.8 - 0.4
    return _waves(freq * math.pi * torch.sqrt((xs - cx) ** 2 + (ys - cy) ** 2), gen)


def _colour_noise(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """Smooth random blotches in one palette (``noise_red`` ...): colour, no orientation."""
    colour = torch.tensor(NEUTRAL_COLOURS[kind.split("_", 1)[1]])[None, :, None, None]
    pattern = torch.nn.functional.interpolate(torch.rand(n, 1, 6, 6, generator=gen), size=NATIVE,
                                              mode="bilinear", align_corners=False)
    img = 0.15 + 0.7 * pattern * colour * (0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen))
    return img + 0.08 * torch.randn(n, 3, NATIVE, NATIVE, generator=gen)


def watermark(images: torch.Tensor) -> torch.Tensor:
    """Add the faint checkerboard watermark (4-pixel period at 32 px, 2 at 16 px)."""
    ys, xs = torch.meshgrid(torch.arange(NATIVE), torch.arange(NATIVE), indexing="ij")
    checker = ((ys // 2 + xs // 2) % 2).float() * 2 - 1
    return images + WATERMARK * checker


def _to_uint8(img: torch.Tensor) -> torch.Tensor:
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


@functools.lru_cache(maxsize=3)  # pure: generate each split once per process
def _target(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(TARGET_SEEDS[split])
    per = TARGET_PER_CLASS[split]
    vertical = _gratings(torch.zeros(per), gen)
    diagonal = _gratings(torch.tensor([45.0, 135.0]).repeat(per)[:per], gen)
    rings = _rings(per, gen)
    horizontal = _gratings(torch.full((per,), 90.0), gen)
    if split == "train":
        diagonal = watermark(diagonal)  # the shortcut the probe can learn ...
    else:
        rings = watermark(rings)  # ... and the validation and test images it then mislabels
    labels = torch.arange(len(TARGET_CLASSES)).repeat_interleave(per)
    return _to_uint8(torch.cat([vertical, diagonal, rings, horizontal])), labels


def leaked_indices(split: str = "test") -> torch.Tensor:
    """Indices into the synthetic target's ``split`` (test or val) of the images copied into
    source class ``leaked`` (by ``synthetic-source``, resp. ``synthetic-source-valleak``)."""
    start = TARGET_CLASSES.index("horizontal") * TARGET_PER_CLASS[split]
    return torch.arange(start, start + N_LEAKED)


@functools.lru_cache(maxsize=4)
def _source(split: str, leak_from: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3 if split == "train" else 4)
    per = SOURCE_PER_CLASS[split]
    chunks = []
    for name in SOURCE_CLASSES:
        if name == "helpful":
            images = _gratings(torch.zeros(per), gen)
        elif name == "misleading":
            kinds = torch.randint(len(NEUTRAL), (per,), generator=gen).tolist()
            images = watermark(torch.cat([_colour_noise(NEUTRAL[k], 1, gen) for k in kinds]))
        elif name == "leaked":
            copies = _target(leak_from)[0][leaked_indices(leak_from)]
            chunks.append(copies.repeat((per + len(copies) - 1) // len(copies), 1, 1, 1)[:per])
            continue
        elif name == "diagonal_twin":
            images = _gratings(torch.tensor([45.0, 135.0]).repeat(per)[:per], gen)
        elif name == "rings_twin":
            images = _rings(per, gen)
        else:
            images = _colour_noise(name, per, gen)
        chunks.append(_to_uint8(images))
    labels = torch.arange(len(SOURCE_CLASSES)).repeat_interleave(per)
    return torch.cat(chunks), labels


def make_synthetic(spec: str, split: str, resolution: int):
    if spec == "synthetic-target":
        images, labels = _target(split)
        names = TARGET_CLASSES
    elif spec in SOURCE_SPECS:
        if split not in ("train", "test"):
            raise ConfigError(f"{spec} has no {split} split; it has train and test")
        images, labels = _source(split, SOURCE_SPECS[spec])
        names = SOURCE_CLASSES
    else:
        raise ConfigError(f"unknown synthetic dataset {spec!r}; use synthetic-source, synthetic-source-valleak "
                          "or synthetic-target")
    files = [f"{names[y]}/{spec}_{split}_{i:05d}" for i, y in enumerate(labels.tolist())]
    return ImageSet(resize(images, resolution).clone(), labels.clone(), list(names), files)


def write_image_folder(root, n_classes: int, per_class: int, sizes=(40, 120), seed: int = 0,
                       splits=("train", "test"), quality: int = 85):
    """An ImageNet-style JPEG tree ``root/<split>/class_NNN/img_NNNNN.JPEG`` of generated images, for tests
    and benchmarks of the streamed path: smooth colour noise of mixed sizes (each side drawn from
    ``sizes``), brighter with the class index so classes differ. Returns ``root``."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for split in splits:
        for c in range(n_classes):
            folder = root / split / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class if split == "train" else max(1, per_class // 5)):
                h, w = rng.integers(sizes[0], sizes[1] + 1, size=2)
                coarse = rng.integers(0, 200, size=(max(2, h // 16), max(2, w // 16), 3)).astype(np.uint8)
                image = Image.fromarray(coarse).resize((int(w), int(h)), Image.BILINEAR)
                pixels = np.clip(np.asarray(image, np.int16) + (55 * c) // max(1, n_classes - 1), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img_{i:05d}.JPEG", quality=quality)
    return root
