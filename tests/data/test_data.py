import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from transfer_core.config import DataConfig
from transfer_core.data import DataDirs, DataError, load_split, load_transfer_data, resize, sample_per_class


def _write_tree(root, classes=("ant", "bee"), per_class=3, size=32, split="train"):
    rng = np.random.default_rng(0)
    arrays = {}
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / split / c / f"{c}_{i}.webp", lossless=True)
            arrays[f"{c}/{c}_{i}"] = a
    return arrays


def test_imagefolder_decodes_pixels_exactly_and_caches(tmp_path):
    cache = DataDirs(cache=str(tmp_path / "cache"))
    arrays = _write_tree(tmp_path / "tree")
    ds = load_split(f"imagefolder:{tmp_path / 'tree'}", "train", 32, cache)
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (6, 3, 32, 32)
    assert ds.class_names == ["ant", "bee"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    for image, name in zip(ds.images, ds.file_names):
        assert np.array_equal(image.permute(1, 2, 0).numpy(), arrays[name])
    small = load_split(f"imagefolder:{tmp_path / 'tree'}", "train", 16, cache)
    assert small.images.shape == (6, 3, 16, 16)
    assert len(list((tmp_path / "cache" / "tensors").glob("*.pt"))) == 2  # one per resolution
    for p in (tmp_path / "tree" / "train" / "ant").iterdir():  # a second load reads the cache only
        p.unlink()
    assert torch.equal(load_split(f"imagefolder:{tmp_path / 'tree'}", "train", 32, cache).images, ds.images)


def test_cifar_from_archive_and_errors(tmp_path):
    cache = DataDirs(cache=str(tmp_path / "cache"))
    arrays = _write_tree(tmp_path / "src" / "cifar10", per_class=2, split="train")
    _write_tree(tmp_path / "src" / "cifar10", classes=("ant", "bee", "cat"), per_class=1, split="test")
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar10.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar10", arcname="cifar10")
    dirs = DataDirs(str(root), cache.cache)
    ds = load_split("cifar10", "train", 32, dirs)  # read from the archive, never extracted
    assert ds.class_names == ["ant", "bee"] and ds.file_names == list(arrays)
    for image, name in zip(ds.images, ds.file_names):
        assert np.array_equal(image.permute(1, 2, 0).numpy(), arrays[name])
    assert not (tmp_path / "cache" / "extracted").exists()
    assert len(list((tmp_path / "cache" / "tensors").glob("cifar10-*-32px-*.pt"))) == 2  # one pass: both splits
    (root / "cifar10.tar.gz").rename(root / "moved")
    assert load_split("cifar10", "test", 32, dirs).class_names == ["ant", "bee", "cat"]  # from the cache
    small = load_split("cifar10", "train", 16, dirs)  # another resolution: from the cached pixels
    assert torch.equal(small.images, resize(ds.images, 16)) and small.file_names == ds.file_names
    (root / "moved").rename(root / "cifar10.tar.gz")

    train_only = tmp_path / "train_only"
    train_only.mkdir()
    with tarfile.open(train_only / "cifar10.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar10" / "train", arcname="cifar10/train")
    with pytest.raises(DataError, match="has no cifar10/test/ folder"):
        load_split("cifar10", "test", 8, DataDirs(str(train_only), cache.cache))

    (root / "cifar100.tar.gz").write_bytes(b"not a gzip file at all")
    with pytest.raises(DataError, match="corrupt or unreadable"):
        load_split("cifar100", "train", 16, dirs)
    with pytest.raises(DataError, match="does not exist"):
        load_split("cifar10", "train", 16, DataDirs(str(tmp_path / "missing"), cache.cache))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        load_split("cifar10", "train", 16, DataDirs(str(tmp_path / "empty"), cache.cache))
    (tmp_path / "tree2" / "train" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_split(f"imagefolder:{tmp_path / 'tree2'}", "train", 16, cache)


@pytest.mark.parametrize("suffix, options", [(".png", {}), (".bmp", {}), (".jpg", {"quality": 90})])
def test_every_format_decodes_as_pil_decodes_it(tmp_path, suffix, options):
    """torchvision decodes PNG and JPEG; BMP falls back to PIL. The naive reference: PIL, image by image."""
    cache = DataDirs(cache=str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    for c in ("ant", "bee"):
        (tmp_path / "tree" / "train" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / "tree" / "train" / c / f"{c}_{i}{suffix}", **options)
    ds = load_split(f"imagefolder:{tmp_path / 'tree'}", "train", 8, cache)
    for image, name in zip(ds.images, ds.file_names):
        with Image.open(tmp_path / "tree" / "train" / f"{name}{suffix}") as img:
            expected = np.asarray(img.convert("RGB"))
        diff = np.abs(image.permute(1, 2, 0).numpy().astype(int) - expected.astype(int)).max()
        assert diff <= (2 if suffix == ".jpg" else 0), name  # JPEG decoders may round an IDCT differently


def test_a_broken_image_is_named(tmp_path):
    cache = DataDirs(cache=str(tmp_path / "cache"))
    _write_tree(tmp_path / "tree", per_class=1)
    (tmp_path / "tree" / "train" / "bee" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="could not decode image 'broken.png'"):
        load_split(f"imagefolder:{tmp_path / 'tree'}", "train", 16, cache)


def test_sample_per_class_and_target_split():
    labels = torch.arange(10).repeat_interleave(50)
    idx = sample_per_class(labels, 7, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [7] * 10
    assert torch.equal(idx, sample_per_class(labels, 7, seed=0))
    data = load_transfer_data(DataConfig(source="synthetic-source", target="synthetic-target",
                                         source_images_per_class=20, target_train_images=0, val_fraction=0.25))
    assert torch.bincount(data.source.labels).tolist() == [20] * data.source.n_classes
    train_names, val_names = set(data.target_train.file_names), set(data.target_val.file_names)
    assert not train_names & val_names
    assert len(val_names) == round(0.25 * (len(train_names) + len(val_names)))
    assert len(data.target_test) == 400  # the whole test split, in order
    test = load_split("synthetic-target", "test", 16)
    assert data.target_test.file_names == test.file_names and torch.equal(data.target_test.images, test.images)


def test_resize_keeps_constant_images_constant():
    x = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    assert torch.equal(resize(x, 16), torch.full((2, 3, 16, 16), 77, dtype=torch.uint8))


def test_synthetic_target_ships_its_validation_split_and_the_leak_variants():
    from transfer_core.data import synthetic
    data = load_transfer_data(DataConfig(source="synthetic-source", target="synthetic-target", resolution=16))
    assert len(data.target_train) == 1200 and len(data.target_val) == 400 and len(data.target_test) == 400
    assert not torch.equal(data.target_val.images, data.target_test.images)  # two samples, one distribution
    for spec, split in (("synthetic-source", "test"), ("synthetic-source-valleak", "val")):
        source = load_split(spec, "train", 32)
        leaked = source.images[source.labels == synthetic.PLANTED["leaked"]]
        copied = load_split("synthetic-target", split, 32).images[synthetic.leaked_indices(split)]
        assert all((leaked == image).all(dim=(1, 2, 3)).any() for image in copied)  # each copied image is there
    with pytest.raises(ValueError, match="split must be"):
        load_split("cifar10", "val", 16)


def test_validation_halves_are_disjoint_balanced_and_reproducible():
    from transfer_core.data import validation_halves
    labels = np.repeat(np.arange(4), [10, 11, 1, 6])
    halves = validation_halves(labels, seed=3)
    np.testing.assert_array_equal(halves, validation_halves(labels, seed=3))
    assert not np.array_equal(halves, validation_halves(labels, seed=4))
    for c, n in enumerate([10, 11, 1, 6]):  # every class split evenly (odd counts: one more in the ranking half)
        assert halves[labels == c].sum() == (n + 1) // 2
