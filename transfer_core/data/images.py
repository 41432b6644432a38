"""An image set as tensors: uint8 images ``(N, 3, R, R)``, int64 labels ``(N,)``, and names; decoding one image.

Following airbench, a dataset is one image tensor plus a label tensor; a subset is an
index into them, never a new ``Dataset`` class. The pieces every way of reading images shares
(in memory, :mod:`~transfer_core.data.loading`; from a prepared copy on disk,
:mod:`~transfer_core.data.prepared`) live here: the decoder, the centre square, the folders data is read
from and cached in.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transfer_core.config import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".JPEG")


class DataError(ConfigError):
    """Missing, empty or corrupt data; the message says what to fix."""


DEFAULT_CACHE = Path.home() / ".cache" / "transfer_core"  # what an entry point gives when told nothing


@dataclass(frozen=True)
class DataDirs:
    """Where images come from and where decoded copies go, resolved once by the entry point.

    ``root``: the data root, a folder with ``cifar10.tar.gz`` / ``cifar100.tar.gz`` or their trees
    (None: torchvision downloads CIFAR); ``cache``: decoded tensors, prepared copies of image
    folders and sweep caches (the command line's ``--cache-dir`` / ``$TRANSFER_CORE_CACHE``, else
    :data:`DEFAULT_CACHE`). None here means none was given: generated (synthetic) data needs none,
    and anything that would be cached is refused rather than written somewhere unasked. Picklable.
    """

    root: str | None = None
    cache: str | None = None

    def cache_path(self, *parts: str) -> Path:
        """``cache/<parts...>``, its folder created."""
        if self.cache is None:
            raise DataError("no cache folder was given for decoded images; open a Context (Context.open picks "
                            "~/.cache/transfer_core) or pass DataDirs(cache=...)")
        path = Path(self.cache).expanduser().joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class ImageSet:
    """Images ``(N, 3, R, R)`` uint8, labels ``(N,)`` int64, and their names."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    file_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def select(self, index: torch.Tensor | np.ndarray) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index], self.class_names,
                        [self.file_names[i] for i in index.tolist()])



def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std ``(3,)`` of a uint8 batch ``(N, 3, R, R)``, in [0, 255] units (std >= 1)."""
    x = images.float()
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1.0)


def channel_stats_of_batches(batches) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`channel_stats` of the concatenation of uint8 batches ``(n_i, 3, R, R)``, holding one batch at a time.

    Float64 sums of pixels and of their squares, so memory is one batch whatever the number of
    images (a streamed source's statistics at 224 px took 1.3 GB as one batch of 2,000 images).
    """
    total = squares = None
    count = 0
    for batch in batches:
        x = batch.to(torch.float64)
        part, part_sq = x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3))
        total, squares = (part, part_sq) if total is None else (total + part, squares + part_sq)
        count += x.numel() // x.shape[1]
    if not count:
        raise ValueError("channel statistics of no images")
    mean = total / count
    var = (squares - count * mean.square()).clamp_min(0) / max(count - 1, 1)  # unbiased, as Tensor.std
    return mean.float(), var.sqrt().float().clamp_min(1.0)


def resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Antialiased resize of a uint8 batch to ``resolution`` pixels (no-op if equal)."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    out = []
    for chunk in images.split(4096):
        x = F.interpolate(chunk.float(), size=(resolution, resolution), mode="bilinear",
                          antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def decode_image(data: bytes) -> torch.Tensor:
    """One encoded image as ``(3, H, W)`` uint8 RGB.

    torchvision's decoder (PNG, JPEG, WebP, GIF: about 3x faster than PIL on 32-pixel images),
    PIL for any other format. Raises OSError when neither can decode ``data``. (torchvision 0.29
    deprecates its decoders in favour of TorchCodec; PIL takes over when they are gone.)
    """
    try:
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_image as tv_decode
        return tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (ImportError, RuntimeError):  # a format torchvision lacks, or a torchvision without decoders
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(io.BytesIO(data)) as img:
                return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
        except UnidentifiedImageError as exc:
            raise OSError(str(exc)) from None


def center_square(x: torch.Tensor) -> torch.Tensor:
    """The central square of an image ``(3, H, W)``."""
    h, w = x.shape[-2:]
    s = min(h, w)
    return x[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
