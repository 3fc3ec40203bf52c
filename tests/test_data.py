"""Data sets: digits against scikit-learn's raw images, ImageFolder trees on disk, bad roots."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from suite.errors import DepthbenchError
from suite.run.data import HOLDOUT_FRACTION, load_data, train_loader

IMAGENET_CLASSES = ("n01440764", "n01443537")
HOLDOUT_NAMES = {
    "n01440764": ["n01440764_10026", "n01440764_10027"],
    "n01443537": ["n01443537_10007"],
}
OTHER_NAMES = {"n01440764": ["n01440764_1", "n01440764_2"], "n01443537": ["n01443537_1"]}


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def all_images(splits) -> torch.Tensor:
    return torch.cat([split.tensors[0] for split in (splits.train, splits.holdout, splits.test)])


def test_digits_splits_cover_every_image_once_with_3_normalised_channels(digits):
    assert (len(digits.train), len(digits.holdout), len(digits.test)) == (1293, 144, 360)
    assert (digits.num_classes, digits.resolution) == (10, 32)
    images = digits.train.tensors[0]
    assert images.shape[1:] == (3, 32, 32)
    assert torch.equal(images[:, 0], images[:, 2])
    assert abs(images.mean().item()) < 1e-4 and abs(images.std().item() - 1) < 1e-4
    labels = torch.cat([s.tensors[1] for s in (digits.train, digits.holdout, digits.test)])
    assert Counter(labels.tolist()) == Counter(load_digits().target.tolist())


def test_digits_at_8_pixels_are_exactly_scikit_learns_images():
    splits = load_data("digits", resolution=8)
    images = all_images(splits)[:, 0]
    # undo the normalisation: raw pixels run from 0 to 16 in the data set
    raw = (images - images.min()) / (images.max() - images.min()) * 16
    assert torch.allclose(raw, raw.round(), atol=1e-4)
    ours = sorted(map(tuple, raw.round().reshape(len(raw), -1).int().tolist()))
    theirs = sorted(map(tuple, load_digits().data.astype(int).tolist()))
    assert ours == theirs


def test_digits_holdout_is_stratified_and_fixed_by_the_seed(digits):
    counts = Counter(digits.holdout.tensors[1].tolist())
    assert set(counts) == set(range(10))
    assert all(abs(n - len(digits.holdout) / 10) <= 2 for n in counts.values())
    again = load_data("digits")
    assert torch.equal(again.holdout.tensors[0], digits.holdout.tensors[0])
    other = load_data("digits", seed=1)
    assert not torch.equal(other.holdout.tensors[0], digits.holdout.tensors[0])


def test_train_loader_order_follows_the_seed_and_batches_are_full(digits):
    def first_labels(seed):
        return next(iter(train_loader(digits.train, 64, seed)))[1]

    assert torch.equal(first_labels(3), first_labels(3))
    assert not torch.equal(first_labels(3), first_labels(4))
    assert {len(labels) for _, labels in train_loader(digits.train, 64, 0)} == {64}


def write_image(path: Path, shade: int) -> None:
    """A 40x30 JPEG with a horizontal gradient, so that different crops differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gradient = np.linspace(0, 255 - shade, 40, dtype=np.uint8)
    pixels = np.stack([np.tile(gradient, (30, 1))] * 3, axis=-1)
    pixels[..., 1] = shade
    Image.fromarray(pixels).save(path, format="JPEG")


def test_imagenet_holdout_is_upstreams_list(tmp_path):
    for wnid in IMAGENET_CLASSES:
        for shade, name in enumerate(HOLDOUT_NAMES[wnid] + OTHER_NAMES[wnid]):
            write_image(tmp_path / "train" / wnid / f"{name}.JPEG", shade * 40)
        write_image(tmp_path / "val" / wnid / "ILSVRC2012_val_1.JPEG", 100)
    splits = load_data("imagenet", tmp_path, resolution=32)

    def names(subset):
        return {Path(subset.dataset.samples[i][0]).stem for i in subset.indices}

    assert names(splits.holdout) == {n for ns in HOLDOUT_NAMES.values() for n in ns}
    assert names(splits.train) == {n for ns in OTHER_NAMES.values() for n in ns}
    assert (len(splits.test), splits.num_classes) == (2, 2)
    image, label = splits.holdout[0]
    assert image.shape == (3, 32, 32) and label == 0
    assert splits.train[0][0].shape == (3, 32, 32)


def test_imagenet_without_holdout_images_says_so(tmp_path):
    for split in ("train", "val"):
        write_image(tmp_path / split / "n01440764" / "other.JPEG", 0)
    with pytest.raises(DepthbenchError, match="holdout list.*imagefolder"):
        load_data("imagenet", tmp_path)


def test_imagefolder_holdout_is_a_stratified_part_of_train(tmp_path):
    for label in ("cat", "dog"):
        for i in range(20):
            write_image(tmp_path / "train" / label / f"{i}.jpg", i * 10)
        write_image(tmp_path / "val" / label / "0.jpg", 0)
    splits = load_data("imagefolder", tmp_path, resolution=16)
    train, holdout = set(splits.train.indices), set(splits.holdout.indices)
    assert not train & holdout and train | holdout == set(range(40))
    assert len(holdout) == round(40 * HOLDOUT_FRACTION)
    holdout_labels = Counter(splits.holdout.dataset.targets[i] for i in holdout)
    assert holdout_labels == {0: 2, 1: 2}
    assert splits.holdout[0][0].shape == (3, 16, 16)


@pytest.mark.parametrize(
    ("name", "layout", "expected"),
    [
        ("cifar10", [], r"cifar-10-batches-py lacks batches.meta.*data_batch_1.*download=True"),
        ("cifar100", ["cifar-100-python/meta"], r"cifar-100-python lacks train, test"),
        ("imagenet", ["train/"], r"val is missing; expected .*/train/<class>/<image>"),
        ("imagefolder", ["train/", "val/"], r"Couldn't find any class folder"),
    ],
)
def test_an_incomplete_root_names_what_is_missing(tmp_path, name, layout, expected):
    for entry in layout:
        (tmp_path / entry).parent.mkdir(parents=True, exist_ok=True)
        if entry.endswith("/"):
            (tmp_path / entry).mkdir(exist_ok=True)
        else:
            (tmp_path / entry).write_bytes(b"")
    with pytest.raises(DepthbenchError, match=expected):
        load_data(name, tmp_path)


def test_unknown_data_sets_and_missing_roots_are_refused():
    with pytest.raises(DepthbenchError, match="unknown data set 'mnist'.*digits, cifar10"):
        load_data("mnist")
    with pytest.raises(DepthbenchError, match="give its root path"):
        load_data("cifar10")
    with pytest.raises(DepthbenchError, match="positive"):
        load_data("digits", resolution=0)


def test_only_training_images_are_augmented(tmp_path):
    for label in ("cat", "dog"):
        for i in range(10):
            write_image(tmp_path / "train" / label / f"{i}.jpg", i * 20)
        write_image(tmp_path / "val" / label / "0.jpg", 0)
    splits = load_data("imagefolder", tmp_path, resolution=16)

    def draw(dataset, seed):
        torch.manual_seed(seed)
        return dataset[0][0]

    assert torch.equal(draw(splits.holdout, 0), draw(splits.holdout, 1))
    assert torch.equal(draw(splits.test, 0), draw(splits.test, 1))
    assert not torch.equal(draw(splits.train, 0), draw(splits.train, 1))
