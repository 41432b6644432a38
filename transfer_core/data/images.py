"""An image set as tensors: uint8 images ``(N, 3, R, R)``, int64 labels ``(N,)``, and names.

Following airbench, a dataset is one image tensor plus a label tensor; a subset is an
index into them, never a new ``Dataset`` class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


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
