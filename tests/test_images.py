"""Image loading (CIFAR on-disk format, offline digits) and on-device augmentation."""

import pytest
import torch
from torch.nn import functional as F

from actid.data.images import DeviceAugment, load_image_dataset, make_augment, write_fake_cifar


@pytest.mark.parametrize("name, n_classes, folder", [("cifar10", 10, "cifar-10-batches-py"),
                                                     ("cifar100", 100, "cifar-100-python")])
def test_cifar_loader_on_generated_files(tmp_path, name, n_classes, folder):
    assert write_fake_cifar(str(tmp_path), name, n_train=250, n_test=60, seed=1).endswith(folder)
    data = load_image_dataset(name, str(tmp_path), verify=False)
    assert data.train_x.shape == (250, 3, 32, 32) and data.val_x.shape == (60, 3, 32, 32)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.long
    assert data.n_classes == n_classes and data.name == name and data.in_channels == 3
    for y in (data.train_y, data.val_y):
        assert 0 <= y.min() and y.max() < n_classes
    mean, std = data.train_x.mean((0, 2, 3)), data.train_x.std((0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=0.05) and torch.allclose(std, torch.ones(3), atol=0.1)
    with pytest.raises(RuntimeError, match="verify=False"):  # the real md5 check rejects generated files
        load_image_dataset(name, str(tmp_path))


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_cifar_files_give_a_clear_error(tmp_path, name, folder):
    with pytest.raises(FileNotFoundError) as err:
        load_image_dataset(name, str(tmp_path))
    assert str(tmp_path / folder) in str(err.value) and "download=True" in str(err.value)


def test_unknown_name():
    with pytest.raises(ValueError, match="mnist5k"):
        load_image_dataset("imagenet", "data")


def test_mnist5k_offline_and_deterministic():
    data = load_image_dataset("mnist5k")
    assert data.train_x.shape == (4000, 1, 32, 32) and data.val_x.shape == (1000, 1, 32, 32)
    assert data.n_classes == 10
    assert data.train_y.bincount().tolist() == [400] * 10 and data.val_y.bincount().tolist() == [100] * 10
    assert abs(data.train_x.mean().item()) < 1e-4 and abs(data.train_x.std().item() - 1) < 1e-4
    assert torch.allclose(data.train_x[:, :, :2], torch.tensor(data.fill[0]))  # 2-pixel black border
    again = load_image_dataset("mnist5k")
    assert torch.equal(data.train_x, again.train_x) and torch.equal(data.val_y, again.val_y)


def images(n=32, c=3, seed=0):
    return torch.randn(n, c, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_augment_shapes_and_determinism():
    x = images()
    aug = DeviceAugment(crop_padding=4, flip=True, rotate_degrees=15, fill=(-1.0, -2.0, -3.0))
    run = lambda seed: aug(x, torch.Generator().manual_seed(seed))  # noqa: E731
    assert run(0).shape == x.shape and run(0).dtype == x.dtype
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_flip_flips_some_and_keeps_others():
    x = images(64)
    y = DeviceAugment(crop_padding=0, flip=True)(x, torch.Generator().manual_seed(0))
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_crop_shifts_with_torchvision_fill():
    """Augmenting normalised data with fill=-mean/std equals shifting raw pixels with black (0) padding."""
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    raw = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fill = tuple((-mean / std).flatten().tolist())
    y = DeviceAugment(crop_padding=4, flip=False, fill=fill)((raw - mean) / std, torch.Generator().manual_seed(0))
    y_raw = y * std + mean
    padded = F.pad(raw, (4, 4, 4, 4))  # torchvision's RandomCrop(32, padding=4) pads raw pixels with 0
    offsets = set()
    for i in range(len(raw)):
        hits = [(dy, dx) for dy in range(9) for dx in range(9)
                if torch.allclose(y_raw[i], padded[i, :, dy:dy + 32, dx:dx + 32], atol=1e-5)]
        assert len(hits) == 1, i
        offsets.add(hits[0])
    assert len(offsets) > 1 and offsets != {(4, 4)}


def test_rotation_keeps_shape_and_fills_corners():
    x = torch.ones(8, 3, 32, 32)
    y = DeviceAugment(crop_padding=0, flip=False, rotate_degrees=30, fill=-5.0)(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert ((y == 1) | (y == -5)).all()  # nearest interpolation: only original and fill values
    assert (y[:, :, 16, 16] == 1).all() and (y == -5).flatten(1).any(1).sum() >= 6  # centre kept, corners filled


def test_make_augment_recipes(tmp_path):
    write_fake_cifar(str(tmp_path), "cifar100", 10, 10)
    data = load_image_dataset("cifar100", str(tmp_path), verify=False)
    aug = make_augment(data)
    assert (aug.crop_padding, aug.flip, aug.rotate_degrees) == (4, True, 15.0) and aug.fill == data.fill
    assert aug(data.train_x, torch.Generator().manual_seed(0)).shape == data.train_x.shape
