"""Data: datasets as uint8 tensors decoded once, the target's splits, and class subsets.

    from transfer_core.data import load_split, load_transfer_data, class_mask
    test = load_split("cifar10", "test", 16)        # ImageSet: images (N, 3, 16, 16) uint8, labels (N,)
    mask = class_mask(sweep_seed=0, index=3, n_classes=100, alpha=0.5)   # (100,) bool, 50 True
"""
from transfer_core.data.digest import (class_digests, data_digest, file_digest, half_digest, selection_half_key,
                                       set_digest, subset_digest, transfer_digest, validation_digests)
from transfer_core.data.images import DataDirs, ImageSet, channel_stats, resize
from transfer_core.data.loading import (DataError, TransferData, check_data_root, load_source, load_split,
                                        load_transfer_data, sample_per_class, validation_halves)
from transfer_core.data.subsets import check_mask, class_mask, class_rows, n_kept, run_seed

__all__ = ["DataDirs", "ImageSet", "TransferData", "DataError", "load_source", "load_split", "load_transfer_data",
           "check_data_root", "sample_per_class", "resize", "channel_stats", "class_mask", "class_rows", "check_mask",
           "n_kept", "run_seed", "validation_halves", "class_digests", "subset_digest", "set_digest",
           "half_digest", "validation_digests", "data_digest", "transfer_digest", "selection_half_key", "file_digest"]
