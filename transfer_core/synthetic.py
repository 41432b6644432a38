"""A small generated source/target pair with planted structure, for tests.

Target (``synthetic-target``, 4 classes): oriented gratings; class k has orientation
``k * 45`` degrees, with random phase, frequency, colour and noise.

Source (``synthetic-source``, 10 classes):
  * ``helpful``    gratings at the orientation of target class 0 (``planted["helpful"]``);
  * ``misleading`` gratings of target classes 1 and 2 mixed under one label, which teaches
                   the backbone to ignore the 1-vs-2 distinction (``planted["misleading"]``);
  * ``leaked``     exact copies of target *test* images of class 3 (``planted["leaked"]``,
                   copied test indices in ``LEAKED_TEST_INDICES``);
  * the rest       neutral textures (blobs, checkerboards, noise) with distinct colours.

Everything is a pure function of the spec, split and resolution, so every process sees
identical data without a cache.
"""
from __future__ import annotations

import math

import torch

TARGET_CLASSES = ["deg0", "deg45", "deg90", "deg135"]
SOURCE_CLASSES = ["helpful", "misleading", "leaked", "blobs_red", "blobs_blue", "checker_green",
                  "checker_gray", "noise_warm", "noise_cool", "rings"]
PLANTED = {"helpful": 0, "misleading": 1, "leaked": 2}
NATIVE = 32
TARGET_PER_CLASS = {"train": 300, "test": 100}
SOURCE_PER_CLASS = {"train": 120, "test": 30}
N_LEAKED = 60  # test images of target class 3 copied into the source class "leaked"


def _grid(n: int):
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, NATIVE), torch.linspace(-1, 1, NATIVE), indexing="ij")
    return xs.expand(n, -1, -1), ys.expand(n, -1, -1)


def _gratings(angles_deg: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Float images (n, 3, 32, 32) in [0, 1] of gratings at the given orientations."""
    n = len(angles_deg)
    xs, ys = _grid(n)
    theta = (angles_deg + torch.randn(n, generator=gen) * 4)[:, None, None] * math.pi / 180
    freq = (4 + 3 * torch.rand(n, generator=gen))[:, None, None]
    phase = (2 * math.pi * torch.rand(n, generator=gen))[:, None, None]
    wave = torch.sin(freq * math.pi * (xs * torch.cos(theta) + ys * torch.sin(theta)) + phase)
    colour = 0.3 + 0.7 * torch.rand(n, 3, 1, 1, generator=gen)
    img = 0.5 + 0.35 * wave[:, None] * colour
    return img + 0.12 * torch.randn(n, 3, NATIVE, NATIVE, generator=gen)


def _texture(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    xs, ys = _grid(n)
    base = {"red": (0.8, 0.3, 0.3), "blue": (0.3, 0.3, 0.8), "green": (0.3, 0.8, 0.3),
            "gray": (0.5, 0.5, 0.5), "warm": (0.8, 0.6, 0.3), "cool": (0.3, 0.6, 0.8)}
    colour = torch.tensor(base[kind.split("_")[1]] if "_" in kind else (0.6, 0.6, 0.6))[None, :, None, None]
    if kind.startswith("blobs"):
        cx, cy = (torch.rand(2, n, 1, 1, generator=gen) * 1.4 - 0.7)
        r = 0.2 + 0.3 * torch.rand(n, 1, 1, generator=gen)
        pattern = (((xs - cx) ** 2 + (ys - cy) ** 2) < r ** 2).float()
    elif kind.startswith("checker"):
        k = torch.randint(2, 6, (n, 1, 1), generator=gen).float()
        pattern = ((torch.floor((xs + 1) * k) + torch.floor((ys + 1) * k)) % 2)
    elif kind == "rings":
        k = 3 + 4 * torch.rand(n, 1, 1, generator=gen)
        pattern = 0.5 + 0.5 * torch.sin(k * math.pi * torch.sqrt(xs ** 2 + ys ** 2))
    else:  # smooth noise
        pattern = torch.nn.functional.interpolate(torch.rand(n, 1, 8, 8, generator=gen), size=NATIVE,
                                                  mode="bilinear", align_corners=False)[:, 0]
    img = 0.15 + 0.7 * pattern[:, None] * colour
    return img + 0.08 * torch.randn(n, 3, NATIVE, NATIVE, generator=gen)


def _to_uint8(img: torch.Tensor) -> torch.Tensor:
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def _target(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1 if split == "train" else 2)
    per = TARGET_PER_CLASS[split]
    labels = torch.arange(len(TARGET_CLASSES)).repeat_interleave(per)
    return _to_uint8(_gratings(labels.float() * 45, gen)), labels


def leaked_test_indices() -> torch.Tensor:
    """Indices into the synthetic target test split copied into source class ``leaked``."""
    per = TARGET_PER_CLASS["test"]
    return torch.arange(3 * per, 3 * per + N_LEAKED)


def _source(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3 if split == "train" else 4)
    per = SOURCE_PER_CLASS[split]
    chunks = []
    for name in SOURCE_CLASSES:
        if name == "helpful":
            chunks.append(_to_uint8(_gratings(torch.zeros(per), gen)))
        elif name == "misleading":
            chunks.append(_to_uint8(_gratings(torch.tensor([45.0, 90.0]).repeat(per)[:per], gen)))
        elif name == "leaked":
            test_images, _ = _target("test")
            copies = test_images[leaked_test_indices()]
            chunks.append(copies.repeat((per + len(copies) - 1) // len(copies), 1, 1, 1)[:per])
        else:
            chunks.append(_to_uint8(_texture(name, per, gen)))
    labels = torch.arange(len(SOURCE_CLASSES)).repeat_interleave(per)
    return torch.cat(chunks), labels


def make_synthetic(spec: str, split: str, resolution: int):
    from .config import ConfigError
    from .data import ImageSet, resize
    if spec == "synthetic-target":
        images, labels = _target(split)
        names = TARGET_CLASSES
    elif spec == "synthetic-source":
        images, labels = _source(split)
        names = SOURCE_CLASSES
    else:
        raise ConfigError(f"unknown synthetic dataset {spec!r}; use synthetic-source or synthetic-target")
    files = [f"{names[l]}/{spec}_{split}_{i:05d}" for i, l in enumerate(labels.tolist())]
    return ImageSet(resize(images, resolution), labels, list(names), files)
